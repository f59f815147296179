"""Pure data movement: runs on the integer tensors as they are, keeping their encoding.

Each op is one numpy function ``fn(node_attrs_and_constants)(x) -> y`` used both at plan time (to
fold constant subgraphs, e.g. shape arithmetic) and at run time on integer tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..kernels.pooling import max_pool
from ..plan import Planner, Val, planner_op
from ..program import LayerStats, Step


@dataclass
class MoveStep(Step):
    fn: Callable = None

    def compute(self, *xs, stats: LayerStats):
        y = self.fn(*xs)
        return y if isinstance(y, tuple) else (y,)


def _reshape_fn(p, node):
    shape = p.const(node, 1, "shape").astype(np.int64)
    allowzero = node.attr("allowzero", 0)

    def fn(x):
        s = [int(v) for v in shape]
        if not allowzero:
            s = [x.shape[i] if v == 0 else v for i, v in enumerate(s)]
        return x.reshape(s)

    return fn


def _flatten_fn(p, node):
    axis = int(node.attr("axis", 1))

    def fn(x):
        a = axis % x.ndim if x.ndim else 0
        return x.reshape(int(np.prod(x.shape[:a], dtype=np.int64)), -1)

    return fn


def _transpose_fn(p, node):
    perm = node.attr("perm")
    return lambda x: np.ascontiguousarray(np.transpose(x, perm))


def _axes(p, node, idx=1):
    if node.input(idx) is not None:
        return tuple(int(a) for a in p.const(node, idx, "axes").reshape(-1))
    a = node.attr("axes")
    return tuple(a) if a is not None else None


def _squeeze_fn(p, node):
    axes = _axes(p, node)
    return lambda x: np.squeeze(x, axis=axes) if axes is not None else np.squeeze(x)


def _unsqueeze_fn(p, node):
    axes = _axes(p, node)
    if axes is None:
        raise p.bad(node, "Unsqueeze needs axes")

    def fn(x):
        out_nd = x.ndim + len(axes)
        y = x
        for a in sorted(a % out_nd for a in axes):
            y = np.expand_dims(y, a)
        return y

    return fn


def _slice_fn(p, node):
    starts = p.const(node, 1, "starts").reshape(-1)
    ends = p.const(node, 2, "ends").reshape(-1)
    axes = p.const(node, 3, "axes") if node.input(3) else None
    steps = p.const(node, 4, "steps") if node.input(4) else None

    def fn(x):
        ax = list(range(len(starts))) if axes is None else [int(a) % x.ndim for a in axes.reshape(-1)]
        st = [1] * len(starts) if steps is None else [int(s) for s in steps.reshape(-1)]
        idx = [slice(None)] * x.ndim
        for a, s, e, k in zip(ax, starts, ends, st):
            n = x.shape[a]
            s, e = int(s), int(e)
            if k > 0:
                s = max(0, min(n, s + n if s < 0 else s))
                e = max(0, min(n, e + n if e < 0 else e))
            else:
                s = max(-1, min(n - 1, s + n if s < 0 else s))
                e = max(-1, min(n - 1, e + n if e < 0 else e))
                e = None if e < 0 else e
            idx[a] = slice(s, e, k)
        return np.ascontiguousarray(x[tuple(idx)])

    return fn


def _gather_fn(p, node):
    idx = p.const(node, 1, "indices").astype(np.int64)
    axis = int(node.attr("axis", 0))

    def fn(x):
        a = axis % x.ndim
        i = np.where(idx < 0, idx + x.shape[a], idx)
        if i.size and (i.min() < 0 or i.max() >= x.shape[a]):
            from ..errors import DataError

            raise DataError(f"Gather indices out of range for axis of size {x.shape[a]}")
        return np.take(x, i, axis=a)

    return fn


def _identity_fn(p, node):
    return lambda x: x


def _split_fn(p, node):
    axis = int(node.attr("axis", 0))
    split = p.const(node, 1, "split") if node.input(1) is not None else node.attr("split")
    n_out = len(node.outputs)

    def fn(x):
        a = axis % x.ndim
        if split is None:
            size = -(-x.shape[a] // n_out)
            bounds = [min(size * i, x.shape[a]) for i in range(1, n_out)]
        else:
            bounds = list(np.cumsum([int(s) for s in np.asarray(split).reshape(-1)])[:-1])
        return tuple(np.ascontiguousarray(y) for y in np.split(x, bounds, axis=a))

    return fn


def _maxpool_fn(p, node):
    if len(node.outputs) > 1 and node.outputs[1]:
        raise p.refuse(node, "MaxPool with an Indices output is not supported")
    if node.attr("storage_order", 0):
        raise p.refuse(node, "MaxPool storage_order=1 is not supported")
    k = tuple(node.attr("kernel_shape"))
    nd = len(k)
    strides = tuple(node.attr("strides") or (1,) * nd)
    dil = tuple(node.attr("dilations") or (1,) * nd)
    ceil = int(node.attr("ceil_mode", 0))
    auto_pad = node.attr("auto_pad", "NOTSET")
    pads = tuple(node.attr("pads") or (0,) * (2 * nd))

    def fn(x):
        pd = pads
        if auto_pad not in ("NOTSET",):
            from ..kernels.mac import explicit_pads

            pd = explicit_pads(auto_pad, x.shape[2:], k, strides, dil)
        return max_pool(x, k, strides, pd, dil, ceil)

    return fn


MOVES = {
    "Reshape": _reshape_fn, "Flatten": _flatten_fn, "Transpose": _transpose_fn, "Squeeze": _squeeze_fn,
    "Unsqueeze": _unsqueeze_fn, "Slice": _slice_fn, "Gather": _gather_fn, "Identity": _identity_fn,
    "Dropout": _identity_fn, "Split": _split_fn, "MaxPool": _maxpool_fn,
}


@planner_op(*MOVES)
def plan_move(p: Planner, node):
    fn = MOVES[node.op_type](p, node)
    x = p.val(node, node.inputs[0])
    outs = [o for o in node.outputs if o]
    if node.op_type == "Dropout":
        outs = outs[:1]
    if x.kind in ("const", "qconst"):
        y = fn(x.const)
        ys = y if isinstance(y, tuple) else (y,)
        for o, v in zip(outs, ys):
            p.set(o, Val(x.kind, o, x.enc, const=v))
        return
    if x.kind == "float":
        raise p.refuse(node, f"input {node.inputs[0]!r} is a float tensor; data movement runs on quantized "
                       "tensors (insert QuantizeLinear/DequantizeLinear)")
    if x.kind == "dq" and node.op_type == "MaxPool" and not x.enc.is_per_tensor:
        raise p.refuse(node, "MaxPool on a per-channel encoded tensor is not supported")
    p.emit(MoveStep(node.name, node.op_type, (x.name,), tuple(outs), fn=fn))
    for o in outs:
        p.set(o, Val(x.kind, o, x.enc))


@planner_op("Shape")
def plan_shape(p: Planner, node):
    x = p.val(node, node.inputs[0])
    if x.kind in ("const", "qconst"):
        p.set(node.outputs[0], Val("const", node.outputs[0], const=np.array(x.const.shape, np.int64)))
        return
    raise p.refuse(node, "Shape of a run-time tensor is not supported; export the model with static shapes "
                   "(constant Reshape targets)")


@planner_op("Constant")
def plan_constant(p: Planner, node):
    from onnx import numpy_helper

    v = node.attr("value")
    if v is None:
        for k in ("value_float", "value_int", "value_floats", "value_ints"):
            if node.attr(k) is not None:
                v = np.asarray(node.attr(k), np.float32 if "float" in k else np.int64)
                break
    if v is None:
        raise p.refuse(node, "only tensor/number Constant values are supported")
    if not isinstance(v, np.ndarray):
        v = numpy_helper.to_array(v)
    p.set(node.outputs[0], Val("const", node.outputs[0], const=np.asarray(v)))
