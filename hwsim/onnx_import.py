"""Import a float ONNX model natively as a ``torch.fx.GraphModule`` (no onnx2torch, no torchvision).

The result is what the simulator captures: layers with parameters are real ``nn.Module``
submodules (``nn.Conv1d/2d/3d``, ``nn.Linear``, ``nn.BatchNorm1d/2d/3d``, ``nn.LayerNorm``, ...)
so batch-norm folding, CLE, AdaRound and pruning can operate on them; everything else is a
``call_function`` node (``operator.*``, ``torch.*``, ``F.*`` or a small helper of this module);
constants are buffers read with ``get_attr``.

Rules
-----
- **Static shapes.** A model is imported for fixed input shapes: the ONNX input dims, with
  ``input_shapes`` overriding symbolic (or all) dims. Every node whose inputs are all constants is
  evaluated at import time (``onnx.reference``), and ``Shape``/``Size`` of a tensor whose shape ONNX
  shape inference knows becomes a constant; this repeats until nothing changes. So the shape
  subgraphs of exported models (Shape -> Gather -> Unsqueeze -> Concat -> Reshape) become a Reshape
  with a constant target shape. A dim the folding needed but could not know (a symbolic input dim
  without an ``input_shapes`` entry) is reported, naming the node and ``input_shapes``. Folded
  shapes are baked into the graph (e.g. a batch of 1), so feed the shapes the model was imported
  for; a symbolic dim that no shape computation reads stays free (torch ops are shape-generic).
- **Folds.** ``Conv`` followed by ``Add`` (or ``Sub``) of a constant that broadcasts as one value
  per output channel (shape ``(C,1,1)``, ``(1,C,1,1)``, ...) is one ``nn.Conv`` with that bias, when
  the Add is the conv output's only consumer. ``MatMul`` with a constant 2-D right operand is an
  ``nn.Linear(bias=False)``; ``Gemm`` with a constant B folds alpha, beta, transB and C into
  ``nn.Linear``; a following Add of a constant that broadcasts along the last axis only (``(N,)``,
  ``(1,N)``) becomes the Linear's bias. ``Identity`` and inference ``Dropout`` disappear.
- **Naming.** ``onnx_node_names`` maps each fx ``call_module``/``call_function`` node name to the
  ONNX node it came from; an unnamed ONNX node is called ``<op_type>_<first output name>``.
  ``onnx_tensor_names`` maps each of those fx nodes that yields an ONNX tensor to that tensor's name
  (after a fold: the Add's output).
- **Activations.** Clip(0, 6) is ``nn.ReLU6``, Clip(0, no max) ``nn.ReLU``, other finite Clips
  ``nn.Hardtanh``; HardSigmoid with ONNX's default alpha=0.2 (torch's is 1/6) is a helper node.
- **Pooling.** Symmetric pads within half the kernel are ``nn.MaxPool``/``nn.AvgPool``; other pads
  (and AvgPool with ceil_mode and count_include_pad) pad explicitly so that the windows and divisors
  are ONNX's exactly. auto_pad SAME_* follows the spec (dilation included; ONNX Runtime's pooling
  leaves the dilation out there).
- Parameters and buffers are created on the ``meta`` device and then replaced by the ONNX tensors,
  so importing draws nothing from torch's random generator.

The three attributes ``input_names``, ``output_names``, ``onnx_node_names`` (and
``onnx_tensor_names``) survive ``copy.deepcopy``; a pickled GraphModule is re-traced by torch and
loses them.
"""
from __future__ import annotations

import keyword
import math
import operator
import os
import re
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.fx as fx
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from runtime.errors import ModelError, UnsupportedError

__all__ = ["import_onnx", "supported_ops"]

MIN_OPSET = 7
_PRESERVED_KEY = getattr(fx.graph_module, "_USER_PRESERVED_ATTRIBUTES_KEY", "_user_preserved_attributes")
_NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                 "Bernoulli", "If", "Loop", "Scan"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)

_HANDLERS: dict[str, Callable[["_Builder", onnx.NodeProto], None]] = {}


def _op(*op_types: str):
    """Register the decorated function as the importer of the given ONNX op types."""
    def register(fn):
        for t in op_types:
            _HANDLERS[t] = fn
        return fn
    return register


def supported_ops() -> list[str]:
    """The ONNX op types (default domain) that :func:`import_onnx` turns into torch (plus any op
    whose inputs are all constants for the static shapes, which is evaluated at import time)."""
    return sorted(_HANDLERS)


# ---------------------------------------------------------------------------------------------
# helpers that appear as call_function targets in the imported graph
# ---------------------------------------------------------------------------------------------
def onnx_softmax_coerced(x: torch.Tensor, axis: int, log: bool = False) -> torch.Tensor:
    """Softmax of opset < 13: coerce ``x`` to 2-D ``[prod(d[:axis]), prod(d[axis:])]``, take the
    softmax of each row, restore the shape. Equal to ``softmax(x, dim=axis)`` when axis is the last
    dim.

    >>> x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    >>> round(float(onnx_softmax_coerced(x, 1).sum()), 6)
    1.0
    """
    y = torch.flatten(x, axis)
    y = F.log_softmax(y, dim=-1) if log else F.softmax(y, dim=-1)
    return y.reshape(x.shape)


def onnx_hard_sigmoid(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """ONNX HardSigmoid: ``clamp(alpha * x + beta, 0, 1)`` (ONNX default alpha=0.2, torch's 1/6).

    >>> onnx_hard_sigmoid(torch.tensor([-5.0, 0.0, 1.0, 5.0]), 0.2, 0.5).tolist()
    [0.0, 0.5, 0.699999988079071, 1.0]
    """
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


def onnx_prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """ONNX PRelu with a slope of any broadcastable shape: ``x if x >= 0 else slope * x``."""
    return torch.where(x >= 0, x, x * slope)


def onnx_avg_pool_padded(x: torch.Tensor, kernel: tuple, stride: tuple, pads_begin: tuple, pads_end: tuple,
                         extra_end: tuple, count_include_pad: bool) -> torch.Tensor:
    """AveragePool with any (asymmetric) pads and ONNX's divisor.

    ``sum(window of zero-padded x) / count(window)``, where count includes the ONNX pads when
    ``count_include_pad`` and never includes ``extra_end`` (the zeros that only make the last
    ceil_mode windows exist). Both pools divide by the same kernel size, which cancels.
    """
    nd = len(kernel)
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
    tp_x, tp_valid, tp_extra = [], [], []
    for i in reversed(range(nd)):
        tp_x += [pads_begin[i], pads_end[i] + extra_end[i]]
        tp_valid += [pads_begin[i], pads_end[i]]
        tp_extra += [0, extra_end[i]]
    ones = torch.ones_like(x[:1, :1])
    if count_include_pad:
        mask = F.pad(F.pad(ones, tp_valid, value=1.0), tp_extra, value=0.0)
    else:
        mask = F.pad(ones, tp_x, value=0.0)
    num = pool(F.pad(x, tp_x, value=0.0), kernel, stride)
    return num / pool(mask, kernel, stride)


def onnx_lerp_axis(x: torch.Tensor, axis: int, i0: torch.Tensor, i1: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """One axis of a linear Resize: ``x[i0] * (1 - w1) + x[i1] * w1`` along ``axis``. The index
    vectors and the weights (shaped to broadcast along ``axis``) are constants precomputed from the
    ONNX coordinate transformation.

    >>> x = torch.tensor([[0.0, 10.0]])
    >>> onnx_lerp_axis(x, 1, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), torch.tensor([0.0, 0.25, 0.0])).tolist()
    [[0.0, 2.5, 10.0]]
    """
    return torch.index_select(x, axis, i0) * (1 - w1) + torch.index_select(x, axis, i1) * w1


# ---------------------------------------------------------------------------------------------
# loading, checking, constant folding
# ---------------------------------------------------------------------------------------------
def _load(model) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, f"<ModelProto graph {model.graph.name!r}>"
    if not isinstance(model, (str, os.PathLike)):
        raise ModelError(f"import_onnx: expected a path or an onnx.ModelProto, found {type(model).__name__}")
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise ModelError(f"{path}: ONNX file not found")
    from runtime.graph import load_model_proto

    return load_model_proto(path)  # size limits, external data confined to the model's folder, clear errors


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}_{node.output[0] if node.output else ''}"


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _dims(vi: onnx.ValueInfoProto) -> tuple | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)


