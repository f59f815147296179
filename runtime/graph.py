"""A validated, read-only view of an ONNX graph for the planner.

Loading refuses, with the file, node and tensor named: unreadable or truncated protobuf, a graph
that fails ``onnx.checker``, unsupported opset domains, nodes in a cycle or reading a tensor no one
produces, initializers whose data does not match their declared shape, graph inputs that are not
numeric tensors, attributes that cannot be read, and external data outside the model's folder
(``..``, absolute paths, symbolic links that lead out), missing, or not matching its tensor.

**Memory limit.** A model may declare far more data than its file holds (dimensions of 2^40, a
sparse 1 TB external file). Before anything is read, :func:`load_model_proto` adds up the sizes its
tensors declare (shape x element size, external data included) and refuses, with
:class:`~runtime.errors.ResourceError`, a model file or a total above :func:`max_tensor_bytes`
(``HWSIM_MAX_TENSOR_BYTES``, default 2 GiB).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import HwsimError, ModelError, ResourceError

KNOWN_DOMAINS = {"", "ai.onnx", "com.microsoft"}
_A = onnx.AttributeProto
# Attributes of the com.microsoft (ONNX Runtime contrib) ops the runtime plans: name -> (type, required).
# onnx.checker knows no schema for them, so their attributes are checked here (ORT's contrib_defs).
CONTRIB_ATTRIBUTES: dict[str, dict[str, tuple[int, bool]]] = {
    "QLinearAdd": {}, "QLinearMul": {}, "QLinearSigmoid": {},
    "QLinearConcat": {"axis": (_A.INT, True)},
    "QLinearGlobalAveragePool": {"channels_last": (_A.INT, False)},
    "QLinearAveragePool": {"auto_pad": (_A.STRING, False), "ceil_mode": (_A.INT, False),
                           "channels_last": (_A.INT, False), "count_include_pad": (_A.INT, False),
                           "kernel_shape": (_A.INTS, True), "pads": (_A.INTS, False), "strides": (_A.INTS, False)},
    "QLinearLeakyRelu": {"alpha": (_A.FLOAT, False)},
    "QGemm": {"alpha": (_A.FLOAT, False), "transA": (_A.INT, False), "transB": (_A.INT, False)},
    "QLinearSoftmax": {"axis": (_A.INT, False), "opset": (_A.INT, True)},
}
MAX_TENSOR_BYTES_ENV = "HWSIM_MAX_TENSOR_BYTES"
DEFAULT_MAX_TENSOR_BYTES = 2 << 30
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
_FOUR_BIT = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4} | (
    {onnx.TensorProto.FLOAT4E2M1} if hasattr(onnx.TensorProto, "FLOAT4E2M1") else set())
_NOT_NUMERIC = {onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING, onnx.TensorProto.COMPLEX64,
                onnx.TensorProto.COMPLEX128}  # graph input types the runtime cannot be fed


def parse_bytes(text: str) -> int:
    """A byte count: an integer, optionally with a unit K, M, G, T (or KiB, MB, ...; powers of 1024).

    >>> parse_bytes("2GiB") == 2 << 30, parse_bytes("512 M") == 512 << 20, parse_bytes("1000")
    (True, True, 1000)
    """
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise HwsimError(f"{MAX_TENSOR_BYTES_ENV}: expected a byte count such as 2147483648 or 2GiB, found {text!r}")
    return int(m.group(1)) * _UNITS[unit]


def max_tensor_bytes() -> int:
    """The most data (bytes) a model may declare: ``HWSIM_MAX_TENSOR_BYTES`` (see :func:`parse_bytes`),
    read at each load, default :data:`DEFAULT_MAX_TENSOR_BYTES` (2 GiB)."""
    text = os.environ.get(MAX_TENSOR_BYTES_ENV, "").strip()
    return parse_bytes(text) if text else DEFAULT_MAX_TENSOR_BYTES


def _type_name(elem_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return str(elem_type)


def _size(n: int) -> str:
    for unit, k in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << k:
            return f"{n / (1 << k):.1f} {unit}"
    return f"{n} bytes"


def declared_bytes(t: onnx.TensorProto, source: str = "<model>") -> int:
    """The bytes a tensor's shape and element type declare (4-bit types packed two per byte),
    computed without reading its data.

    >>> t = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[2**20, 1024])  # no data
    >>> declared_bytes(t), declared_bytes(onnx.TensorProto(name="q", data_type=onnx.TensorProto.INT4, dims=[3]))
    (4294967296, 2)
    """
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        raise ModelError(f"{source}: tensor {t.name!r} has a negative dimension in its shape {dims}")
    if t.data_type in _FOUR_BIT:
        bits = 4
    else:
        try:
            bits = 8 * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{source}: tensor {t.name!r} has element type {_type_name(t.data_type)}, which has no "
                             "fixed size") from None
    return (math.prod(dims) * bits + 7) // 8


def _check_declared_sizes(model: onnx.ModelProto, source: str, limit: int) -> None:
    total, largest = 0, None
    for t in onnx.external_data_helper._get_all_tensors(model):  # noqa: SLF001 (initializers and attribute tensors)
        n = declared_bytes(t, source)
        total += n
        if largest is None or n > largest[1]:
            largest = (t.name, n, list(t.dims))
    if total > limit:
        name, n, dims = largest
        raise ResourceError(f"{source}: the model's tensors declare {_size(total)} (largest: {name!r} of shape {dims}, "
                            f"{_size(n)}), more than the limit of {_size(limit)}; refusing to load it (raise "
                            f"{MAX_TENSOR_BYTES_ENV} if the model is really this large)")


@dataclass(frozen=True)
class Node:
    op_type: str
    name: str
    inputs: tuple[str, ...]  # "" marks an omitted optional input
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    domain: str = ""

    def input(self, i: int) -> str | None:
        """The i-th input name, or None when absent or omitted."""
        return self.inputs[i] if i < len(self.inputs) and self.inputs[i] else None

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def __str__(self) -> str:
        return f"{self.op_type} node {self.name!r}"


@dataclass(frozen=True)
class ValueInfo:
    name: str
    elem_type: int  # onnx.TensorProto data type
    shape: tuple[int | str | None, ...] | None

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))


@dataclass
class Graph:
    source: str
    nodes: list[Node]  # topologically sorted
    initializers: dict[str, np.ndarray]
    inputs: list[ValueInfo]  # graph inputs that are not initializers
    outputs: list[ValueInfo]
    opsets: dict[str, int]
    value_info: dict[str, ValueInfo] = field(default_factory=dict)

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def producer(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs if o}


def _attr_value(a: onnx.AttributeProto):
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, list):
        return tuple(x.decode("utf-8", errors="replace") if isinstance(x, bytes) else x for x in v)
    return v


def _value_info(v: onnx.ValueInfoProto) -> ValueInfo:
    t = v.type.tensor_type
    shape = None
    if t.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
    return ValueInfo(v.name, t.elem_type, shape)


def _check_external_data(model: onnx.ModelProto, base: Path, source: str, limit: int) -> None:
    """Every external-data reference must name a regular file inside ``base`` (after resolving
    ``..`` and symbolic links) whose bytes at (offset, length) exist and match the tensor's shape."""
    base = base.resolve()
    for t in onnx.external_data_helper._get_all_tensors(model):  # noqa: SLF001 (public helper module)
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        what = f"{source}: initializer {t.name!r}"
        if not loc:
            raise ModelError(f"{what} is stored as external data but names no file (no 'location')")
        if "\x00" in loc or os.path.isabs(loc):
            raise ModelError(f"{what} has external data {loc[:80]!r} outside the model's folder {base} (an absolute or "
                             "invalid path); refusing to read it")
        try:
            target = (base / loc).resolve()
            inside = base in target.parents
            is_file = inside and target.is_file()
            size = target.stat().st_size if is_file else 0
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelError(f"{what}: external data location {loc[:80]!r} cannot be resolved: {e}") from None
        if not inside:
            raise ModelError(f"{what} has external data {loc[:80]!r} outside the model's "
                             f"folder {base}; refusing to read it")
        if not is_file:
            raise ModelError(f"{what} refers to external data file {loc[:80]!r}, which does not exist (or is not a file)")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else size - offset
        except ValueError:
            raise ModelError(f"{what}: external data offset/length must be integers, found offset "
                             f"{info.get('offset')!r}, length {info.get('length')!r}") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelError(f"{what}: external data at offset {offset}, length {length} lies beyond the end of "
                             f"{loc[:80]!r} ({size} bytes)")
        if length > limit:
            raise ResourceError(f"{what}: external data of {_size(length)} is more than the limit of {_size(limit)}; "
                                f"refusing to read it (raise {MAX_TENSOR_BYTES_ENV} if the model is really this large)")
        declared = declared_bytes(t, source)
        if declared != length:
            raise ModelError(f"{what}: shape {list(t.dims)} of {_type_name(t.data_type)} needs {declared} bytes, but "
                             f"its external data in {loc[:80]!r} has {length}")


