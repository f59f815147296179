"""The one-pass kernels of the runtime's speed round 2, each forced and checked bit for bit (0 LSB)
against the slow definitions they replace:

- runtime.kernels.requant.requantize_accumulator (accumulator policy + requantization + saturation
  count + clamp + store, int32 or int64 accumulators) == accumulator_ref -> requantize_*_ref ->
  count -> clip, for both forms, every rounding and policy;
- runtime.kernels.quantize.quantize_per_tensor == quantize_ref (ties, both ends, +-inf, NaN counted);
- runtime.kernels.quantize.requantize_tensor == dequantize_ref/quantize_ref (float32 form) or MBQM
  (fixed-point form), written into a column range of a wider output (Concat in place);
- runtime.kernels.mac.conv_accumulate on prepared ConvWeights (int32 accumulators when the bound
  allows, caches reused across calls) == conv_ref;
- the saturation rule: values beyond the output dtype that a fused Relu/Clip would clamp anyway are
  not counted (runtime.plan.Planner.saturation_bounds), end to end through runtime.load.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime.encoding import Encoding
from runtime.errors import HwsimError, OverflowPolicyError
from runtime.kernels.mac import ConvWeights, conv_accumulate
from runtime.kernels.quantize import quantize_per_tensor, requantize_tensor
from runtime.kernels.requant import requantize_accumulator
from runtime.ops.common import NO_COUNT, saturation_bounds
from tests.reference_kernels import accumulator_ref, conv_ref
from tests.runtime.test_fixedpoint import mbqm_ref
from tests.runtime.test_quantize import dequantize_ref, quantize_ref
from tests.runtime.test_requant import requantize_fixed_point_ref, requantize_float32_ref
from tests.strategies import (
    INT32_MAX, INT32_MIN, SHIFTS_BY_ROUNDING, conv_cases, float32_scales, int32s, multipliers, quant_scales,
    small_ints,
)

OUT_TYPES = {"int8": (np.int8, -128, 127), "uint8": (np.uint8, 0, 255), "int16": (np.int16, -32768, 32767),
             "uint16": (np.uint16, 0, 65535), "int32": (np.int32, INT32_MIN, INT32_MAX)}


@st.composite
def _out_range(draw):
    """(numpy type, dtype range, clamp [lo, hi] inside it, zero point inside it)."""
    dt, dmin, dmax = OUT_TYPES[draw(st.sampled_from(list(OUT_TYPES)))]
    ends = st.one_of(st.sampled_from([dmin, dmax, 0 if dmin <= 0 else dmin]), st.integers(dmin, dmax))
    lo, hi = sorted((draw(ends), draw(ends)))
    if draw(st.booleans()):
        lo, hi = dmin, dmax
    zp = draw(st.one_of(st.sampled_from([dmin, dmax, max(dmin, 0)]), st.integers(dmin, dmax)))
    return dt, dmin, dmax, lo, hi, zp


# ---------------------------------------------------------------------------------------------
# requantize_accumulator
# ---------------------------------------------------------------------------------------------
@settings(max_examples=70, deadline=None)
@given(st.sampled_from(["float32", "double", "single", "int64"]), st.sampled_from([(32, "wrap"), (32, "saturate"),
       (16, "wrap"), (24, "saturate"), (64, "saturate"), (32, "error")]), _out_range(), st.data())
def test_requantize_accumulator_equals_separate_passes(form, acc_cfg, out, data):
    bits, policy = acc_cfg
    dt, dmin, dmax, lo, hi, zp = out
    ndim = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    axis = data.draw(st.integers(-ndim, ndim - 1))
    n = shape[axis] if data.draw(st.booleans()) else 1
    wide_elems = st.one_of(int32s, small_ints, st.integers(-(1 << 40), 1 << 40))
    acc = data.draw(hnp.arrays(np.int64, shape, elements=wide_elems if bits < 64 else st.one_of(int32s, small_ints)))
    if data.draw(st.booleans()) and acc.min() >= INT32_MIN and acc.max() <= INT32_MAX:
        acc = acc.astype(np.int32)  # int32 accumulators are read as they are
    c_lo, c_hi = data.draw(st.sampled_from([(dmin, dmax), (-NO_COUNT, dmax), (dmin, NO_COUNT)]))
    kept, over = accumulator_ref(acc.astype(np.int64), bits, "saturate" if policy == "error" else policy)
    if form == "float32":
        params = np.array(data.draw(st.lists(float32_scales, min_size=n, max_size=n)), np.float32)
        wide = requantize_float32_ref(kept, params, axis, zp, INT32_MIN, INT32_MAX)
        in_domain = kept.min() >= INT32_MIN and kept.max() <= INT32_MAX
        rounding = "double"
    else:
        rounding = form
        m = np.array(data.draw(st.lists(multipliers, min_size=n, max_size=n)), np.int64)
        e = np.array(data.draw(st.lists(SHIFTS_BY_ROUNDING[rounding], min_size=n, max_size=n)), np.int64)
        params = (m, e)
        limit = (1 << 47) - 1 if rounding == "int64" else INT32_MAX
        in_domain = kept.min() >= -limit - (rounding != "int64") and kept.max() <= limit
        wide = requantize_fixed_point_ref(kept, m, e, axis, zp, INT32_MIN, INT32_MAX, rounding) if in_domain else None
    args = (acc, "float32" if form == "float32" else "fixed_point", rounding, params, axis if n > 1 else
            data.draw(st.sampled_from([None, axis])), zp, lo, hi, c_lo, c_hi, dt, bits, policy)
    if policy == "error" and over:
        with pytest.raises(OverflowPolicyError, match="accumulator overflow at element"):
            requantize_accumulator(*args)
        return
    if not in_domain:
        with pytest.raises(HwsimError, match="must lie in"):
            requantize_accumulator(*args)
        return
    y, sat, n_over = requantize_accumulator(*args)
    assert y.dtype == dt and y.shape == acc.shape and n_over == over
    assert sat == int(np.count_nonzero((wide < c_lo) | (wide > c_hi)))
    np.testing.assert_array_equal(y, np.clip(wide, lo, hi))


def test_requantize_accumulator_channels_last_and_golden():
    """Per column of a MatMul output (channels last, one scale per element of a row) and ties."""
    acc = np.array([[5, 7, -5], [1, 3, 2**31 + 1]])
    y, sat, over = requantize_accumulator(acc, "float32", "double", np.float32([0.5, 0.5, 1.0]), 1, 0, -128, 127,
                                          -128, 127, np.int8, 32, "wrap")
    np.testing.assert_array_equal(y, [[2, 4, -5], [0, 2, -128]])  # 2.5 -> 2, 3.5 -> 4, 2^31+1 wraps
    assert (sat, over) == (1, 1)


# ---------------------------------------------------------------------------------------------
# quantize_per_tensor
# ---------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["int8", "uint8", "int16", "uint16", "int32"]), quant_scales,
       st.sampled_from(["half_to_even", "half_away_from_zero", "half_up", "half_down"]), st.data())
def test_quantize_per_tensor_equals_reference(name, scale, rounding, data):
    dt, dmin, dmax = OUT_TYPES[name]
    zp = data.draw(st.one_of(st.sampled_from([dmin, dmax, max(dmin, 0)]), st.integers(dmin, dmax)))
    enc = Encoding(scale=np.float32(scale), zero_point=zp, dtype=name)
    s = np.float32(scale)
    ties = st.integers(-300, 300).map(lambda k: float(np.float32((k + 0.5) * s)))
    elems = st.one_of(ties, st.floats(-1e6, 1e6, width=32), st.sampled_from([0.0, -0.0, 3e38, -3e38]))
    x = data.draw(hnp.arrays(np.float32, data.draw(st.integers(1, 40)), elements=elems))
    q, bad = quantize_per_tensor(x, enc.scale, zp, enc.qmin, enc.qmax, rounding, dt)
    assert bad == 0 and q.dtype == dt
    np.testing.assert_array_equal(q, quantize_ref(x, enc, rounding))


@pytest.mark.parametrize("rounding", ["half_to_even", "half_up"])
def test_quantize_per_tensor_layer_sized(rounding):
    """An input-sized tensor (many parallel work items) with ties: equals runtime.quantize.quantize
    (the general kernel, itself equal to quantize_ref in tests/runtime/test_quantize.py)."""
    from runtime.quantize import quantize

    rng = np.random.default_rng(0)
    x = np.float32(rng.normal(0, 40, 100000))
    x[::7] = np.float32((rng.integers(-300, 300, x[::7].size) + 0.5) * 0.25)  # exact ties at scale 0.25
    enc = Encoding(scale=np.float32(0.25), zero_point=128, dtype="uint8")
    q, bad = quantize_per_tensor(x, enc.scale, 128, 0, 255, rounding, np.uint8)
    assert bad == 0
    np.testing.assert_array_equal(q, quantize(x, enc, rounding))


def test_quantize_per_tensor_counts_non_finite_and_saturates_inf():
    x = np.float32([np.nan, np.inf, -np.inf, 1.0])
    q, bad = quantize_per_tensor(x, np.float32(1.0), 0, -128, 127, "half_to_even", np.int8)
    assert bad == 3 and list(q[1:]) == [127, -128, 1]


# ---------------------------------------------------------------------------------------------
# requantize_tensor (Concat in place, standalone Relu/Clip, Q after DQ)
# ---------------------------------------------------------------------------------------------
def _requant_ref(x, form, zs, ss, m, sd, e, zd, rounding, lo, hi, c_lo, c_hi, dst_name):
    if form == "fixed_point":
        wide = np.array([min(max(mbqm_ref(int(v) - zs, m, e, rounding) + zd, INT32_MIN), INT32_MAX)
                         for v in x.reshape(-1)], np.int64).reshape(x.shape)
    else:
        f = dequantize_ref(x, Encoding(scale=ss, zero_point=zs, dtype=x.dtype.name))
        wide = quantize_ref(f, Encoding(scale=sd, zero_point=zd, dtype="int32"), rounding).astype(np.int64)
    return np.clip(wide, lo, hi).astype(OUT_TYPES[dst_name][0]), int(np.count_nonzero((wide < c_lo) | (wide > c_hi)))


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["float32", "double", "single"]), st.sampled_from(["int8", "uint8", "int16"]),
       st.sampled_from(["int8", "uint8", "int16", "uint16"]), st.data())
def test_requantize_tensor_equals_definition(form, src_name, dst_name, data):
    sdt, smin, smax = OUT_TYPES[src_name]
    ddt, dmin, dmax = OUT_TYPES[dst_name]
    rows, width = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 30))
    x = data.draw(hnp.arrays(sdt, (rows, width), elements=st.one_of(st.integers(smin, smax),
                                                                        st.sampled_from([smin, smax, 0]))))
    zs = data.draw(st.one_of(st.sampled_from([smin, smax, max(smin, 0)]), st.integers(smin, smax)))
    zd = data.draw(st.one_of(st.sampled_from([dmin, dmax, max(dmin, 0)]), st.integers(dmin, dmax)))
    lo, hi = sorted((data.draw(st.integers(dmin, dmax)), data.draw(st.integers(dmin, dmax))))
    if data.draw(st.booleans()):
        lo, hi = dmin, dmax
    c_lo, c_hi = saturation_bounds(dmin, dmax, lo, hi)
    ss = np.float32(data.draw(quant_scales))
    sd = np.float32(data.draw(st.one_of(st.just(float(ss)), quant_scales)))
    m = data.draw(st.integers(1 << 30, INT32_MAX))
    e = data.draw(st.integers(-12, 3))
    rounding = "half_to_even" if form == "float32" else form
    if form == "float32":
        rounding = data.draw(st.sampled_from(["half_to_even", "half_away_from_zero", "half_up", "half_down"]))
    col = data.draw(st.integers(0, 5))
    out = np.full((rows, col + width + 2), 77, ddt)
    kind = "float32" if form == "float32" else "fixed_point"
    sat = requantize_tensor(x, kind, zs, ss, m, sd, e, zd, rounding, lo, hi, c_lo, c_hi, out, col)
    want, want_sat = _requant_ref(x, kind, zs, ss, m, sd, e, zd, rounding, lo, hi, c_lo, c_hi, dst_name)
    np.testing.assert_array_equal(out[:, col:col + width], want)
    assert sat == want_sat
    assert (out[:, :col] == 77).all() and (out[:, col + width:] == 77).all()  # other columns untouched


def test_requantize_tensor_layer_sized_both_forms():
    """One layer-sized tensor (several parallel work items per row) against the definition."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 40000)).astype(np.uint8)
    for kind, rounding in (("float32", "half_to_even"), ("fixed_point", "double")):
        out = np.empty((2, 40000), np.uint8)
        sat = requantize_tensor(x, kind, 7, np.float32(0.02), 1518500250, np.float32(0.03), -1, 5, rounding,
                                0, 255, 0, 255, out, 0)
        want, want_sat = _requant_ref(x, kind, 7, np.float32(0.02), 1518500250, np.float32(0.03), -1, 5, rounding,
                                      0, 255, 0, 255, "uint8")
        np.testing.assert_array_equal(out, want)
        assert sat == want_sat


