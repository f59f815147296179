"""AveragePool and GlobalAveragePool (QDQ and com.microsoft QLinear forms).

fixed_point targets: AveragePool is zp + round_div(sum(x - zp), n) over the counted taps with the
target's ``rounding.average_pool`` division (TFLite rounds the raw sum instead: identical for
zero point 0 and for half_to_even/floor modes), then a requantization if the output encoding differs; GlobalAveragePool is TFLite's Mean: the int32 sum of raw values, the zero-point
term removed, and one MBQM whose multiplier folds 1/n.
float32 targets follow ONNX Runtime's kernels (see runtime/ORT_CPU_ARITHMETIC.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..encoding import Encoding
from ..fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from ..kernels.pooling import average_pool, reduce_sum_acc
from ..plan import Planner, Val, planner_op
from ..program import LayerStats, Step
from .common import saturation_bounds
from .quantize_ops import RequantizeStep, requantize_step


@dataclass
class AvgPoolStep(Step):
    kernel: tuple = ()
    strides: tuple = ()
    pads: tuple = ()
    count_include_pad: int = 0
    ceil_mode: int = 0
    rounding: str = "half_away_from_zero"
    x_zp: int = 0
    requant: RequantizeStep | None = None
    out_dtype: np.dtype = None

    def compute(self, x, stats: LayerStats):
        y = average_pool(x, self.x_zp, self.kernel, self.strides, self.pads, self.count_include_pad,
                         self.ceil_mode, self.rounding)
        y = np.asarray(y)
        if self.requant is not None:
            return self.requant.compute(y, stats=stats)
        return (y.astype(self.out_dtype),)


@dataclass
class MeanStep(Step):
    """TFLite Mean over the spatial axes: MBQM(S - zp_in*n, M', e') + zp_out, 1/n folded into M'."""

    x_zp: int = 0
    zo: int = 0
    m: int = 0
    e: int = 0
    rounding: str = "double"
    axes: tuple | None = None  # None: every axis after N, C
    keepdims: bool = True
    lo: int = 0
    hi: int = 0
    qmin: int = 0
    qmax: int = 0
    out_dtype: np.dtype = None

    def compute(self, x, stats: LayerStats):
        axes = tuple(range(2, x.ndim)) if self.axes is None else tuple(a % x.ndim for a in self.axes)
        n = int(np.prod([x.shape[a] for a in axes]))
        m, e = _fold_count(self.m, self.e, n)
        s = np.asarray(reduce_sum_acc(x, axes), np.int64)
        v = np.asarray(multiply_by_quantized_multiplier(s - self.x_zp * n, m, e, self.rounding), np.int64) + self.zo
        if not self.keepdims:
            v = np.squeeze(v, axis=axes)
        c_lo, c_hi = saturation_bounds(self.qmin, self.qmax, self.lo, self.hi)
        stats.saturation += int(np.count_nonzero((v < c_lo) | (v > c_hi)))
        return (np.clip(v, self.lo, self.hi).astype(self.out_dtype),)