def load_model_proto(path_or_model: str | os.PathLike | onnx.ModelProto,
                     source: str | None = None) -> tuple[onnx.ModelProto, str]:
    """Read an ONNX file (or take a ModelProto) with clear errors; returns (model, source name).
    ``source`` names an in-memory model in errors (default ``<in-memory model>``)."""
    if isinstance(path_or_model, onnx.ModelProto):
        source = source or "<in-memory model>"
        _check_declared_sizes(path_or_model, source, max_tensor_bytes())
        return path_or_model, source
    path = Path(path_or_model)
    source = str(path)
    try:
        size = path.stat().st_size if path.is_file() else None
    except (OSError, ValueError) as e:
        raise ModelError(f"{source}: cannot read the model file: {e}") from None
    if size is None:
        raise ModelError(f"{source}: model file not found")
    limit = max_tensor_bytes()
    if size > limit:
        raise ResourceError(f"{source}: the model file has {_size(size)}, more than the limit of {_size(limit)}; "
                            f"refusing to read it (raise {MAX_TENSOR_BYTES_ENV} if the model is really this large)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelError(f"{source}: not a readable ONNX model (truncated or corrupted protobuf?): "
                         f"{type(e).__name__}: {e}") from None
    _check_declared_sizes(model, source, limit)
    _check_external_data(model, path.parent, source, limit)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as e:
        raise ModelError(f"{source}: cannot load external data: {e}") from None
    return model, source


