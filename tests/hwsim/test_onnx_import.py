"""hwsim.onnx_import: float ONNX -> torch.fx.GraphModule, checked against ONNX Runtime (float, CPU).

Tolerances (float32 vs float32, only the summation order differs):
- synthesized one-node models: |torch - ORT| <= 1e-5 + 1e-5 * |ORT| elementwise;
- the real models: |torch - ref| <= 1e-4 * max(1, max |ref|) (mnist-8's logits are in the
  thousands, a 256-long float32 dot product of them differs in the last bits).
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from hwsim.onnx_import import import_onnx, supported_ops
from runtime.errors import ModelError, UnsupportedError

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.ort


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _ort(model, feeds):
    return _session(model).run(None, feeds)


def _torch(gm, feeds):
    with torch.no_grad():
        y = gm(*[torch.from_numpy(np.array(feeds[n])) for n in gm.input_names])
    return [t.numpy() for t in (y if isinstance(y, tuple) else (y,))]


def _model(nodes, inputs, outputs, inits=None, opset=13, in_dims=None):
    """inputs: {name: shape}; outputs: names (typed float, shape left to inference)."""
    graph = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, (in_dims or {}).get(k, v)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset <= 17 else 9
    return m


def _one(op, shapes, attrs=None, inits=None, opset=13, n_out=1, inputs=None):
    """A one-node model: dynamic inputs x0, x1, ... with the given shapes, then initializers."""
    dyn = {f"x{i}": s for i, s in enumerate(shapes)}
    names = inputs if inputs is not None else list(dyn) + list(inits or {})
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, name=f"the_{op.lower()}", **(attrs or {}))
    return _model([node], dyn, outs, inits, opset)


def _feeds(model, seed=0, positive=False):
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        x = rng.normal(0, 1, shape).astype(np.float32)
        feeds[vi.name] = np.abs(x) + np.float32(0.1) if positive else x
    return feeds


def _check(model, seed=0, positive=False, rtol=1e-5, atol=1e-5, **kw):
    feeds = _feeds(model, seed, positive)
    gm = import_onnx(model, **kw)
    gm.graph.lint()
    got = _torch(gm, feeds)
    ref = _ort(model, feeds)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)
    return gm


def _w(*shape, seed=1):
    return np.random.default_rng(seed).normal(0, 0.5, shape).astype(np.float32)


def _i64(*v):
    return np.array(v, np.int64)


def _modules(gm, cls):
    return [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), cls)]


def _ops(gm, op):
    return [n for n in gm.graph.nodes if n.op == op]


# ---------------------------------------------------------------------------------------------
# one-node models for every supported op, vs ONNX Runtime
# ---------------------------------------------------------------------------------------------
X4 = (2, 3, 7, 9)
NEG = {"Sqrt", "Log", "Pow", "Reciprocal"}  # these get positive inputs

CASES = {
    # Conv: pads, auto_pad, groups, dilations, strides, 1-D and 3-D
    "conv_sym_pads": _one("Conv", [X4], {"pads": [1, 1, 1, 1]}, {"w": _w(4, 3, 3, 3), "b": _w(4)}),
    "conv_asym_pads": _one("Conv", [X4], {"pads": [0, 1, 2, 1]}, {"w": _w(4, 3, 3, 3)}),
    "conv_same_upper_s2": _one("Conv", [X4], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, {"w": _w(4, 3, 3, 2)}),
    "conv_same_lower_s2": _one("Conv", [X4], {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, {"w": _w(4, 3, 4, 4)}),
    "conv_valid": _one("Conv", [X4], {"auto_pad": "VALID"}, {"w": _w(4, 3, 3, 3), "b": _w(4)}),
    "conv_groups_dil_stride": _one("Conv", [(1, 4, 9, 9)], {"group": 2, "dilations": [2, 1], "strides": [2, 1],
                                                            "pads": [1, 0, 1, 2]}, {"w": _w(6, 2, 3, 3)}),
    "conv_depthwise": _one("Conv", [X4], {"group": 3, "pads": [1, 1, 1, 1]}, {"w": _w(3, 1, 3, 3), "b": _w(3)}),
    "conv1d_asym": _one("Conv", [(2, 3, 11)], {"pads": [2, 0], "strides": [2]}, {"w": _w(5, 3, 3), "b": _w(5)}),
    "conv3d": _one("Conv", [(1, 2, 4, 5, 6)], {"pads": [1, 1, 1, 1, 1, 1]}, {"w": _w(3, 2, 3, 3, 3)}),
    "conv_opset9": _one("Conv", [X4], {"kernel_shape": [3, 3]}, {"w": _w(4, 3, 3, 3)}, opset=9),
    # Gemm / MatMul
    "gemm_transB_alpha_beta": _one("Gemm", [(5, 6)], {"transB": 1, "alpha": 0.5, "beta": 2.0},
                                   {"B": _w(4, 6), "C": _w(4)}),
    "gemm_plain_C_row": _one("Gemm", [(5, 6)], {}, {"B": _w(6, 4), "C": _w(1, 4)}, opset=9),
    "gemm_transA": _one("Gemm", [(6, 5)], {"transA": 1}, {"B": _w(6, 4), "C": _w(4)}),
    "gemm_C_full": _one("Gemm", [(5, 6)], {"beta": 0.5}, {"B": _w(6, 4), "C": _w(5, 4)}),
    "gemm_C_scalar": _one("Gemm", [(5, 6)], {}, {"B": _w(6, 4), "C": np.array(0.7, np.float32)}),
    "gemm_no_C": _one("Gemm", [(5, 6)], {"transB": 1}, {"B": _w(4, 6)}),
    "gemm_dynamic_B": _one("Gemm", [(5, 6), (4, 6), (4,)], {"transB": 1, "alpha": 2.0, "beta": 0.5}),
    "matmul_const_3d_input": _one("MatMul", [(2, 5, 6)], {}, {"B": _w(6, 4)}),
    "matmul_dynamic": _one("MatMul", [(2, 5, 6), (2, 6, 3)]),
    "matmul_const_left": _one("MatMul", [(6, 3)], {}, {"A": _w(5, 6)}, inputs=["A", "x0"]),
    # BatchNormalization (inference), other layers with parameters
    "batchnorm_2d_opset9": _one("BatchNormalization", [X4], {"epsilon": 1e-3},
                                {"s": _w(3), "b": _w(3), "m": _w(3), "v": np.abs(_w(3)) + 0.5}, opset=9),
    "batchnorm_1d_rank3": _one("BatchNormalization", [(2, 3, 5)], {},
                               {"s": _w(3), "b": _w(3), "m": _w(3), "v": np.abs(_w(3)) + 0.5}, opset=15),
    "batchnorm_1d_rank2": _one("BatchNormalization", [(4, 3)], {},
                               {"s": _w(3), "b": _w(3), "m": _w(3), "v": np.abs(_w(3)) + 0.5}),
    "instancenorm": _one("InstanceNormalization", [X4], {"epsilon": 1e-4}, {"s": _w(3), "b": _w(3)}),
    "layernorm": _one("LayerNormalization", [(2, 3, 8)], {"axis": -1}, {"s": _w(8), "b": _w(8)}, opset=17),
    "prelu_channel": _one("PRelu", [X4], {}, {"slope": _w(3, 1, 1)}),
    "prelu_scalar": _one("PRelu", [X4], {}, {"slope": np.array([0.2], np.float32)}),
    "prelu_elementwise": _one("PRelu", [X4], {}, {"slope": _w(7, 9)}),
    # activations
    "relu": _one("Relu", [X4]),
    "sigmoid": _one("Sigmoid", [X4]),
    "tanh": _one("Tanh", [X4]),
    "leaky_relu": _one("LeakyRelu", [X4], {"alpha": 0.2}),
    "leaky_relu_default": _one("LeakyRelu", [X4]),
    "hard_sigmoid_onnx_default": _one("HardSigmoid", [X4]),
    "hard_sigmoid_torch_values": _one("HardSigmoid", [X4], {"alpha": 1 / 6, "beta": 0.5}),
    "hard_swish": _one("HardSwish", [X4], opset=14),
    "elu": _one("Elu", [X4], {"alpha": 0.5}),
    "softplus": _one("Softplus", [X4]),
    "softsign": _one("Softsign", [X4]),
    "mish": _one("Mish", [X4], opset=18),
    "gelu": _one("Gelu", [X4], opset=20),
    "gelu_tanh": _one("Gelu", [X4], {"approximate": "tanh"}, opset=20),
    "clip_relu6_opset9": _one("Clip", [X4], {"min": 0.0, "max": 6.0}, opset=9),
    "clip_attr_one_side_opset9": _one("Clip", [X4], {"max": 0.5}, opset=9),
    "clip_hardtanh": _one("Clip", [X4], {}, {"lo": np.array(-0.5, np.float32), "hi": np.array(1.0, np.float32)}),
    "clip_min_only": _one("Clip", [X4], {}, {"lo": np.array(-0.25, np.float32)}),
    "clip_max_only": _one("Clip", [X4], {}, {"hi": np.array(0.3, np.float32)}, inputs=["x0", "", "hi"]),
    "clip_relu": _one("Clip", [X4], {}, {"lo": np.array(0.0, np.float32)}),
    "clip_relu6": _one("Clip", [X4], {}, {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}),
    # pooling
    "maxpool_k2s2": _one("MaxPool", [X4], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "maxpool_pads": _one("MaxPool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "maxpool_asym_pads": _one("MaxPool", [X4], {"kernel_shape": [3, 2], "pads": [0, 1, 2, 0]}),
    "maxpool_ceil": _one("MaxPool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    "maxpool_ceil_pads": _one("MaxPool", [(1, 2, 8, 8)], {"kernel_shape": [3, 3], "strides": [3, 3],
                                                          "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    "maxpool_ceil_asym": _one("MaxPool", [X4], {"kernel_shape": [2, 3], "strides": [2, 2], "pads": [1, 0, 0, 1],
                                                "ceil_mode": 1}),
    "maxpool_dilated": _one("MaxPool", [X4], {"kernel_shape": [2, 2], "dilations": [2, 2]}, opset=12),
    "maxpool_same_upper": _one("MaxPool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                 "auto_pad": "SAME_UPPER"}),
    "maxpool_1d": _one("MaxPool", [(2, 3, 10)], {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    "avgpool_pads_exclude": _one("AveragePool", [X4], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "avgpool_pads_include": _one("AveragePool", [X4], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                       "count_include_pad": 1}),
    "avgpool_asym_exclude": _one("AveragePool", [X4], {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1]}),
    "avgpool_asym_include": _one("AveragePool", [X4], {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1],
                                                       "count_include_pad": 1}),
    "avgpool_ceil": _one("AveragePool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    "avgpool_ceil_pads_include": _one("AveragePool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                            "pads": [1, 1, 1, 1], "ceil_mode": 1,
                                                            "count_include_pad": 1}),
    "avgpool_ceil_pads_exclude": _one("AveragePool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                            "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    "avgpool_same_lower": _one("AveragePool", [X4], {"kernel_shape": [2, 2], "auto_pad": "SAME_LOWER"}),
    "global_avgpool": _one("GlobalAveragePool", [X4]),
    "global_avgpool_1d": _one("GlobalAveragePool", [(2, 3, 5)]),
    "global_maxpool": _one("GlobalMaxPool", [X4]),
    # shape manipulation
    "flatten_axis0": _one("Flatten", [X4], {"axis": 0}),
    "flatten_axis1": _one("Flatten", [X4], {"axis": 1}, opset=9),
    "flatten_axis2": _one("Flatten", [X4], {"axis": 2}),
    "flatten_axis_neg1": _one("Flatten", [X4], {"axis": -1}),
    "flatten_axis_rank": _one("Flatten", [X4], {"axis": 4}),
    "reshape_zero_minus1": _one("Reshape", [X4], {}, {"s": _i64(0, -1, 9)}),
    "reshape_opset9": _one("Reshape", [X4], {}, {"s": _i64(2, 0, 63)}, opset=9),
    "reshape_allowzero_0": _one("Reshape", [X4], {"allowzero": 0}, {"s": _i64(0, 3, -1)}, opset=14),
    "transpose_perm": _one("Transpose", [X4], {"perm": [0, 2, 3, 1]}),
    "transpose_default": _one("Transpose", [X4]),
    "squeeze_opset9": _one("Squeeze", [(2, 1, 5, 1)], {"axes": [1, 3]}, opset=9),
    "squeeze_opset13": _one("Squeeze", [(2, 1, 5, 1)], {}, {"a": _i64(-1)}),
    "squeeze_all": _one("Squeeze", [(2, 1, 5, 1)]),
    "unsqueeze_opset9": _one("Unsqueeze", [(2, 5)], {"axes": [0, 3]}, opset=9),
    "unsqueeze_opset13_neg": _one("Unsqueeze", [(2, 5)], {}, {"a": _i64(-1, 1)}),
    "concat_const": _one("Concat", [X4, (2, 2, 7, 9)], {"axis": 1}, {"c": _w(2, 1, 7, 9)}),
    "concat_neg_axis": _one("Concat", [X4, X4], {"axis": -1}),
    "split_opset9_attr": _one("Split", [(2, 6, 4)], {"axis": 1, "split": [1, 2, 3]}, opset=9, n_out=3),
    "split_opset13_input": _one("Split", [(2, 6, 4)], {"axis": 1}, {"s": _i64(4, 2)}, n_out=2),
    "split_equal": _one("Split", [(2, 6, 4)], {"axis": -1}, n_out=2),
    "split_num_outputs": _one("Split", [(2, 7, 4)], {"axis": 1, "num_outputs": 3}, opset=18, n_out=3),
    "slice_opset9_attr": _one("Slice", [X4], {"starts": [1, -4], "ends": [3, 1000], "axes": [1, 3]}, opset=9),
    "slice_opset9_noaxes": _one("Slice", [X4], {"starts": [0, 1], "ends": [1, -1]}, opset=9),
    "slice_steps": _one("Slice", [X4], {}, {"s": _i64(0, 1), "e": _i64(7, 2**63 - 1), "a": _i64(-2, 1),
                                            "st": _i64(2, 1)}),
    "slice_negative_step": _one("Slice", [X4], {}, {"s": _i64(-1, 5), "e": _i64(-(2**63), 1), "a": _i64(3, 2),
                                                    "st": _i64(-2, -1)}),
    "slice_opset10": _one("Slice", [X4], {}, {"s": _i64(1), "e": _i64(3)}, opset=10),
    "gather_scalar": _one("Gather", [X4], {"axis": 1}, {"i": np.array(2, np.int64)}),
    "gather_array": _one("Gather", [X4], {"axis": 3}, {"i": np.array([[0, -1], [4, 2]], np.int64)}),
    "gather_axis0": _one("Gather", [(5, 4)], {}, {"i": np.array([3, 0, 3], np.int32)}),
    "softmax_opset9_coerced": _one("Softmax", [(2, 3, 4)], {"axis": 1}, opset=9),
    "softmax_opset9_default": _one("Softmax", [(2, 3, 4)], opset=9),
    "softmax_opset9_last": _one("Softmax", [(2, 3, 4)], {"axis": 2}, opset=9),
    "softmax_opset13_axis1": _one("Softmax", [(2, 3, 4)], {"axis": 1}),
    "logsoftmax_opset11": _one("LogSoftmax", [(2, 3, 4)], opset=11),
    "logsoftmax_opset13": _one("LogSoftmax", [(2, 3, 4)]),
    "reduce_mean_attr": _one("ReduceMean", [X4], {"axes": [2, 3], "keepdims": 0}),
    "reduce_mean_opset18": _one("ReduceMean", [X4], {}, {"a": _i64(-1)}, opset=18),
    "reduce_mean_all": _one("ReduceMean", [X4], {"keepdims": 1}),
    "reduce_sum_input": _one("ReduceSum", [X4], {"keepdims": 0}, {"a": _i64(1)}),
    "reduce_max": _one("ReduceMax", [X4], {"axes": [1]}),
    "reduce_min": _one("ReduceMin", [X4], {"axes": [0, 2]}),
    "pad_constant_opset11": _one("Pad", [X4], {}, {"p": _i64(0, 0, 1, 2, 0, 1, 0, 3), "v": np.array(1.5, np.float32)}),
    "pad_constant_opset9": _one("Pad", [X4], {"pads": [0, 1, 0, 0, 0, 0, 2, 1], "value": -2.0}, opset=9),
    "pad_negative": _one("Pad", [X4], {}, {"p": _i64(0, 0, -1, 2, 0, 0, 1, -2)}),
    "pad_reflect": _one("Pad", [X4], {"mode": "reflect"}, {"p": _i64(0, 0, 2, 1, 0, 0, 1, 2)}),
    "pad_edge": _one("Pad", [X4], {"mode": "edge"}, {"p": _i64(0, 0, 2, 1, 0, 0, 1, 2)}),
    "pad_axes_opset18": _one("Pad", [X4], {}, {"p": _i64(1, 2), "v": np.array(0.5, np.float32), "a": _i64(-1)},
                             opset=18, inputs=["x0", "p", "v", "a"]),
    # Resize / Upsample
    "resize_nearest_default": _one("Resize", [X4], {}, {"r": np.zeros(0, np.float32),
                                                        "sc": np.array([1, 1, 2, 2], np.float32)}),
    "resize_nearest_asym_floor_sizes": _one("Resize", [X4], {"coordinate_transformation_mode": "asymmetric",
                                                             "nearest_mode": "floor"},
                                            {"sz": _i64(2, 3, 14, 27)}, inputs=["x0", "", "", "sz"]),
    "resize_nearest_odd_sizes": _one("Resize", [X4], {"nearest_mode": "round_prefer_ceil"},
                                     {"sz": _i64(2, 3, 10, 5)}, inputs=["x0", "", "", "sz"]),
    "resize_nearest_align_corners": _one("Resize", [X4], {"coordinate_transformation_mode": "align_corners"},
                                         {"sz": _i64(2, 3, 12, 12)}, inputs=["x0", "", "", "sz"]),
    "resize_nearest_channels": _one("Resize", [X4], {}, {"r": np.zeros(0, np.float32),
                                                         "sc": np.array([1, 2, 1, 1], np.float32)}),
    "resize_linear_half_pixel": _one("Resize", [X4], {"mode": "linear"},
                                     {"r": np.zeros(0, np.float32), "sc": np.array([1, 1, 2, 2], np.float32)}),
    "resize_linear_odd_scale": _one("Resize", [X4], {"mode": "linear"},
                                    {"r": np.zeros(0, np.float32), "sc": np.array([1, 1, 1.5, 0.75], np.float32)}),
    "resize_linear_align_corners": _one("Resize", [X4], {"mode": "linear",
                                                         "coordinate_transformation_mode": "align_corners"},
                                        {"sz": _i64(2, 3, 13, 4)}, inputs=["x0", "", "", "sz"]),
    "resize_linear_asymmetric": _one("Resize", [X4], {"mode": "linear",
                                                      "coordinate_transformation_mode": "asymmetric"},
                                     {"r": np.zeros(0, np.float32), "sc": np.array([1, 1, 2, 3], np.float32)}),
    "resize_opset10_nearest": _one("Resize", [X4], {}, {"sc": np.array([1, 1, 2, 3], np.float32)}, opset=10),
    "upsample_opset9": _one("Upsample", [X4], {}, {"sc": np.array([1, 1, 2, 2], np.float32)}, opset=9),
    "upsample_opset7_attr": _one("Upsample", [X4], {"scales": [1.0, 1.0, 3.0, 2.0]}, opset=7),
    # elementwise
    "add_dynamic": _one("Add", [X4, (3, 1, 9)]),
    "add_const": _one("Add", [X4], {}, {"c": _w(7, 9)}),
    "sub_const_left": _one("Sub", [X4], {}, {"c": _w(9)}, inputs=["c", "x0"]),
    "mul_scalar": _one("Mul", [X4], {}, {"c": np.array(0.1, np.float32)}),
    "div_const": _one("Div", [X4], {}, {"c": np.array(2.0, np.float32)}),
    "div_dynamic": _one("Div", [X4, X4]),
    "pow_scalar": _one("Pow", [X4], {}, {"c": np.array(2.0, np.float32)}),
    "pow_tensor": _one("Pow", [X4], {}, {"c": _w(9)}),
    "max3": _one("Max", [X4, X4, (9,)]),
    "min2": _one("Min", [X4, X4]),
    "sum3": _one("Sum", [X4, X4, X4]),
    "mean2": _one("Mean", [X4, X4]),
    "identity": _one("Identity", [X4]),
    "dropout_opset9": _one("Dropout", [X4], {"ratio": 0.3}, opset=9),
    "dropout_opset13_ratio": _one("Dropout", [X4], {}, {"r": np.array(0.5, np.float32)}),
    "cast_float": _one("Cast", [X4], {"to": TensorProto.FLOAT}),
}
for _u in ["Exp", "Sqrt", "Neg", "Abs", "Log", "Reciprocal", "Erf", "Floor", "Ceil", "Sin", "Cos"]:
    CASES[_u.lower()] = _one(_u, [X4])


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_node_model_matches_ort(name):
    model = CASES[name]
    positive = model.graph.node[0].op_type in NEG
    _check(model, seed=len(name), positive=positive)


def test_cases_cover_every_supported_op():
    used = {n.op_type for m in CASES.values() for n in m.graph.node}
    missing = set(supported_ops()) - used - {"Shape", "Size"}  # Shape/Size: the folding tests below
    assert not missing, f"no ORT comparison for {sorted(missing)}"


# ---------------------------------------------------------------------------------------------
# folds and module structure
# ---------------------------------------------------------------------------------------------
def test_conv_bias_add_is_folded_into_conv_opset8():
    w, c = _w(4, 3, 5, 5), _w(4, 1, 1, seed=2)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[5, 5], auto_pad="SAME_UPPER"),
             helper.make_node("Add", ["c", "bias"], ["a"], name="plus"),
             helper.make_node("Relu", ["a"], ["y"], name="relu")]
    m = _model(nodes, {"x": (1, 3, 8, 8)}, ["y"], {"w": w, "bias": c}, opset=8)
    gm = _check(m)
    convs = _modules(gm, nn.Conv2d)
    assert len(convs) == 1 and not _ops(gm, "call_function") and not _ops(gm, "get_attr")
    conv = gm.get_submodule(convs[0].target)
    np.testing.assert_array_equal(conv.bias.detach().numpy(), c.reshape(4))
    assert conv.padding == (2, 2)
    assert gm.onnx_node_names[convs[0].name] == "conv"
    assert gm.onnx_tensor_names[convs[0].name] == "a"


@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (4, 1, 1), (1,), ()])
def test_conv_existing_bias_plus_constant_folds(shape):
    c = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) + 1
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Add", ["bias", "c"], ["y"], name="plus")]
    m = _model(nodes, {"x": (1, 3, 6, 6)}, ["y"], {"w": _w(4, 3, 3, 3), "b": _w(4), "bias": c})
    gm = _check(m)
    assert len(_modules(gm, nn.Conv2d)) == 1 and not _ops(gm, "call_function")


def test_conv_add_not_folded_when_conv_output_is_shared_or_not_per_channel():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "k"], ["y"], name="plus"),
             helper.make_node("Relu", ["c"], ["z"], name="relu")]
    m = _model(nodes, {"x": (1, 3, 6, 6)}, ["y", "z"], {"w": _w(4, 3, 3, 3), "k": _w(4, 1, 1)})
    gm = _check(m)
    assert gm.get_submodule(_modules(gm, nn.Conv2d)[0].target).bias is None
    assert len(_ops(gm, "call_function")) == 1
    m2 = _model(nodes[:2], {"x": (1, 3, 6, 6)}, ["y"], {"w": _w(4, 3, 3, 3), "k": _w(4, 4, 1)})
    gm2 = _check(m2)
    assert len(_ops(gm2, "call_function")) == 1


def test_conv_add_behind_identity_with_another_reader_is_not_folded():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Identity", ["c"], ["d"], name="id"),
             helper.make_node("Add", ["d", "k"], ["y"], name="plus"),
             helper.make_node("Relu", ["c"], ["z"], name="relu")]
    gm = _check(_model(nodes, {"x": (1, 3, 6, 6)}, ["y", "z"], {"w": _w(4, 3, 3, 3), "k": _w(4, 1, 1)}))
    assert gm.get_submodule(_modules(gm, nn.Conv2d)[0].target).bias is None


def test_two_constant_adds_fold_in_turn():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "k1"], ["a"], name="plus1"),
             helper.make_node("Sub", ["a", "k2"], ["y"], name="minus2")]
    gm = _check(_model(nodes, {"x": (1, 3, 6, 6)}, ["y"], {"w": _w(4, 3, 3, 3), "k1": _w(4, 1, 1),
                                                            "k2": np.array(0.5, np.float32)}))
    assert not _ops(gm, "call_function") and gm.onnx_tensor_names[_modules(gm, nn.Conv2d)[0].name] == "y"


def test_outputs_that_are_inputs_or_constants():
    nodes = [helper.make_node("Constant", [], ["k"], name="k", value=numpy_helper.from_array(_w(2, 3))),
             helper.make_node("Relu", ["x"], ["r"], name="relu")]
    m = _model(nodes, {"x": (2, 3)}, ["r", "k", "x"])
    gm = _check(m)
    assert gm.output_names == ["r", "k", "x"]


def test_matmul_add_is_folded_into_linear():
    w, bias = _w(6, 4), _w(1, 4, seed=3)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["y"], name="plus")]
    gm = _check(_model(nodes, {"x": (3, 6)}, ["y"], {"w": w, "b": bias}))
    (lin,) = _modules(gm, nn.Linear)
    mod = gm.get_submodule(lin.target)
    np.testing.assert_array_equal(mod.weight.detach().numpy(), w.T)
    np.testing.assert_array_equal(mod.bias.detach().numpy(), bias.reshape(4))
    assert not _ops(gm, "call_function") and gm.onnx_node_names[lin.name] == "mm"


def test_matmul_add_of_matrix_is_not_folded():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["y"], name="plus")]
    gm = _check(_model(nodes, {"x": (3, 6)}, ["y"], {"w": _w(6, 4), "b": _w(3, 4)}))
    assert gm.get_submodule(_modules(gm, nn.Linear)[0].target).bias is None


def test_gemm_folds_alpha_beta_transpose_into_linear():
    b_mat, c = _w(4, 6), _w(4)
    gm = _check(_one("Gemm", [(5, 6)], {"transB": 1, "alpha": 0.5, "beta": 2.0}, {"B": b_mat, "C": c}))
    (lin,) = _modules(gm, nn.Linear)
    mod = gm.get_submodule(lin.target)
    np.testing.assert_allclose(mod.weight.detach().numpy(), 0.5 * b_mat, rtol=1e-7)
    np.testing.assert_allclose(mod.bias.detach().numpy(), 2.0 * c, rtol=1e-7)
    assert not _ops(gm, "call_function")


def test_batchnorm_is_an_eval_module_with_running_stats():
    s, bb, mean, var = _w(3), _w(3), _w(3), np.abs(_w(3)) + 0.5
    gm = _check(_one("BatchNormalization", [X4], {"epsilon": 1e-3}, {"s": s, "b": bb, "m": mean, "v": var}, opset=9))
    (node,) = _modules(gm, nn.BatchNorm2d)
    bn = gm.get_submodule(node.target)
    assert not bn.training and bn.eps == pytest.approx(1e-3, rel=1e-6)
    np.testing.assert_array_equal(bn.running_var.numpy(), var)
    np.testing.assert_array_equal(bn.weight.detach().numpy(), s)
    assert isinstance(bn.weight, nn.Parameter) and bn.weight.device.type == "cpu"


def test_asymmetric_pads_emit_an_explicit_pad_before_the_conv():
    gm = _check(CASES["conv_asym_pads"])
    (conv,) = _modules(gm, nn.Conv2d)
    assert gm.get_submodule(conv.target).padding == (0, 0)
    (pad,) = _ops(gm, "call_function")
    assert pad.target is torch.nn.functional.pad and conv.args[0] is pad
    assert gm.onnx_node_names[pad.name] == gm.onnx_node_names[conv.name] == "the_conv"


@pytest.mark.parametrize("case,cls", [("clip_relu6", nn.ReLU6), ("clip_relu6_opset9", nn.ReLU6),
                                      ("clip_hardtanh", nn.Hardtanh), ("clip_relu", nn.ReLU),
                                      ("hard_sigmoid_torch_values", nn.Hardsigmoid), ("leaky_relu", nn.LeakyReLU),
                                      ("maxpool_ceil_pads", nn.MaxPool2d), ("global_avgpool", nn.AdaptiveAvgPool2d),
                                      ("prelu_channel", nn.PReLU), ("layernorm", nn.LayerNorm)])
def test_activation_and_pool_modules(case, cls):
    gm = import_onnx(CASES[case])
    assert len(_modules(gm, cls)) == 1


def test_importing_does_not_touch_torch_rng_or_the_model_proto():
    m = CASES["conv_sym_pads"]
    before = m.SerializeToString()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    import_onnx(m)
    assert torch.equal(torch.rand(3), expected)
    assert m.SerializeToString() == before


def test_attributes_survive_deepcopy():
    gm = import_onnx(CASES["gemm_transB_alpha_beta"])
    gm2 = copy.deepcopy(gm)
    for k in ("input_names", "output_names", "onnx_node_names", "onnx_tensor_names"):
        assert getattr(gm2, k) == getattr(gm, k)
    assert gm.input_names == ["x0"] and gm.output_names == ["y0"]


def test_awkward_onnx_names_become_valid_distinct_attributes():
    nodes = [helper.make_node("Conv", ["input.1", "w"], ["c"], name="/features/features.0/Conv"),
             helper.make_node("Relu", ["c"], ["r"], name="forward"),
             helper.make_node("Relu", ["r"], ["r2"], name="graph"),
             helper.make_node("Relu", ["r2"], ["y"], name="meta")]
    gm = _check(_model(nodes, {"input.1": (1, 2, 5, 5)}, ["y"], {"w": _w(3, 2, 3, 3)}))
    names = [n.target for n in _ops(gm, "call_module")]
    assert names[0] == "features_features_0_Conv" and len(set(names)) == 4
    assert sorted(gm.onnx_node_names.values()) == ["/features/features.0/Conv", "forward", "graph", "meta"]
    assert gm.input_names == ["input.1"]


def test_multiple_outputs_return_a_tuple_in_onnx_order():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Neg", ["x"], ["n"], name="neg")]
    m = _model(nodes, {"x": (2, 3)}, ["n", "r"])
    gm = _check(m)
    y = gm(torch.ones(2, 3))
    assert isinstance(y, tuple) and float(y[0][0, 0]) == -1.0 and float(y[1][0, 0]) == 1.0


# ---------------------------------------------------------------------------------------------
# shape subgraphs are folded for static shapes
# ---------------------------------------------------------------------------------------------
def _shape_chain_model(batch):
    """x [B,4,3,5] -> Conv -> Transpose -> Shape -> Gather(0) -> Unsqueeze -> Concat(.., -1, 3) -> Reshape."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Transpose", ["c"], ["t"], name="tr", perm=[0, 2, 3, 1]),
        helper.make_node("Shape", ["t"], ["s"], name="shape"),
        helper.make_node("Constant", [], ["zero"], name="k0", value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Gather", ["s", "zero"], ["b"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["b"], ["b1"], name="unsq", axes=[0]),
        helper.make_node("Constant", [], ["rest"], name="k1", value=numpy_helper.from_array(_i64(-1, 3))),
        helper.make_node("Concat", ["b1", "rest"], ["shp"], name="cat", axis=0),
        helper.make_node("Reshape", ["t", "shp"], ["y"], name="reshape"),
    ]
    return _model(nodes, {"x": (batch, 4, 3, 5)}, ["y"], {"w": _w(6, 4, 1, 1)}, opset=9)