def _static_inputs(g: onnx.GraphProto, init_names: set, input_shapes, src: str) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers, float32-checked, with ``input_shapes`` applied."""
    inputs = [vi for vi in g.input if vi.name not in init_names]
    names = [vi.name for vi in inputs]
    overrides = dict(input_shapes or {})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ModelError(f"{src}: input_shapes names {unknown}, which are not graph inputs; inputs are {names}")
    out = []
    for vi in inputs:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or t.elem_type != onnx.TensorProto.FLOAT:
            found = onnx.TensorProto.DataType.Name(t.elem_type) if vi.type.HasField("tensor_type") else "a non-tensor"
            raise UnsupportedError(f"{src}: graph input {vi.name!r} is {found}; only float32 model inputs are "
                                   f"imported (a float model)")
        dims = _dims(vi)
        if vi.name in overrides:
            new = tuple(overrides[vi.name])
            if not all(isinstance(d, (int, np.integer)) and d > 0 for d in new):
                raise ModelError(f"{src}: input_shapes[{vi.name!r}] = {new}: expected positive integers")
            if dims is not None and len(dims) != len(new):
                raise ModelError(f"{src}: input_shapes[{vi.name!r}] has rank {len(new)}, the model input has "
                                 f"rank {len(dims)} ({dims})")
            if dims is not None:
                for i, (d, n) in enumerate(zip(dims, new)):
                    if d is not None and d != n:
                        raise ModelError(f"{src}: input_shapes[{vi.name!r}] dim {i} = {n}, but the model fixes it "
                                         f"to {d}")
            dims = tuple(int(d) for d in new)
            vi = helper.make_tensor_value_info(vi.name, onnx.TensorProto.FLOAT, list(dims))
        out.append(vi)
    return out


def _sort_and_prune(g: onnx.GraphProto, available: set, src: str) -> list[onnx.NodeProto]:
    """Nodes needed for the graph outputs, topologically sorted (stable); missing inputs and cycles
    are ModelErrors naming the node and the tensor."""
    producer = {}
    for node in g.node:
        for o in node.output:
            if o:
                producer[o] = node
    needed, stack = set(), [o.name for o in g.output]
    for name in stack:
        if name not in producer and name not in available:
            raise ModelError(f"{src}: graph output {name!r} is produced by no node and is no input or initializer")
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        for i in node.input:
            if i and i not in producer and i not in available:
                raise ModelError(f"{src}: node {_label(node)!r} ({node.op_type}): input {i!r} is missing (no node "
                                 f"produces it and it is no graph input or initializer)")
            if i:
                stack.append(i)
    order, done, visiting = [], set(available), set()
    for start in (n for n in g.node if id(n) in needed):
        todo = [(start, False)]
        while todo:
            node, expanded = todo.pop()
            if all(o in done for o in node.output if o):
                continue
            if expanded:
                visiting.discard(id(node))
                order.append(node)
                done.update(o for o in node.output if o)
                continue
            if id(node) in visiting:
                raise ModelError(f"{src}: the graph has a cycle through node {_label(node)!r} ({node.op_type})")
            visiting.add(id(node))
            todo.append((node, True))
            todo.extend((producer[i], False) for i in node.input if i and i not in done)
    return order


def _infer_shapes(model: onnx.ModelProto, nodes, inputs, consts: dict, init_protos: dict, src: str) -> dict:
    g = model.graph
    used = {i for n in nodes for i in n.input}
    inits = [init_protos.get(k) or numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items() if k in used]
    graph = helper.make_graph(nodes, g.name or "g", inputs, list(g.output), initializer=inits)
    m = helper.make_model(graph, opset_imports=list(model.opset_import))
    m.ir_version = max(model.ir_version, 4)
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as e:
        raise ModelError(f"{src}: ONNX shape inference failed: {e}") from None
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.HasField("tensor_type"):
            shapes[vi.name] = _dims(vi)
    return shapes


def _evaluate(node: onnx.NodeProto, feeds: dict, opsets, src: str) -> list[np.ndarray]:
    """Run one node whose inputs are all constants with the ONNX reference evaluator."""
    if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
        return [numpy_helper.to_array(node.attribute[0].t)]
    from onnx.reference import ReferenceEvaluator

    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in feeds.items()]
    outs = [helper.make_value_info(o, onnx.TypeProto()) for o in node.output if o]
    m = helper.make_model(helper.make_graph([node], "fold", ins, outs), opset_imports=opsets)
    try:
        res = ReferenceEvaluator(m).run(None, feeds)
    except Exception as e:
        raise ModelError(f"{src}: node {_label(node)!r} ({node.op_type}): evaluating it on its constant inputs "
                         f"failed: {type(e).__name__}: {e}") from None
    return [np.asarray(r) for r in res]


def _fold_constants(model, nodes, inputs, consts, init_protos, src):
    """Fold every node computable at import time (all inputs constant, or Shape/Size of a tensor
    with a known static shape); repeat with fresh shape inference until nothing changes."""
    opsets = list(model.opset_import)
    while True:
        shapes = _infer_shapes(model, nodes, inputs, consts, init_protos, src)
        keep, changed = [], False
        for node in nodes:
            ins = [i for i in node.input if i]
            default_domain = node.domain in ("", "ai.onnx")
            if default_domain and node.op_type in ("Shape", "Size") and ins[0] not in consts:
                dims = shapes.get(ins[0])
                if dims is not None and all(d is not None for d in dims):
                    if node.op_type == "Size":
                        consts[node.output[0]] = np.array(int(np.prod(dims, dtype=np.int64)), np.int64)
                    else:
                        a = _attrs(node)
                        start, end = a.get("start", 0), a.get("end", None)
                        consts[node.output[0]] = np.array(dims[slice(start, end)], np.int64)
                    changed = True
                    continue
            if default_domain and node.op_type not in _NOT_FOLDABLE and all(i in consts for i in ins):
                outs = _evaluate(node, {i: consts[i] for i in ins}, opsets, src)
                consts.update((o, v) for o, v in zip(node.output, outs) if o)
                changed = True
                continue
            keep.append(node)
        nodes = keep
        if not changed:
            return nodes, shapes


# ---------------------------------------------------------------------------------------------
# the fx graph builder
# ---------------------------------------------------------------------------------------------
_RESERVED = set(dir(fx.GraphModule)) | {"training", "meta", "graph", "input_names", "output_names",
                                         "onnx_node_names", "onnx_tensor_names"}


def _ident(name: str, prefix: str) -> str:
    """A readable attribute name: '/features/features.0/Conv' -> 'features_features_0_Conv'."""
    s = re.sub(r"\W", "_", name).strip("_")
    if not s or not s.isidentifier() or keyword.iskeyword(s) or s in _RESERVED:
        s = f"{prefix}_{s}"
    return s


class _Builder:
    def __init__(self, src, opset, consts, shapes, consumers, graph_outputs):
        self.src, self.opset = src, opset
        self.consts, self.shapes = consts, shapes
        self.consumers, self.graph_outputs = consumers, graph_outputs
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.env: dict[str, fx.Node] = {}
        self.node_names: dict[str, str] = {}
        self.tensor_names: dict[str, str] = {}
        self._buffers: dict[str, fx.Node] = {}

    # -- errors ------------------------------------------------------------------------------
    def where(self, node) -> str:
        return f"{self.src}: node {_label(node)!r} ({node.op_type})"

    def unsupported(self, node, what: str) -> UnsupportedError:
        return UnsupportedError(f"{self.where(node)}: {what}")

    # -- reading inputs ------------------------------------------------------------------------
    def name(self, node, i) -> str | None:
        return node.input[i] if i < len(node.input) and node.input[i] else None

    def is_const(self, node, i) -> bool:
        n = self.name(node, i)
        return n is not None and n in self.consts

    def const(self, node, i, what: str, optional: bool = False) -> np.ndarray | None:
        n = self.name(node, i)
        if n is None:
            if optional:
                return None
            raise ModelError(f"{self.where(node)}: input {i} ({what}) is missing")
        if n not in self.consts:
            raise self.unsupported(node, f"input {i} {n!r} ({what}) must be a constant; it is computed from the "
                                   f"model inputs and constant folding for static shapes could not evaluate it (if "
                                   f"it depends on a symbolic input dim, pass input_shapes=...)")
        return self.consts[n]

    def value(self, node, i) -> fx.Node:
        """Input ``i`` as an fx node (a constant becomes a buffer read by get_attr)."""
        n = self.name(node, i)
        if n is None:
            raise ModelError(f"{self.where(node)}: input {i} is missing")
        if n in self.consts:
            return self.buffer(n, self.consts[n])
        return self.env[n]

    def shape(self, tensor: str | None) -> tuple | None:
        return self.shapes.get(tensor) if tensor else None

    def rank(self, node, i, why: str) -> int:
        s = self.shape(self.name(node, i))
        if s is None:
            raise ModelError(f"{self.where(node)}: the rank of input {self.name(node, i)!r} is unknown after shape "
                             f"inference and is needed for {why}; give the model static input shapes (input_shapes=)")
        return len(s)

    def dims(self, node, i, why: str) -> tuple:
        s = self.shape(self.name(node, i))
        if s is None or any(d is None for d in s):
            raise ModelError(f"{self.where(node)}: the shape of input {self.name(node, i)!r} is {s}, a static shape "
                             f"is needed for {why}; pass input_shapes= for the symbolic input dims")
        return s

    def attrs(self, node) -> dict:
        return _attrs(node)

    # -- emitting ------------------------------------------------------------------------------
    def _unique_attr(self, base: str) -> str:
        name, k = base, 1
        while hasattr(self.root, name):
            name, k = f"{base}_{k}", k + 1
        return name

    def buffer(self, key: str, array: np.ndarray) -> fx.Node:
        if key not in self._buffers:
            attr = self._unique_attr(_ident("c_" + key, "c"))
            self.root.register_buffer(attr, torch.tensor(np.ascontiguousarray(array)))
            self._buffers[key] = self.graph.create_node("get_attr", attr, name=attr)
        return self._buffers[key]

    def new_buffer(self, node, suffix: str, array) -> fx.Node:
        return self.buffer(f"{_label(node)}_{suffix}_{len(self._buffers)}", np.asarray(array))

    def _record(self, fx_node: fx.Node, node) -> fx.Node:
        self.node_names[fx_node.name] = _label(node)
        return fx_node

    def module(self, node, mod: nn.Module, args, suffix: str = "") -> fx.Node:
        base = _ident(_label(node) + (f"_{suffix}" if suffix else ""), "m")
        target = self._unique_attr(base)
        self.root.add_module(target, mod)
        return self._record(self.graph.create_node("call_module", target, tuple(args), {}, name=target), node)

    def call(self, node, fn, args, kwargs=None, suffix: str = "") -> fx.Node:
        base = _ident(_label(node) + (f"_{suffix}" if suffix else ""), "n")
        return self._record(self.graph.create_node("call_function", fn, tuple(args), kwargs or {}, name=base), node)

    def out(self, node, value, i: int = 0) -> None:
        tensor = node.output[i]
        self.env[tensor] = value
        if value.op in ("call_module", "call_function"):
            self.tensor_names[value.name] = tensor

    def sole_consumer(self, tensor: str) -> bool:
        return self.consumers.get(tensor, 0) == 1 and tensor not in self.graph_outputs


def _parameter(array: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.tensor(np.ascontiguousarray(array, dtype=np.float32)))


def _load_params(mod: nn.Module, **arrays) -> nn.Module:
    """Replace the (meta-device) parameters and buffers of ``mod`` by the given arrays."""
    for k, v in arrays.items():
        if v is None:
            continue
        if k in mod._parameters:
            setattr(mod, k, _parameter(v))
        else:
            setattr(mod, k, torch.tensor(np.ascontiguousarray(v)))
    return mod


def _torch_pad(begin, end) -> list[int]:
    """ONNX per-axis (begin..., end...) -> F.pad order (last axis first)."""
    out = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [int(b), int(e)]
    return out


def _spatial_pads(b: _Builder, node, kernel, strides, dilations) -> tuple[list[int], list[int]]:
    """(begin, end) pads of a Conv/pool node, resolving auto_pad (SAME_* needs the input size when
    a stride is > 1: total = max((ceil(in/s) - 1) * s + (k - 1) * d + 1 - in, 0))."""
    a = b.attrs(node)
    nd = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if auto == "NOTSET":
        pads = list(a.get("pads", [0] * 2 * nd))
        if len(pads) != 2 * nd:
            raise ModelError(f"{b.where(node)}: pads {pads} should have {2 * nd} entries")
        return pads[:nd], pads[nd:]
    if auto == "VALID":
        return [0] * nd, [0] * nd
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise ModelError(f"{b.where(node)}: auto_pad {auto!r}, expected NOTSET, VALID, SAME_UPPER or SAME_LOWER")
    begin, end = [], []
    in_dims = None
    for i in range(nd):
        eff = (kernel[i] - 1) * dilations[i] + 1
        if strides[i] == 1:
            total = eff - 1
        else:
            in_dims = in_dims or b.dims(node, 0, f"auto_pad {auto} with strides {list(strides)}")
            n = in_dims[2 + i]
            total = max((-(-n // strides[i]) - 1) * strides[i] + eff - n, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin, end


# ---------------------------------------------------------------------------------------------
# layers with parameters
# ---------------------------------------------------------------------------------------------
@_op("Conv")
def _conv(b: _Builder, node):
    x = b.value(node, 0)
    w = b.const(node, 1, "weight")
    bias = b.const(node, 2, "bias", optional=True)
    nd = w.ndim - 2
    if nd not in (1, 2, 3):
        raise b.unsupported(node, f"a {nd}-D convolution (weight shape {w.shape}); 1-D, 2-D and 3-D are imported")
    a = b.attrs(node)
    kernel = tuple(a.get("kernel_shape", w.shape[2:]))
    if kernel != tuple(w.shape[2:]):
        raise ModelError(f"{b.where(node)}: kernel_shape {list(kernel)} disagrees with the weight shape {w.shape}")
    strides = tuple(a.get("strides", [1] * nd))
    dil = tuple(a.get("dilations", [1] * nd))
    group = int(a.get("group", 1))
    begin, end = _spatial_pads(b, node, kernel, strides, dil)
    padding = tuple(begin)
    if begin != end:
        x = b.call(node, F.pad, (x, _torch_pad(begin, end)), suffix="pad")
        padding = (0,) * nd
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]
    conv = cls(w.shape[1] * group, w.shape[0], kernel, strides, padding, dil, group, bias=bias is not None,
               device="meta")
    b.out(node, b.module(node, _load_params(conv, weight=w, bias=bias), (x,)))


def _linear(b: _Builder, node, x: fx.Node, weight: np.ndarray, bias: np.ndarray | None) -> fx.Node:
    """nn.Linear with weight [N, K] (and bias [N])."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    return b.module(node, _load_params(lin, weight=weight, bias=bias), (x,))


