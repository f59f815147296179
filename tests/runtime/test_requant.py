"""runtime.kernels.requant: Numba kernels == slow obvious references (Python ints, one element at a
time) bit for bit; golden vectors with ties and saturation; validation errors; and the float32 form
against ONNX Runtime itself (``-m ort``)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

from runtime.errors import EncodingError, HwsimError
from runtime.fixedpoint import quantize_multipliers
from runtime.kernels.requant import requantize_fixed_point, requantize_float32
from tests.runtime.test_fixedpoint import mbqm64_ref, mbqm_ref, requant_f32_ref
from tests.strategies import INT32_MAX, INT32_MIN, requant_fixed_point_cases, requant_float32_cases


# ---------------------------------------------------------------------------------------------
# naive references: one element at a time, Python ints
# ---------------------------------------------------------------------------------------------
def _channel(idx: tuple, axis, n_params: int) -> int:
    return 0 if n_params == 1 else idx[axis]


def requantize_fixed_point_ref(acc, multipliers, shifts, axis, zero_point, qmin, qmax, rounding):
    out = np.empty(acc.shape, dtype=np.int64)
    for idx in np.ndindex(acc.shape):
        c = _channel(idx, axis, len(multipliers))
        x, m, e = int(acc[idx]), int(multipliers[c]), int(shifts[c])
        y = mbqm64_ref(x, m, e) if rounding == "int64" else mbqm_ref(x, m, e, rounding)
        out[idx] = min(max(y + zero_point, qmin), qmax)
    return out


def requantize_float32_ref(acc, scales, axis, zero_point, qmin, qmax):
    out = np.empty(acc.shape, dtype=np.int64)
    for idx in np.ndindex(acc.shape):
        c = _channel(idx, axis, len(scales))
        out[idx] = requant_f32_ref(int(acc[idx]), float(scales[c]), zero_point, qmin, qmax)
    return out


# ---------------------------------------------------------------------------------------------
# property: kernel == reference, bit for bit
# ---------------------------------------------------------------------------------------------
@given(requant_fixed_point_cases())
def test_fixed_point_kernel_equals_reference(case):
    out = requantize_fixed_point(**case)
    assert out.dtype == np.int32 and out.shape == case["acc"].shape
    np.testing.assert_array_equal(out, requantize_fixed_point_ref(**case))


@given(requant_float32_cases())
def test_float32_kernel_equals_reference(case):
    out = requantize_float32(**case)
    assert out.dtype == np.int32 and out.shape == case["acc"].shape
    np.testing.assert_array_equal(out, requantize_float32_ref(**case))


# ---------------------------------------------------------------------------------------------
# golden vectors: ties, both saturation ends, per-tensor and per-channel, a layer-sized case
# ---------------------------------------------------------------------------------------------
EDGE_ACC = np.array([INT32_MIN, INT32_MIN + 1, -5, -3, -2, -1, 0, 1, 2, 3, 5, INT32_MAX - 1, INT32_MAX])


@pytest.mark.parametrize("rounding, expected", [
    # x * 0.25 (M = 2^30, e = -1): -1.25 / -0.75 / -0.5 / -0.25 / 0.25 / 0.5 / 0.75 / 1.25
    ("double", [-128, -128, -1, -1, -1, 0, 0, 1, 1, 1, 2, 127, 127]),  # 0.25 -> 1: two roundings
    ("single", [-128, -128, -1, -1, 0, 0, 0, 0, 1, 1, 1, 127, 127]),
    ("int64", [-128, -128, -1, -1, 0, 0, 0, 0, 1, 1, 1, 127, 127]),
])
def test_fixed_point_golden_per_tensor(rounding, expected):
    out = requantize_fixed_point(EDGE_ACC, [1 << 30], [-1], None, 0, -128, 127, rounding)
    assert out.tolist() == expected


def test_fixed_point_golden_per_channel_and_zero_point():
    acc = np.array([[5, -5, 16383], [-2, 2, -16383]])
    # column 0: x * 0.25; column 1: x * 0.5; column 2: x * 2^-15 (the 16383 -> 1 double-rounding case)
    mults, shifts = [1 << 30, 1 << 30, 1 << 30], [-1, 0, -14]
    double = requantize_fixed_point(acc, mults, shifts, 1, 10, -128, 127, "double")
    single = requantize_fixed_point(acc, mults, shifts, -1, 10, -128, 127, "single")
    assert double.tolist() == [[12, 8, 11], [9, 11, 10]]
    assert single.tolist() == [[11, 8, 10], [10, 11, 10]]


def test_fixed_point_int32_output_range_no_clamp():
    out = requantize_fixed_point(EDGE_ACC, [INT32_MAX], [0], 0, 0, INT32_MIN, INT32_MAX, "double")
    assert out.tolist() == [mbqm_ref(int(x), INT32_MAX, 0, "double") for x in EDGE_ACC]


def test_float32_golden_ties_and_saturation():
    acc = np.array([[1, 1], [3, 3], [5, 5], [-1, -1], [-3, -3], [-5, -6], [INT32_MAX, INT32_MAX], [INT32_MIN, INT32_MIN]])
    out = requantize_float32(acc, np.float32([0.5, 0.25]), 1, 3, -128, 127)
    # 0.5 | 0.25, 1.5 | 0.75, 2.5 | 1.25, -0.5 | -0.25, -1.5 | -0.75, -2.5 | -1.5: even, then + 3
    assert out.tolist() == [[3, 3], [5, 4], [5, 4], [3, 3], [1, 2], [1, 1], [127, 127], [-128, -128]]


def test_float32_int32_wide_range_is_an_exact_integer_clamp():
    acc = np.array([INT32_MAX, INT32_MIN, 2**24 + 1, -(2**24) - 3])
    # float32(INT32_MAX) = 2^31: saturates instead of overflowing; 2^24 + 1 -> 2^24 in float32
    out = requantize_float32(acc, np.float32([1.0]), None, 5, INT32_MIN, INT32_MAX)
    assert out.tolist() == [INT32_MAX, INT32_MIN + 5, 2**24 + 5, -(2**24) - 4 + 5]
    huge = requantize_float32(np.array([3, -3]), np.float32([3e38]), None, 0, INT32_MIN, INT32_MAX)
    assert huge.tolist() == [INT32_MAX, INT32_MIN]  # inf products saturate


def test_layer_sized_per_channel_case():
    """An NCHW conv output of 64 channels, multipliers from realistic float32 scales (fixed seed)."""
    rng = np.random.default_rng(20240607)
    acc = rng.integers(-(2**20), 2**20, size=(1, 64, 8, 8), dtype=np.int64)
    s_in, s_out = np.float32(0.02), np.float32(0.05)
    s_w = rng.uniform(1e-3, 2e-2, size=64).astype(np.float32)
    real = np.float64(s_in) * s_w.astype(np.float64) / np.float64(s_out)
    m, e = quantize_multipliers(real)
    for rounding in ("double", "single", "int64"):
        out = requantize_fixed_point(acc, m, e, 1, -3, -128, 127, rounding)
        np.testing.assert_array_equal(out, requantize_fixed_point_ref(acc, m, e, 1, -3, -128, 127, rounding))
    folded = (s_in * s_w / s_out).astype(np.float32)
    out = requantize_float32(acc, folded, 1, -3, -128, 127)
    np.testing.assert_array_equal(out, requantize_float32_ref(acc, folded, 1, -3, -128, 127))


def test_shapes_dtypes_and_empty():
    acc = np.arange(-6, 6, dtype=np.int16).reshape(2, 3, 2)
    out = requantize_fixed_point(acc, np.int32([1 << 30]), np.int32([0]), 2, 0, -128, 127, "double")
    assert out.shape == (2, 3, 2) and out.dtype == np.int32
    empty = np.zeros((0, 3), dtype=np.int64)
    assert requantize_fixed_point(empty, [1, 2, 3], [0, 0, 0], 1, 0, -128, 127, "single").shape == (0, 3)
    assert requantize_float32(empty, np.float32([1]), None, 0, -128, 127).shape == (0, 3)
    # a non-contiguous view is handled
    view = np.arange(24, dtype=np.int64).reshape(4, 6)[:, ::2]
    np.testing.assert_array_equal(requantize_float32(view, np.float32([0.5, 1, 2]), 1, 0, -128, 127),
                                  requantize_float32_ref(view, np.float32([0.5, 1, 2]), 1, 0, -128, 127))


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
ACC = np.zeros((2, 3), dtype=np.int64)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(acc=ACC.astype(np.float32)), HwsimError, "acc must be an integer array"),
    (dict(acc=ACC + 2**31), HwsimError, r"acc must lie in \[-2147483648, 2147483647\]"),
    (dict(acc=ACC + 2**47, rounding="int64"), HwsimError, r"acc must lie in"),
    (dict(rounding="nearest"), HwsimError, "rounding must be one of"),
    (dict(multipliers=[1, 2], shifts=[0, 0]), EncodingError, r"expected 1 \(per tensor\) or 3"),
    (dict(multipliers=[1, 2, 3], shifts=[0, 0, 0], axis=None), HwsimError, "axis must be an int"),
    (dict(axis=2), HwsimError, r"axis 2 is out of range for an accumulator of shape \(2, 3\)"),
    (dict(multipliers=[-1]), EncodingError, r"multipliers must lie in \[0, 2147483647\]"),
    (dict(shifts=[31], rounding="single"), EncodingError, r"shifts must lie in \[-31, 30\]"),
    (dict(shifts=[8], rounding="int64"), EncodingError, r"shifts must lie in \[-31, 7\]"),
    (dict(multipliers=[1, 2, 3], shifts=[0, 0]), EncodingError, "same length"),
    (dict(multipliers=[[1]]), EncodingError, "non-empty 1-D array"),
    (dict(multipliers=[1.5]), EncodingError, "multipliers must be integers"),
    (dict(qmin=5, qmax=4), EncodingError, "qmin <= qmax"),
    (dict(zero_point=0.5), EncodingError, "zero_point must be an integer"),
])
def test_fixed_point_validation(kwargs, error, match):
    args = dict(acc=ACC, multipliers=[1 << 30], shifts=[0], axis=1, zero_point=0, qmin=-128, qmax=127,
                rounding="double")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        requantize_fixed_point(**args)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(acc=ACC - 2**31 - 1), HwsimError, "acc must lie in"),
    (dict(scales=np.float64([0.1])), EncodingError, "not exactly representable in float32"),
    (dict(scales=np.float32([np.nan])), EncodingError, "finite and >= 0"),
    (dict(scales=np.int32([1])), EncodingError, "must be float32"),
    (dict(scales=np.float32([1, 1])), EncodingError, r"expected 1 \(per tensor\) or 3"),
    (dict(axis=-3), HwsimError, "out of range"),
    (dict(qmin=-(2**31) - 1, qmax=0), EncodingError, "qmin must fit int32"),
])
def test_float32_validation(kwargs, error, match):
    args = dict(acc=ACC, scales=np.float32([0.5]), axis=1, zero_point=0, qmin=-128, qmax=127)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        requantize_float32(**args)


def test_float64_scales_exact_in_float32_are_accepted():
    out = requantize_float32(np.array([3]), np.array([0.5]), None, 0, -128, 127)
    assert out.tolist() == [2]


# ---------------------------------------------------------------------------------------------
# ONNX Runtime: the float32 form reproduces QLinearMatMul (MLAS MlasRequantizeOutput) at ties
# ---------------------------------------------------------------------------------------------
def _qlinear_matmul(a, b, a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, b_is_initializer):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    onnx_type = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}
    inits = [numpy_helper.from_array(np.asarray(v), name) for v, name in [
        (np.float32(a_scale), "a_scale"), (a_zp, "a_zp"), (np.asarray(b_scale, np.float32), "b_scale"),
        (b_zp, "b_zp"), (np.float32(y_scale), "y_scale"), (y_zp, "y_zp")]]
    inputs = [helper.make_tensor_value_info("a", onnx_type[a.dtype], a.shape)]
    if b_is_initializer:
        inits.append(numpy_helper.from_array(b, "b"))
    else:
        inputs.append(helper.make_tensor_value_info("b", onnx_type[b.dtype], b.shape))
    node = helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp", "y_scale", "y_zp"], ["y"])
    out_info = helper.make_tensor_value_info("y", onnx_type[np.asarray(y_zp).dtype], None)
    model = helper.make_model(helper.make_graph([node], "qlinear_matmul", inputs, [out_info], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"a": a} if b_is_initializer else {"a": a, "b": b}
    return sess.run(None, feeds)[0]


def _ort_cases():
    # K = 1 (no pairwise int16 saturation on AVX2); folded scales 0.5 / 0.25 put acc * scale on .5 ties;
    # odd output zero points separate "round, then add zp" from "add zp in float, then round".
    a_u8 = np.arange(0, 256, 5, dtype=np.uint8).reshape(-1, 1)
    a_s8 = np.arange(-128, 128, 5, dtype=np.int8).reshape(-1, 1)
    yield "u8u8", a_u8, np.array([[1, 3, 7, 255]], np.uint8), np.uint8(4), np.uint8(2), np.uint8(3)
    yield "s8s8", a_s8, np.array([[1, -3, 7, -127]], np.int8), np.int8(0), np.int8(2), np.int8(-3)
    yield "u8s8", a_u8, np.array([[1, -3, 7, -127]], np.int8), np.uint8(128), np.int8(0), np.uint8(5)


@pytest.mark.ort
@pytest.mark.parametrize("b_is_initializer", [False, True])
@pytest.mark.parametrize("case", list(_ort_cases()), ids=lambda c: c[0])
@pytest.mark.parametrize("y_scale, b_scale", [(2.0, 1.0), (4.0, 1.0), (4.0, [1.0, 2.0, 1.0, 2.0])])
def test_float32_requantization_matches_onnxruntime_at_ties(case, b_is_initializer, y_scale, b_scale):
    _, a, b, a_zp, b_zp, y_zp = case
    per_column = np.ndim(b_scale) == 1
    a_scale = np.float32(1.0)
    y = _qlinear_matmul(a, b, a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, b_is_initializer)
    acc = (a.astype(np.int64) - int(a_zp)) @ (b.astype(np.int64) - int(b_zp))
    # ORT folds the scale in float32, left to right: a_scale * b_scale / y_scale (QLinearMatMul::Compute)
    folded = (a_scale * np.atleast_1d(np.asarray(b_scale, np.float32)) / np.float32(y_scale)).astype(np.float32)
    info = np.iinfo(y.dtype)
    ours = requantize_float32(acc, folded, 1 if per_column else None, int(y_zp), int(info.min), int(info.max))
    np.testing.assert_array_equal(ours, y.astype(np.int32))
    # the inputs discriminate: ties are present, and the rejected orders of operations differ from ORT
    f = acc.astype(np.float32) * np.broadcast_to(folded, acc.shape)
    assert np.any(f - np.floor(f) == 0.5)
    zp_in_float = np.clip(np.rint(f + np.float32(int(y_zp))), info.min, info.max)
    ties_away = np.clip(np.sign(f) * np.floor(np.abs(f) + 0.5) + int(y_zp), info.min, info.max)
    assert not np.array_equal(zp_in_float, y) and not np.array_equal(ties_away, y)


@pytest.mark.ort
def test_float32_requantization_matches_onnxruntime_random_scales():
    """Non-tie scales too: u8 x u8 (exact integer GEMM on AVX2), K = 16, fixed seed."""
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, size=(32, 16), dtype=np.uint8)
    b = rng.integers(0, 256, size=(16, 24), dtype=np.uint8)
    for a_scale, b_scale, y_scale, y_zp in [(0.013, 0.0071, 0.37, 131), (0.5, 0.25, 3.0, 0), (0.02, 0.002, 1.7, 255)]:
        y = _qlinear_matmul(a, b, a_scale, np.uint8(119), b_scale, np.uint8(140), y_scale, np.uint8(y_zp), True)
        acc = (a.astype(np.int64) - 119) @ (b.astype(np.int64) - 140)
        folded = np.float32(a_scale) * np.float32(b_scale) / np.float32(y_scale)
        ours = requantize_float32(acc, np.float32([folded]), None, y_zp, 0, 255)
        np.testing.assert_array_equal(ours, y.astype(np.int32))
