"""The ort-cpu target reproduces ONNX Runtime's CPU execution provider bit for bit (same machine,
default session options) on models quantized by onnxruntime.quantization.quantize_static."""
from __future__ import annotations

import numpy as np
import pytest

import runtime
from tests.onnx_models import quantize_with_ort, tiny_cnn

from runtime.target import load_target

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.ort

HOST_FORM = load_target("ort-cpu").name
# Verified by experiment only on AVX2 hosts (runtime/ORT_CPU_ARITHMETIC.md); on VNNI/AMX hosts the
# comparisons still run, and a mismatch is reported as xfail until that form is measured there.
unverified_host = pytest.mark.xfail(HOST_FORM != "ort-cpu-avx2", strict=False,
                                    reason=f"{HOST_FORM} not yet measured against ONNX Runtime on such a CPU")


def _ort_run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@unverified_host
@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_tiny_cnn_matches_onnxruntime(tmp_path, fmt, per_channel):
    rng = np.random.default_rng(1)
    calib = rng.uniform(-1, 1, (16, 1, 8, 8)).astype(np.float32)
    path = quantize_with_ort(tiny_cnn(), calib, tmp_path / "q.onnx", fmt, per_channel)
    x = rng.uniform(-1.2, 1.2, (32, 1, 8, 8)).astype(np.float32)
    (expected,) = _ort_run(path, {"x": x})
    prog = runtime.load(path, "ort-cpu")
    got = prog.run({"x": x})["y"]
    assert got.dtype == expected.dtype == np.float32
    diff = np.abs(got - expected)
    assert np.array_equal(got, expected), f"{np.count_nonzero(diff)} of {diff.size} outputs differ, max {diff.max()}"


def _pb(path):
    import onnx
    from onnx import numpy_helper

    t = onnx.TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


@unverified_host
@pytest.mark.shared_data
def test_shufflenet_int8_zoo_model_matches_onnxruntime(shared_data):
    """QOperator model-zoo file: 56 QLinearConv (37 hit the AVX2 pair saturation, 19 depthwise do
    not), QLinearMatMul, QLinearAdd, Concat between DQ/Q, ReduceMean in float between DQ/Q."""
    d = shared_data / "onnx" / "shufflenet-v2-12-int8"
    model = d / "shufflenet-v2-12-int8.onnx"
    x = _pb(d / "test_data_set_0" / "input_0.pb")
    (expected,) = _ort_run(model, {"input": x})
    got = runtime.load(model, "ort-cpu").run({"input": x})["output"]
    assert np.array_equal(got, expected), f"{np.count_nonzero(got != expected)} of {got.size} outputs differ"


def test_other_form_differs_where_pairs_saturate(tmp_path):
    """The form this CPU does not use is not what ONNX Runtime computes here (on a model whose
    u8 x s8 pairs saturate), so the host-form equality above is a real check."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    a = helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4])
    b = numpy_helper.from_array(np.full((64, 4), 127, np.int8), "b")
    m = helper.make_model(helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "g", [a], [y], [b]),
                          opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path = tmp_path / "mm.onnx"
    onnx.save(m, path)
    feeds = {"a": np.full((1, 64), 255, np.uint8)}
    (expected,) = _ort_run(path, feeds)
    host = runtime.load(path, "ort-cpu")
    other = "ort-cpu-vnni" if host.target.name == "ort-cpu-avx2" else "ort-cpu-avx2"
    assert np.array_equal(host.run(feeds)["y"], expected)
    assert not np.array_equal(runtime.load(path, other).run(feeds)["y"], expected)


@unverified_host
def test_tiny_cnn_32_channels_residual_add(tmp_path):
    """Regression: this model exposed ONNX Runtime's fused-multiply-add QLinearAdd (2 of 320 logits
    differed with the centered float32 form; runtime/kernels/elementwise_f32.py)."""
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 1, (32, 1, 16, 16)).astype(np.float32)
    path = quantize_with_ort(tiny_cnn(channels=32, size=16), calib, tmp_path / "q.onnx", "qdq", True)
    x = rng.uniform(-1, 1, (32, 1, 16, 16)).astype(np.float32)
    (expected,) = _ort_run(path, {"x": x})
    got = runtime.load(path, "ort-cpu").run({"x": x})["y"]
    assert np.array_equal(got, expected), f"{np.count_nonzero(got != expected)} of {got.size} outputs differ"