@_op("MatMul")
def _matmul(b: _Builder, node):
    if b.is_const(node, 1) and b.consts[node.input[1]].ndim == 2 and not b.is_const(node, 0):
        w = b.consts[node.input[1]]
        b.out(node, _linear(b, node, b.env[node.input[0]], w.T, None))
    else:
        b.out(node, b.call(node, torch.matmul, (b.value(node, 0), b.value(node, 1))))


@_op("Gemm")
def _gemm(b: _Builder, node):
    """Y = alpha * A' @ B' + beta * C, A' = A^T if transA, B' = B^T if transB."""
    a = b.attrs(node)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    x = b.value(node, 0)
    if a.get("transA", 0):
        x = b.call(node, torch.t, (x,), suffix="transA")
    c_name = b.name(node, 2)
    if not b.is_const(node, 1):
        bm = b.value(node, 1)
        if a.get("transB", 0):
            bm = b.call(node, torch.t, (bm,), suffix="transB")
        y = b.call(node, torch.matmul, (x, bm), suffix="matmul" if alpha != 1 or c_name else "")
        if alpha != 1.0:
            y = b.call(node, operator.mul, (y, alpha), suffix="alpha" if c_name else "")
        if c_name:
            c = b.value(node, 2)
            if beta != 1.0:
                c = b.call(node, operator.mul, (c, beta), suffix="beta")
            y = b.call(node, operator.add, (y, c))
        b.out(node, y)
        return
    bmat = b.consts[node.input[1]].astype(np.float64)
    weight = (alpha * (bmat if a.get("transB", 0) else bmat.T)).astype(np.float32)  # [N, K]
    n = weight.shape[0]
    bias, extra = None, None
    if c_name and b.is_const(node, 2):
        c = beta * b.consts[c_name].astype(np.float64)
        if c.ndim <= 2 and c.size in (1, n) and (c.ndim < 2 or c.shape[0] == 1):
            bias = np.broadcast_to(c.reshape(-1), (n,)).astype(np.float32)
        else:
            extra = b.new_buffer(node, "C", c.astype(np.float32))
    elif c_name:
        extra = b.value(node, 2)
        if beta != 1.0:
            extra = b.call(node, operator.mul, (extra, beta), suffix="beta")
    y = _linear(b, node, x, weight, bias)
    if extra is not None:
        y = b.call(node, operator.add, (y, extra), suffix="C")
    b.out(node, y)


