"""runtime.quantize: the Numba kernels == slow exact references (one element at a time, rational
rounding) bit for bit; properties with their math; golden vectors at .5 ties and both saturation
ends; validation; and bit equality with ONNX's reference evaluator and ONNX Runtime (``-m ort``).

Notation: ``s`` scale (float32), ``z`` zero point, ``u = 2^-24`` (float32 unit roundoff), ``v`` the
float32 quotient ``fl(x / s)``, ``r = round(v)``, ``q = clamp(r + z, qmin, qmax)``.
Exact comparisons (0 LSB): kernel vs reference, ours vs ONNX reference / ONNX Runtime.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.dtypes import qtype
from runtime.encoding import Encoding, PerAxis, PerBlock, PerTensor, encoding_from_range
from runtime.errors import DataError, EncodingError, HwsimError
from runtime.quantize import ROUNDINGS, dequantize, fake_quantize, quantize
from tests.strategies import QUANT_DTYPES, encodings, quantize_cases, range_encoding_args, rounding_modes


# ---------------------------------------------------------------------------------------------
# slow exact references
# ---------------------------------------------------------------------------------------------
def round_ref(v: float, rounding: str) -> int:
    """Round a finite float with exact rational arithmetic."""
    fv = Fraction(v)
    f = math.floor(fv)
    d = fv - f
    if d != Fraction(1, 2):
        return f + (1 if d > Fraction(1, 2) else 0)
    return {"half_to_even": f + (f % 2), "half_away_from_zero": f + 1 if f >= 0 else f,
            "half_up": f + 1, "half_down": f}[rounding]


def quantize_ref(x, enc: Encoding, rounding: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    s, z = (np.broadcast_to(a, x.shape) for a in enc.broadcast_params(x.shape))
    out = np.empty(x.shape, np.int64)
    for idx in np.ndindex(x.shape):
        with np.errstate(over="ignore"):
            v = float(np.float32(x[idx]) / np.float32(s[idx]))  # numpy float32 scalar division
        if math.isinf(v):
            out[idx] = enc.qmax if v > 0 else enc.qmin
        else:
            out[idx] = min(max(round_ref(v, rounding) + int(z[idx]), enc.qmin), enc.qmax)
    return out.astype(enc.dtype.numpy_dtype)


def dequantize_ref(q, enc: Encoding) -> np.ndarray:
    q = np.asarray(q)
    s, z = (np.broadcast_to(a, q.shape) for a in enc.broadcast_params(q.shape))
    out = np.empty(q.shape, np.float32)
    for idx in np.ndindex(q.shape):
        d = np.float32(int(q[idx]) - int(z[idx]))  # exact Python int, rounded once to float32
        out[idx] = np.float32(float(d) * float(s[idx]))  # float64 product of two float32 is exact
    return out


def bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.uint32)


# ---------------------------------------------------------------------------------------------
# kernel == reference, bit for bit
# ---------------------------------------------------------------------------------------------
@given(quantize_cases(), rounding_modes)
def test_quantize_kernel_equals_reference(case, rounding):
    enc, x = case
    q = quantize(x, enc, rounding)
    assert q.dtype == enc.dtype.numpy_dtype and q.shape == x.shape
    np.testing.assert_array_equal(q, quantize_ref(x, enc, rounding))


@given(encodings(), st.data())
def test_dequantize_kernel_equals_reference(enc_shape, data):
    from hypothesis.extra import numpy as hnp

    enc, shape = enc_shape
    q = data.draw(hnp.arrays(enc.dtype.numpy_dtype, shape, elements=st.integers(enc.dtype.qmin, enc.dtype.qmax)))
    y = dequantize(q, enc)
    assert y.dtype == np.float32 and y.shape == q.shape
    np.testing.assert_array_equal(bits(y), bits(dequantize_ref(q, enc)))


def test_kernel_divides_in_float32():
    """x / s rounded to float32 before rounding to an integer: 0.3 / 0.1 is exactly 3 in float32 but
    3.0000000447 in float64, and the float32 grid tie 1.5 * s is kept a tie."""
    e = Encoding(np.float32(0.1), 0, "int8")
    x = np.float32([0.3, 0.15])
    assert np.float32(0.3) / np.float32(0.1) == np.float32(3.0)
    np.testing.assert_array_equal(quantize(x, e, "half_to_even"), quantize_ref(x, e, "half_to_even"))


# ---------------------------------------------------------------------------------------------
# golden vectors: .5 ties in every mode, both saturation ends, int4 storage
# ---------------------------------------------------------------------------------------------
TIES = np.float32([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5])
GOLDEN = {
    "half_to_even": [0, 2, 2, 0, -2, -2, 4],
    "half_away_from_zero": [1, 2, 3, -1, -2, -3, 4],
    "half_up": [1, 2, 3, 0, -1, -2, 4],
    "half_down": [0, 1, 2, -1, -2, -3, 3],
}


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_golden_ties(rounding):
    e = Encoding(1.0, 0, "int8")
    np.testing.assert_array_equal(quantize(TIES, e, rounding), GOLDEN[rounding])
    # the same ties through a non-trivial scale and zero point: x = (k + .5) * 2^-3, zp 10
    e2 = Encoding(0.125, 10, "uint8")
    np.testing.assert_array_equal(quantize(TIES * np.float32(0.125), e2, rounding), np.array(GOLDEN[rounding]) + 10)


@pytest.mark.parametrize("name", QUANT_DTYPES)
def test_saturation_and_storage(name):
    t = qtype(name)
    zp = (t.qmin + t.qmax + 1) // 2
    e = Encoding(0.5, zp, t)
    x = np.float32([-np.inf, -1e30, -0.5 * 2.0**33, 0.0, 0.5 * 2.0**33, 1e30, np.inf])
    q = quantize(x, e, "half_to_even")
    assert q.dtype == t.numpy_dtype
    np.testing.assert_array_equal(q, [t.qmin, t.qmin, t.qmin, zp, t.qmax, t.qmax, t.qmax])


def test_int4_values_live_in_int8_arrays():
    q = quantize(np.float32([-100, -8, 7.49, 100]), Encoding(1.0, 0, "int4"), "half_to_even")
    assert q.dtype == np.int8 and q.tolist() == [-8, -8, 7, 7]
    q = quantize(np.float32([-1, 15.5, 100]), Encoding(1.0, 0, "uint4"), "half_to_even")
    assert q.dtype == np.uint8 and q.tolist() == [0, 15, 15]


def test_strict_range_saturates_at_narrow_bounds():
    e = encoding_from_range(-1.0, 1.0, "int8", "strict_symmetric")
    assert quantize(np.float32([-5, 5]), e, "half_to_even").tolist() == [-127, 127]


def test_layer_sized_per_channel_weight():
    """A [64, 32, 3, 3] conv weight, per output channel, symmetric int8: reference equality and the
    round-trip bound on a real-sized tensor (fixed seed)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 32, 3, 3)) * rng.uniform(0.01, 1, (64, 1, 1, 1))).astype(np.float32)
    e = encoding_from_range(w.min(axis=(1, 2, 3)), w.max(axis=(1, 2, 3)), "int8", "symmetric", PerAxis(0))
    q = quantize(w, e, "half_to_even")
    np.testing.assert_array_equal(q, quantize_ref(w, e, "half_to_even"))
    err = np.abs(fake_quantize(w, e, "half_to_even").astype(np.float64) - w) / e.scale.reshape(-1, 1, 1, 1)
    assert err.max() <= 0.5 + 1e-5


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------
@given(quantize_cases(specials=False), rounding_modes)
def test_round_trip_within_half_a_step(case, rounding):
    """Inside the range (v = fl(x/s) in [qmin - z, qmax - z], so no clamping):
        |dequantize(quantize(x)) - x| <= s/2 + u|x| + 3u s |q - z|
    from |r - v| <= 1/2, |v - x/s| <= u|x/s| (the division) and the two float32 roundings of
    dequantize (the conversion of q - z, exact below 2^24, and the product): each <= u |q - z| s."""
    enc, x = case
    s, z = (np.broadcast_to(a, x.shape) for a in enc.broadcast_params(x.shape))
    v = (x / s).astype(np.float64)
    inside = (v >= enc.qmin - z) & (v <= enc.qmax - z)
    q = quantize(x, enc, rounding).astype(np.int64)
    err = np.abs(dequantize(q, enc).astype(np.float64) - x)
    u = 2.0**-24
    s64 = s.astype(np.float64)
    bound = s64 / 2 + u * np.abs(x.astype(np.float64)) + 3 * u * s64 * np.abs(q - z)
    assert np.all(err[inside] <= bound[inside])


