"""The integer runtime plans and runs ONNX LSTM and GRU nodes (runtime/ops/recurrent.py).

Models are QDQ graphs built here with onnx.helper from seeded float weights, in the form of
/work/briefs/recurrent_onnx.md (the exporter's contract): integer X (and initial states) -> DequantizeLinear
-> LSTM/GRU with DequantizeLinear'd integer W, R, B -> QuantizeLinear on Y, Y_h, Y_c.

- Exact (0 LSB): ``runtime.load(model, target).run`` == ``prepare_lstm``/``prepare_gru`` + ``lstm_int``/
  ``gru_int`` called directly per direction, over directions, layouts, initial states and used outputs,
  on every target that runs recurrent layers.
- Toleranced: ONNX Runtime runs the same file as the float reference; the runtime's Y tracks ORT's Y
  quantized by the same QuantizeLinear within ``ORT_TOLERANCE_STEPS`` steps of the hidden scale (see there).
- Refusals: each raises the stated error class with the node named.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import runtime
from runtime.errors import DataError, EncodingError, UnsupportedError
from runtime.kernels.recurrent import gru_int, lstm_int
from runtime.recurrent import prepare_gru, prepare_lstm
from runtime.target import load_target

NODE = "rnn_node"
_ELEM = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8, "int16": TensorProto.INT16,
         "int4": TensorProto.INT4, "int32": TensorProto.INT32}
_NP = {"uint8": np.uint8, "int8": np.int8, "int16": np.int16, "int32": np.int32, "i64": np.int64}
# (x scale, x zero point, hidden scale, hidden zero point) per activation dtype: x in about [-2, 2], h in (-1, 1)
_ACT = {"uint8": (4 / 255, 128, 2 / 255, 127), "int8": (4 / 255, -3, 2 / 255, 1), "int16": (2 / 32767, 0, 1 / 32767, 0)}


@dataclass(frozen=True)
class Spec:
    op: str = "LSTM"
    target: str = "dsp-int8"
    direction: str = "forward"
    layout: int = 0
    steps: int = 5
    batch: int = 3
    inputs: int = 4
    hidden: int = 6
    initial_h: bool = False
    initial_c: bool = False
    use_y: bool = True
    use_yh: bool = False
    use_yc: bool = False
    clip: float | None = None
    weight_scales: str = "target"  # "target" (per gate or per row as the target says) | "tensor" | "row"
    fold_rb: bool = True  # LSTM Rb (and GRU z, r Rb) folded into Wb, as the exporter writes
    cell_log2: int = -11
    seed: int = 0
    load: str | None = None  # refusal tests: plan on this target instead of ``target``

    @property
    def dirs(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    @property
    def gates(self) -> int:
        return 4 if self.op == "LSTM" else 3


def _tensor(name, values, dtype):
    values = np.asarray(values)
    if dtype == "int4":
        return helper.make_tensor(name, TensorProto.INT4, list(values.shape), values.astype(np.int64).ravel().tolist())
    return numpy_helper.from_array(values.astype(_NP.get(dtype, np.float32)), name)


def _sym_quantize(w, bits, per_row, gates):
    """Symmetric integer weights [D, G*H, K] and their row scales [G*H] (shared by the directions):
    per row (max |w| of the row over both directions) or per gate (max over the gate's rows)."""
    qpos = (1 << (bits - 1)) - 1
    amax = np.abs(w).max(axis=(0, 2))
    if not per_row:
        amax = np.repeat(amax.reshape(gates, -1).max(axis=1), amax.size // gates)
    s = (amax / qpos).astype(np.float32)
    q = np.clip(np.rint(w / s[None, :, None]), -qpos, qpos).astype(np.int64)
    return q, s


def build(spec: Spec, **edit):
    """(ModelProto, feeds, reference data) for ``spec``; ``edit`` changes the graph for refusal tests:
    attrs (dict), extra inputs by index (dict index -> name), x_enc, hidden_enc, cell_enc, h0_enc, c0_enc,
    bias_scale_factor, w_zero_point, y_consumer ("graph_output"), yc_absent, opset."""
    t = load_target(spec.target)
    act = str(t.arithmetic.activations.dtype)
    tq = t.arithmetic.recurrent_weights()
    rng = np.random.default_rng(spec.seed)
    D, G, H, I, T, N = spec.dirs, spec.gates, spec.hidden, spec.inputs, spec.steps, spec.batch
    k = 1 / np.sqrt(H)
    w_f = rng.uniform(-k, k, (D, G * H, I)) * 2.0
    r_f = rng.uniform(-k, k, (D, G * H, H)) * 2.0
    b_f = rng.uniform(-k, k, (D, 2 * G * H))
    per_row = {"target": tq.granularity == "per_channel", "row": True, "tensor": False}[spec.weight_scales]
    bits = tq.qtype.bits
    wq, s_w = _sym_quantize(w_f, bits, per_row, G)
    rq, s_r = _sym_quantize(r_f, bits, per_row, G)
    if spec.weight_scales == "tensor":
        s_w = np.full_like(s_w, s_w.max())
        s_r = np.full_like(s_r, s_r.max())
        qpos = (1 << (bits - 1)) - 1
        wq = np.clip(np.rint(w_f / s_w[0]), -qpos, qpos).astype(np.int64)
        rq = np.clip(np.rint(r_f / s_r[0]), -qpos, qpos).astype(np.int64)
    s_x, zp_x, s_h, zp_h = edit.get("x_enc", _ACT[act][:2]) + edit.get("hidden_enc", _ACT[act][2:])
    s_x, s_h = np.float32(s_x), np.float32(s_h)
    wb_f, rb_f = b_f[:, :G * H].copy(), b_f[:, G * H:].copy()
    if spec.fold_rb:  # LSTM: all of Rb; GRU: the z and r parts (the n part stays: linear_before_reset)
        n_fold = G * H if spec.op == "LSTM" else 2 * H
        wb_f[:, :n_fold] += rb_f[:, :n_fold]
        rb_f[:, :n_fold] = 0.0
    sb_w = (s_x * s_w).astype(np.float32)
    sb_r = (s_h * s_r).astype(np.float32)
    wb = np.rint(wb_f / sb_w).astype(np.int64)
    rb = np.rint(rb_f / sb_r).astype(np.int64)
    sb_r_written = np.where(np.any(rb != 0, axis=0), sb_r, np.float32(1.0))  # a zero scale is not allowed
    b_scale = np.concatenate([sb_w, sb_r_written]) * np.float32(edit.get("bias_scale_factor", 1.0))
    if "bias_values" in edit:
        wb = edit["bias_values"](wb)

    x_shape = [T, N, I] if spec.layout == 0 else [N, T, I]
    s_shape = [D, N, H] if spec.layout == 0 else [N, D, H]
    lo, hi = np.iinfo(_NP[act]).min, np.iinfo(_NP[act]).max
    x_q = rng.integers(lo, hi + 1, x_shape).astype(_NP[act])
    if act == "int16":  # keep x inside about [-2, 2] as for 8-bit
        x_q = rng.integers(-32767, 32768, x_shape).astype(np.int16)
    h0_q = rng.integers(max(lo, zp_h - 100), min(hi, zp_h + 100) + 1, s_shape).astype(_NP[act])
    c0_q = rng.integers(-6000, 6001, s_shape).astype(np.int16)

    x_elem = _ELEM[edit.get("x_dtype", act)]
    inits = [
        _tensor("x_scale", s_x, "f"), _tensor("x_zp", edit.get("x_zp_value", zp_x), edit.get("x_dtype", act)),
        _tensor("h_scale", s_h, "f"), _tensor("h_zp", zp_h, edit.get("hidden_dtype", act)),
        _tensor("W_q", wq, tq.dtype), _tensor("R_q", rq, tq.dtype),
        _tensor("W_scale", s_w if spec.weight_scales != "tensor" else s_w[0], "f"),
        _tensor("R_scale", s_r if spec.weight_scales != "tensor" else s_r[0], "f"),
        _tensor("W_zp", np.full(s_w.shape if spec.weight_scales != "tensor" else (), edit.get("w_zero_point", 0)),
                tq.dtype),
        _tensor("R_zp", np.zeros(s_r.shape if spec.weight_scales != "tensor" else ()), tq.dtype),
        _tensor("B_q", np.concatenate([wb, rb], axis=1), "int32"), _tensor("B_scale", b_scale, "f"),
        _tensor("B_zp", np.zeros(2 * G * H), "int32"),
    ]
    c_scale, c_zp, c_dtype = edit.get("cell_enc", (np.float32(2.0 ** spec.cell_log2), 0, "int16"))
    if spec.op == "LSTM":
        inits += [_tensor("c_scale", c_scale, "f"), _tensor("c_zp", c_zp, c_dtype)]
    nodes = [
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["W_q", "W_scale", "W_zp"], ["W"], name="dq_W", axis=1),
        helper.make_node("DequantizeLinear", ["R_q", "R_scale", "R_zp"], ["R"], name="dq_R", axis=1),
        helper.make_node("DequantizeLinear", ["B_q", "B_scale", "B_zp"], ["B"], name="dq_B", axis=1),
    ]
    graph_inputs = [helper.make_tensor_value_info("x_q", x_elem, x_shape)]
    feeds = {"x_q": x_q}
    rnn_in = ["x", "W", "R", "B", "", "", ""] if spec.op == "LSTM" else ["x", "W", "R", "B", "", ""]
    if spec.initial_h:
        h0_s, h0_zp = edit.get("h0_enc", (s_h, zp_h))
        inits += [_tensor("h0_scale", h0_s, "f"), _tensor("h0_zp", h0_zp, act)]
        nodes.append(helper.make_node("DequantizeLinear", ["h0_q", "h0_scale", "h0_zp"], ["h0"], name="dq_h0"))
        graph_inputs.append(helper.make_tensor_value_info("h0_q", _ELEM[act], s_shape))
        feeds["h0_q"] = h0_q
        rnn_in[5] = "h0"
    if spec.initial_c:
        c0_s = edit.get("c0_enc", c_scale)
        inits += [_tensor("c0_scale", c0_s, "f"), _tensor("c0_zp", 0, "int16")]
        nodes.append(helper.make_node("DequantizeLinear", ["c0_q", "c0_scale", "c0_zp"], ["c0"], name="dq_c0"))
        graph_inputs.append(helper.make_tensor_value_info("c0_q", TensorProto.INT16, s_shape))
        feeds["c0_q"] = c0_q
        rnn_in[6] = "c0"
    for i, (name, arr, dtype) in edit.get("extra_inputs", {}).items():
        inits.append(_tensor(name, arr, dtype))
        rnn_in += [""] * (i + 1 - len(rnn_in))
        rnn_in[i] = name
    while rnn_in and not rnn_in[-1]:
        rnn_in.pop()
    attrs = dict(hidden_size=H, direction=spec.direction)
    if spec.layout:
        attrs["layout"] = 1
    if spec.clip is not None:
        attrs["clip"] = spec.clip
    if spec.op == "GRU":
        attrs["linear_before_reset"] = 1
    attrs.update(edit.get("attrs", {}))
    outs = ["Y" if spec.use_y else "", "Y_h" if spec.use_yh else ""]
    if spec.op == "LSTM" and not edit.get("yc_absent"):
        outs.append("Y_c")
    while outs and not outs[-1]:
        outs.pop()
    nodes.append(helper.make_node(spec.op, rnn_in, outs, name=NODE, **attrs))
    graph_outputs = []
    out_shape = {"Y": [T, D, N, H] if spec.layout == 0 else [N, T, D, H], "Y_h": s_shape, "Y_c": s_shape}
    for used, src, dst, scale, zp in ((spec.use_y, "Y", "y_q", "h_scale", "h_zp"),
                                      (spec.use_yh, "Y_h", "yh_q", "h_scale", "h_zp"),
                                      (spec.op == "LSTM" and not edit.get("yc_absent"), "Y_c", "yc_q", "c_scale", "c_zp")):
        if not used:
            continue
        if src == "Y" and edit.get("y_consumer") == "graph_output":
            graph_outputs.append(helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_shape["Y"]))
            continue
        nodes.append(helper.make_node("QuantizeLinear", [src, scale, zp], [dst], name=f"q_{src}"))
        if src != "Y_c" or spec.use_yc:
            elem = TensorProto.INT16 if src == "Y_c" else _ELEM[edit.get("hidden_dtype", act)]
            graph_outputs.append(helper.make_tensor_value_info(dst, elem, out_shape[src]))
    graph = helper.make_graph(nodes, "rnn", graph_inputs, graph_outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    ref = dict(wq=wq, rq=rq, wb=wb, rb=rb, s_w=s_w, s_r=s_r, s_x=s_x, zp_x=zp_x, s_h=s_h, zp_h=zp_h,
               x=x_q, h0=h0_q, c0=c0_q, act=act, rounding=t.arithmetic.recurrent.rounding)
    return model, feeds, ref


def reference(spec: Spec, ref) -> dict[str, np.ndarray]:
    """Y, Y_h, Y_c by calling prepare_*/lstm_int/gru_int directly (ONNX gate order = internal order)."""
    D, G, H = spec.dirs, spec.gates, spec.hidden
    x = ref["x"] if spec.layout == 0 else ref["x"].transpose(1, 0, 2)
    h0 = ref["h0"] if spec.layout == 0 else ref["h0"].transpose(1, 0, 2)
    c0 = ref["c0"] if spec.layout == 0 else ref["c0"].transpose(1, 0, 2)
    common = dict(input_scale=ref["s_x"], input_zero_point=ref["zp_x"], input_weight_scales=ref["s_w"].reshape(G, H),
                  hidden_scale=ref["s_h"], hidden_zero_point=ref["zp_h"], recurrent_weight_scales=ref["s_r"].reshape(G, H),
                  input_dtype=ref["act"], hidden_dtype=ref["act"], rounding=ref["rounding"])
    ys, hs, cs = [], [], []
    for d in range(D):
        rev = spec.direction == "reverse" or d == 1
        wx, wh = ref["wq"][d].reshape(G, H, -1), ref["rq"][d].reshape(G, H, H)
        wb, rb = ref["wb"][d].reshape(G, H), ref["rb"][d].reshape(G, H)
        xd = np.ascontiguousarray(x[::-1] if rev else x)
        h0d = np.ascontiguousarray(h0[d]) if spec.initial_h else None
        if spec.op == "LSTM":
            params = prepare_lstm(wx, wh, wb, cell_scale=2.0 ** spec.cell_log2, cell_clip=spec.clip or 0.0,
                                  recurrent_bias=rb, **common)
            y, h, c = lstm_int(xd, h0d, np.ascontiguousarray(c0[d]) if spec.initial_c else None, params)
        else:
            params = prepare_gru(wx, wh, wb, rb, **common)
            (y, h), c = gru_int(xd, h0d, params), None
        ys.append(y[::-1] if rev else y)
        hs.append(h)
        cs.append(c)
    y = np.stack(ys, axis=1)
    out = {"y_q": y.transpose(2, 0, 1, 3) if spec.layout else y}
    out["yh_q"] = np.stack(hs).transpose(1, 0, 2) if spec.layout else np.stack(hs)
    if spec.op == "LSTM":
        out["yc_q"] = np.stack(cs).transpose(1, 0, 2) if spec.layout else np.stack(cs)
    return out


BIT_EXACT = [
    Spec(),
    Spec(direction="bidirectional", initial_h=True, initial_c=True, use_yh=True, use_yc=True, seed=1),
    Spec(direction="reverse", layout=1, initial_h=True, use_yh=True, use_yc=True, target="npu-int8-pc", seed=2),
    Spec(direction="bidirectional", layout=1, initial_c=True, use_yh=True, use_yc=True, target="npu-int8-pc",
         clip=0.5, seed=3),
    Spec(direction="bidirectional", target="npu-w4a8", initial_h=True, initial_c=True, use_yc=True, seed=4),
    Spec(direction="reverse", target="npu-w4a8", layout=1, batch=1, steps=7, seed=5),
    Spec(target="npu-int8-pc", weight_scales="tensor", use_y=False, use_yh=True, cell_log2=-13, seed=6),
    Spec(target="dsp-int8", direction="bidirectional", fold_rb=False, use_yh=True, seed=7),
    Spec(op="GRU"),
    Spec(op="GRU", direction="bidirectional", initial_h=True, use_yh=True, target="npu-int8-pc", layout=1, seed=8),
    Spec(op="GRU", direction="reverse", target="npu-w4a8", initial_h=True, seed=9),
    Spec(op="GRU", target="dsp-int8", fold_rb=False, seed=10),
    Spec(target="htp-a16w8", direction="bidirectional", initial_h=True, initial_c=True, use_yh=True, use_yc=True,
         seed=11),
    Spec(op="GRU", target="htp-a16w8", direction="reverse", layout=1, initial_h=True, seed=12),
]


def _id(s: Spec) -> str:
    return f"{s.op}-{s.target}-{s.direction}-L{s.layout}{'-h0' if s.initial_h else ''}{'-c0' if s.initial_c else ''}" \
           f"{'-rb' if not s.fold_rb else ''}{'-' + s.weight_scales if s.weight_scales != 'target' else ''}"


@pytest.mark.parametrize("spec", BIT_EXACT, ids=_id)
def test_runtime_equals_kernels_bit_for_bit(spec):
    model, feeds, ref = build(spec)
    onnx.checker.check_model(model)
    prog = runtime.load(model, spec.target)
    res = prog.run_with_details(feeds)
    want = reference(spec, ref)
    names = [n for n, used in (("y_q", spec.use_y), ("yh_q", spec.use_yh), ("yc_q", spec.use_yc)) if used]
    assert sorted(res.outputs) == sorted(names)
    for n in names:
        assert res.outputs[n].dtype == want[n].dtype, n
        np.testing.assert_array_equal(res.outputs[n], want[n], err_msg=n)
    st = res.stats[NODE]
    lo, hi = np.iinfo(want["y_q"].dtype).min, np.iinfo(want["y_q"].dtype).max
    assert st.saturation == int(np.count_nonzero((want["y_q"] == lo) | (want["y_q"] == hi)))
    produced = [n for n, made in (("y_q", spec.use_y), ("yh_q", spec.use_yh), ("yc_q", spec.op == "LSTM")) if made]
    assert st.elements == sum(want[n].size for n in produced)


def test_saturation_is_counted():
    """A hidden scale so small that most outputs clamp: the count equals the elements at the ends."""
    spec = Spec(seed=3)
    model, feeds, ref = build(spec, hidden_enc=(0.1 / 255, 127))
    res = runtime.load(model, spec.target).run_with_details(feeds)
    y = res.outputs["y_q"]
    n_end = int(np.count_nonzero((y == 0) | (y == 255)))
    assert n_end > y.size // 4
    assert res.stats[NODE].saturation == n_end


# ---------------------------------------------------------------------------------------------
# ONNX Runtime as the float reference
# ---------------------------------------------------------------------------------------------
# The integer LSTM/GRU differs from the float op by: Q3.12 pre-activation rounding, the int16 sigmoid/tanh
# (<= 6.7 / 12.1 LSB of Q0.15), the rounded cell update, and the hidden state fed back quantized (ORT feeds
# back the float h); these compound over the steps. ORT's output passes the same QuantizeLinear, so its
# rounding (0.5 step) is part of the difference. Measured (T = 8, the cases below x 6 seeds): 8-bit Y and
# Y_h at most 1 step of s_h; int16 Y at most 31 steps (9.5e-4 real; each int16 step is 3e-5); the cell
# state (Y_c, int16 at 2^-11) at most 6 steps. Bounds: twice the measurement.
ORT_TOLERANCE_STEPS = 2  # 8-bit hidden: steps of s_h
ORT_TOLERANCE_REAL = 2e-3  # 16-bit hidden: real units (h in (-1, 1))
ORT_TOLERANCE_CELL_STEPS = 12  # the cell state: steps of 2^p


def _ort(model, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 3  # the dead QuantizeLinear of Y_c is pruned with a warning
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


ORT_CASES = [
    Spec(steps=8, use_yh=True, use_yc=True, initial_h=True, initial_c=True),
    Spec(direction="bidirectional", target="npu-int8-pc", steps=8, use_yh=True, seed=21),
    Spec(direction="reverse", target="npu-w4a8", steps=8, seed=22),
    Spec(direction="bidirectional", target="npu-int8-pc", layout=1, steps=8, initial_h=True, initial_c=True,
         use_yh=True, seed=23),
    Spec(op="GRU", steps=8, initial_h=True, use_yh=True, seed=24),
    Spec(op="GRU", direction="bidirectional", target="npu-w4a8", steps=8, seed=25),
    Spec(op="GRU", direction="bidirectional", target="dsp-int8", layout=1, steps=8, initial_h=True, seed=26),
    Spec(target="htp-a16w8", direction="bidirectional", steps=8, initial_h=True, seed=27),
    Spec(op="GRU", target="htp-a16w8", steps=8, seed=28),
]


def _to_layout0(spec: Spec, feeds):
    """The layout-0 twin of a layout-1 model (ORT's LSTM/GRU refuse layout 1): feeds and outputs transposed."""
    twin = dataclasses.replace(spec, layout=0)
    f0 = {k: np.ascontiguousarray(v.transpose(1, 0, 2)) for k, v in feeds.items()}
    back = {"y_q": lambda a: a.transpose(2, 0, 1, 3), "yh_q": lambda a: a.transpose(1, 0, 2),
            "yc_q": lambda a: a.transpose(1, 0, 2)}
    model0, _, _ = build(twin)
    ort_out = _ort(model0, f0)
    return {k: back[k](v) for k, v in ort_out.items()}


@pytest.mark.parametrize("spec", ORT_CASES, ids=_id)
def test_tracks_onnxruntime_float_reference(spec):
    model, feeds, ref = build(spec)
    ours = runtime.load(model, spec.target).run(feeds)
    theirs = _ort(model, feeds) if spec.layout == 0 else _to_layout0(spec, feeds)
    for name in ours:
        diff = np.abs(ours[name].astype(np.int64) - theirs[name].astype(np.int64))
        if name == "yc_q":  # the cell state, in steps of 2^p
            assert diff.max() <= ORT_TOLERANCE_CELL_STEPS, (name, diff.max())
            continue
        if ref["act"] == "int16":
            assert diff.max() * float(ref["s_h"]) <= ORT_TOLERANCE_REAL, (name, diff.max())
        else:
            assert diff.max() <= ORT_TOLERANCE_STEPS, (name, diff.max())


# ---------------------------------------------------------------------------------------------
# chains: LSTM -> Q/DQ -> LSTM, and a classifier tail
# ---------------------------------------------------------------------------------------------
def _two_layer_classifier(seed=30):
    """x_q -> DQ -> LSTM1 (Y_c used) -> Q/DQ -> LSTM2 -> Q/DQ -> Gather(last step) -> Squeeze -> Gemm -> Q."""
    s1 = Spec(steps=6, hidden=6, seed=seed)
    m1, feeds, ref1 = build(s1)
    s2 = Spec(steps=6, inputs=6, hidden=5, seed=seed + 1)
    m2, _, ref2 = build(s2, x_enc=(ref1["s_h"], ref1["zp_h"]))  # layer 2 reads layer 1's hidden encoding
    rng = np.random.default_rng(seed)
    g1, g2 = m1.graph, m2.graph
    nodes = list(g1.node)
    inits = list(g1.initializer)
    # layer 2: rename its tensors, read layer 1's quantized Y through a DequantizeLinear
    ren = {n.name: "l2_" + n.name for n in g2.initializer}
    ren.update({"Y": "l2_Y", "Y_c": "l2_Y_c", "y_q": "l2_y_q", "yc_q": "l2_yc_q", "W": "l2_W", "R": "l2_R", "B": "l2_B"})
    for t in g2.initializer:
        c = onnx.TensorProto()
        c.CopyFrom(t)
        c.name = ren[t.name]
        if t.name not in ("x_scale", "x_zp"):
            inits.append(c)
    nodes.append(helper.make_node("Squeeze", ["y_q", "ax1"], ["y1_sq"], name="squeeze1"))
    nodes.append(helper.make_node("DequantizeLinear", ["y1_sq", "h_scale", "h_zp"], ["l2_x"], name="dq_l2_x"))
    for n in g2.node:
        if n.name == "dq_x":
            continue
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.name = "l2_" + n.name
        c.input[:] = ["l2_x" if i == "x" else ren.get(i, i) for i in n.input]
        c.output[:] = [ren.get(o, "l2_" + o) for o in n.output]
        nodes.append(c)
    n_cls = 4
    wf = rng.uniform(-0.5, 0.5, (n_cls, 5))
    s_f = np.float32(np.abs(wf).max() / 127)
    s_in = np.float32(ref2["s_h"])
    inits += [_tensor("last", -1, "i64"), _tensor("ax0", [0], "i64"), _tensor("ax1", [1], "i64"),
              _tensor("fc_wq", np.rint(wf / s_f), "int8"), _tensor("fc_ws", s_f, "f"), _tensor("fc_wzp", 0, "int8"),
              _tensor("fc_bq", np.rint(rng.uniform(-0.2, 0.2, n_cls) / (s_in * s_f)), "int32"),
              _tensor("fc_bs", np.float32(s_in * s_f), "f"), _tensor("fc_bzp", 0, "int32"),
              _tensor("out_s", np.float32(0.02), "f"), _tensor("out_zp", 128, "uint8")]
    nodes += [
        helper.make_node("DequantizeLinear", ["l2_y_q", "l2_h_scale", "l2_h_zp"], ["l2_y"], name="dq_l2_y"),
        helper.make_node("Gather", ["l2_y", "last"], ["last_step"], name="gather_last", axis=0),
        helper.make_node("Squeeze", ["last_step", "ax0"], ["feat"], name="squeeze2"),
        helper.make_node("DequantizeLinear", ["fc_wq", "fc_ws", "fc_wzp"], ["fc_w"], name="dq_fc_w"),
        helper.make_node("DequantizeLinear", ["fc_bq", "fc_bs", "fc_bzp"], ["fc_b"], name="dq_fc_b"),
        helper.make_node("Gemm", ["feat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
        helper.make_node("QuantizeLinear", ["logits", "out_s", "out_zp"], ["logits_q"], name="q_logits"),
    ]
    graph = helper.make_graph(nodes, "two_layer", list(g1.input),
                              [helper.make_tensor_value_info("logits_q", TensorProto.UINT8, [s1.batch, n_cls])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model, feeds, (s1, ref1), (s2, ref2)


def test_two_layer_chain_and_classifier_plan_and_run():
    model, feeds, (s1, ref1), (s2, ref2) = _two_layer_classifier()
    prog = runtime.load(model, "dsp-int8")
    res = prog.run_with_details(feeds, keep_tensors=True)
    assert [s.op_type for s in prog.steps if s.op_type in ("LSTM", "Gemm")] == ["LSTM", "LSTM", "Gemm"]
    # layer 1 exactly as the kernels; layer 2 exactly as the kernels on layer 1's integer output
    y1 = reference(s1, ref1)["y_q"]
    np.testing.assert_array_equal(res.tensors["y_q"], y1)
    ref2 = dict(ref2, x=np.ascontiguousarray(y1[:, 0]))
    y2 = reference(s2, ref2)["y_q"]
    np.testing.assert_array_equal(res.tensors["l2_y_q"], y2)
    logits = res.outputs["logits_q"]
    assert logits.shape == (s1.batch, 4) and logits.dtype == np.uint8
    theirs = _ort(model, feeds)["logits_q"]
    assert np.abs(logits.astype(int) - theirs.astype(int)).max() <= 2


# ---------------------------------------------------------------------------------------------
# refusals: the right error class, the node named
# ---------------------------------------------------------------------------------------------
def _big_bias(wb):
    return np.full_like(wb, (1 << 31) - 1)


REFUSALS = [
    ("ort-cpu target", Spec(target="ort-cpu-avx2"), {}, UnsupportedError, "runs LSTM and GRU in float"),
    ("ort-cpu target GRU", Spec(op="GRU", target="ort-cpu-vnni"), {}, UnsupportedError, "does not run GRU"),
    ("peepholes", Spec(), {"extra_inputs": {7: ("P", np.zeros((1, 18)), "f")}}, UnsupportedError, "peephole"),
    ("sequence_lens != T", Spec(), {"extra_inputs": {4: ("seq", np.int32([5, 4, 5]), "int32")}}, UnsupportedError,
     "sequence_lens"),
    ("input_forget", Spec(), {"attrs": {"input_forget": 1}}, UnsupportedError, "input_forget"),
    ("activations", Spec(), {"attrs": {"activations": ["Sigmoid", "Relu", "Tanh"]}}, UnsupportedError, "activations"),
    ("GRU lbr 0", Spec(op="GRU"), {"attrs": {"linear_before_reset": 0}}, UnsupportedError, "linear_before_reset"),
    ("GRU clip", Spec(op="GRU"), {"attrs": {"clip": 2.0}}, UnsupportedError, "clip"),
    ("bias scale", Spec(), {"bias_scale_factor": 1.01}, EncodingError, "bias B 'B'.*expected float32"),
    ("cell scale not 2^p", Spec(), {"cell_enc": (np.float32(0.001), 0, "int16")}, EncodingError, "cell encoding"),
    ("cell p too large", Spec(), {"cell_enc": (np.float32(2.0 ** -8), 0, "int16")}, EncodingError, "cell encoding"),
    ("cell zero point", Spec(), {"cell_enc": (np.float32(2.0 ** -11), 5, "int16")}, EncodingError, "cell encoding"),
    ("cell dtype", Spec(), {"cell_enc": (np.float32(2.0 ** -4), 0, "int8")}, EncodingError, "cell encoding"),
    ("Y_c absent", Spec(), {"yc_absent": True}, UnsupportedError, "Y_c is absent"),
    ("initial_h encoding", Spec(initial_h=True), {"h0_enc": (np.float32(0.01), 127)}, EncodingError, "initial_h"),
    ("initial_c encoding", Spec(initial_c=True), {"c0_enc": np.float32(2.0 ** -10)}, EncodingError, "initial_c"),
    ("weight zero point", Spec(), {"w_zero_point": 1}, EncodingError, "zero point 0"),
    ("per-row scales on a per-gate target", Spec(weight_scales="row"), {}, EncodingError, "one weight scale per gate"),
    ("X float", Spec(), {"x_dtype": "f"}, UnsupportedError, "X"),
    ("X dtype", Spec(), {"x_dtype": "int8", "x_zp_value": 0}, EncodingError, "X 'x' must be quantized per tensor as uint8"),
    ("Y as float graph output", Spec(), {"y_consumer": "graph_output"}, UnsupportedError, "Y"),
    ("8-bit weights on a 4-bit target", Spec(target="npu-int8-pc", load="npu-w4a8"), {}, EncodingError,
     r"W 'W': integer values must lie in \[-8, 7\]"),
    ("hidden dtype", Spec(target="npu-int8-pc"), {"hidden_enc": (2 / 255, 127), "hidden_dtype": "uint8"},
     EncodingError, "hidden encoding"),
    ("prepare error wrapped", Spec(), {"bias_values": _big_bias}, EncodingError, r"\(forward direction\).*overflow"),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_refusals_name_the_node(case, tmp_path):
    _, spec, edit, err, pattern = case
    if edit.get("x_dtype") == "f":  # a float X straight into the node (no DequantizeLinear)
        model, _, _ = build(spec)
        for n in model.graph.node:
            if n.name == "dq_x":
                model.graph.node.remove(n)
                break
        model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 3, 4]))
    else:
        model, _, _ = build(spec, **edit)
    path = tmp_path / "rnn.onnx"
    onnx.save(model, path)
    with pytest.raises(err, match=f"{NODE}.*{pattern}") as info:
        runtime.load(str(path), spec.load or spec.target)
    assert str(info.value).startswith(str(path)), str(info.value)  # the file is named first


def test_constant_sequence_lens_equal_to_t_runs():
    spec = Spec(use_yh=True)
    base, feeds, ref = build(spec)
    model, _, _ = build(spec, extra_inputs={4: ("seq", np.int32([5, 5, 5]), "int32")})
    a = runtime.load(model, spec.target).run(feeds)
    b = runtime.load(base, spec.target).run(feeds)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_sequence_lens_checked_when_run_if_t_is_not_static():
    """With a symbolic T the plan cannot compare sequence_lens with T; the run does (DataError, node named)."""
    spec = Spec()
    model, feeds, _ = build(spec, extra_inputs={4: ("seq", np.int32([5, 4, 5]), "int32")})
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x_q", TensorProto.UINT8, ["T", 3, 4]))
    prog = runtime.load(model, spec.target)
    with pytest.raises(DataError, match=f"{NODE}.*sequence_lens"):
        prog.run(feeds)


@pytest.mark.parametrize("layout", [0, 1])
def test_constant_initial_states_equal_fed_ones(layout):
    """initial_h / initial_c as DequantizeLinear'd integer initializers run as the same values fed as inputs."""
    spec = Spec(direction="bidirectional", layout=layout, initial_h=True, initial_c=True, use_yh=True, use_yc=True,
                seed=40)
    model, feeds, _ = build(spec)
    want = runtime.load(model, spec.target).run(feeds)
    g = model.graph
    for name in ("h0_q", "c0_q"):
        g.initializer.append(numpy_helper.from_array(feeds.pop(name), name))
        g.input.remove(next(i for i in g.input if i.name == name))
    got = runtime.load(model, spec.target).run(feeds)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