def _fold_count(m: int, e: int, n: int) -> tuple[int, int]:
    """TFLite Mean: k = min(floor(log2 n), 32, 31 + e); M' = (M << k) // n; e' = e - k."""
    k = min(n.bit_length() - 1, 32, 31 + e)
    return int((m << k) // n), int(e - k)


def _plan_avg(p: Planner, node, x: Val, x_enc: Encoding, out: str, y: Encoding, lo: int, hi: int, global_pool: bool,
              count: tuple[int, int] | None = None):
    t = p.target.arithmetic
    c_lo, c_hi = count or (y.qmin, y.qmax)
    if not (x_enc.is_per_tensor and y.is_per_tensor):
        raise p.refuse(node, "pooling needs per-tensor encodings")
    if t.requant.form == "float32":
        from .pool_f32 import plan_avg_float32

        return plan_avg_float32(p, node, x, x_enc, out, y, lo, hi, global_pool, (c_lo, c_hi))
    if global_pool:
        m, e = quantize_multiplier(float(np.float64(np.float32(x_enc.scale)) / np.float64(np.float32(y.scale))))
        rounding = t.elementwise.rounding or "double"
        p.emit(MeanStep(node.name, node.op_type, (x.name,), (out,), x_zp=int(x_enc.zero_point), zo=int(y.zero_point),
                        m=m, e=e, rounding=rounding, lo=lo, hi=hi, qmin=c_lo, qmax=c_hi,
                        out_dtype=y.dtype.numpy_dtype))
        return
    k = tuple(node.attr("kernel_shape"))
    nd = len(k)
    pads = tuple(node.attr("pads") or (0,) * (2 * nd))
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise p.refuse(node, "auto_pad SAME_* is not supported for AveragePool; use explicit pads")
    rq = None
    if x_enc != y or lo != y.qmin or hi != y.qmax:
        rq = requantize_step(p, node.name + ":requant", "", x_enc, y, out, lo, hi, count)
    p.emit(AvgPoolStep(node.name, node.op_type, (x.name,), (out,), kernel=k,
                       strides=tuple(node.attr("strides") or (1,) * nd), pads=pads,
                       count_include_pad=int(node.attr("count_include_pad", 0)), ceil_mode=int(node.attr("ceil_mode", 0)),
                       rounding=t.rounding.average_pool, x_zp=int(x_enc.zero_point), requant=rq,
                       out_dtype=x_enc.dtype.numpy_dtype))


@planner_op("AveragePool", "GlobalAveragePool")
def plan_avgpool(p: Planner, node):
    x = p.int_input(node, 0, "input")
    out, y, acts = p.fused_output(node)
    lo, hi = p.activation_bounds(acts, y)
    _plan_avg(p, node, x, x.enc, out, y, lo, hi, node.op_type == "GlobalAveragePool", p.saturation_bounds(acts, y))
    p.set(out, Val("int", out, y))


@planner_op("QLinearAveragePool", "QLinearGlobalAveragePool", domain="com.microsoft")
def plan_qlinear_avgpool(p: Planner, node):
    from .mac import _enc

    if node.attr("channels_last", 0):
        raise p.refuse(node, "channels_last=1 is not supported")
    x = p.raw_int(node, 0, "X")
    xe, y = _enc(p, node, 1, 2, "x"), _enc(p, node, 3, 4, "y")
    out = node.outputs[0]
    _plan_avg(p, node, x, xe, out, y, y.qmin, y.qmax, node.op_type == "QLinearGlobalAveragePool")
    p.set(out, Val("int", out, y))


@dataclass
class MeanF32Step(Step):
    """Float32-requantizing targets (ONNX Runtime runs ReduceMean in float between DQ and Q):
    the exact integer sum S = sum(q - zx), mean = f32(f32(S) * sx) / n, then QuantizeLinear to y.
    Equal to ONNX Runtime's float path except where its float summation order moves a value across a
    rounding tie."""

    x_enc: Encoding = None
    y_enc: Encoding = None
    axes: tuple = ()
    keepdims: bool = True
    lo: int = 0
    hi: int = 0

    def compute(self, x, stats: LayerStats):
        from ..quantize import quantize

        axes = tuple(a % x.ndim for a in self.axes)
        n = int(np.prod([x.shape[a] for a in axes]))
        s = (x.astype(np.int64) - int(self.x_enc.zero_point)).sum(axis=axes, keepdims=self.keepdims)
        mean = (s.astype(np.float32) * np.float32(self.x_enc.scale)).astype(np.float32) / np.float32(n)
        q = quantize(mean.astype(np.float32), self.y_enc, "half_to_even").astype(np.int64)
        return (np.clip(q, self.lo, self.hi).astype(self.y_enc.dtype.numpy_dtype),)


@planner_op("ReduceMean")
def plan_reduce_mean(p: Planner, node):
    x = p.int_input(node, 0, "input")
    if node.input(1) is not None:
        axes = tuple(int(a) for a in p.const(node, 1, "axes").reshape(-1))
    else:
        axes = tuple(node.attr("axes") or ())
    if not axes:
        raise p.refuse(node, "ReduceMean over all axes (no axes given) is not supported")
    keep = bool(node.attr("keepdims", 1))
    out, y, acts = p.fused_output(node)
    lo, hi = p.activation_bounds(acts, y)
    if not (x.enc.is_per_tensor and y.is_per_tensor):
        raise p.refuse(node, "ReduceMean needs per-tensor encodings")
    t = p.target.arithmetic
    if t.requant.form == "float32":
        p.emit(MeanF32Step(node.name, "ReduceMean", (x.name,), (out,), x_enc=x.enc, y_enc=y, axes=axes,
                           keepdims=keep, lo=lo, hi=hi))
    else:
        m, e = quantize_multiplier(float(np.float64(np.float32(x.enc.scale)) / np.float64(np.float32(y.scale))))
        p.emit(MeanStep(node.name, "ReduceMean", (x.name,), (out,), x_zp=int(x.enc.zero_point), zo=int(y.zero_point),
                        m=m, e=e, rounding=t.elementwise.rounding or "double", lo=lo, hi=hi,
                        qmin=p.saturation_bounds(acts, y)[0], qmax=p.saturation_bounds(acts, y)[1], out_dtype=y.dtype.numpy_dtype, axes=axes, keepdims=keep))
    p.set(out, Val("int", out, y))