@given(encodings(), st.data(), rounding_modes)
def test_grid_values_unchanged(enc_shape, data, rounding):
    """x = dequantize(k) for k in [qmin, qmax] with n = k - z, |n| < 2^22: x = n s (1 + d1) (n is exact in
    float32, one rounding of the product), x / s = n (1 + d1), and its float32 rounding v is at most
    as far from x / s as n is, so |v - n| <= 2 |n| u < 1/2: quantize(x) = k in every rounding mode and
    fake_quantize(x) == x bit for bit. (int32 grids beyond 2^22 do not all survive the round trip:
    there the float32 quotient can land on n + 1/2.)"""
    from hypothesis.extra import numpy as hnp

    enc, shape = enc_shape
    s, z = (np.broadcast_to(a, shape) for a in enc.broadcast_params(shape))
    lo = np.maximum(enc.qmin, z - (2**22 - 1))
    hi = np.minimum(enc.qmax, z + (2**22 - 1))
    t = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1)))
    k = (lo + np.floor(t * (hi - lo + 1)).astype(np.int64)).clip(lo, hi)
    x = dequantize(k, enc)
    np.testing.assert_array_equal(quantize(x, enc, rounding), k.astype(enc.dtype.numpy_dtype))
    np.testing.assert_array_equal(bits(fake_quantize(x, enc, rounding)), bits(x))


