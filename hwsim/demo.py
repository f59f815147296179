"""The embedded default job of ``make demo``: quantize two CNNs for every built-in target and compare
simulated with integer accuracy.

On scikit-learn's bundled digits (1200 train / 597 test, no download): the two demo CNNs of
:mod:`hwsim.digits` (depthwise-separable with ReLU6, and residual) are loaded from the checkpoints the
project ships (or trained with a fixed seed). For every target: simulate (batch norms folded,
quantizers where the target places them), calibrate on 256 training images, export the QDQ model,
run it on the integer runtime, and print float / fast-sim / exact-sim / integer accuracy, the top-1
agreement of fast-sim with the integer runtime, and the fraction of output integers on which
exact-sim and the integer runtime are identical (the project's promise: 100 %).
"""
from __future__ import annotations

import json
import time

import numpy as np


def evaluate_target(model, target, x_cal, x_test, y_test, scheme: str = "minmax") -> dict:
    import torch

    import runtime
    from hwsim.export import build
    from hwsim.sim import simulate

    xt = torch.from_numpy(x_test)
    sim = simulate(model, target, xt[:1])
    sim.calibrate([torch.from_numpy(x_cal[i:i + 64]) for i in range(0, len(x_cal), 64)], scheme=scheme,
                  progress=False)
    with torch.no_grad():
        sim.mode = "float"
        f = sim(xt).numpy()
        sim.mode = "fast"
        fast = sim(xt).numpy()
        vals = sim.run_exact((xt,))
    out = sim.output_names[0]
    exact_int = vals[out].numpy()
    exact = sim.quantizer_of(out).dequantize(vals[out]).numpy()
    prog = runtime.load(build(sim), sim.target)
    res = prog.run_with_details({sim.input_names[0]: x_test}, keep_tensors=True)
    integer = res.outputs[out]
    integer_int = res.tensors[out + "_q"].astype(np.int64)
    acc = {k: float(np.mean(np.argmax(v, 1) == y_test)) for k, v in
           (("float", f), ("fast", fast), ("exact", exact), ("integer", integer))}
    return {
        "target": sim.target.name,
        "accuracy": acc,
        "fast_vs_integer": {"top1_agreement": float(np.mean(np.argmax(fast, 1) == np.argmax(integer, 1)))},
        "exact_vs_integer": {"identical_fraction": float(np.mean(exact_int == integer_int)),
                             "top1_agreement": float(np.mean(np.argmax(exact, 1) == np.argmax(integer, 1)))},
        "overflow": int(sum(s.overflow for s in res.stats.values())),
        "saturation": int(sum(s.saturation for s in res.stats.values())),
    }


def run_demo(json_output: bool = False, models: list[str] | None = None, targets: list[str] | None = None,
             n_test: int | None = None) -> int:
    import torch

    from hwsim.digits import MODELS, load_digits_split, pretrained
    from runtime.target import builtin_names, load_alias

    t0 = time.perf_counter()
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits_split()
    x_cal = x_train[:256]
    if n_test:
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    targets = targets or [n for n in builtin_names() if load_alias(n) is None]
    report = {"data": f"scikit-learn digits ({len(x_train)} train / {len(x_test)} test)", "models": {}}
    if not json_output:
        print(f"hwsim demo: {report['data']}; calibration on {len(x_cal)} training images; "
              "accuracy on the test images\n")
    for name in models or list(MODELS):
        model = pretrained(name, x_train, y_train)
        rows = []
        if not json_output:
            print(f"{name} CNN")
            hdr = (f"  {'target':<14} {'float':>7} {'fast':>7} {'exact':>7} {'integer':>8} "
                   f"{'fast~int top1':>14} {'exact==int':>11}")
            print(hdr)
            print("  " + "-" * (len(hdr) - 2))
        for t in targets:
            r = evaluate_target(model, t, x_cal, x_test, y_test)
            rows.append(r)
            if not json_output:
                a = r["accuracy"]
                print(f"  {t:<14} {a['float']:>7.2%} {a['fast']:>7.2%} {a['exact']:>7.2%} {a['integer']:>8.2%} "
                      f"{r['fast_vs_integer']['top1_agreement']:>14.2%} "
                      f"{r['exact_vs_integer']['identical_fraction']:>11.2%}", flush=True)
        report["models"][name] = rows
        if not json_output:
            print()
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if json_output:
        print(json.dumps(report, indent=2))
    else:
        print("fast: float32 fake quantization; exact: the target's integer arithmetic in torch; integer: the "
              "exported QDQ model on the integer runtime.\nexact==int: output integers identical between "
              f"exact simulation and integer runtime. {report['seconds']} s")
    return 0
