"""hwsim quantize / compare from the command line, on the shipped digits CNN and on a float ONNX file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import runtime
from hwsim.cli import main
from tests.cli_output import json_out
from hwsim.digits import SHIPPED, load_digits_split

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits")
    x_train, y_train, x_test, y_test = load_digits_split()
    np.savez(d / "calib.npz", x=x_train[:128])
    np.savez(d / "test.npz", x=x_test[:200])
    np.save(d / "labels.npy", y_test[:200])
    return d


def test_quantize_torch_class_then_compare_its_float_onnx(digits, tmp_path, capsys):
    out = tmp_path / "q"
    rc = main(["quantize", "hwsim.digits:ResidualNet", "--checkpoint", str(SHIPPED / "digits-residual.pt"),
               "--target", "npu-int8-pc", "--calib", str(digits / "calib.npz"), "--out", str(out), "--json"])
    assert rc == 0
    summary = json_out(capsys)
    files = {k: Path(v) for k, v in summary["files"].items()}
    assert all(p.is_file() for p in files.values())
    assert not list(out.glob("*.tmp*"))  # atomic writes leave no temporaries
    onnx.checker.check_model(onnx.load(files["onnx"]))
    enc = json.loads(files["encodings"].read_text())
    assert enc["version"] == "1.0.0" and enc["activation_encodings"] and enc["param_encodings"]
    # the exported QDQ model runs on the integer runtime
    prog = runtime.load(files["onnx"], "npu-int8-pc")
    y = prog.run({"x": np.load(digits / "test.npz")["x"]})
    assert next(iter(y.values())).shape == (200, 10)

    rc = main(["compare", str(files["float_onnx"]), "--target", "dsp-int8", "--data", str(digits / "test.npz"),
               "--labels", str(digits / "labels.npy"), "--calib", str(digits / "calib.npz"), "--json",
               "--plot", str(tmp_path / "cmp.png")])
    assert rc == 0
    r = json_out(capsys)
    assert r["exact_vs_integer"]["identical_fraction"] == 1.0
    assert r["exact_vs_integer"]["top1_agreement"] == 1.0
    assert r["fast_vs_integer"]["top1_agreement"] >= 0.99
    assert r["accuracy"]["float"] > 0.9 and abs(r["accuracy"]["integer"] - r["accuracy"]["exact"]) == 0
    assert {"name", "op_type", "sqnr_fast_db", "sqnr_integer_db", "lsb_hist", "overflow"} <= set(r["layers"][0])
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_are_clear(digits, tmp_path, capsys):
    rc = main(["quantize", "no/such/model.onnx", "--target", "dsp-int8", "--calib", str(digits / "calib.npz"),
               "--out", str(tmp_path)])
    assert rc == 2 and "not found" in capsys.readouterr().err
    rc = main(["quantize", "hwsim.digits:NoSuchNet", "--target", "dsp-int8", "--calib", str(digits / "calib.npz"),
               "--out", str(tmp_path)])
    assert rc == 2 and "NoSuchNet" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, y=np.zeros((2, 1, 8, 8), np.float32), z=np.zeros(2))
    rc = main(["quantize", "hwsim.digits:ResidualNet", "--target", "dsp-int8", "--calib", str(bad),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "expected arrays named" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
