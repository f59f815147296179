"""Issue 5's figures: fast-sim / exact-sim vs the integer runtime, per model and target.

Models: the two demo CNNs on scikit-learn's digits (shipped checkpoints), and CNNs trained here with a
fixed seed on ../shared/data (MNIST: a small CNN; Fashion-MNIST: a depthwise-separable ReLU6 network
and a residual network; checkpoints cached in benchmarks/.cache). For every built-in target: calibrate
on training images, then on test images report float / fast / exact / integer accuracy, top-1
agreement of fast-sim with the integer runtime, the share of Conv/Gemm output elements where fast-sim
is within 1 LSB of the integer runtime, the share of all layer output integers where exact-sim equals
it, and whether ONNX Runtime on the exported QDQ model equals our integer runtime (host ort-cpu form).

    python benchmarks/sim_vs_integer.py [--test 2000] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import DATA, ResidualFMNIST, SeparableFMNIST, SmallCNN, load, trained  # noqa: E402

__all__ = ["SmallCNN", "SeparableFMNIST", "ResidualFMNIST"]  # for `hwsim compare sim_vs_integer:SeparableFMNIST`


def host_ort_equal(sim, x) -> bool | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import runtime
    from hwsim.export import build

    m = build(sim)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sim.input_names[0]: x})
    ours = runtime.load(m, sim.target).run({sim.input_names[0]: x})[sim.output_names[0]]
    return bool(np.array_equal(y, ours))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from hwsim.compare import compare
    from hwsim.digits import MODELS, load_digits_split, pretrained
    from hwsim.sim import simulate
    from runtime.target import builtin_names, load_alias, load_target

    host = load_target("ort-cpu").name
    models = []
    xtr, ytr, xte, yte = load_digits_split()
    for n in MODELS:
        models.append((f"digits-{n}", pretrained(n, xtr, ytr), xtr[:256], xte, yte))
    if (DATA / "README.md").exists():
        xtr, ytr, xte, yte = load("mnist")
        models.append(("mnist-smallcnn", trained("mnist-smallcnn", SmallCNN, xtr, ytr), xtr[:512], xte[:args.test], yte[:args.test]))
        xtr, ytr, xte, yte = load("fashion-mnist")
        for nm, cls in (("fmnist-separable", SeparableFMNIST), ("fmnist-residual", ResidualFMNIST)):
            models.append((nm, trained(nm, cls, xtr, ytr), xtr[:512], xte[:args.test], yte[:args.test]))
    targets = [n for n in builtin_names() if load_alias(n) is None]
    rows = []
    t0 = time.time()
    for name, model, xcal, x, y in models:
        for t in targets:
            sim = simulate(model, t, torch.from_numpy(xcal[:1]))
            sim.calibrate([torch.from_numpy(xcal[i:i + 128]) for i in range(0, len(xcal), 128)], progress=False)
            r = compare(sim, x, y, progress=False)
            row = {"model": name, "target": t, "accuracy": r["accuracy"],
                   "fast_vs_integer_top1": r["fast_vs_integer"]["top1_agreement"],
                   "fast_within_1lsb": r["fast_vs_integer"]["within_1lsb_fraction"],
                   "exact_identical": r["exact_vs_integer"]["identical_fraction"]}
            if t == host:
                row["ort_equals_integer"] = host_ort_equal(sim, x[:256])
            rows.append(row)
            if not args.json:
                a = r["accuracy"]
                print(f"{name:<18} {t:<13} float {a['float']:.4f} fast {a['fast']:.4f} exact {a['exact']:.4f} "
                      f"int {a['integer']:.4f} | fast~int top1 {row['fast_vs_integer_top1']:.4f} "
                      f"<=1LSB {row['fast_within_1lsb']:.5f} | exact==int {row['exact_identical']:.4f}"
                      + (f" | ORT==int {row['ort_equals_integer']}" if "ort_equals_integer" in row else ""), flush=True)
    if args.json:
        print(json.dumps({"host_ort_form": host, "rows": rows, "seconds": round(time.time() - t0, 1)}, indent=2))
    else:
        print(f"host ort-cpu form: {host}; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
