"""AIMET encodings files (runtime/aimet.py): the published formats 0.6.1, 1.0.0, 2.0.0 <-> Encoding.

Round trips are exact (float32 scales survive JSON text); what a version cannot say is stated per
property: 0.6.1/1.0.0 keep no signedness for asymmetric grids (compare after ``with_storage``) and no
channel axis (``with_axis``); 2.0.0 keeps no symmetry flag or narrow range.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.aimet import (EncodingsFile, FlatBlocks, read_encodings, to_dict, with_axis, with_storage,
                           write_encodings)
from runtime.dtypes import qtype, qtype_for
from runtime.encoding import Encoding, PerAxis, PerBlock, PerTensor, encoding_from_range
from runtime.errors import EncodingError

# ---------------------------------------------------------------------------------------------
# strategies (local: drawn encodings are valid by construction)
# ---------------------------------------------------------------------------------------------
scales32 = st.floats(min_value=2.0**-20, max_value=1024.0, allow_nan=False, width=32)


@st.composite
def encodings(draw, bits=(4, 8, 16, 32), layouts=("tensor", "channel"), schemes=("asym", "sym", "strict", "usym"),
              signed=(True, False)):
    """(Encoding, weight shape or None) covering per tensor/channel/block, the four AIMET schemes,
    signed and unsigned storage."""
    b = draw(st.sampled_from(bits))
    sgn = draw(st.sampled_from(signed))
    scheme = draw(st.sampled_from(schemes))
    layout = draw(st.sampled_from(layouts))
    if b == 32 and scheme != "sym":
        sgn = True if scheme != "asym" else sgn
    if scheme == "usym":
        sgn = False
    t = qtype_for(b, sgn)
    if layout == "tensor":
        shape, gran, wshape = (), PerTensor(), None
    elif layout == "channel":
        c = draw(st.integers(2, 5))
        shape, gran, wshape = (c,), PerAxis(0), None
    else:  # per block: a 2-D weight, blocked along its inputs (Gemm transB) or its rows (MatMul)
        c, n, bs = draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.sampled_from([2, 4]))
        nb = -(-n // bs)
        if draw(st.booleans()):
            shape, gran, wshape = (c, nb), PerBlock(1, bs), ((c, n), 0, 1)
        else:
            shape, gran, wshape = (nb, c), PerBlock(0, bs), ((n, c), 1, 0)
    size = int(np.prod(shape)) if shape else 1
    scale = np.float32(draw(st.lists(scales32, min_size=size, max_size=size))).reshape(shape)
    half = 1 << (b - 1)
    if scheme == "asym":
        zp = np.asarray(draw(st.lists(st.integers(t.qmin, t.qmax), min_size=size, max_size=size)), np.int64).reshape(shape)
        return Encoding(scale, zp, t, gran, symmetric=False), wshape
    centre = 0 if sgn else half
    if scheme == "sym":
        return Encoding(scale, centre, t, gran, symmetric=True), wshape
    if scheme == "strict":
        return Encoding(scale, centre, t, gran, centre - (half - 1), centre + half - 1, symmetric=True), wshape
    return Encoding(scale, 0, t, gran, symmetric=True), wshape  # unsigned symmetric


def _roundtrip(enc: Encoding, version: str, kind: str = "param") -> object:
    f = EncodingsFile(activations={"t": enc} if kind == "activation" else {},
                      params={"t": enc} if kind == "param" else {})
    text = json.dumps(to_dict(f, version))  # through JSON text, as a file would
    back = read_encodings(json.loads(text))
    return back.all()["t"]


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------
@given(encodings(layouts=("tensor", "channel")), st.sampled_from(["0.6.1", "1.0.0"]))
def test_roundtrip_legacy_versions_same_grid(drawn, version):
    """0.6.1/1.0.0: the same grid comes back; stored back in the original dtype it is equal."""
    enc, _ = drawn
    back = _roundtrip(enc, version)
    assert isinstance(back, Encoding)
    assert with_storage(with_axis(back, 0), enc.dtype) == enc
    assert back.dtype.bits == enc.dtype.bits
    # AIMET thinks unsigned: asymmetric grids come back unsigned, symmetric centred ones signed
    if not enc.symmetric:
        assert not back.dtype.signed and not back.symmetric


@given(encodings(layouts=("tensor", "channel"), schemes=("sym", "strict"), signed=(True,)))
def test_roundtrip_natural_storage_is_exact(drawn):
    enc, _ = drawn
    assert _roundtrip(enc, "1.0.0") == enc
    assert _roundtrip(enc, "0.6.1", "activation") == enc


@given(encodings(bits=(4, 8, 16), layouts=("block",)))
def test_roundtrip_per_block_1_0_0(drawn):
    """1.0.0 stores blocks flat; the weight's shape and axes restore the ONNX blocked layout."""
    enc, (wshape, ch, blk) = drawn
    back = _roundtrip(enc, "1.0.0")
    assert isinstance(back, FlatBlocks)
    assert with_storage(back.to_encoding(wshape, ch, blk), enc.dtype) == enc


