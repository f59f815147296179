"""`make demo`'s job: two digits CNNs quantized for every built-in target, simulated and run in integers."""
import json

from hwsim.cli import main as cli_main
from hwsim.demo import run_demo
from runtime.target import builtin_names, load_alias


def test_demo_json_reports_every_target_and_model(capsys, monkeypatch):
    import hwsim.demo as demo

    seen = []
    real = demo.evaluate_target

    def fast(model, target, x_cal, x_test, y_test, scheme="minmax"):  # fewer samples, same code path
        seen.append(target)
        return real(model, target, x_cal[:64], x_test[:64], y_test[:64], scheme)

    monkeypatch.setattr(demo, "evaluate_target", fast)
    assert cli_main(["demo", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["models"]) == {"separable", "residual"}
    concrete = {n for n in builtin_names() if load_alias(n) is None}
    for rows in out["models"].values():
        assert {r["target"] for r in rows} == concrete
        for r in rows:
            assert r["exact_vs_integer"]["identical_fraction"] == 1.0, r["target"]
            assert r["exact_vs_integer"]["top1_agreement"] == 1.0, r["target"]


def test_demo_accuracy_close_to_float_on_8bit_targets(capsys):
    assert run_demo(json_output=True, models=["residual"], targets=["dsp-int8", "npu-int8-pc", "ort-cpu-avx2"],
                    n_test=300) == 0
    out = json.loads(capsys.readouterr().out)
    for r in out["models"]["residual"]:
        a = r["accuracy"]
        assert a["float"] > 0.95
        assert a["integer"] >= a["float"] - 0.01, r["target"]
        assert r["fast_vs_integer"]["top1_agreement"] >= 0.99, r["target"]
