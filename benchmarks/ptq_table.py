"""Issue 6's table: PTQ and QAT methods per model and target, judged by the integer runtime.

Models (FP32 accuracy printed): a MobileNetV2-style and a ResNet-style network on Fashion-MNIST and
a small CNN on MNIST (trained here with a fixed seed, cached in benchmarks/.cache), the two demo CNNs
on scikit-learn's digits (shipped checkpoints); and the float detector ultraface-version-RFB-640
(no labels here: output SQNR against float of its 8 detection-head convolutions, on its model-zoo
test image and 15 deterministic variations of it).

Methods, each from the same calibrated simulation (minmax ranges, ``--calib`` training images):
``nearest``; ``cle``; ``cle+bc`` (empirical bias correction); ``adaround`` (nearest + AdaRound);
``auto`` (``quantizer.ptq.run_ptq(..., "auto")``: ranges, CLE, BC, AdaRound each kept only where a
held-out score on ``--val`` training images improves); ``qat`` (learned ranges, ``--qat-epochs`` over
``--qat-samples`` training images (at least ``--qat-epochs`` epochs), starting from the ``auto`` result,
the order AIMET recommends; its time is the QAT alone). For every method: fast-sim,
exact-sim and integer-runtime accuracy on ``--test`` test images, whether exact-sim equals the integer
runtime on every output integer, and the method's wall time. AdaRound rows also give seconds per layer
and peak RSS. At the end the issue's bars are checked and the published anchors printed beside our drops.

Targets: every 8-bit built-in target (dsp-int8, npu-int8-pc, htp-a16w8, the host's ort-cpu form),
npu-w4a8, and ``dsp-int8-w4`` (dsp-int8 with int4 per-tensor weights) for the MobileNetV2-style model.

    python benchmarks/ptq_table.py [--models ...] [--targets ...] [--methods ...] [--json]

Rows are cached in benchmarks/.cache/ptq_rows.json (keyed by model, target, method and settings), so an
interrupted run resumes; ``--fresh`` recomputes.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import CACHE, DATA, TRAINING, MobileNetV2FMNIST, ResNetFMNIST, SmallCNN, load, trained  # noqa: E402

METHODS = ("nearest", "cle", "cle+bc", "adaround", "auto", "qat")
ANCHORS = {  # published FP32 -> quantized (ImageNet top-1), for comparing drops
    "DFQ (Nagel 2019) MobileNetV2 INT8, CLE+BC": (71.72, 71.08),
    "DFQ (Nagel 2019) ResNet-50 INT8": (76.05, 75.45),
    "AdaRound (Nagel 2020) ResNet-18 W4A8": (69.68, 68.55),
}


def w4_variant(name: str):
    from runtime.target import load_target

    t = load_target(name)
    ar = t.arithmetic
    return dataclasses.replace(t, name=f"{name}-w4",
                               arithmetic=dataclasses.replace(ar, weights=dataclasses.replace(ar.weights, dtype="int4")))


def target_of(name: str):
    from runtime.target import load_target

    return w4_variant(name[:-3]) if name.endswith("-w4") else load_target(name)


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------
def classifier_models(names):
    from hwsim.digits import load_digits_split, pretrained

    out = {}
    if any(n.startswith("digits") for n in names):
        xtr, ytr, xte, yte = load_digits_split()
        for n in ("separable", "residual"):
            if f"digits-{n}" in names:
                out[f"digits-{n}"] = (pretrained(n, xtr, ytr), xtr, ytr, xte, yte)
    if (DATA / "README.md").exists():
        if "mnist-smallcnn" in names:
            xtr, ytr, xte, yte = load("mnist")
            out["mnist-smallcnn"] = (trained("mnist-smallcnn", SmallCNN, xtr, ytr), xtr, ytr, xte, yte)
        if {"fmnist-mobilenetv2", "fmnist-resnet"} & set(names):
            xtr, ytr, xte, yte = load("fashion-mnist")
            for n, cls in (("fmnist-mobilenetv2", MobileNetV2FMNIST), ("fmnist-resnet", ResNetFMNIST)):
                if n in names:
                    out[n] = (trained(n, cls, xtr, ytr, **TRAINING[n]), xtr, ytr, xte, yte)
    return out


def ultraface():
    """The detector cut at its 8 head convolutions, and 16 inputs: the zoo test image and 15 variations."""
    import onnx
    from onnx import numpy_helper

    d = DATA / "onnx" / "ultraface-version-RFB-640"
    path = d / "version-RFB-640.onnx"
    if not path.is_file():
        return None
    cut = CACHE / "ultraface-heads.onnx"
    if not cut.is_file():
        m = onnx.load(path)
        heads = [n.input[0] for n in m.graph.node if n.op_type == "Transpose"]
        CACHE.mkdir(exist_ok=True)
        onnx.utils.extract_model(str(path), str(cut), [m.graph.input[0].name], heads)
    t = onnx.TensorProto()
    t.ParseFromString((d / "test_data_set_0" / "input_0.pb").read_bytes())
    x0 = numpy_helper.to_array(t).astype(np.float32)
    rng = np.random.default_rng(0)
    xs = [x0]
    for i in range(15):
        v = x0[:, :, :, ::-1] if i % 2 else x0
        v = v * rng.uniform(0.7, 1.2) + rng.uniform(-0.2, 0.2) * np.abs(x0).mean()
        sh = rng.integers(-40, 41, 2)
        v = np.roll(v, tuple(int(s) for s in sh), axis=(2, 3))
        xs.append(np.ascontiguousarray(v, np.float32))
    return str(cut), np.concatenate(xs)


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
def _chunks(x, n=256):
    return [x[i:i + n] for i in range(0, len(x), n)]


@torch.no_grad()
def evaluate(sim, x, y=None):
    """fast / exact / integer: accuracy (or SQNR dB vs float over all outputs); exact==int on every integer."""
    import runtime
    from hwsim.export import build

    prog = runtime.load(build(sim), sim.target)
    outs = {"float": [], "fast": [], "exact": [], "integer": []}
    identical = True
    for xb in _chunks(x):
        xt = torch.from_numpy(xb)
        for mode in ("float", "fast"):
            sim.mode = mode
            o = sim(xt)
            outs[mode].append([t.numpy() for t in (o if isinstance(o, tuple) else (o,))])
        vals = sim.run_exact((xt,))
        outs["exact"].append([sim.quantizer_of(n).dequantize(vals[n]).numpy() for n in sim.output_names])
        res = prog.run_with_details({sim.input_names[0]: xb}, keep_tensors=True)
        outs["integer"].append([res.outputs[n] for n in sim.output_names])
        for n in sim.output_names:
            identical &= bool(np.array_equal(vals[n].numpy(), res.tensors[n + "_q"].astype(np.int64)))
    sim.mode = "fast"
    cat = {k: [np.concatenate([b[i] for b in v]) for i in range(len(sim.output_names))] for k, v in outs.items()}
    r = {"exact_equals_integer": identical}
    for k in ("float", "fast", "exact", "integer"):
        if y is not None:
            r[k] = float(np.mean(np.argmax(cat[k][0], 1) == y))
        elif k != "float":
            ref = np.concatenate([a.ravel() for a in cat["float"]]).astype(np.float64)
            got = np.concatenate([a.ravel() for a in cat[k]]).astype(np.float64)
            noise = float(((ref - got) ** 2).sum())
            r[k] = math.inf if noise == 0 else 10 * math.log10(float((ref ** 2).sum()) / noise)
    return r


def apply_method(sim, method, calib, score, train, args):
    from quantizer.ptq import run_ptq
    from quantizer.qat import qat

    opts = {"adaround": {"iterations": args.adaround_iterations}}
    info = {}
    t0 = time.perf_counter()
    if method in ("cle", "cle+bc", "adaround"):
        steps = {"cle": "cle", "cle+bc": "cle,bias-correction", "adaround": "adaround"}[method]
        rep = run_ptq(sim, calib, steps, None, options=opts, progress=False)
        for d in rep["decisions"]:
            if d["step"] == "adaround":
                info.update(seconds_per_layer=d["details"]["seconds_per_layer"], peak_rss_mb=d["details"]["peak_rss_mb"],
                            layers=d["details"]["layers"])
    elif method == "auto":
        rep = run_ptq(sim, calib, "auto", score, options=opts, progress=False)
        info["kept"] = [d["step"] for d in rep["decisions"] if d["kept"]]
        if "ranges" in info["kept"]:
            info["ranges"] = next(d["details"]["chosen"] for d in rep["decisions"] if d["step"] == "ranges")
    elif method == "qat":
        xt, yt = train
        gen = torch.Generator().manual_seed(0)

        class Batches:
            def __len__(self):
                return (len(xt) + 63) // 64

            def __iter__(self):
                perm = torch.randperm(len(xt), generator=gen)
                for i in range(0, len(xt), 64):
                    yield xt[perm[i:i + 64]], yt[perm[i:i + 64]]
        epochs = max(args.qat_epochs, math.ceil(args.qat_samples / len(xt)))
        res = qat(sim, Batches(), epochs=epochs, lr=args.qat_lr, progress=False)
        info["losses"] = [round(v, 4) for v in res["losses"]]
        info["epochs"] = epochs
    info["seconds"] = time.perf_counter() - t0
    return info


# ------------------------------------------------------------------------------------------------
def settings_key(args, model, target, method) -> str:
    s = json.dumps([model, target, method, args.test, args.calib, args.val, args.adaround_iterations,
                    args.qat_samples, args.qat_epochs, args.qat_lr, 3]
                   + ([args.qat_from] if method == "qat" and args.qat_from != "auto" else []), sort_keys=True)
    return hashlib.sha1(s.encode()).hexdigest()[:16]


def fmt(v, labels=True):
    if isinstance(v, bool) or v is None:
        return str(v)
    return f"{100 * v:6.2f}" if labels else f"{v:6.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=["digits-separable", "digits-residual", "mnist-smallcnn",
                                                    "fmnist-resnet", "fmnist-mobilenetv2", "ultraface"])
    ap.add_argument("--targets", nargs="*", default=None, help="default: dsp-int8 npu-int8-pc htp-a16w8 <host ort-cpu> "
                                                                "npu-w4a8 (+ dsp-int8-w4 for the MobileNetV2-style model)")
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--val", type=int, default=1000, help="held-out training images scoring the auto pipeline")
    ap.add_argument("--adaround-iterations", type=int, default=1000)
    ap.add_argument("--qat-samples", type=int, default=8192)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--qat-from", default="auto", choices=["auto", "adaround", "nearest"],
                    help="the PTQ result QAT starts from")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--cache", default=str(CACHE / "ptq_rows.json"), help="rows cache (JSON) this run reads and extends")
    ap.add_argument("--also-read", nargs="*", default=[], help="other rows caches to take rows from (read only)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import hwsim
    from quantizer.ptq import accuracy_score, sqnr_score
    from runtime.target import load_target

    host = load_target("ort-cpu").name
    default_targets = ["dsp-int8", "npu-int8-pc", "htp-a16w8", host, "npu-w4a8"]
    cache_file = Path(args.cache)
    cache = {} if args.fresh or not cache_file.is_file() else json.loads(cache_file.read_text())
    for other in args.also_read:
        if Path(other).is_file():
            cache = {**json.loads(Path(other).read_text()), **cache}
    rows = []
    t_start = time.time()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    fp32 = {}

    work = []
    cls = classifier_models(args.models)
    for name, (model, xtr, ytr, xte, yte) in cls.items():
        work.append((name, model, xtr, ytr, xte[:args.test], yte[:args.test]))
    uf = ultraface() if "ultraface" in args.models else None
    if uf is not None:
        work.append(("ultraface-heads", uf[0], uf[1], None, uf[1][8:], None))

    for name, model, xtr, ytr, xte, yte in work:
        labels = yte is not None
        if labels:
            calib_x = xtr[:args.calib]
            val_x, val_y = xtr[args.calib:args.calib + args.val], ytr[args.calib:args.calib + args.val]
            score = accuracy_score(val_x, val_y)
            with torch.no_grad():
                fp32[name] = float(np.mean(np.argmax(torch.cat([model(torch.from_numpy(b)) for b in _chunks(xte)]).numpy(), 1)
                                           == yte))
            train = (torch.from_numpy(xtr[:args.qat_samples]), torch.from_numpy(ytr[:args.qat_samples].astype(np.int64)))
            say(f"\n## {name}: FP32 accuracy {100 * fp32[name]:.2f} % on {len(xte)} test images "
                f"(calibration {len(calib_x)}, auto held-out {len(val_x)} training images)")
        else:
            from hwsim.onnx_import import import_onnx

            model = import_onnx(model)
            calib_x, score, train = xtr[:6], sqnr_score(xtr[6:8], batch_size=1), None
            say(f"\n## {name}: output SQNR (dB) vs float of the 8 head convs on {len(xte)} images "
                f"(calibration 6 images, auto held-out 2)")
        targets = args.targets or (default_targets + (["dsp-int8-w4"] if "mobilenet" in name else []))
        if not labels:
            targets = [t for t in targets if t in ("dsp-int8", "npu-int8-pc", "npu-w4a8", "dsp-int8-w4")] or targets
        methods = [m for m in args.methods if labels or m != "qat"]
        say(f"{'target':<14} {'method':<9} {'fast':>7} {'exact':>7} {'int':>7} {'ex==int':>7} {'seconds':>8}  notes")
        for tname in targets:
            base = auto_sim = None
            for method in methods:
                key = settings_key(args, name, tname, method)
                if key in cache:
                    row = cache[key]
                else:
                    if base is None:
                        target = target_of(tname)
                        base = hwsim.simulate(model, target, torch.from_numpy(calib_x[:1]))
                        calib = [torch.from_numpy(b) for b in _chunks(calib_x, 64 if labels else 1)]
                        base.calibrate(calib, progress=False)
                    if method == "qat":  # QAT starts from a PTQ result (AIMET's recommended order)
                        if auto_sim is None:
                            auto_sim = copy.deepcopy(base)
                            apply_method(auto_sim, args.qat_from, calib, score, train, args)
                        sim = copy.deepcopy(auto_sim)
                    else:
                        sim = copy.deepcopy(base)
                    info = apply_method(sim, method, calib, score, train, args)
                    if method == args.qat_from:
                        auto_sim = copy.deepcopy(sim)
                    ev = evaluate(sim, xte, yte)
                    row = {"model": name, "target": tname, "method": method, "labels": labels, **ev, **info}
                    if labels:
                        row["fp32"] = fp32[name]
                    cache[key] = row
                    CACHE.mkdir(exist_ok=True)
                    tmp = cache_file.with_suffix(".tmp")
                    tmp.write_text(json.dumps(cache, indent=1))
                    tmp.replace(cache_file)
                rows.append(row)
                notes = []
                if "seconds_per_layer" in row:
                    notes.append(f"{row['seconds_per_layer']:.2f} s/layer, peak RSS {row['peak_rss_mb']:.0f} MiB")
                if "kept" in row:
                    notes.append("kept: " + (", ".join(row["kept"]) or "nothing")
                                 + (f" ({row['ranges']})" if row.get("ranges") else ""))
                say(f"{tname:<14} {method:<9} {fmt(row['fast'], labels):>7} {fmt(row['exact'], labels):>7} "
                    f"{fmt(row['integer'], labels):>7} {str(row['exact_equals_integer']):>7} {row['seconds']:8.1f}  "
                    + "; ".join(notes))
    report = {"rows": rows, "fp32": fp32, "bars": check_bars(rows, fp32), "anchors": ANCHORS,
              "host_ort_form": host, "seconds": round(time.time() - t_start, 1)}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    say("\n## Bars (integer-runtime accuracy)")
    for b in report["bars"]:
        say(f"  [{'PASS' if b['pass'] else 'FAIL'}] {b['bar']}: {b['detail']}")
    say("\n## Drops beside the published anchors (points of top-1)")
    for k, (a, b) in ANCHORS.items():
        say(f"  {k}: {a:.2f} -> {b:.2f} (drop {a - b:.2f})")
    for r in rows:
        if r["labels"] and r["method"] in ("auto", "cle+bc", "adaround") and r["target"] in ("dsp-int8", "npu-w4a8"):
            say(f"  ours {r['model']} {r['target']} {r['method']}: {100 * r['fp32']:.2f} -> {100 * r['integer']:.2f} "
                f"(drop {100 * (r['fp32'] - r['integer']):.2f})")
    say(f"\ntotal {time.time() - t_start:.0f} s (cached rows reused: rerun with --fresh to recompute)")


def check_bars(rows, fp32):
    by = {(r["model"], r["target"], r["method"]): r for r in rows if r["labels"]}
    bars = []
    eight = [k for k in by if k[2] == "auto" and not k[1].endswith("-w4") and k[1] != "npu-w4a8"]
    for k in eight:
        r = by[k]
        drop = 100 * (fp32[k[0]] - r["integer"])
        bars.append({"bar": f"W8 auto within 0.5 pt of FP32: {k[0]} on {k[1]}", "pass": drop <= 0.5,
                     "detail": f"FP32 {100 * fp32[k[0]]:.2f}, integer {100 * r['integer']:.2f} (drop {drop:.2f})"})
    for (m, t, meth), r in by.items():
        if meth == "nearest" and t.startswith("dsp-int8") and (m, t, "cle+bc") in by:
            loss = fp32[m] - r["integer"]
            if loss > 0.01:
                rec = by[(m, t, "cle+bc")]["integer"] - r["integer"]
                bars.append({"bar": f"dsp CLE+BC recovers >= half of nearest's loss: {m} on {t}",
                             "pass": rec >= loss / 2,
                             "detail": f"nearest loses {100 * loss:.2f} pt, CLE+BC recovers {100 * rec:.2f}"})
    for m in ("fmnist-resnet", "mnist-smallcnn"):
        if (m, "npu-w4a8", "adaround") in by and (m, "npu-w4a8", "nearest") in by:
            a, n = by[(m, "npu-w4a8", "adaround")]["integer"], by[(m, "npu-w4a8", "nearest")]["integer"]
            bars.append({"bar": f"npu-w4a8 AdaRound within 2 pt of FP32 and better than nearest: {m}",
                         "pass": fp32[m] - a <= 0.02 and a > n,
                         "detail": f"FP32 {100 * fp32[m]:.2f}, nearest {100 * n:.2f}, AdaRound {100 * a:.2f}"})
    for (m, t, meth), r in by.items():
        if meth == "qat" and t == "npu-w4a8" and (m, t, "adaround") in by:
            a = by[(m, t, "adaround")]["integer"]
            bars.append({"bar": f"W4A8 QAT >= AdaRound: {m}", "pass": r["integer"] >= a,
                         "detail": f"QAT {100 * r['integer']:.2f}, AdaRound {100 * a:.2f}"})
    spl = [r["seconds_per_layer"] for r in rows if "seconds_per_layer" in r]
    if spl:
        bars.append({"bar": "AdaRound <= 4 s per layer", "pass": max(spl) <= 4.0,
                     "detail": f"max {max(spl):.2f} s/layer over {len(spl)} runs, peak RSS "
                               f"{max(r['peak_rss_mb'] for r in rows if 'peak_rss_mb' in r):.0f} MiB"})
    bars.append({"bar": "exact-sim == integer runtime on every output integer", "pass":
                 all(r["exact_equals_integer"] for r in rows), "detail": f"{len(rows)} rows"})
    return bars


if __name__ == "__main__":
    main()
