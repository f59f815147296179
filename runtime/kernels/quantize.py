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


@jit
def _quantize_run(x, scale, zero_point, lo, hi, mode, out):
    """out[i] = clamp(round(float32(x[i] / scale)), lo, hi) + z with lo = qmin - z, hi = qmax - z
    (float64): clamping the rounded value equals comparing before rounding (rounding is monotonic
    and keeps integers; +-inf clamp to the ends). Returns the number of non-finite inputs (the
    caller refuses them: NaN has no integer)."""
    bad = 0
    z32 = np.int32(zero_point)
    for i in range(x.shape[0]):
        xv = x[i]
        bad += not np.isfinite(xv)
        v = xv / scale  # float32 division, as ONNX QuantizeLinear
        r = min(max(np.float64(np.rint(v)) if mode == 0 else _round_half(np.float64(v), mode), lo), hi)
        if out.itemsize <= 2:  # r + z fits int32, whose conversion vectorizes
            out[i] = np.int32(r) + z32
        else:
            out[i] = np.int64(r) + zero_point
    return bad


@jit(parallel=True)
def _quantize_kernel(x, scale, zero_point, lo, hi, mode, out):
    """:func:`_quantize_run` over CHUNK-long runs in parallel; returns the number of non-finite inputs."""
    n = x.shape[0]
    n_items = (n + CHUNK - 1) // CHUNK
    bad = np.zeros(n_items, np.int64)
    for item in prange(n_items):
        i0 = item * CHUNK
        i1 = min(n, i0 + CHUNK)
        bad[item] = _quantize_run(x[i0:i1], scale, zero_point, lo, hi, mode, out[i0:i1])
    return bad.sum()


@jit
def _requantize_float32_run(src, dst, zs, ss, sd, zd, w_lo, w_hi, lo, hi, c_lo, c_hi, mode):
    """dst[i] = clamp(y, lo, hi) with y = clamp(round(float32(float32(src[i] - zs) * ss) / sd),
    w_lo, w_hi) + zd (w_lo, w_hi: the int32 range minus zd); returns how many y lie outside
    [c_lo, c_hi]. Bounds are float64 offsets from zd (exact: integers below 2^53), so the loop runs
    in floating point and vectorizes; clamping the rounded value equals comparing before rounding
    (rounding is monotonic and keeps integers)."""
    sat = 0
    zs32 = np.int32(zs)
    narrow = src.itemsize <= 2 and -32768 <= zs <= 65535  # q - z in int32 (which vectorizes) is exact
    for i in range(src.shape[0]):
        if narrow:
            f = np.float32(np.int32(src[i]) - zs32) * ss  # float32(q - z) * s: ONNX Runtime's DequantizeLinear
        else:
            f = np.float32(np.int64(src[i]) - zs) * ss
        v = f / sd  # float32 division: QuantizeLinear
        r = np.float64(np.rint(v)) if mode == 0 else _round_half(np.float64(v), mode)
        r = min(max(r, w_lo), w_hi)
        sat += (r < c_lo) | (r > c_hi)
        if dst.itemsize <= 2:  # r + zd fits int32, whose conversion vectorizes
            dst[i] = np.int32(min(max(r, lo), hi)) + np.int32(zd)
        else:
            dst[i] = np.int64(min(max(r, lo), hi)) + zd
    return sat


@jit
def _requantize_fixed_point_run(src, dst, zs, m, e, single, zd, lo, hi, c_lo, c_hi):
    """dst[i] = clamp(y, lo, hi), y = clamp_int32(MBQM(src[i] - zs, m, e) + zd); returns how many y
    lie outside [c_lo, c_hi]."""
    sat = 0
    for i in range(src.shape[0]):
        y = min(max(mbqm_scalar(np.int64(src[i]) - zs, m, e, single) + zd, INT32_MIN), INT32_MAX)
        sat += (y < c_lo) | (y > c_hi)
        dst[i] = min(max(y, lo), hi)
    return sat


@jit(parallel=True)
def _requantize_kernel(x, fixed, zs, ss, m, e, single, sd, zd, mode, lo, hi, c_lo, c_hi, out, col):
    """x (outer, inner) integers -> out[:, col:col + inner] (the output's storage type), in
    CHUNK-long runs; see the module docstring for the two forms. Returns the saturation count."""
    n_outer, n_inner = x.shape
    per_row = (n_inner + CHUNK - 1) // CHUNK
    n_items = n_outer * per_row
    sats = np.zeros(n_items, np.int64)
    # float32 form: every bound as a float64 offset from zd
    w_lo, w_hi = np.float64(INT32_MIN - zd), np.float64(INT32_MAX - zd)
    lo_f, hi_f = np.float64(lo - zd), np.float64(hi - zd)
    c_lo_f, c_hi_f = np.float64(c_lo - zd), np.float64(c_hi - zd)
    for item in prange(n_items):
        o = item // per_row
        i0 = (item % per_row) * CHUNK
        i1 = min(n_inner, i0 + CHUNK)
        src = x[o, i0:i1]
        dst = out[o, col + i0:col + i1]
        if fixed:
            sats[item] = _requantize_fixed_point_run(src, dst, zs, m, e, single, zd, lo, hi, c_lo, c_hi)
        else:
            sats[item] = _requantize_float32_run(src, dst, zs, ss, sd, zd, w_lo, w_hi, lo_f, hi_f, c_lo_f, c_hi_f,
                                                 mode)
    return sats.sum()


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
                                   np.int64(mode), out)
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
    if form == "fixed_point" and x2.dtype.itemsize >= 4:  # narrower types cannot leave the int32 domain
        c_min, c_max = int(x2.min()) - int(src_zero_point), int(x2.max()) - int(src_zero_point)
        if c_min < INT32_MIN or c_max > INT32_MAX:
            raise HwsimError(f"{fn}: x - zero point must lie in the int32 range for the fixed-point form, "
                             f"found values in [{c_min}, {c_max}]")
    sat = _requantize_kernel(
        x2, form == "fixed_point", np.int64(src_zero_point), np.float32(src_scale), np.int64(multiplier),
        np.int64(shift), single, np.float32(dst_scale), np.int64(dst_zero_point), np.int64(mode), np.int64(lo),
        np.int64(hi), np.int64(max(int(count_min), -(1 << 62))), np.int64(min(int(count_max), 1 << 62)), out,
        np.int64(col))
    return int(sat)
