"""runtime.kernels.elementwise (TFLite fixed-point Add/Mul), runtime.kernels.elementwise_f32 (ONNX Runtime
float32 QLinearAdd/Mul) and runtime.ops.lut.build_table == slow one-element-at-a-time references bit for
bit (0 LSB); golden ties and both saturation ends."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.encoding import Encoding
from runtime.kernels.elementwise import add_fixed_point, mul_fixed_point
from runtime.kernels.elementwise_f32 import add_float32, mul_float32
from runtime.ops.lut import build_table
from tests.reference_kernels import add_fixed_point_ref, add_float32_ref, mul_fixed_point_ref, mul_float32_ref
from tests.strategies import add_fixed_point_cases, float32_binary_cases, mul_fixed_point_cases


def _same(got, ref):
    (out, sat), (rout, rsat) = got, ref
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, rout)
    assert sat == rsat


@given(add_fixed_point_cases())
def test_add_fixed_point_equals_reference(case):
    _same(add_fixed_point(**case), add_fixed_point_ref(**case))


@given(mul_fixed_point_cases())
def test_mul_fixed_point_equals_reference(case):
    _same(mul_fixed_point(**case), mul_fixed_point_ref(**case))


@given(float32_binary_cases("Add"))
def test_add_float32_equals_reference(case):
    _same(add_float32(**case), add_float32_ref(**case))


@given(float32_binary_cases("Mul"))
def test_mul_float32_equals_reference(case):
    _same(mul_float32(**case), mul_float32_ref(**case))


# ---------------------------------------------------------------------------------------------
# golden vectors
# ---------------------------------------------------------------------------------------------
def test_mul_fixed_point_ties_and_saturation():
    # M = 2^30, e = -1: x * 0.25; 6 * 0.25 = 1.5 (double: 2), -6 * 0.25 = -1.5 (double: -2; single: -1)
    a, b = np.array([3, -3, 127, -128], np.int8), np.array([2, 2, 127, 127], np.int8)
    out, sat = mul_fixed_point(a, b, 0, 0, 1 << 30, -1, 0, -128, 127, -128, 127, False)
    np.testing.assert_array_equal(out, [2, -2, 127, -128])  # 16129/4 and -16256/4 saturate
    assert sat == 2
    out, _ = mul_fixed_point(a, b, 0, 0, 1 << 30, -1, 0, -128, 127, -128, 127, True)
    np.testing.assert_array_equal(out, [2, -1, 127, -128])


def test_add_float32_ties_round_to_even():
    # ra = rb = 0.5: (1 + 2) * 0.5 = 1.5 -> 2, (1 + 4) * 0.5 = 2.5 -> 2, both ends saturate
    a, b = np.array([1, 1, 127, -128], np.int8), np.array([2, 4, 127, -128], np.int8)
    out, sat = add_float32(a, b, 0, 0, np.float32(0.5), np.float32(0.5), 0, -128, 127, -128, 127)
    np.testing.assert_array_equal(out, [2, 2, 127, -128])
    out, sat = add_float32(a, b, 0, 0, np.float32(1.0), np.float32(1.0), 0, -128, 127, -128, 127)
    np.testing.assert_array_equal(out, [3, 5, 127, -128])
    assert sat == 2


def test_mul_float32_golden():
    a, b = np.array([[3], [5]], np.uint8), np.array([1, 255], np.uint8)  # broadcast [2, 1] x [2]
    out, sat = mul_float32(a, b, 0, 0, np.float32(0.5), 0, 0, 255, 0, 255)
    np.testing.assert_array_equal(out, [[2, 255], [2, 255]])  # 1.5 -> 2, 2.5 -> 2, saturated
    assert sat == 2


# ---------------------------------------------------------------------------------------------
# lookup tables
# ---------------------------------------------------------------------------------------------
def _round(v: float, mode: str) -> int:
    import math

    fl = math.floor(v)
    if v - fl != 0.5:
        return round(v)  # not a tie: nearest
    return {"half_to_even": fl + (fl % 2), "half_away_from_zero": fl + 1 if v > 0 else fl,
            "half_up": fl + 1, "half_down": fl}[mode]


@settings(max_examples=25)
@given(st.sampled_from(["int8", "uint8"]), st.sampled_from(["int8", "uint8"]),
       st.integers(-8, 0).map(lambda k: 2.0**k), st.floats(2.0**-8, 1.0, width=32),
       st.sampled_from(["half_to_even", "half_away_from_zero", "half_up", "half_down"]), st.data())
def test_build_table_equals_reference(xdt, ydt, xs, ys, mode, data):
    fns = {"tanh": np.tanh, "hardswish": lambda x: x * np.clip(x / 6.0 + 0.5, 0, 1), "id": lambda x: x}
    name = data.draw(st.sampled_from(sorted(fns)))
    xe = Encoding(np.float32(xs), data.draw(st.integers(-8, 8)) + (128 if xdt == "uint8" else 0), xdt)
    ye = Encoding(np.float32(ys), data.draw(st.integers(-8, 8)) + (128 if ydt == "uint8" else 0), ydt)
    table = build_table(fns[name], xe, ye, mode)
    xi = np.iinfo(xdt)
    yi = np.iinfo(ydt)
    for i, q in enumerate(range(int(xi.min), int(xi.max) + 1)):
        x = np.float32(np.float32(xs) * np.float32(q - int(xe.zero_point)))
        f = np.float32(fns[name](np.float64(x)))
        v = float(np.float32(f / np.float32(ys)))
        ref = min(max(_round(v, mode) + int(ye.zero_point), int(yi.min)), int(yi.max))
        assert table[i] == ref, (q, x, f, v)
