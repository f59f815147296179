"""runtime.encoding: validation with clear messages, equality/hashing by value, the to_dict/from_dict
round trip, encodings from ranges (golden values, zero exact, symmetric zero points, strict ranges,
coverage of the range, the MIN_RANGE floor) and the bias scale.

Notation: ``s`` the stored float32 scale, ``z`` the zero point, ``qpos = 2^(bits-1) - 1``,
``u = 2^-24``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.dtypes import qtype
from runtime.encoding import (
    MIN_RANGE, Encoding, PerAxis, PerBlock, PerTensor, bias_encoding, encoding_from_range, encoding_from_tensor,
    granularity_from_dict,
)
from runtime.errors import DataError, EncodingError
from runtime.quantize import dequantize, quantize
from tests.strategies import encodings, range_encoding_args

F32_TINY = float(np.finfo(np.float32).tiny)


# ---------------------------------------------------------------------------------------------
# construction, validation, equality
# ---------------------------------------------------------------------------------------------
def test_normalization():
    e = Encoding(scale=[0.5], zero_point=np.int8([3]), dtype="uint8")
    assert e.scale.dtype == np.float32 and e.scale.shape == () and e.zero_point.dtype == np.int64
    assert e.dtype is qtype("uint8") and (e.qmin, e.qmax) == (0, 255) and e.symmetric is False
    assert e.granularity == PerTensor() and e.num_channels == 1 and e.is_per_tensor
    with pytest.raises(ValueError):
        e.scale[...] = 1.0  # read-only: frozen means frozen
    pa = Encoding(np.float32([1, 2, 3]), 0, "int8", PerAxis(0))  # a scalar zero point is broadcast
    assert pa.zero_point.tolist() == [0, 0, 0] and pa.num_channels == 3 and not pa.is_per_tensor
    pb = Encoding(np.ones((2, 3), np.float32), 0, "int4", PerBlock(-1, 4))
    assert pb.granularity == PerBlock(1, 4)  # per-block axis resolved against the scale's rank


@pytest.mark.parametrize("kwargs, message", [
    (dict(scale=0.0, zero_point=0, dtype="int8"), r"scale must be finite and > 0; found 0\.0"),
    (dict(scale=np.float32([1, np.nan]), zero_point=0, dtype="int8", granularity=PerAxis(0)),
     r"scale must be finite and > 0; found nan at index \(1,\) \(scale shape \(2,\)\)"),
    (dict(scale=-1.0, zero_point=0, dtype="int8"), "found -1.0"),
    (dict(scale=1e39, zero_point=0, dtype="int8"), "found inf"),
    (dict(scale=1.0, zero_point=300, dtype="uint8"),
     r"zero point 300 is outside the usable range \[0, 255\] of this uint8 encoding"),
    (dict(scale=1.0, zero_point=-128, dtype="int8", qmin=-127),
     r"zero point -128 is outside the usable range \[-127, 127\]"),
    (dict(scale=1.0, zero_point=0, dtype="int8", qmin=-200),
     r"\[qmin, qmax\] = \[-200, 127\] must satisfy qmin <= qmax inside int8 \[-128, 127\]"),
    (dict(scale=1.0, zero_point=0, dtype="int8", qmin=5, qmax=4), r"\[5, 4\] must satisfy qmin <= qmax"),
    (dict(scale=np.float32([1, 2]), zero_point=0, dtype="int8"),
     r"per-tensor encoding needs one scale; found .*\(2,\)"),
    (dict(scale=np.ones((2, 2), np.float32), zero_point=0, dtype="int8", granularity=PerAxis(0)),
     r"per-axis encoding \(axis 0\) needs a 1-D scale .* found scale shape \(2, 2\)"),
    (dict(scale=np.float32([1, 2]), zero_point=[0, 0, 0], dtype="int8", granularity=PerAxis(0)),
     r"zero point shape \(3,\) differs from scale shape \(2,\)"),
    (dict(scale=1.0, zero_point=0.5, dtype="int8"), "zero point must hold integers"),
    (dict(scale=1.0, zero_point=0, dtype="int7"), "unknown integer dtype 'int7'"),
    (dict(scale=1.0, zero_point=5, dtype="int8", symmetric=True), "symmetric int8 encoding has zero point 0"),
    (dict(scale=1.0, zero_point=5, dtype="uint8", symmetric=True), "has zero point 0 or 128"),
    (dict(scale=1.0, zero_point=1, dtype="int64"), "int64 encodings .* must have zero point 0"),
    (dict(scale=np.ones((2, 2), np.float32), zero_point=0, dtype="int8", granularity=PerBlock(2, 2)),
     r"per-block encoding: axis 2 is out of range for a 2-D tensor"),
    (dict(scale=1.0, zero_point=0, dtype="int8", symmetric="yes"), "symmetric must be a bool"),
    (dict(scale=1.0, zero_point=0, dtype="int8", granularity="per_tensor"), "granularity must be PerTensor"),
])
def test_invalid_encodings_name_expected_and_found(kwargs, message):
    with pytest.raises(EncodingError, match=message):
        Encoding(**kwargs)


def test_invalid_granularities():
    with pytest.raises(EncodingError, match="block_size must be a positive int, found 0"):
        PerBlock(0, 0)
    with pytest.raises(EncodingError, match="PerAxis.axis must be an int, found True"):
        PerAxis(True)


def test_equality_and_hash_by_value():
    a = Encoding(np.float32([0.1, 0.2]), [1, 2], "uint8", PerAxis(0))
    b = Encoding([0.1, 0.2], np.int32([1, 2]), qtype("uint8"), PerAxis(0))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Encoding(np.float32([0.1, 0.2]), [1, 3], "uint8", PerAxis(0))
    assert a != Encoding(np.float32([0.1, 0.2]), [1, 2], "uint8", PerAxis(-1))
    assert a != Encoding(np.float32([0.1, 0.2]), [1, 2], "uint8", PerAxis(0), qmin=1)
    assert a != Encoding(np.float32([0.1, 0.25]), [1, 2], "uint8", PerAxis(0))
    assert Encoding(1.0, 0, "int8") != Encoding(1.0, 0, "int8", symmetric=True)  # provenance counts
    assert a != "not an encoding"
    # same bytes, different shape
    assert Encoding(np.ones((1, 2), np.float32), 0, "int8", PerBlock(1, 2)) != \
        Encoding(np.ones((2, 1), np.float32), 0, "int8", PerBlock(1, 2))


@given(encodings())
def test_to_dict_from_dict_round_trip(enc_shape):
    """Exact through JSON text: float32 scales are written as the equal Python floats."""
    enc, _ = enc_shape
    d = json.loads(json.dumps(enc.to_dict()))
    back = Encoding.from_dict(d)
    assert back == enc and hash(back) == hash(enc)
    np.testing.assert_array_equal(back.scale.view(np.uint32), enc.scale.view(np.uint32))


def test_from_dict_rejects_malformed():
    d = Encoding(np.float32([0.5, 0.25]), [0, 1], "uint8", PerAxis(1)).to_dict()
    with pytest.raises(EncodingError, match=r"unknown keys \['offset'\]"):
        Encoding.from_dict({**d, "offset": 0})
    with pytest.raises(EncodingError, match=r"missing keys \['qmax'\]"):
        Encoding.from_dict({k: v for k, v in d.items() if k != "qmax"})
    with pytest.raises(EncodingError, match="version must be 1, found 2"):
        Encoding.from_dict({**d, "version": 2})
    with pytest.raises(EncodingError, match="'symmetric' must be true or false, found 'false'"):
        Encoding.from_dict({**d, "symmetric": "false"})
    with pytest.raises(EncodingError, match="'zero_point' must hold numbers"):
        Encoding.from_dict({**d, "zero_point": [True, 0]})
    with pytest.raises(EncodingError, match="'zero_point' must hold integers"):
        Encoding.from_dict({**d, "zero_point": [0.5, 0]})
    with pytest.raises(EncodingError, match="not a rectangular nested list"):
        Encoding.from_dict({**d, "scale": [[0.5], [0.5, 0.5]], "granularity": {"kind": "per_block", "axis": 0,
                                                                               "block_size": 2}})
    with pytest.raises(EncodingError, match=r"'per_axis' takes keys \['axis'\], found \['axis', 'block_size'\]"):
        granularity_from_dict({"kind": "per_axis", "axis": 0, "block_size": 2})
    with pytest.raises(EncodingError, match="'dtype' must be one of"):
        Encoding.from_dict({**d, "dtype": "float32"})


def test_broadcast_helpers():
    e = Encoding(np.float32([1, 2, 3]), [0, 1, 2], "int8", PerAxis(1))
    assert e.broadcast_shape(3) == (1, 3, 1)
    s, z = e.broadcast_params((2, 3, 4))
    assert s.shape == (1, 3, 1) and z.tolist() == [[[0], [1], [2]]]
    assert Encoding(1.0, 0, "int8").broadcast_shape(2) == (1, 1)
    blk = Encoding(np.float32([[1, 2], [3, 4]]), 0, "int8", PerBlock(1, 3))
    with pytest.raises(EncodingError, match="use broadcast_params"):
        blk.broadcast_shape(2)
    assert blk.broadcast_params((2, 5))[0].tolist() == [[1, 1, 1, 2, 2], [3, 3, 3, 4, 4]]
    with pytest.raises(EncodingError, match="axis 1 is out of range for a 1-D tensor"):
        e.broadcast_shape(1)


# ---------------------------------------------------------------------------------------------
# encodings from ranges: golden values
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lo, hi, dtype, scheme, scale, zp, qrange, out_dtype", [
    (-1.0, 1.0, "int8", "symmetric", 1 / 127, 0, (-128, 127), "int8"),
    (-1.0, 0.5, "int8", "strict_symmetric", 1 / 127, 0, (-127, 127), "int8"),
    (-7.0, 7.0, "int4", "strict_symmetric", 1.0, 0, (-7, 7), "int4"),
    (-1.0, 1.0, "int16", "symmetric", 1 / 32767, 0, (-32768, 32767), "int16"),
    (-1.0, 1.0, "int32", "symmetric", 1 / (2**31 - 1), 0, (-(2**31), 2**31 - 1), "int32"),
    (-1.0, 1.0, "uint8", "symmetric", 1 / 127, 128, (0, 255), "uint8"),       # midpoint zero point
    (-1.0, 1.0, "uint8", "strict_symmetric", 1 / 127, 128, (1, 255), "uint8"),
    (-1.0, 1.0, "uint4", "symmetric", 1 / 7, 8, (0, 15), "uint4"),
    (0.0, 255.0, "int8", "unsigned_symmetric", 1.0, 0, (0, 255), "uint8"),    # switches to unsigned
    (-1.0, 254.0, "int8", "unsigned_symmetric", 254 / 127, 0, (-128, 127), "int8"),
    (0.0, 15.0, "int4", "unsigned_symmetric", 1.0, 0, (0, 15), "uint4"),
    (0.0, 255.0, "uint8", "asymmetric", 1.0, 0, (0, 255), "uint8"),
    (-128.0, 127.0, "int8", "asymmetric", 1.0, 0, (-128, 127), "int8"),
    (-127.5, 127.5, "uint8", "asymmetric", 1.0, 128, (0, 255), "uint8"),     # zero-point tie -> even
    (-126.5, 128.5, "uint8", "asymmetric", 1.0, 126, (0, 255), "uint8"),     # zero-point tie -> even
    (-1.0, 3.0, "uint8", "asymmetric", 4 / 255, 64, (0, 255), "uint8"),
    (2.0, 5.0, "uint8", "asymmetric", 5 / 255, 0, (0, 255), "uint8"),        # widened to include 0
    (-5.0, -2.0, "int8", "asymmetric", 5 / 255, 127, (-128, 127), "int8"),
    (0.0, 0.0, "int8", "asymmetric", MIN_RANGE / 255, -128, (-128, 127), "int8"),  # the floor
    (0.0, 0.0, "int8", "symmetric", MIN_RANGE / 2 / 127, 0, (-128, 127), "int8"),
    (0.0, 0.0, "int8", "unsigned_symmetric", MIN_RANGE / 255, 0, (0, 255), "uint8"),
])
def test_golden_encodings(lo, hi, dtype, scheme, scale, zp, qrange, out_dtype):
    e = encoding_from_range(lo, hi, dtype, scheme)
    assert e.scale == np.float32(scale)
    assert int(e.zero_point) == zp and (e.qmin, e.qmax) == qrange and e.dtype.name == out_dtype
    assert e.symmetric == (scheme != "asymmetric")


def test_per_axis_and_per_block_from_range():
    e = encoding_from_range([-127.5, 0.0, -1.0], [127.5, 255.0, 1.0], "int8", "asymmetric", PerAxis(0))
    assert e.granularity == PerAxis(0) and e.scale.tolist() == [1.0, 1.0, np.float32(2 / 255)]
    # -128 - round(-127.5) = 0 (tie to even); -128 - 0; -128 - round(-127.49999246) = -1 (float32 scale)
    assert e.zero_point.tolist() == [0, -128, -1]
    b = encoding_from_range(-np.ones((2, 3)), np.ones((2, 3)), "int4", "symmetric", PerBlock(1, 4))
    assert b.scale.shape == (2, 3) and np.all(b.scale == np.float32(1 / 7))
    # unsigned_symmetric switches the whole encoding only if every channel is non-negative
    assert encoding_from_range([0.0, 0.0], [1.0, 2.0], "int8", "unsigned_symmetric", PerAxis(0)).dtype.name == "uint8"
    assert encoding_from_range([0.0, -1.0], [1.0, 2.0], "int8", "unsigned_symmetric", PerAxis(0)).dtype.name == "int8"


def test_from_range_errors():
    with pytest.raises(EncodingError, match=r"min must be <= max, found min 2\.0 > max 1\.0"):
        encoding_from_range(2.0, 1.0, "int8", "asymmetric")
    with pytest.raises(EncodingError, match="min must be finite"):
        encoding_from_range(np.nan, 1.0, "int8", "asymmetric")
    with pytest.raises(EncodingError, match="max must be finite"):
        encoding_from_range(0.0, np.inf, "int8", "symmetric")
    with pytest.raises(EncodingError, match="unknown scheme 'tf_enhanced'"):
        encoding_from_range(0.0, 1.0, "int8", "tf_enhanced")
    with pytest.raises(EncodingError, match=r"4, 8, 16 or 32 bit; found int64"):
        encoding_from_range(0.0, 1.0, "int64", "symmetric")
    with pytest.raises(EncodingError, match=r"per-tensor encoding takes one min and max; found arrays of shape \(2,\)"):
        encoding_from_range([0.0, 1.0], [1.0, 2.0], "int8", "symmetric")
    with pytest.raises(EncodingError, match="too wide: its scale overflows float32"):
        encoding_from_range(-1e40, 1e40, "int4", "asymmetric")


# ---------------------------------------------------------------------------------------------
# encodings from ranges: properties
# ---------------------------------------------------------------------------------------------
def _per_channel(e: Encoding) -> Encoding:
    """The same parameters laid out per axis over a 1-D tensor (one element per channel/block)."""
    if not e.scale.shape:
        return e
    return Encoding(e.scale.ravel(), e.zero_point.ravel(), e.dtype, PerAxis(0), e.qmin, e.qmax)


@given(range_encoding_args())
def test_zero_exact_and_scale_normal(args_shape):
    """Every scheme: quantize(+-0.0) == z and dequantize(z) == +0.0 for every channel/block, every
    scale a normal float32 (>= 2^-126), and a product of two scales still normal (the bias scale).
    (test_quantize checks the same on tensors laid out by each granularity.)"""
    args, _ = args_shape
    e = encoding_from_range(**args)
    assert np.all(e.scale >= F32_TINY)
    assert float(np.min(e.scale)) ** 2 >= F32_TINY
    p = _per_channel(e)
    zeros = np.zeros(p.scale.shape, np.float32)
    for x in (zeros, -zeros):
        np.testing.assert_array_equal(quantize(x, p, "half_to_even"), p.zero_point)
    np.testing.assert_array_equal(dequantize(p.zero_point, p).view(np.uint32), zeros.view(np.uint32))


@given(range_encoding_args())
def test_symmetric_zero_points_and_strict_ranges(args_shape):
    """Symmetric schemes: z = 0 on signed storage, 2^(bits-1) on unsigned storage with a negative
    minimum, 0 on the unsigned grid of unsigned_symmetric; strict ranges are [z - qpos, z + qpos]
    (exclude the dtype's qmin); asymmetric keeps the full dtype range."""
    args, _ = args_shape
    e = encoding_from_range(**args)
    t, scheme = e.dtype, args["scheme"]
    qpos = (1 << (t.bits - 1)) - 1
    if scheme == "asymmetric":
        assert (e.qmin, e.qmax) == (t.qmin, t.qmax) and not e.symmetric
        return
    assert e.symmetric
    unsigned_grid = scheme == "unsigned_symmetric" and np.all(args["min_val"] >= 0)
    if unsigned_grid:
        assert not t.signed and np.all(e.zero_point == 0) and (e.qmin, e.qmax) == (0, t.qmax)
        return
    assert t == qtype(args["dtype"])
    mid = 0 if t.signed else 1 << (t.bits - 1)
    assert np.all(e.zero_point == mid)
    if scheme == "strict_symmetric":
        assert (e.qmin, e.qmax) == (mid - qpos, mid + qpos) and e.qmin > t.qmin
    else:
        assert (e.qmin, e.qmax) == (t.qmin, t.qmax)


@given(range_encoding_args())
def test_encoding_covers_the_range(args_shape):
    """With the effective range (0 included, MIN_RANGE floor applied), in steps:
    - asymmetric: quantize(min) within 1 of qmin and quantize(max) within 1 of qmax (the zero point
      is rounded: a shift of at most 1/2 step, plus float32 roundings of the scale, of min/max and
      of the quotient: 3u (qmax - qmin) steps, < 0.02 for 16 bits);
    - symmetric/strict: quantize(+-max_abs) == z +- qpos exactly (|max_abs / s - qpos| <= 2u qpos < 1/2);
    - unsigned grid: quantize(max) == qmax exactly.
    For 32 bits the float32 errors are up to 3u * 2^32 = 768 steps: allowed 1 + (qmax - qmin) 2^-22."""
    args, _ = args_shape
    e = encoding_from_range(**args)
    p = _per_channel(e)
    mn, mx = np.ravel(args["min_val"]), np.ravel(args["max_val"])
    if not e.scale.shape:
        mn, mx = mn.reshape(()), mx.reshape(())
    t = e.dtype
    tol = 1 if t.bits <= 16 else 1 + (t.qmax - t.qmin) * 2.0**-22
    q = lambda v: quantize(np.asarray(v, np.float32), p, "half_to_even").astype(np.int64)  # noqa: E731
    scheme = args["scheme"]
    if scheme == "asymmetric":
        lo, hi = np.minimum(mn, 0.0), np.maximum(mx, 0.0)
        hi = np.where(hi - lo < MIN_RANGE, lo + MIN_RANGE, hi)
        assert np.all(np.abs(q(lo) - e.qmin) <= tol) and np.all(np.abs(q(hi) - e.qmax) <= tol)
    elif scheme == "unsigned_symmetric" and not t.signed and np.all(mn >= 0):
        top = np.maximum(mx, MIN_RANGE)
        assert np.all(np.abs(q(top) - e.qmax) <= tol - 1)
    else:
        qpos = (1 << (t.bits - 1)) - 1
        m = np.maximum(np.maximum(np.abs(mn), np.abs(mx)), MIN_RANGE / 2)
        z = p.zero_point
        assert np.all(np.abs(q(m) - (z + qpos)) <= tol - 1) and np.all(np.abs(q(-m) - (z - qpos)) <= tol - 1)


@given(st.sampled_from(["int4", "int8", "int16", "int32"]), st.sampled_from(["asymmetric", "symmetric",
                                                                           "strict_symmetric"]))
def test_constant_tensors_get_valid_encodings(dtype, scheme):
    """All-zero and tiny constant tensors: widened to MIN_RANGE, zero exact."""
    for c in (0.0, 1e-9, -1e-9):
        e = encoding_from_tensor(np.full((3, 4), c, np.float32), dtype, scheme, PerAxis(0))
        assert np.all(e.scale >= F32_TINY)
        assert np.all(e.scale.astype(np.float64) * (e.qmax - e.qmin) >= MIN_RANGE * 0.99)
        assert np.all(quantize(np.zeros((3, 4), np.float32), e, "half_to_even") == e.zero_point.reshape(3, 1))


def test_encoding_from_tensor():
    x = np.float32([[0.0, 1.0, -2.0], [4.0, 4.0, 8.0]])
    e = encoding_from_tensor(x, "uint8", "asymmetric")
    assert e == encoding_from_range(-2.0, 8.0, "uint8", "asymmetric")
    e = encoding_from_tensor(x, "int8", "asymmetric", PerAxis(-1))
    assert e == encoding_from_range([0.0, 1.0, -2.0], [4.0, 4.0, 8.0], "int8", "asymmetric", PerAxis(-1))
    e = encoding_from_tensor(x, "int8", "asymmetric", PerBlock(1, 2))
    assert e == encoding_from_range([[-0.0, -2.0], [4.0, 8.0]], [[1.0, -2.0], [4.0, 8.0]], "int8", "asymmetric",
                                    PerBlock(1, 2))
    with pytest.raises(DataError, match="has 1 NaN/Inf values"):
        encoding_from_tensor(np.float32([1, np.nan]), "int8", "symmetric")
    with pytest.raises(EncodingError, match="empty tensor"):
        encoding_from_tensor(np.zeros((0, 2), np.float32), "int8", "symmetric")


# ---------------------------------------------------------------------------------------------
# bias
# ---------------------------------------------------------------------------------------------
def _ort_bias_scale(input_scale, weight_scale, beta=1.0):
    """onnxruntime/quantization/base_quantizer.py, quantize_bias_static_impl: the scales are the
    float32 initializers read back as numpy arrays, multiplied as numpy arrays."""
    return np.asarray(input_scale, np.float32) * np.asarray(weight_scale, np.float32) * beta


_scales32 = st.floats(2.0**-20, 2.0**8, width=32)


@given(_scales32, st.one_of(_scales32, st.lists(_scales32, min_size=1, max_size=6)))
def test_bias_scale_is_the_float32_product(s_x, s_w):
    """scale = float32(s_x * s_w) in float32 = ONNX Runtime's quantize_static bias scale = the exact
    (float64) product rounded once to float32; zero point 0; per axis 0 iff the weights are per channel."""
    w = np.float32(s_w)
    e = bias_encoding(np.float32(s_x), w)
    np.testing.assert_array_equal(e.scale, _ort_bias_scale(np.float32(s_x), w))
    np.testing.assert_array_equal(e.scale, (np.float64(np.float32(s_x)) * np.asarray(w, np.float64)).astype(np.float32))
    assert e.dtype.name == "int32" and np.all(e.zero_point == 0) and e.symmetric
    assert e.granularity == (PerAxis(0) if isinstance(s_w, list) else PerTensor())


def test_bias_encoding_inputs():
    x = Encoding(0.5, 3, "uint8")
    w = Encoding(np.float32([0.25, 0.5]), 0, "int8", PerAxis(0), symmetric=True)
    e = bias_encoding(x, w, "int64")
    assert e.scale.tolist() == [0.125, 0.25] and e.dtype.name == "int64"
    with pytest.raises(EncodingError, match="bias encodings are int32 or int64, found int16"):
        bias_encoding(0.5, 0.5, "int16")
    with pytest.raises(EncodingError, match="underflows float32 normals"):
        bias_encoding(1e-30, 1e-20)
    with pytest.raises(EncodingError, match=r"weight scales must be a scalar or 1-D .* found shape \(2, 2\)"):
        bias_encoding(0.5, np.ones((2, 2)))
    with pytest.raises(EncodingError, match=r"input scale must be per tensor .* found shape \(2,\)"):
        bias_encoding([0.5, 0.5], 0.5)
