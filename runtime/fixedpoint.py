"""Fixed-point rescaling primitives: TFLite/gemmlowp integer recipes and ONNX Runtime's float32 one.

Every primitive exists twice, with identical results:

- a public function on Python ints or numpy integer arrays (vectorized int64 numpy; a scalar input
  gives a Python ``int``, an array input an ``int32`` array), which validates its domain and raises
  :class:`~runtime.errors.EncodingError` / :class:`~runtime.errors.HwsimError` outside it;
- a Numba scalar core (``srdhm_scalar``, ``rdbpot_scalar``, ``mbqm_scalar``,
  ``mbqm_int64_scalar``, ``requant_f32_scalar``) for use inside other ``@jit`` kernels. The cores do
  not validate: callers validate once, in their public wrapper.

C semantics throughout: ``tdiv`` truncates toward zero, ``>>`` is an arithmetic (floor) shift,
``wrap32`` reduces modulo 2^32 into [-2^31, 2^31) (two's complement, what ``static_cast<int32_t>``
and a wrapping ``imul`` do). All intermediates fit in int64 over the documented domains.
Sources: TFLite/TFLM ``tensorflow/lite/kernels/internal/{common.cc,quantization_util.cc}`` and
gemmlowp ``fixedpoint/fixedpoint.h`` as summarized in ``shared/design/TFLITE-INTEGER-ARITHMETIC.md``
sections 1.1-1.3.

ONNX Runtime (CPU EP) requantization, read from the source and confirmed by experiment
--------------------------------------------------------------------------------------
Source (microsoft/onnxruntime): ``onnxruntime/core/mlas/lib/quantize.cpp``,
``MlasRequantizeOutput<OutputType>`` (called by ``MLAS_QGEMM_REQUANT_OUTPUT_PROCESSOR::Process``,
declared in ``core/mlas/inc/mlas.h``; used e.g. by ``QLinearMatMul::Compute`` in
``core/providers/cpu/quantization/quantize_linear_matmul.cc``). Per int32 accumulator, on the
SSE2/AVX x86-64 path:

1. the optional int32 bias is added in int32 (``_mm_add_epi32``, wrapping);
2. ``f = float32(acc)`` (``_mm_cvtepi32_ps``, round to nearest even);
3. ``f = f * scale`` in float32 (``_mm_mul_ps``), per-tensor or per-column ``scale``;
4. **float clamp before rounding**: ``f = min(max(f, float(lowest - zp)), float(max - zp))`` with the
   output type's limits;
5. ``q = cvtps_epi32(f)``: round half to even (default MXCSR);
6. **the zero point is added as an integer after rounding** (``_mm_add_epi32``), then packed with
   saturation to the 8-bit type.

The NEON path skips step 4 and saturates in the integer packs instead; the portable C++ fallback
rounds with the "magic bias" float trick (also half to even). All give the same 8-bit results. The
folded scale is computed by the operator in float32, left to right: QLinearMatMul uses
``a_scale * b_scale[i] / y_scale``. Some ORT versions' ``mlas.h`` also define an
``MLAS_REQUANT_PARAM`` with a fixed-point ``MlasRoundHalfUp`` mode (multiplier, pre/post shift);
the 1.31.1 wheel's strings show no session option selecting fixed-point requantization, and the
experiment below matches the float32 form.

Experiment (tests/runtime/test_requant.py, ``-m ort``): QLinearMatMul u8 x u8, s8 x s8 and u8 x s8
with K = 1, folded scales 0.5 / 0.25 (per tensor and per column) and odd output zero points, plus
u8 x u8 with K = 16 and arbitrary scales; onnxruntime 1.31.1 CPU EP on an AVX2 x86-64 machine: ORT equals ``rint_half_even(float32(acc) * scale) + zp`` (clamped) on every element,
and differs from both alternatives tried (zero point added in float before rounding; ties away
from zero). :func:`requantize_float32` implements exactly that order (it clamps after rounding, in exact
integer comparisons, which equals step 4 for integer bounds and also allows int32-wide bounds).
"""
from __future__ import annotations

