"""A validated, read-only view of an ONNX graph for the planner.

Loading refuses, with the file, node and tensor named: unreadable or truncated protobuf, a graph
that fails ``onnx.checker``, unsupported opset domains, nodes in a cycle or reading a tensor no one
produces, initializers whose data does not match their declared shape, and external data outside
the model's folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelError

KNOWN_DOMAINS = {"", "ai.onnx", "com.microsoft"}


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


def _check_external_data(model: onnx.ModelProto, base: Path, source: str) -> None:
    base = base.resolve()
    for t in onnx.external_data_helper._get_all_tensors(model):  # noqa: SLF001 (public helper module)
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = {e.key: e.value for e in t.external_data}.get("location", "")
        target = (base / loc).resolve()
        if base not in target.parents:
            raise ModelError(f"{source}: initializer {t.name!r} has external data {loc!r} outside the model's "
                             f"folder {base}; refusing to read it")
        if not target.is_file():
            raise ModelError(f"{source}: initializer {t.name!r} refers to external data file {loc!r}, which does not exist")


def load_model_proto(path_or_model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Read an ONNX file (or take a ModelProto) with clear errors; returns (model, source name)."""
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, "<in-memory model>"
    path = Path(path_or_model)
    source = str(path)
    if not path.is_file():
        raise ModelError(f"{source}: model file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelError(f"{source}: not a readable ONNX model (truncated or corrupted protobuf?): "
                         f"{type(e).__name__}: {e}") from None
    _check_external_data(model, path.parent, source)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as e:
        raise ModelError(f"{source}: cannot load external data: {e}") from None
    return model, source


def parse_graph(path_or_model: str | os.PathLike | onnx.ModelProto, check: bool = True) -> Graph:
    model, source = load_model_proto(path_or_model)
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "validation failed"
            raise ModelError(f"{source}: the ONNX checker rejects the model: {first}") from None
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
        raw_nodes.append(Node(n.op_type, name, tuple(n.input), tuple(n.output),
                              {a.name: _attr_value(a) for a in n.attribute}, dom))
    nodes = _toposort(raw_nodes, set(init_names) | {v.name for v in inputs}, source)
    produced = {o for n in nodes for o in n.outputs if o} | init_names | {v.name for v in inputs}
    for o in outputs:
        if o.name not in produced:
            raise ModelError(f"{source}: graph output {o.name!r} is produced by no node")
    return Graph(source, nodes, inits, inputs, outputs, opsets, value_info)


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
