"""Issue 8's table: LSTM and GRU classifiers on MNIST read row by row, quantized per target.

Models: ``Rows(kind)`` reads a 28x28 image as 28 time steps of 28 features (one ``nn.LSTM`` or
``nn.GRU`` of 64 cells, batch first) and classifies the last step with a Linear layer; trained here
with a fixed seed (cached in ``benchmarks/.cache``). For each model and target, methods:

- ``ptq``: calibration on 512 training images (min/max), nearest rounding;
- ``qat``: from the PTQ model, fast-mode fine-tuning with learned ranges (``--qat-samples`` training
  images, ``--qat-epochs``, Adam ``--qat-lr``).

Each row: fast-sim, exact-sim and integer-runtime accuracy on the MNIST test set (``--test``
images), the fraction of output elements where exact mode equals the runtime, and the method's time.
Bars: W8A8 integer within 0.5 points of FP32 after QAT or PTQ; W4 weights (``npu-w4a8``) within 2
points after QAT; exact == integer on 100 % of elements.

Then speed (``--speed``): our integer runtime on the exported LSTM/GRU classifier against ONNX Runtime
on the float model and on its ``quantize_dynamic`` model (DynamicQuantizeLSTM), same threads (1 and
2), batch 1 and 32, median of repeated runs after warm-up: ms and ratios.

    python benchmarks/rnn_table.py                # table (rows cached in benchmarks/.cache/rnn_rows.json)
    python benchmarks/rnn_table.py --speed        # table + speed
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hwsim  # noqa: E402
import runtime  # noqa: E402
from benchmarks import models  # noqa: E402
from benchmarks.models import CACHE, load  # noqa: E402

TARGETS = ("dsp-int8", "npu-int8-pc", "htp-a16w8", "npu-w4a8")
W8A8 = ("dsp-int8", "npu-int8-pc")


class Rows(nn.Module):
    """MNIST row by row: [N, 1, 28, 28] -> 28 steps of 28 features -> LSTM/GRU(64) -> Linear(10)."""

    def __init__(self, kind="LSTM", hidden=64):
        super().__init__()
        self.rnn = getattr(nn, kind)(28, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x):
        out, _ = self.rnn(x.reshape(-1, 28, 28))
        return self.fc(out[:, -1])


def trained_rows(kind, x, y, epochs):
    """The row-by-row classifier trained here (3 epochs over 60k, Adam 3e-3 one-cycle, gradient norm 1)."""
    return models.trained(f"mnist-rows-{kind.lower()}", lambda: Rows(kind), x, y, epochs=epochs, n=60000, lr=3e-3,
                          clip=1.0)


def accuracy(logits, y) -> float:
    return float((np.asarray(logits).argmax(1) == y).mean())


def evaluate(sim, x, y, bs=500) -> dict:
    """fast, exact and integer-runtime accuracy, and the exact==integer fraction of output elements."""
    out = {}
    xt = torch.from_numpy(x)
    with torch.no_grad():
        for mode in ("fast", "exact"):
            sim.mode = mode
            out[mode] = np.concatenate([sim(xt[i:i + bs]).numpy() for i in range(0, len(x), bs)])
    sim.mode = "fast"
    with tempfile.TemporaryDirectory() as d:
        files = sim.export(d, "m")
        prog = runtime.load(files["onnx"], sim.target)
        name = sim.input_names[0]
        integer = np.concatenate([prog.run({name: x[i:i + bs]})[sim.output_names[0]] for i in range(0, len(x), bs)])
    return {"fast": accuracy(out["fast"], y), "exact": accuracy(out["exact"], y), "integer": accuracy(integer, y),
            "exact_eq_int": float((out["exact"] == integer).mean())}


def key(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def table(args, models, data):
    xtr, ytr, xte, yte = data
    cache_path = Path(args.cache)
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() and not args.fresh else {}
    calib = [torch.from_numpy(xtr[i:i + 128]) for i in range(0, 512, 128)]
    rows = []
    for kind, model in models.items():
        with torch.no_grad():
            fp32 = accuracy(np.concatenate([model(torch.from_numpy(xte[i:i + 1000])).numpy()
                                            for i in range(0, len(xte), 1000)]), yte)
        print(f"\n## MNIST row by row, {kind}(64): FP32 accuracy {100 * fp32:.2f} % on {len(xte)} test images")
        print(f"{'target':<12} {'method':<6} {'fast':>7} {'exact':>7} {'int':>7} {'ex==int':>8} {'seconds':>8}")
        for tname in args.targets:
            ptq_sim = None
            for method in args.methods:
                k = key(kind, tname, method, len(xte), args.qat_samples, args.qat_epochs, args.qat_lr, 1)
                if k not in cache:
                    if ptq_sim is None:
                        t0 = time.perf_counter()
                        ptq_sim = hwsim.simulate(model, tname, calib[0][:1])
                        ptq_sim.calibrate(calib, progress=False)
                        ptq_seconds = time.perf_counter() - t0
                    sim = copy.deepcopy(ptq_sim)
                    seconds = ptq_seconds
                    info = {}
                    if method == "qat":
                        from quantizer.qat import qat

                        xt = torch.from_numpy(xtr[:args.qat_samples])
                        yt = torch.from_numpy(ytr[:args.qat_samples].astype(np.int64))
                        gen = torch.Generator().manual_seed(0)

                        class Batches:
                            def __iter__(self):
                                perm = torch.randperm(len(xt), generator=gen)
                                for i in range(0, len(xt), 128):
                                    yield xt[perm[i:i + 128]], yt[perm[i:i + 128]]

                        t0 = time.perf_counter()
                        res = qat(sim, Batches(), epochs=args.qat_epochs, lr=args.qat_lr, progress=False)
                        seconds = time.perf_counter() - t0
                        info["losses"] = [round(v, 4) for v in res["losses"]]
                    ev = evaluate(sim, xte, yte)
                    cache[k] = {"model": kind, "target": tname, "method": method, "fp32": fp32, "seconds": seconds,
                                **ev, **info}
                    cache_path.parent.mkdir(exist_ok=True)
                    cache_path.write_text(json.dumps(cache, indent=1))
                r = cache[k]
                rows.append(r)
                print(f"{tname:<12} {method:<6} {100 * r['fast']:7.2f} {100 * r['exact']:7.2f} {100 * r['integer']:7.2f} "
                      f"{100 * r['exact_eq_int']:7.2f}% {r['seconds']:8.1f}", flush=True)
    bars = []
    for kind in models:
        by = {(r["target"], r["method"]): r for r in rows if r["model"] == kind}
        for t in W8A8:
            best = max((by[(t, m)]["integer"] for m in ("ptq", "qat") if (t, m) in by), default=None)
            if best is not None:
                fp = next(r["fp32"] for r in rows if r["model"] == kind)
                bars.append((f"{kind} {t} W8A8 integer within 0.5 of FP32", fp - best <= 0.005,
                             f"{100 * best:.2f} vs {100 * fp:.2f}"))
        if ("npu-w4a8", "qat") in by:
            r = by[("npu-w4a8", "qat")]
            bars.append((f"{kind} npu-w4a8 W4 after QAT within 2 of FP32", r["fp32"] - r["integer"] <= 0.02,
                         f"{100 * r['integer']:.2f} vs {100 * r['fp32']:.2f}"))
    bars.append(("exact == integer on 100 % of elements", all(r["exact_eq_int"] == 1.0 for r in rows),
                 f"min {100 * min(r['exact_eq_int'] for r in rows):.4f} %"))
    print("\nbars:")
    for name, ok, detail in bars:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return rows, bars


def _median_ms(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * float(np.median(ts))


def speed(args, models, data):
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from benchmarks.runtime_vs_ort import threads as with_threads

    xte = data[2]
    print(f"\n## speed: {platform.processor() or platform.machine()}, median of {args.reps} runs after warm-up")
    print(f"{'model':<5} {'thr':>3} {'batch':>5} {'ours ms':>9} {'ORT f32':>9} {'ORT dyn':>9} {'f32/ours':>9} "
          f"{'dyn/ours':>9}")
    calib = [torch.from_numpy(data[0][i:i + 128]) for i in range(0, 512, 128)]
    with tempfile.TemporaryDirectory() as d:
        for kind, model in models.items():
            sim = hwsim.simulate(model, "dsp-int8", calib[0][:1])
            sim.calibrate(calib, progress=False)
            files = sim.export(d, kind)
            dyn = Path(d) / f"{kind}_dynamic.onnx"
            quantize_dynamic(str(files["float_onnx"]), str(dyn), weight_type=QuantType.QInt8)
            t0 = time.perf_counter()
            prog = runtime.load(files["onnx"], sim.target)
            prog.run({"x": xte[:1]})
            first = time.perf_counter() - t0
            for threads in (1, 2):
                so = ort.SessionOptions()
                so.intra_op_num_threads = threads
                so.inter_op_num_threads = 1
                sf = ort.InferenceSession(str(files["float_onnx"]), so, providers=["CPUExecutionProvider"])
                sd = ort.InferenceSession(str(dyn), so, providers=["CPUExecutionProvider"])
                for batch in (1, 32):
                    x = xte[:batch]
                    with with_threads(threads):
                        ours = _median_ms(lambda: prog.run({"x": x}), args.reps)
                    f32 = _median_ms(lambda: sf.run(None, {"x": x}), args.reps)
                    dq = _median_ms(lambda: sd.run(None, {"x": x}), args.reps)
                    print(f"{kind:<5} {threads:>3} {batch:>5} {ours:9.3f} {f32:9.3f} {dq:9.3f} {f32 / ours:9.3f} "
                          f"{dq / ours:9.3f}", flush=True)
            print(f"{kind}: first load + run (plan, JIT from cache or compile) {first:.2f} s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=["LSTM", "GRU"])
    ap.add_argument("--targets", nargs="*", default=list(TARGETS))
    ap.add_argument("--methods", nargs="*", default=["ptq", "qat"])
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--train-epochs", type=int, default=3)
    ap.add_argument("--qat-samples", type=int, default=20000)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--cache", default=str(CACHE / "rnn_rows.json"))
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    xtr, ytr, xte, yte = load("mnist")
    data = (xtr, ytr, xte[:args.test], yte[:args.test])
    nets = {k: trained_rows(k, xtr, ytr, args.train_epochs) for k in args.models}
    table(args, nets, data)
    if args.speed:
        speed(args, nets, data)


if __name__ == "__main__":
    main()