@given(encodings(), rounding_modes)
def test_saturation_at_both_ends(enc_shape, rounding):
    """x below the range -> qmin, above -> qmax: 3 steps beyond each end plus a relative margin
    of 2^-20 (float32 holds 24 bits, so int32 ends need it), -inf, +inf and 3e38."""
    enc, shape = enc_shape
    s, z = (np.broadcast_to(a, shape).astype(np.float64) for a in enc.broadcast_params(shape))
    below = enc.qmin - z - 3 - np.abs(enc.qmin - z) * 2.0**-20
    above = enc.qmax - z + 3 + np.abs(enc.qmax - z) * 2.0**-20
    for far, expected in ((below * s, enc.qmin), (above * s, enc.qmax),
                          (np.full(shape, -np.inf), enc.qmin), (np.full(shape, 3e38), enc.qmax)):
        q = quantize(far.astype(np.float32), enc, rounding)
        assert np.all(q == expected)


@given(quantize_cases(), rounding_modes)
def test_monotonic(case, rounding):
    """x1 <= x2 in one channel -> q1 <= q2: division by s > 0, rounding and clamping are monotonic.
    Checked by sorting each tensor within one channel (per-tensor view of the encoding)."""
    enc, x = case
    flat = np.sort(x.ravel())
    e = Encoding(enc.scale.ravel()[0], enc.zero_point.ravel()[0], enc.dtype, PerTensor(), enc.qmin, enc.qmax)
    q = quantize(flat, e, rounding).astype(np.int64)
    assert np.all(np.diff(q) >= 0)


@given(range_encoding_args(), rounding_modes)
def test_zero_exact_for_every_scheme(args_shape, rounding):
    """quantize(+-0.0) == zero point and dequantize(zero point) == +0.0, for every scheme, dtype and
    granularity that encoding_from_range produces."""
    args, shape = args_shape
    enc = encoding_from_range(**args)
    zeros = np.zeros(shape, np.float32)
    _, z = enc.broadcast_params(shape)
    for x in (zeros, -zeros):
        np.testing.assert_array_equal(quantize(x, enc, rounding), np.broadcast_to(z, shape))
    y = dequantize(np.broadcast_to(z, shape).astype(enc.dtype.numpy_dtype), enc)
    np.testing.assert_array_equal(bits(y), bits(zeros))


def test_negative_axis_equals_positive_axis():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    sc, zp = np.float32([0.1, 0.2, 0.3]), [1, 0, -1]
    a = quantize(x, Encoding(sc, zp, "int8", PerAxis(1)), "half_to_even")
    b = quantize(x, Encoding(sc, zp, "int8", PerAxis(-2)), "half_to_even")
    np.testing.assert_array_equal(a, b)


