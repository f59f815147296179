"""Graph capture for the simulator: a torch model becomes a flat list of ONNX-typed ops.

``capture(model, example_inputs)`` traces the model with ``torch.fx`` (an imported ONNX model is
already a GraphModule), folds batch norms into the Conv/Linear before them, and lowers every node to
an :class:`Op` named by its ONNX operator type (Conv, Gemm, Relu, Clip, Add, Mul, MaxPool,
AveragePool, GlobalAveragePool, Flatten, Reshape, Concat), which is the vocabulary of the targets'
placement rules and of the exported model. Identity-like nodes (Dropout, Identity) disappear.
Anything else is refused with the node's name and what is supported.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from runtime.errors import UnsupportedError

MOVEMENT = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Gather")
RECURRENT = ("LSTM", "GRU")


@dataclass
class Op:
    """One op of the lowered graph: ``output = op_type(inputs)`` (values named by string)."""

    name: str
    op_type: str
    inputs: list[str]
    output: str
    module: nn.Module | None = None  # Conv/Linear with the (folded) float parameters
    attrs: dict = field(default_factory=dict)
    out_shape: tuple = ()


@dataclass
class Captured:
    ops: list[Op]
    inputs: list[str]
    outputs: list[str]
    shapes: dict[str, tuple]
    modules: dict[str, nn.Module]
    folded: list[tuple[str, str]]  # (conv/linear, batch norm) pairs folded


def _fold_bn(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """Fold every BatchNorm whose input is a Conv2d/Linear used only by it (also after depthwise)."""
    mods = dict(gm.named_modules())
    folded = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(mods.get(node.target), (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1
                and isinstance(mods.get(prev.target), (nn.Conv2d, nn.Linear))):
            continue
        bn, layer = mods[node.target], mods[prev.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        fold_batch_norm(layer, bn)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded.append((str(prev.target), str(node.target)))
    gm.graph.lint()
    gm.recompile()
    return folded


@torch.no_grad()
def fold_batch_norm(layer: nn.Module, bn: nn.Module) -> None:
    """w' = w * g / sqrt(v + eps) per output channel; b' = (b - mean) * g / sqrt(v + eps) + beta."""
    std = torch.sqrt(bn.running_var.to(torch.float64) + bn.eps)
    gamma = bn.weight.to(torch.float64) if bn.affine else torch.ones_like(std)
    beta = bn.bias.to(torch.float64) if bn.affine else torch.zeros_like(std)
    factor = gamma / std
    w = layer.weight.to(torch.float64)
    layer.weight.copy_((w * factor.reshape(-1, *([1] * (w.dim() - 1)))).to(layer.weight.dtype))
    b = layer.bias.to(torch.float64) if layer.bias is not None else torch.zeros_like(std)
    new_b = ((b - bn.running_mean.to(torch.float64)) * factor + beta).to(layer.weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(new_b)
    else:
        layer.bias.copy_(new_b)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _conv_attrs(m: nn.Conv2d, in_shape) -> dict:
    if m.padding_mode != "zeros":
        raise UnsupportedError(f"Conv {m}: padding_mode {m.padding_mode!r} is not supported (only 'zeros')")
    k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
    if isinstance(m.padding, str):
        if m.padding == "valid":
            pads = (0, 0, 0, 0)
        else:  # 'same' (stride 1): torch puts the extra pad at the end
            tot = [d[i] * (k[i] - 1) for i in range(2)]
            pads = (tot[0] // 2, tot[1] // 2, tot[0] - tot[0] // 2, tot[1] - tot[1] // 2)
    else:
        p = _pair(m.padding)
        pads = (p[0], p[1], p[0], p[1])
    return dict(kernel=k, strides=s, dilations=d, pads=pads, group=m.groups)


def _pool_attrs(kernel, stride, padding, ceil_mode, dilation=1, count_include_pad=True):
    k = _pair(kernel)
    s = _pair(stride if stride not in (None, ()) else kernel)
    p = _pair(padding)
    return dict(kernel=k, strides=s, pads=(p[0], p[1], p[0], p[1]), ceil_mode=int(bool(ceil_mode)),
                dilations=_pair(dilation), count_include_pad=int(bool(count_include_pad)))


def _arg(node: fx.Node, i: int, key: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


class _Lowering:
    def __init__(self, gm: fx.GraphModule, shapes: dict):
        self.gm = gm
        self.mods = dict(gm.named_modules())
        self.shapes = shapes
        self.alias: dict[str, str] = {}
        self.ops: list[Op] = []
        self.consts: dict[str, torch.Tensor] = {}
        self.refused: dict[str, str] = {}  # values that may be traced but not used (e.g. an LSTM's h_n)
        self.recurrent: dict[str, str] = {}  # an LSTM/GRU call's node -> the value of its output sequence

    def ref(self, a) -> str:
        if not isinstance(a, fx.Node):
            raise UnsupportedError(f"expected a tensor argument, found {a!r}")
        if a.name in self.refused:
            raise UnsupportedError(self.refused[a.name])
        return self.alias.get(a.name, a.name)

    def emit(self, node, op_type, inputs, module=None, **attrs):
        self.ops.append(Op(node.name, op_type, [self.ref(i) for i in inputs], node.name, module, attrs,
                           self.shapes.get(node.name, ())))

    def skip(self, node, src):
        self.alias[node.name] = self.ref(src)

    def refuse(self, node, what):
        raise UnsupportedError(f"node {node.name!r} ({node.op} {node.target}): {what}. Supported: Conv2d, Linear, "
                               "BatchNorm (folded), ReLU, ReLU6, Hardtanh, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), "
                               "Flatten, view/reshape, add, mul, cat, Dropout, Identity, LSTM, GRU, x[:, i]")

    def lower(self, node: fx.Node) -> None:
        if node.op == "call_module":
            m = self.mods[node.target]
            x = node.args[0]
            in_shape = self.shapes.get(x.name, ()) if isinstance(x, fx.Node) else ()
            if isinstance(m, nn.Conv2d):
                self.emit(node, "Conv", [x], m, **_conv_attrs(m, in_shape))
            elif isinstance(m, nn.Linear):
                if len(in_shape) != 2:
                    self.refuse(node, f"Linear on a {len(in_shape)}-D input (only [N, features])")
                self.emit(node, "Gemm", [x], m)
            elif isinstance(m, nn.ReLU):
                self.emit(node, "Relu", [x])
            elif isinstance(m, nn.ReLU6):
                self.emit(node, "Clip", [x], min=0.0, max=6.0)
            elif isinstance(m, nn.Hardtanh):
                self.emit(node, "Clip", [x], min=float(m.min_val), max=float(m.max_val))
            elif isinstance(m, nn.MaxPool2d):
                if m.return_indices:
                    self.refuse(node, "MaxPool2d with return_indices")
                self.emit(node, "MaxPool", [x], **_pool_attrs(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.dilation))
            elif isinstance(m, nn.AvgPool2d):
                if m.divisor_override:
                    self.refuse(node, "AvgPool2d with divisor_override")
                self.emit(node, "AveragePool", [x], **_pool_attrs(m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                                                  count_include_pad=m.count_include_pad))
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                if _pair(m.output_size) != (1, 1):
                    self.refuse(node, "AdaptiveAvgPool2d with an output size other than 1")
                self.emit(node, "GlobalAveragePool", [x])
            elif isinstance(m, nn.Flatten):
                self._flatten(node, x, m.start_dim, m.end_dim)
            elif isinstance(m, (nn.Dropout, nn.Identity)):
                self.skip(node, x)
            elif isinstance(m, (nn.LSTM, nn.GRU)):
                self._recurrent(node, m)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                self.refuse(node, "a batch norm that does not follow a Conv2d/Linear with no other user cannot be folded")
            else:
                self.refuse(node, f"module type {type(m).__name__}")
        elif node.op == "call_function":
            f = node.target
            if f in (operator.add, torch.add, operator.mul, torch.mul):
                a, b = node.args[0], node.args[1]
                if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
                    self.refuse(node, "add/mul with a constant operand")
                self.emit(node, "Add" if f in (operator.add, torch.add) else "Mul", [a, b])
            elif f in (F.relu, torch.relu):
                self.emit(node, "Relu", [node.args[0]])
            elif f is F.relu6:
                self.emit(node, "Clip", [node.args[0]], min=0.0, max=6.0)
            elif f is F.hardtanh:
                self.emit(node, "Clip", [node.args[0]], min=float(_arg(node, 1, "min_val", -1.0)),
                          max=float(_arg(node, 2, "max_val", 1.0)))
            elif f is torch.reshape:
                shp = self.shapes.get(node.name)
                self.emit(node, "Reshape", [node.args[0]], shape=(-1,) + tuple(shp[1:]))
            elif f is torch.flatten:
                self._flatten(node, node.args[0], _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
            elif f is torch.cat:
                dim = _arg(node, 1, "dim", 0)
                self.emit(node, "Concat", list(node.args[0]), axis=int(dim))
            elif f is F.max_pool2d:
                self.emit(node, "MaxPool", [node.args[0]], **_pool_attrs(
                    _arg(node, 1, "kernel_size"), _arg(node, 2, "stride"), _arg(node, 3, "padding", 0),
                    _arg(node, 5, "ceil_mode", False), _arg(node, 4, "dilation", 1)))
            elif f is F.avg_pool2d:
                self.emit(node, "AveragePool", [node.args[0]], **_pool_attrs(
                    _arg(node, 1, "kernel_size"), _arg(node, 2, "stride"), _arg(node, 3, "padding", 0),
                    _arg(node, 4, "ceil_mode", False), count_include_pad=_arg(node, 5, "count_include_pad", True)))
            elif f is F.adaptive_avg_pool2d:
                if _pair(node.args[1]) != (1, 1):
                    self.refuse(node, "adaptive_avg_pool2d to a size other than 1")
                self.emit(node, "GlobalAveragePool", [node.args[0]])
            elif f is F.dropout:
                self.skip(node, node.args[0])
            elif f is operator.getitem:
                self._getitem(node)
            else:
                self.refuse(node, f"function {getattr(f, '__name__', f)}")
        elif node.op == "call_method":
            m = node.target
            if m in ("view", "reshape"):
                shp = self.shapes.get(node.name)
                self.emit(node, "Reshape", [node.args[0]], shape=(-1,) + tuple(shp[1:]))
            elif m == "flatten":
                self._flatten(node, node.args[0], _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
            elif m in ("size", "dim"):
                pass  # shape queries feed view/reshape, whose output shape is recorded
            elif m in ("relu", "relu_"):
                self.emit(node, "Relu", [node.args[0]])
            elif m in ("contiguous",):
                self.skip(node, node.args[0])
            else:
                self.refuse(node, f"method {m}")
        elif node.op == "get_attr":
            self.refuse(node, "constant tensors in the graph")

    def _recurrent(self, node, m) -> None:
        """An nn.LSTM / nn.GRU call: one op per layer (each with its own hidden and cell encodings)."""
        kind = "LSTM" if isinstance(m, nn.LSTM) else "GRU"
        if getattr(m, "proj_size", 0):
            self.refuse(node, "LSTM with proj_size (projection is not part of the integer LSTM)")
        x = node.args[0]
        if not isinstance(x, fx.Node):
            self.refuse(node, "the input of a recurrent layer must be a tensor (PackedSequence is not supported)")
        states = node.args[1] if len(node.args) > 1 else node.kwargs.get("hx")
        init: list = []
        if states is not None:
            init = list(states) if isinstance(states, (tuple, list)) else [states]
            if m.num_layers > 1:
                self.refuse(node, f"initial states of a {m.num_layers}-layer {kind}: each layer has its own hidden "
                            "and cell encodings, so pass initial states only to single-layer modules (or stack "
                            "single-layer modules)")
            for st in init:
                if not (isinstance(st, fx.Node) and st.op == "placeholder"):
                    self.refuse(node, "initial states must be model inputs (quantized with the layer's hidden and "
                                "cell encodings)")
        prev = self.ref(x)
        d = 2 if m.bidirectional else 1
        for k in range(m.num_layers):
            out = node.name if k == m.num_layers - 1 else f"{node.name}_l{k}"
            ins = [prev] + ([self.ref(st) for st in init] if k == 0 else [])
            shp = self.shapes.get(x.name, ())
            t_axis = 1 if m.batch_first else 0
            out_shape = tuple(shp[:2]) + (d * m.hidden_size,) if len(shp) == 3 else ()
            self.ops.append(Op(out, kind, ins, out, m, {
                "layer": k, "directions": d, "hidden": m.hidden_size, "batch_first": bool(m.batch_first),
                "module": str(node.target), "time_axis": t_axis, "initial": len(init)}, out_shape))
            self.shapes[out] = out_shape
            prev = out
        self.recurrent[node.name] = prev

    def _getitem(self, node) -> None:
        src, idx = node.args[0], node.args[1]
        if isinstance(src, fx.Node) and src.name in self.recurrent:
            if idx == 0:
                self.alias[node.name] = self.recurrent[src.name]
            else:
                self.refused[node.name] = (f"node {node.name!r}: the final states (h_n, c_n) of recurrent layer "
                                           f"{src.target!r} are not supported as values; use the output sequence "
                                           "(e.g. out[:, -1] for the last time step)")
            return
        if isinstance(src, fx.Node) and src.name in self.refused:
            self.refused[node.name] = self.refused[src.name]
            return
        idx = idx if isinstance(idx, tuple) else (idx,)
        ints = [(i, v) for i, v in enumerate(idx) if isinstance(v, int)]
        full = all(isinstance(v, slice) and v == slice(None) for v in idx if not isinstance(v, int))
        if len(ints) == 1 and full and Ellipsis not in idx:
            axis, index = ints[0]
            self.emit(node, "Gather", [src], axis=axis, index=int(index))
            return
        self.refuse(node, f"indexing {idx!r}: only one integer index with full slices elsewhere (e.g. "
                    "out[:, -1]) is supported")

    def _flatten(self, node, x, start, end):
        nd = len(self.shapes.get(x.name, ()))
        if start % max(nd, 1) == 1 and end in (-1, nd - 1):
            self.emit(node, "Flatten", [x], axis=1)
        elif start == 0 and nd:
            self.refuse(node, "flatten from dimension 0 (the batch)")
        else:
            shp = self.shapes.get(node.name)
            self.emit(node, "Reshape", [x], shape=(-1,) + tuple(shp[1:]))


def capture(model: nn.Module, example_inputs: tuple) -> Captured:
    """Trace (or take) the fx graph, fold batch norms, record shapes, lower to ONNX-typed ops."""
    model = copy.deepcopy(model).eval()
    gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    folded = _fold_bn(gm)
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(gm).propagate(*example_inputs)
    shapes = {}
    for n in gm.graph.nodes:
        tm = n.meta.get("tensor_meta")
        if tm is not None and hasattr(tm, "shape"):
            shapes[n.name] = tuple(tm.shape)
    low = _Lowering(gm, shapes)
    inputs, outputs = [], []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            inputs.append(str(node.target))  # the model's own input name (the ONNX name when imported)
            low.alias[node.name] = str(node.target)
            if node.name in shapes:
                shapes[str(node.target)] = shapes[node.name]
        elif node.op == "output":
            res = node.args[0]
            res = list(res) if isinstance(res, (tuple, list)) else [res]
            outputs = [low.ref(r) for r in res]
        else:
            low.lower(node)
    used = set(outputs) | {i for op in low.ops for i in op.inputs}
    ops = [op for op in low.ops if op.output in used]
    names = list(getattr(gm, "output_names", []) or [])
    if len(names) == len(outputs):  # an imported ONNX model keeps its output names
        ren = {o: n for o, n in zip(outputs, names) if o not in inputs}
        for op in ops:
            op.inputs = [ren.get(i, i) for i in op.inputs]
            if op.output in ren:
                shapes[ren[op.output]] = shapes.get(op.output, ())
                op.output = ren[op.output]
        outputs = [ren.get(o, o) for o in outputs]
    return Captured(ops, inputs, outputs, shapes, dict(gm.named_modules()), folded)
