"""Analysis and report (quantizer/analysis, hwsim analyze): the defining properties.

- ``hwsim analyze`` exits 0 and writes report.html, report.json and every plot as a PNG (atomically:
  no temporaries left); the JSON's numbers equal what the Python API returns for the same
  calibrated simulation; the HTML references no URL and embeds exactly the PNG files.
- Sensitivity: with no quantizer enabled the score is the float model's; with one layer's quantizers
  enabled, fast mode differs from float only downstream of that layer (upstream values are equal
  bit for bit, the layer's output differs); the flags come back after the block, also on error.
- Weight ranges: the ``unfolded`` stage is the model's own weights (divided out of the folded ones
  for a simulation), ``folded`` the simulation's; CLE (on a copy, the simulation is unchanged)
  shrinks the spread of the first layer of every equalized pair.
- channel_ranges: relative ranges in [0, 1] with the widest channel at 1, invariant to scaling.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import hwsim
from hwsim.cli_analyze import add_analyze_parser, summary_lines
from hwsim.digits import SHIPPED, ResidualNet, load_digits_split, pretrained
from quantizer.analysis import jsonable
from quantizer.analysis.report import Section, write_report
from quantizer.analysis.sensitivity import (activation_histograms, all_quantizers, layer_output_mse,
                                            quantized_layers, quantizers_enabled, sensitivity)
from quantizer.analysis.weights import channel_ranges, weight_ranges
from quantizer.cle import find_chains
from runtime.errors import HwsimError

N_EVAL, N_CALIB, BS = 64, 48, 32
URL = re.compile(r"(?i)\b(?:https?|ftp)://|//cdn|<script|<link")



def _parser():
    p = argparse.ArgumentParser(prog="hwsim")
    p.add_argument("--debug", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    add_analyze_parser(sub)
    return p


def _run_cli(argv):
    args = _parser().parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = args.func(args)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits")
    x_train, y_train, x_test, y_test = load_digits_split()
    np.savez(d / "calib.npz", x=x_train[:N_CALIB])
    np.savez(d / "test.npz", x=x_test[:N_EVAL])
    np.save(d / "labels.npy", y_test[:N_EVAL])
    # copies, as read back from the files: numpy slices of the size-1 channel axis carry other strides, and
    # torch's float convolutions (hence calibrated scales) can differ in the last bit with the strides
    return d, x_train[:N_CALIB].copy(), x_test[:N_EVAL].copy(), y_test[:N_EVAL].copy()


def _residual_sim(calib):
    """The simulation ``hwsim analyze`` builds for the shipped ResidualNet, calibrated the same way."""
    model = ResidualNet()
    model.load_state_dict(torch.load(SHIPPED / "digits-residual.pt", map_location="cpu", weights_only=True))
    sim = hwsim.simulate(model.eval(), "npu-int8-pc", torch.from_numpy(calib[:1]))
    sim.calibrate([torch.from_numpy(calib[i:i + BS]) for i in range(0, len(calib), BS)], progress=False)
    return model, sim


@pytest.fixture(scope="module")
def cli_report(digits, tmp_path_factory):
    d, *_ = digits
    out = tmp_path_factory.mktemp("report")
    rc, stdout, stderr = _run_cli(["analyze", "hwsim.digits:ResidualNet", "--checkpoint", str(SHIPPED / "digits-residual.pt"),
                                   "--target", "npu-int8-pc", "--data", str(d / "test.npz"), "--labels",
                                   str(d / "labels.npy"), "--calib", str(d / "calib.npz"), "--out", str(out),
                                   "--batch-size", str(BS), "--json"])
    return rc, stdout, stderr, out


# -------------------------------------------------------------------------------------------------
# the command line and the report files
# -------------------------------------------------------------------------------------------------
def test_cli_writes_the_report_files(cli_report):
    rc, stdout, stderr, out = cli_report
    assert rc == 0, stderr
    printed = json.loads(stdout)
    assert printed["files"]["html"] == str(out / "report.html")
    assert (out / "report.html").is_file() and (out / "report.json").is_file()
    doc = json.loads((out / "report.json").read_text())
    assert set(doc["sections"]) == {"sensitivity", "weight_ranges", "activations", "output_mse", "sim_vs_integer"}
    assert printed["sections"] == doc["sections"]
    files = [f for fs in doc["plots"].values() for f in fs]
    assert len(files) == len(printed["files"]["plots"]) and len(files) >= 5 + 5  # one per layer's weights
    for f in files:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))


def test_html_is_self_contained_and_embeds_every_plot(cli_report):
    *_, out = cli_report
    html = (out / "report.html").read_text()
    assert not URL.search(html), URL.search(html)
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert re.findall(r'src="', html) and len(re.findall(r'src="', html)) == len(embedded)
    doc = json.loads((out / "report.json").read_text())
    pngs = [(out / f).read_bytes() for fs in doc["plots"].values() for f in fs]
    assert [base64.b64decode(b) for b in embedded] == pngs
    for layer in doc["sections"]["weight_ranges"]["folded"]:
        assert layer in html


def test_report_json_equals_the_python_api(cli_report, digits):
    *_, out = cli_report
    _, calib, x, y = digits
    doc = json.loads((out / "report.json").read_text())["sections"]
    _, sim = _residual_sim(calib)
    assert doc["sensitivity"] == jsonable(sensitivity(sim, x, y, batch_size=BS, progress=False))
    assert doc["weight_ranges"] == jsonable(weight_ranges(sim, progress=False))
    assert doc["activations"] == jsonable(activation_histograms(sim, calib, batch_size=BS, progress=False))
    assert doc["output_mse"] == jsonable(layer_output_mse(sim, x, batch_size=BS, progress=False))
    cmp = doc["sim_vs_integer"]
    assert cmp["exact_vs_integer"]["identical_fraction"] == 1.0
    assert [r["name"] for r in cmp["layers"]] == [g.name for g in sim.groups if g.out_quantized]


def test_summary_names_the_scores_and_the_worst_layers(cli_report):
    *_, out = cli_report
    doc = json.loads((out / "report.json").read_text())["sections"]
    lines = summary_lines([Section(k, k, v) for k, v in doc.items()])
    sens, folded = doc["sensitivity"], doc["weight_ranges"]["folded"]
    assert lines[0].startswith(f"accuracy: float {sens['float']:.2%}, quantized {sens['quantized']:.2%}")
    assert min(sens["layers"], key=lambda r: r["only"])["name"] in lines[1]
    widest = max(folded, key=lambda n: folded[n]["spread"])
    assert lines[2].startswith(f"widest weight spread (folded): {widest} ")
    assert "100.0000%" in lines[3]


def test_cli_errors(digits, tmp_path):
    d, *_ = digits
    rc, stdout, stderr = _run_cli(["analyze", "hwsim.digits:ResidualNet", "--target", "dsp-int8", "--data",
                                   str(d / "nope.npz"), "--out", str(tmp_path / "r")])
    assert rc == 2 and "nope.npz" in stderr and "not found" in stderr
    assert not (tmp_path / "r").exists()
    rc, stdout, stderr = _run_cli(["analyze", "hwsim.digits:ResidualNet", "--target", "dsp-int8", "--data",
                                   str(d / "test.npz"), "--labels", str(d / "labels.npy"), "--calib",
                                   str(d / "calib.npz"), "--out", str(tmp_path / "r"), "--bins", "0"])
    assert rc == 2 and "--bins" in stderr


# -------------------------------------------------------------------------------------------------
# sensitivity
# -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def residual(digits):
    _, calib, x, y = digits
    _, sim = _residual_sim(calib)
    return sim, torch.from_numpy(x), y


def _downstream(sim, value: str) -> set[str]:
    tainted = {value}
    for g in sim.groups:
        if any(i in tainted for i in g.head.inputs):
            tainted.add(g.output)
    return tainted


def test_nothing_quantized_is_the_float_model(residual):
    sim, x, y = residual
    res = sensitivity(sim, x, y, batch_size=BS, progress=False)
    sim.mode = "float"
    with torch.no_grad():
        float_acc = float((sim(x).argmax(1).numpy() == y).mean())
    sim.mode = "fast"
    with torch.no_grad():
        fast_acc = float((sim(x).argmax(1).numpy() == y).mean())
    assert res["float"] == float_acc and res["quantized"] == fast_acc
    assert res["metric"] == "accuracy" and res["samples"] == len(x)
    assert len(res["layers"]) == len(quantized_layers(sim))
    sq = sensitivity(sim, x[:32], progress=False)  # without labels: SQNR against float, identical -> None
    assert sq["metric"] == "output_sqnr_db" and sq["float"] is None and sq["quantized"] > 10
    assert all(q.enabled for q in all_quantizers(sim)) and sim.mode == "fast"


def test_one_layer_quantized_changes_only_its_downstream(residual):
    sim, x, _ = residual
    xb = x[:16]
    with torch.no_grad():
        ref = sim.run_float((xb,), fake=False)
        for layer in quantized_layers(sim):
            g = next((g for g in sim.groups if g.name == layer["name"]), None)
            value = layer["name"] if g is None else g.output
            with quantizers_enabled(sim, layer["quantizers"]):
                got = sim.run_float((xb,), fake=True)
            down = _downstream(sim, value)
            for v, t in ref.items():
                if v not in down:
                    assert torch.equal(got[v], t), (layer["name"], v)
            assert not torch.equal(got[value], ref[value]), layer["name"]


def test_flags_are_restored_even_on_error(residual):
    sim, _, _ = residual
    qs = all_quantizers(sim)
    qs[1].enabled = False  # a user's own setting survives too
    before = [q.enabled for q in qs]
    with pytest.raises(RuntimeError):
        with quantizers_enabled(sim, qs[:2]):
            assert [q.enabled for q in qs[:3]] == [True, True, False]
            raise RuntimeError("boom")
    assert [q.enabled for q in qs] == before
    qs[1].enabled = True
    with pytest.raises(HwsimError, match="either data x"):
        sensitivity(sim, progress=False)
    calls = []
    res = sensitivity(sim, eval_fn=lambda s: calls.append(sum(q.enabled for q in qs)) or 1.0, progress=False)
    n = len(res["layers"])
    assert len(calls) == 4 + 2 * n and calls[:2] == [0, len(qs)]
    assert all(q.enabled for q in qs)


# -------------------------------------------------------------------------------------------------
# weight ranges
# -------------------------------------------------------------------------------------------------
def test_unfolded_and_folded_stages(digits):
    _, calib, _, _ = digits
    model, sim = _residual_sim(calib)
    from_model = weight_ranges(model, torch.from_numpy(calib[:1]), "npu-int8-pc", stages=("unfolded", "folded"),
                               progress=False)
    from_sim = weight_ranges(sim, stages=("unfolded", "folded"), progress=False)
    for name, layer in from_model["unfolded"].items():
        own = model.get_submodule(name).weight.detach().double().numpy().reshape(layer["channels"], -1)
        np.testing.assert_array_equal(layer["min"], own.min(1))
        np.testing.assert_array_equal(layer["max"], own.max(1))
        np.testing.assert_allclose(from_sim["unfolded"][name]["min"], own.min(1), rtol=1e-5, atol=1e-7)
        folded = sim.layers[name].weight.detach().double().numpy().reshape(layer["channels"], -1)
        np.testing.assert_array_equal(from_sim["folded"][name]["max"], folded.max(1))
    assert from_model["folded"]["stem"]["spread"] != from_model["unfolded"]["stem"]["spread"]  # BN folded in
    with pytest.raises(HwsimError, match="example_inputs"):
        weight_ranges(model)


def test_cle_shrinks_the_spread_of_equalized_layers(digits):
    x_train, y_train, *_ = load_digits_split()
    sim = hwsim.simulate(pretrained("separable", x_train, y_train), "dsp-int8", torch.from_numpy(x_train[:1]))
    sim.calibrate([torch.from_numpy(x_train[:64])], progress=False)
    before = {k: v.detach().clone() for k, v in sim.state_dict().items()}
    r = weight_ranges(sim, stages=("folded", "cle"), progress=False)
    firsts = [link[0].name for chain in find_chains(sim) for link in chain]
    assert firsts
    for n in firsts:
        assert r["cle"][n]["spread"] <= r["folded"][n]["spread"] * (1 + 1e-9), n
    assert sum(r["cle"][n]["spread"] for n in firsts) < 0.9 * sum(r["folded"][n]["spread"] for n in firsts)
    assert all(torch.equal(before[k], v) for k, v in sim.state_dict().items())  # CLE ran on a copy


@settings(max_examples=40, deadline=None)
@given(w=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=4, max_side=5),
                    elements=st.floats(-100, 100, allow_nan=False)),
       c=st.floats(1e-3, 1e3))
def test_channel_ranges_properties(w, c):
    r = channel_ranges(w)
    rel = r["relative_range"]
    assert np.all((rel >= 0) & (rel <= 1)) and r["spread"] >= 1
    if np.ptp(w.reshape(len(w), -1), axis=1).max() > 0:
        assert rel.max() == 1.0
    s = channel_ranges(w * c)
    np.testing.assert_allclose(s["relative_range"], rel, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(s["min"], r["min"] * c, rtol=1e-12)


# -------------------------------------------------------------------------------------------------
# the writer
# -------------------------------------------------------------------------------------------------
def test_write_report_refuses_bad_sections_and_writes_null_for_nan(tmp_path):
    with pytest.raises(HwsimError, match="plot name"):
        write_report(tmp_path, [Section("a", "A", {}, plots={"x": b"1"}), Section("b", "B", {}, plots={"x": b"2"})])
    with pytest.raises(HwsimError, match="plot name"):
        write_report(tmp_path, [Section("a", "A", {}, plots={"../x": b"1"})])
    with pytest.raises(HwsimError, match="key 'a'"):
        write_report(tmp_path, [Section("a", "A", {}), Section("a", "B", {})])
    with pytest.raises(HwsimError, match="set"):
        write_report(tmp_path, [Section("a", "A", {"v": {1, 2}})])
    assert not list(tmp_path.iterdir())
    p = write_report(tmp_path, [Section("a", "A <b>", {"v": np.float32([1.5, np.nan])}, text="x < y")])
    assert json.loads(p["json"].read_text())["sections"] == {"a": {"v": [1.5, None]}}
    html = p["html"].read_text()
    assert "A &lt;b&gt;" in html and "x &lt; y" in html