def test_per_block_equals_repeated_per_element():
    """Blocks of 3 along axis 1 (last block ragged, 2 long) == each element with its block's scale."""
    x = (np.arange(10, dtype=np.float32).reshape(2, 5) - 4) * np.float32(0.3)
    sc = np.float32([[0.1, 0.5], [0.25, 1.0]])
    zp = np.array([[0, 3], [-2, 1]])
    enc = Encoding(sc, zp, "int8", PerBlock(1, 3))
    q = quantize(x, enc, "half_to_even")
    cols = [0, 0, 0, 1, 1]
    for r in range(2):
        for c in range(5):
            e = Encoding(sc[r, cols[c]], zp[r, cols[c]], "int8")
            assert q[r, c] == quantize(x[r, c], e, "half_to_even")


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def test_nan_raises_with_count():
    e = Encoding(1.0, 0, "int8")
    with pytest.raises(DataError, match="2 NaN value"):
        quantize(np.float32([np.nan, 1.0, np.nan]), e, "half_to_even")
    assert isinstance(DataError("x"), HwsimError)


def test_bad_arguments():
    e = Encoding(np.float32([1, 2]), 0, "int8", PerAxis(0))
    with pytest.raises(HwsimError, match="unknown rounding 'nearest'"):
        quantize(np.zeros(2, np.float32), e, "nearest")
    with pytest.raises(EncodingError, match=r"has 3 channels along axis 0, but the per-axis encoding has 2"):
        quantize(np.zeros(3, np.float32), e, "half_to_even")
    with pytest.raises(EncodingError, match="axis 0 is out of range for a 0-D tensor"):
        quantize(np.float32(1.0), e, "half_to_even")
    with pytest.raises(HwsimError, match="cannot dequantize an array of dtype float32"):
        dequantize(np.zeros(2, np.float32), e)
    with pytest.raises(HwsimError, match="cannot quantize an array of dtype <U1"):
        quantize(np.array(["a", "b"]), e, "half_to_even")
    blk = Encoding(np.float32([[1, 2]]), 0, "int4", PerBlock(1, 2))
    with pytest.raises(EncodingError, match=r"blocked by 2 along axis 1 needs a scale of shape \(1, 3\)"):
        quantize(np.zeros((1, 5), np.float32), blk, "half_to_even")


def test_float64_input_is_rounded_to_float32_first():
    """1 + 2^-30 rounds to 1.0 in float32; 1e40 becomes +inf and saturates."""
    e = Encoding(2.0, 0, "int16")
    assert quantize(np.float64([1 + 2.0**-30, 1e40]), e, "half_up").tolist() == [1, 32767]


# ---------------------------------------------------------------------------------------------
# ONNX reference evaluator and ONNX Runtime
# ---------------------------------------------------------------------------------------------
_ONNX_DTYPES = ("int4", "uint4", "int8", "uint8", "int16", "uint16")


def _elem(name: str) -> int:
    from onnx import TensorProto as TP

    return {"int4": TP.INT4, "uint4": TP.UINT4, "int8": TP.INT8, "uint8": TP.UINT8, "int16": TP.INT16,
            "uint16": TP.UINT16, "int32": TP.INT32}[name]


def _onnx_attrs(enc: Encoding, ndim: int) -> dict:
    g = enc.granularity
    if enc.scale.size == 1:
        return {}  # ONNX Runtime rejects block_size with a one-element scale; per tensor is the same
    if isinstance(g, PerAxis):
        return {"axis": g.axis}
    if isinstance(g, PerBlock):
        return {"axis": g.axis, "block_size": g.block_size}
    return {}


def _model(nodes, inputs, outputs, inits):
    import onnx
    from onnx import helper

    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    onnx.checker.check_model(m)
    return m


def _params(enc: Encoding, elem: int):
    from onnx import TensorProto as TP
    from onnx import helper

    shape = () if enc.scale.size == 1 else enc.scale.shape
    return [helper.make_tensor("s", TP.FLOAT, shape, enc.scale.ravel().tolist()),
            helper.make_tensor("z", elem, shape, enc.zero_point.ravel().tolist())]


def quantize_linear_model(enc: Encoding, shape, then_dequantize: bool = False):
    """QuantizeLinear (opset 21) with ``enc``'s parameters. ``then_dequantize``: followed by
    DequantizeLinear(scale 1, zero point 0), so int4 results come out as exact floats (ONNX Runtime's
    Python API cannot return int4 arrays)."""
    from onnx import TensorProto as TP
    from onnx import helper

    elem = _elem(enc.dtype.name)
    inits = _params(enc, elem)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **_onnx_attrs(enc, len(shape)))]
    out = helper.make_tensor_value_info("q", elem, shape)
    if then_dequantize:
        inits += [helper.make_tensor("one", TP.FLOAT, [], [1.0]), helper.make_tensor("z0", elem, [], [0])]
        nodes.append(helper.make_node("DequantizeLinear", ["q", "one", "z0"], ["y"]))
        out = helper.make_tensor_value_info("y", TP.FLOAT, shape)
    return _model(nodes, [helper.make_tensor_value_info("x", TP.FLOAT, shape)], [out], inits)


