"""ONNX operator conformance cases for the quantized operators, run on the integer runtime.

Cases come from the installed onnx package (``onnx.backend.test.loader.load_model_tests``; in-memory
cases carry their model and data sets, on-disk cases are read from their folder). The runtime plans
encodings once, so scale and zero-point inputs (and constant weights) are folded into initializers
from the case's data before planning; data inputs stay inputs. Target: ``ort-cpu-vnni`` (exact
int32 accumulation, round half to even: the ONNX operator semantics).
"""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import runtime

DATA_INPUTS = {"QuantizeLinear": {0}, "DequantizeLinear": {0}, "QLinearConv": {0}, "QLinearMatMul": {0, 3},
               "ConvInteger": {0}, "MatMulInteger": {0, 1}}
PATTERN = re.compile(r"test_(quantizelinear|dequantizelinear|qlinearconv|qlinearmatmul|convinteger|matmulinteger)")

# Cases that cannot run, one reason per line.
EXCLUDED = {
    "e4m3fn": "float8 storage types are not integer encodings",
    "e5m2": "float8 storage types are not integer encodings",
    "float4e2m1": "float4 storage types are not integer encodings",
    "uint2": "2-bit storage types are not supported by the runtime",
    "int2": "2-bit storage types are not supported by the runtime",
    "float16": "float16 scales: the runtime's encodings are float32 (ONNX Runtime too converts them)",
}


def _cases():
    from onnx.backend.test.loader import load_model_tests

    out = []
    for c in load_model_tests(kind="node"):
        if not PATTERN.match(c.name):
            continue
        reason = next((r for k, r in EXCLUDED.items() if k in c.name), None)
        out.append(pytest.param(c, id=c.name, marks=pytest.mark.skip(reason=reason) if reason else ()))
    return out


def _data_sets(case):
    if case.model is not None:
        return case.model, case.data_sets
    import glob
    import os

    model = onnx.load(os.path.join(case.model_dir, "model.onnx"))
    sets = []
    for d in sorted(glob.glob(os.path.join(case.model_dir, "test_data_set_*"))):
        def read(prefix):
            arrs = []
            for f in sorted(glob.glob(os.path.join(d, f"{prefix}_*.pb"))):
                t = onnx.TensorProto()
                t.ParseFromString(open(f, "rb").read())
                arrs.append(numpy_helper.to_array(t))
            return arrs
        sets.append((read("input"), read("output")))
    return model, sets


@pytest.mark.parametrize("case", _cases())
def test_conformance(case):
    model, data_sets = _data_sets(case)
    (node,) = model.graph.node
    keep = DATA_INPUTS[node.op_type]
    for inputs, outputs in data_sets:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        names = [i.name for i in model.graph.input]
        feeds = {}
        for pos, (name, value) in enumerate(zip(names, inputs)):
            idx = list(node.input).index(name)
            if idx in keep:
                feeds[name] = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value
            elif isinstance(value, onnx.TensorProto):  # int4/uint4 values come as TensorProto
                t = onnx.TensorProto()
                t.CopyFrom(value)
                t.name = name
                m.graph.initializer.append(t)
            else:
                m.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        prog = runtime.load(m, "ort-cpu-vnni")
        got = prog.run(feeds)
        for out_info, expected in zip(model.graph.output, outputs):
            y = got[out_info.name]
            if isinstance(expected, onnx.TensorProto):  # e.g. int4/uint4: stored in int8/uint8 arrays here
                expected = numpy_helper.to_array(expected)
                assert np.issubdtype(y.dtype, np.integer), y.dtype
                np.testing.assert_array_equal(y.astype(np.int64), expected.astype(np.int64))
                continue
            assert y.dtype == expected.dtype, (y.dtype, expected.dtype)
            np.testing.assert_array_equal(y, expected)
