"""Float ONNX + AIMET encodings -> QDQ ONNX (runtime/apply_encodings.py), and where targets quantize
(runtime/placement.py).

The QDQ model must pass the checker, run in ONNX Runtime and plan on the integer runtime; on the
host's ort-cpu form it equals ONNX Runtime bit for bit (mirroring tests/runtime/test_ort_bitexact.py:
verified on AVX2 hosts, xfail elsewhere until measured).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import runtime
from runtime.aimet import EncodingsFile, read_encodings, to_dict
from runtime.apply_encodings import apply_encodings, load_with_encodings
from runtime.encoding import Encoding, PerAxis, PerBlock, encoding_from_range, encoding_from_tensor
from runtime.errors import EncodingError, ModelError, UnsupportedError
from runtime.placement import expected_encodings, match_supergroups, weight_axes
from runtime.graph import parse_graph
from runtime.target import Supergroup, load_target

ort = pytest.importorskip("onnxruntime")

HOST_FORM = load_target("ort-cpu").name
unverified_host = pytest.mark.xfail(HOST_FORM != "ort-cpu-avx2", strict=False,
                                    reason=f"{HOST_FORM} not yet measured against ONNX Runtime on such a CPU")


def cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv+Relu -> MaxPool -> Conv -> Flatten -> Gemm, float, opset 17."""
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.normal(0, .4, (4, 1, 3, 3)), "b1": rng.normal(0, .1, 4),
             "w2": rng.normal(0, .3, (8, 4, 3, 3)), "b2": rng.normal(0, .1, 8),
             "wf": rng.normal(0, .2, (10, 8 * 4 * 4)), "bf": rng.normal(0, .1, 10)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c2"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])],
                          initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _ort(model, feeds, names=None):
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(names, feeds)


def _float_ranges(model, x, names):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    vals = _ort(m, {"x": x}, list(names))
    return dict(zip(names, vals))


def hand_encodings(model, weight_bits="int8", act="uint8") -> EncodingsFile:
    """Encodings computed by hand the way the target places them: u8 asymmetric activations on the
    input, the Relu (Conv+Relu supergroup), the second Conv and the output; symmetric per-channel
    weights; no biases (applying derives them)."""
    calib = np.random.default_rng(1).uniform(-1, 1, (16, 1, 8, 8)).astype(np.float32)
    r = _float_ranges(model, calib, ["r1", "c2", "y"])
    r["x"] = calib
    acts = {n: encoding_from_range(float(v.min()), float(v.max()), act, "asymmetric") for n, v in r.items()}
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    params = {k: encoding_from_tensor(w[k], weight_bits, "symmetric", PerAxis(0)) for k in ("w1", "w2", "wf")}
    return EncodingsFile(acts, params)


@pytest.fixture(scope="module")
def model():
    return cnn()


@pytest.fixture(scope="module")
def encodings(model):
    return read_encodings(to_dict(hand_encodings(model), "1.0.0"))  # as an AIMET 1.0.0 file gives them


