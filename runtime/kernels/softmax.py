"""Integer Softmax kernels: TFLite's fixed-point recipe and ONNX Runtime's QLinearSoftmax.

Both work on rows: a ``(rows, D)`` integer array whose last axis is the softmax axis (the op module
moves the ONNX axis there). Plan-time functions turn scales into integer or float32 parameters once;
the ``@jit`` cores see only arrays and numbers.

TFLite (``shared/design/TFLITE-INTEGER-ARITHMETIC.md`` §3.11, §4; ``reference/softmax.h``), 8-bit in
and out, per row with ``mx = max(x)``:

- Prepare (``PreprocessSoftmaxScaling``, 5 integer bits): ``real = min(beta*s_in*2^26, cap)`` with
  ``cap = 2^31-1`` (double-rounding build) or ``2^30-1`` (single), ``(M, ls) = QuantizeMultiplier(real)``
  (``ls >= 0``), ``diff_min = -floor(31 * 2^26 / 2^ls)``.
- Pass 1: for ``d = x - mx >= diff_min``: ``z = MBQM_gt1(d, M, ls)`` (Q5.26),
  ``e = exp_on_negative_values(z)`` (Q0.31), ``sum += RDBPOT(e, 12)`` (Q12.19, int32 wrap).
- Reciprocal: ``h = clz32(sum)``, ``nbo = 12 - h``, ``r = one_over_one_plus_x((sum << h) - 2^31)``.
- Pass 2: ``y = clamp(RDBPOT(SRDHM(r, e), nbo + 23) + type_min)``; ``d < diff_min`` gives type_min.
  The output encoding is fixed: scale 1/256, zero point = type_min (0 for uint8, -128 for int8).

ONNX Runtime (``contrib_ops/cpu/quantization/qlinear_softmax.cc``, measured in
runtime/ORT_CPU_ARITHMETIC.md "QLinearSoftmax"), any 8-bit encodings:

- table (float32, 256 entries, built once per (s_x, D)): ``bs = max(0, logf(FLT_MAX / D) - 5) / s_x``
  (``logf`` of the float32 quotient, in float32, then double); ``T[k] = float32(exp((k - 255 + bs) * s_x))``
  in double. Entry ``k = 255 + (x - mx)`` serves element x of a row with maximum mx.
- per row: ``S = sum T[k]`` in float32, left to right; ``Y = floor(1/s_y)`` (float32);
  ``f = rint(f32(f32(T[k] * Y) / S))``; uint8: ``min(u32(f) + zp, 255)``; int8:
  ``clamp(wrap32(i32(f) + zp), -128, 127)``, with x86-64 conversions of out-of-range values
  (``u32``: low 32 bits of cvttss2si's int64, inf -> 0; ``i32``: INT32_MIN).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math

import numpy as np

from ..errors import EncodingError, HwsimError
from ..fixedpoint import INT32_MAX, INT32_MIN, quantize_multiplier, rdbpot_scalar, srdhm_scalar, wrap32_scalar
from ..numba_config import jit

SCALED_DIFF_INTEGER_BITS = 5  # TFLite kScaledDiffIntegerBits
ACCUMULATION_INTEGER_BITS = 12  # TFLite kAccumulationIntegerBits
TFLITE_OUTPUT_SCALE = np.float32(1.0 / 256.0)
FLT_MAX = np.float32(np.finfo(np.float32).max)

# gemmlowp constants (raw Q0.31 / Q2.29 values, fixedpoint.h)
_EXP_MINUS_ONE_EIGHTH = 1895147668  # exp(-1/8), F0
_ONE_THIRD = 715827883  # 1/3, F0
_EXP_MULTIPLIERS = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535),
                    (3, 720401), (4, 242))  # (k, exp(-2^k)) F0
_48_OVER_17 = 1515870810  # F2
_NEG_32_OVER_17 = -1010580540  # F2


# ---------------------------------------------------------------------------------------------
# TFLite: plan time
# ---------------------------------------------------------------------------------------------
def tflite_softmax_params(input_scale, beta: float = 1.0, rounding: str = "double") -> tuple[int, int, int]:
    """TFLite ``PreprocessSoftmaxScaling`` + ``CalculateInputRadius`` for 5 integer bits.

    Formula (binary64): ``real = min(beta * s_in * 2^26, cap)``, ``cap = 2^31 - 1`` (``double``
    rounding build) or ``2^30 - 1`` (``single``); ``(M, ls) = QuantizeMultiplier(real)``;
    ``diff_min = -floor(31 * 2^(31-5) / 2^ls)``. Returns ``(M, ls, diff_min)``.
    Domain: ``beta * s_in * 2^26 > 1`` (TFLite asserts a left shift ``ls >= 0``).

    >>> tflite_softmax_params(0.1)  # the float32 scale 0.1 (a double 0.1 would give 1717986918)
    (1717986944, 23, -248)
    """
    if rounding not in ("double", "single"):
        raise HwsimError(f"tflite_softmax_params: rounding must be 'double' or 'single', found {rounding!r}")
    s = float(np.float32(input_scale))
    real = float(beta) * s * float(1 << (31 - SCALED_DIFF_INTEGER_BITS))
    cap = float((1 << 30) - 1) if rounding == "single" else float((1 << 31) - 1)
    real = min(real, cap)
    if not (math.isfinite(real) and real > 1.0):
        raise EncodingError(f"TFLite softmax needs beta * input_scale * 2^26 > 1 (a left shift); found input scale "
                            f"{s!r}, beta {beta!r}")
    m, ls = quantize_multiplier(real, single_rounding_clamp=(rounding == "single"))
    radius = math.floor(((1 << SCALED_DIFF_INTEGER_BITS) - 1) * float(1 << (31 - SCALED_DIFF_INTEGER_BITS))
                        / float(1 << ls))
    return int(m), int(ls), -int(radius)


# ---------------------------------------------------------------------------------------------
# TFLite: gemmlowp fixed-point helpers (Numba scalar cores on int64 holding int32 values)
# ---------------------------------------------------------------------------------------------
@jit
def sat_shift_left_scalar(x, e):
    """gemmlowp SaturatingRoundingMultiplyByPOT<e> for e > 0 on int32: ``x << e``, saturated when
    ``|x| > 2^(31-e) - 1``."""
    thr = (np.int64(1) << (31 - e)) - 1
    if x > thr:
        return np.int64(INT32_MAX)
    if x < -thr:
        return np.int64(INT32_MIN)
    return np.int64(x) << e


@jit
def _rdbpot_any(x, e):
    """RoundingDivideByPOT for 0 <= e <= 31; for e > 31 (outside gemmlowp's domain, reached by TFLite's
    softmax when a row's exp sum exceeds 2^28) the exactly rounded quotient, 0 for |x| < 2^31."""
    if e <= 31:
        return rdbpot_scalar(x, e)
    return np.int64(0)


@jit
def exp_on_interval_scalar(a):
    """gemmlowp exp_on_interval_between_negative_one_quarter_and_0_excl on a raw F0 (int32) value."""
    x = wrap32_scalar(a + (np.int64(1) << 28))  # a + 1/8
    x2 = srdhm_scalar(x, x)
    x3 = srdhm_scalar(x2, x)
    x4 = srdhm_scalar(x2, x2)
    x4_over_4 = rdbpot_scalar(x4, 2)
    t = rdbpot_scalar(wrap32_scalar(srdhm_scalar(wrap32_scalar(x4_over_4 + x3), _ONE_THIRD) + x2), 1)
    return wrap32_scalar(_EXP_MINUS_ONE_EIGHTH + srdhm_scalar(_EXP_MINUS_ONE_EIGHTH, wrap32_scalar(x + t)))


@jit
def exp_on_negative_values_q5_scalar(a):
    """gemmlowp exp_on_negative_values for F<5> (Q5.26) input ``a <= 0``; result raw F0 (Q0.31)."""
    frac_bits = 31 - SCALED_DIFF_INTEGER_BITS
    quarter = np.int64(1) << (frac_bits - 2)
    r = (a & (quarter - 1)) - quarter
    res = exp_on_interval_scalar(sat_shift_left_scalar(r, SCALED_DIFF_INTEGER_BITS))
    rem = r - a
    for k, ck in _EXP_MULTIPLIERS:
        if SCALED_DIFF_INTEGER_BITS > k:
            if rem & (np.int64(1) << (frac_bits + k)):
                res = srdhm_scalar(res, ck)
    if a == 0:
        res = np.int64(INT32_MAX)
    return res


@jit
def one_over_one_plus_x_scalar(a):
    """gemmlowp one_over_one_plus_x_for_x_in_0_1 on a raw F0 value; result raw F0."""
    s = np.int64(a) + np.int64(INT32_MAX)  # RoundingHalfSum(a, One)
    half_den = (s + 1) // 2 if s >= 0 else -((-(s - 1)) // 2)
    one_f2 = np.int64(1) << 29
    x = wrap32_scalar(_48_OVER_17 + srdhm_scalar(half_den, _NEG_32_OVER_17))
    for _ in range(3):
        hdx = srdhm_scalar(half_den, x)
        one_minus = wrap32_scalar(one_f2 - hdx)
        x = wrap32_scalar(x + sat_shift_left_scalar(srdhm_scalar(x, one_minus), 2))
    return sat_shift_left_scalar(x, 1)


@jit
def _clz32(v):
    v = np.int64(v) & 0xFFFFFFFF
    n = 0
    while n < 32 and (v & (np.int64(1) << (31 - n))) == 0:
        n += 1
    return n


@jit
def _scaled_diff(d, m, ls, single):
    """MultiplyByQuantizedMultiplierGreaterThanOne: double build ``SRDHM(d << ls, M)``; single build
    ``(d*M + 2^(30-ls)) >> (31-ls)``."""
    if single:
        t = 31 - ls
        return wrap32_scalar((np.int64(d) * m + (np.int64(1) << (t - 1))) >> t)
    return srdhm_scalar(wrap32_scalar(np.int64(d) << ls), m)


@jit
def _row_max(x, i):
    mx = np.int64(x[i, 0])
    for c in range(1, x.shape[1]):
        v = np.int64(x[i, c])
        if v > mx:
            mx = v
    return mx


@jit
def _softmax_fixed_point_rows(x, m, ls, single, diff_min, out_bits, type_min, type_max, out):
    rows, depth = x.shape
    for i in range(rows):
        mx = _row_max(x, i)
        total = np.int64(0)
        for c in range(depth):
            d = np.int64(x[i, c]) - mx
            if d >= diff_min:
                e = exp_on_negative_values_q5_scalar(_scaled_diff(d, m, ls, single))
                total = wrap32_scalar(total + rdbpot_scalar(e, ACCUMULATION_INTEGER_BITS))
        h = _clz32(total)
        nbo = ACCUMULATION_INTEGER_BITS - h
        shifted = wrap32_scalar(((total & 0xFFFFFFFF) << h) - (np.int64(1) << 31)) if h < 32 \
            else np.int64(INT32_MIN)
        r = one_over_one_plus_x_scalar(shifted)
        for c in range(depth):
            d = np.int64(x[i, c]) - mx
            if d >= diff_min:
                e = exp_on_negative_values_q5_scalar(_scaled_diff(d, m, ls, single))
                v = _rdbpot_any(srdhm_scalar(r, e), nbo + 31 - out_bits) + type_min
                out[i, c] = min(max(v, type_min), type_max)
            else:
                out[i, c] = type_min


def softmax_fixed_point(x, multiplier: int, left_shift: int, diff_min: int, out_dtype, rounding: str = "double"):
    """TFLite's integer softmax over the last axis of an 8-bit integer array (see the module docstring).

    ``multiplier``, ``left_shift``, ``diff_min`` come from :func:`tflite_softmax_params`; ``out_dtype``
    is ``uint8`` (output zero point 0) or ``int8`` (zero point -128), scale 1/256. Exact integer
    arithmetic; never overflows (sums wrap like TFLite's int32 only beyond ~4096 terms near the max).

    Golden vector (facts file §3.11, beta 1, s_in 0.1, int8):

    >>> m, ls, dmin = tflite_softmax_params(np.float32(0.1))
    >>> softmax_fixed_point(np.int8([[100, 110, 117, 120, 127]]), m, ls, dmin, np.int8)
    array([[-120, -106,  -83,  -68,   -7]], dtype=int8)
    """
    x = np.asarray(x)
    out_dtype = np.dtype(out_dtype)
    if x.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise HwsimError(f"softmax_fixed_point: input must be uint8 or int8, found {x.dtype}")
    if out_dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise HwsimError(f"softmax_fixed_point: output must be uint8 or int8, found {out_dtype}")
    if rounding not in ("double", "single"):
        raise HwsimError(f"softmax_fixed_point: rounding must be 'double' or 'single', found {rounding!r}")
    if not (1 << 30) <= int(multiplier) <= INT32_MAX or not 0 <= int(left_shift) <= (30 if rounding == "single" else 31):
        raise HwsimError(f"softmax_fixed_point: expected a multiplier in [2^30, 2^31-1] and a left shift in [0, 31], "
                         f"found ({multiplier}, {left_shift})")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise HwsimError(f"softmax_fixed_point: expected a non-empty last axis, found shape {x.shape}")
    info = np.iinfo(out_dtype)
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    out = np.empty(x2.shape, np.int64)
    _softmax_fixed_point_rows(x2, np.int64(multiplier), np.int64(left_shift), rounding == "single",
                              np.int64(diff_min), 8 * out_dtype.itemsize, np.int64(info.min), np.int64(info.max), out)
    return out.reshape(x.shape).astype(out_dtype)


# ---------------------------------------------------------------------------------------------
# ONNX Runtime QLinearSoftmax
# ---------------------------------------------------------------------------------------------
def _c_logf():
    """The C library's ``logf`` (what ONNX Runtime's table code calls), or None if it cannot be found."""
    name = ctypes.util.find_library("m") or ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).logf
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float]
    return fn