def parse_graph(path_or_model: str | os.PathLike | onnx.ModelProto, check: bool = True,
                source: str | None = None) -> Graph:
    """The validated graph of an ONNX file or ModelProto (``source`` names an in-memory model in
    errors); see the module docstring for what is refused."""
    model, source = load_model_proto(path_or_model, source)
    if check:
        try:
            onnx.checker.check_model(model)
        except Exception as e:  # ValidationError, and the C++ checker's other complaints
            first = str(e).strip().splitlines()[0] if str(e).strip() else "validation failed"
            raise ModelError(f"{source}: the ONNX checker rejects the model: {first}") from None
        try:  # shapes that cannot fit (broadcasts, Concat, Reshape, Conv attributes) are refused here
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        except Exception as e:  # InferenceError and the C++ inference's other complaints
            first = str(e).strip().splitlines()[0] if str(e).strip() else "shape inference failed"
            raise ModelError(f"{source}: ONNX shape inference rejects the model: {first}") from None
    opsets = {(o.domain or ""): o.version for o in model.opset_import}
    g = model.graph
    inits: dict[str, np.ndarray] = {}
    for t in g.initializer:
        try:
            inits[t.name] = numpy_helper.to_array(t)
        except Exception as e:
            raise ModelError(f"{source}: initializer {t.name!r} cannot be read (data does not match its declared "
                             f"shape {list(t.dims)} and type?): {e}") from None
    for t in g.sparse_initializer:
        raise ModelError(f"{source}: sparse initializer {t.values.name!r} is not supported")
    init_names = set(inits)
    inputs = [_value_info(v) for v in g.input if v.name not in init_names]
    for v in inputs:
        if v.elem_type in _NOT_NUMERIC or v.elem_type not in onnx.TensorProto.DataType.values():
            raise ModelError(f"{source}: graph input {v.name!r} has element type {_type_name(v.elem_type)}; the "
                             "runtime takes numeric tensors (float, integer or bool)")
    outputs = [_value_info(v) for v in g.output]
    value_info = {v.name: _value_info(v) for v in list(g.value_info) + list(g.input) + list(g.output)}

    raw_nodes = []
    for i, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{i}"
        dom = n.domain if n.domain != "ai.onnx" else ""
        if dom not in KNOWN_DOMAINS:
            raise ModelError(f"{source}: {n.op_type} node {name!r} is in unsupported domain {n.domain!r}")
        if n.op_type in ("If", "Loop", "Scan"):
            raise ModelError(f"{source}: {n.op_type} node {name!r}: control flow is not supported by the integer runtime")
        if dom == "com.microsoft" and n.op_type in CONTRIB_ATTRIBUTES:
            _check_contrib_attributes(n, name, source)
        attrs = {}
        for a in n.attribute:
            try:
                attrs[a.name] = _attr_value(a)
            except Exception as e:  # an attribute without a value, a tensor whose data does not fit its shape
                raise ModelError(f"{source}: {n.op_type} node {name!r}: attribute {a.name!r} cannot be read: "
                                 f"{type(e).__name__}: {e}") from None
        raw_nodes.append(Node(n.op_type, name, tuple(n.input), tuple(n.output), attrs, dom))
    nodes = _toposort(raw_nodes, set(init_names) | {v.name for v in inputs}, source)
    produced = {o for n in nodes for o in n.outputs if o} | init_names | {v.name for v in inputs}
    for o in outputs:
        if o.name not in produced:
            raise ModelError(f"{source}: graph output {o.name!r} is produced by no node")
    return Graph(source, nodes, inits, inputs, outputs, opsets, value_info)


