"""`hwsim run MODEL --target T --inputs in.npz --out out.npz --json`."""
import json

import numpy as np
import pytest

import runtime
from hwsim.cli import main as cli_main
from tests.onnx_models import quantize_with_ort, tiny_cnn

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    calib = np.random.default_rng(0).uniform(-1, 1, (8, 1, 8, 8)).astype(np.float32)
    return quantize_with_ort(tiny_cnn(), calib, tmp_path_factory.mktemp("m") / "q.onnx", "qdq", True)


def test_run_writes_outputs_and_json(model, tmp_path, capsys):
    x = np.random.default_rng(1).uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    out = tmp_path / "out.npz"
    assert cli_main(["run", str(model), "--target", "npu-int8-pc", "--inputs", str(tmp_path / "in.npz"),
                     "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outputs"]["y"]["shape"] == [4, 10]
    assert all({"overflow", "saturation"} <= set(v) for v in summary["layers"].values())
    with np.load(out) as z:
        expected = runtime.load(model, "npu-int8-pc").run({"x": x})["y"]
        assert np.array_equal(z["y"], expected) and z["y"].dtype == np.float32
        assert np.issubdtype(z["y__int"].dtype, np.integer)
    assert not list(tmp_path.glob(".out.npz.*"))  # no temporary left behind


def test_run_bad_inputs_named(model, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", a=np.zeros(3), b=np.zeros(3))
    assert cli_main(["run", str(model), "--target", "dsp-int8", "--inputs", str(tmp_path / "in.npz")]) == 2
    err = capsys.readouterr().err
    assert "in.npz" in err and "['x']" in err and "Traceback" not in err
    np.savez(tmp_path / "nan.npz", x=np.full((1, 1, 8, 8), np.nan, np.float32))
    assert cli_main(["run", str(model), "--target", "dsp-int8", "--inputs", str(tmp_path / "nan.npz")]) == 2
    assert "NaN" in capsys.readouterr().err
