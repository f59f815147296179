"""`hwsim encodings validate|apply|convert` and `hwsim targets import` (hwsim/cli_encodings.py).

The handlers are called through a parser built here the way hwsim/cli.py builds its own (the lead
wires them into `hwsim.cli`); `hwsim targets check` is the real command."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import runtime
from hwsim.cli import main as hwsim_main
from hwsim.cli_encodings import add_encodings_parser, add_targets_import_parser, validate_encodings
from runtime.aimet import EncodingsFile, read_encodings, to_dict, write_encodings
from runtime.encoding import Encoding, PerAxis, encoding_from_range
from tests.runtime.test_apply_encodings import cnn, hand_encodings

pytest.importorskip("onnxruntime")
DATA = Path(__file__).resolve().parents[1] / "data"


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hwsim")
    p.add_argument("--debug", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    add_encodings_parser(sub)
    t = sub.add_parser("targets")
    add_targets_import_parser(t.add_subparsers(dest="targets_command", required=True))
    args = p.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("enc")
    m = cnn()
    onnx.save(m, d / "model.onnx")
    enc = hand_encodings(m)
    write_encodings(d / "model.encodings", enc, "1.0.0")
    return d, m, enc


def _codes(findings, tensor=None):
    return {(f.severity, f.code) for f in findings if tensor is None or f.tensor == tensor}


def test_validate_clean_file_exits_0(files, capsys):
    d, _, _ = files
    assert run(["encodings", "validate", str(d / "model.onnx"), str(d / "model.encodings"), "--target",
                "ort-cpu-vnni", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 0 and report["target"] == "ort-cpu-vnni"
    assert {f["code"] for f in report["findings"]} == {"missing"}  # only the three biases, as warnings
    assert {f["tensor"] for f in report["findings"]} == {"b1", "b2", "bf"}
    assert all(f["severity"] == "warning" for f in report["findings"])


def test_validate_errors_exit_1_with_tensor_and_reason(files, capsys):
    d, _, _ = files
    assert run(["encodings", "validate", str(d / "model.onnx"), str(d / "model.encodings"), "--target",
                "dsp-int8"]) == 1
    out = capsys.readouterr().out
    assert "error    granularity       w1: target 'dsp-int8' quantizes these weights per tensor" in out
    assert "3 errors, 3 warnings" in out


def test_validate_each_kind_of_finding(files):
    _, m, enc = files
    sx, sw = enc.activations["x"].scale, enc.params["w1"].scale
    good_bias = Encoding(np.float32(sx) * sw, 0, "int32", PerAxis(0), symmetric=True)
    bad_bias = Encoding(np.float32(sx) * sw * np.float32(1.01), 0, "int32", PerAxis(0), symmetric=True)
    dead = Encoding(np.float32([0.01, 1e-5 / 254, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01]), 0, "int8", PerAxis(0),
                    symmetric=True)
    f = dataclasses.replace(
        enc,
        activations={**{k: v for k, v in enc.activations.items() if k != "y"}, "c1": enc.activations["c2"], "nope": enc.activations["x"],
                     "w1": enc.params["w1"], "r1": Encoding(0.1, 3, "int16")},
        params={"w2": dead, "wf": enc.params["wf"], "b1": good_bias, "b2": bad_bias, "y": enc.activations["y"]})
    found = validate_encodings(m, read_encodings(to_dict(f, "1.0.0")), "npu-int8-pc")
    assert ("warning", "unexpected") in _codes(found, "c1")  # inside the Conv+Relu supergroup
    assert "supergroup ['Conv', 'Relu']" in next(x.message for x in found if x.tensor == "c1")
    assert ("error", "unknown-tensor") in _codes(found, "nope")
    assert ("error", "misplaced") in _codes(found, "w1") and ("error", "misplaced") in _codes(found, "y")
    assert ("error", "dtype") in _codes(found, "r1") and ("error", "symmetry") not in _codes(found, "r1")
    assert ("warning", "degenerate-scale") in _codes(found, "w2")
    assert "dead channels: [1]" in next(x.message for x in found if x.code == "degenerate-scale")
    assert _codes(found, "b1") == set() and ("error", "bias-scale") in _codes(found, "b2")
    assert ("warning", "missing") in _codes(found, "bf")
    assert [x.severity for x in found] == sorted(x.severity for x in found)  # errors first


def test_validate_symmetry_and_float_ops(files, tmp_path):
    _, m, enc = files
    asym_w = encoding_from_range(np.float32([-1] * 4), np.float32([2] * 4), "int8", "asymmetric", PerAxis(0))
    f = dataclasses.replace(enc, params={**enc.params, "w1": asym_w}, floats={"c2": ("activation", 16)},
                            activations={k: v for k, v in enc.activations.items() if k != "c2"})
    found = validate_encodings(m, f, "npu-int8-pc")
    assert ("error", "symmetry") in _codes(found, "w1")
    assert ("error", "missing") in _codes(found, "c2") and "kept float" in next(
        x.message for x in found if x.tensor == "c2")
    g = onnx.helper.make_graph([onnx.helper.make_node("Sin", ["x"], ["y"], name="s")], "g",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    sin = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    e = encoding_from_range(-1, 1, "uint8", "asymmetric")
    found = validate_encodings(sin, EncodingsFile({"x": e, "y": e}, {}), "dsp-int8")
    assert ("error", "float-op") in _codes(found, "y") and "Sin node 's'" in found[0].message


def test_validate_bad_inputs_exit_2_naming_the_file(files, tmp_path, capsys):
    d, _, _ = files
    bad = tmp_path / "broken.encodings"
    bad.write_text('{"version": "1.0.0"')
    assert run(["encodings", "validate", str(d / "model.onnx"), str(bad), "--target", "dsp-int8"]) == 2
    err = capsys.readouterr().err
    assert "broken.encodings: not valid JSON" in err and "Traceback" not in err
    assert run(["encodings", "validate", str(tmp_path / "none.onnx"), str(bad), "--target", "dsp-int8"]) == 2
    assert "none.onnx: model file not found" in capsys.readouterr().err
    assert run(["encodings", "validate", str(d / "model.onnx"), str(d / "model.encodings"), "--target", "nope"]) == 2
    assert "unknown target 'nope'" in capsys.readouterr().err


def test_apply_and_convert(files, tmp_path, capsys):
    d, m, enc = files
    out = tmp_path / "q.onnx"
    assert run(["encodings", "apply", str(d / "model.onnx"), str(d / "model.encodings"), "--out", str(out)]) == 0
    assert "6 QuantizeLinear, 12 DequantizeLinear, opset 17" in capsys.readouterr().out
    x = np.random.default_rng(3).uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    assert runtime.load(out, "dsp-int8").run({"x": x})["y"].shape == (2, 10)
    # 1.0.0 -> 2.0.0 with the model: axes become explicit, values unchanged
    v2 = tmp_path / "model.v2.encodings"
    assert run(["encodings", "convert", str(d / "model.encodings"), "--to", "2.0.0", "--out", str(v2),
                "--model", str(d / "model.onnx")]) == 0
    entries = {e["name"]: e for e in json.loads(v2.read_text())["encodings"]}
    assert entries["wf"]["axis"] == 0 and entries["x"]["output_dtype"] == "uint8"
    back = read_encodings(v2)
    assert back.all()["w2"] == enc.params["w2"] and back.all()["c2"] == enc.activations["c2"]
    # 2.0.0 -> 1.0.0 needs the model to tell activations from params
    assert run(["encodings", "convert", str(v2), "--to", "1.0.0", "--out", str(tmp_path / "again.encodings")]) == 2
    assert "must first be split" in capsys.readouterr().err
    assert run(["encodings", "convert", str(v2), "--to", "0.6.1", "--out", str(tmp_path / "again.encodings"),
                "--model", str(d / "model.onnx")]) == 0
    assert read_encodings(tmp_path / "again.encodings").params["w2"] == enc.params["w2"]
    assert run(["encodings", "apply", str(d / "model.onnx"), str(v2), "--out", str(tmp_path / "q13.onnx"),
                "--opset", "10"]) == 2
    assert "needs opset 13" in capsys.readouterr().err


def test_targets_import_writes_a_checked_target(tmp_path, capsys):
    out = tmp_path / "htp.toml"
    assert run(["targets", "import", str(DATA / "quantsim_htp.json"), "--arithmetic", "npu-int8-pc",
                "--out", str(out), "--name", "htp-like"]) == 0
    cap = capsys.readouterr()
    assert "wrote" in cap.out and "target 'htp-like'" in cap.out and "warning: duplicate key 'Gather'" in cap.err
    assert hwsim_main(["targets", "check", str(out)]) == 0
    assert "valid target 'htp-like'" in capsys.readouterr().out
    assert run(["targets", "import", str(DATA / "quantsim_htp.json"), "--arithmetic", "npu-int8-pc",
                "--out", str(tmp_path / "h.json"), "--json", "--strict"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["name"] == "quantsim_htp" and len(report["warnings"]) >= 5
    assert hwsim_main(["targets", "check", str(tmp_path / "h.json")]) == 0
    assert run(["targets", "import", str(DATA / "quantsim_default.json"), "--arithmetic", "dsp-int8",
                "--out", str(tmp_path / "d.toml"), "--strict"]) == 0


def test_targets_import_bad_usage_exits_2(tmp_path, capsys):
    assert run(["targets", "import", str(DATA / "quantsim_default.json"), "--arithmetic", "dsp-int8",
                "--out", str(tmp_path / "t.yaml")]) == 2
    assert "t.yaml: the output must be a .toml or .json target file" in capsys.readouterr().err
    assert run(["targets", "import", str(tmp_path / "none.json"), "--arithmetic", "dsp-int8",
                "--out", str(tmp_path / "t.toml")]) == 2
    assert "none.json: quantsim config not found" in capsys.readouterr().err
    assert run(["targets", "import", str(DATA / "quantsim_default.json"), "--arithmetic", "no-such-target",
                "--out", str(tmp_path / "t.toml")]) == 2
    assert not (tmp_path / "t.toml").exists()
