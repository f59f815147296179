"""runtime.fixedpoint against arbitrary-precision Python-int oracles written straight from the
formulas of shared/design/TFLITE-INTEGER-ARITHMETIC.md section 1 (exact comparisons, 0 LSB), plus the
math each primitive promises (rounding error bounds, monotonicity) and the Numba scalar cores ==
the numpy array functions bit for bit."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import EncodingError, HwsimError
from runtime.fixedpoint import (
    mbqm_int64_scalar, mbqm_scalar, multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_int64, quantize_multiplier, quantize_multipliers, rdbpot_scalar,
    requant_f32_scalar, requantize_float32, rounding_divide_by_pot, saturating_rounding_doubling_high_mul,
    srdhm_scalar,
)
from tests.strategies import (
    INT32_MAX, INT32_MIN, float32_scales, int32s, int47s, multipliers, output_ranges, pot_exponents,
    real_multipliers, shifts_double, shifts_int64, shifts_single, small_ints,
)


# ---------------------------------------------------------------------------------------------
# oracles: Python ints, C-style truncating division, formulas as written in the facts file
# ---------------------------------------------------------------------------------------------
def tdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def wrap32(x: int) -> int:
    return (x + 2**31) % 2**32 - 2**31


def srdhm_ref(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    p = a * b
    nudge = 2**30 if p >= 0 else 1 - 2**30
    return tdiv(p + nudge, 2**31)


def rdbpot_ref(x: int, e: int) -> int:
    mask = 2**e - 1
    rem = x & mask
    thr = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > thr else 0)


def mbqm_ref(x: int, m: int, e: int, rounding: str) -> int:
    if rounding == "single":
        t = 31 - e
        return wrap32((x * m + 2 ** (t - 1)) >> t)
    if e > 0:
        return srdhm_ref(wrap32(x * 2**e), m)
    return rdbpot_ref(srdhm_ref(x, m), -e)


def mbqm64_ref(x: int, m: int, e: int) -> int:
    m16 = (m + 2**15) >> 16 if m < 0x7FFF0000 else 0x7FFF
    t = 15 - e
    return wrap32((x * m16 + 2 ** (t - 1)) >> t)


def quantize_multiplier_ref(d: float, single_rounding_clamp: bool = False) -> tuple[int, int]:
    if d == 0.0:
        return 0, 0
    q, e = math.frexp(d)
    v = Fraction(q) * 2**31
    m = math.floor(v + Fraction(1, 2))  # round half away from zero (v > 0)
    if m == 2**31:
        m, e = m // 2, e + 1
    if e < -31:
        return 0, 0
    if single_rounding_clamp and e > 30:
        return 2**31 - 1, 30
    return m, e


def requant_f32_ref(acc: int, scale: float, zp: int, qmin: int, qmax: int) -> int:
    """float32(acc) * float32(scale) rounded once to float32 (exact in binary64 first), then round half
    to even with Fractions, + zp, clamp."""
    a32 = float(np.float32(float(acc)))
    with np.errstate(over="ignore"):  # a 24x24-bit product is exact in binary64; one rounding to float32
        f = float(np.float32(a32 * float(np.float32(scale))))
    if math.isinf(f):
        r = math.copysign(2**40, f)  # beyond any int32 bound: saturates
    else:
        fr = Fraction(f)
        r = math.floor(fr)
        if fr - r > Fraction(1, 2) or (fr - r == Fraction(1, 2) and r % 2 == 1):
            r += 1
    return min(max(r + zp, qmin), qmax)


# ---------------------------------------------------------------------------------------------
# golden vectors (facts file, section 1)
# ---------------------------------------------------------------------------------------------
def test_srdhm_golden():
    assert saturating_rounding_doubling_high_mul(-1, 2**30) == 0  # -0.5 -> 0 (ties toward +inf)
    assert saturating_rounding_doubling_high_mul(1, 2**30) == 1  # 0.5 -> 1
    assert saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN) == INT32_MAX  # saturation
    assert saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MAX) == -INT32_MAX
    assert saturating_rounding_doubling_high_mul(INT32_MAX, INT32_MAX) == INT32_MAX - 1


def test_rdbpot_golden():
    assert rounding_divide_by_pot(-1, 1) == -1
    assert rounding_divide_by_pot(-3, 1) == -2
    assert rounding_divide_by_pot(3, 1) == 2
    assert rounding_divide_by_pot(INT32_MIN, 31) == -1
    assert rounding_divide_by_pot(INT32_MAX, 31) == 1
    assert rounding_divide_by_pot(INT32_MAX, 0) == INT32_MAX


def test_quantize_multiplier_golden():
    assert quantize_multiplier(1.0) == (2**30, 1)
    assert quantize_multiplier(0.5) == (2**30, 0)
    assert quantize_multiplier(2.0**-15) == (2**30, -14)
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(1.0 - 2.0**-53) == (2**30, 1)  # M rounds to 2^31: carry
    assert quantize_multiplier(2.0**-32) == (2**30, -31)  # last kept exponent
    assert quantize_multiplier(2.0**-33) == (0, 0)  # flushed
    assert quantize_multiplier(2.0**31) == (2**30, 32)
    assert quantize_multiplier(2.0**31, single_rounding_clamp=True) == (2**31 - 1, 30)


@pytest.mark.parametrize("x, m, e, double, single", [
    (5, 2**30, -1, 2, 1),  # exact 1.25
    (-2, 2**30, -1, -1, 0),  # exact -0.5
    (16383, 2**30, -14, 1, 0),  # exact 0.49997
    (INT32_MAX, INT32_MAX, 0, INT32_MAX - 1, INT32_MAX - 1),
    (INT32_MIN, 2**30, 0, -(2**30), -(2**30)),
    (INT32_MIN, INT32_MAX, -31, -1, -1),
    (3, 2**30, 1, 3, 3),  # e > 0 left shift
])
def test_mbqm_golden(x, m, e, double, single):
    assert multiply_by_quantized_multiplier(x, m, e) == double
    assert multiply_by_quantized_multiplier(x, m, e, rounding="double") == double
    assert multiply_by_quantized_multiplier(x, m, e, rounding="single") == single
    assert mbqm_scalar(x, m, e, False) == double
    assert mbqm_scalar(x, m, e, True) == single


def test_mbqm_double_wraps_the_pre_shift():
    # x * 2^1 leaves int32: TFLite's int32 left shift wraps before the multiply.
    assert multiply_by_quantized_multiplier(2**30, 2**30, 1) == srdhm_ref(wrap32(2**31), 2**30) == -(2**30)


def test_mbqm_int64_golden():
    assert multiply_by_quantized_multiplier_int64(3, 2**30, 0) == 2  # 1.5 -> 2
    assert multiply_by_quantized_multiplier_int64(-3, 2**30, 0) == -1  # -1.5 -> -1 (ties toward +inf)
    # only 15 bits of the multiplier survive: M >= 0x7FFF0000 becomes 0x7FFF (real 0x7FFF / 2^15)
    assert multiply_by_quantized_multiplier_int64(1 << 20, INT32_MAX, 0) == 0x7FFF << 5
    assert multiply_by_quantized_multiplier_int64(2**47 - 1, 2**30, -31) == 2**15  # ~2^47 * 2^-32


def test_requantize_float32_golden():
    acc = np.array([1, 3, 5, 7, -1, -3, -5, 255, -300])
    # x * 0.5 ties round half to even, THEN + zp (an odd zp exposes the order)
    out = requantize_float32(acc, np.float32(0.5), 3, 0, 255)
    assert out.tolist() == [3, 5, 5, 7, 3, 1, 1, 131, 0]
    assert requant_f32_scalar(5, np.float32(0.5), 3, 0, 255) == 5


# ---------------------------------------------------------------------------------------------
# oracle equality on random int32 inputs (edges included by the strategies)
# ---------------------------------------------------------------------------------------------
@given(int32s, int32s)
def test_srdhm_equals_oracle(a, b):
    ref = srdhm_ref(a, b)
    assert saturating_rounding_doubling_high_mul(a, b) == ref
    assert srdhm_scalar(a, b) == ref


@given(int32s, pot_exponents)
def test_rdbpot_equals_oracle(x, e):
    ref = rdbpot_ref(x, e)
    assert rounding_divide_by_pot(x, e) == ref
    assert rdbpot_scalar(x, e) == ref
    assert ref == round_half_away(Fraction(x, 2**e))


def round_half_away(v: Fraction) -> int:
    r = math.floor(abs(v) + Fraction(1, 2))
    return r if v >= 0 else -r


@given(int32s, multipliers, shifts_single)
def test_mbqm_equals_oracle(x, m, e):
    for rounding, single in (("double", False), ("single", True)):
        ref = mbqm_ref(x, m, e, rounding)
        assert multiply_by_quantized_multiplier(x, m, e, rounding=rounding) == ref
        assert mbqm_scalar(x, m, e, single) == ref


@given(int32s, multipliers)
def test_mbqm_double_shift_31_equals_oracle(x, m):
    assert multiply_by_quantized_multiplier(x, m, 31) == mbqm_ref(x, m, 31, "double") == mbqm_scalar(x, m, 31, False)


@given(int47s, multipliers, shifts_int64)
def test_mbqm_int64_equals_oracle(x, m, e):
    ref = mbqm64_ref(x, m, e)
    assert multiply_by_quantized_multiplier_int64(x, m, e) == ref
    assert mbqm_int64_scalar(x, m, e) == ref


@given(real_multipliers, st.booleans())
def test_quantize_multiplier_equals_oracle(d, clamp):
    assert quantize_multiplier(d, single_rounding_clamp=clamp) == quantize_multiplier_ref(d, clamp)


@given(st.lists(real_multipliers, min_size=0, max_size=8), st.booleans())
def test_quantize_multipliers_equals_scalar(reals, clamp):
    m, e = quantize_multipliers(np.array(reals, dtype=np.float64), single_rounding_clamp=clamp)
    assert m.dtype == np.int32 and e.dtype == np.int32
    assert list(zip(m.tolist(), e.tolist())) == [quantize_multiplier(d, clamp) for d in reals]


@given(st.one_of(st.integers(-(2**31), 2**31 - 1), small_ints), float32_scales, output_ranges())
def test_requantize_float32_equals_oracle(acc, scale, rng):
    zp, qmin, qmax = rng
    ref = requant_f32_ref(acc, scale, zp, qmin, qmax)
    assert requantize_float32(acc, np.float32(scale), zp, qmin, qmax) == ref
    assert requant_f32_scalar(acc, np.float32(scale), zp, qmin, qmax) == ref


# ---------------------------------------------------------------------------------------------
# math properties
# ---------------------------------------------------------------------------------------------
@given(real_multipliers)
def test_quantize_multiplier_reconstructs_within_2_pow_minus_31(d):
    m, e = quantize_multiplier(d)
    if m == 0:  # zero, or flushed (exponent below -31 after the carry)
        assert d < 2.0**-32
        return
    assert 2**30 <= m <= 2**31 - 1
    recon = Fraction(m) * Fraction(2) ** (e - 31)
    assert abs(recon - Fraction(d)) <= Fraction(d) * Fraction(1, 2**31)


@st.composite
def no_wrap_mbqm_args(draw, shifts=shifts_single):
    """(x, M, e) for which x * 2^max(e, 0) fits int32: neither build wraps."""
    m, e = draw(multipliers), draw(shifts)
    k = max(e, 0)
    x = draw(st.one_of(st.integers(INT32_MIN >> k, INT32_MAX >> k), st.sampled_from([INT32_MIN >> k, INT32_MAX >> k])))
    return x, m, e


@given(no_wrap_mbqm_args())
def test_mbqm_within_one_lsb_of_exact(args):
    x, m, e = args
    exact = Fraction(x * m) * Fraction(2) ** (e - 31)
    double = multiply_by_quantized_multiplier(x, m, e, "double")
    single = multiply_by_quantized_multiplier(x, m, e, "single")
    assert abs(single - exact) <= Fraction(1, 2)  # one rounding, ties toward +inf
    assert abs(double - exact) < 1  # two roundings: < 1 LSB
    assert abs(double - single) <= 1
    assert abs(double - round(exact)) <= 1 and abs(single - round(exact)) <= 1
    if exact.denominator == 1:  # zero exact where promised: exact products are not rounded
        assert double == single == exact


@given(no_wrap_mbqm_args(), st.data())
def test_mbqm_monotonic_in_x(args, data):
    x1, m, e = args
    k = max(e, 0)
    x2 = data.draw(st.integers(x1, INT32_MAX >> k))
    for rounding in ("double", "single"):
        assert multiply_by_quantized_multiplier(x1, m, e, rounding) <= multiply_by_quantized_multiplier(x2, m, e, rounding)


@given(st.integers(-(2**47) + 1, 2**47 - 1), multipliers, shifts_int64)
def test_mbqm_int64_within_one_lsb_of_its_15_bit_multiplier(x, m, e):
    m16 = (m + 2**15) >> 16 if m < 0x7FFF0000 else 0x7FFF
    exact = Fraction(x * m16) * Fraction(2) ** (e - 15)
    if abs(exact) < 2**31 - 1:
        assert abs(multiply_by_quantized_multiplier_int64(x, m, e) - exact) <= Fraction(1, 2)


# ---------------------------------------------------------------------------------------------
# Numba scalar cores == numpy array functions, bit for bit
# ---------------------------------------------------------------------------------------------
@settings(max_examples=50)
@given(st.lists(st.tuples(int32s, multipliers, shifts_single, int32s, pot_exponents), min_size=1, max_size=16))
def test_array_functions_equal_scalar_cores(rows):
    x, m, e, b, p = (np.array(col, dtype=np.int64) for col in zip(*rows))
    srdhm = saturating_rounding_doubling_high_mul(x, b)
    rdbpot = rounding_divide_by_pot(x, p)
    double = multiply_by_quantized_multiplier(x, m, e, "double")
    single = multiply_by_quantized_multiplier(x, m, e, "single")
    for arr in (srdhm, rdbpot, double, single):
        assert isinstance(arr, np.ndarray) and arr.dtype == np.int32 and arr.shape == x.shape
    assert srdhm.tolist() == [srdhm_scalar(int(u), int(v)) for u, v in zip(x, b)]
    assert rdbpot.tolist() == [rdbpot_scalar(int(u), int(v)) for u, v in zip(x, p)]
    assert double.tolist() == [mbqm_scalar(int(u), int(v), int(w), False) for u, v, w in zip(x, m, e)]
    assert single.tolist() == [mbqm_scalar(int(u), int(v), int(w), True) for u, v, w in zip(x, m, e)]


@settings(max_examples=50)
@given(st.lists(st.tuples(int47s, multipliers, shifts_int64), min_size=1, max_size=16))
def test_int64_array_function_equals_scalar_core(rows):
    x, m, e = (np.array(col, dtype=np.int64) for col in zip(*rows))
    out = multiply_by_quantized_multiplier_int64(x, m, e)
    assert out.tolist() == [mbqm_int64_scalar(int(u), int(v), int(w)) for u, v, w in zip(x, m, e)]


def test_broadcasting_and_dtypes():
    x = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    out = multiply_by_quantized_multiplier(x, np.int32(2**30), np.int16(-1))
    assert out.shape == (3, 4) and out.dtype == np.int32
    assert out.tolist() == [[mbqm_ref(int(v), 2**30, -1, "double") for v in row] for row in x.tolist()]
    assert isinstance(multiply_by_quantized_multiplier(5, 2**30, -1), int)
    assert rounding_divide_by_pot(np.array([], dtype=np.int32), 3).shape == (0,)


# ---------------------------------------------------------------------------------------------
# errors a caller can cause
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), -float("inf")])
def test_quantize_multiplier_rejects(bad):
    with pytest.raises(EncodingError, match="finite real multiplier >= 0"):
        quantize_multiplier(bad)
    with pytest.raises(EncodingError, match="finite real multipliers >= 0"):
        quantize_multipliers(np.array([0.5, bad]))


@pytest.mark.parametrize("call, match", [
    (lambda: saturating_rounding_doubling_high_mul(2**31, 1), r"a must lie in \[-2147483648, 2147483647\]"),
    (lambda: saturating_rounding_doubling_high_mul(1.5, 1), "must be an integer"),
    (lambda: rounding_divide_by_pot(1, 32), r"exponent must lie in \[0, 31\]"),
    (lambda: rounding_divide_by_pot(1, -1), r"exponent must lie in \[0, 31\]"),
    (lambda: multiply_by_quantized_multiplier(1, -1, 0), r"multiplier must lie in \[0, 2147483647\]"),
    (lambda: multiply_by_quantized_multiplier(1, 2**30, 31, "single"), r"shift must lie in \[-31, 30\]"),
    (lambda: multiply_by_quantized_multiplier(1, 2**30, 32), r"shift must lie in \[-31, 31\]"),
    (lambda: multiply_by_quantized_multiplier(1, 2**30, 0, "nearest"), "rounding must be one of"),
    (lambda: multiply_by_quantized_multiplier(2**70, 2**30, 0), "x must lie in"),
    (lambda: multiply_by_quantized_multiplier_int64(2**47, 2**30, 0), "x must lie in"),
    (lambda: multiply_by_quantized_multiplier_int64(1, 2**30, 8), r"shift must lie in \[-31, 7\]"),
    (lambda: requantize_float32(1, 0.1, 0, -128, 127), "not exactly representable in float32"),
    (lambda: requantize_float32(1, np.float32(-1), 0, -128, 127), "finite and >= 0"),
    (lambda: requantize_float32(1, np.float32(1), 0, 127, -128), "qmin <= qmax"),
    (lambda: requantize_float32(1, np.int32(1), 0, -128, 127), "must be float32"),
])
def test_domain_errors(call, match):
    with pytest.raises(HwsimError, match=match):
        call()
