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

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime.encoding import Encoding
from runtime.errors import HwsimError, OverflowPolicyError
from runtime.kernels import mac, simd
from runtime.kernels.epilogue import make_epilogue
from runtime.kernels.mac import ConvWeights, conv_accumulate, conv_requantize, matmul_acc
from runtime.kernels.quantize import quantize_per_tensor, requantize_tensor
from runtime.kernels.requant import requantize_accumulator
from runtime.ops.common import NO_COUNT, saturation_bounds
from tests.reference_kernels import accumulator_ref, conv_ref, matmul_ref
from tests.runtime.test_fixedpoint import mbqm_ref
from tests.runtime.test_quantize import dequantize_ref, quantize_ref
from tests.runtime.test_requant import requantize_fixed_point_ref, requantize_float32_ref
from tests.strategies import (
    INT32_MAX, INT32_MIN, SHIFTS_BY_ROUNDING, _zero_points, conv_cases, float32_scales, int32s, int_tensors,
    multipliers, quant_scales, small_ints,
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


# ---------------------------------------------------------------------------------------------
# the AVX2 integer GEMM wired into the MAC paths (runtime/kernels/simd.py via runtime/kernels/mac.py)
# ---------------------------------------------------------------------------------------------
needs_avx2 = pytest.mark.skipif(not simd.available(), reason="host without AVX2 (or Numba not compiling for it)")


def _no_simd(monkeypatch):
    """simd.available() False, and its GEMMs raising if called anyway (a CPU without AVX2)."""
    monkeypatch.setattr(simd, "available", lambda: False)

    def refuse(*args, **kwargs):
        raise AssertionError("an AVX2 kernel ran although simd.available() is False")
    monkeypatch.setattr(simd, "gemm_u8s8", refuse)
    monkeypatch.setattr(simd, "gemm_exact", refuse)


class _Count:
    """Counts the calls of mac._simd_gemm (the AVX2 GEMM actually ran) while wrapped."""

    def __init__(self, monkeypatch):
        self.calls = 0
        inner = mac._simd_gemm

        def counted(*args, **kwargs):
            self.calls += 1
            return inner(*args, **kwargs)
        monkeypatch.setattr(mac, "_simd_gemm", counted)


@st.composite
def _group1_convs(draw):
    """A group-1 conv with several input channels, u8 x s8 full range (or s8 x s8), 1-D or 2-D, pads,
    strides, dilations, scalar or per-output-channel weight zero points, optional bias."""
    x_dt = draw(st.sampled_from(["uint8", "uint8", "int8"]))
    nd = draw(st.sampled_from([1, 2, 2]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    strides = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(2 * nd))
    spatial = tuple(draw(st.integers(max(1, (k - 1) * d + 1 - pb - pe), 9))
                    for k, d, pb, pe in zip(kernel, dil, pads[:nd], pads[nd:]))
    c, m, n = draw(st.integers(2, 9)), draw(st.integers(1, 20)), draw(st.integers(1, 3))
    zw = draw(st.one_of(_zero_points("int8"), _zero_points("int8", m)))
    bias = draw(st.one_of(st.none(), st.lists(st.integers(-(2**24), 2**24), min_size=m, max_size=m)))
    return dict(x=draw(int_tensors((n, c) + spatial, x_dt)), x_zero_point=draw(_zero_points(x_dt)),
                w=draw(int_tensors((m, c) + kernel, "int8")), w_zero_point=zw,
                bias=None if bias is None else np.array(bias, np.int32), strides=strides, pads=pads, dilations=dil)


def _conv_both(case, pair, monkeypatch, fused=None):
    """(simd result, fallback result, AVX2 GEMM calls) of conv_accumulate (or conv_requantize with the
    epilogue ``fused`` = (ep, out dtype)) on weights prepared at plan time for the input's dtype."""
    x, zx = case["x"], case["x_zero_point"]
    args = (case["bias"], case["strides"], case["pads"], case["dilations"], pair)

    def run():
        cw = ConvWeights(case["w"], case["w_zero_point"], 1, "hwc")
        info = np.iinfo(x.dtype)
        cw.prepare(info.min, info.max, zx, pair)
        if fused is None:
            return conv_accumulate(x, zx, cw, *args)
        return conv_requantize(x, zx, cw, *args, *fused)
    with monkeypatch.context() as mp:
        count = _Count(mp)
        fast = run()
    with monkeypatch.context() as mp:
        _no_simd(mp)
        slow = run()
    return fast, slow, count.calls


@needs_avx2
@settings(max_examples=40, deadline=None)
@given(_group1_convs(), st.booleans())
def test_simd_conv_equals_fallback_and_reference(case, pair):
    """conv_accumulate through the AVX2 GEMM (NHWC im2col, zero-point expansion, int32/int64 stores)
    == today's BLAS/pair-correction paths (simd unavailable) == conv_ref; pair saturation only for
    u8 inputs (the kernel's operand types), exact sums for both."""
    with pytest.MonkeyPatch.context() as mp:
        fast, slow, calls = _conv_both(case, pair, mp)
    ref = conv_ref(**case, group=1, pair_saturation=pair, pair_order="hwc")
    assert calls >= 1 or (pair and case["x"].dtype == np.int8)  # s8 inputs with pair saturation: not the kernel's
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(slow, ref)


@needs_avx2
@settings(max_examples=30, deadline=None)
@given(_group1_convs(), st.booleans(), st.sampled_from([(np.uint8, 0, 255), (np.int8, -128, 127)]),
       st.sampled_from([1e-5, 3e-4, 1e-3, 0.01]), st.integers(-20, 20))
def test_simd_conv_fused_epilogue_equals_fallback(case, pair, out, scale, zp):
    """conv_requantize through the AVX2 GEMM (wrapping int32 expansion, int32 GEMM result into the
    float32-lane epilogue) == the fallback's fused path: outputs and saturation counts."""
    dt, lo, hi = out
    m = case["w"].shape[0]
    scales = np.float32(scale) * np.linspace(0.5, 2, m).astype(np.float32)
    ep = make_epilogue(scales, zp, lo, hi, lo, hi)
    with pytest.MonkeyPatch.context() as mp:
        fast, slow, calls = _conv_both(case, pair, mp, (ep, dt))
    assert calls >= 1 or (pair and case["x"].dtype == np.int8)
    assert fast[0].dtype == dt and fast[1] == slow[1]
    np.testing.assert_array_equal(fast[0], slow[0])


@needs_avx2
@pytest.mark.parametrize("pair", [False, True])
@pytest.mark.parametrize("zw", [0, "per-channel"])
@pytest.mark.parametrize("bias_edge", ["max", "min", "past"])
def test_simd_conv_int32_bias_edges(pair, zw, bias_edge, monkeypatch):
    """Biases at the int32 edges: the constant bias - zx*sum(w) + K*zx*zw and S - zw*R wrap in int32
    while the accumulator does not (fused path); a bias pushing the bound past 2^31 takes the int64
    stores (the ShuffleNet layers whose bound exceeds int32 only through their bias)."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (2, 5, 6, 6)).astype(np.uint8)
    x[0, :, 0, :] = 255
    w = rng.integers(-128, 128, (6, 5, 3, 3)).astype(np.int8)
    w[0] = -128  # sum(w) very negative: -zx*sum(w) large and positive
    w[1] = 127
    zwv = 0 if zw == 0 else np.array([3, -4, 0, 1, 127, -128])
    zx = 251
    cw = ConvWeights(w, zwv, 1, "hwc")
    k = 5 * 9
    wc = cw.wmax
    headroom = k * 255 * wc + (k // 2 + 1) * 2 * 255 * 128 * pair
    edge = (1 << 31) - 1 - headroom - 1
    bias = np.full(6, edge if bias_edge == "max" else -edge, np.int64)
    if bias_edge == "past":
        bias[:] = (1 << 31) - 1
    ref = conv_ref(x, zx, w, zwv, bias, (1, 1), (1, 1, 1, 1), (1, 1), 1, pair, "hwc")
    cw.prepare(0, 255, zx, pair)
    count = _Count(monkeypatch)
    acc = conv_accumulate(x, zx, cw, bias, (1, 1), (1, 1, 1, 1), (1, 1), pair)
    assert acc.dtype == (np.int64 if bias_edge == "past" else np.int32)
    np.testing.assert_array_equal(acc, ref)
    ep = make_epilogue(np.full(6, 1e-7, np.float32), 3, -128, 127, -128, 127)
    fused = conv_requantize(x, zx, cw, bias, (1, 1), (1, 1, 1, 1), (1, 1), pair, ep, np.int8)
    if bias_edge == "past":
        assert fused is None  # the bound does not prove int32: the caller runs the general path
    else:
        want = np.clip(np.rint(ref.astype(np.float32) * np.float32(1e-7)) + 3, -128, 127)
        np.testing.assert_array_equal(fused[0], want)
    assert count.calls >= 1


@needs_avx2
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 70), st.integers(1, 40), st.sampled_from(["uint8", "int8"]),
       st.booleans(), st.integers(1, 3), st.data())
def test_simd_matmul_equals_fallback_and_reference(m, k, n, a_dt, pair, batch, data):
    """matmul_acc with a prepared B (simd.pack_b of B^T, as MatMulStep holds it): per-column B zero
    points, an A zero point, batched A, bias == today's paths == matmul_ref."""
    a = data.draw(int_tensors((batch, m, k), a_dt))
    b = data.draw(int_tensors((k, n), "int8"))
    za = data.draw(_zero_points(a_dt))
    zb = data.draw(st.one_of(_zero_points("int8"), _zero_points("int8", n)))
    bias = data.draw(st.one_of(st.none(), st.just(np.arange(n, dtype=np.int32) * 1000 - 7)))
    packed = simd.pack_b(np.ascontiguousarray(b.T))
    with pytest.MonkeyPatch.context() as mp:
        count = _Count(mp)
        fast = matmul_acc(a, za, b, zb, bias, pair, b_packed=packed)
    with pytest.MonkeyPatch.context() as mp:
        _no_simd(mp)
        slow = matmul_acc(a, za, b, zb, bias, pair, b_packed=packed)
    ref = matmul_ref(a, za, b, zb, bias, pair)
    bmax = max(-int(b.min()), int(b.max()))
    refused = [pair and int(ai.min()) < 0 and 2 * max(-int(ai.min()), int(ai.max())) * bmax > 32767 for ai in a]
    assert count.calls == batch - sum(refused)  # per 2-D product: s8 A with saturating pairs is not the kernel's
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(slow, ref)


def test_simd_mode_selection(monkeypatch):
    """Which kernel runs: pair for u8 x s8 (pair saturation, or no pair able to saturate), exact
    otherwise; none for operands beyond 8-bit A / int16 B, past the int32 bound, for s8 A with
    saturating pairs, for depthwise/grouped convs, unprepared weights, pair saturation in ``chw``
    order; and none at all without AVX2."""
    if simd.available():
        assert mac._simd_mode(0, 255, -128, 127, 100, True) == ("pair", np.uint8)
        assert mac._simd_mode(0, 255, -64, 64, 100, False) == ("pair", np.uint8)  # 2*255*64 < 32767
        assert mac._simd_mode(0, 255, -128, 127, 100, False) == ("exact", np.uint8)
        assert mac._simd_mode(-128, 127, -128, 127, 100, False) == ("exact", np.int8)
        assert mac._simd_mode(-128, 127, -128, 127, 100, True) is None
        assert mac._simd_mode(0, 300, -1, 1, 10, False) is None
        assert mac._simd_mode(0, 255, -200, 200, 10, False) == ("exact", np.uint8)
        assert mac._simd_mode(0, 255, -128, 127, 70000, True) is None  # K*255*128 >= 2^31
        w = np.ones((4, 3, 3, 3), np.int8) * 100
        cw = ConvWeights(w, 0, 1, "hwc")
        assert mac._conv_simd_mode(0, 255, 0, cw, True) is None  # not prepared
        cw.prepare(0, 255, 0, True)
        assert cw.simd and mac._conv_simd_mode(0, 255, 0, cw, True) == ("pair", np.uint8)
        chw = ConvWeights(w, 0, 1, "chw")
        chw.prepare(0, 255, 0, True)
        assert not chw.simd and mac._conv_simd_mode(0, 255, 0, chw, True, plan=True) is None
        assert mac._conv_simd_mode(0, 255, 0, chw, False, plan=True) == ("exact", np.uint8)
        for grouped in (ConvWeights(np.ones((4, 1, 3, 3), np.int8), 0, 4), ConvWeights(w[:, :1].repeat(2, 0), 0, 2)):
            assert mac._conv_simd_mode(0, 255, 0, grouped, True, plan=True) is None
    _no_simd(monkeypatch)
    assert mac._simd_mode(0, 255, -128, 127, 100, True) is None
    cw = ConvWeights(np.ones((4, 3, 3, 3), np.int8), 0, 1)
    cw.prepare(0, 255, 0, True)
    assert not cw.simd


def test_rows_nhwc_is_the_hwc_im2col():
    """The raw NHWC im2col (pixels x (kh, kw, c)), read from NCHW, against a numpy construction."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (2, 3, 5, 7)).astype(np.uint8)
    kh, kw, sh, sw, dh, dw, ph, pw, peh, pew = 3, 2, 2, 1, 1, 2, 1, 2, 0, 1
    oh = (5 + ph + peh - ((kh - 1) * dh + 1)) // sh + 1
    ow = (7 + pw + pew - ((kw - 1) * dw + 1)) // sw + 1
    rows = np.empty(2 * oh * ow * kh * kw * 3, np.uint8)
    mac._rows_nhwc(x, np.uint8(9), kh, kw, sh, sw, dh, dw, ph, pw, oh, ow, kh * kw * 3, rows)
    padded = np.full((2, 3, 5 + ph + peh + 4, 7 + pw + pew + 4), 9, np.uint8)
    padded[:, :, ph:ph + 5, pw:pw + 7] = x
    want = np.empty((2, oh, ow, kh, kw, 3), np.uint8)
    for i in range(kh):
        for j in range(kw):
            taps = padded[:, :, i * dh:i * dh + sh * oh:sh, j * dw:j * dw + sw * ow:sw]
            want[:, :, :, i, j, :] = taps.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(rows.reshape(want.shape), want)


def test_without_avx2_the_runtime_takes_todays_paths(monkeypatch):
    """simd unavailable (a CPU without AVX2): plan, run and every MAC step never call the AVX2 GEMM
    and give the same integers as with it."""
    import runtime
    from tests.onnx_models import quantize_with_ort, tiny_cnn

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 1, 16, 16)).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        path = quantize_with_ort(tiny_cnn(channels=8, size=16), x, Path(d) / "tiny.onnx", "qdq", True)
        with monkeypatch.context() as mp:
            count = _Count(mp)
            with_simd = runtime.load(path, "ort-cpu-avx2").run({"x": x})
        assert count.calls > 0 or not simd.available()
        _no_simd(monkeypatch)
        without = runtime.load(path, "ort-cpu-avx2").run({"x": x})
    for name in with_simd:
        np.testing.assert_array_equal(with_simd[name], without[name])