@pytest.fixture(scope="module")
def qdq(model, encodings):
    return apply_encodings(model, encodings)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(2).uniform(-1.2, 1.2, (16, 1, 8, 8)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the QDQ model
# ---------------------------------------------------------------------------------------------
def test_qdq_structure(qdq, model):
    onnx.checker.check_model(qdq, full_check=True)
    ops = [n.op_type for n in qdq.graph.node]
    assert ops.count("QuantizeLinear") == 6  # x, r1, MaxPool out (propagated), c2, Flatten out, y
    assert ops.count("DequantizeLinear") == 6 + 6  # + w1 w2 wf b1 b2 bf
    assert [o.name for o in qdq.graph.output] == ["y"] and [i.name for i in qdq.graph.input] == ["x"]
    y_dq = next(n for n in qdq.graph.node if "y" in n.output)
    assert y_dq.op_type == "DequantizeLinear"
    inits = {t.name: t for t in qdq.graph.initializer}
    assert inits["w1_quantized"].data_type == TensorProto.INT8 and inits["b1_quantized"].data_type == TensorProto.INT32
    w_dq = next(n for n in qdq.graph.node if list(n.output) == ["wf"])
    assert helper.get_attribute_value(w_dq.attribute[0]) == 0  # Gemm transB=1: output channels on axis 0
    assert "w1" not in inits and "c1" not in {o for n in qdq.graph.node if n.op_type == "QuantizeLinear" for o in n.input}
    assert model.graph.node[0].input[0] == "x"  # the input model is not modified


def test_weights_quantized_with_onnx_semantics(qdq, model, encodings):
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w2"))
    q = numpy_helper.to_array(next(t for t in qdq.graph.initializer if t.name == "w2_quantized"))
    s = encodings.params["w2"].scale.reshape(-1, 1, 1, 1)
    assert np.array_equal(q, np.clip(np.rint(w / s), -128, 127).astype(np.int8))


def test_derived_bias_is_sx_times_sw(qdq, encodings):
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    sx, sw = encodings.activations["x"].scale, encodings.params["w1"].scale
    assert inits["b1_scale"].tobytes() == (np.float32(sx) * sw).astype(np.float32).tobytes()
    assert not inits["b1_zero_point"].any() and inits["b1_zero_point"].dtype == np.int32
    # the Gemm's input scale is found through Flatten (the second Conv's output)
    assert inits["bf_scale"].tobytes() == (np.float32(encodings.activations["c2"].scale)
                                           * encodings.params["wf"].scale).astype(np.float32).tobytes()


@unverified_host
def test_bit_exact_with_onnxruntime_on_host_form(qdq, x):
    (expected,) = _ort(qdq, {"x": x})
    got = runtime.load(qdq, "ort-cpu").run({"x": x})["y"]
    assert got.dtype == expected.dtype == np.float32
    assert np.array_equal(got, expected), f"{np.count_nonzero(got != expected)} of {got.size} differ"


def test_every_fixed_point_target_runs_close_to_exact_float32_requant(model, encodings, x):
    ref = runtime.load(apply_encodings(model, encodings), "ort-cpu-vnni").run({"x": x})["y"]
    step = float(encodings.activations["y"].scale)
    for target in ("dsp-int8", "npu-int8-pc", "htp-a16w8"):
        prog = load_with_encodings(model, encodings, target)
        res = prog.run_with_details({"x": x})
        assert np.abs(res.outputs["y"] - ref).max() / step <= 2, target
        assert all(s.overflow == 0 for s in res.stats.values())


def test_versions_give_the_same_qdq_results(model, x):
    enc = hand_encodings(model)
    outs = []
    for v in ("0.6.1", "1.0.0", "2.0.0"):
        f = read_encodings(to_dict(enc, v))
        outs.append(runtime.load(apply_encodings(model, f), "ort-cpu-vnni").run({"x": x})["y"])
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[1], outs[2])


def test_propagation_is_exact(model, encodings, x):
    plain = apply_encodings(model, encodings, propagate=False)
    assert [n.op_type for n in plain.graph.node].count("QuantizeLinear") == 4
    a = runtime.load(plain, "ort-cpu-vnni").run({"x": x})["y"]
    b = runtime.load(apply_encodings(model, encodings), "ort-cpu-vnni").run({"x": x})["y"]
    assert np.array_equal(a, b)
    assert np.array_equal(_ort(plain, {"x": x})[0].shape, b.shape)


def test_no_bias_derivation_keeps_float_bias(model, encodings):
    m = apply_encodings(model, encodings, derive_bias=False)
    inits = {t.name: t for t in m.graph.initializer}
    assert inits["b1"].data_type == TensorProto.FLOAT and "b1_quantized" not in inits