def _try_fold_bias(b: _Builder, node) -> bool:
    """Add/Sub(layer output, constant) -> the layer's bias, when the constant broadcasts as one
    value per output channel (Conv: axis 1) or per output feature (Linear: last axis)."""
    if len(node.input) != 2 or sum(b.is_const(node, i) for i in (0, 1)) != 1:
        return False
    di = 0 if b.is_const(node, 1) else 1
    if node.op_type == "Sub" and di != 0:
        return False
    tensor, k = node.input[di], b.consts[node.input[1 - di]]
    producer = b.env.get(tensor)
    if producer is None or producer.op != "call_module" or not b.sole_consumer(tensor):
        return False
    if b.tensor_names.get(producer.name) != tensor:  # reached through an Identity: other readers may exist
        return False
    if not np.issubdtype(k.dtype, np.floating):
        return False
    mod = b.root.get_submodule(producer.target)
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        rank, channels, axis = mod.weight.dim(), mod.out_channels, 1
    elif isinstance(mod, nn.Linear):
        s = b.shape(tensor)
        rank = len(s) if s is not None else 1
        channels, axis = mod.out_features, rank - 1
    else:
        return False
    if k.ndim > rank:
        return False
    padded = (1,) * (rank - k.ndim) + k.shape
    if any(d != 1 for i, d in enumerate(padded) if i != axis) or padded[axis] not in (1, channels):
        return False
    vec = np.broadcast_to(k.astype(np.float64).reshape(-1), (channels,))
    if node.op_type == "Sub":
        vec = -vec
    old = np.zeros(channels) if mod.bias is None else mod.bias.detach().double().numpy()
    mod.bias = _parameter((old + vec).astype(np.float32))
    b.env[node.output[0]] = producer
    b.tensor_names[producer.name] = node.output[0]
    return True


@_op("BatchNormalization")
def _batchnorm(b: _Builder, node):
    a = b.attrs(node)
    if a.get("training_mode", 0):
        raise b.unsupported(node, "training_mode=1; only the inference form is imported")
    if a.get("spatial", 1) != 1:
        raise b.unsupported(node, "spatial=0 (per-element statistics); only spatial=1 is imported")
    if any(o and (b.consumers.get(o, 0) or o in b.graph_outputs) for o in node.output[1:]):
        raise b.unsupported(node, "its running mean/var outputs are used; only the inference form is imported")
    scale, bias = b.const(node, 1, "scale"), b.const(node, 2, "B")
    mean, var = b.const(node, 3, "input_mean"), b.const(node, 4, "input_var")
    rank = b.rank(node, 0, "choosing BatchNorm1d/2d/3d")
    if rank not in (2, 3, 4, 5):
        raise b.unsupported(node, f"input rank {rank}; ranks 2..5 are imported")
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    bn = cls(scale.shape[0], eps=float(a.get("epsilon", 1e-5)), device="meta")
    _load_params(bn, weight=scale, bias=bias, running_mean=mean.astype(np.float32),
                 running_var=var.astype(np.float32), num_batches_tracked=np.array(0, np.int64))
    bn.eval()
    b.out(node, b.module(node, bn, (b.value(node, 0),)))


@_op("InstanceNormalization")
def _instancenorm(b: _Builder, node):
    scale, bias = b.const(node, 1, "scale"), b.const(node, 2, "B")
    rank = b.rank(node, 0, "choosing InstanceNorm1d/2d/3d")
    if rank not in (3, 4, 5):
        raise b.unsupported(node, f"input rank {rank}; ranks 3..5 are imported")
    cls = {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d, 5: nn.InstanceNorm3d}[rank]
    mod = cls(scale.shape[0], eps=float(b.attrs(node).get("epsilon", 1e-5)), affine=True, device="meta")
    b.out(node, b.module(node, _load_params(mod, weight=scale, bias=bias), (b.value(node, 0),)))


@_op("LayerNormalization")
def _layernorm(b: _Builder, node):
    a = b.attrs(node)
    if any(o and (b.consumers.get(o, 0) or o in b.graph_outputs) for o in node.output[1:]):
        raise b.unsupported(node, "its Mean/InvStdDev outputs are used")
    rank = b.rank(node, 0, "the normalized axes")
    axis = int(a.get("axis", -1)) % rank
    scale = b.const(node, 1, "Scale")
    bias = b.const(node, 2, "B", optional=True)
    norm_shape = b.shape(node.input[0])[axis:]
    if scale.shape != tuple(norm_shape):
        if any(d is None for d in norm_shape) and scale.ndim == rank - axis:
            norm_shape = scale.shape
        else:
            raise b.unsupported(node, f"Scale of shape {scale.shape} for normalized shape {norm_shape}")
    mod = nn.LayerNorm(tuple(norm_shape), eps=float(a.get("epsilon", 1e-5)), bias=bias is not None, device="meta")
    b.out(node, b.module(node, _load_params(mod, weight=scale, bias=bias), (b.value(node, 0),)))


@_op("PRelu")
def _prelu(b: _Builder, node):
    slope = b.const(node, 1, "slope")
    x = b.value(node, 0)
    s = b.shape(node.input[0])
    if slope.size == 1:
        mod = nn.PReLU(1, device="meta")
        b.out(node, b.module(node, _load_params(mod, weight=slope.reshape(1)), (x,)))
        return
    if s is not None and len(s) >= 2 and slope.ndim <= len(s):
        padded = (1,) * (len(s) - slope.ndim) + slope.shape
        if all(d == 1 for i, d in enumerate(padded) if i != 1):
            mod = nn.PReLU(padded[1], device="meta")
            b.out(node, b.module(node, _load_params(mod, weight=slope.reshape(-1)), (x,)))
            return
    b.out(node, b.call(node, onnx_prelu, (x, b.value(node, 1))))


# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------
_SIMPLE_MODULES = {"Relu": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "HardSwish": nn.Hardswish,
                   "Softplus": nn.Softplus, "Softsign": nn.Softsign, "Mish": nn.Mish}