_LOGF = _c_logf()


def logf(v) -> np.float32:
    """float32 natural logarithm as the C library's ``logf`` computes it (falls back to the float32
    rounding of the double logarithm where no C library is reachable; they differ in about 3 of 200000
    arguments of the form FLT_MAX / D)."""
    v = float(np.float32(v))
    if _LOGF is not None:
        return np.float32(_LOGF(v))
    return np.float32(math.log(v))


def ort_softmax_table(x_scale, reduce_len: int) -> np.ndarray:
    """ONNX Runtime's QLinearSoftmax exp table (float32[256]); entry ``255 + (x - max)``.

    ``bs = max(0, double(logf(f32(FLT_MAX / D))) - 5) / s_x``; ``T[k] = f32(exp((k - 255 + bs) * s_x))``
    with ``exp`` the C library's double exp (Python's ``math.exp``). The ``bs`` shift keeps
    ``sum(T) < FLT_MAX`` and cancels in the normalization except through float32 roundings.

    >>> t = ort_softmax_table(np.float32(0.05), 1000)
    >>> t.dtype, t.shape, bool(np.all(np.diff(t) > 0)), abs(float(t[255]) / float(t[254]) - math.exp(0.05)) < 1e-6
    (dtype('float32'), (256,), True, True)
    """
    s = np.float32(x_scale)
    if not (np.isfinite(s) and s > 0):
        raise EncodingError(f"QLinearSoftmax: input scale must be finite and > 0, found {float(s)!r}")
    if int(reduce_len) < 1:
        raise HwsimError(f"QLinearSoftmax: the softmax axis must be non-empty, found length {reduce_len}")
    bs = float(logf(np.float32(FLT_MAX / np.float32(int(reduce_len)))))
    bs = max(0.0, bs - 5.0) / float(s)
    s64 = float(s)
    table = np.empty(256, np.float32)
    for k in range(256):
        table[k] = np.float32(math.exp((float(k) - 255.0 + bs) * s64))
    return table