def test_target_storage_signed_activations(model, encodings, x):
    """npu-int8-pc stores activations int8: the AIMET (unsigned) grid is re-expressed, results equal."""
    prog = load_with_encodings(model, encodings, "npu-int8-pc")
    acts = [e for e in prog.encodings.values() if e.is_per_tensor and e.dtype.bits == 8 and not e.symmetric]
    assert len(acts) >= 4 and all(str(e.dtype) == "int8" for e in acts)
    u8 = runtime.load(apply_encodings(model, encodings), "npu-int8-pc").run({"x": x})["y"]
    assert np.array_equal(prog.run({"x": x})["y"], u8)


def test_int4_weights_bump_opset_and_run(model, x):
    enc = read_encodings(to_dict(hand_encodings(model, weight_bits="int4"), "1.0.0"))
    m = apply_encodings(model, enc)
    assert next(o.version for o in m.opset_import if o.domain == "") == 21 and m.ir_version >= 10
    assert {t.data_type for t in m.graph.initializer if t.name.endswith("w1_quantized")} == {TensorProto.INT4}
    (expected,) = _ort(m, {"x": x})  # ONNX Runtime runs int4 weights on its float path
    got = load_with_encodings(model, enc, "npu-w4a8").run({"x": x})["y"]
    step = float(enc.activations["y"].scale)
    assert np.abs(got - expected).max() / step <= 2
    with pytest.raises(EncodingError, match=r"int4 encoding of 'w1' needs opset 21; opset 17 was requested"):
        apply_encodings(model, enc, opset=17)
    with pytest.raises(ModelError, match="lowering it to 13"):
        apply_encodings(model, hand_encodings(model), opset=13)