@_op(*_SIMPLE_MODULES)
def _simple_module(b: _Builder, node):
    b.out(node, b.module(node, _SIMPLE_MODULES[node.op_type](), (b.value(node, 0),)))


@_op("LeakyRelu")
def _leaky_relu(b: _Builder, node):
    mod = nn.LeakyReLU(float(b.attrs(node).get("alpha", 0.01)))
    b.out(node, b.module(node, mod, (b.value(node, 0),)))


@_op("Elu")
def _elu(b: _Builder, node):
    b.out(node, b.module(node, nn.ELU(float(b.attrs(node).get("alpha", 1.0))), (b.value(node, 0),)))


@_op("Gelu")
def _gelu(b: _Builder, node):
    b.out(node, b.module(node, nn.GELU(approximate=b.attrs(node).get("approximate", "none")), (b.value(node, 0),)))


@_op("HardSigmoid")
def _hard_sigmoid(b: _Builder, node):
    a = b.attrs(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    x = b.value(node, 0)
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5:
        b.out(node, b.module(node, nn.Hardsigmoid(), (x,)))
    else:
        b.out(node, b.call(node, onnx_hard_sigmoid, (x, alpha, beta)))


@_op("Clip")
def _clip(b: _Builder, node):
    """Clip(0, 6) -> ReLU6; Clip(0, none) -> ReLU; both bounds finite -> Hardtanh; else torch.clamp."""
    if b.opset < 11:
        a = b.attrs(node)
        lo, hi = float(a.get("min", -np.inf)), float(a.get("max", np.inf))
    else:
        lo_a = b.const(node, 1, "min", optional=True)
        hi_a = b.const(node, 2, "max", optional=True)
        lo = -np.inf if lo_a is None else float(lo_a)
        hi = np.inf if hi_a is None else float(hi_a)
    lo = -np.inf if lo <= -_FLOAT32_MAX else lo
    hi = np.inf if hi >= _FLOAT32_MAX else hi
    x = b.value(node, 0)
    if lo == 0 and hi == 6:
        b.out(node, b.module(node, nn.ReLU6(), (x,)))
    elif lo == 0 and hi == np.inf:
        b.out(node, b.module(node, nn.ReLU(), (x,)))
    elif np.isfinite(lo) and np.isfinite(hi):
        b.out(node, b.module(node, nn.Hardtanh(lo, hi), (x,)))
    else:
        kw = {"min": lo if np.isfinite(lo) else None, "max": hi if np.isfinite(hi) else None}
        b.out(node, b.call(node, torch.clamp, (x,), kw))


_SOFTMAX = {"Softmax": F.softmax, "LogSoftmax": F.log_softmax}


@_op(*_SOFTMAX)
def _softmax(b: _Builder, node):
    """opset >= 13: one axis (default -1); opset < 13: coerce to 2-D at axis (default 1)."""
    x = b.value(node, 0)
    if b.opset >= 13:
        b.out(node, b.call(node, _SOFTMAX[node.op_type], (x,), {"dim": int(b.attrs(node).get("axis", -1))}))
        return
    axis = int(b.attrs(node).get("axis", 1))
    s = b.shape(node.input[0])
    if s is not None and axis % len(s) == len(s) - 1:
        b.out(node, b.call(node, _SOFTMAX[node.op_type], (x,), {"dim": axis}))
    else:
        if axis < 0:
            axis %= b.rank(node, 0, "a negative softmax axis")
        b.out(node, b.call(node, onnx_softmax_coerced, (x, axis, node.op_type == "LogSoftmax")))


# ---------------------------------------------------------------------------------------------
# elementwise
# ---------------------------------------------------------------------------------------------
_BINARY = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": operator.truediv}


@_op(*_BINARY)
def _binary(b: _Builder, node):
    if node.op_type in ("Add", "Sub") and _try_fold_bias(b, node):
        return
    b.out(node, b.call(node, _BINARY[node.op_type], (b.value(node, 0), b.value(node, 1))))


@_op("Pow")
def _pow(b: _Builder, node):
    if b.is_const(node, 1) and b.consts[node.input[1]].size == 1:
        exponent = float(b.consts[node.input[1]].reshape(()))
        b.out(node, b.call(node, torch.pow, (b.value(node, 0), exponent)))
    else:
        b.out(node, b.call(node, torch.pow, (b.value(node, 0), b.value(node, 1))))


_UNARY = {"Exp": torch.exp, "Sqrt": torch.sqrt, "Neg": operator.neg, "Abs": torch.abs, "Log": torch.log,
          "Reciprocal": torch.reciprocal, "Erf": torch.erf, "Floor": torch.floor, "Ceil": torch.ceil,
          "Sin": torch.sin, "Cos": torch.cos}


@_op(*_UNARY)
def _unary(b: _Builder, node):
    b.out(node, b.call(node, _UNARY[node.op_type], (b.value(node, 0),)))


_VARIADIC = {"Max": torch.maximum, "Min": torch.minimum, "Sum": operator.add, "Mean": operator.add}


@_op(*_VARIADIC)
def _variadic(b: _Builder, node):
    ins = [i for i in range(len(node.input)) if node.input[i]]
    y = b.value(node, ins[0])
    for k, i in enumerate(ins[1:]):
        last = k == len(ins) - 2 and node.op_type != "Mean"
        y = b.call(node, _VARIADIC[node.op_type], (y, b.value(node, i)), suffix="" if last else str(k))
    if node.op_type == "Mean":
        y = b.call(node, operator.truediv, (y, float(len(ins))))
    elif len(ins) == 1:
        y = b.call(node, torch.clone, (y,))
    b.out(node, y)


@_op("Identity", "Dropout")
def _identity(b: _Builder, node):
    if node.op_type == "Dropout":
        if len(node.output) > 1 and node.output[1] and (b.consumers.get(node.output[1], 0)
                                                        or node.output[1] in b.graph_outputs):
            raise b.unsupported(node, "its mask output is used; only inference Dropout (identity) is imported")
        mode = b.const(node, 2, "training_mode", optional=True)
        if mode is not None and bool(mode):
            raise b.unsupported(node, "training_mode=True; only inference Dropout (identity) is imported")
    b.env[node.output[0]] = b.value(node, 0)


@_op("Cast")
def _cast(b: _Builder, node):
    to = b.attrs(node).get("to")
    if to != onnx.TensorProto.FLOAT:
        raise b.unsupported(node, f"a Cast of a computed tensor to {onnx.TensorProto.DataType.Name(to)}; only "
                            "float32 values flow through an imported graph")
    b.env[node.output[0]] = b.value(node, 0)


@_op("Shape", "Size")
def _shape(b: _Builder, node):
    raise ModelError(f"{b.where(node)}: the shape of {node.input[0]!r} is {b.shape(node.input[0])}, not static, so "
                     f"this shape computation cannot be folded; the model is imported for static shapes: pass "
                     f"input_shapes= for the symbolic input dims")


# ---------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------
def _pool_out(n, k_eff, s, pb, pe, ceil):
    """ONNX/torch pooled length: floor or ceil of (n + pb + pe - k_eff)/s + 1; in ceil mode the last
    window must start inside the input or the begin padding."""
    num = n + pb + pe - k_eff
    o = (-(-num // s) if ceil else num // s) + 1
    if ceil and (o - 1) * s >= n + pb:
        o -= 1
    return o


@_op("MaxPool", "AveragePool")
def _pool(b: _Builder, node):
    if len(node.output) > 1 and node.output[1] and (b.consumers.get(node.output[1], 0)
                                                    or node.output[1] in b.graph_outputs):
        raise b.unsupported(node, "its Indices output is used")
    a = b.attrs(node)
    if "kernel_shape" not in a:
        raise ModelError(f"{b.where(node)}: kernel_shape attribute is missing")
    kernel = tuple(a["kernel_shape"])
    nd = len(kernel)
    if nd not in (1, 2, 3):
        raise b.unsupported(node, f"{nd}-D pooling; 1-D, 2-D and 3-D are imported")
    strides = tuple(a.get("strides", [1] * nd))
    dil = tuple(a.get("dilations", [1] * nd))
    ceil = bool(a.get("ceil_mode", 0))
    is_max = node.op_type == "MaxPool"
    if not is_max and dil != (1,) * nd:
        raise b.unsupported(node, f"AveragePool with dilations {list(dil)}")
    begin, end = _spatial_pads(b, node, kernel, strides, dil)
    cip = bool(a.get("count_include_pad", 0))
    x = b.value(node, 0)
    sym = begin == end and all(p <= k // 2 for p, k in zip(begin, kernel))
    if sym and (is_max or not ceil or not cip):
        if is_max:
            mod = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[nd - 1](kernel, strides, tuple(begin), dil,
                                                                      ceil_mode=ceil)
        else:
            mod = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[nd - 1](kernel, strides, tuple(begin), ceil_mode=ceil,
                                                                     count_include_pad=cip)
        b.out(node, b.module(node, mod, (x,)))
        return
    # explicit padding: pad so that floor-mode pooling gives exactly ONNX's output windows
    extra = [0] * nd
    if ceil:
        dims = b.dims(node, 0, "ceil_mode pooling with asymmetric or large pads")
        for i in range(nd):
            k_eff = (kernel[i] - 1) * dil[i] + 1
            o = _pool_out(dims[2 + i], k_eff, strides[i], begin[i], end[i], True)
            extra[i] = max((o - 1) * strides[i] + k_eff - (dims[2 + i] + begin[i] + end[i]), 0)
    if is_max:
        ends = [e + x_ for e, x_ in zip(end, extra)]
        xp = b.call(node, F.pad, (x, _torch_pad(begin, ends)), {"value": -math.inf}, suffix="pad")
        mod = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[nd - 1](kernel, strides, 0, dil)
        b.out(node, b.module(node, mod, (xp,)))
    else:
        b.out(node, b.call(node, onnx_avg_pool_padded,
                           (x, kernel, strides, tuple(begin), tuple(end), tuple(extra), cip)))


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(b: _Builder, node):
    rank = b.rank(node, 0, "choosing the pool dimensionality")
    if rank not in (3, 4, 5):
        raise b.unsupported(node, f"input rank {rank}; ranks 3..5 are imported")
    avg = node.op_type == "GlobalAveragePool"
    cls = ((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d) if avg else
           (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d))[rank - 3]
    b.out(node, b.module(node, cls(1), (b.value(node, 0),)))


# ---------------------------------------------------------------------------------------------
# shape manipulation (on computed tensors; constant ones were folded)
# ---------------------------------------------------------------------------------------------
def _axes(b: _Builder, node, attr_until: int, what: str = "axes", optional: bool = True):
    """Axes as an attribute (opset < attr_until) or as input 1 (opset >= attr_until)."""
    if b.opset < attr_until:
        v = b.attrs(node).get(what)
        return None if v is None else [int(i) for i in v]
    v = b.const(node, 1, what, optional=optional)
    return None if v is None else [int(i) for i in np.asarray(v).reshape(-1)]


@_op("Reshape")
def _reshape(b: _Builder, node):
    """ONNX 0 copies the input dim (unless allowzero=1); -1 is inferred (same as torch)."""
    target = [int(d) for d in b.const(node, 1, "shape").reshape(-1)]
    if not b.attrs(node).get("allowzero", 0):
        s = b.shape(node.input[0])
        unresolved = []
        for i, d in enumerate(target):
            if d == 0:
                if s is not None and i < len(s) and s[i] is not None:
                    target[i] = s[i]
                else:
                    unresolved.append(i)
        if len(unresolved) == 1 and -1 in target and s is not None and \
                all(d is not None for i, d in enumerate(s) if i != unresolved[0]):
            # [0, -1] with a symbolic dim 0: the -1 is prod(the other input dims) / prod(the given dims)
            rest = int(np.prod([d for i, d in enumerate(s) if i != unresolved[0]], dtype=np.int64))
            given = int(np.prod([d for i, d in enumerate(target) if i != unresolved[0] and d != -1], dtype=np.int64))
            target[target.index(-1)] = rest // given if given else 0
            target[unresolved[0]] = -1
        elif unresolved:
            if len(unresolved) == 1 and -1 not in target:
                target[unresolved[0]] = -1
            else:
                raise ModelError(f"{b.where(node)}: shape {target} copies input dims {unresolved} (ONNX 0) whose "
                                 f"sizes are not static; pass input_shapes=")
    b.out(node, b.call(node, torch.reshape, (b.value(node, 0), tuple(target))))


@_op("Flatten")
def _flatten(b: _Builder, node):
    """[d0..dn] -> [prod(d[:axis]), prod(d[axis:])]."""
    axis = int(b.attrs(node).get("axis", 1))
    s = b.shape(node.input[0])
    if axis < 0:
        axis += b.rank(node, 0, "a negative Flatten axis")
    x = b.value(node, 0)
    if axis == 0:
        b.out(node, b.call(node, torch.reshape, (x, (1, -1))))
        return
    if s is not None and axis == len(s):
        y = b.call(node, torch.unsqueeze, (x, -1), suffix="unsqueeze")
    else:
        y = b.call(node, torch.flatten, (x, axis), suffix="" if axis == 1 else "inner")
    if axis > 1:
        y = b.call(node, torch.flatten, (y, 0, axis - 1))
    b.out(node, y)


@_op("Transpose")
def _transpose(b: _Builder, node):
    perm = b.attrs(node).get("perm")
    if perm is None:
        perm = list(reversed(range(b.rank(node, 0, "the default Transpose perm"))))
    b.out(node, b.call(node, torch.permute, (b.value(node, 0), tuple(int(p) for p in perm))))


@_op("Squeeze")
def _squeeze(b: _Builder, node):
    axes = _axes(b, node, 13)
    x = b.value(node, 0)
    if axes is None:
        b.out(node, b.call(node, torch.squeeze, (x,)))
    else:
        b.out(node, b.call(node, torch.squeeze, (x, tuple(axes))))


@_op("Unsqueeze")
def _unsqueeze(b: _Builder, node):
    axes = _axes(b, node, 13, optional=False)
    if axes is None:
        raise ModelError(f"{b.where(node)}: the axes attribute is missing")
    if any(a < 0 for a in axes):
        out_rank = b.rank(node, 0, "negative Unsqueeze axes") + len(axes)
        axes = [a % out_rank for a in axes]
    y = b.value(node, 0)
    axes = sorted(axes)
    for k, a in enumerate(axes):
        y = b.call(node, torch.unsqueeze, (y, a), suffix="" if k == len(axes) - 1 else str(k))
    b.out(node, y)


@_op("Concat")
def _concat(b: _Builder, node):
    parts = [b.value(node, i) for i in range(len(node.input)) if node.input[i]]
    b.out(node, b.call(node, torch.cat, (parts,), {"dim": int(b.attrs(node)["axis"])}))


@_op("Split")
def _split(b: _Builder, node):
    a = b.attrs(node)
    axis = int(a.get("axis", 0))
    n = len(node.output)
    sizes = a.get("split") if b.opset < 13 else b.const(node, 1, "split", optional=True)
    x = b.value(node, 0)
    if sizes is not None:
        sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
    else:
        s = b.shape(node.input[0])
        d = None if s is None else s[axis]
        if d is None:
            parts = b.call(node, torch.chunk, (x, n), {"dim": axis}, suffix="chunk")
        else:
            chunk = -(-d // n)
            sizes = [chunk] * (n - 1) + [d - chunk * (n - 1)]
    if sizes is not None:
        parts = b.call(node, torch.split, (x, sizes), {"dim": axis}, suffix="split")
    for i, o in enumerate(node.output):
        if o:
            b.out(node, b.call(node, operator.getitem, (parts, i), suffix=str(i)), i)


@_op("Slice")
def _slice(b: _Builder, node):
    """Constant starts/ends/axes/steps (attributes before opset 10). Positive steps are Python
    slices (ONNX clamps like Python); a negative step flips the axis and slices it forwards."""
    if b.opset < 10:
        a = b.attrs(node)
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in b.const(node, 1, "starts").reshape(-1)]
        ends = [int(v) for v in b.const(node, 2, "ends").reshape(-1)]
        ax = b.const(node, 3, "axes", optional=True)
        st = b.const(node, 4, "steps", optional=True)
        axes = list(range(len(starts))) if ax is None else [int(v) for v in ax.reshape(-1)]
        steps = [1] * len(starts) if st is None else [int(v) for v in st.reshape(-1)]
    if any(a < 0 for a in axes):
        rank = b.rank(node, 0, "negative Slice axes")
        axes = [a % rank for a in axes]
    x = b.value(node, 0)
    forward = {}
    flips = []
    for a, s, e, st in zip(axes, starts, ends, steps):
        if st == 0:
            raise ModelError(f"{b.where(node)}: step 0 on axis {a}")
        if st > 0:
            forward[a] = slice(s, e, st)
            continue
        d = b.dims(node, 0, "a negative Slice step")[a]
        s = min(max(s + d if s < 0 else s, 0), d - 1)
        e = min(max(e + d if e < 0 else e, -1), d - 1)
        flips.append((a, slice(d - 1 - s, d - 1 - e, -st)))
    y = x
    if forward:
        idx = tuple(forward.get(i, slice(None)) for i in range(max(forward) + 1))
        y = b.call(node, operator.getitem, (y, idx), suffix="" if not flips else "fwd")
    for k, (a, sl) in enumerate(flips):
        y = b.call(node, torch.flip, (y, (a,)), suffix=f"flip{k}")
        idx = (slice(None),) * a + (sl,)
        y = b.call(node, operator.getitem, (y, idx), suffix="" if k == len(flips) - 1 else f"rev{k}")
    b.out(node, y)


@_op("Gather")
def _gather(b: _Builder, node):
    """Constant indices: a scalar index selects (drops the axis), an index array of shape I makes
    the axis I (x[..., idx, ...])."""
    idx = b.const(node, 1, "indices")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ModelError(f"{b.where(node)}: indices have dtype {idx.dtype}, expected integers")
    axis = int(b.attrs(node).get("axis", 0))
    if axis < 0:
        axis += b.rank(node, 0, "a negative Gather axis")
    x = b.value(node, 0)
    if idx.ndim == 0:
        b.out(node, b.call(node, torch.select, (x, axis, int(idx))))
    else:
        ib = b.buffer(node.input[1], idx.astype(np.int64))
        b.out(node, b.call(node, operator.getitem, (x, (slice(None),) * axis + (ib,))))


@_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(b: _Builder, node):
    fn = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax, "ReduceMin": torch.amin}
    a = b.attrs(node)
    axes = _axes(b, node, 13 if node.op_type == "ReduceSum" else 18)
    keep = bool(a.get("keepdims", 1))
    x = b.value(node, 0)
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            b.env[node.output[0]] = x
            return
        axes = list(range(b.rank(node, 0, "a reduction over all axes")))
    b.out(node, b.call(node, fn[node.op_type], (x, tuple(axes)), {"keepdim": keep}))


@_op("Pad")
def _pad(b: _Builder, node):
    a = b.attrs(node)
    mode = a.get("mode", "constant")
    if b.opset < 11:
        pads, value, axes = list(a.get("pads", a.get("paddings", []))), float(a.get("value", 0.0)), None
    else:
        pads = [int(v) for v in b.const(node, 1, "pads").reshape(-1)]
        v = b.const(node, 2, "constant_value", optional=True)
        value = 0.0 if v is None else float(np.asarray(v).reshape(()))
        ax = b.const(node, 3, "axes", optional=True)
        axes = None if ax is None else [int(i) for i in ax.reshape(-1)]
    rank = b.rank(node, 0, "Pad")
    axes = list(range(rank)) if axes is None else [i % rank for i in axes]
    if len(pads) != 2 * len(axes):
        raise ModelError(f"{b.where(node)}: {len(pads)} pads for {len(axes)} axes")
    begin, end = [0] * rank, [0] * rank
    for k, ax in enumerate(axes):
        begin[ax], end[ax] = pads[k], pads[k + len(axes)]
    first = next((i for i in range(rank) if begin[i] or end[i]), rank)
    x = b.value(node, 0)
    if first == rank:
        b.env[node.output[0]] = x
        return
    if mode == "constant":
        tp = _torch_pad(begin[first:], end[first:])
        b.out(node, b.call(node, F.pad, (x, tp), {"value": value}))
        return
    tmode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if tmode is None:
        raise b.unsupported(node, f"mode {mode!r}; constant, reflect, edge and wrap are imported")
    if first < 2 or rank - 2 > 3:
        raise b.unsupported(node, f"mode {mode!r} padding axes other than the 1..3 spatial axes (pads {pads})")
    b.out(node, b.call(node, F.pad, (x, _torch_pad(begin[2:], end[2:])), {"mode": tmode}))


# ---------------------------------------------------------------------------------------------
# Resize / Upsample
# ---------------------------------------------------------------------------------------------
def _source_coords(mode: str, n_in: int, n_out: int, scale: np.float32) -> np.ndarray:
    """x_original of each output index for an ONNX coordinate_transformation_mode (float32)."""
    x = np.arange(n_out, dtype=np.float32)
    half = np.float32(0.5)
    if mode == "half_pixel":
        return (x + half) / scale - half
    if mode == "pytorch_half_pixel":
        return (x + half) / scale - half if n_out > 1 else np.zeros(n_out, np.float32)
    if mode == "align_corners":
        if n_out == 1:
            return np.zeros(1, np.float32)
        return x * np.float32(n_in - 1) / np.float32(n_out - 1)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + half) / scale
    raise KeyError(mode)


def _nearest_index(coords: np.ndarray, nearest_mode: str, scale: float, n_in: int) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        idx = np.where(coords == np.floor(coords) + 0.5, np.floor(coords), np.round(coords))
    elif nearest_mode == "round_prefer_ceil":
        idx = np.floor(coords + 0.5)
    elif nearest_mode == "floor":
        idx = np.floor(coords)
    elif nearest_mode == "ceil":
        idx = np.ceil(coords)
    elif nearest_mode == "simple":  # opset < 11: truncate when upsampling, ceil when downsampling
        idx = np.ceil(coords) if scale < 1 else np.floor(coords)
    else:
        raise KeyError(nearest_mode)
    return np.clip(idx, 0, n_in - 1).astype(np.int64)


@_op("Resize", "Upsample")
def _resize(b: _Builder, node):
    """Nearest: exact index tables, emitted as F.interpolate('nearest'/'nearest-exact') when that
    gives the same indices, else as index_select per axis. Linear: F.interpolate when the
    coordinate mode is half_pixel / pytorch_half_pixel / align_corners, else a lerp per axis."""
    a = b.attrs(node)
    dims = b.dims(node, 0, "Resize")
    rank = len(dims)
    mode = a.get("mode", "nearest")
    scales = sizes = None
    if node.op_type == "Upsample" or b.opset < 11:
        coord, nearest_mode = "asymmetric", "simple"
        if node.op_type == "Upsample" and b.opset < 9:
            scales = [float(s) for s in a["scales"]]
        else:
            scales = [float(s) for s in b.const(node, 1, "scales").reshape(-1)]
    else:
        coord = a.get("coordinate_transformation_mode", "half_pixel")
        nearest_mode = a.get("nearest_mode", "round_prefer_floor")
        for key, default in (("antialias", 0), ("exclude_outside", 0)):
            if a.get(key, default) != default:
                raise b.unsupported(node, f"{key}={a[key]}")
        if a.get("keep_aspect_ratio_policy", "stretch") != "stretch" or "axes" in a:
            raise b.unsupported(node, "keep_aspect_ratio_policy/axes attributes")
        sc = b.const(node, 2, "scales", optional=True)
        sz = b.const(node, 3, "sizes", optional=True)
        if sz is not None and sz.size:
            sizes = [int(v) for v in sz.reshape(-1)]
        elif sc is not None and sc.size:
            scales = [float(v) for v in sc.reshape(-1)]
        else:
            raise ModelError(f"{b.where(node)}: neither scales nor sizes is given")
    if mode == "bilinear":
        mode = "linear"
    if mode not in ("nearest", "linear"):
        raise b.unsupported(node, f"mode {mode!r}; nearest and linear are imported")
    if coord not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn"):
        raise b.unsupported(node, f"coordinate_transformation_mode {coord!r}")
    if (scales if sizes is None else sizes) is not None and len(scales if sizes is None else sizes) != rank:
        raise ModelError(f"{b.where(node)}: scales/sizes must have one entry per input dim ({rank})")
    if sizes is None:
        out = [int(math.floor(n * s)) for n, s in zip(dims, scales)]
        eff = [np.float32(s) for s in scales]
    else:
        out = sizes
        eff = [np.float32(o) / np.float32(n) for n, o in zip(dims, sizes)]
    axes = [i for i in range(rank) if out[i] != dims[i] or eff[i] != 1]
    x = b.value(node, 0)
    if not axes:
        b.env[node.output[0]] = x
        return
    spatial = all(i >= 2 for i in axes) and 1 <= rank - 2 <= 3
    if mode == "nearest":
        idx = {i: _nearest_index(_source_coords(coord, dims[i], out[i], eff[i]), nearest_mode, eff[i], dims[i])
               for i in axes}
        if spatial:
            for tmode, off in (("nearest", 0.0), ("nearest-exact", 0.5)):
                same = True
                for i in axes:
                    r = np.float32(dims[i]) / np.float32(out[i])
                    t = np.minimum(np.floor((np.arange(out[i], dtype=np.float32) + np.float32(off)) * r), dims[i] - 1)
                    same &= np.array_equal(t.astype(np.int64), idx[i])
                if same:
                    b.out(node, b.call(node, F.interpolate, (x,), {"size": tuple(out[2:]), "mode": tmode}))
                    return
        for k, i in enumerate(axes):
            ib = b.new_buffer(node, f"idx{i}", idx[i])
            x = b.call(node, torch.index_select, (x, i, ib), suffix="" if k == len(axes) - 1 else f"ax{i}")
        b.out(node, x)
        return
    if spatial and coord in ("half_pixel", "pytorch_half_pixel", "align_corners") and \
            not (coord == "pytorch_half_pixel" and any(out[i] == 1 for i in axes)):
        tmode = ("linear", "bilinear", "trilinear")[rank - 3]
        kw = {"mode": tmode, "align_corners": coord == "align_corners"}
        if sizes is None and coord != "align_corners" and any(out[i] != dims[i] * scales[i] for i in range(2, rank)):
            kw["scale_factor"] = tuple(scales[2:])
        else:
            kw["size"] = tuple(out[2:])
        b.out(node, b.call(node, F.interpolate, (x,), kw))
        return
    for k, i in enumerate(axes):
        c = np.clip(_source_coords(coord, dims[i], out[i], eff[i]), 0, dims[i] - 1)
        i0 = np.floor(c).astype(np.int64)
        i1 = np.minimum(i0 + 1, dims[i] - 1)
        w1 = (c - i0).astype(np.float32).reshape((-1,) + (1,) * (rank - 1 - i))
        args = (x, i, b.new_buffer(node, f"i0_{i}", i0), b.new_buffer(node, f"i1_{i}", i1),
                b.new_buffer(node, f"w1_{i}", w1))
        x = b.call(node, onnx_lerp_axis, args, suffix="" if k == len(axes) - 1 else f"ax{i}")
    b.out(node, x)


# ---------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------
def import_onnx(model: str | os.PathLike | onnx.ModelProto, *,
                input_shapes: dict[str, tuple] | None = None) -> fx.GraphModule:
    """Import a float ONNX model as a ``torch.fx.GraphModule`` (in eval mode) for static input shapes.

    Parameters
    ----------
    model
        Path of an ``.onnx`` file, or a ``ModelProto`` (not modified).
    input_shapes
        ``{input name: shape}`` overriding the ONNX input dims (needed when a symbolic dim takes
        part in a shape computation, e.g. a Shape -> ... -> Reshape chain).

    Returns
    -------
    GraphModule whose ``forward`` takes the ONNX graph inputs (not initializers) positionally in
    ONNX order and returns one tensor, or a tuple in ONNX output order. Attributes:
    ``input_names``, ``output_names``, ``onnx_node_names`` ({fx node name: ONNX node name}) and
    ``onnx_tensor_names`` ({fx node name: ONNX tensor it computes}).

    Raises
    ------
    ModelError
        unreadable file, missing node input, cycle, a shape that must be static and is not.
    UnsupportedError
        an op type (or attribute/input form) this importer does not translate, non-float32 inputs.
    """
    model, src = _load(model)
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelError(f"{src}: the model imports no default-domain (ai.onnx) opset")
    if opset < MIN_OPSET:
        raise UnsupportedError(f"{src}: opset {opset}; opsets >= {MIN_OPSET} are imported")
    if len(g.sparse_initializer):
        raise UnsupportedError(f"{src}: sparse initializers are not imported")
    init_protos = {t.name: t for t in g.initializer}
    consts = {}
    for t in g.initializer:
        try:
            consts[t.name] = numpy_helper.to_array(t)
        except Exception as e:
            raise ModelError(f"{src}: initializer {t.name!r} cannot be read: {e}") from None
    inputs = _static_inputs(g, set(init_protos), input_shapes, src)
    input_names = [vi.name for vi in inputs]
    nodes = _sort_and_prune(g, set(input_names) | set(consts), src)
    nodes, shapes = _fold_constants(model, nodes, inputs, consts, init_protos, src)

    consumers: dict[str, int] = {}
    for node in nodes:
        for i in node.input:
            if i:
                consumers[i] = consumers.get(i, 0) + 1
    output_names = [o.name for o in g.output]
    b = _Builder(src, opset, consts, shapes, consumers, set(output_names))
    for name in input_names:
        b.env[name] = b.graph.placeholder(_ident(name, "x"))
    for node in nodes:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedError(f"{src}: node {_label(node)!r}: op {node.op_type!r} of domain {node.domain!r}; "
                                   f"only the default ONNX domain is imported. Supported ops: "
                                   f"{', '.join(supported_ops())}")
        handler = _HANDLERS.get(node.op_type)
        if handler is None:
            raise UnsupportedError(f"{src}: node {_label(node)!r}: op type {node.op_type!r} is not supported by the "
                                   f"ONNX importer (and its inputs are not constant for static shapes). Supported "
                                   f"ops: {', '.join(supported_ops())}")
        try:
            handler(b, node)
        except (KeyError, IndexError, ValueError, TypeError) as e:  # a malformed node (missing attribute, ...)
            raise ModelError(f"{b.where(node)}: cannot be imported ({type(e).__name__}: {e}); check its "
                             f"attributes and inputs against the ONNX spec for opset {opset}") from e
    outs = []
    for name in output_names:
        outs.append(b.buffer(name, consts[name]) if name in consts else b.env[name])
    b.graph.output(outs[0] if len(outs) == 1 else tuple(outs))
    for n in reversed(list(b.graph.nodes)):  # every emitted op is pure: drop the unused ones
        if n.op not in ("placeholder", "output") and not n.users:
            b.graph.erase_node(n)
    b.graph.lint()
    gm = fx.GraphModule(b.root, b.graph, class_name="OnnxGraphModule")
    gm.eval()
    live = {n.name for n in gm.graph.nodes}
    attrs = {
        "input_names": input_names,
        "output_names": output_names,
        "onnx_node_names": {k: v for k, v in b.node_names.items() if k in live},
        "onnx_tensor_names": {k: v for k, v in b.tensor_names.items() if k in live},
    }
    for k, v in attrs.items():
        setattr(gm, k, v)
    gm.meta[_PRESERVED_KEY] = dict(attrs)
    return gm
