"""The kernels of the runtime's speed round 3, each forced and checked bit for bit (0 LSB) against the
slow definitions:

- runtime.kernels.epilogue.requantize_int32 / requantize_gemm (float32 lanes) == the float32-form
  definition (requantize_float32_ref on the int64 sums, count, clamp), zero point, clamp and count
  bounds up to 2^22 (float32_lanes_exact), ties and both int32 ends;
- runtime.kernels.mac.conv_requantize (conv + epilogue fused; pair corrections applied to the GEMM's
  float result, in float64 when float32 could not hold them) == conv_ref -> the same definition;
- the integer program with and without the fused epilogue: same outputs, same saturation counts;
- add_float32 stored straight in the output type; plane_sums (GlobalAveragePool's sums).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.kernels import mac as mac_kernels
from runtime.kernels.elementwise_f32 import add_float32
from runtime.kernels.epilogue import (
    F32_LANE_BOUND, float32_lanes_exact, make_epilogue, requantize_gemm, requantize_int32,
)
from runtime.kernels.mac import ConvWeights, conv_requantize
from runtime.kernels.pooling import plane_sums
from tests.reference_kernels import add_float32_ref, conv_ref
from tests.runtime.test_requant import requantize_float32_ref
from tests.strategies import INT32_MAX, INT32_MIN, conv_cases, float32_binary_cases, float32_scales

OUT = {"uint8": (np.uint8, 0, 255), "int8": (np.int8, -128, 127), "int16": (np.int16, -32768, 32767)}


def _definition(acc, scales, axis, zp, lo, hi, c_lo, c_hi):
    """The float32 form: wide y = rint_even(f32(acc) * s) + zp (clamped to int32), counted outside
    [c_lo, c_hi] (None: that side not counted), clamped to [lo, hi]."""
    wide = requantize_float32_ref(np.asarray(acc, np.int64), np.asarray(scales, np.float32), axis, zp,
                                  INT32_MIN, INT32_MAX)
    sat = np.zeros(wide.shape, bool)
    if c_lo is not None:
        sat |= wide < c_lo
    if c_hi is not None:
        sat |= wide > c_hi
    return np.clip(wide, lo, hi), int(sat.sum())


@st.composite
def _epilogue_params(draw, n_ch: int):
    """(out type, scales, zero point, lo, hi, count_lo, count_hi): per channel or one scale,
    a clamp inside the type (a fused activation narrowing it sometimes), count bounds as the plan
    makes them (the type's end, or None where the activation decides)."""
    dt, dmin, dmax = OUT[draw(st.sampled_from(sorted(OUT)))]
    per_channel = draw(st.booleans())
    scales = np.float32(draw(st.lists(float32_scales.filter(lambda s: s < 1e4), min_size=n_ch if per_channel else 1,
                                      max_size=n_ch if per_channel else 1)))
    lo, hi = sorted((draw(st.integers(dmin, dmax)), draw(st.integers(dmin, dmax))))
    if draw(st.booleans()):
        lo, hi = dmin, dmax
    zp = draw(st.one_of(st.sampled_from([dmin, dmax, 0]), st.integers(dmin, dmax)))
    c_lo = dmin if lo <= dmin else None
    c_hi = dmax if hi >= dmax else None
    return dt, scales, zp, lo, hi, c_lo, c_hi


_acc_values = st.one_of(st.integers(INT32_MIN, INT32_MAX), st.integers(-3000, 3000),
                        st.sampled_from([INT32_MIN, INT32_MAX, 0, 1, -1, 2**23, -(2**23), 2**24 + 1]))


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 40), st.data())
def test_requantize_int32_equals_definition(outer, n_ch, inner, data):
    dt, scales, zp, lo, hi, c_lo, c_hi = data.draw(_epilogue_params(n_ch))
    acc = np.array(data.draw(st.lists(_acc_values, min_size=outer * n_ch * inner, max_size=outer * n_ch * inner)),
                   np.int64).reshape(outer, n_ch, inner)
    ep = make_epilogue(scales, zp, lo, hi, c_lo, c_hi)
    assert ep is not None
    y, sat = requantize_int32(acc.astype(np.int32), ep, dt)
    want, want_sat = _definition(acc, scales, 1 if scales.size > 1 else None, zp, lo, hi, c_lo, c_hi)
    assert y.dtype == dt
    np.testing.assert_array_equal(y, want)
    assert sat == want_sat


