"""quantize_static on the float models in ../shared/data, every variant, ONNX Runtime vs the integer runtime.

For mnist-8 and ultraface-version-RFB-640 (its integer score head; the full graph is tried too and its
refusal printed), for QDQ / QOperator x per tensor / per channel (uint8 activations, int8 weights):
quantize_static time, the ops ONNX Runtime runs after its optimizations, bit-exactness of
``runtime.load(path, "ort-cpu")`` against ONNX Runtime (host form, same inputs), whether the *other*
ort-cpu form would differ (i.e. whether the model exercises the CPU-dependent u8 x s8 saturation), and
the time per inference of both. The preparation and calibration are the ones of
tests/runtime/test_quantize_static_models.py (which runs mnist-8 and one ultraface variant as tests).

Run: ``.venv/bin/python benchmarks/ort_quantize_static.py [--digits 32] [--models mnist-8 ultraface]``.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import runtime  # noqa: E402
from runtime.errors import HwsimError  # noqa: E402
from runtime.target import load_target  # noqa: E402
from tests.runtime.test_quantize_static_models import (calibration_set, mnist_digits, prepare_float_model,  # noqa: E402
                                                        quantize, score_head, zoo_inputs)

SHARED = REPO.parent / "shared" / "data"
VARIANTS = [(fmt, pc) for fmt in ("qdq", "qoperator") for pc in (False, True)]


def _optimized_ops(path: Path, tmp: Path) -> str:
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp / "optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    c = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return ", ".join(f"{k} {v}" for k, v in c.most_common())


def _run_both(path: Path, feeds: list[dict], host: str):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    prog = runtime.load(path, host)
    other = "ort-cpu-vnni" if host == "ort-cpu-avx2" else "ort-cpu-avx2"
    prog_other = runtime.load(path, other)
    names = [o.name for o in sess.get_outputs()]
    bad = bad_other = total = 0
    t_ort = t_ours = 0.0
    prog.run(feeds[0])  # warm-up (JIT)
    for f in feeds:
        t0 = time.perf_counter()
        expected = sess.run(None, f)
        t_ort += time.perf_counter() - t0
        t0 = time.perf_counter()
        got = prog.run(f)
        t_ours += time.perf_counter() - t0
        got_other = prog_other.run(f)
        for n, e in zip(names, expected):
            bad += int(np.count_nonzero(got[n] != e))
            bad_other += int(np.count_nonzero(got_other[n] != e))
            total += e.size
    return bad, bad_other, total, 1e3 * t_ort / len(feeds), 1e3 * t_ours / len(feeds)


def bench_model(name: str, digits: int, host: str, tmp: Path) -> None:
    if name == "mnist-8":
        d = SHARED / "onnx" / "mnist-8"
        inputs = zoo_inputs(d)
        float_path = prepare_float_model(d / "model.onnx", tmp / "mnist_float.onnx")
        calib = calibration_set(inputs, noise=20.0, lo=0.0, hi=255.0)
        feeds = [{"Input3": x} for x in inputs + mnist_digits(SHARED, digits)]
        input_name, head = "Input3", None
    else:
        d = SHARED / "onnx" / "ultraface-version-RFB-640"
        inputs = zoo_inputs(d)
        float_path = prepare_float_model(d / "version-RFB-640.onnx", tmp / "uf_float.onnx", pre_process=True)
        calib = calibration_set(inputs, noise=5.0, lo=-np.inf, hi=np.inf)
        feeds = [{"input": x} for x in calib[:2]]
        input_name, head = "input", "scores"
    print(f"\n{name}: {len(feeds)} inputs, calibration on {len(calib)} (own test inputs + 2 noisy copies each)")
    print(f"{'variant':<22}{'quantize s':>11}{'bit-exact':>10}{'differ':>9}{'other form':>11}{'ORT ms':>9}{'ours ms':>9}")
    for fmt, pc in VARIANTS:
        label = f"{fmt} {'per-channel' if pc else 'per-tensor'}"
        t0 = time.perf_counter()
        q = quantize(float_path, tmp / f"{name}_{fmt}_{pc}.onnx", input_name, calib, fmt, pc)
        tq = time.perf_counter() - t0
        path = q
        if head is not None:
            try:
                runtime.load(q, host)
                print(f"  {label}: the full graph plans (unexpected)")
            except HwsimError as e:
                print(f"  {label}: full graph refused: {str(e).split(': ', 1)[1][:150]}")
            path = score_head(q, tmp / f"{name}_{fmt}_{pc}_head.onnx", input_name, head)
        try:
            bad, bad_other, total, ms_ort, ms_ours = _run_both(path, feeds, host)
        except HwsimError as e:
            print(f"{label:<22}{tq:>11.2f}  refused: {str(e).split(': ', 1)[1][:110]}")
        else:
            print(f"{label:<22}{tq:>11.2f}{str(bad == 0):>10}{bad:>9}{bad_other:>11}{ms_ort:>9.2f}{ms_ours:>9.1f}")
        print(f"    ONNX Runtime runs: {_optimized_ops(path, tmp)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--digits", type=int, default=32, help="MNIST t10k digits added to mnist-8's 3 test inputs")
    ap.add_argument("--models", nargs="+", default=["mnist-8", "ultraface"], choices=["mnist-8", "ultraface"])
    args = ap.parse_args()
    if not (SHARED / "README.md").exists():
        sys.exit(f"{SHARED} is not present on this machine")
    host = load_target("ort-cpu").name
    print(f"onnxruntime {ort.__version__}, host form {host}; 'differ' counts outputs of the host form that differ "
          "from ONNX Runtime, 'other form' those of the other ort-cpu form")
    with tempfile.TemporaryDirectory() as d:
        for m in args.models:
            bench_model(m, args.digits, host, Path(d))


if __name__ == "__main__":
    main()