def ort_output_multiplier(y_scale) -> np.float32:
    """``floor(1.0f / y_scale)`` in float32: QLinearSoftmax's output multiplier (1/256 -> 256)."""
    s = np.float32(y_scale)
    if not (np.isfinite(s) and s > 0):
        raise EncodingError(f"QLinearSoftmax: output scale must be finite and > 0, found {float(s)!r}")
    with np.errstate(over="ignore"):
        return np.float32(np.floor(np.float32(1.0) / s))


@jit
def _softmax_f32_rows(x, table, y_mult, zero_point, signed, out):
    rows, depth = x.shape
    for i in range(rows):
        mx = _row_max(x, i)
        s = np.float32(0.0)
        for c in range(depth):
            s = np.float32(s + table[255 + np.int64(x[i, c]) - mx])
        for c in range(depth):
            t = table[255 + np.int64(x[i, c]) - mx]
            f = np.float32(np.rint(np.float32(np.float32(t * y_mult) / s)))
            if signed:
                if np.isfinite(f) and -2147483648.0 <= f < 2147483648.0:
                    q = np.int64(f)
                else:
                    q = np.int64(INT32_MIN)
                v = wrap32_scalar(q + zero_point)
                out[i, c] = min(max(v, -128), 127)
            else:
                if np.isfinite(f) and -9.223372036854775808e18 <= f < 9.223372036854775808e18:
                    q = np.int64(f) & 0xFFFFFFFF
                else:
                    q = np.int64(0)
                v = (q + zero_point) & 0xFFFFFFFF
                out[i, c] = min(v, 255)