@given(encodings(bits=(4, 8, 16, 32), layouts=("tensor", "channel", "block")))
def test_roundtrip_2_0_0_keeps_what_quantize_linear_needs(drawn):
    """2.0.0 keeps dtype, granularity (with its axis), scales and zero points exactly; symmetric is
    inferred (signed with zero point 0) and the range is the dtype's."""
    enc, _ = drawn
    if enc.dtype.name == "uint32":
        with pytest.raises(EncodingError, match="output_dtype uint32"):
            _roundtrip(enc, "2.0.0")
        return
    back = _roundtrip(enc, "2.0.0")
    sym = enc.dtype.signed and bool(np.all(enc.zero_point == 0))
    assert back == Encoding(enc.scale, enc.zero_point, enc.dtype, enc.granularity, symmetric=sym)


@given(encodings(bits=(8,), layouts=("channel",)), st.integers(0, 3))
def test_2_0_0_keeps_the_axis(drawn, axis):
    enc = with_axis(drawn[0], axis)
    assert _roundtrip(enc, "2.0.0").granularity == PerAxis(axis)


def test_0_6_1_writes_booleans_as_strings_and_1_0_0_as_bools(tmp_path):
    e = encoding_from_range(-1.0, 1.0, "int8", "symmetric")
    f = EncodingsFile({"a": encoding_from_range(-1.0, 3.0, "uint8", "asymmetric")}, {"w": e},
                      quantizer_args={"is_symmetric": True, "per_channel_quantization": False, "param_bitwidth": 8})
    d = to_dict(f, "0.6.1")
    assert d["param_encodings"]["w"][0]["is_symmetric"] == "True"
    assert d["activation_encodings"]["a"][0]["is_symmetric"] == "False"
    assert d["quantizer_args"]["is_symmetric"] == "True" and d["quantizer_args"]["param_bitwidth"] == 8
    back = read_encodings(d)
    d1 = to_dict(back, "1.0.0")
    assert d1["param_encodings"][0]["is_sym"] is True and d1["quantizer_args"]["per_channel_quantization"] is False