def test_requantize_int32_ties_and_long_rows():
    """.5 ties round to even; a row longer than one work item (BLOCK) is shared out and counted once."""
    acc = np.arange(-40000, 40000, dtype=np.int32).reshape(1, 1, -1)
    ep = make_epilogue(np.float32([0.5]), 3, 0, 255, 0, 255)
    y, sat = requantize_int32(acc, ep, np.uint8)
    want, want_sat = _definition(acc, [0.5], None, 3, 0, 255, 0, 255)
    np.testing.assert_array_equal(y, want)
    assert sat == want_sat == 80000 - 512  # in range: rint_even(acc/2) in [-3, 252], i.e. acc in [-6, 505]
    row = y[0, 0]
    assert (row[40000 - 5], row[40000 + 1], row[40000 + 3], row[40000 - 7]) == (1, 3, 5, 0)  # -2.5->-2, .5->0, 1.5->2


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 30), st.integers(0, 3), st.data())
def test_requantize_gemm_equals_definition(n_img, mg, n_pix, m0, data):
    """The GEMM result [mg, n*P] (integer-valued float32, |v| < 2^24) plus int32 bias written into
    channels m0.. of an [n, M, P] output."""
    m = m0 + mg + data.draw(st.integers(0, 2))
    dt, scales, zp, lo, hi, c_lo, c_hi = data.draw(_epilogue_params(m))
    vals = st.one_of(st.integers(-(2**24) + 1, 2**24 - 1), st.integers(-500, 500))
    res = np.array(data.draw(st.lists(vals, min_size=mg * n_img * n_pix, max_size=mg * n_img * n_pix)),
                   np.float32).reshape(mg, n_img * n_pix)
    bias = np.array(data.draw(st.lists(st.integers(-(2**30), 2**30), min_size=m, max_size=m)), np.int32)
    ep = make_epilogue(scales, zp, lo, hi, c_lo, c_hi)
    out = np.zeros((n_img, m, n_pix), dt)
    sat = requantize_gemm(res, m0, bias, ep, out)
    acc = res.astype(np.int64).reshape(mg, n_img, n_pix).transpose(1, 0, 2) + bias[m0:m0 + mg].reshape(1, -1, 1)
    sc = scales[m0:m0 + mg] if scales.size > 1 else scales
    want, want_sat = _definition(acc, sc, 1 if sc.size > 1 else None, zp, lo, hi, c_lo, c_hi)
    np.testing.assert_array_equal(out[:, m0:m0 + mg], want)
    assert not out[:, :m0].any() and not out[:, m0 + mg:].any()
    assert sat == want_sat


def test_float32_lanes_bound():
    """Past 2^22 a bound could meet a float32-rounded sum: the general kernel is used instead."""
    assert float32_lanes_exact(F32_LANE_BOUND, -F32_LANE_BOUND, 0, None, None)
    assert not float32_lanes_exact(F32_LANE_BOUND + 1, 0, 255, 0, 255)
    assert make_epilogue(np.float32([1.0]), 0, INT32_MIN, INT32_MAX, None, None) is None  # int32 outputs
    assert make_epilogue(np.float32([np.inf]), 0, 0, 255, 0, 255) is None  # reported by the general kernel
    assert make_epilogue(np.float32([1.0]), 0, 5, 4, 0, 255) is None


# ---------------------------------------------------------------------------------------------
# conv + epilogue fused
# ---------------------------------------------------------------------------------------------
def _conv_definition(case, pair, order, scales, zp, lo, hi, c_lo, c_hi):
    acc = conv_ref(**case, pair_saturation=pair, pair_order=order)
    return _definition(acc, scales, 1 if scales.size > 1 else None, zp, lo, hi, c_lo, c_hi)


@settings(max_examples=60, deadline=None)
@given(conv_cases(), st.booleans(), st.sampled_from(["hwc", "chw"]), st.data())
def test_conv_requantize_equals_reference(case, pair, order, data):
    m = case["w"].shape[0]
    dt, scales, zp, lo, hi, c_lo, c_hi = data.draw(_epilogue_params(m))
    cw = ConvWeights(case["w"], case["w_zero_point"], case["group"], order)
    ep = make_epilogue(scales, zp, lo, hi, c_lo, c_hi)
    got = conv_requantize(case["x"], case["x_zero_point"], cw, case["bias"], case["strides"], case["pads"],
                          case["dilations"], pair, ep, dt)
    if got is None:  # the bound does not prove int32 accumulators: only wide operands may get here
        assert max(case["x"].dtype.itemsize, case["w"].dtype.itemsize) >= 2
        return
    want, want_sat = _conv_definition(case, pair, order, scales, zp, lo, hi, c_lo, c_hi)
    assert got[0].dtype == dt
    np.testing.assert_array_equal(got[0], want)
    assert got[1] == want_sat


