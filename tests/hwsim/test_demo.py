"""`make demo`'s job runs on the embedded default and reports every built-in target."""
import json

from hwsim.cli import main as cli_main
from runtime.target import builtin_names


def test_demo_json_reports_every_target(capsys):
    assert cli_main(["demo", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["target"]: r for r in out["targets"]}
    assert set(rows) == set(builtin_names())
    for name, r in rows.items():
        assert r["activation_max_err_steps"] <= 0.5 + 1e-3, name
        assert r["weight_max_err_steps"] <= 0.5 + 1e-3, name
        if "w4" not in name:  # 8-bit weights keep the linear classifier within a point of float
            assert r["accuracy_quantized"] >= r["accuracy_float"] - 0.01, name