import math

import numpy as np

from .errors import EncodingError, HwsimError
from .numba_config import jit

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
INT64_ACC_LIMIT = 1 << 47  # |x| < 2^47 for the int64-accumulator MBQM
_ROUNDINGS = ("double", "single")

__all__ = [
    "quantize_multiplier", "quantize_multipliers",
    "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot",
    "multiply_by_quantized_multiplier", "multiply_by_quantized_multiplier_int64",
    "requantize_float32",
    "srdhm_scalar", "rdbpot_scalar", "mbqm_scalar", "mbqm_int64_scalar", "requant_f32_scalar",
    "wrap32_scalar",
]


# ---------------------------------------------------------------------------------------------
# QuantizeMultiplier (plan-time, float -> (M, e))
# ---------------------------------------------------------------------------------------------
def quantize_multiplier(real_multiplier: float, single_rounding_clamp: bool = False) -> tuple[int, int]:
    """TFLite ``QuantizeMultiplier``: ``real ~= multiplier * 2**(shift - 31)``.

    Formula (binary64): ``(q, e) = frexp(real)`` with q in [0.5, 1); ``M = round_half_away(q * 2**31)``;
    if ``M == 2**31``: ``M //= 2, e += 1``; if ``e < -31``: ``(M, e) = (0, 0)`` (tiny multipliers are
    flushed). With ``single_rounding_clamp=True`` (the ``TFLITE_SINGLE_ROUNDING`` build) a shift above
    30 is clamped to ``(2**31 - 1, 30)``. ``0.0 -> (0, 0)``.

    Domain: finite, non-negative ``real_multiplier`` (negative, NaN or infinite values raise
    :class:`EncodingError`). Result: ``M`` in ``{0} U [2**30, 2**31 - 1]``; ``shift`` > 0 means a left
    shift. Relative error of the reconstruction ``M * 2**(shift-31)`` is at most ``2**-31``.

    >>> quantize_multiplier(1.0), quantize_multiplier(0.5), quantize_multiplier(2.0 ** -15)
    ((1073741824, 1), (1073741824, 0), (1073741824, -14))
    >>> quantize_multiplier(0.75)  # q*2^31 = 1610612736 exactly
    (1610612736, 0)
    >>> quantize_multiplier(2.0 ** 40, single_rounding_clamp=True)
    (2147483647, 30)
    """
    d = float(real_multiplier)
    if not math.isfinite(d) or d < 0.0:
        raise EncodingError(
            f"quantize_multiplier: expected a finite real multiplier >= 0, found {real_multiplier!r}")
    if d == 0.0:
        return 0, 0
    q, e = math.frexp(d)
    # q * 2^31 is exact in binary64 and >= 2^30, so adding 0.5 is exact: floor(v + 0.5) rounds half away.
    m = int(math.floor(q * 2147483648.0 + 0.5))
    if m == 1 << 31:
        m //= 2
        e += 1
    if e < -31:
        return 0, 0
    if single_rounding_clamp and e > 30:
        return INT32_MAX, 30
    return m, e


