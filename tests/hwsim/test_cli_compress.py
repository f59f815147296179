"""hwsim compress: the chosen ratios meet the cost target, the written float ONNX model computes what
the report says, and a rerun reuses the cached score table."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from hwsim.cli import main
from tests.cli_output import json_out
from hwsim.digits import SHIPPED, load_digits_split


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits_c")
    _, _, x, y = load_digits_split()
    np.savez(d / "val.npz", x=x[:120])
    np.save(d / "y.npy", y[:120])
    return d


ARGS = ["compress", "hwsim.digits:ResidualNet", "--checkpoint", str(SHIPPED / "digits-residual.pt"),
        "--scheme", "spatial-svd,weight-svd", "--candidates", "0.3,0.6", "--target-cost", "macs=0.7", "--json"]


def test_compress_meets_target_and_writes_a_model_that_scores_as_reported(digits, tmp_path, capsys):
    args = ARGS + ["--data", str(digits / "val.npz"), "--labels", str(digits / "y.npy"), "--out", str(tmp_path)]
    assert main(args) == 0
    r = json_out(capsys)
    assert r["cost_fraction"] <= 0.7 and r["macs_after"] < r["macs_before"] and r["choices"]
    sess = ort.InferenceSession(r["files"]["onnx"], providers=["CPUExecutionProvider"])
    x, y = np.load(digits / "val.npz")["x"], np.load(digits / "y.npy")
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert float(np.mean(out.argmax(1) == y)) == pytest.approx(r["score_compressed"], abs=1 / 120 + 1e-9)
    assert open(r["files"]["plot"], "rb").read(4) == b"\x89PNG"
    table = json.loads((tmp_path / "compression_table.json").read_text())
    assert table  # the cache exists; a rerun gives the same choice from it
    assert main(args) == 0
    assert json_out(capsys)["choices"] == r["choices"]


def test_compress_refuses_bad_arguments(digits, tmp_path, capsys):
    base = ["compress", "hwsim.digits:ResidualNet", "--data", str(digits / "val.npz"), "--out", str(tmp_path)]
    assert main(base + ["--target-cost", "flops=0.5"]) == 2
    assert main(base + ["--scheme", "magic"]) == 2
    assert main(base + ["--target-cost", "latency=0.5"]) == 2  # no --target with a [cost] table
    err = capsys.readouterr().err
    assert "--target-cost" in err and "--scheme" in err
