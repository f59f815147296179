"""Every built-in target runs a real quantize_static model on the integer runtime; the fixed-point
targets stay within a few output steps of ONNX Runtime's float32-requantized result (they round
differently, by design), and their own arithmetic is deterministic and integer-only."""
from __future__ import annotations

import numpy as np
import pytest

import runtime
from runtime.target import builtin_names
from tests.onnx_models import quantize_with_ort, tiny_cnn

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory):
    rng = np.random.default_rng(3)
    calib = rng.uniform(-1, 1, (16, 1, 8, 8)).astype(np.float32)
    return quantize_with_ort(tiny_cnn(), calib, tmp_path_factory.mktemp("m") / "q.onnx", "qdq", True)


@pytest.mark.parametrize("target", [n for n in builtin_names() if not n.startswith("ort-cpu")])
def test_fixed_point_targets_close_to_float32_requant(qdq_model, target):
    x = np.random.default_rng(4).uniform(-1, 1, (16, 1, 8, 8)).astype(np.float32)
    ref = runtime.load(qdq_model, "ort-cpu-vnni").run_with_details({"x": x}, keep_tensors=True)
    prog = runtime.load(qdq_model, target)
    res = prog.run_with_details({"x": x}, keep_tensors=True)
    step = prog.outputs[0].encoding.scale
    diff = np.abs(res.outputs["y"] - ref.outputs["y"]) / step
    assert diff.max() <= 4, diff.max()
    assert all(s.overflow == 0 for s in res.stats.values())
    again = prog.run({"x": x})["y"]
    assert np.array_equal(again, res.outputs["y"])
    ints = [k for k, v in res.tensors.items() if np.issubdtype(v.dtype, np.integer)]
    assert len(ints) >= len(prog.steps) - 1


def test_unsupported_op_is_refused_with_node_name(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from runtime.errors import UnsupportedError

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    m = helper.make_model(helper.make_graph([helper.make_node("Erf", ["x"], ["y"], name="the_erf")], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedError, match=r"Erf node 'the_erf': op type Erf is not supported"):
        runtime.load(m, "dsp-int8")


def test_float_op_between_q_and_dq_is_refused(qdq_model):
    import onnx

    from runtime.errors import UnsupportedError

    m = onnx.load(qdq_model)
    # make the final Gemm's output go to the graph output in float (drop its QuantizeLinear/DQ pair)
    out = m.graph.output[0].name
    dq = next(n for n in m.graph.node if n.output[0] == out)
    q = next(n for n in m.graph.node if n.output[0] == dq.input[0])
    gemm = next(n for n in m.graph.node if n.output[0] == q.input[0])
    m.graph.node.remove(q)
    m.graph.node.remove(dq)
    gemm.output[0] = out
    with pytest.raises(UnsupportedError, match="Gemm node .*graph output"):
        runtime.load(m, "npu-int8-pc")