def test_per_block_weights_on_gemm():
    rng = np.random.default_rng(5)
    w = rng.normal(0, 1, (6, 8)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["a", "w"], ["y"], name="fc", transB=1)], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    ew = encoding_from_tensor(w, "int4", "symmetric", PerBlock(1, 4))
    f = read_encodings(to_dict(EncodingsFile({}, {"w": ew}), "1.0.0"))  # flat AIMET blocks
    q = apply_encodings(m, f)
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear")
    assert {a.name: helper.get_attribute_value(a) for a in dq.attribute} == {"axis": 1, "block_size": 4}
    a = rng.normal(0, 1, (2, 8)).astype(np.float32)
    (y,) = _ort(q, {"a": a})
    from runtime.quantize import dequantize, quantize

    wd = dequantize(quantize(w, ew, "half_to_even"), ew)
    np.testing.assert_allclose(y, a @ wd.T, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_unknown_tensor_is_named_with_suggestions(model, encodings):
    bad = dataclasses.replace(encodings, activations={**encodings.activations, "r_1": encodings.activations["r1"]})
    with pytest.raises(EncodingError, match=r"encoding of 'r_1' names no tensor of <in-memory model>.*'r1'"):
        apply_encodings(model, bad)


def test_per_channel_length_mismatch(model, encodings):
    wrong = Encoding(np.float32([0.1, 0.2, 0.3]), 0, "int8", PerAxis(0), symmetric=True)
    bad = dataclasses.replace(encodings, params={**encodings.params, "w2": wrong})
    with pytest.raises(EncodingError, match=r"initializer 'w2'.*\(8, 4, 3, 3\) has 8 channels along axis 0.*3 scales"):
        apply_encodings(model, bad)


def test_bit_widths_a_dtype_cannot_hold(model, encodings):
    a32 = Encoding(0.1, 0, "int32", symmetric=True)
    bad = dataclasses.replace(encodings, activations={**encodings.activations, "r1": a32})
    with pytest.raises(EncodingError, match=r"'r1': QuantizeLinear cannot produce int32"):
        apply_encodings(model, bad)
    u32 = Encoding(np.float32([0.1] * 4), 0, "uint32", PerAxis(0))
    bad = dataclasses.replace(encodings, params={**encodings.params, "w1": u32})
    with pytest.raises(EncodingError, match=r"'w1': a uint32 encoding cannot be stored for DequantizeLinear"):
        apply_encodings(model, bad)


def test_param_encoding_on_activation_and_per_channel_activation(model, encodings):
    bad = dataclasses.replace(encodings, params={**encodings.params, "c2": encodings.activations["c2"]})
    with pytest.raises(EncodingError, match=r"'c2': the tensor is the output of Conv node 'conv2', not an initializer"):
        apply_encodings(model, bad)
    pc = Encoding(np.float32([0.1, 0.2]), 0, "uint8", PerAxis(1))
    bad = dataclasses.replace(encodings, activations={**encodings.activations, "c2": pc})
    with pytest.raises(EncodingError, match=r"'c2': activations are quantized per tensor"):
        apply_encodings(model, bad)


# ---------------------------------------------------------------------------------------------
# placement
# ---------------------------------------------------------------------------------------------
def test_expected_encodings_follow_the_target(model):
    exp = expected_encodings(model, "dsp-int8")
    assert exp == {"x": "activation", "w1": "weight", "b1": "bias", "r1": "activation", "w2": "weight",
                   "b2": "bias", "c2": "activation", "wf": "weight", "bf": "bias", "y": "activation"}
    # no bias placement: biases are not expected
    t = load_target("dsp-int8")
    nob = dataclasses.replace(t, placement=dataclasses.replace(t.placement, params={}))
    assert "b1" in expected_encodings(model, nob)  # defaults.params still quantizes
    from runtime.target import ParamPlacement

    off = dataclasses.replace(t, placement=dataclasses.replace(t.placement, params={"bias": ParamPlacement(False)}))
    assert not {"b1", "b2", "bf"} & set(expected_encodings(model, off))




def test_supergroups_longest_chain_single_consumer():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Add", ["c2", "r2"], ["y"], name="add")]
    inits = [numpy_helper.from_array(np.ones(s, np.float32), n) for n, s in
             [("w", (2, 1, 1, 1)), ("s", (2,)), ("b", (2,)), ("m", (2,)), ("v", (2,)), ("w2", (2, 2, 1, 1))]]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    groups = match_supergroups(parse_graph(m), [Supergroup(("Conv", "BatchNormalization")),
                                                 Supergroup(("Conv", "BatchNormalization", "Relu")),
                                                 Supergroup(("Conv", "Relu"))])
    assert [[n.name for n in c] for c in groups] == [["conv", "bn", "relu"]]  # conv2 has two consumers
    exp = expected_encodings(m, "npu-int8-pc")
    assert "c" not in exp and "n" not in exp and exp["r"] == "activation" and exp["c2"] == "activation"
    assert "s" not in exp  # BatchNormalization parameters: folded into the Conv, not quantized


def test_float_ops_refused_or_marked():
    g = helper.make_graph([helper.make_node("Sin", ["x"], ["s"], name="sine"), helper.make_node("Relu", ["s"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedError, match=r"Sin node 'sine': target 'dsp-int8' does not run Sin in integers"):
        expected_encodings(m, "dsp-int8")
    assert expected_encodings(m, "dsp-int8", float_ops="float") == {"x": "activation", "s": "float", "y": "activation"}


def test_matmul_add_bias_and_static_activations():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["a"], name="add"),
             helper.make_node("Mul", ["a", "k"], ["y"], name="mul"),
             helper.make_node("Clip", ["y", "lo", "hi"], ["z"], name="clip")]
    inits = [numpy_helper.from_array(np.ones(s, np.float32), n) for n, s in
             [("w", (3, 4)), ("b", (4,)), ("k", (4,)), ("lo", ()), ("hi", ())]]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    exp = expected_encodings(m, "dsp-int8")
    assert exp["w"] == "weight" and exp["b"] == "bias" and exp["k"] == "activation" and "mm" not in exp
    assert "lo" not in exp and "hi" not in exp and exp["a"] == exp["y"] == exp["z"] == "activation"


def test_weight_axes():
    assert weight_axes("Conv", {}, 4) == (0, 1) and weight_axes("Gemm", {"transB": 0}, 2) == (1, 0)
    with pytest.raises(ModelError, match="Relu has no weight axes"):
        weight_axes("Relu", {}, 2)