# ---------------------------------------------------------------------------------------------
# conv_accumulate on prepared weights (int32 accumulators, cached operands)
# ---------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(conv_cases(), st.booleans(), st.sampled_from(["hwc", "chw"]))
def test_conv_accumulate_prepared_equals_reference(case, pair, order):
    x, zx = case["x"], case["x_zero_point"]
    cw = ConvWeights(case["w"], case["w_zero_point"], case["group"], order)
    if x.dtype.itemsize <= 2:
        info = np.iinfo(x.dtype)
        cw.prepare(info.min, info.max, zx, pair)  # plan time
    ref = conv_ref(**case, pair_saturation=pair, pair_order=order)
    for _ in range(2):  # the second call reuses every cached operand
        acc = conv_accumulate(x, zx, cw, case["bias"], case["strides"], case["pads"], case["dilations"], pair)
        assert acc.dtype in (np.int32, np.int64)
        np.testing.assert_array_equal(acc, ref)


@pytest.mark.parametrize("pair", [False, True])
def test_conv_accumulate_int32_for_8bit_layers(pair):
    """A u8 x s8 3x3 layer with 16 input channels: the bound proves int32 accumulators enough."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2, 16, 6, 6)).astype(np.uint8)
    w = rng.integers(-128, 128, (4, 16, 3, 3)).astype(np.int8)
    bias = rng.integers(-(2**20), 2**20, 4).astype(np.int32)
    acc = conv_accumulate(x, 3, ConvWeights(w, 0, 1), bias, (1, 1), (1, 1, 1, 1), (1, 1), pair)
    assert acc.dtype == np.int32
    np.testing.assert_array_equal(acc, conv_ref(x, 3, w, 0, bias, (1, 1), (1, 1, 1, 1), (1, 1), 1, pair))


def test_conv_weights_refuse_bad_shapes():
    with pytest.raises(HwsimError, match="not divisible by group"):
        ConvWeights(np.zeros((3, 1, 1, 1), np.int8), 0, 2)
    with pytest.raises(HwsimError, match="weight zero point has 2 values"):
        ConvWeights(np.zeros((3, 1, 1, 1), np.int8), [0, 1], 1)


# ---------------------------------------------------------------------------------------------
# the saturation rule
# ---------------------------------------------------------------------------------------------
def test_saturation_bounds_rule():
    assert saturation_bounds(-128, 127, -128, 127) == (-128, 127)  # no activation: both ends count
    assert saturation_bounds(-128, 127, 0, 127) == (-NO_COUNT, 127)  # Relu narrows the low side
    assert saturation_bounds(0, 255, 0, 200) == (0, NO_COUNT)  # Relu6-like high clamp


def _conv_relu_model(zp: int, clip: tuple | None):
    """x (uint8, scale 1, zp 0) -> Conv 1x1 (weight +-1) -> Relu or Clip -> Q (scale 1, zero point zp)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.float32(1.0), "s"), numpy_helper.from_array(np.uint8(0), "z"),
             numpy_helper.from_array(np.int8([[[[1]]], [[[-1]]]]), "wq"),
             numpy_helper.from_array(np.float32(1.0), "ws"), numpy_helper.from_array(np.int8(0), "wz"),
             numpy_helper.from_array(np.float32(1.0), "ys"), numpy_helper.from_array(np.uint8(zp), "yz")]
    act = [helper.make_node("Relu", ["c"], ["r"], name="relu")] if clip is None else [
        helper.make_node("Clip", ["c", "cmin", "cmax"], ["r"], name="clip")]
    if clip is not None:
        inits += [numpy_helper.from_array(np.float32(clip[0]), "cmin"), numpy_helper.from_array(np.float32(clip[1]), "cmax")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="qx"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dqx"),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dqw"),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv"), *act,
             helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["yq"], name="qy"),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"], name="dqy")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 1, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("target", ["dsp-int8", "ort-cpu-avx2"])
def test_relu_clamped_values_are_not_saturation(target):
    """Conv outputs +x and -x for x in {0, 10, 200, 255}; output uint8 at scale 1.
    Relu, zero point 0: the negatives are the Relu's (not counted); nothing exceeds 255 -> 0.
    Relu, zero point 100: values above 155 exceed 255 (200, 255 -> 2 counted); negatives not counted.
    Clip(-50, 300), zero point 100: the Clip allows -50 (q = 50 >= 0: the low side is the Clip's) and
    300 (q = 400 > 255: the dtype clamps first) -> 200 and 255 count, -200 and -255 do not.
    Clip(-1000, 1000), zero point 0: both Clip bounds lie beyond uint8 -> -10, -200, -255 count."""
    import runtime

    x = np.float32([[[[0, 10, 200, 255]]]])
    for zp, clip, want in ((0, None, 0), (100, None, 2), (100, (-50.0, 300.0), 2), (0, (-1000.0, 1000.0), 3)):
        prog = runtime.load(_conv_relu_model(zp, clip), target)
        res = prog.run_with_details({"x": x})
        assert res.stats["conv"].saturation == want, (zp, clip)
