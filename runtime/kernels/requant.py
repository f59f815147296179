"""Requantization kernels: integer accumulator tensor -> output integer tensor (int32, caller casts).

Two families, per-tensor or per-channel along ``axis`` (the kept channel axis):

- :func:`requantize_fixed_point`: TFLite integer rescale, ``clamp(MBQM(acc, M[c], e[c]) + zp, qmin, qmax)``
  with ``rounding`` = ``"double"`` (stock build), ``"single"`` (``TFLITE_SINGLE_ROUNDING``) or
  ``"int64"`` (the 15-bit-multiplier MBQM of the 16x8 kernels' int64 accumulators). The MBQM result
  and the zero point are added in 64 bits, then clamped.
- :func:`requantize_float32`: ONNX Runtime MLAS, ``clamp(rint_even(float32(acc) * scale[c]) + zp)``.
- :func:`requantize_accumulator`: what an integer MAC op runs, in one pass from the exact sums
  (int32 or int64): the accumulator policy, either form above, the saturation count and the clamp,
  stored in the output's type.

Formulas and rounding of each primitive: :mod:`runtime.fixedpoint`. The public functions validate
(shapes, dtypes, axis, ranges) and raise :class:`~runtime.errors.HwsimError` subclasses; the private
``@jit`` kernels do only the arithmetic.

>>> acc = np.array([[5, -2], [6, -6]])
>>> requantize_fixed_point(acc, [1 << 30], [-1], None, 0, -128, 127, "double")  # acc * 0.25
array([[ 2, -1],
       [ 2, -2]], dtype=int32)
>>> requantize_fixed_point(acc, [1 << 30], [-1], None, 0, -128, 127, "single")  # one rounding, ties up
array([[ 1,  0],
       [ 2, -1]], dtype=int32)
>>> requantize_float32(acc, np.float32([0.5, 0.25]), 1, 1, -128, 127)  # per column, ties to even, zp 1
array([[ 3,  1],
       [ 4, -1]], dtype=int32)
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ..errors import EncodingError, HwsimError
from ..fixedpoint import (
    INT32_MAX, INT32_MIN, INT64_ACC_LIMIT, check_float32_scales, check_output_range,
    mbqm_int64_scalar, mbqm_scalar,
)
from ..numba_config import jit

ROUNDINGS = ("double", "single", "int64")
_ROUNDING_CODE = {"double": 0, "single": 1, "int64": 2}
# rounding -> (min shift, max shift, min acc, max acc)
_DOMAIN = {
    "double": (-31, 31, INT32_MIN, INT32_MAX),
    "single": (-31, 30, INT32_MIN, INT32_MAX),
    "int64": (-31, 7, -INT64_ACC_LIMIT + 1, INT64_ACC_LIMIT - 1),
}

__all__ = ["requantize_fixed_point", "requantize_float32", "requantize_float32_counted", "requantize_accumulator",
           "ROUNDINGS"]


# ---------------------------------------------------------------------------------------------
# private kernels: acc is (outer, channels, inner) int64; params have length 1 or `channels`
# ---------------------------------------------------------------------------------------------
@jit
def _requantize_fixed_point_kernel(acc, multipliers, shifts, zero_point, qmin, qmax, mode, out):
    n_outer, n_ch, n_inner = acc.shape
    per_channel = multipliers.shape[0] > 1
    for c in range(n_ch):
        k = c if per_channel else 0
        m = np.int64(multipliers[k])
        e = np.int64(shifts[k])
        for o in range(n_outer):
            for i in range(n_inner):
                x = acc[o, c, i]
                if mode == 2:
                    y = mbqm_int64_scalar(x, m, e)
                else:
                    y = mbqm_scalar(x, m, e, mode == 1)
                y += zero_point
                if y < qmin:
                    y = qmin
                elif y > qmax:
                    y = qmax
                out[o, c, i] = y


@jit(parallel=True)
def _requantize_float32_kernel(acc, scales, zero_point, qmin, qmax, cmin, cmax, out):
    """The arithmetic of :func:`runtime.fixedpoint.requant_f32_scalar`, vectorized, into out's dtype;
    returns (min of acc, max of acc, number of unclamped results outside [cmin, cmax]) so that the
    wrapper checks the int32 domain without another pass (out is only used when it holds).

    Per element: r = rint(float32(int32(acc)) * scale) (float32; the conversion is exact inside the
    int32 domain); v = r + zp in float64 (exact: integers below 2^33); out = clamp(v, qmin, qmax).
    This equals the scalar's compare-then-return form (rounding first, integer bounds)."""
    n_outer, n_ch, n_inner = acc.shape
    per_channel = scales.shape[0] > 1
    lo = np.float64(qmin)
    hi = np.float64(qmax)
    c_lo = np.float64(cmin)
    c_hi = np.float64(cmax)
    zf = np.float64(zero_point)
    a_min = acc[0, 0, 0]
    a_max = acc[0, 0, 0]
    n_out = 0
    if n_inner == 1:  # channels last (a MatMul's output columns): vectorize over channels
        for o in prange(n_outer):
            src = acc[o, :, 0]
            dst = out[o, :, 0]
            mn = src[0]
            mx = src[0]
            cnt = 0
            for c in range(n_ch):
                v = src[c]
                mn = min(mn, v)
                mx = max(mx, v)
                y = np.float64(np.rint(np.float32(np.int32(v)) * scales[c if per_channel else 0])) + zf
                cnt += (y < c_lo) | (y > c_hi)
                dst[c] = min(max(y, lo), hi)
            a_min = min(a_min, mn)
            a_max = max(a_max, mx)
            n_out += cnt
    else:
        for oc in prange(n_outer * n_ch):
            o = oc // n_ch
            c = oc % n_ch
            s = scales[c if per_channel else 0]
            src = acc[o, c]
            dst = out[o, c]
            mn = src[0]
            mx = src[0]
            cnt = 0
            for i in range(n_inner):
                v = src[i]
                mn = min(mn, v)
                mx = max(mx, v)
                y = np.float64(np.rint(np.float32(np.int32(v)) * s)) + zf
                cnt += (y < c_lo) | (y > c_hi)
                dst[i] = min(max(y, lo), hi)
            a_min = min(a_min, mn)
            a_max = max(a_max, mx)
            n_out += cnt
    return a_min, a_max, n_out


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------
def _check_acc(acc, lo: int, hi: int, func: str, check_range: bool = True) -> np.ndarray:
    arr = np.asarray(acc)
    if not np.issubdtype(arr.dtype, np.integer):
        raise HwsimError(f"{func}: acc must be an integer array (int32/int64 accumulators), found dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > hi:
        raise HwsimError(f"{func}: acc must lie in [{lo}, {hi}], found max {int(arr.max())}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size and check_range:
        _check_range(int(arr.min()), int(arr.max()), lo, hi, func)
    return arr


def _check_range(amin: int, amax: int, lo: int, hi: int, func: str) -> None:
    if amin < lo or amax > hi:
        raise HwsimError(
            f"{func}: acc must lie in [{lo}, {hi}] for this requantization, found values in [{amin}, {amax}]")


def _channel_params(name: str, values, func: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.size == 0:
        raise EncodingError(f"{func}: {name} must be a non-empty 1-D array (length 1 = per tensor), "
                            f"found shape {arr.shape}")
    return arr


def _to_3d(acc: np.ndarray, n_params: int, axis, func: str) -> tuple[np.ndarray, int]:
    """View acc as (outer, channels, inner) for the kernels; returns the view and the channel count."""
    if n_params == 1 and axis is None:
        return acc.reshape(1, 1, acc.size), 1
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise HwsimError(f"{func}: axis must be an int (the channel axis) or None for per-tensor "
                         f"parameters, found {axis!r}")
    nd = acc.ndim
    if not -nd <= axis < nd:
        raise HwsimError(f"{func}: axis {axis} is out of range for an accumulator of shape {acc.shape} "
                         f"(expected {-nd} <= axis < {nd})")
    ax = int(axis) % nd
    n_ch = acc.shape[ax]
    if n_params not in (1, n_ch):
        raise EncodingError(f"{func}: expected 1 (per tensor) or {n_ch} (acc.shape[{ax}]) per-channel "
                            f"parameters, found {n_params}")
    outer = int(np.prod(acc.shape[:ax], dtype=np.int64))
    inner = int(np.prod(acc.shape[ax + 1:], dtype=np.int64))
    return acc.reshape(outer, n_ch, inner), n_ch


# ---------------------------------------------------------------------------------------------
# public wrappers
# ---------------------------------------------------------------------------------------------
def requantize_fixed_point(acc, multipliers, shifts, axis, zero_point: int, qmin: int, qmax: int,
                           rounding: str) -> np.ndarray:
    """TFLite integer requantization: ``out = clamp(MBQM(acc, M[c], e[c]) + zero_point, qmin, qmax)``.

    - ``acc``: integer array (any shape). Domain: int32 values for ``rounding`` ``"double"`` /
      ``"single"`` (TFLite's int32 MBQM), ``|acc| < 2**47`` for ``"int64"``.
    - ``multipliers``, ``shifts``: 1-D, length 1 (per tensor) or ``acc.shape[axis]`` (per channel);
      ``0 <= M <= 2**31 - 1``; shifts in [-31, 31] (double), [-31, 30] (single), [-31, 7] (int64),
      as produced by :func:`runtime.fixedpoint.quantize_multipliers`.
    - ``axis``: the channel axis (negative counts from the end); may be ``None`` when per tensor.
    - ``rounding``: ``"double"`` | ``"single"`` | ``"int64"``, see
      :func:`runtime.fixedpoint.multiply_by_quantized_multiplier` and ``..._int64``.

    Returns an int32 array of ``acc``'s shape with values in ``[qmin, qmax]``.

    >>> requantize_fixed_point(np.array([-2, 5]), [1 << 30], [-1], None, 0, -128, 127, "single")
    array([0, 1], dtype=int32)
    """
    fn = "requantize_fixed_point"
    if rounding not in ROUNDINGS:
        raise HwsimError(f"{fn}: rounding must be one of {ROUNDINGS}, found {rounding!r}")
    e_lo, e_hi, a_lo, a_hi = _DOMAIN[rounding]
    acc64 = _check_acc(acc, a_lo, a_hi, fn)
    mults = _channel_params("multipliers", multipliers, fn)
    shs = _channel_params("shifts", shifts, fn)
    for name, arr, lo, hi in (("multipliers", mults, 0, INT32_MAX), ("shifts", shs, e_lo, e_hi)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise EncodingError(f"{fn}: {name} must be integers, found dtype {arr.dtype}")
        if int(arr.min()) < lo or int(arr.max()) > hi:
            raise EncodingError(f"{fn}: {name} must lie in [{lo}, {hi}] for rounding={rounding!r}, found "
                                f"values in [{int(arr.min())}, {int(arr.max())}]")
    if mults.shape != shs.shape:
        raise EncodingError(f"{fn}: multipliers and shifts must have the same length, found "
                            f"{mults.size} and {shs.size}")
    zp, lo, hi = check_output_range(zero_point, qmin, qmax, fn)
    acc3, _ = _to_3d(acc64, mults.size, axis, fn)
    out = np.empty(acc3.shape, dtype=np.int32)
    _requantize_fixed_point_kernel(acc3, mults.astype(np.int64), shs.astype(np.int64), np.int64(zp),
                                   np.int64(lo), np.int64(hi), np.int64(_ROUNDING_CODE[rounding]), out)
    return out.reshape(acc64.shape)


def requantize_float32(acc, scales, axis, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """ONNX Runtime CPU requantization: ``out = clamp(rint_half_even(float32(acc) * scale[c]) + zp)``.

    Same arithmetic as MLAS ``MlasRequantizeOutput`` (float32 product, round half to even, integer
    zero-point add, clamp); see :mod:`runtime.fixedpoint` for the source and the experiment.

    - ``acc``: integer array with int32 values (ORT's accumulators are int32).
    - ``scales``: float32, 1-D, length 1 (per tensor) or ``acc.shape[axis]``; finite, >= 0. A float64
      value float32 cannot hold exactly is rejected (ORT folds scales in float32).
    - ``axis``: the channel axis, or ``None`` when per tensor.
    - ``zero_point``, ``qmin <= qmax``: int32 (a full int32 range leaves the result unclamped).

    Returns an int32 array of ``acc``'s shape with values in ``[qmin, qmax]``.

    >>> requantize_float32(np.array([1, 3, 5, -1, -3]), np.float32([0.5]), None, 0, -128, 127)
    array([ 0,  2,  2,  0, -2], dtype=int32)
    """
    out, _ = _requantize_float32(acc, scales, axis, zero_point, qmin, qmax, qmin, qmax, np.int32,
                                 "requantize_float32")
    return out


def requantize_float32_counted(acc, scales, axis, zero_point: int, qmin: int, qmax: int, count_min: int,
                               count_max: int, out_dtype) -> tuple[np.ndarray, int]:
    """:func:`requantize_float32` in one pass that also counts saturation and writes the storage type:
    ``(clamp(v, qmin, qmax) as out_dtype, number of elements with v outside [count_min, count_max])``
    with ``v = rint_half_even(float32(acc) * scale[c]) + zp`` unclamped. For an integer op:
    ``qmin, qmax`` = the fused-activation clamp, ``count_min, count_max`` = the output dtype's range
    (what saturation counts), ``out_dtype`` = the output's numpy storage type holding [qmin, qmax].

    >>> y, n = requantize_float32_counted(np.array([1, 3, 300, -3]), np.float32([0.5]), None, 0, 0, 127,
    ...                                   -128, 127, np.int8)
    >>> y, n
    (array([  0,   2, 127,   0], dtype=int8), 1)
    """
    fn = "requantize_float32_counted"
    out_dtype = np.dtype(out_dtype)
    if not np.issubdtype(out_dtype, np.integer):
        raise HwsimError(f"{fn}: out_dtype must be an integer type, found {out_dtype}")
    info = np.iinfo(out_dtype)
    if int(qmin) < info.min or int(qmax) > info.max:
        raise EncodingError(f"{fn}: the clamp [{qmin}, {qmax}] does not fit out_dtype {out_dtype} "
                            f"[{info.min}, {info.max}]")
    return _requantize_float32(acc, scales, axis, zero_point, qmin, qmax, count_min, count_max, out_dtype, fn)


def _requantize_float32(acc, scales, axis, zero_point, qmin, qmax, count_min, count_max, out_dtype, fn):
    acc64 = _check_acc(acc, INT32_MIN, INT32_MAX, fn, check_range=False)  # the kernel reports the range
    sc = _channel_params("scales", scales, fn)
    sc = check_float32_scales(sc, fn)
    zp, lo, hi = check_output_range(zero_point, qmin, qmax, fn)
    c_lo, c_hi = int(count_min), int(count_max)
    acc3, _ = _to_3d(acc64, sc.size, axis, fn)
    out = np.empty(acc3.shape, dtype=out_dtype)
    n_out = 0
    if acc3.size:
        with np.errstate(over="ignore", invalid="ignore"):  # NUMBA_DISABLE_JIT=1 only: inf products are clamped
            amin, amax, n_out = _requantize_float32_kernel(acc3, sc, np.int64(zp), np.int64(lo), np.int64(hi),
                                                           np.int64(c_lo), np.int64(c_hi), out)
        _check_range(int(amin), int(amax), INT32_MIN, INT32_MAX, fn)
    return out.reshape(acc64.shape), int(n_out)


# ---------------------------------------------------------------------------------------------
# one pass from the raw accumulator to the stored output (what an integer MAC op runs)
# ---------------------------------------------------------------------------------------------
@jit
def _row_float32(src, dst, scales, zf, lo, hi, c_lo, c_hi, a_lo, a_hi, wrap, mask):
    """One row of :func:`requantize_accumulator` (float32 form), scale scales[i] (one per element) or
    scales[0] (length 1); returns (min, max of the policy-applied sums, saturated, overflowed).
    The policy is a select between the wrapped and the saturated value (both leave in-range values
    unchanged), so that the loop has no branch and vectorizes."""
    mn = np.int64(np.iinfo(np.int64).max)
    mx = np.int64(np.iinfo(np.int64).min)
    n_sat = 0
    n_over = 0
    if scales.shape[0] == 1:
        s = scales[0]
        for i in range(src.shape[0]):
            raw = src[i]
            n_over += (raw < a_lo) | (raw > a_hi)
            v = (((raw - a_lo) & mask) + a_lo) if wrap else min(max(raw, a_lo), a_hi)
            mn = min(mn, v)
            mx = max(mx, v)
            y = np.float64(np.rint(np.float32(np.int32(v)) * s)) + zf
            n_sat += (y < c_lo) | (y > c_hi)
            dst[i] = min(max(y, lo), hi)
    else:
        for i in range(src.shape[0]):
            raw = src[i]
            n_over += (raw < a_lo) | (raw > a_hi)
            v = (((raw - a_lo) & mask) + a_lo) if wrap else min(max(raw, a_lo), a_hi)
            mn = min(mn, v)
            mx = max(mx, v)
            y = np.float64(np.rint(np.float32(np.int32(v)) * scales[i])) + zf
            n_sat += (y < c_lo) | (y > c_hi)
            dst[i] = min(max(y, lo), hi)
    return mn, mx, n_sat, n_over


@jit
def _row_fixed_point(src, dst, mults, shifts, zp, lo, hi, c_lo, c_hi, a_lo, a_hi, wrap, mask, mode):
    """One row of :func:`requantize_accumulator` (fixed-point form, MBQM of ``mode`` 0 double,
    1 single, 2 int64), parameters per element or of length 1; returns as :func:`_row_float32`."""
    mn = np.int64(np.iinfo(np.int64).max)
    mx = np.int64(np.iinfo(np.int64).min)
    n_sat = 0
    n_over = 0
    per_element = mults.shape[0] > 1
    for i in range(src.shape[0]):
        raw = src[i]
        n_over += (raw < a_lo) | (raw > a_hi)
        v = (((raw - a_lo) & mask) + a_lo) if wrap else min(max(raw, a_lo), a_hi)
        mn = min(mn, v)
        mx = max(mx, v)
        k = i if per_element else 0
        if mode == 2:
            y = mbqm_int64_scalar(v, mults[k], shifts[k])
        else:
            y = mbqm_scalar(v, mults[k], shifts[k], mode == 1)
        y += zp
        n_sat += (y < c_lo) | (y > c_hi)
        dst[i] = min(max(y, lo), hi)
    return mn, mx, n_sat, n_over


@jit(parallel=True)
def _requant_acc_float32(acc, scales, zero_point, qmin, qmax, cmin, cmax, a_lo, a_hi, wrap, out):
    """acc (outer, channels, inner) int64 -> out (same shape, the output's storage type), float32
    form (zero point, clamp and count bounds as float64; +-inf: no count). Rows: (outer, channel)
    runs of ``inner`` elements with one scale, or, channels last (inner == 1, one scale per
    channel), whole ``outer`` rows. Returns (min, max of the policy-applied sums, saturated,
    overflowed)."""
    n_outer, n_ch, n_inner = acc.shape
    mask = a_hi - a_lo if wrap else np.int64(0)  # 2^bits - 1 (the wrapper wraps only below 64 bits)
    channels_last = n_inner == 1 and scales.shape[0] > 1
    n_rows = n_outer if channels_last else n_outer * n_ch
    stats = np.empty((n_rows, 4), np.int64)
    for r in prange(n_rows):
        if channels_last:
            res = _row_float32(acc[r, :, 0], out[r, :, 0], scales, zero_point, qmin, qmax, cmin, cmax, a_lo, a_hi,
                               wrap, mask)
        else:
            c = r % n_ch
            k = c if scales.shape[0] > 1 else 0
            res = _row_float32(acc[r // n_ch, c], out[r // n_ch, c], scales[k:k + 1], zero_point, qmin, qmax, cmin,
                               cmax, a_lo, a_hi, wrap, mask)
        stats[r, 0], stats[r, 1], stats[r, 2], stats[r, 3] = res
    return stats[:, 0].min(), stats[:, 1].max(), stats[:, 2].sum(), stats[:, 3].sum()


@jit(parallel=True)
def _requant_acc_fixed_point(acc, mults, shifts, mode, zero_point, qmin, qmax, cmin, cmax, a_lo, a_hi, wrap, out):
    """:func:`_requant_acc_float32` for the fixed-point form."""
    n_outer, n_ch, n_inner = acc.shape
    mask = a_hi - a_lo if wrap else np.int64(0)
    channels_last = n_inner == 1 and mults.shape[0] > 1
    n_rows = n_outer if channels_last else n_outer * n_ch
    stats = np.empty((n_rows, 4), np.int64)
    for r in prange(n_rows):
        if channels_last:
            res = _row_fixed_point(acc[r, :, 0], out[r, :, 0], mults, shifts, zero_point, qmin, qmax, cmin, cmax,
                                   a_lo, a_hi, wrap, mask, mode)
        else:
            c = r % n_ch
            k = c if mults.shape[0] > 1 else 0
            res = _row_fixed_point(acc[r // n_ch, c], out[r // n_ch, c], mults[k:k + 1], shifts[k:k + 1],
                                   zero_point, qmin, qmax, cmin, cmax, a_lo, a_hi, wrap, mask, mode)
        stats[r, 0], stats[r, 1], stats[r, 2], stats[r, 3] = res
    return stats[:, 0].min(), stats[:, 1].max(), stats[:, 2].sum(), stats[:, 3].sum()


def requantize_accumulator(acc, form: str, rounding: str, params, axis, zero_point: int, qmin: int, qmax: int,
                           count_min: int, count_max: int, out_dtype, acc_bits: int = 64,
                           acc_policy: str = "saturate") -> tuple[np.ndarray, int, int]:
    """The whole epilogue of an integer MAC op in one pass over the exact sums ``acc``:

    1. the accumulator policy: ``v = wrap(acc)`` or ``sat(acc)`` into ``acc_bits`` signed bits
       (``acc_policy`` ``"wrap"``, ``"saturate"``, or ``"error"``: raise
       :class:`~runtime.errors.OverflowPolicyError` naming the first sum outside the width);
    2. the requantization of ``form`` ``"float32"`` (``params`` = float32 scales, as
       :func:`requantize_float32`) or ``"fixed_point"`` (``params`` = (multipliers, shifts),
       ``rounding`` as :func:`requantize_fixed_point`) to the unclamped ``y = requant(v) + zero_point``;
    3. ``out = clamp(y, qmin, qmax)`` stored as ``out_dtype`` ([qmin, qmax] is the fused activation
       clamp and must fit the type).

    Returns ``(out, saturated, overflowed)``: saturated = elements with ``y`` outside
    ``[count_min, count_max]``, overflowed = elements of ``acc`` outside the accumulator width.
    Equal to :func:`runtime.kernels.mac.apply_accumulator` followed by the wide requantization, the
    count and the clamp (tests/runtime/test_speed_paths.py), without their int64 temporaries.

    >>> y, sat, over = requantize_accumulator(np.array([[1, 3, 300, -3, 2**31]]), "float32", "double",
    ...                                       np.float32([0.5]), None, 0, 0, 127, -128, 127, np.int8, 32, "wrap")
    >>> y, sat, over  # 2**31 wraps to -2**31; 150 and -2**30 lie beyond int8 (the clamp is a Relu's)
    (array([[  0,   2, 127,   0,   0]], dtype=int8), 2, 1)
    """
    from ..errors import OverflowPolicyError

    fn = "requantize_accumulator"
    out_dtype = np.dtype(out_dtype)
    if form not in ("float32", "fixed_point"):
        raise HwsimError(f"{fn}: form must be 'float32' or 'fixed_point', found {form!r}")
    if acc_policy not in ("wrap", "saturate", "error"):
        raise HwsimError(f"{fn}: acc_policy must be 'wrap', 'saturate' or 'error', found {acc_policy!r}")
    if not 2 <= int(acc_bits) <= 64:
        raise HwsimError(f"{fn}: acc_bits must lie in [2, 64], found {acc_bits}")
    if not np.issubdtype(out_dtype, np.integer):
        raise HwsimError(f"{fn}: out_dtype must be an integer type, found {out_dtype}")
    info = np.iinfo(out_dtype)
    zp, lo, hi = check_output_range(zero_point, qmin, qmax, fn)
    if lo < info.min or hi > info.max:
        raise EncodingError(f"{fn}: the clamp [{qmin}, {qmax}] does not fit out_dtype {out_dtype} "
                            f"[{info.min}, {info.max}]")
    acc64 = np.asarray(acc)
    if acc64.dtype not in (np.int32, np.int64):  # int32 accumulators are read as they are
        acc64 = _check_acc(acc64, -(1 << 63), (1 << 63) - 1, fn, check_range=False)
    acc64 = np.ascontiguousarray(acc64)
    if form == "float32":
        sc = check_float32_scales(_channel_params("scales", params, fn), fn)
        n_params, dom = sc.size, (INT32_MIN, INT32_MAX)
        mode = 0
    else:
        if rounding not in ROUNDINGS:
            raise HwsimError(f"{fn}: rounding must be one of {ROUNDINGS}, found {rounding!r}")
        e_lo, e_hi, a_lo, a_hi = _DOMAIN[rounding]
        mults = _channel_params("multipliers", params[0], fn)
        shs = _channel_params("shifts", params[1], fn)
        for name, arr, p_lo, p_hi in (("multipliers", mults, 0, INT32_MAX), ("shifts", shs, e_lo, e_hi)):
            if not np.issubdtype(arr.dtype, np.integer) or int(arr.min()) < p_lo or int(arr.max()) > p_hi:
                raise EncodingError(f"{fn}: {name} must be integers in [{p_lo}, {p_hi}] for rounding={rounding!r}, "
                                    f"found {arr.dtype} values in [{arr.min()}, {arr.max()}]")
        if mults.shape != shs.shape:
            raise EncodingError(f"{fn}: multipliers and shifts must have the same length, found "
                                f"{mults.size} and {shs.size}")
        mults, shs = mults.astype(np.int64), shs.astype(np.int64)
        n_params, dom = mults.size, (a_lo, a_hi)
        mode = _ROUNDING_CODE[rounding]
    acc3, _ = _to_3d(acc64, n_params, axis, fn)
    if n_params == 1:  # one parameter: one flat run (rows of a channel axis would be needlessly short)
        acc3 = acc3.reshape(1, 1, acc3.size)
    out = np.empty(acc3.shape, dtype=out_dtype)
    if not acc3.size:
        return out.reshape(acc64.shape), 0, 0
    bits = int(acc_bits)
    w_lo, w_hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    # the definition counts after clamping to int32: a bound at or beyond int32 counts nothing on its side
    c_lo = int(count_min) if int(count_min) > INT32_MIN else None
    c_hi = int(count_max) if int(count_max) < INT32_MAX else None
    with np.errstate(over="ignore", invalid="ignore"):  # NUMBA_DISABLE_JIT=1 only: inf products are clamped
        wrap = acc_policy == "wrap" and bits < 64
        if form == "float32":
            vmin, vmax, n_sat, n_over = _requant_acc_float32(
                acc3, sc, np.float64(zp), np.float64(lo), np.float64(hi),
                np.float64(-np.inf if c_lo is None else c_lo), np.float64(np.inf if c_hi is None else c_hi),
                np.int64(w_lo), np.int64(w_hi), wrap, out)
        else:  # MBQM results are int32, plus the zero point
            vmin, vmax, n_sat, n_over = _requant_acc_fixed_point(
                acc3, mults, shs, np.int64(mode), np.int64(zp), np.int64(lo), np.int64(hi),
                np.int64(-(1 << 62) if c_lo is None else c_lo), np.int64(1 << 62 if c_hi is None else c_hi),
                np.int64(w_lo), np.int64(w_hi), wrap, out)
    if n_over and acc_policy == "error":
        over = (acc64 < w_lo) | (acc64 > w_hi)
        idx = tuple(int(i) for i in np.argwhere(over)[0])
        raise OverflowPolicyError(f"accumulator overflow at element {idx}: {int(acc64[idx])} is outside the "
                                  f"{bits}-bit range [{w_lo}, {w_hi}] ({int(n_over)} elements overflow)")
    _check_range(int(vmin), int(vmax), dom[0], dom[1], fn)
    return out.reshape(acc64.shape), int(n_sat), int(n_over)
