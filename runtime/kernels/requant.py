"""Requantization kernels: integer accumulator tensor -> output integer tensor (int32, caller casts).

Two families, per-tensor or per-channel along ``axis`` (the kept channel axis):

- :func:`requantize_fixed_point`: TFLite integer rescale, ``clamp(MBQM(acc, M[c], e[c]) + zp, qmin, qmax)``
  with ``rounding`` = ``"double"`` (stock build), ``"single"`` (``TFLITE_SINGLE_ROUNDING``) or
  ``"int64"`` (the 15-bit-multiplier MBQM of the 16x8 kernels' int64 accumulators). The MBQM result
  and the zero point are added in 64 bits, then clamped.
- :func:`requantize_float32`: ONNX Runtime MLAS, ``clamp(rint_even(float32(acc) * scale[c]) + zp)``.

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

from ..errors import EncodingError, HwsimError
from ..fixedpoint import (
    INT32_MAX, INT32_MIN, INT64_ACC_LIMIT, check_float32_scales, check_output_range,
    mbqm_int64_scalar, mbqm_scalar, requant_f32_scalar,
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

__all__ = ["requantize_fixed_point", "requantize_float32", "ROUNDINGS"]


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


@jit
def _requantize_float32_kernel(acc, scales, zero_point, qmin, qmax, out):
    n_outer, n_ch, n_inner = acc.shape
    per_channel = scales.shape[0] > 1
    for c in range(n_ch):
        s = scales[c if per_channel else 0]
        for o in range(n_outer):
            for i in range(n_inner):
                out[o, c, i] = requant_f32_scalar(acc[o, c, i], s, zero_point, qmin, qmax)


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------
def _check_acc(acc, lo: int, hi: int, func: str) -> np.ndarray:
    arr = np.asarray(acc)
    if not np.issubdtype(arr.dtype, np.integer):
        raise HwsimError(f"{func}: acc must be an integer array (int32/int64 accumulators), found dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > hi:
        raise HwsimError(f"{func}: acc must lie in [{lo}, {hi}], found max {int(arr.max())}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size:
        amin, amax = int(arr.min()), int(arr.max())
        if amin < lo or amax > hi:
            raise HwsimError(
                f"{func}: acc must lie in [{lo}, {hi}] for this requantization, found values in [{amin}, {amax}]")
    return arr


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
    fn = "requantize_float32"
    acc64 = _check_acc(acc, INT32_MIN, INT32_MAX, fn)
    sc = _channel_params("scales", scales, fn)
    sc = check_float32_scales(sc, fn)
    zp, lo, hi = check_output_range(zero_point, qmin, qmax, fn)
    acc3, _ = _to_3d(acc64, sc.size, axis, fn)
    out = np.empty(acc3.shape, dtype=np.int32)
    with np.errstate(over="ignore"):  # only matters under NUMBA_DISABLE_JIT=1: inf products are clamped
        _requantize_float32_kernel(acc3, sc, np.int64(zp), np.int64(lo), np.int64(hi), out)
    return out.reshape(acc64.shape)
