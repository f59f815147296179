"""ONNX Runtime's QLinearGlobalAveragePool and QLinearAveragePool (runtime/ORT_CPU_ARITHMETIC.md §4).

GlobalAveragePool: ``acc = sum(x) - zx*N`` (int32) requantized by MlasRequantizeOutput with the
float32 scale ``sx / (sy*N)`` (three candidate forms matched ORT in every measurement so far).
AveragePool: the float path: ``avg = f32(sum_k f32((q - zx) * sx)) / count`` then QuantizeLinear.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels.pooling import plane_sums
from ..kernels.requant import requantize_float32
from ..program import LayerStats, Step
from ..quantize import quantize
from .common import saturation_bounds


@dataclass
class GapF32Step(Step):
    x_zp: int = 0
    sx: np.float32 = None
    sy: np.float32 = None
    zo: int = 0
    lo: int = 0
    hi: int = 0
    qmin: int = 0
    qmax: int = 0
    out_dtype: np.dtype = None

    def compute(self, x, stats: LayerStats):
        n = int(np.prod(x.shape[2:]))
        sums = plane_sums(x)
        acc = sums.reshape(x.shape[:2] + (1,) * (x.ndim - 2)) - self.x_zp * n
        scale = np.float32(self.sx / np.float32(self.sy * np.float32(n)))
        y = np.asarray(requantize_float32(acc, np.array([scale], np.float32), None, self.zo, -(1 << 31), (1 << 31) - 1), np.int64)
        c_lo, c_hi = saturation_bounds(self.qmin, self.qmax, self.lo, self.hi)
        stats.saturation += int(np.count_nonzero((y < c_lo) | (y > c_hi)))
        return (np.clip(y, self.lo, self.hi).astype(self.out_dtype),)


@dataclass
class AvgPoolF32Step(Step):
    kernel: tuple = ()
    strides: tuple = ()
    pads: tuple = ()
    count_include_pad: int = 0
    ceil_mode: int = 0
    x_enc: object = None
    y_enc: object = None
    lo: int = 0
    hi: int = 0

    def compute(self, x, stats: LayerStats):
        from ..kernels.pooling import _out_size

        sx = np.float32(self.x_enc.scale)
        f = (x.astype(np.int64) - int(self.x_enc.zero_point)).astype(np.float32) * sx
        kh, kw = self.kernel
        sh, sw = self.strides
        ph, pw, peh, pew = self.pads
        n, c, h, w = f.shape
        oh = _out_size(h, kh, sh, 1, ph, peh, self.ceil_mode)
        ow = _out_size(w, kw, sw, 1, pw, pew, self.ceil_mode)
        out = np.empty((n, c, oh, ow), np.float32)
        for y in range(oh):
            for xx in range(ow):
                y0, x0 = y * sh - ph, xx * sw - pw
                ys, xs = slice(max(y0, 0), min(y0 + kh, h)), slice(max(x0, 0), min(x0 + kw, w))
                win = f[:, :, ys, xs]
                acc = np.zeros((n, c), np.float32)
                for i in range(win.shape[2]):  # float32 sum in tap order
                    for j in range(win.shape[3]):
                        acc = (acc + win[:, :, i, j]).astype(np.float32)
                cnt = kh * kw if self.count_include_pad else win.shape[2] * win.shape[3]
                out[:, :, y, xx] = acc / np.float32(cnt)
        q = quantize(out, self.y_enc, "half_to_even").astype(np.int64)
        return (np.clip(q, self.lo, self.hi).astype(self.y_enc.dtype.numpy_dtype),)


def plan_avg_float32(p, node, x, x_enc, out, y, lo, hi, global_pool, count=None):
    if global_pool:
        p.emit(GapF32Step(node.name, node.op_type, (x.name,), (out,), x_zp=int(x_enc.zero_point),
                          sx=np.float32(x_enc.scale), sy=np.float32(y.scale), zo=int(y.zero_point), lo=lo, hi=hi,
                          qmin=(count or (y.qmin, y.qmax))[0], qmax=(count or (y.qmin, y.qmax))[1],
                          out_dtype=y.dtype.numpy_dtype))
        return
    k = tuple(node.attr("kernel_shape"))
    if len(k) != 2:
        raise p.refuse(node, "only 2-D AveragePool is supported on float32-requantizing targets")
    p.emit(AvgPoolF32Step(node.name, node.op_type, (x.name,), (out,), kernel=k,
                          strides=tuple(node.attr("strides") or (1, 1)), pads=tuple(node.attr("pads") or (0,) * 4),
                          count_include_pad=int(node.attr("count_include_pad", 0)),
                          ceil_mode=int(node.attr("ceil_mode", 0)), x_enc=x_enc, y_enc=y, lo=lo, hi=hi))
