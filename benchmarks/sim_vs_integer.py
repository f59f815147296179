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
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
CACHE = Path(__file__).resolve().parent / ".cache"


def idx(path):
    b = gzip.open(path).read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(b, np.uint8, offset=4 + 4 * nd).reshape(dims)


def load(name):
    d = DATA / name
    x = lambda f: (idx(d / f).astype(np.float32) / 255.0)[:, None]  # noqa: E731
    return (x("train-images-idx3-ubyte.gz"), idx(d / "train-labels-idx1-ubyte.gz").astype(np.int64),
            x("t10k-images-idx3-ubyte.gz"), idx(d / "t10k-labels-idx1-ubyte.gz").astype(np.int64))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 16, 5, padding=2), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 5, padding=2), nn.BatchNorm2d(32)
        self.fc1, self.fc2 = nn.Linear(32 * 7 * 7, 64), nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class SeparableFMNIST(nn.Module):
    def __init__(self, w=16):
        super().__init__()
        layers, cin = [], 1
        self.stem, self.stem_bn = nn.Conv2d(1, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w)
        self.blocks = nn.ModuleList()
        for cout, s in ((2 * w, 1), (4 * w, 2), (4 * w, 1)):
            cin = self.blocks[-1][3].out_channels if self.blocks else w
            self.blocks.append(nn.ModuleList([nn.Conv2d(cin, cin, 3, s, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                                              nn.ReLU6(), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                              nn.ReLU6()]))
        del layers
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4 * w, 10)

    def forward(self, x):
        x = F.relu6(self.stem_bn(self.stem(x)))
        for dw, bn1, r1, pw, bn2, r2 in self.blocks:
            x = r2(bn2(pw(r1(bn1(dw(x))))))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResidualFMNIST(nn.Module):
    def __init__(self, w=16):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.a1, self.a1_bn = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.a2, self.a2_bn = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.b1, self.b1_bn = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.b2, self.b2_bn = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.proj, self.proj_bn = nn.Conv2d(w, 2 * w, 1, stride=2, bias=False), nn.BatchNorm2d(2 * w)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(2 * w, 10)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.relu(x + self.a2_bn(self.a2(F.relu(self.a1_bn(self.a1(x))))))
        y = self.b2_bn(self.b2(F.relu(self.b1_bn(self.b1(x)))))
        x = F.relu(self.proj_bn(self.proj(x)) + y)
        return self.fc(torch.flatten(self.pool(x), 1))


def trained(name, cls, x, y, epochs=2, n=20000):
    path = CACHE / f"{name}.pt"
    model = cls()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    xt, yt = torch.from_numpy(x[:n]), torch.from_numpy(y[:n])
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            b = perm[i:i + 128]
            opt.zero_grad()
            F.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()
    CACHE.mkdir(exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


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