def test_shape_subgraph_is_folded_to_a_constant_reshape():
    gm = _check(_shape_chain_model(2))
    (reshape,) = [n for n in gm.graph.nodes if n.target is torch.reshape]
    assert reshape.args[1] == (2, -1, 3)
    assert {gm.onnx_node_names[n.name] for n in _ops(gm, "call_function") + _ops(gm, "call_module")} == \
        {"conv", "tr", "reshape"}


def test_symbolic_dim_needs_input_shapes():
    m = _shape_chain_model("batch")
    with pytest.raises(ModelError, match="input_shapes"):
        import_onnx(m)
    gm = import_onnx(m, input_shapes={"x": (3, 4, 3, 5)})
    feeds = {"x": np.random.default_rng(0).normal(size=(3, 4, 3, 5)).astype(np.float32)}
    np.testing.assert_allclose(_torch(gm, feeds)[0], _ort(m, feeds)[0], rtol=1e-5, atol=1e-5)


def test_symbolic_batch_without_shape_ops_imports_and_runs_any_batch():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Flatten", ["c"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "B"], ["y"], name="fc", transB=1)]
    m = _model(nodes, {"x": ("N", 2, 4, 4)}, ["y"], {"w": _w(3, 2, 3, 3), "B": _w(5, 12)})
    gm = import_onnx(m)
    for batch in (1, 4):
        feeds = {"x": np.random.default_rng(batch).normal(size=(batch, 2, 4, 4)).astype(np.float32)}
        np.testing.assert_allclose(_torch(gm, feeds)[0], _ort(m, feeds)[0], rtol=1e-5, atol=1e-5)