def quantize_multipliers(reals, single_rounding_clamp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Vectorized :func:`quantize_multiplier` (per-channel multipliers); same formula and domain.

    ``reals`` is converted to float64 (exact for float32 input). Returns ``(multipliers, shifts)``, two
    int32 arrays of ``reals``' shape. Shifts above 2**31 - 1 cannot occur (binary64 exponents are
    below 1025).

    >>> m, e = quantize_multipliers(np.array([1.0, 0.5, 2.0 ** -15, 0.0]))
    >>> m.tolist(), e.tolist()
    ([1073741824, 1073741824, 1073741824, 0], [1, 0, -14, 0])
    """
    d = np.asarray(reals, dtype=np.float64)
    bad = ~np.isfinite(d) | (d < 0.0)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise EncodingError(
            f"quantize_multipliers: expected finite real multipliers >= 0, found {d[idx]!r} at index {idx}")
    q, e = np.frexp(d)
    e = e.astype(np.int64)
    m = np.floor(q * 2147483648.0 + 0.5).astype(np.int64)
    carry = m == (1 << 31)
    m = np.where(carry, m // 2, m)
    e = np.where(carry, e + 1, e)
    flush = (e < -31) | (d == 0.0)
    m = np.where(flush, 0, m)
    e = np.where(flush, 0, e)
    if single_rounding_clamp:
        clamp = e > 30
        m = np.where(clamp, INT32_MAX, m)
        e = np.where(clamp, 30, e)
    return m.astype(np.int32), e.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Numba scalar cores (no validation; int64 arithmetic on int32-valued inputs)
# ---------------------------------------------------------------------------------------------
@jit
def wrap32_scalar(x):
    """Reduce an int64 modulo 2**32 into [-2**31, 2**31) (two's-complement int32 wrap)."""
    x = np.int64(x)
    return ((x + 2147483648) & 4294967295) - 2147483648


@jit
def srdhm_scalar(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values (see the public function)."""
    a = np.int64(a)
    b = np.int64(b)
    if a == -2147483648 and b == -2147483648:
        return np.int64(2147483647)
    p = a * b
    s = p + (1073741824 if p >= 0 else -1073741823)
    # C truncating division by 2^31
    return s >> 31 if s >= 0 else -((-s) >> 31)


@jit
def rdbpot_scalar(x, exponent):
    """gemmlowp RoundingDivideByPOT on an int32 value, 0 <= exponent <= 31 (see the public function)."""
    x = np.int64(x)
    e = np.int64(exponent)
    mask = (np.int64(1) << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > thr else 0)


@jit
def mbqm_scalar(x, m, e, single):
    """TFLite MultiplyByQuantizedMultiplier for int32 ``x``; ``single`` selects the rounding build."""
    x = np.int64(x)
    m = np.int64(m)
    e = np.int64(e)
    if single:
        t = 31 - e
        return wrap32_scalar((x * m + (np.int64(1) << (t - 1))) >> t)
    if e > 0:
        return srdhm_scalar(wrap32_scalar(x << e), m)
    return rdbpot_scalar(srdhm_scalar(x, m), -e)


@jit
def mbqm_int64_scalar(x, m, e):
    """TFLite MultiplyByQuantizedMultiplier for int64 ``x`` (15-bit multiplier; see the public function)."""
    x = np.int64(x)
    m = np.int64(m)
    e = np.int64(e)
    m16 = (m + 32768) >> 16 if m < 0x7FFF0000 else np.int64(0x7FFF)
    t = 15 - e
    return wrap32_scalar((x * m16 + (np.int64(1) << (t - 1))) >> t)


@jit
def requant_f32_scalar(acc, scale, zero_point, qmin, qmax):
    """ONNX Runtime MLAS requantization of one int32 accumulator (see :func:`requantize_float32`).

    ``scale`` must be a float32; ``acc``, ``zero_point``, ``qmin``, ``qmax`` integers. Rounds first,
    then clamps exactly in float64/int64 (equal to MLAS's float clamp before rounding, see above).
    """
    r = np.rint(np.float32(acc) * np.float32(scale))
    lo = np.int64(qmin) - np.int64(zero_point)
    hi = np.int64(qmax) - np.int64(zero_point)
    if np.float64(r) <= np.float64(lo):
        return np.int64(qmin)
    if np.float64(r) >= np.float64(hi):
        return np.int64(qmax)
    return np.int64(r) + zero_point


# ---------------------------------------------------------------------------------------------
# Public elementwise functions (vectorized int64 numpy, validated)
# ---------------------------------------------------------------------------------------------
def _as_int64(name: str, value, lo: int, hi: int, func: str) -> np.ndarray:
    """``value`` as an int64 array after checking it is integer-typed and within [lo, hi]."""
    arr = np.asarray(value)
    if arr.dtype == object:  # Python ints too large for int64 (floats are never truncated silently)
        vals = arr.ravel().tolist()
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            raise HwsimError(f"{func}: {name} must be an integer or integer array, found {value!r}")
        bad = [v for v in vals if not lo <= int(v) <= hi]
        raise HwsimError(f"{func}: {name} must lie in [{lo}, {hi}], found {bad[0] if bad else vals}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise HwsimError(f"{func}: {name} must be an integer or integer array, found dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > hi:
        raise HwsimError(f"{func}: {name} must lie in [{lo}, {hi}], found {int(arr.max())}")
    arr = arr.astype(np.int64)
    if arr.size:
        amin, amax = int(arr.min()), int(arr.max())
        if amin < lo or amax > hi:
            raise HwsimError(f"{func}: {name} must lie in [{lo}, {hi}], found values in [{amin}, {amax}]")
    return arr


def _result(out: np.ndarray, *inputs) -> int | np.ndarray:
    if all(np.ndim(v) == 0 for v in inputs):
        return int(out)
    return out.astype(np.int32)


def _wrap32(x: np.ndarray) -> np.ndarray:
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _tdiv_pow2(s: np.ndarray, k: int) -> np.ndarray:
    return np.where(s >= 0, s >> k, -((-s) >> k))


def _srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    p = a * b
    s = p + np.where(p >= 0, 1 << 30, 1 - (1 << 30))
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, _tdiv_pow2(s, 31))


def _rdbpot(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    mask = (np.int64(1) << e) - 1
    thr = (mask >> 1) + (x < 0)
    return (x >> e) + ((x & mask) > thr)


def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` (SRDHM) on int32.

    Formula: if ``a == b == INT32_MIN`` return ``INT32_MAX`` (the only overflow, saturated); else
    ``p = a*b`` (64-bit), ``nudge = 2**30 if p >= 0 else 1 - 2**30``, return ``tdiv(p + nudge, 2**31)``.
    That is ``round(a*b / 2**31)`` with **ties toward +inf**. Domain: int32 ``a``, ``b`` (scalars or
    broadcastable arrays). Result: int32, never wraps.

    >>> saturating_rounding_doubling_high_mul(1, 1 << 30), saturating_rounding_doubling_high_mul(-1, 1 << 30)
    (1, 0)
    >>> saturating_rounding_doubling_high_mul(-(2**31), -(2**31))
    2147483647
    """
    fn = "saturating_rounding_doubling_high_mul"
    a64 = _as_int64("a", a, INT32_MIN, INT32_MAX, fn)
    b64 = _as_int64("b", b, INT32_MIN, INT32_MAX, fn)
    return _result(_srdhm(a64, b64), a, b)


def rounding_divide_by_pot(x, exponent):
    """gemmlowp ``RoundingDivideByPOT`` (RDBPOT): ``round(x / 2**exponent)``, **ties away from zero**.

    Formula: ``mask = 2**e - 1; rem = x & mask; thr = (mask >> 1) + (1 if x < 0 else 0);
    return (x >> e) + (1 if rem > thr else 0)``. Domain: int32 ``x``, ``0 <= exponent <= 31``.
    Result: int32, never overflows.

    >>> rounding_divide_by_pot(3, 1), rounding_divide_by_pot(-3, 1), rounding_divide_by_pot(-1, 1)
    (2, -2, -1)
    """
    fn = "rounding_divide_by_pot"
    x64 = _as_int64("x", x, INT32_MIN, INT32_MAX, fn)
    e64 = _as_int64("exponent", exponent, 0, 31, fn)
    return _result(_rdbpot(x64, e64), x, exponent)


def _check_rounding(rounding: str, func: str) -> None:
    if rounding not in _ROUNDINGS:
        raise HwsimError(f"{func}: rounding must be one of {_ROUNDINGS}, found {rounding!r}")


def multiply_by_quantized_multiplier(x, multiplier, shift, rounding: str = "double"):
    """TFLite ``MultiplyByQuantizedMultiplier`` (MBQM) for int32 ``x``: ``~ x * M * 2**(e - 31)``.

    - ``rounding="double"`` (stock TFLite/TFLM build): ``e > 0``: ``SRDHM(wrap32(x * 2**e), M)``;
      ``e <= 0``: ``RDBPOT(SRDHM(x, M), -e)``. Two roundings: ties toward +inf, then away from zero.
      The left shift happens in int32 *before* the multiply and wraps if ``x * 2**e`` leaves int32
      (outside TFLite's contract, reproduced as the wrapping machine does). Domain: ``-31 <= e <= 31``.
    - ``rounding="single"`` (``TFLITE_SINGLE_ROUNDING``): ``t = 31 - e``;
      ``(x*M + 2**(t-1)) >> t`` in 64 bits, ties toward +inf; the result is wrapped to int32 like
      ``static_cast<int32_t>`` if it does not fit (outside the contract). Domain: ``-31 <= e <= 30``.

    Domain common to both: int32 ``x``, ``0 <= M <= 2**31 - 1``. Result: int32.

    >>> multiply_by_quantized_multiplier(-2, 1 << 30, -1)  # exact -0.5: double rounds away
    -1
    >>> multiply_by_quantized_multiplier(-2, 1 << 30, -1, rounding="single")  # ties toward +inf
    0
    >>> multiply_by_quantized_multiplier(5, 1 << 30, -1), multiply_by_quantized_multiplier(5, 1 << 30, -1, "single")
    (2, 1)
    """
    fn = "multiply_by_quantized_multiplier"
    _check_rounding(rounding, fn)
    x64 = _as_int64("x", x, INT32_MIN, INT32_MAX, fn)
    m64 = _as_int64("multiplier", multiplier, 0, INT32_MAX, fn)
    e64 = _as_int64("shift", shift, -31, 31 if rounding == "double" else 30, fn)
    if rounding == "single":
        t = 31 - e64
        out = _wrap32((x64 * m64 + (np.int64(1) << (t - 1))) >> t)
    else:
        left = np.maximum(e64, 0)
        right = np.maximum(-e64, 0)
        out = _rdbpot(_srdhm(_wrap32(x64 << left), m64), right)
    return _result(out, x, multiplier, shift)


def multiply_by_quantized_multiplier_int64(x, multiplier, shift):
    """TFLite ``MultiplyByQuantizedMultiplier(int64_t x, ...)`` used by the 16x8 kernels.

    Formula (identical in both rounding builds): only a 15-bit multiplier survives,
    ``M16 = (M + 2**15) >> 16 if M < 0x7FFF0000 else 0x7FFF``; ``t = 15 - e``;
    ``(x*M16 + 2**(t-1)) >> t`` in 64 bits (single rounding, ties toward +inf). Domain:
    ``|x| < 2**47``, ``0 <= M <= 2**31 - 1``, ``-31 <= e < 8``. The result is wrapped to int32 like
    ``static_cast<int32_t>`` if it does not fit (outside TFLite's contract). Result: int32.

    >>> multiply_by_quantized_multiplier_int64(3, 1 << 30, 0), multiply_by_quantized_multiplier_int64(-3, 1 << 30, 0)
    (2, -1)
    """
    fn = "multiply_by_quantized_multiplier_int64"
    x64 = _as_int64("x", x, -INT64_ACC_LIMIT + 1, INT64_ACC_LIMIT - 1, fn)
    m64 = _as_int64("multiplier", multiplier, 0, INT32_MAX, fn)
    e64 = _as_int64("shift", shift, -31, 7, fn)
    m16 = np.where(m64 < 0x7FFF0000, (m64 + (1 << 15)) >> 16, 0x7FFF)
    t = 15 - e64
    out = _wrap32((x64 * m16 + (np.int64(1) << (t - 1))) >> t)
    return _result(out, x, multiplier, shift)


def check_float32_scales(scales, func: str) -> np.ndarray:
    """Scales as a float32 array: finite, >= 0, and exactly float32 (a float64 value that float32 cannot
    hold is rejected rather than silently rounded: ONNX Runtime forms folded scales in float32)."""
    arr = np.asarray(scales)
    if not np.issubdtype(arr.dtype, np.floating):
        raise EncodingError(f"{func}: scales must be float32, found dtype {arr.dtype}")
    f32 = arr.astype(np.float32)
    if arr.dtype != np.float32:
        inexact = f32.astype(arr.dtype) != arr
        if np.any(inexact & np.isfinite(arr)):
            v = arr[inexact][0]
            raise EncodingError(
                f"{func}: scale {v!r} is not exactly representable in float32; compute the folded scale in "
                f"float32 as ONNX Runtime does (e.g. np.float32(s_a) * np.float32(s_b) / np.float32(s_y))")
    if not np.all(np.isfinite(f32)) or np.any(f32 < 0):
        bad = f32[~np.isfinite(f32) | (f32 < 0)][0]
        raise EncodingError(f"{func}: scales must be finite and >= 0, found {bad!r}")
    return f32


def check_output_range(zero_point, qmin, qmax, func: str) -> tuple[int, int, int]:
    """Validate an output zero point and clamp range: int32 integers with ``qmin <= qmax``."""
    vals = {}
    for name, v in (("zero_point", zero_point), ("qmin", qmin), ("qmax", qmax)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise EncodingError(f"{func}: {name} must be an integer, found {v!r}")
        if not INT32_MIN <= int(v) <= INT32_MAX:
            raise EncodingError(f"{func}: {name} must fit int32, found {int(v)}")
        vals[name] = int(v)
    zp, lo, hi = vals["zero_point"], vals["qmin"], vals["qmax"]
    if lo > hi:
        raise EncodingError(f"{func}: expected qmin <= qmax, found qmin={lo} > qmax={hi}")
    return zp, lo, hi


def requantize_float32(acc, scale, zero_point: int, qmin: int, qmax: int):
    """ONNX Runtime CPU requantization (MLAS ``MlasRequantizeOutput``), elementwise.

    Formula: ``f = float32(acc) * scale`` (one float32 rounding); ``q = round_half_to_even(f) + zp``
    (the zero point is added as an integer *after* rounding); ``clamp(q, qmin, qmax)``. MLAS clamps
    ``f`` to ``[qmin - zp, qmax - zp]`` in float before rounding; with integer bounds that equals
    clamping after rounding (rounding is monotone and fixes integers), which is what is done here, in
    exact float64/int64 comparisons, so any int32 range (e.g. an unclamped int32 "wide" output) works.

    Domain: int32 ``acc`` (ORT's accumulators are int32); ``scale`` float32 (scalar or broadcastable),
    finite and >= 0 (see :func:`check_float32_scales`); int32 ``zero_point``, ``qmin <= qmax``.
    Never overflows: an infinite product saturates to ``qmin``/``qmax``.

    >>> requantize_float32(np.array([5, 7, -5, 1000]), np.float32(0.5), 3, -128, 127)  # 2.5, 3.5, -2.5 ties
    array([  5,   7,   1, 127], dtype=int32)
    """
    fn = "requantize_float32"
    a64 = _as_int64("acc", acc, INT32_MIN, INT32_MAX, fn)
    s32 = check_float32_scales(scale, fn)
    zp, lo, hi = check_output_range(zero_point, qmin, qmax, fn)
    with np.errstate(over="ignore"):  # an infinite product saturates like a finite one
        r = np.rint(a64.astype(np.float32) * s32).astype(np.float64)
    below, above = r <= lo - zp, r >= hi - zp
    inner = np.where(below | above, 0.0, r).astype(np.int64) + zp
    out = np.where(below, lo, np.where(above, hi, inner))
    return _result(out, acc, scale)
