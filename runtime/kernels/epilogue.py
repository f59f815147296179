"""The float32-form epilogue of an integer MAC op on int32-bounded accumulators, in float32 lanes.

Contract (0 LSB against :func:`runtime.kernels.requant.requantize_accumulator`, float32 form, and
tests/reference_kernels.py; tests/runtime/test_speed_epilogue.py)::

    v = acc + bias[c]                                (an integer, |v| < 2^31 by the caller's bound)
    y = rint_even(float32(v) * scale[c]) + zero_point
    out = clamp(y, lo, hi) in the output type;  saturated = #(y < count_lo or y > count_hi)

Why float32 lanes are exact here: ``rint_even(float32(v) * s)`` is ONNX Runtime's float32 product
and rounding, an integer-valued float32 r. The wide form adds the zero point in float64; this one
adds it in float32, which is exact while |r| <= 2^23 (|r + zp| < 2^24). When every bound (zp, lo, hi
and the finite count bounds) is at most 2^22 in magnitude, a larger |r| gives, rounded or not, a
value beyond every bound on r's side (|fl(r + zp)| >= 2^23 - 2^22), so the comparisons, the clamp
and the count agree with the exact sum: :func:`float32_lanes_exact`. With an accumulator width of
at least 32 bits and |v| < 2^31 no policy (wrap/saturate) and no range check apply.

Two drivers: :func:`requantize_int32` reads stored int32 accumulators [outer, channels, inner];
:func:`requantize_gemm` reads the integer-valued float result of a convolution's GEMM
[channels, images * pixels] (exact by :mod:`runtime.kernels.mac`'s bound), adds the bias and
writes the output [images, channels, pixels] directly, so that the int32 accumulators are never
stored. Work items are (row, block of BLOCK elements), so that one long row is shared out too.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from ..numba_config import jit

F32_LANE_BOUND = 1 << 22  # zero point, clamp and count bounds within this: float32 lanes are exact
BLOCK = 1 << 14  # elements per work item


class Float32Epilogue(NamedTuple):
    """Parameters of the float32-lane epilogue, float32 (count bounds +-inf: that side not counted)."""

    scales: np.ndarray  # [channels] (length 1: per tensor)
    zero_point: np.float32
    lo: np.float32
    hi: np.float32
    count_lo: np.float32
    count_hi: np.float32


def float32_lanes_exact(zero_point: int, lo: int, hi: int, count_lo: int | None, count_hi: int | None) -> bool:
    """True when the float32-lane epilogue equals the float64 one (module docstring): every finite
    bound and the zero point at most 2^22 in magnitude.

    >>> float32_lanes_exact(128, 0, 255, 0, 255), float32_lanes_exact(0, -2**31, 2**31 - 1, None, None)
    (True, False)
    """
    bounds = [zero_point, lo, hi] + [b for b in (count_lo, count_hi) if b is not None]
    return all(abs(int(b)) <= F32_LANE_BOUND for b in bounds)


def make_epilogue(scales, zero_point: int, lo: int, hi: int, count_lo: int | None,
                  count_hi: int | None) -> Float32Epilogue | None:
    """The parameters, or None when float32 lanes would not be exact (:func:`float32_lanes_exact`),
    when lo > hi, or when a scale is not a finite non-negative float32 (the general kernel reports those)."""
    sc = np.asarray(scales).reshape(-1)
    if not float32_lanes_exact(zero_point, lo, hi, count_lo, count_hi) or int(lo) > int(hi) or sc.size == 0 \
            or sc.dtype != np.float32 or not np.all(np.isfinite(sc)) or np.any(sc < 0):
        return None
    return Float32Epilogue(np.ascontiguousarray(sc), np.float32(zero_point),
                           np.float32(lo), np.float32(hi),
                           np.float32(-np.inf if count_lo is None else count_lo),
                           np.float32(np.inf if count_hi is None else count_hi))


@jit
def _row(src, b, s, zf, lo, hi, c_lo, c_hi, dst):
    """dst[i] = clamp(rint(float32(int32(src[i]) + b) * s) + zf, lo, hi); returns the number of
    y outside [c_lo, c_hi]. src holds integers (int32, or integer-valued float32/float64 below 2^31)."""
    n_sat = np.int32(0)
    for i in range(src.shape[0]):
        v = np.int32(np.int32(src[i]) + b)
        y = np.float32(np.rint(np.float32(v) * s)) + zf
        n_sat += np.int32(y < c_lo) | np.int32(y > c_hi)
        dst[i] = min(max(y, lo), hi)
    return n_sat


@jit(parallel=True)
def _epilogue_acc3(acc, scales, zf, lo, hi, c_lo, c_hi, out):
    """acc [outer, channels, inner] int32 -> out (same shape), scale per channel (or one)."""
    n_outer, n_ch, n_inner = acc.shape
    n_blocks = (n_inner + BLOCK - 1) // BLOCK
    n_items = n_outer * n_ch * n_blocks
    sat = np.zeros(n_items, np.int64)
    zero = np.int32(0)
    for item in prange(n_items):
        r = item // n_blocks
        o = r // n_ch
        c = r % n_ch
        i0 = (item % n_blocks) * BLOCK
        i1 = min(n_inner, i0 + BLOCK)
        s = scales[c] if scales.shape[0] > 1 else scales[0]
        sat[item] = _row(acc[o, c, i0:i1], zero, s, zf, lo, hi, c_lo, c_hi, out[o, c, i0:i1])
    return sat.sum()


@jit(parallel=True)
def _epilogue_gemm(res, m0, bias, scales, zf, lo, hi, c_lo, c_hi, out):
    """res [mg, images*pixels] (integer-valued float) -> out[n, m0 + m, :] for m < mg, adding
    bias[m0 + m] (int32); scale per output channel m0 + m (or one)."""
    mg = res.shape[0]
    n_dim, _, n_pix = out.shape
    n_blocks = (n_pix + BLOCK - 1) // BLOCK
    n_items = n_dim * mg * n_blocks
    sat = np.zeros(n_items, np.int64)
    for item in prange(n_items):
        r = item // n_blocks
        n = r // mg
        m = r % mg
        i0 = (item % n_blocks) * BLOCK
        i1 = min(n_pix, i0 + BLOCK)
        s = scales[m0 + m] if scales.shape[0] > 1 else scales[0]
        sat[item] = _row(res[m, n * n_pix + i0:n * n_pix + i1], bias[m0 + m], s, zf, lo, hi, c_lo, c_hi,
                         out[n, m0 + m, i0:i1])
    return sat.sum()


def requantize_int32(acc3: np.ndarray, ep: Float32Epilogue, out_dtype) -> tuple[np.ndarray, int]:
    """(out, saturated) for int32 accumulators acc3 [outer, channels, inner] (C-contiguous), the
    scales per channel or one; out has acc3's shape and ``out_dtype`` (which holds [lo, hi])."""
    out = np.empty(acc3.shape, out_dtype)
    if not acc3.size:
        return out, 0
    sat = _epilogue_acc3(acc3, ep.scales, ep.zero_point, ep.lo, ep.hi, ep.count_lo, ep.count_hi, out)
    return out, int(sat)


def requantize_gemm(res: np.ndarray, m0: int, bias32: np.ndarray, ep: Float32Epilogue, out3: np.ndarray) -> int:
    """Writes out3[:, m0:m0 + mg] from a convolution GEMM's integer-valued result res [mg, N*P]
    (C-contiguous float32/float64, every |res + bias| < 2^31) and int32 biases; returns the
    saturated count."""
    if not res.size:
        return 0
    return int(_epilogue_gemm(res, int(m0), bias32, ep.scales, ep.zero_point, ep.lo, ep.hi, ep.count_lo,
                              ep.count_hi, out3))
