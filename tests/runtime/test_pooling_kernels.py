"""runtime.kernels.pooling: max_pool, average_pool (five rounding modes), reduce_sum_acc and the output
size rule == the slow references in tests/reference_kernels.py bit for bit (0 LSB), plus golden ties
and both saturation ends."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from runtime.kernels.pooling import ROUNDINGS, _out_size, average_pool, max_pool, reduce_sum_acc
from tests.reference_kernels import average_pool_ref, max_pool_ref, pool_out_size_ref, round_div_ref
from tests.strategies import int_tensors, pool_cases

roundings = st.sampled_from(sorted(ROUNDINGS))


@given(pool_cases())
def test_max_pool_equals_reference(case_dt):
    case, _ = case_dt
    out = max_pool(**case)
    assert out.dtype == case["x"].dtype
    np.testing.assert_array_equal(out, max_pool_ref(**case))


def _avg_args(case, data):
    x = case["x"]
    lo, hi = int(np.iinfo(x.dtype).min), int(np.iinfo(x.dtype).max)
    zp = data.draw(st.one_of(st.just(0), st.sampled_from([lo, hi]), st.integers(lo, hi)))
    return dict(x=x, x_zero_point=zp, kernel=case["kernel"], strides=case["strides"], pads=case["pads"],
                count_include_pad=data.draw(st.integers(0, 1)), ceil_mode=case["ceil_mode"],
                rounding=data.draw(roundings))


@given(pool_cases(), st.data())
def test_average_pool_equals_reference(case_dt, data):
    args = _avg_args(case_dt[0], data)
    out = average_pool(**args)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, average_pool_ref(**args))


def test_average_pool_ceil_overhang_golden():
    """ceil_mode overhang past the end padding is not counted under count_include_pad (ONNX, ORT)."""
    x = np.array([[[2, 4, 6]]], np.int8)
    np.testing.assert_array_equal(average_pool(x, 0, (2,), (2,), (0, 0), 1, 1, "floor"), [[[3, 6]]])


@given(st.integers(1, 9), st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2),
       st.integers(0, 2), st.integers(0, 1))
def test_out_size_equals_window_count(n, k, s, d, pb, pe, ceil):
    assume(pb < k and pe < k and (k - 1) * d + 1 <= n + pb + pe)
    assert _out_size(n, k, s, d, pb, pe, ceil) == pool_out_size_ref(n, k, s, d, pb, pe, ceil)


@given(st.lists(st.integers(1, 3), min_size=1, max_size=3).flatmap(
    lambda shape: st.tuples(int_tensors(tuple(shape), "int16"),
                            st.sets(st.integers(0, len(shape) - 1), min_size=1))))
def test_reduce_sum_acc_equals_loop(x_axes):
    x, axes = x_axes
    out = reduce_sum_acc(x, sorted(axes))
    ref = np.zeros([1 if i in axes else d for i, d in enumerate(x.shape)], np.int64)
    for idx in np.ndindex(*x.shape):
        ref[tuple(0 if i in axes else v for i, v in enumerate(idx))] += int(x[idx])
    np.testing.assert_array_equal(out, ref)


# ---------------------------------------------------------------------------------------------
# golden vectors: .5 ties in every mode, both saturation ends
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vals, mode, expected", [
    ((1, 2), "half_away_from_zero", 2), ((-1, -2), "half_away_from_zero", -2),
    ((2, 3), "half_to_even", 2), ((1, 2), "half_to_even", 2), ((-1, -2), "half_to_even", -2),
    ((-2, -3), "half_to_even", -2), ((1, 2), "half_up", 2), ((-1, -2), "half_up", -1),
    ((1, 2), "floor", 1), ((-1, -2), "floor", -2), ((1, 2), "trunc", 1), ((-1, -2), "trunc", -1),
])
def test_average_ties(vals, mode, expected):  # 3/2, -3/2, 5/2, -5/2
    x = np.array([[list(vals)]], np.int16)
    assert average_pool(x, 0, (2,), (1,), (0, 0), 0, 0, mode)[0, 0, 0] == expected
    assert round_div_ref(sum(vals), 2, mode) == expected


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16])
def test_pool_saturation_ends(dtype):
    info = np.iinfo(dtype)
    for v in (info.min, info.max):
        x = np.full((1, 2, 4, 4), v, dtype)
        assert (max_pool(x, (3, 3), (1, 1), (1, 1, 1, 1)) == v).all()
        for zp in (info.min, 0, info.max):
            avg = average_pool(x, zp, (3, 3), (2, 2), (1, 1, 1, 1), 0, 0, "half_to_even")
            assert (avg == v).all()


def test_average_count_include_pad_golden():
    x = np.full((1, 1, 2, 2), 10, np.uint8)
    # 3x3 window, pad 1: 4 real taps of (10 - 4), 5 padded taps contribute 0 -> 4 + round(24 / 9) = 4 + 3
    assert average_pool(x, 4, (3, 3), (1, 1), (1, 1, 1, 1), 1, 0, "half_to_even")[0, 0, 0, 0] == 7
    assert average_pool(x, 4, (3, 3), (1, 1), (1, 1, 1, 1), 0, 0, "half_to_even")[0, 0, 0, 0] == 10
