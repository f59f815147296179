"""ONNX loading: malformed files are refused with the file, node and tensor named."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.errors import ModelError
from runtime.graph import parse_graph


def _model(nodes, inputs=("x",), outputs=("y",), inits=(), domain_opsets=None):
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in outputs],
        initializer=list(inits))
    opsets = [helper.make_opsetid("", 17)] + list(domain_opsets or [])
    return helper.make_model(g, opset_imports=opsets)


def test_valid_graph_is_sorted_topologically():
    nodes = [helper.make_node("Relu", ["t"], ["y"], name="second"), helper.make_node("Neg", ["x"], ["t"], name="first")]
    g = parse_graph(_model(nodes), check=False)
    assert [n.name for n in g.nodes] == ["first", "second"]


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(ModelError, match=r"nope\.onnx: model file not found"):
        parse_graph(tmp_path / "nope.onnx")
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="r")])
    data = m.SerializeToString()
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"trunc\.onnx: not a readable ONNX model"):
        parse_graph(bad)


def test_dangling_input_named():
    m = _model([helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")])
    with pytest.raises(ModelError, match=r"Add node 'adder' reads tensor 'ghost'"):
        parse_graph(m, check=False)


def test_cycle_detected():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="n1"), helper.make_node("Relu", ["a"], ["b"], name="n2"),
             helper.make_node("Identity", ["a"], ["y"], name="n3")]
    with pytest.raises(ModelError, match="cycle"):
        parse_graph(_model(nodes), check=False)


def test_unknown_domain_refused():
    n = helper.make_node("Frobnicate", ["x"], ["y"], name="f", domain="com.example")
    with pytest.raises(ModelError, match="unsupported domain .com.example."):
        parse_graph(_model([n], domain_opsets=[helper.make_opsetid("com.example", 1)]), check=False)


def test_checker_failure_reported(tmp_path):
    m = _model([helper.make_node("Relu", ["x", "x"], ["y"], name="r")])  # Relu takes one input
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ModelError, match=r"m\.onnx: the ONNX checker rejects the model"):
        parse_graph(p)


def test_external_data_outside_folder_refused(tmp_path):
    w = numpy_helper.from_array(np.ones((1, 4), np.float32), "w")
    m = _model([helper.make_node("Add", ["x", "w"], ["y"], name="a")], inits=[w])
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "../../etc/passwd"
    d = tmp_path / "model"
    d.mkdir()
    p = d / "m.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ModelError, match="outside the model's folder"):
        parse_graph(p)
    e.value = "missing.bin"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ModelError, match="does not exist"):
        parse_graph(p)
