"""Quantized LSTM/GRU in the simulator: float mode is the torch module, fast mode tracks exact mode,
exact mode equals the integer runtime on the exported model bit for bit, ONNX Runtime runs the export
as the float reference, calibration covers the internal tensors, and what cannot run is refused."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings, strategies as st

import hwsim
import runtime
from hwsim.recurrent import runtime_tensor
from runtime.errors import DataError, UnsupportedError

TARGETS = ["dsp-int8", "npu-int8-pc", "npu-w4a8", "htp-a16w8"]


class Seq(torch.nn.Module):
    """A recurrent classifier: rnn over the sequence, Linear on the last step."""

    def __init__(self, kind="LSTM", inp=6, hid=10, layers=1, bi=False, batch_first=True, classes=4):
        super().__init__()
        self.rnn = getattr(torch.nn, kind)(inp, hid, num_layers=layers, bidirectional=bi, batch_first=batch_first)
        self.fc = torch.nn.Linear(hid * (2 if bi else 1), classes)
        self.batch_first = batch_first

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1] if self.batch_first else out[-1])


class WithStates(torch.nn.Module):
    def __init__(self, kind="LSTM"):
        super().__init__()
        self.kind = kind
        self.rnn = getattr(torch.nn, kind)(5, 8, batch_first=True, bidirectional=True)

    def forward(self, x, h0, c0):
        out, _ = self.rnn(x, (h0, c0))
        return out


class GruWithState(WithStates):
    def __init__(self):
        super().__init__("GRU")

    def forward(self, x, h0):
        out, _ = self.rnn(x, h0)
        return out


def _sim(model, target, x, *extra):
    sim = hwsim.simulate(model, target, (x[:1],) + tuple(e[:, :1] for e in extra))
    sim.calibrate([(x,) + extra], progress=False)
    return sim


def _exact_vs_runtime(sim, feeds: dict, tmp_path):
    """Every quantized layer's integer tensor and the output: exact mode == the runtime on the export."""
    files = sim.export(tmp_path, "m")
    prog = runtime.load(files["onnx"], sim.target)
    res = prog.run_with_details({k: v.numpy() for k, v in feeds.items()}, keep_tensors=True)
    vals = sim.run_exact(tuple(feeds.values()))
    n = 0
    for g in sim.groups:
        if g.out_quantized and g.op_type in ("LSTM", "GRU"):
            y = res.tensors[g.name + "_Y_q"]  # [T, D, N, H]
            t = vals[g.output].numpy()  # torch layout
            tnd = np.moveaxis(t, 1, 0) if g.head.attrs["batch_first"] else t  # [T, N, D*H]
            assert np.array_equal(y.transpose(0, 2, 1, 3).reshape(tnd.shape), tnd), g.name
            assert np.array_equal(runtime_tensor(g, res.tensors), t)
            assert sim.stats[g.name]["saturation"] == res.stats[g.name].saturation
            n += 1
    assert n >= 1
    sim.mode = "exact"
    out = sim(*feeds.values())
    assert np.array_equal(out.numpy(), res.outputs[sim.output_names[0]])
    return files, res


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("layers,bi,batch_first", [(1, False, True), (2, True, False)])
def test_float_mode_is_the_torch_module(kind, layers, bi, batch_first):
    torch.manual_seed(0)
    net = Seq(kind, layers=layers, bi=bi, batch_first=batch_first).eval()
    x = torch.randn(5, 7, 6) if batch_first else torch.randn(7, 5, 6)
    sim = hwsim.simulate(net, "dsp-int8", x[:1] if batch_first else x[:, :1])
    assert [g.op_type for g in sim.groups].count(kind) == layers
    sim.mode = "float"
    torch.testing.assert_close(sim(x), net(x), atol=2e-6, rtol=0)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_exact_equals_runtime_and_fast_tracks_exact(kind, target, tmp_path):
    torch.manual_seed(1)
    net = Seq(kind, layers=2, bi=True).eval()
    x = torch.randn(16, 6, 6)
    sim = _sim(net, target, x)
    _exact_vs_runtime(sim, {"x": x}, tmp_path)
    # fast mode (float sigmoid/tanh on the integer grids) within a few output steps of exact mode
    sim.mode = "fast"
    yf = sim(x).detach()
    sim.mode = "exact"
    ye = sim(x)
    # bound: a few 8-bit output steps, or (16-bit targets, whose steps are tiny) the fixed-point
    # sigmoid/tanh error (<= 12 LSB of Q0.15, about 4e-4) carried to the logits
    step = float(sim.quantizer_of(sim.output_names[0]).encoding.scale)
    rel = float(ye.abs().max())
    assert float((yf - ye).abs().max()) <= 6 * step + 2e-3 * rel
    assert float((yf - ye).abs().mean()) <= 1.0 * step + 4e-4 * rel


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_initial_states_are_read_at_the_hidden_and_cell_encodings(kind, tmp_path):
    torch.manual_seed(2)
    net = (WithStates() if kind == "LSTM" else GruWithState()).eval()
    x, h0 = torch.randn(6, 5, 5), 0.5 * torch.randn(2, 6, 8)
    extra = (h0, 2 * torch.randn(2, 6, 8)) if kind == "LSTM" else (h0,)
    sim = _sim(net, "npu-int8-pc", x, *extra)
    assert sim.quantizer_of("h0") is sim.quantizer_of(sim.groups[0].output)
    if kind == "LSTM":
        assert sim.quantizer_of("c0") is sim.cell_q[sim.groups[0].name.replace(".", "_")]
    feeds = dict(zip(sim.input_names, (x,) + extra))
    _exact_vs_runtime(sim, feeds, tmp_path)


