"""Integer runtime vs ONNX Runtime on the same quantized models, same inputs, same thread count.

    .venv/bin/python benchmarks/runtime_vs_ort.py [--repeats N]

Prints the CPU and its int8 features; then per model, thread count (1, 2) and batch (1, 32): our ms,
ONNX Runtime's ms, the throughput ratio ORT/ours, whether the outputs are bit-identical on the host's
``ort-cpu`` form, and the op types where our time goes. Per model and batch (1 thread): a
straightforward numpy int64 implementation of the model's MAC layers (im2col by slicing + int64
einsum, exact sums, on the layer inputs our run produced) against our MAC kernels on the same
inputs (the issue's 20x bar). Then the practical int8 peak (ONNX Runtime's GMAC/s on a large u8 x s8
MatMulInteger) against ours on the same data, first-call times with a cold and a warm Numba cache
(fresh processes), and each model's peak resident memory at batch 32 (fresh processes).

Thread counts are applied to all three pools: Numba's, the BLAS behind numpy (threadpoolctl) and
ONNX Runtime's intra-op pool. Numba's OpenMP workers sleep rather than spin between parallel regions
(OMP_WAIT_POLICY=PASSIVE, set by runtime/numba_config.py unless the user set it), and the runtime runs
steps with small inputs on one thread (runtime.numba_config.threads_for): on a shared 2-core machine
small parallel regions wait for workers the scheduler has not run. The load average is printed before and after. The model-zoo ShuffleNet has batch 1 written into its Reshape shapes;
the batch-32 copy is made by rewriting the leading 1 of those shapes and of the graph's input and
output (benchmark only). Timings are the best of ``--repeats`` runs after a warm-up; other load on
the machine inflates them (the 2-thread rows most).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as runtime/numba_config.py, before Numba's OpenMP pool starts

import numba  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import runtime  # noqa: E402
from runtime.target import cpu_flags, load_target  # noqa: E402
from tests.onnx_models import quantize_with_ort, tiny_cnn  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "onnx"
SHUFFLENET = SHARED / "shufflenet-v2-12-int8" / "shufflenet-v2-12-int8.onnx"
BATCHES = (1, 32)


@contextmanager
def threads(n: int):
    """n threads for Numba's kernels and numpy's BLAS."""
    old = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        numba.set_num_threads(old)


def best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def ort_session(path, n_threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = n_threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def with_batch(src: Path, batch: int, dst: Path) -> Path:
    """A copy of a batch-1 model for another batch: graph input/output dim 0 and the leading 1 of
    every constant Reshape shape become ``batch``."""
    m = onnx.load(str(src))
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = batch
    inits = {i.name: i for i in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]]).copy()
            if shape.size and shape[0] == 1:
                shape[0] = batch
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    del m.graph.value_info[:]
    onnx.save(m, str(dst))
    return dst


# ---------------------------------------------------------------------------------------------
# the numpy int64 baseline and our kernels on the same MAC layers
# ---------------------------------------------------------------------------------------------
def mac_layers(prog, feeds):
    """(step, input array) of every Conv/Gemm/MatMul step, with the inputs our run produced."""
    from runtime.ops.mac import ConvStep, MatMulStep

    res = prog.run_with_details(feeds, keep_tensors=True)
    env = {**res.tensors, **{k: np.asarray(v) for k, v in feeds.items()}}
    return [(s, env[s.inputs[0]]) for s in prog.steps
            if isinstance(s, (ConvStep, MatMulStep)) and s.inputs[0] in env
            and (isinstance(s, ConvStep) or s.b is not None)]


def numpy_int64_macs(layers):
    """Exact int64 accumulators of the layers, straightforwardly: centred int64 operands, im2col by
    slicing, one einsum (numpy has no integer BLAS)."""
    from runtime.ops.mac import ConvStep

    for s, x in layers:
        if not isinstance(s, ConvStep):
            a = x.astype(np.int64) - s.a_zp
            b = (s.b.T if s.trans_b else s.b).astype(np.int64) - s.b_zp.reshape(1, -1)
            np.einsum("mk,kn->mn", a.reshape(-1, a.shape[-1]), b)
            continue
        n, c, h, w = x.shape
        m, cg, kh, kw = s.w.shape
        ph, pw, peh, pew = s.pads
        sh, sw = s.strides
        dh, dw = s.dilations
        xp = np.pad(x.astype(np.int64) - s.x_zp, ((0, 0), (0, 0), (ph, peh), (pw, pew)))
        oh = (h + ph + peh - (kh - 1) * dh - 1) // sh + 1
        ow = (w + pw + pew - (kw - 1) * dw - 1) // sw + 1
        mg = m // s.group
        for g in range(s.group):
            cols = np.stack([xp[:, g * cg:(g + 1) * cg, i * dh:i * dh + sh * oh:sh, j * dw:j * dw + sw * ow:sw]
                             for i in range(kh) for j in range(kw)], axis=2)  # n, cg, taps, oh, ow
            wg = s.w[g * mg:(g + 1) * mg].reshape(mg, cg * kh * kw) - s.w_zp[g * mg:(g + 1) * mg, None]
            np.einsum("nkhw,mk->nmhw", cols.reshape(n, cg * kh * kw, oh, ow), wg)


def our_macs(layers):
    """The same layers through our kernels as the program runs them (accumulators on the weights the
    plan step prepared, and the target's accumulator policy)."""
    from runtime.kernels.mac import apply_accumulator, conv_accumulate, matmul_acc
    from runtime.ops.mac import ConvStep

    for s, x in layers:
        if isinstance(s, ConvStep):
            acc = conv_accumulate(x, s.x_zp, s.weights, s.bias, s.strides, s.pads, s.dilations,
                                  pair_saturation=s.mac.pair_saturation)
        else:
            acc = matmul_acc(x, s.a_zp, s.b.T if s.trans_b else s.b, s.b_zp, s.bias,
                             pair_saturation=s.mac.pair_saturation)
        apply_accumulator(acc, s.mac.acc_bits, s.mac.overflow)


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------
def bench_model(name, path_for_batch, feeds_for_batch, repeats, host):
    rows, mac_rows, where = [], [], {}
    for b in BATCHES:
        path = path_for_batch(b)
        feeds = feeds_for_batch(b)
        prog = runtime.load(path, host)
        for n_thr in (1, 2):
            with threads(n_thr):
                sess = ort_session(path, n_thr)
                ref = sess.run(None, feeds)[0]
                ours = prog.run(feeds)[prog.outputs[0].name]
                exact = bool(np.array_equal(ours, ref))
                reps = repeats if b == 1 else max(2, repeats // 2)
                t_ort = best_of(lambda: sess.run(None, feeds), reps)
                t_us = best_of(lambda: prog.run(feeds), reps)
                rows.append((name, n_thr, b, t_us * 1e3, t_ort * 1e3, t_ort / t_us, exact))
                if b == BATCHES[-1] and n_thr == 1:
                    per_op = defaultdict(float)
                    for st in prog.run_with_details(feeds).stats.values():
                        per_op[st.op_type] += st.seconds
                    where[name] = sorted(per_op.items(), key=lambda kv: -kv[1])[:5]
        with threads(1):
            layers = mac_layers(prog, feeds)
            t_np = best_of(lambda: numpy_int64_macs(layers), max(1, repeats // 3))
            t_mac = best_of(lambda: our_macs(layers), max(1, repeats // 3))
            macs = sum(_macs(s, x) for s, x in layers)
            mac_rows.append((name, b, t_np * 1e3, t_mac * 1e3, t_np / t_mac, macs / t_mac / 1e9))
    return rows, mac_rows, where


def _macs(s, x) -> int:
    from runtime.ops.mac import ConvStep

    if isinstance(s, ConvStep):
        n, _, h, w = x.shape
        m, cg, kh, kw = s.w.shape
        oh = (h + s.pads[0] + s.pads[2] - (kh - 1) * s.dilations[0] - 1) // s.strides[0] + 1
        ow = (w + s.pads[1] + s.pads[3] - (kw - 1) * s.dilations[1] - 1) // s.strides[1] + 1
        return n * m * cg * kh * kw * oh * ow
    return int(np.prod(x.shape)) * s.b.shape[0 if s.trans_b else -1]


def matmul_integer_model(b: np.ndarray, m: int) -> onnx.ModelProto:
    """MatMulInteger(a [m, K] uint8 input, b constant int8 [K, N]) -> int32 [m, N]."""
    from onnx import TensorProto, helper

    k, n = b.shape
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
                          [numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def peak_gemm(repeats):
    """GMAC/s of ONNX Runtime's MatMulInteger u8 x s8 (512x1024 by 1024x512, full-range random
    operands) vs ours on the same data, 2 threads; ours with the host's pair saturation and exact, with
    B prepared as the planner prepares a constant B (packed for the AVX2 GEMM where it runs)."""
    from runtime.kernels import simd
    from runtime.kernels.mac import matmul_acc

    m, k, n = 512, 1024, 512
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    model = matmul_integer_model(b, m)
    packed = simd.pack_b(np.ascontiguousarray(b.T)) if simd.available() else None
    pair = bool(load_target("ort-cpu").arithmetic.accumulator.pair_saturation_bits)
    with tempfile.TemporaryDirectory() as d, threads(2):
        p = Path(d) / "mm.onnx"
        onnx.save(model, p)
        sess = ort_session(p, 2)
        (ref,) = sess.run(None, {"a": a})
        exact = bool(np.array_equal(matmul_acc(a, 0, b, 0, pair_saturation=pair, b_packed=packed), ref))
        t_ort = best_of(lambda: sess.run(None, {"a": a}), repeats)
        t_pair = best_of(lambda: matmul_acc(a, 0, b, 0, pair_saturation=pair, b_packed=packed), repeats)
        t_exact = best_of(lambda: matmul_acc(a, 0, b, 0, b_packed=packed), repeats)
    macs = m * k * n
    return macs / t_ort / 1e9, macs / t_pair / 1e9, macs / t_exact / 1e9, exact


def _fresh(code: str, env=None) -> str:
    """The last line a fresh Python process prints."""
    return subprocess.run([sys.executable, "-c", code], env=env or os.environ, capture_output=True, text=True,
                          check=True, cwd=REPO).stdout.strip().splitlines()[-1]


def compile_times(model_paths):
    """Fresh processes, one thread, every model at batch 1: (total, jit) seconds with an empty Numba
    cache (cold: every kernel compiles) and then from that cache (warm). total = import + plan + first
    run; jit = the first runs minus steady-state runs (compiling or loading the kernels)."""
    code = ("import time,numpy as np,onnx;t=time.perf_counter();import runtime;jit=0.0\n"
            f"for path in {[str(p) for p in model_paths]!r}:\n"
            "    p=runtime.load(path,'ort-cpu')\n"
            "    shape=[d.dim_value or 1 for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]\n"
            "    f={p.inputs[0].name:np.zeros(shape,np.float32)}\n"
            "    t1=time.perf_counter();p.run(f);t2=time.perf_counter();p.run(f);t3=time.perf_counter()\n"
            "    jit+=(t2-t1)-(t3-t2)\n"
            "print(time.perf_counter()-t,jit)")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1"}
        cold = [float(v) for v in _fresh(code, env).split()]
        warm = [float(v) for v in _fresh(code, env).split()]
    return cold, warm


def peak_rss(path, shape) -> float:
    """MiB of resident memory at the peak of loading and running the model once (fresh process)."""
    code = ("import resource,numpy as np,runtime;"
            f"p=runtime.load({str(path)!r},'ort-cpu');"
            f"x=np.random.default_rng(0).normal(0,1,{tuple(shape)!r}).astype(np.float32);"
            "p.run({p.inputs[0].name:x});print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)")
    return float(_fresh(code))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()
    flags = cpu_flags()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    int8 = [f for f in ("avx2", "fma", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp") if f in flags]
    host = load_target("ort-cpu").name
    print(f"CPU: {cpu}, {os.cpu_count()} cores; int8 features: {', '.join(int8) or 'none'}; onnxruntime "
          f"{ort.__version__}; numba {numba.__version__}; numpy {np.__version__}; ort-cpu resolves to {host}")
    print("load average at start: " + " ".join(f"{v:.2f}" for v in os.getloadavg()) + "\n")
    rows, mac_rows, where, rss = [], [], {}, {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rng = np.random.default_rng(0)
        tiny = Path(quantize_with_ort(tiny_cnn(channels=32, size=16), rng.uniform(-1, 1, (32, 1, 16, 16)).astype(np.float32),
                                      d / "tiny.onnx", "qdq", True))
        models = [("tiny-cnn-32ch-16px (QDQ, per-channel)", lambda b: tiny,
                   lambda b: {"x": np.random.default_rng(b).uniform(-1, 1, (b, 1, 16, 16)).astype(np.float32)},
                   tiny, (32, 1, 16, 16))]
        if SHUFFLENET.exists():
            models.append(("shufflenet-v2-12-int8 (zoo)", lambda b: with_batch(SHUFFLENET, b, d / f"shuffle{b}.onnx"),
                           lambda b: {"input": np.random.default_rng(b).normal(0, 20, (b, 3, 224, 224)).astype(np.float32)},
                           d / "shuffle32.onnx", (32, 3, 224, 224)))
        else:
            print("(../shared/data absent: the model-zoo ShuffleNet is skipped)")
        for name, path_for, feeds_for, path32, shape32 in models:
            r, mr, w = bench_model(name, path_for, feeds_for, args.repeats, host)
            rows += r
            mac_rows += mr
            where.update(w)
            rss[name] = peak_rss(path32, shape32)
        cold, warm = compile_times([tiny] + ([d / "shuffle1.onnx"] if SHUFFLENET.exists() else []))
    print(f"{'model':<40} {'thr':>3} {'batch':>5} {'ours ms':>9} {'ORT ms':>8} {'ORT/ours':>8} {'bit-exact':>9}")
    for name, thr, b, us, o, ratio, exact in rows:
        print(f"{name:<40} {thr:>3} {b:>5} {us:>9.2f} {o:>8.2f} {ratio:>7.2f}x {str(exact):>9}")
    print("\nMAC layers (Conv/Gemm/MatMul accumulators, 1 thread): numpy int64 vs ours on the same inputs")
    print(f"{'model':<40} {'batch':>5} {'numpy ms':>9} {'ours ms':>9} {'speed-up':>8} {'GMAC/s':>7}")
    for name, b, t_np, t_us, ratio, gmacs in mac_rows:
        print(f"{name:<40} {b:>5} {t_np:>9.1f} {t_us:>9.2f} {ratio:>7.1f}x {gmacs:>7.1f}")
    print(f"\nwhere our time goes at batch {BATCHES[-1]}, 1 thread (top op types, ms):")
    for name, ops in where.items():
        print(f"  {name}: " + ", ".join(f"{op} {sec * 1e3:.1f}" for op, sec in ops))
    g_ort, g_pair, g_exact, exact = peak_gemm(max(3, args.repeats // 2))
    print(f"\nint8 GEMM 512x1024x512 u8 x s8 full-range, 2 threads: ONNX Runtime {g_ort:.1f} GMAC/s (practical "
          f"peak); ours {g_pair:.1f} GMAC/s with the host's pair saturation ({g_pair / g_ort:.2f}x, bit-exact {exact}), "
          f"{g_exact:.1f} GMAC/s exact sums ({g_exact / g_ort:.2f}x)")
    print(f"kernel JIT (first runs minus steady runs, all models, 1 thread): cold cache {cold[1]:.1f} s, warm cache "
          f"{warm[1]:.1f} s; import + plan + first runs: cold {cold[0]:.1f} s, warm {warm[0]:.1f} s")
    print("peak RSS at batch 32 (fresh process, ours): " + ", ".join(f"{k.split(' ')[0]} {v:.0f} MiB" for k, v in rss.items()))
    print("load average at end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
