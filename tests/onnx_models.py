"""Small float ONNX models built with onnx.helper (seeded), and their ONNX Runtime quantization.

Shared by the runtime tests and benchmarks: real quantize_static output, not hand-made graphs.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _conv(name, x, w, b, out, group=1, pads=(1, 1, 1, 1), strides=(1, 1)):
    return helper.make_node("Conv", [x, w, b], [out], name=name, pads=list(pads), strides=list(strides), group=group)


def tiny_cnn(seed: int = 0, channels: int = 8, size: int = 8, classes: int = 10) -> onnx.ModelProto:
    """Conv+Relu -> depthwise Conv+Relu -> 1x1 Conv -> residual Add+Relu -> GlobalAveragePool -> Gemm."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = {
        "w1": rng.normal(0, 0.3, (c, 1, 3, 3)), "b1": rng.normal(0, 0.1, c),
        "w2": rng.normal(0, 0.3, (c, 1, 3, 3)), "b2": rng.normal(0, 0.1, c),
        "w3": rng.normal(0, 0.3, (c, c, 1, 1)), "b3": rng.normal(0, 0.1, c),
        "wf": rng.normal(0, 0.3, (classes, c)), "bf": rng.normal(0, 0.1, classes),
        "shape": np.array([1, c], np.int64),
    }
    nodes = [
        _conv("conv1", "x", "w1", "b1", "c1"), helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        _conv("dw", "r1", "w2", "b2", "c2", group=c), helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        _conv("pw", "r2", "w3", "b3", "c3", pads=(0, 0, 0, 0)),
        helper.make_node("Add", ["c3", "r1"], ["s"], name="add"), helper.make_node("Relu", ["s"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, classes])],
        initializer=[numpy_helper.from_array(v.astype(np.float32) if v.dtype.kind == "f" else v, k) for k, v in inits.items()
                     if k != "shape"])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def quantize_with_ort(model: onnx.ModelProto, calib: np.ndarray, path, fmt: str = "qdq", per_channel: bool = False,
                      input_name: str = "x") -> str:
    """onnxruntime.quantization.quantize_static (uint8 activations, int8 weights) to ``path``."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{input_name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "float.onnx"
        onnx.save(model, src)
        quantize_static(str(src), str(path), Reader(),
                        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return str(path)