@pytest.mark.parametrize("channels, res_type", [(32, np.float32), (300, np.float64)])
def test_conv_requantize_pair_corrections_on_the_gemm_result(channels, res_type, monkeypatch):
    """A u8 x s8 pointwise conv, full-range operands, the host's pair saturation: the sparse
    corrections are added to the GEMM's float result (float32 when the bound K*255*128 + the
    corrections' bound stays below 2^24, else a float64 copy: 300 channels) and equal conv_ref."""
    rng = np.random.default_rng(channels)
    x = rng.integers(0, 256, (2, channels, 5, 7)).astype(np.uint8)
    w = rng.integers(-128, 128, (6, channels, 1, 1)).astype(np.int8)
    w[:, 0::2] = 127  # large positive pairs: some saturate, few enough for the sparse path
    x[:, 0::2] = np.where(rng.random(x[:, 0::2].shape) < 0.02, 255, x[:, 0::2] // 8)
    x[:, 1::2] = np.where(rng.random(x[:, 1::2].shape) < 0.02, 255, x[:, 1::2] // 8)
    bias = rng.integers(-1000, 1000, 6).astype(np.int32)
    seen = []
    real = mac_kernels._pair_sparse

    def spy(t, a3, flags, out3):
        seen.append(out3.dtype)
        return real(t, a3, flags, out3)
    monkeypatch.setattr(mac_kernels, "_pair_sparse", spy)
    monkeypatch.setattr(mac_kernels, "_dense_is_cheaper", lambda *a: False)
    scales = np.float32(rng.uniform(1e-4, 3e-3, 6))
    ep = make_epilogue(scales, 7, 0, 255, 0, 255)
    cw = ConvWeights(w, 0, 1, "hwc")
    y, sat = conv_requantize(x, 2, cw, bias, (1, 1), (0, 0, 0, 0), (1, 1), True, ep, np.uint8)
    case = dict(x=x, x_zero_point=2, w=w, w_zero_point=0, bias=bias, strides=(1, 1), pads=(0, 0, 0, 0),
                dilations=(1, 1), group=1)
    want, want_sat = _conv_definition(case, True, "hwc", scales, 7, 0, 255, 0, 255)
    assert seen and all(t == res_type for t in seen)
    exact = conv_ref(**case, pair_saturation=False)
    assert not np.array_equal(conv_ref(**case, pair_saturation=True), exact)  # some pairs do saturate
    np.testing.assert_array_equal(y, want)
    assert sat == want_sat


def test_conv_requantize_refuses_wide_bounds():
    """int16 operands whose sums may exceed int32: None (the general path with the policy runs)."""
    x = np.full((1, 4, 3, 3), 32767, np.int16)
    w = np.full((2, 4, 3, 3), 32767, np.int16)
    ep = make_epilogue(np.float32([1e-9]), 0, -128, 127, -128, 127)
    assert conv_requantize(x, 0, ConvWeights(w, 0, 1), None, (1, 1), (0, 0, 0, 0), (1, 1), False, ep, np.int8) is None


def test_program_fused_epilogue_equals_general_path():
    """The tiny CNN (QDQ, per-channel) on the host's ort-cpu form with and without the fused
    epilogue (Requant.fast removed): same outputs, same saturation and overflow per layer."""
    import copy

    import runtime
    from runtime.ops.mac import ConvStep
    from tests.onnx_models import quantize_with_ort, tiny_cnn

    rng = np.random.default_rng(0)
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        path = quantize_with_ort(tiny_cnn(channels=8, size=8), rng.uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32),
                                 Path(d) / "tiny.onnx", "qdq", True)
        fast = runtime.load(path, "ort-cpu")
    slow = copy.deepcopy(fast)
    convs = [s for s in slow.steps if isinstance(s, ConvStep)]
    assert convs and all(s.requant.fast is not None for s in convs)
    for s in slow.steps:
        if getattr(s, "requant", None) is not None:
            s.requant.fast = None
    feeds = {"x": rng.uniform(-3, 3, (5, 1, 8, 8)).astype(np.float32)}
    a, b = fast.run_with_details(feeds, keep_tensors=True), slow.run_with_details(feeds, keep_tensors=True)
    for k in b.tensors:
        np.testing.assert_array_equal(a.tensors[k], b.tensors[k])
    assert {k: (v.saturation, v.overflow) for k, v in a.stats.items()} == \
        {k: (v.saturation, v.overflow) for k, v in b.stats.items()}
    assert sum(v.saturation for v in a.stats.values()) > 0  # inputs beyond the calibration range saturate


# ---------------------------------------------------------------------------------------------
# Add stored in the output type, GlobalAveragePool sums
# ---------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(float32_binary_cases("Add"))
def test_add_float32_in_output_type_equals_reference(case):
    dt = {(-128, 127): np.int8, (0, 255): np.uint8, (-32768, 32767): np.int16}[(case["lo"], case["hi"])]
    out, sat = add_float32(**case, out_dtype=dt)
    want, want_sat = add_float32_ref(**case)
    assert out.dtype == dt
    np.testing.assert_array_equal(out, want)
    assert sat == want_sat


@given(st.sampled_from([np.uint8, np.int8, np.int16, np.int32]), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 9), st.data())
def test_plane_sums_equal_int64_sums(dt, n, c, p, data):
    info = np.iinfo(dt)
    x = np.array(data.draw(st.lists(st.sampled_from([info.min, info.max, 0, 1]) | st.integers(info.min, info.max),
                                    min_size=n * c * p, max_size=n * c * p)), dt).reshape(n, c, p, 1)
    np.testing.assert_array_equal(plane_sums(x), x.astype(np.int64).sum(axis=(2, 3)))
