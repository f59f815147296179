"""The ort-cpu target reproduces ONNX Runtime's CPU execution provider bit for bit (same machine,
default session options) on models quantized by onnxruntime.quantization.quantize_static."""
from __future__ import annotations

import numpy as np
import pytest

import runtime
from tests.onnx_models import quantize_with_ort, tiny_cnn

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.ort


def _ort_run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


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
