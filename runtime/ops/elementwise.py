"""Add, Mul (QDQ and QLinearAdd/QLinearMul), standalone Relu/Clip, and Concat."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..encoding import Encoding
from ..errors import HwsimError
from ..fixedpoint import quantize_multiplier
from ..kernels.elementwise import add_fixed_point, mul_fixed_point
from ..plan import Planner, Val, planner_op
from ..program import LayerStats, Step
from .common import saturation_bounds
from .quantize_ops import requantize_step


@dataclass
class BinaryStep(Step):
    kind: str = "Add"
    rule: str = "fixed_point"
    z1: int = 0
    z2: int = 0
    zo: int = 0
    params: tuple = ()
    lo: int = 0
    hi: int = 0
    qmin: int = 0
    qmax: int = 0
    single: bool = False
    consts: tuple = (None, None)
    out_dtype: np.dtype = None

    def compute(self, *xs, stats: LayerStats):
        it = iter(xs)
        a = self.consts[0] if self.consts[0] is not None else next(it)
        b = self.consts[1] if self.consts[1] is not None else next(it)
        c_lo, c_hi = saturation_bounds(self.qmin, self.qmax, self.lo, self.hi)  # what the kernels count
        if self.rule == "fixed_point":
            if self.kind == "Add":
                y, sat = add_fixed_point(a, b, self.z1, self.z2, *self.params, self.zo, self.lo, self.hi,
                                         c_lo, c_hi, self.single)
            else:
                y, sat = mul_fixed_point(a, b, self.z1, self.z2, *self.params, self.zo, self.lo, self.hi,
                                         c_lo, c_hi, self.single)
        else:
            from ..kernels.elementwise_f32 import add_float32, mul_float32

            if self.kind == "Add":  # stored in the output type directly
                y, sat = add_float32(a, b, self.z1, self.z2, *self.params, self.zo, self.lo, self.hi, c_lo, c_hi,
                                     out_dtype=self.out_dtype)
            else:
                y, sat = mul_float32(a, b, self.z1, self.z2, *self.params, self.zo, self.lo, self.hi, c_lo, c_hi)
        stats.saturation += sat
        return (y.astype(self.out_dtype, copy=False),)


def binary_params(target, kind: str, e1: Encoding, e2: Encoding, y: Encoding) -> tuple:
    """Plan-time parameters of an integer Add/Mul on the target: ``(rule, params, single)``.

    fixed_point (TFLite): Add ``(left_shift, M1, e1, M2, e2, Mo, eo)`` with the common scale
    2*max(s1, s2); Mul ``(M, e)`` for s1*s2/so. float32 (ONNX Runtime): the float32 ratios."""
    t = target.arithmetic.elementwise
    s1, s2, so = (np.float64(np.float32(e.scale)) for e in (e1, e2, y))
    if t.rule == "fixed_point":
        if kind == "Add":
            tw = 2.0 * max(s1, s2)
            m1, sh1 = quantize_multiplier(s1 / tw)
            m2, sh2 = quantize_multiplier(s2 / tw)
            mo, sho = quantize_multiplier(tw / ((1 << t.left_shift) * so))
            params = (t.left_shift, m1, sh1, m2, sh2, mo, sho)
        else:
            m, sh = quantize_multiplier(s1 * s2 / so)
            params = (m, sh)
    else:
        from ..kernels.elementwise_f32 import float32_params

        params = float32_params(kind, np.float32(e1.scale), np.float32(e2.scale), np.float32(y.scale))
    return t.rule, params, t.rounding == "single"


def binary_step(p: Planner, node, kind: str, v1: Val, e1: Encoding, v2: Val, e2: Encoding, out: str,
                y: Encoding, lo: int, hi: int, count: tuple[int, int] | None = None) -> BinaryStep:
    for e in (e1, e2, y):
        if not e.is_per_tensor:
            raise p.refuse(node, f"{kind} needs per-tensor encodings on both inputs and the output")
    rule, params, single = binary_params(p.target, kind, e1, e2, y)
    consts = tuple(v.const if v.kind in ("qconst", "const") else None for v in (v1, v2))
    inputs = tuple(v.name for v in (v1, v2) if v.kind not in ("qconst", "const"))
    return BinaryStep(node.name, kind, inputs, (out,), kind=kind, rule=rule, z1=int(e1.zero_point),
                      z2=int(e2.zero_point), zo=int(y.zero_point), params=params, lo=lo, hi=hi,
                      qmin=y.qmin if count is None else count[0], qmax=y.qmax if count is None else count[1],
                      single=single, consts=consts, out_dtype=y.dtype.numpy_dtype)


@planner_op("Add", "Mul")
def plan_binary(p: Planner, node):
    a = p.int_input(node, 0, "A")
    b = p.int_input(node, 1, "B")
    out, y, acts = p.fused_output(node)
    lo, hi = p.activation_bounds(acts, y)
    p.emit(binary_step(p, node, node.op_type, a, a.enc, b, b.enc, out, y, lo, hi, p.saturation_bounds(acts, y)))
    p.set(out, Val("int", out, y))


@planner_op("QLinearAdd", "QLinearMul", domain="com.microsoft")
def plan_qlinear_binary(p: Planner, node):
    from .mac import _enc

    a = p.raw_int(node, 0, "A")
    b = p.raw_int(node, 3, "B")
    ea, eb, y = _enc(p, node, 1, 2, "A"), _enc(p, node, 4, 5, "B"), _enc(p, node, 6, 7, "C")
    out = node.outputs[0]
    if a.kind == "const":
        a = Val("qconst", a.name, ea, const=a.const)
    if b.kind == "const":
        b = Val("qconst", b.name, eb, const=b.const)
    kind = node.op_type.replace("QLinear", "")
    p.emit(binary_step(p, node, kind, a, ea, b, eb, out, y, y.qmin, y.qmax))
    p.set(out, Val("int", out, y))


@planner_op("Relu", "Clip")
def plan_activation(p: Planner, node):
    """A Relu/Clip that is not fused behind a MAC op: requantize to the following Q with a clamp."""
    x = p.int_input(node, 0, "input")
    out, y, acts = p.fused_output(node)
    lo, hi = p.activation_bounds([node] + acts, y)
    if not x.enc.is_per_tensor:
        raise p.refuse(node, "input must be quantized per tensor")
    p.emit(requantize_step(p, node.name, x.name, x.enc, y, out, lo, hi, p.saturation_bounds([node] + acts, y)))
    p.set(out, Val("int", out, y))


@dataclass
class ConcatStep(Step):
    axis: int = 0
    requants: tuple = ()  # per input: None (same encoding) or a RequantizeStep

    def compute(self, *xs, stats: LayerStats):
        if all(rq is None for rq in self.requants):
            return (np.concatenate(xs, axis=self.axis),)
        # each input requantized (or copied) straight into its columns of the output viewed as
        # [prod(shape[:axis]), prod(shape[axis:])]: no per-input temporaries, no second copy
        axis = self.axis % xs[0].ndim
        shape = list(xs[0].shape)
        shape[axis] = sum(x.shape[axis] for x in xs)
        if any(d == 0 for d in shape):
            dtype = next(rq.dst.dtype.numpy_dtype for rq in self.requants if rq is not None)
            return (np.empty(shape, dtype),)
        for x in xs:
            if x.ndim != len(shape) or any(a != b for i, (a, b) in enumerate(zip(x.shape, shape)) if i != axis):
                raise HwsimError(f"Concat inputs must agree on every axis but {axis}, found shapes "
                                 f"{[tuple(v.shape) for v in xs]}")
        dtype = next(rq.dst.dtype.numpy_dtype for rq in self.requants if rq is not None)
        out = np.empty(shape, dtype)
        rows = int(np.prod(shape[:axis], dtype=np.int64))
        out2 = out.reshape(rows, -1)
        col = 0
        for x, rq in zip(xs, self.requants):
            width = x.size // rows if rows else 0
            if rq is None:
                out2[:, col:col + width] = x.reshape(rows, width)
            elif x.size:
                rq.into(x, out2, col, stats)
            col += width
        return (out,)


@planner_op("Concat")
def plan_concat(p: Planner, node):
    vals = [p.int_input(node, i, f"input {i}") for i in range(len(node.inputs))]
    if any(v.kind == "qconst" for v in vals):
        raise p.refuse(node, "concatenating constants with run-time tensors is not supported")
    encs = [v.enc for v in vals]
    axis = int(node.attr("axis"))
    if all(e == encs[0] for e in encs):
        out = node.outputs[0]
        p.emit(ConcatStep(node.name, "Concat", tuple(v.name for v in vals), (out,), axis=axis,
                          requants=(None,) * len(vals)))
        p.set(out, Val("dq", out, encs[0]))
        return
    down = p.downstream_encoding(node)
    if down is not None and not any(u.op_type == "QuantizeLinear" for u in p.consumers.get(node.outputs[0], [])):
        # Concat -> Reshape/Transpose... -> Q (e.g. a channel shuffle): requantize the inputs to that
        # encoding here; the movement ops keep it and the QuantizeLinear becomes an alias.
        out, y, lo, hi = node.outputs[0], down, down.qmin, down.qmax
        count = None
        kind = "dq"
    else:
        out, y, acts = p.fused_output(node)
        lo, hi = p.activation_bounds(acts, y)
        count = p.saturation_bounds(acts, y)
        kind = "int"
    rqs = tuple(None if e == y and lo == y.qmin and hi == y.qmax else
                requantize_step(p, f"{node.name}:in{i}", v.name, e, y, out, lo, hi, count) for i, (v, e) in enumerate(zip(vals, encs)))
    p.emit(ConcatStep(node.name, "Concat", tuple(v.name for v in vals), (out,), axis=axis, requants=rqs))
    p.set(out, Val(kind, out, y))


@planner_op("QLinearConcat", domain="com.microsoft")
def plan_qlinear_concat(p: Planner, node):
    """com.microsoft QLinearConcat (Y_scale, Y_zp, (X, X_scale, X_zp)...): inputs whose encoding differs
    from Y's are requantized to it (ONNX Runtime dequantizes and quantizes them), then concatenated."""
    from .mac import _enc

    y = _enc(p, node, 0, 1, "Y")
    n_in = (len(node.inputs) - 2) // 3
    if n_in < 1 or len(node.inputs) != 2 + 3 * n_in:
        raise p.bad(node, f"expected Y_scale, Y_zero_point and triples (X, X_scale, X_zero_point), found "
                    f"{len(node.inputs)} inputs")
    names, rqs = [], []
    out = node.outputs[0]
    for i in range(n_in):
        x = p.raw_int(node, 2 + 3 * i, f"input {i}")
        if x.kind == "const":
            raise p.refuse(node, "concatenating constants with run-time tensors is not supported")
        e = _enc(p, node, 3 + 3 * i, 4 + 3 * i, f"X{i}")
        names.append(x.name)
        rqs.append(None if e == y else requantize_step(p, f"{node.name}:in{i}", x.name, e, y, out))
    p.emit(ConcatStep(node.name, "QLinearConcat", tuple(names), (out,), axis=int(node.attr("axis")),
                      requants=tuple(rqs)))
    p.set(out, Val("int", out, y))