def dequantize_linear_model(enc: Encoding, q: np.ndarray):
    """DequantizeLinear (opset 21) of the constant ``q`` (an initializer, so int4 works too)."""
    from onnx import TensorProto as TP
    from onnx import helper

    elem = _elem(enc.dtype.name)
    inits = _params(enc, elem) + [helper.make_tensor("q", elem, q.shape, q.ravel().astype(np.int64).tolist())]
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **_onnx_attrs(enc, q.ndim))]
    return _model(nodes, [], [helper.make_tensor_value_info("y", TP.FLOAT, q.shape)], inits)


def _ort_session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no Q->DQ folding
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _nonempty(case):
    return case[1].size > 0


@settings(max_examples=50)
@given(quantize_cases(dtypes=_ONNX_DTYPES, specials=False, narrow=False).filter(_nonempty))
def test_quantize_equals_onnx_reference(case):
    """Finite inputs only: the reference casts rint(x / s) to int32 before clamping, so +-inf and
    |x / s| >= 2^31 are undefined there."""
    from onnx.reference import ReferenceEvaluator

    enc, x = case
    ref = ReferenceEvaluator(quantize_linear_model(enc, x.shape)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(quantize(x, enc, "half_to_even"), np.asarray(ref).astype(enc.dtype.numpy_dtype))


@settings(max_examples=50)
@given(encodings(dtypes=_ONNX_DTYPES, narrow=False), st.data())
def test_dequantize_equals_onnx_reference(enc_shape, data):
    """Up to 16 bits |q - z| < 2^17, so the reference's float32(q) - z is exact and equals ours."""
    from hypothesis.extra import numpy as hnp
    from onnx.reference import ReferenceEvaluator

    enc, shape = enc_shape
    if not math.prod(shape):
        return
    q = data.draw(hnp.arrays(enc.dtype.numpy_dtype, shape, elements=st.integers(enc.dtype.qmin, enc.dtype.qmax)))
    ref = ReferenceEvaluator(dequantize_linear_model(enc, q)).run(None, {})[0]
    np.testing.assert_array_equal(bits(dequantize(q, enc)), bits(ref))


@pytest.mark.ort
@settings(max_examples=40)
@given(quantize_cases(dtypes=_ONNX_DTYPES, narrow=False).filter(_nonempty))
def test_quantize_equals_onnxruntime(case):
    """ONNX Runtime 1.31 CPU QuantizeLinear == quantize(half_to_even), saturation at both ends and
    exact/near ties under non-power-of-two scales included: ONNX Runtime divides by the scale in
    float32 (a reciprocal multiplication would differ at near ties). Quotients beyond 2^30 (+-inf,
    1e30) are replaced by +-2^20 steps: see test_huge_quotient_divergence."""
    enc, x = case
    s = np.broadcast_to(enc.broadcast_params(x.shape)[0], x.shape)
    with np.errstate(over="ignore"):  # |x / s| >= 2^30 -> +-2^20 s (still saturating): test_huge_quotient_divergence
        x = np.where(np.abs(x / s) >= 2.0**30, np.sign(x) * np.float32(2.0**20) * s, x).astype(np.float32)
    out = _ort_session(quantize_linear_model(enc, x.shape, then_dequantize=True)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(quantize(x, enc, "half_to_even"), out.astype(enc.dtype.numpy_dtype))


@pytest.mark.ort
@pytest.mark.parametrize("name", ["int4", "uint4", "int8", "uint16"])
def test_huge_quotient_divergence(name):
    """Documented divergence (ONNX Runtime 1.31.1, measured): its non-vectorized QuantizeLinear paths
    behave as ``clamp(wrap32(int32(rint(x / s)) + z))`` with out-of-range conversions giving
    INT32_MIN: for z >= 0, +inf (or x / s >= 2^31) gives qmin; for z < 0 the sum wraps and -inf
    gives qmax. Paths seen:
    int4/uint4 per axis and the last element of an odd-length per-tensor input; blocked quantization
    along a non-last axis for every dtype. Per-tensor/per-axis 8/16-bit, even-length per-tensor int4
    and blocking along the last axis saturate correctly. We saturate everywhere."""
    t = qtype(name)
    for z in ((0, t.qmin + 1) if t.signed else (0, 3)):
        cases = [(Encoding(np.ones((1, 2), np.float32), z, t, PerBlock(0, 1)), (1, 2))]  # blocked, non-last axis
        if t.bits == 4:
            cases += [(Encoding(1.0, z, t), (3,)), (Encoding(np.ones(2, np.float32), z, t, PerAxis(0)), (2,))]
        for enc, shape in cases:
            for v in (np.inf, -np.inf):
                x = np.full(shape, v, np.float32)
                out = _ort_session(quantize_linear_model(enc, shape, then_dequantize=True)).run(None, {"x": x})[0]
                # INT32_MIN + z: stays negative (-> qmin) for z >= 0, wraps to positive (-> qmax) for z < 0
                assert out.ravel()[-1] == (t.qmax if z < 0 else t.qmin)
                assert np.all(quantize(x, enc, "half_to_even") == (t.qmax if v > 0 else t.qmin))


@pytest.mark.ort
@pytest.mark.parametrize("name", ["int8", "uint8", "int16", "uint16"])
def test_quantize_equals_onnxruntime_near_ties_long_vectors(name):
    """4099 values at and one float32 ulp around (k + .5) * s for scales that are not powers of two,
    so the vectorized path is exercised too; fixed seed."""
    rng = np.random.default_rng(7)
    t = qtype(name)
    zp = (t.qmin + t.qmax + 1) // 2 - 3
    for s in (np.float32(0.0123), np.float32(0.7), np.float32(0.1)):
        k = rng.integers(-100, 100, 4099)
        x = ((k + 0.5) * np.float64(s)).astype(np.float32)
        nudge = rng.integers(-1, 2, x.size)
        x = np.where(nudge > 0, np.nextafter(x, np.float32(np.inf)),
                     np.where(nudge < 0, np.nextafter(x, np.float32(-np.inf)), x)).astype(np.float32)
        enc = Encoding(s, zp, t)
        out = _ort_session(quantize_linear_model(enc, x.shape)).run(None, {"x": x})[0]
        np.testing.assert_array_equal(quantize(x, enc, "half_to_even"), out)


@pytest.mark.ort
@settings(max_examples=40)
@given(encodings(dtypes=_ONNX_DTYPES + ("int32",), narrow=False), st.data())
def test_dequantize_equals_onnxruntime(enc_shape, data):
    """ONNX Runtime DequantizeLinear == dequantize, bit for bit, including int32 beyond 2^24 (both
    subtract in integers, convert once, multiply in float32) as long as q - z does not overflow int32."""
    from hypothesis.extra import numpy as hnp

    enc, shape = enc_shape
    if not math.prod(shape):
        return
    q = data.draw(hnp.arrays(enc.dtype.numpy_dtype, shape, elements=st.integers(enc.dtype.qmin, enc.dtype.qmax)))
    diff = q.astype(np.int64) - np.broadcast_to(enc.broadcast_params(shape)[1], shape)
    if enc.dtype.name == "int32" and np.any((diff < -(2**31)) | (diff >= 2**31)):
        return  # ONNX Runtime wraps there: test_int32_dequantize_overflow_divergence
    out = _ort_session(dequantize_linear_model(enc, q)).run(None, {})[0]
    np.testing.assert_array_equal(bits(dequantize(q, enc)), bits(out))


@pytest.mark.ort
def test_int32_dequantize_overflow_divergence():
    """Documented divergence: ONNX Runtime computes q - z in int32 and wraps; we subtract exactly.
    q = -2^31, z = 5: ONNX Runtime gives +(2^31 - 5) * s, we give -(2^31 + 5) * s."""
    enc = Encoding(np.float32(0.37), 5, "int32")
    q = np.int32([-(2**31), 1000])
    out = _ort_session(dequantize_linear_model(enc, q)).run(None, {})[0]
    ours = dequantize(q, enc)
    assert out[1] == ours[1]
    assert out[0] == np.float32(np.float32(2**31 - 5) * np.float32(0.37))
    assert ours[0] == np.float32(np.float32(-(2**31) - 5) * np.float32(0.37))