def test_tiny_cnn_of_the_runtime_tests_imports_with_its_symbolic_batch():
    from tests.onnx_models import tiny_cnn

    m = tiny_cnn()
    gm = import_onnx(m)
    assert len(_modules(gm, nn.Conv2d)) == 3 and len(_modules(gm, nn.Linear)) == 1
    feeds = {"x": np.random.default_rng(7).normal(size=(3, 1, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(_torch(gm, feeds)[0], _ort(m, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", [(0, -1), (0, 3, -1), (-1, 0, 4), (0, 12, 2)])
def test_reshape_copying_a_symbolic_dim(target):
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")]
    m = _model(nodes, {"x": ("N", 3, 2, 4)}, ["y"], {"s": _i64(*target)})
    gm = import_onnx(m)
    for batch in (1, 3):
        feeds = {"x": np.random.default_rng(batch).normal(size=(batch, 3, 2, 4)).astype(np.float32)}
        np.testing.assert_array_equal(_torch(gm, feeds)[0], _ort(m, feeds)[0])


@pytest.mark.parametrize("bad", [{"y": (1, 2)}, {"x": (2, 4, 3)}, {"x": (2, 5, 3, 5)}, {"x": (0, 4, 3, 5)}])
def test_bad_input_shapes_are_refused(bad):
    with pytest.raises(ModelError, match="input_shapes"):
        import_onnx(_shape_chain_model("batch"), input_shapes=bad)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_unsupported_op_names_op_node_and_supported_list():
    m = _one("TopK", [(2, 5)], {"axis": 1}, {"k": _i64(2)}, n_out=2)
    with pytest.raises(UnsupportedError) as e:
        import_onnx(m)
    msg = str(e.value)
    assert "TopK" in msg and "the_topk" in msg and "Supported ops" in msg and "Conv" in msg


def test_custom_domain_op_is_unsupported():
    node = helper.make_node("Gelu", ["x"], ["y"], name="msgelu", domain="com.microsoft")
    m = _model([node], {"x": (2, 3)}, ["y"])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedError, match="com.microsoft"):
        import_onnx(m)


def test_missing_input_names_node_and_tensor():
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")]
    with pytest.raises(ModelError, match="adder.*ghost"):
        import_onnx(_model(nodes, {"x": (2, 3)}, ["y"]))


def test_missing_output_and_cycle():
    with pytest.raises(ModelError, match="'nowhere'"):
        import_onnx(_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (2,)}, ["nowhere"]))
    cyc = [helper.make_node("Add", ["x", "b"], ["a"], name="n1"), helper.make_node("Relu", ["a"], ["b"], name="n2")]
    with pytest.raises(ModelError, match="cycle"):
        import_onnx(_model(cyc, {"x": (2,)}, ["b"]))


def test_unreadable_file_and_missing_file(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf \xff\xff")
    with pytest.raises(ModelError, match="broken.onnx"):
        import_onnx(bad)
    with pytest.raises(ModelError, match="absent.onnx"):
        import_onnx(tmp_path / "absent.onnx")
    with pytest.raises(ModelError):
        import_onnx(42)


def test_malformed_node_names_the_node():
    with pytest.raises(ModelError, match="the_concat"):
        import_onnx(_one("Concat", [X4, X4]))  # no axis attribute
    with pytest.raises(ModelError, match="the_maxpool.*kernel_shape"):
        import_onnx(_one("MaxPool", [X4]))


def test_non_float_input_is_refused():
    node = helper.make_node("Cast", ["x"], ["y"], name="cast", to=TensorProto.FLOAT)
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.INT64, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    with pytest.raises(UnsupportedError, match="'x'.*INT64.*float32"):
        import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_dynamic_weight_and_old_opset_are_refused():
    with pytest.raises(UnsupportedError, match="the_conv.*weight.*constant"):
        import_onnx(_one("Conv", [X4, (4, 3, 3, 3)]))
    with pytest.raises(UnsupportedError, match="opset 6"):
        import_onnx(_one("Relu", [X4], opset=6))


def test_dead_unsupported_nodes_are_ignored():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu"),
             helper.make_node("TopK", ["x", "k"], ["v", "i"], name="dead", axis=1)]
    gm = _check(_model(nodes, {"x": (2, 5)}, ["y"], {"k": _i64(2)}))
    assert list(gm.onnx_node_names.values()) == ["relu"]


# ---------------------------------------------------------------------------------------------
# property tests: conv / pool / slice geometry vs ONNX Runtime
# ---------------------------------------------------------------------------------------------
@st.composite
def conv_geometry(draw):
    k = [draw(st.integers(1, 4)) for _ in range(2)]
    d = [draw(st.integers(1, 2)) for _ in range(2)]
    s = [draw(st.integers(1, 3)) for _ in range(2)]
    size = [draw(st.integers((k[i] - 1) * d[i] + 1, 10)) for i in range(2)]
    group = draw(st.sampled_from([1, 2]))
    attrs = {"kernel_shape": k, "dilations": d, "strides": s, "group": group}
    autos = ["NOTSET", "NOTSET", "VALID"] + (["SAME_UPPER", "SAME_LOWER"] if d == [1, 1] else [])
    auto = draw(st.sampled_from(autos))  # ONNX Runtime refuses dilations with SAME_*
    if auto == "NOTSET":
        attrs["pads"] = [draw(st.integers(0, 3)) for _ in range(4)]
    else:
        attrs["auto_pad"] = auto
    return size, group, attrs, draw(st.booleans())


@given(conv_geometry())
def test_conv_geometry_matches_ort(geo):
    size, group, attrs, with_bias = geo
    inits = {"w": _w(2 * group, 2, *attrs["kernel_shape"])}
    if with_bias:
        inits["b"] = _w(2 * group, seed=4)
    _check(_one("Conv", [(1, 2 * group, *size)], attrs, inits), rtol=1e-5, atol=1e-5)


@st.composite
def pool_geometry(draw):
    op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
    k = [draw(st.integers(1, 4)) for _ in range(2)]
    s = [draw(st.integers(1, 3)) for _ in range(2)]
    attrs = {"kernel_shape": k, "strides": s, "ceil_mode": int(draw(st.booleans()))}
    d = [1, 1]
    if op == "MaxPool" and draw(st.booleans()):
        d = [draw(st.integers(1, 2)) for _ in range(2)]
        attrs["dilations"] = d
    if op == "AveragePool":
        attrs["count_include_pad"] = int(draw(st.booleans()))
    # ONNX Runtime computes negative SAME pads (and fails) when a stride exceeds the kernel, and leaves
    # the dilation out of the SAME pads (the ONNX spec includes it; the importer follows the spec)
    same_ok = all(s[i] <= k[i] for i in range(2)) and d == [1, 1]
    auto = draw(st.sampled_from(["NOTSET", "NOTSET", "VALID"] + ["SAME_UPPER"] * same_ok))
    if auto == "NOTSET":  # ONNX Runtime requires pads < kernel
        attrs["pads"] = [draw(st.integers(0, k[i % 2] - 1)) for i in range(4)]
    else:
        attrs["auto_pad"] = auto
        attrs["ceil_mode"] = 0
    size = [draw(st.integers((k[i] - 1) * d[i] + 1, 10)) for i in range(2)]
    return op, size, attrs


@given(pool_geometry())
def test_pool_geometry_matches_ort(geo):
    op, size, attrs = geo
    _check(_one(op, [(1, 2, *size)], attrs, opset=12))


@given(st.integers(-8, 8), st.integers(-9, 9), st.sampled_from([-3, -2, -1, 1, 2, 3]), st.integers(0, 2))
def test_slice_matches_ort(start, end, step, axis):
    _check(_one("Slice", [(3, 5, 7)], {}, {"s": _i64(start), "e": _i64(end), "a": _i64(axis), "st": _i64(step)}))


# ---------------------------------------------------------------------------------------------
# the real models (../shared/data)
# ---------------------------------------------------------------------------------------------
def _stored(folder, name):
    return numpy_helper.to_array(onnx.load_tensor(str(folder / name)))


def _close(got, ref, what):
    tol = 1e-4 * max(1.0, float(np.max(np.abs(ref))))
    err = float(np.max(np.abs(got.astype(np.float64) - ref)))
    assert got.shape == ref.shape and err <= tol, f"{what}: max |diff| {err} > {tol}"


@pytest.mark.shared_data
def test_mnist8_matches_ort_and_stored_outputs(shared_data):
    path = shared_data / "onnx" / "mnist-8" / "model.onnx"
    gm = import_onnx(path)
    assert gm.input_names == ["Input3"] and gm.output_names == ["Plus214_Output_0"]
    convs, lins = _modules(gm, nn.Conv2d), _modules(gm, nn.Linear)
    assert len(convs) == 2 and len(lins) == 1
    assert all(gm.get_submodule(n.target).bias is not None for n in convs + lins)  # Add folds
    assert sorted(gm.onnx_node_names[n.name] for n in convs + lins) == ["Convolution110", "Convolution28", "Times212"]
    assert [n.target for n in _ops(gm, "call_function")] == [torch.reshape]  # no Add left
    sess = _session(str(path))
    for k in range(3):
        folder = path.parent / f"test_data_set_{k}"
        x = _stored(folder, "input_0.pb")
        (got,) = _torch(gm, {"Input3": x})
        _close(got, sess.run(None, {"Input3": x})[0], f"mnist-8 set {k} vs ORT")
        _close(got, _stored(folder, "output_0.pb"), f"mnist-8 set {k} vs stored output")


@pytest.mark.shared_data
def test_ultraface_matches_ort_and_stored_outputs(shared_data):
    path = shared_data / "onnx" / "ultraface-version-RFB-640" / "version-RFB-640.onnx"
    gm = import_onnx(path)
    gm.graph.lint()
    assert gm.output_names == ["scores", "boxes"]
    convs, bns = _modules(gm, nn.Conv2d), _modules(gm, nn.BatchNorm2d)
    assert len(convs) == 52 and len(bns) == 35 and len(_modules(gm, nn.ReLU)) == 37
    assert all(n.name in gm.onnx_node_names for n in convs + bns)
    folded = {"Shape", "Gather", "Unsqueeze", "Constant"}  # the shape subgraphs (unnamed nodes: op_output)
    assert not [v for v in gm.onnx_node_names.values() if v.split("_")[0] in folded]
    assert [n.args[1] for n in gm.graph.nodes if n.target is torch.reshape].count((1, -1, 2)) == 4
    folder = path.parent / "test_data_set_0"
    x = _stored(folder, "input_0.pb")
    got = _torch(gm, {gm.input_names[0]: x})
    ref = _session(str(path)).run(None, {gm.input_names[0]: x})
    for i, name in enumerate(gm.output_names):
        _close(got[i], ref[i], f"ultraface {name} vs ORT")
        _close(got[i], _stored(folder, f"output_{i}.pb"), f"ultraface {name} vs stored output")