@settings(max_examples=6, deadline=None)
@given(kind=st.sampled_from(["LSTM", "GRU"]), t=st.integers(1, 5), n=st.integers(1, 3), inp=st.integers(1, 6),
       hid=st.integers(1, 9), bi=st.booleans(), target=st.sampled_from(TARGETS), seed=st.integers(0, 99))
def test_exact_equals_runtime_random_sizes(tmp_path_factory, kind, t, n, inp, hid, bi, target, seed):
    torch.manual_seed(seed)
    net = Seq(kind, inp=inp, hid=hid, bi=bi).eval()
    with torch.no_grad():
        for p in net.rnn.parameters():
            p.mul_(3.0)  # saturating gates and a large cell state
    x = 2 * torch.randn(n, t, inp)
    sim = _sim(net, target, x)
    _exact_vs_runtime(sim, {"x": x}, tmp_path_factory.mktemp("rnn"))


def test_onnxruntime_runs_the_export_as_the_float_reference(tmp_path):
    """ORT runs the QDQ export (Q/DQ around a float LSTM): close to exact mode, and the float export
    equals the torch model."""
    torch.manual_seed(3)
    net = Seq("LSTM", hid=12, bi=True).eval()
    x = torch.randn(32, 8, 6)
    sim = _sim(net, "dsp-int8", x)
    files = sim.export(tmp_path, "m")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    (yq,) = ort.InferenceSession(str(files["onnx"]), so, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    (yf,) = ort.InferenceSession(str(files["float_onnx"]), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})
    np.testing.assert_allclose(yf, net(x).detach().numpy(), atol=2e-6)
    sim.mode = "exact"
    ye = sim(x).numpy()
    step = float(sim.quantizer_of("fc").encoding.scale)
    # float LSTM on the dequantized weights vs the integer one: a few output steps
    assert np.abs(yq - ye).max() <= 8 * step


def test_calibration_covers_internal_tensors_and_encodings_are_named_as_aimet():
    torch.manual_seed(4)
    net = Seq("LSTM", layers=2).eval()
    with torch.no_grad():
        net.rnn.weight_hh_l0.mul_(4)
    x = 3 * torch.randn(32, 9, 6)
    sim = _sim(net, "dsp-int8", x)
    for k, st_ in sim.recurrent_stats.items():
        p = st_["cell_scale_log2"]
        assert -15 <= p <= -9 and sim.cell_q[k].encoding.scale == 2.0 ** p
        assert st_["cell_absmax"] <= 32767 * 2.0 ** p or p == -9
        assert st_["cell_absmax"] > 32767 * 2.0 ** (p - 1) or p == -15  # the smallest power that holds it
        assert st_["gate_preact_absmax"] > 0
    names = set(sim.encodings())
    for k in (0, 1):
        assert {f"rnn.weight_ih_l{k}", f"rnn.weight_hh_l{k}", f"rnn.c_l{k}"} <= names