def _check_contrib_attributes(n: onnx.NodeProto, name: str, source: str) -> None:
    spec = CONTRIB_ATTRIBUTES[n.op_type]
    where = f"{source}: com.microsoft.{n.op_type} node {name!r}"
    for a in n.attribute:
        if a.name not in spec:
            raise ModelError(f"{where}: unknown attribute {a.name!r} (expected {sorted(spec) or 'none'})")
        want = spec[a.name][0]
        if a.type != want:
            raise ModelError(f"{where}: attribute {a.name!r} must be {_A.AttributeType.Name(want)}, found "
                             f"{_A.AttributeType.Name(a.type) if a.type in _A.AttributeType.values() else a.type}")
    missing = sorted(k for k, (_, required) in spec.items() if required and k not in {a.name for a in n.attribute})
    if missing:
        raise ModelError(f"{where}: missing required attribute{'s' if len(missing) > 1 else ''} {', '.join(missing)}")


def _toposort(nodes: list[Node], available: set[str], source: str) -> list[Node]:
    producers: dict[str, Node] = {}
    for n in nodes:
        for o in n.outputs:
            if not o:
                continue
            if o in producers or o in available:
                raise ModelError(f"{source}: tensor {o!r} is produced twice ({n} and "
                                 f"{producers[o] if o in producers else 'a graph input/initializer'})")
            producers[o] = n
    for n in nodes:
        for i in n.inputs:
            if i and i not in producers and i not in available:
                raise ModelError(f"{source}: {n} reads tensor {i!r}, which no node, input or initializer produces")
    order: list[Node] = []
    state: dict[int, int] = {}  # id -> 1 visiting, 2 done
    for root in nodes:
        if state.get(id(root)) == 2:
            continue
        stack = [(root, iter(root.inputs))]
        state[id(root)] = 1
        while stack:
            node, it = stack[-1]
            advanced = False
            for i in it:
                p = producers.get(i) if i else None
                if p is None:
                    continue
                s = state.get(id(p))
                if s == 1:
                    raise ModelError(f"{source}: the graph has a cycle through {p} and {node}")
                if s is None:
                    state[id(p)] = 1
                    stack.append((p, iter(p.inputs)))
                    advanced = True
                    break
            if not advanced:
                stack.pop()
                state[id(node)] = 2
                order.append(node)
    return order
