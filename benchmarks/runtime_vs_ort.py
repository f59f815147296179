"""Integer runtime vs ONNX Runtime on the same quantized models, same inputs, same thread count.

    .venv/bin/python benchmarks/runtime_vs_ort.py [--repeats N]

Prints the CPU and its int8 features; per model, thread count and batch: our ms, ONNX Runtime's ms,
their throughput ratio, whether the outputs are bit-identical on the host's ort-cpu form, and a
straightforward numpy int64 implementation's ms on the conv layers (the 20x bar); first-call JIT
compile time cold (empty Numba cache) and warm (from the cache), measured in fresh processes;
peak resident memory; and the practical int8 peak: ONNX Runtime's GMAC/s on a large MatMulInteger
against ours on the same data.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numba  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import runtime  # noqa: E402
from runtime.target import cpu_flags, load_target  # noqa: E402
from tests.onnx_models import quantize_with_ort, tiny_cnn  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "onnx"


def _time(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def numpy_int64_conv_ms(prog, feeds, repeats):
    """A straightforward numpy int64 implementation of the program's Conv/Gemm accumulations
    (im2col by slicing + int64 matmul), timed on the layer inputs our run produced."""
    from runtime.ops.mac import ConvStep

    res = prog.run_with_details(feeds, keep_tensors=True)
    env = {**res.tensors, **{k: np.asarray(v) for k, v in feeds.items()}}
    work = []
    for s in prog.steps:
        if isinstance(s, ConvStep) and s.inputs[0] in env:
            work.append((s, env[s.inputs[0]].astype(np.int64)))

    def run():
        for s, x in work:
            n, c, h, w = x.shape
            m, cg, kh, kw = s.w.shape
            ph, pw, peh, pew = s.pads
            xp = np.pad(x - s.x_zp, ((0, 0), (0, 0), (ph, peh), (pw, pew)))
            sh, sw = s.strides
            oh = (h + ph + peh - kh) // sh + 1
            ow = (w + pw + pew - kw) // sw + 1
            mg = m // s.group
            for g in range(s.group):
                cols = np.stack([xp[:, g * cg:(g + 1) * cg, i:i + sh * oh:sh, j:j + sw * ow:sw]
                                 for i in range(kh) for j in range(kw)], axis=2)  # n, cg, taps, oh, ow
                wg = s.w[g * mg:(g + 1) * mg].reshape(mg, cg * kh * kw) - s.w_zp[g * mg:(g + 1) * mg, None]
                np.einsum("nkhw,mk->nmhw", cols.reshape(n, cg * kh * kw, oh, ow), wg)

    return _time(run, max(1, repeats // 3)) * 1e3 if work else float("nan")


def bench_model(name, path, make_feeds, batches, repeats):
    host = load_target("ort-cpu").name
    rows = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        sess = _session(path, threads)
        prog = runtime.load(path, host)
        for b in batches:
            feeds = make_feeds(b)
            if feeds is None:
                continue
            (ref,) = sess.run(None, feeds)[:1]
            ours = prog.run(feeds)[prog.outputs[0].name]
            exact = bool(np.array_equal(ours, ref))
            t_ort = _time(lambda: sess.run(None, feeds), repeats)
            t_us = _time(lambda: prog.run(feeds), repeats)
            t_np = numpy_int64_conv_ms(prog, feeds, repeats) if threads == 1 else float("nan")
            rows.append((name, threads, b, t_us * 1e3, t_ort * 1e3, t_ort / t_us, exact, t_np))
    return rows


def compile_times(model_path):
    """First run in a fresh process with an empty Numba cache, then again from the cache."""
    code = ("import time,sys,numpy as np;t=time.perf_counter();import runtime;"
            f"p=runtime.load({str(model_path)!r},'ort-cpu');"
            "x=np.zeros((1,1,8,8),np.float32);p.run({'x':x});print(time.perf_counter()-t)")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        cold = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True, cwd=REPO).stdout.split()[-1])
        warm = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True, cwd=REPO).stdout.split()[-1])
    return cold, warm


def peak_gemm(repeats):
    """GMAC/s of ONNX Runtime's MatMulInteger u8 x s8 (512x1024 by 1024x512) vs ours on the same data."""
    from onnx import TensorProto, helper, numpy_helper

    from runtime.kernels.mac import matmul_acc

    m, k, n = 512, 1024, 512
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
                          [numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "mm.onnx"
        onnx.save(model, p)
        numba.set_num_threads(2)
        sess = _session(p, 2)
        t_ort = _time(lambda: sess.run(None, {"a": a}), repeats)
    pair = bool(load_target("ort-cpu").arithmetic.accumulator.pair_saturation_bits)
    t_us = _time(lambda: matmul_acc(a, 0, b, 0, pair_saturation=pair), repeats)
    macs = m * k * n
    return macs / t_ort / 1e9, macs / t_us / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    flags = cpu_flags()
    model_name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                      platform.processor())
    int8 = [f for f in ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp") if f in flags]
    print(f"CPU: {model_name}; int8 features: {', '.join(int8) or 'none'}; onnxruntime {ort.__version__}; "
          f"numba {numba.__version__}; ort-cpu resolves to {load_target('ort-cpu').name}\n")
    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        calib = rng.uniform(-1, 1, (32, 1, 8, 8)).astype(np.float32)
        tiny = quantize_with_ort(tiny_cnn(channels=32, size=16), rng.uniform(-1, 1, (32, 1, 16, 16)).astype(np.float32),
                                 Path(d) / "tiny.onnx", "qdq", True)
        small = quantize_with_ort(tiny_cnn(), calib, Path(d) / "small.onnx", "qdq", True)
        rows = bench_model("tiny-cnn-32ch-16px (QDQ, per-channel)", tiny,
                           lambda b: {"x": rng.uniform(-1, 1, (b, 1, 16, 16)).astype(np.float32)}, (1, 32), args.repeats)
        shuffle = SHARED / "shufflenet-v2-12-int8" / "shufflenet-v2-12-int8.onnx"
        if shuffle.exists():
            x = rng.normal(0, 20, (1, 3, 224, 224)).astype(np.float32)
            rows += bench_model("shufflenet-v2-12-int8 (zoo)", shuffle, lambda b: {"input": x} if b == 1 else None,
                                (1, 32), max(3, args.repeats // 3))
        else:
            print("(../shared/data absent: the model-zoo ShuffleNet is skipped)")
        cold, warm = compile_times(small)
    print(f"{'model':<40} {'thr':>3} {'batch':>5} {'ours ms':>9} {'ORT ms':>8} {'ratio':>6} {'bit-exact':>9} {'numpy int64 conv ms':>20} {'vs numpy':>8}")
    for name, thr, b, us, o, ratio, exact, np_ms in rows:
        vs = f"{np_ms / us:.1f}x" if np.isfinite(np_ms) else ""
        np_txt = f"{np_ms:.1f}" if np.isfinite(np_ms) else ""
        print(f"{name:<40} {thr:>3} {b:>5} {us:>9.2f} {o:>8.2f} {ratio:>5.2f}x {str(exact):>9} {np_txt:>20} {vs:>8}")
    g_ort, g_us = peak_gemm(max(3, args.repeats // 2))
    print(f"\nint8 GEMM 512x1024x512, 2 threads: ONNX Runtime {g_ort:.1f} GMAC/s (practical peak), ours {g_us:.2f} GMAC/s "
          f"({g_us / g_ort:.2f}x)")
    print(f"first call incl. import + plan + JIT: cold cache {cold:.1f} s, warm cache {warm:.1f} s")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
