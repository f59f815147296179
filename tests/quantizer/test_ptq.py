"""The PTQ pipeline: auto keeps a step only where the held-out score improves and leaves the model
exactly as it was when nothing improves; explicit lists apply every step; the result still runs
bit-exactly on the integer runtime; the CLI reports the decisions."""
from __future__ import annotations


import numpy as np
import pytest
import torch

import runtime
from hwsim.cli import main
from tests.cli_output import json_out
from hwsim.digits import SHIPPED, load_digits_split
from hwsim.export import build
from quantizer.ptq import AUTO_STEPS, accuracy_score, parse_steps, run_ptq, sqnr_score
from runtime.errors import HwsimError
from tests.hwsim.sim_models import small_calibrated_sim


def _state(sim):
    w = {k: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
         for k, m in sim.layers.items()}
    enc = {k: v.to_dict() if hasattr(v, "to_dict") else (np.asarray(v.scale).tolist(), np.asarray(v.zero_point).tolist())
           for k, v in sim.encodings().items()}
    return w, enc


def _same(a, b):
    (wa, ea), (wb, eb) = a, b
    return ea == eb and all(torch.equal(wa[k][0], wb[k][0]) and
                            (wa[k][1] is None or torch.equal(wa[k][1], wb[k][1])) for k in wa)


def test_parse_steps():
    assert parse_steps("auto") == AUTO_STEPS
    assert parse_steps("adaround,cle") == ("cle", "adaround")  # pipeline order
    assert parse_steps("bc") == ("bias-correction",)
    assert parse_steps("none") == ()
    with pytest.raises(HwsimError, match="unknown step"):
        parse_steps("cle,magic")
    with pytest.raises(HwsimError, match="choose one"):
        parse_steps("bias-correction,bias-correction-analytical")


def test_auto_without_improvement_leaves_the_model_unchanged():
    sim, x = small_calibrated_sim("dsp-int8")
    before = _state(sim)
    calls = []

    def constant(s):
        calls.append(1)
        return 0.0
    rep = run_ptq(sim, [x[:32], x[32:]], "auto", constant, options={"adaround": {"iterations": 20}}, progress=False)
    assert [d["kept"] for d in rep["decisions"]] == [False] * len(AUTO_STEPS)
    assert _same(before, _state(sim))
    assert len(calls) >= 1 + len(AUTO_STEPS)


def test_auto_keeps_only_improving_steps_and_result_is_bit_exact():
    sim, x = small_calibrated_sim("dsp-int8")
    score = sqnr_score(x)
    rep = run_ptq(sim, [x[:32], x[32:]], "auto", score, options={"adaround": {"iterations": 100}}, progress=False)
    best = rep["baseline"]
    for d in rep["decisions"]:
        assert d["kept"] == (d["score_after"] > d["score_before"])
        if d["kept"]:
            best = d["score_after"]
    assert rep["final"] == best >= rep["baseline"]
    assert score(sim) == pytest.approx(rep["final"])  # the caller's sim is the kept model
    # what was kept still runs identically in exact mode and on the integer runtime
    xi = x[:16]
    vals = sim.run_exact((xi,))
    out = sim.output_names[0]
    y = runtime.load(build(sim), sim.target).run_with_details({sim.input_names[0]: xi.numpy()}, keep_tensors=True)
    np.testing.assert_array_equal(vals[out].numpy(), y.tensors[out + "_q"].astype(np.int64))


def test_explicit_list_applies_every_step():
    sim, x = small_calibrated_sim("npu-int8-pc")
    before = _state(sim)
    rep = run_ptq(sim, [x], "cle,bias-correction", None, progress=False)
    assert [d["step"] for d in rep["decisions"]] == ["cle", "bias-correction"]
    assert all(d["kept"] for d in rep["decisions"]) and not _same(before, _state(sim))
    with pytest.raises(HwsimError, match="score_fn"):
        run_ptq(sim, [x], "auto", None, progress=False)


def test_accuracy_score_breaks_ties_by_sqnr():
    xtr, ytr, xte, yte = load_digits_split()
    from hwsim.digits import pretrained
    import hwsim

    sim = hwsim.simulate(pretrained("separable", xtr, ytr), "dsp-int8", torch.from_numpy(xtr[:1]))
    sim.calibrate([torch.from_numpy(xtr[:128])], progress=False)
    acc, sqnr = accuracy_score(xte[:100], yte[:100])(sim)
    assert 0.8 < acc <= 1.0 and 10 < sqnr < 80


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits")
    x_train, y_train, x_test, y_test = load_digits_split()
    np.savez(d / "train.npz", x=x_train[:256])
    np.save(d / "train_labels.npy", y_train[:256])
    np.savez(d / "val.npz", x=x_test[:200])
    np.save(d / "val_labels.npy", y_test[:200])
    return d


def test_cli_quantize_ptq_auto_reports_decisions(digits, tmp_path, capsys):
    rc = main(["quantize", "hwsim.digits:SeparableNet", "--checkpoint", str(SHIPPED / "digits-separable.pt"),
               "--target", "dsp-int8", "--calib", str(digits / "train.npz"), "--out", str(tmp_path),
               "--ptq", "auto", "--eval-data", str(digits / "val.npz"), "--eval-labels", str(digits / "val_labels.npy"),
               "--adaround-iterations", "50", "--json"])
    assert rc == 0
    r = json_out(capsys)
    assert [d["step"] for d in r["ptq"]["decisions"]] == list(AUTO_STEPS)
    assert r["ptq"]["final"] >= r["ptq"]["baseline"]
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.encodings").is_file()


def test_cli_qat_improves_or_keeps_and_exports(digits, tmp_path, capsys):
    rc = main(["qat", "hwsim.digits:ResidualNet", "--checkpoint", str(SHIPPED / "digits-residual.pt"),
               "--target", "npu-w4a8", "--data", str(digits / "train.npz"), "--labels", str(digits / "train_labels.npy"),
               "--eval-data", str(digits / "val.npz"), "--eval-labels", str(digits / "val_labels.npy"),
               "--out", str(tmp_path), "--epochs", "2", "--lr", "1e-3", "--json"])
    assert rc == 0
    r = json_out(capsys)
    assert len(r["qat"]["losses"]) == 2 and r["qat"]["learned_ranges"]
    assert 0.0 <= r["after"]["integer"] <= 1.0 and abs(r["after"]["integer"] - r["after"]["fast"]) < 0.03
    prog = runtime.load(tmp_path / "model.onnx", "npu-w4a8")
    assert next(iter(prog.run({"x": np.load(digits / "val.npz")["x"][:4]}).values())).shape == (4, 10)
    rc = main(["qat", "hwsim.digits:ResidualNet", "--target", "npu-w4a8", "--data", str(digits / "train.npz"),
               "--labels", str(digits / "val_labels.npy"), "--out", str(tmp_path)])
    assert rc == 2  # 256 samples, 200 labels: a clear error
