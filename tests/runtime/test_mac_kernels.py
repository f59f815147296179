"""runtime.kernels.mac: gemm/matmul/conv accumulators == the slow references in tests/reference_kernels.py
bit for bit (0 LSB), with and without ONNX Runtime's AVX2 int16 pair saturation and in both reduction
orders; golden vectors for the saturation; explicit_pads against ONNX's SAME_* rule; the accumulator
policy; onnx.reference (exact sums) and, on AVX2 machines without VNNI, onnxruntime (pair saturation)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import OverflowPolicyError
from runtime.kernels.mac import apply_accumulator, conv_acc, explicit_pads, gemm_raw, matmul_acc
from tests.reference_kernels import accumulator_ref, conv_ref, matmul_ref, same_pads_ref
from tests.strategies import conv_cases, int_tensors, matmul_cases


# ---------------------------------------------------------------------------------------------
# properties: fast kernel == reference, 0 LSB
# ---------------------------------------------------------------------------------------------
@given(matmul_cases(), st.booleans())
def test_matmul_acc_equals_reference(case, pair):
    out = matmul_acc(**case, pair_saturation=pair)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, matmul_ref(**case, pair_saturation=pair))


@given(st.integers(1, 4), st.integers(1, 40), st.integers(1, 4), st.data())
def test_gemm_raw_equals_reference(m, k, n, data):
    a = data.draw(int_tensors((m, k), data.draw(st.sampled_from(["uint8", "int16"]))))
    bt = data.draw(int_tensors((n, k), data.draw(st.sampled_from(["int8", "int16"]))))
    for pair in (False, True):
        ref = matmul_ref(a, 0, bt.T, 0, pair_saturation=pair)
        np.testing.assert_array_equal(gemm_raw(a, bt, pair), ref)


@given(conv_cases(), st.booleans(), st.sampled_from(["hwc", "chw"]))
def test_conv_acc_equals_reference(case, pair, order):
    out = conv_acc(**case, pair_saturation=pair, pair_order=order)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, conv_ref(**case, pair_saturation=pair, pair_order=order))


@settings(max_examples=30)
@given(conv_cases(depthwise=True))
def test_depthwise_conv_direct_kernel_equals_reference(case):
    np.testing.assert_array_equal(conv_acc(**case), conv_ref(**case))


@given(st.sampled_from(["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]),
       st.lists(st.tuples(st.integers(1, 9), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
                min_size=1, max_size=2))
def test_explicit_pads_equals_onnx_rule(auto_pad, dims):
    hw, k, s, d = (tuple(v) for v in zip(*dims))
    pads = explicit_pads(auto_pad, hw, k, s, d)
    assert pads == same_pads_ref(auto_pad, hw, k, s, d)
    if auto_pad.startswith("SAME"):  # the SAME promise: output = ceil(in / stride)
        for i in range(len(k)):
            eff = (k[i] - 1) * d[i] + 1
            assert (hw[i] + pads[i] + pads[len(k) + i] - eff) // s[i] + 1 == -(-hw[i] // s[i])


@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=12), st.sampled_from([8, 16, 24, 32, 64]),
       st.sampled_from(["saturate", "wrap"]))
def test_apply_accumulator_equals_reference(vals, bits, policy):
    acc = np.array(vals, np.int64).reshape(-1, 1)
    out, count = apply_accumulator(acc, bits, policy)
    ref, ref_count = accumulator_ref(acc, bits, policy)
    np.testing.assert_array_equal(out, ref)
    assert count == ref_count


# ---------------------------------------------------------------------------------------------
# golden vectors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k, paired, exact", [(1, 32385, 32385), (2, 32767, 64770), (3, 65152, 97155),
                                              (4, 65534, 129540), (64, 1048544, 2072640)])
def test_matmul_255_times_127(k, paired, exact):
    a = np.full((1, k), 255, np.uint8)
    b = np.full((k, 1), 127, np.int8)
    assert matmul_acc(a, 0, b, 0, pair_saturation=True)[0, 0] == paired
    assert matmul_acc(a, 0, b, 0)[0, 0] == exact


def test_matmul_both_saturation_ends():
    a = np.array([[255, 255, 0, 0]], np.uint8)
    b = np.array([[127, -128], [127, -128], [127, -128], [127, -128]], np.int8)
    # pairs: 255*127*2 = 64770 -> 32767; 255*-128*2 = -65280 -> -32768
    np.testing.assert_array_equal(matmul_acc(a, 0, b, 0, pair_saturation=True), [[32767, -32768]])
    np.testing.assert_array_equal(matmul_acc(a, 0, b, 0), [[64770, -65280]])


def test_matmul_zero_points_after_pair_saturation():
    # raw pair saturates to 32767; correction -za*sum(b) - zb*sum(a) + K*za*zb with za=5, zb=[1]
    a = np.full((1, 2), 255, np.uint8)
    b = np.full((2, 1), 127, np.int8)
    assert matmul_acc(a, 5, b, np.array([1]), pair_saturation=True)[0, 0] == 32767 - 5 * 254 - 510 + 10


def test_conv_1x1_two_channels_255x127_pair():
    x = np.full((1, 2, 3, 3), 255, np.uint8)
    w = np.full((4, 2, 1, 1), 127, np.int8)
    for order in ("hwc", "chw"):
        out = conv_acc(x, 0, w, 0, None, (1, 1), (0, 0, 0, 0), (1, 1), 1, pair_saturation=True, pair_order=order)
        assert out.shape == (1, 4, 3, 3) and (out == 32767).all()
    assert (conv_acc(x, 0, w, 0, None, (1, 1), (0, 0, 0, 0), (1, 1), 1) == 64770).all()


def test_conv_pair_order_matters():
    # 2x1 kernel over 2 channels: hwc pairs (c0,c1) at one tap, chw pairs the two taps of one channel
    x = np.array([[[[255], [0]], [[255], [0]]]], np.uint8)  # [1, 2, 2, 1]: tap 0 = 255, tap 1 = 0
    w = np.full((1, 2, 2, 1), 127, np.int8)
    args = (None, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    assert conv_acc(x, 0, w, 0, *args, pair_saturation=True, pair_order="hwc")[0, 0, 0, 0] == 32767
    assert conv_acc(x, 0, w, 0, *args, pair_saturation=True, pair_order="chw")[0, 0, 0, 0] == 2 * 32385


def test_conv_padding_counts_as_zero_point():
    x = np.full((1, 1, 1, 1), 7, np.uint8)
    w = np.ones((1, 1, 3, 3), np.int8)
    # 1 real tap (7 - 3) and 8 padded taps holding the zero point 3 -> 4
    assert conv_acc(x, 3, w, 0, None, (1, 1), (1, 1, 1, 1), (1, 1), 1)[0, 0, 0, 0] == 4
    assert conv_acc(x, 3, w, 0, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, pair_saturation=True)[0, 0, 0, 0] == 4


@pytest.mark.parametrize("auto_pad, hw, k, s, d, pads", [
    ("SAME_UPPER", (5,), (3,), (1,), (1,), (1, 1)),
    ("SAME_UPPER", (4,), (3,), (2,), (1,), (0, 1)),
    ("SAME_LOWER", (4,), (3,), (2,), (1,), (1, 0)),
    ("SAME_UPPER", (6, 5), (2, 3), (1, 2), (1, 1), (0, 1, 1, 1)),
    ("SAME_LOWER", (6, 5), (2, 3), (1, 2), (2, 1), (1, 1, 1, 1)),
    ("SAME_LOWER", (7, 5), (2, 2), (1, 2), (1, 1), (1, 1, 0, 0)),
    ("VALID", (6, 5), (2, 3), (1, 2), (1, 1), (0, 0, 0, 0)),
])
def test_explicit_pads_golden(auto_pad, hw, k, s, d, pads):
    assert explicit_pads(auto_pad, hw, k, s, d) == pads


def test_apply_accumulator_golden_and_error():
    acc = np.array([[0, 32767], [32768, -32769]], np.int64)
    out, n = apply_accumulator(acc, 16, "saturate")
    np.testing.assert_array_equal(out, [[0, 32767], [32767, -32768]])
    assert n == 2
    out, n = apply_accumulator(acc, 16, "wrap")
    np.testing.assert_array_equal(out, [[0, 32767], [-32768, 32767]])
    with pytest.raises(OverflowPolicyError, match=r"element \(1, 0\).*32768"):
        apply_accumulator(acc, 16, "error")
    out, n = apply_accumulator(np.array([1, -5]), 16, "error")
    assert n == 0


# ---------------------------------------------------------------------------------------------
# onnx.reference (exact sums) and onnxruntime (pair saturation on AVX2 without VNNI)
# ---------------------------------------------------------------------------------------------
def _model(op, inputs, attrs=None):
    from onnx import TensorProto, helper, numpy_helper  # noqa: F401

    names = [n for n, _ in inputs]
    node = helper.make_node(op, names, ["y"], **(attrs or {}))
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in inputs]
    g = helper.make_graph([node], "g", ins, [helper.make_tensor_value_info("y", TensorProto.INT32, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@settings(max_examples=15)
@given(matmul_cases())
def test_matmul_acc_equals_onnx_reference(case):
    from onnx.reference import ReferenceEvaluator

    a, b = case["a"], case["b"]
    if a.dtype not in (np.uint8, np.int8) or b.dtype not in (np.uint8, np.int8) or a.ndim < 2 or b.ndim < 2:
        return  # MatMulInteger: 8-bit operands (int4 values travel as int8 and are kept)
    zb = np.asarray(case["b_zero_point"], np.int64).reshape(-1)
    za, zb_t = np.array(case["a_zero_point"], a.dtype), zb.astype(b.dtype)
    if zb_t.size == 1:
        zb_t = zb_t.reshape(())
    if int(za) != case["a_zero_point"] or not (zb_t.astype(np.int64).reshape(-1) == zb).all():
        return
    m = _model("MatMulInteger", [("a", a), ("b", b), ("za", za), ("zb", zb_t)])
    (y,) = ReferenceEvaluator(m).run(None, {"a": a, "b": b, "za": za, "zb": zb_t})
    np.testing.assert_array_equal(matmul_acc(a, case["a_zero_point"], b, zb), y.astype(np.int64))


@settings(max_examples=15)
@given(conv_cases())
def test_conv_acc_equals_onnx_reference(case):
    from onnx.reference import ReferenceEvaluator

    x, w = case["x"], case["w"]
    zw = np.asarray(case["w_zero_point"], np.int64).reshape(-1)
    if x.dtype != np.uint8 or w.dtype != np.int8 or zw.size != 1:  # ConvInteger: 8-bit, scalar w zero point
        return
    xz, wz = np.array(case["x_zero_point"], np.uint8), np.array(zw[0], np.int8)
    nd = x.ndim - 2
    attrs = dict(strides=list(case["strides"]), pads=list(case["pads"]), dilations=list(case["dilations"]),
                 group=case["group"], kernel_shape=list(w.shape[2:]))
    m = _model("ConvInteger", [("x", x), ("w", w), ("xz", xz), ("wz", wz)], attrs)
    (y,) = ReferenceEvaluator(m).run(None, {"x": x, "w": w, "xz": xz, "wz": wz})
    case = dict(case, bias=None)
    assert nd in (1, 2)
    np.testing.assert_array_equal(conv_acc(**case), y.astype(np.int64))


def _cpu_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown CPU: do not claim ORT saturates pairs
    return "avx512_vnni" in flags or "avx_vnni" in flags or " avx2" not in flags


@pytest.mark.ort
@pytest.mark.skipif(_cpu_has_vnni(), reason="ORT pairs-saturates u8 x s8 only on AVX2 without VNNI")
@settings(max_examples=20)
@given(st.integers(1, 4), st.integers(1, 40), st.integers(1, 4), st.data())
def test_matmul_pair_saturation_equals_onnxruntime(m, k, n, data):
    ort = pytest.importorskip("onnxruntime")
    a = data.draw(int_tensors((m, k), "uint8"))
    b = data.draw(int_tensors((k, n), "int8"))
    za = np.array(data.draw(st.sampled_from([0, 128, 255])), np.uint8)
    zb = np.array(0, np.int8)
    model = _model("MatMulInteger", [("a", a), ("b", b), ("za", za), ("zb", zb)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"a": a, "b": b, "za": za, "zb": zb})
    np.testing.assert_array_equal(matmul_acc(a, int(za), b, 0, pair_saturation=True), y.astype(np.int64))