def softmax_float32_table(x, table: np.ndarray, y_mult, zero_point: int, out_dtype):
    """ONNX Runtime's QLinearSoftmax over the last axis of an 8-bit array (see the module docstring).

    ``table`` from :func:`ort_softmax_table` (for this row length), ``y_mult`` from
    :func:`ort_output_multiplier`; ``out_dtype`` uint8 or int8 with ``zero_point`` in its range.

    >>> t = ort_softmax_table(np.float32(0.1), 3)
    >>> softmax_float32_table(np.uint8([[10, 10, 10], [0, 0, 255]]), t, ort_output_multiplier(1 / 256), 0, np.uint8)
    array([[ 85,  85,  85],
           [  0,   0, 255]], dtype=uint8)
    """
    x = np.asarray(x)
    out_dtype = np.dtype(out_dtype)
    if x.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise HwsimError(f"softmax_float32_table: input must be uint8 or int8, found {x.dtype}")
    if out_dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise HwsimError(f"softmax_float32_table: output must be uint8 or int8, found {out_dtype}")
    table = np.asarray(table)
    if table.dtype != np.float32 or table.shape != (256,):
        raise HwsimError(f"softmax_float32_table: expected a float32[256] table, found {table.dtype}{list(table.shape)}")
    info = np.iinfo(out_dtype)
    if not info.min <= int(zero_point) <= info.max:
        raise EncodingError(f"softmax_float32_table: zero point {zero_point} is outside {out_dtype} range")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise HwsimError(f"softmax_float32_table: expected a non-empty last axis, found shape {x.shape}")
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    out = np.empty(x2.shape, np.int64)
    with np.errstate(over="ignore"):  # T * Y may overflow to inf, as in ONNX Runtime (only seen with NUMBA_DISABLE_JIT)
        _softmax_f32_rows(x2, table, np.float32(y_mult), np.int64(zero_point), out_dtype == np.dtype(np.int8), out)
    return out.reshape(x.shape).astype(out_dtype)