# ---------------------------------------------------------------------------------------------
# AIMET facts at the boundary
# ---------------------------------------------------------------------------------------------
def _entry(**kw):
    d = {"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "max": 1.0, "min": 0.0, "offset": 0, "scale": 0.1}
    d.update(kw)
    return d


def test_symmetric_int8_is_offset_minus_128():
    s = 0.01
    f = read_encodings({"version": "0.6.1", "activation_encodings": {}, "param_encodings": {
        "w": [_entry(is_symmetric="True", offset=-128, min=-128 * s, max=127 * s, scale=s)]}})
    w = f.params["w"]
    assert (str(w.dtype), int(w.zero_point), w.symmetric, w.qmin, w.qmax) == ("int8", 0, True, -128, 127)
    d = to_dict(f, "0.6.1")["param_encodings"]["w"][0]
    assert d["offset"] == -128 and d["min"] == pytest.approx(-128 * s) and d["max"] == pytest.approx(127 * s)


def test_unsigned_asymmetric_zero_point_3_is_offset_minus_3():
    e = Encoding(0.5, 3, "uint8")
    d = to_dict(EncodingsFile({"a": e}, {}), "1.0.0")["activation_encodings"][0]
    assert (d["offset"], d["is_sym"], d["bw"], d["enc_type"], d["dtype"]) == ([-3], False, 8, "PER_TENSOR", "INT")
    assert read_encodings(to_dict(EncodingsFile({"a": e}, {}), "1.0.0")).activations["a"] == e
    # a signed asymmetric grid with zero point 3 is the unsigned one with zero point 131
    d = to_dict(EncodingsFile({"a": Encoding(0.5, 3, "int8")}, {}), "1.0.0")["activation_encodings"][0]
    assert d["offset"] == [-131]


def test_strict_and_unsigned_symmetric_offsets():
    strict = encoding_from_range(-1.0, 1.0, "int8", "strict_symmetric")
    usym = encoding_from_range(0.0, 2.0, "int8", "unsigned_symmetric")
    d = to_dict(EncodingsFile({"s": strict, "u": usym}, {}), "0.6.1")["activation_encodings"]
    assert d["s"][0]["offset"] == -127 and d["u"][0]["offset"] == 0
    assert d["s"][0]["max"] == pytest.approx(127 * float(strict.scale))
    back = read_encodings(to_dict(EncodingsFile({"s": strict, "u": usym}, {}), "0.6.1")).activations
    assert back["s"] == strict and back["u"] == usym


def test_mixed_unsigned_symmetric_channels():
    """AIMET per-channel unsigned symmetric: channels with min >= 0 get offset 0, others -128."""
    f = read_encodings({"version": "1.0.0", "activation_encodings": [], "param_encodings": [
        {"name": "w", "dtype": "INT", "enc_type": "PER_CHANNEL", "bw": 8, "is_sym": True, "scale": [0.1, 0.2],
         "offset": [0, -128]}]})
    w = f.params["w"]
    assert str(w.dtype) == "uint8" and w.zero_point.tolist() == [0, 128] and not w.symmetric
    assert isinstance(w.granularity, PerAxis) and f.axes_known is False


def test_bias_int32():
    e = Encoding(np.float32([1e-4, 2e-4]), 0, "int32", PerAxis(0), symmetric=True)
    d = to_dict(EncodingsFile({}, {"b": e}), "1.0.0")["param_encodings"][0]
    assert d["bw"] == 32 and d["offset"] == [-(2**31)] * 2 and d["is_sym"] is True
    with pytest.raises(EncodingError, match="4 to 32-bit"):
        to_dict(EncodingsFile({}, {"b": Encoding(1e-4, 0, "int64", symmetric=True)}), "1.0.0")


def test_lpbq_1_0_0_block_scale_is_channel_scale_times_integer_scale():
    f = read_encodings({"version": "1.0.0", "activation_encodings": [], "param_encodings": [
        {"name": "w", "dtype": "INT", "enc_type": "LPBQ", "bw": 8, "compressed_bw": 4, "is_sym": True,
         "scale": [0.5, 0.25], "offset": [-128, -128], "per_block_int_scale": [1, 2, 3, 4], "block_size": 4}]})
    fb = f.params["w"]
    assert isinstance(fb, FlatBlocks) and str(fb.dtype) == "int4"
    e = fb.to_encoding((2, 8), 0, 1)
    assert e.scale.tolist() == [[0.5, 1.0], [0.75, 1.0]] and e.granularity == PerBlock(1, 4)


def test_flat_blocks_aimet_conv_layout_repeats_over_the_kernel():
    fb = FlatBlocks(np.float32([1, 2, 3, 4]), np.zeros(4, np.int64), qtype("int8"), 2, -128, 127, True)
    e = fb.to_encoding((2, 4, 3, 3), 0, 1)  # [O=2, I=4, 3, 3], blocks of 2 along I
    assert e.scale.shape == (2, 2, 3, 3) and e.scale[1, 0].tolist() == [[3.0] * 3] * 3
    with pytest.raises(EncodingError, match="expected 4 .*or 36"):
        FlatBlocks(np.float32([1, 2, 3]), np.zeros(3, np.int64), qtype("int8"), 2, -128, 127, True).to_encoding(
            (2, 4, 3, 3), 0, 1, "weight 'w'")


def test_2_0_0_lpbq_and_2_1_0_meta_scale():
    d = {"version": "2.0.0", "encodings": [
        {"name": "w", "output_dtype": "int4", "per_block_int_scale": [[1, 2], [3, 4]],
         "per_channel_float_scale": [[0.5], [0.25]], "axis": 1, "block_size": 16},
        {"name": "x", "output_dtype": "uint8", "y_scale": 0.02, "y_zero_point": 41}]}
    f = read_encodings(d)
    assert f.unsplit["w"].scale.tolist() == [[0.5, 1.0], [0.75, 1.0]]
    assert f.unsplit["x"] == Encoding(0.02, 41, "uint8")
    split = f.split({"w"})
    assert set(split.params) == {"w"} and set(split.activations) == {"x"} and not split.unsplit
    meta = read_encodings({"version": "2.1.0", "encodings": [
        {"name": "w", "output_dtype": "int4", "axis": 1, "block_size": 32,
         "y_scale": {"x": [[3, 5], [11, 9]], "x_scale": [0.5, 0.25], "axis": 0}}]}).unsplit["w"]
    assert meta.scale.tolist() == [[1.5, 2.5], [2.75, 2.25]]


def test_2_0_0_unsplit_cannot_be_written_as_1_0_0_until_split():
    f = read_encodings({"version": "2.0.0", "encodings": [{"name": "x", "output_dtype": "int8", "y_scale": 0.1}]})
    with pytest.raises(EncodingError, match="must first be split"):
        to_dict(f, "1.0.0")
    assert to_dict(f.split(set()), "1.0.0")["activation_encodings"][0]["offset"] == [-128]


def test_float_entries_kept(tmp_path):
    d = {"version": "0.6.1", "activation_encodings": {"h": [{"bitwidth": 16, "dtype": "float"}]}, "param_encodings": {}}
    f = read_encodings(d)
    assert f.floats == {"h": ("activation", 16)} and not f.activations
    assert to_dict(f, "1.0.0")["activation_encodings"] == [{"name": "h", "dtype": "FLOAT", "enc_type": "PER_TENSOR",
                                                            "bw": 16}]
    assert to_dict(f, "0.6.1")["activation_encodings"] == d["activation_encodings"]
    assert to_dict(f, "2.0.0")["encodings"] == []


def test_write_encodings_is_atomic_and_reads_back(tmp_path):
    enc = EncodingsFile({"x": encoding_from_range(-1, 2, "uint8", "asymmetric")},
                        {"w": encoding_from_range(np.float32([-1, -2]), np.float32([1, 2]), "int8", "symmetric",
                                                  PerAxis(0))}, excluded=["fc"])
    for v in ("0.6.1", "1.0.0", "2.0.0"):
        p = write_encodings(tmp_path / f"e{v}.encodings", enc, v)
        back = read_encodings(p)
        assert back.version == v and back.all()["x"] == enc.activations["x"]
        assert back.all()["w"] == enc.params["w"]
    assert read_encodings(tmp_path / "e1.0.0.encodings").excluded == ["fc"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_with_storage_and_with_axis():
    e = Encoding(np.float32([0.1, 0.2]), [0, 200], "uint8", PerAxis(0))
    s = with_storage(e, "int8")
    assert s.zero_point.tolist() == [-128, 72] and (s.qmin, s.qmax) == (-128, 127)
    assert with_storage(s, "uint8") == e
    with pytest.raises(EncodingError, match="widths differ"):
        with_storage(e, "int16")
    assert with_axis(e, 1).granularity == PerAxis(1) and with_axis(Encoding(0.1, 0, "int8"), 3).is_per_tensor


# ---------------------------------------------------------------------------------------------
# errors name the file, the tensor and the field
# ---------------------------------------------------------------------------------------------
def _v1(entry, section="param_encodings"):
    d = {"version": "1.0.0", "activation_encodings": [], "param_encodings": []}
    d[section] = [entry]
    return d


def _good(**kw):
    e = {"name": "conv.w", "dtype": "INT", "enc_type": "PER_CHANNEL", "bw": 8, "is_sym": True, "scale": [0.1, 0.2],
         "offset": [-128, -128]}
    e.update(kw)
    return e


@pytest.mark.parametrize("entry, pattern", [
    ({k: v for k, v in _good().items() if k != "scale"}, r"'conv.w'.*missing field 'scale'"),
    (_good(bw="8"), r"'conv.w'.*field 'bw': expected an integer"),
    (_good(is_sym="True"), r"'conv.w'.*field 'is_sym': expected true or false"),
    (_good(bw=6), r"'conv.w'.*field 'bw': bit width 6 is not supported \(AIMET allows 2..32\)"),
    (_good(bw=64), r"'conv.w'.*bit width 64 is not supported"),
    (_good(offset=[-128]), r"'conv.w'.*'scale' and 'offset' have different lengths \(2 and 1\)"),
    (_good(offset=[-128, -5]), r"'conv.w'.*field 'offset': a symmetric 8-bit encoding has offset -128.*found \[-5\]"),
    (_good(scale=[0.1, 0.0]), r"'conv.w'.*field 'scale'\[1\]: scale must be a finite number > 0, found 0.0"),
    (_good(scale=[float("nan"), 0.1]), r"'conv.w'.*field 'scale'\[0\]: .*nan"),
    (_good(scale=[1e-50, 0.1]), r"'conv.w'.*not a positive normal float32"),
    (_good(is_sym=False, offset=[-300, 0]), r"'conv.w'.*field 'offset'\[0\]: offset -300 puts the zero point outside"),
    (_good(enc_type="VECTOR"), r"'conv.w'.*field 'enc_type'"),
    (_good(enc_type="PER_TENSOR"), r"'conv.w'.*a PER_TENSOR encoding has 1 scale, found 2"),
    (_good(colour="red"), r"'conv.w'.*unknown field 'colour'"),
])
def test_v1_errors_name_file_tensor_field(tmp_path, entry, pattern):
    path = tmp_path / "model.encodings"
    path.write_text(json.dumps(_v1(entry)))
    with pytest.raises(EncodingError, match=pattern) as ei:
        read_encodings(path)
    assert str(path) in str(ei.value) and "param_encodings" in str(ei.value)


@pytest.mark.parametrize("entries, pattern", [
    ([_entry(scale=0.1), _entry(bitwidth=16)], r"per-channel entries disagree"),
    ([_entry(is_symmetric="yes")], r"field 'is_symmetric': expected \"True\"/\"False\""),
    ([{k: v for k, v in _entry().items() if k != "min"}], r"missing field 'min'"),
    ([_entry(min="0")], r"field 'min': expected a number"),
    ([], r"expected a non-empty list"),
])
def test_legacy_errors(entries, pattern):
    d = {"version": "0.6.1", "activation_encodings": {"act/0": entries}, "param_encodings": {}}
    with pytest.raises(EncodingError, match=r"<encodings dict>: activation_encodings 'act/0'.*" + pattern):
        read_encodings(d)


@pytest.mark.parametrize("data, pattern", [
    ({"version": "9.9.9"}, r"field 'version': expected one of"),
    ({"activation_encodings": {}}, r"field 'version'"),
    ({"version": "1.0.0", "activation_encodings": {}, "param_encodings": []}, r"expected a list of encodings"),
    ({"version": "1.0.0", "activation_encodings": [], "param_encodings": [], "extra": 1}, r"unknown field 'extra'"),
    ({"version": "1.0.0", "activation_encodings": [_good(name="t")], "param_encodings": [_good(name="t")]},
     r"'t': the tensor has more than one encoding"),
    ({"version": "2.0.0", "encodings": [{"name": "x", "output_dtype": "int2", "y_scale": 0.1}]},
     r"'x': field 'output_dtype': 'int2' is not supported"),
    ({"version": "2.0.0", "encodings": [{"name": "x", "output_dtype": "int8", "y_scale": [0.1, 0.2]}]},
     r"'x': field 'axis': 2 scales need the channel axis"),
    ({"version": "2.0.0", "encodings": [{"name": "x", "output_dtype": "uint8", "y_scale": 0.1, "y_zero_point": 300}]},
     r"'x': zero point 300 is outside"),
    ({"version": "2.0.0", "encodings": [{"name": "x", "output_dtype": "int8", "y_scale": -1.0}]},
     r"'x': field 'y_scale': scale must be finite and > 0"),
    ({"version": "2.0.0"}, r"missing field 'encodings'"),
])
def test_file_level_errors(data, pattern):
    with pytest.raises(EncodingError, match=pattern):
        read_encodings(data)


def test_unreadable_files_named(tmp_path):
    with pytest.raises(EncodingError, match="nope.json: encodings file not found"):
        read_encodings(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EncodingError, match="bad.json: not valid JSON"):
        read_encodings(bad)


def test_writer_refuses_what_aimet_cannot_say():
    narrow = Encoding(0.1, 0, "int8", qmin=-100, qmax=100)
    with pytest.raises(EncodingError, match=r"'n'.*usable range \[-100, 100\]"):
        to_dict(EncodingsFile({"n": narrow}, {}), "1.0.0")
    block = Encoding(np.float32([[0.1, 0.2]]), 0, "int4", PerBlock(1, 2), symmetric=True)
    with pytest.raises(EncodingError, match="0.6.1 has no per-block"):
        to_dict(EncodingsFile({}, {"w": block}), "0.6.1")
    one = Encoding(np.float32([0.1]), 0, "int8", PerAxis(0), symmetric=True)
    with pytest.raises(EncodingError, match="one-channel"):
        to_dict(EncodingsFile({}, {"w": one}), "0.6.1")
    assert read_encodings(to_dict(EncodingsFile({}, {"w": one}), "1.0.0")).params["w"] == one
    with pytest.raises(EncodingError, match="cannot write encodings version"):
        to_dict(EncodingsFile({}, {}), "0.4.0")