def test_exported_encodings_json_has_the_recurrent_names(tmp_path):
    torch.manual_seed(5)
    net = Seq("GRU", bi=True).eval()
    x = torch.randn(8, 4, 6)
    files = _sim(net, "npu-int8-pc", x).export(tmp_path, "m")
    doc = json.loads(files["encodings"].read_text())
    acts = {e["name"] for e in doc["activation_encodings"]}
    params = {e["name"] for e in doc["param_encodings"]}
    assert {"rnn.input_l0", "rnn.h_l0"} <= acts
    assert {"rnn.weight_ih_l0", "rnn.weight_ih_l0_reverse", "rnn.weight_hh_l0", "rnn.bias_hh_l0_reverse"} <= params


def test_qat_trains_an_lstm_and_the_result_still_equals_the_runtime(tmp_path):
    from quantizer.qat import qat

    torch.manual_seed(6)
    net = Seq("LSTM", hid=12).eval()
    x = torch.randn(64, 6, 6)
    y = torch.randint(0, 4, (64,))
    sim = _sim(net, "npu-w4a8", x)
    before = {n: p.detach().clone() for n, p in sim.layers.named_parameters()}
    res = qat(sim, [(x, y)], epochs=3, lr=1e-2, progress=False)
    assert res["losses"][-1] < res["losses"][0]
    assert any("weight_hh" in n and not torch.equal(p, before[n]) for n, p in sim.layers.named_parameters())
    assert all(float(q.encoding.scale.min()) > 0 for q in sim.weight_q.values())
    _exact_vs_runtime(sim, {"x": x}, tmp_path)


def test_unsupported_uses_are_refused_with_the_reason():
    x = torch.randn(2, 3, 6)
    with pytest.raises(UnsupportedError, match="ort-cpu.*LSTM.*float"):
        hwsim.simulate(Seq("LSTM"), "ort-cpu-avx2", x)

    class UsesHn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(6, 4, batch_first=True)

        def forward(self, x):
            _, (h, _) = self.rnn(x)
            return h[-1]

    with pytest.raises(UnsupportedError, match="final states"):
        hwsim.simulate(UsesHn(), "dsp-int8", x)
    proj = Seq("LSTM")
    proj.rnn = torch.nn.LSTM(6, 10, proj_size=2, batch_first=True)
    proj.fc = torch.nn.Linear(2, 4)
    with pytest.raises(UnsupportedError, match="proj_size"):
        hwsim.simulate(proj, "dsp-int8", x)


def test_nan_in_calibration_data_is_named():
    sim = hwsim.simulate(Seq("GRU"), "dsp-int8", torch.zeros(1, 3, 6))
    x = torch.randn(4, 3, 6)
    x[1, 2, 0] = float("nan")
    with pytest.raises(DataError, match="calibration batch 0"):
        sim.calibrate([x], progress=False)


def test_float_plus_encodings_path_says_to_use_the_qdq_export(tmp_path, capsys):
    from hwsim.cli import main

    torch.manual_seed(7)
    x = torch.randn(8, 5, 6)
    files = _sim(Seq("LSTM").eval(), "dsp-int8", x).export(tmp_path, "m")
    with pytest.raises(UnsupportedError, match="LSTM node 'rnn'.*QDQ model"):
        runtime.load(files["float_onnx"], "dsp-int8", encodings=files["encodings"])
    # validation knows the AIMET recurrent names: warnings, no error
    assert main(["encodings", "validate", str(files["float_onnx"]), str(files["encodings"]), "--target", "dsp-int8"]) == 0
    assert "recurrent-internal" in capsys.readouterr().out


def test_compare_and_ptq_auto_run_on_a_recurrent_model():
    """The layer-by-layer comparison and the automatic PTQ pipeline take LSTM layers as they are."""
    from hwsim.compare import compare
    from quantizer.ptq import run_ptq, sqnr_score

    torch.manual_seed(8)
    net = Seq("LSTM", layers=2).eval()
    x = torch.randn(48, 6, 6)
    sim = _sim(net, "dsp-int8", x)
    rep = compare(sim, x.numpy(), np.zeros(48, np.int64), progress=False)
    assert rep["exact_vs_integer"]["identical_fraction"] == 1.0
    assert {"rnn_l0", "rnn"} <= {layer["name"] for layer in rep["layers"]}
    assert all(layer["sqnr_integer_db"] > 20 for layer in rep["layers"])
    res = run_ptq(sim, [x[:32]], "auto", sqnr_score(x[32:]), progress=False)
    assert res["decisions"]
    rep = compare(sim, x.numpy(), None, progress=False)
    assert rep["exact_vs_integer"]["identical_fraction"] == 1.0
