"""Whole-tensor quantization kernels, one pass into the output's storage type (per-tensor encodings).

- :func:`quantize_per_tensor`: float32 -> integers, exactly :func:`runtime.quantize.quantize`
  (``q = clamp(round(float32(x) / s) + z, qmin, qmax)``, float32 division, the named rounding).
- :func:`requantize_tensor`: integers at encoding A -> integers at encoding B, written into a
  column range of a 2-D output (so that Concat writes each input in place), with the saturation
  count and a clamp. Two forms, as :class:`runtime.ops.quantize_ops.RequantizeStep` defines them:
  ``fixed_point``: ``y = MBQM(x - z_a, M, e) + z_b`` (TFLite Requantize, double or single rounding);
  ``float32``: ``y = round(float32(float32(x - z_a) * s_a) / s_b) + z_b`` (ONNX Runtime's DequantizeLinear
  then QuantizeLinear in float32, the target's quantize rounding); both unclamped in int32 first.

Both equal the slow definitions in tests/runtime/test_speed_paths.py bit for bit. They replace
numpy passes over int64/float64 temporaries of the whole tensor (ShuffleNet batch 32: Concat
requantization and the input QuantizeLinear took 430 ms and 115 ms).

>>> quantize_per_tensor(np.float32([0.5, 1.5, -2.5, 300.0]), np.float32(1.0), 0, -128, 127, "half_to_even", np.int8)
(array([  0,   2,  -2, 127], dtype=int8), 0)
>>> out = np.zeros((1, 4), np.uint8)
>>> requantize_tensor(np.uint8([[0, 10]]), "float32", 10, np.float32(0.5), 0, np.float32(1.0), 0, 0, "half_to_even",
...                   0, 255, 0, 255, out, 2)  # (0 - 10) * 0.5 = -5 saturates to 0; (10 - 10) -> 0
1
>>> out
array([[0, 0, 0, 0]], dtype=uint8)
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ..errors import HwsimError
from ..fixedpoint import INT32_MAX, INT32_MIN, mbqm_scalar
from ..numba_config import jit
from ..quantize import ROUNDINGS, _round_half

CHUNK = 1 << 14  # elements per parallel work item

__all__ = ["quantize_per_tensor", "requantize_tensor"]


@jit
def _round(v, mode):
    """Round the float64 ``v`` (a float32 value) to an integer-valued float64 with the named mode
    (0 = half_to_even: rint, which vectorizes; else :func:`runtime.quantize._round_half`)."""
    if mode == 0:
        return np.rint(v)
    return _round_half(v, mode)


@jit(parallel=True)
def _quantize_kernel(x, scale, zero_point, lo, hi, qmin, qmax, mode, out):
    """out[i] = qmin if v <= lo, qmax if v >= hi, else round(v) + z with v = float32(x[i] / scale);
    lo = qmin - z, hi = qmax - z (float64; comparing before rounding equals clamping after).
    Returns the number of non-finite inputs (the caller refuses them; their outputs are garbage)."""
    n = x.shape[0]
    n_items = (n + CHUNK - 1) // CHUNK
    bad = np.zeros(n_items, np.int64)
    for item in prange(n_items):
        i0 = item * CHUNK
        i1 = min(n, i0 + CHUNK)
        cnt = 0
        for i in range(i0, i1):
            xv = x[i]
            cnt += not np.isfinite(xv)
            v = np.float64(xv / scale)
            r = _round(min(max(v, lo - 1.0), hi + 1.0), mode)  # bounded: the int64 conversion is defined
            q = np.int64(r) + zero_point
            out[i] = qmin if v <= lo else (qmax if v >= hi else q)
        bad[item] = cnt
    return bad.sum()


@jit(parallel=True)
def _requantize_kernel(x, fixed, zs, ss, m, e, single, sd, zd, w_lo, w_hi, mode, lo, hi, c_lo, c_hi, out, col):
    """x (outer, inner) integers -> out[:, col:col + inner] (the output's storage type); see the module
    docstring for the two forms. w_lo/w_hi = INT32_MIN/MAX - zd as float64 (the float32 form's
    unclamped int32 quantization). Returns (saturated, min and max of x - zs)."""
    n_outer, n_inner = x.shape
    per_row = (n_inner + CHUNK - 1) // CHUNK
    n_items = n_outer * per_row
    stats = np.zeros((n_items, 3), np.int64)
    for item in prange(n_items):
        o = item // per_row
        i0 = (item % per_row) * CHUNK
        i1 = min(n_inner, i0 + CHUNK)
        src = x[o]
        dst = out[o]
        sat = 0
        mn = np.int64(np.iinfo(np.int64).max)
        mx = np.int64(np.iinfo(np.int64).min)
        if fixed:
            for i in range(i0, i1):
                c = np.int64(src[i]) - zs
                mn = min(mn, c)
                mx = max(mx, c)
                y = min(max(mbqm_scalar(c, m, e, single) + zd, INT32_MIN), INT32_MAX)
                sat += (y < c_lo) | (y > c_hi)
                dst[col + i] = min(max(y, lo), hi)
        else:
            for i in range(i0, i1):
                c = np.int64(src[i]) - zs
                mn = min(mn, c)
                mx = max(mx, c)
                f = np.float32(c) * ss  # float32(q - z) * s: ONNX Runtime's DequantizeLinear
                v = np.float64(f / sd)  # float32 division: QuantizeLinear
                r = _round(min(max(v, w_lo - 1.0), w_hi + 1.0), mode)
                y = np.int64(r) + zd
                y = INT32_MIN if v <= w_lo else (INT32_MAX if v >= w_hi else y)
                sat += (y < c_lo) | (y > c_hi)
                dst[col + i] = min(max(y, lo), hi)
        stats[item, 0] = sat
        stats[item, 1] = mn
        stats[item, 2] = mx
    return stats[:, 0].sum(), stats[:, 1].min(), stats[:, 2].max()


def _mode(rounding: str, func: str) -> int:
    if rounding not in ROUNDINGS:
        raise HwsimError(f"{func}: rounding must be one of {list(ROUNDINGS)}, found {rounding!r}")
    return ROUNDINGS.index(rounding)


def quantize_per_tensor(x, scale, zero_point: int, qmin: int, qmax: int, rounding: str, out_dtype):
    """:func:`runtime.quantize.quantize` for a per-tensor encoding, in parallel and straight into
    ``out_dtype``: returns ``(q, number of NaN/Inf inputs)``; ``q`` is meaningful only when that number
    is 0 (the caller decides what a non-finite input means: QuantizeLinear steps refuse it)."""
    fn = "quantize_per_tensor"
    mode = _mode(rounding, fn)
    xa = np.asarray(x)
    if xa.dtype != np.float32:
        raise HwsimError(f"{fn}: x must be float32, found {xa.dtype}")
    s = np.float32(scale)
    if not (np.isfinite(s) and s > 0):
        raise HwsimError(f"{fn}: scale must be a finite positive float32, found {scale!r}")
    out_dtype = np.dtype(out_dtype)
    info = np.iinfo(out_dtype)
    if not info.min <= int(qmin) <= int(qmax) <= info.max:
        raise HwsimError(f"{fn}: [{qmin}, {qmax}] must be a range of {out_dtype} [{info.min}, {info.max}]")
    flat = np.ascontiguousarray(xa).reshape(-1)
    out = np.empty(flat.size, out_dtype)
    bad = 0
    if flat.size:
        z = int(zero_point)
        with np.errstate(over="ignore", invalid="ignore"):  # NUMBA_DISABLE_JIT=1 only
            bad = _quantize_kernel(flat, s, np.int64(z), np.float64(int(qmin) - z), np.float64(int(qmax) - z),
                                   np.int64(qmin), np.int64(qmax), np.int64(mode), out)
    return out.reshape(xa.shape), int(bad)


def requantize_tensor(x, form: str, src_zero_point: int, src_scale, multiplier: int, dst_scale, shift: int,
                      dst_zero_point: int, rounding: str, lo: int, hi: int, count_min: int, count_max: int,
                      out: np.ndarray, col: int) -> int:
    """Requantize the integer tensor ``x`` (viewed as ``out.shape[0]`` rows) into
    ``out[:, col:col + row length]``, clamped to [lo, hi]; returns the number of unclamped values
    outside [count_min, count_max] (the saturation count).

    ``form`` ``"fixed_point"``: ``multiplier``, ``shift`` and ``rounding`` ``"double"``/``"single"``
    (the scales are not used); ``"float32"``: ``src_scale``, ``dst_scale`` (float32) and ``rounding``
    one of :data:`runtime.quantize.ROUNDINGS` (the multiplier and shift are not used).
    """
    fn = "requantize_tensor"
    if form not in ("fixed_point", "float32"):
        raise HwsimError(f"{fn}: form must be 'fixed_point' or 'float32', found {form!r}")
    xa = np.asarray(x)
    if not np.issubdtype(xa.dtype, np.integer):
        raise HwsimError(f"{fn}: x must be an integer array, found {xa.dtype}")
    if out.ndim != 2 or not out.flags.c_contiguous:
        raise HwsimError(f"{fn}: out must be a C-contiguous 2-D array, found shape {out.shape}")
    rows = out.shape[0]
    if rows == 0 or xa.size % rows:
        raise HwsimError(f"{fn}: x of shape {xa.shape} cannot be viewed as {rows} rows")
    x2 = np.ascontiguousarray(xa).reshape(rows, -1)
    if not 0 <= col <= out.shape[1] - x2.shape[1]:
        raise HwsimError(f"{fn}: columns [{col}, {col + x2.shape[1]}) do not fit out of shape {out.shape}")
    info = np.iinfo(out.dtype)
    if not info.min <= int(lo) <= int(hi) <= info.max:
        raise HwsimError(f"{fn}: the clamp [{lo}, {hi}] must be a range of {out.dtype}")
    if form == "fixed_point":
        if rounding not in ("double", "single"):
            raise HwsimError(f"{fn}: fixed-point rounding must be 'double' or 'single', found {rounding!r}")
        mode, single = 0, rounding == "single"
    else:
        mode, single = _mode(rounding, fn), False
    if x2.size == 0:
        return 0
    zd = int(dst_zero_point)
    sat, c_min, c_max = _requantize_kernel(
        x2, form == "fixed_point", np.int64(src_zero_point), np.float32(src_scale), np.int64(multiplier),
        np.int64(shift), single, np.float32(dst_scale), np.int64(zd), np.float64(INT32_MIN - zd),
        np.float64(INT32_MAX - zd), np.int64(mode), np.int64(lo), np.int64(hi), np.int64(count_min),
        np.int64(count_max), out, np.int64(col))
    if form == "fixed_point" and (c_min < INT32_MIN or c_max > INT32_MAX):
        raise HwsimError(f"{fn}: x - zero point must lie in the int32 range for the fixed-point form, found "
                         f"values in [{int(c_min)}, {int(c_max)}]")
    return int(sat)
