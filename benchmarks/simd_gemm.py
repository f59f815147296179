"""The AVX2 integer GEMM micro-kernels (runtime/kernels/simd.py) against the other int8 GEMMs here.

    .venv/bin/python benchmarks/simd_gemm.py [--repeats N] [--no-compile]

One thread everywhere (Numba, the BLAS behind numpy, ONNX Runtime's intra-op pool). Per shape
M x K x N (u8 A [M, K] full range, s8 B [K, N] full range, B prepared once as each path allows):
GMAC/s of ``simd.gemm_u8s8`` with pair saturation and exact, of ``mac.gemm_raw`` in both modes (the
float32-BLAS exact path and its pair flag/correction passes), of a straightforward numpy int64
``einsum`` (the issue's baseline) and of ONNX Runtime's MatMulInteger; and whether each result
equals the int64 reference (ONNX Runtime against the host's form: pair-saturated on AVX2 without
VNNI). Shapes: a large square-ish GEMM, ShuffleNet's 116x116 pointwise layer at batch 32 as a GEMM
(M = 32*28*28), and a first conv (3x3x3 = K 27, 24 channels, 112x112 output at batch 32) as im2col.
Then the cold (empty Numba cache) and warm compile times of the kernels in fresh processes.

The machine's load average is printed before and after: other jobs share the cores; every figure is
the best of ``--repeats`` runs after a warm-up (slow baselines: fewer).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks.runtime_vs_ort import best_of, matmul_integer_model  # noqa: E402
from runtime.kernels import simd  # noqa: E402
from runtime.kernels.mac import gemm_raw  # noqa: E402
from runtime.target import cpu_flags, load_target  # noqa: E402

SHAPES = (
    ("512x1024x512", 512, 1024, 512),
    ("ShuffleNet 116x116 1x1, b32", 32 * 28 * 28, 116, 116),
    ("first conv K=27 N=24, b32", 32 * 112 * 112, 27, 24),
)


def ort_matmul_integer(b: np.ndarray, m: int):
    """A one-thread ONNX Runtime session of MatMulInteger(a [m, K] u8, b initializer)."""
    model = matmul_integer_model(b, m)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "mm.onnx"
        onnx.save(model, p)
        sess = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
    return lambda a: sess.run(None, {"a": a})[0]


def einsum_int64(a, b):
    """The baseline a user writes: int64 operands, one einsum."""
    return np.einsum("mk,kn->mn", a.astype(np.int64), b.astype(np.int64))


def bench_shape(name, m, k, n, repeats, host_pair):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    bt = np.ascontiguousarray(b.T)
    packed = simd.pack_b(bt)
    ort_run = ort_matmul_integer(b, m)
    exact = einsum_int64(a, b)
    pair = gemm_raw(a, bt, pair_saturation=True)
    slow = max(1, repeats // 3)
    rows = [
        ("simd pair", lambda: simd.gemm_u8s8(a, packed, pair_saturation=True), pair, repeats),
        ("simd exact", lambda: simd.gemm_u8s8(a, packed), exact, repeats),
        ("gemm_raw pair", lambda: gemm_raw(a, bt, pair_saturation=True), pair, repeats),
        ("gemm_raw exact", lambda: gemm_raw(a, bt), exact, repeats),
        ("numpy int64 einsum", lambda: einsum_int64(a, b), exact, slow),
        ("ORT MatMulInteger", lambda: ort_run(a), pair if host_pair else exact, repeats),
    ]
    out = {}
    for label, fn, ref, reps in rows:
        ok = bool(np.array_equal(fn(), ref))
        t = best_of(fn, reps)
        out[label] = (m * k * n / t / 1e9, t * 1e3, ok)
    return out


# ---------------------------------------------------------------------------------------------
# what wiring would give: the MAC layers of real models, current kernels vs a simd prototype
# ---------------------------------------------------------------------------------------------
class SimdLayer:
    """A prototype of the wiring (benchmark only): a group-1 Conv or a MatMul/Gemm with uint8 input and
    int8 weights as NHWC raw im2col (u8, the (kh, kw, c) reduction order ONNX Runtime pairs in, by
    numpy) + ``gemm_u8s8`` (transposed output [M, n*P] for convs) + the zero-point expansion
    acc = S - za*sum_k w - zb*sum_k a + K*za*zb + bias, returned as [N, M, oh, ow] (conv) or [.., N]
    (matmul), int32 (int64 when the bound does not prove int32). Plan-time part: the packed weights."""

    def __init__(self, step):
        from runtime.ops.mac import ConvStep

        self.step = step
        self.conv = isinstance(step, ConvStep)
        if self.conv:
            m, cg, kh, kw = step.w.shape
            wk = step.w.transpose(0, 2, 3, 1).reshape(m, -1).astype(np.int8)  # [M, (kh, kw, c)]
            zb = np.broadcast_to(np.asarray(step.w_zp, np.int64).reshape(-1), (m,))
            za = int(step.x_zp)
        else:
            b = step.b.T if step.trans_b else step.b  # [K, N]
            wk = np.ascontiguousarray(b.T, dtype=np.int8)
            zb = np.broadcast_to(np.asarray(step.b_zp, np.int64).reshape(-1), (wk.shape[0],))
            za = int(step.a_zp)
        self.packed = simd.pack_b(wk)
        k = wk.shape[1]
        bias = np.zeros(wk.shape[0], np.int64) if step.bias is None else np.asarray(step.bias, np.int64).reshape(-1)
        const = bias - za * wk.sum(axis=1, dtype=np.int64) + k * za * zb
        # |S| <= K*255*128 (checked by gemm_u8s8); int64 accumulators when S + the terms may leave int32
        bound = k * 255 * max(1, self.packed.bmax) + int(np.abs(const).max()) + k * 255 * int(np.abs(zb).max())
        self.dtype = np.int32 if bound < 1 << 31 else np.int64
        self.const = const.astype(self.dtype)
        self.zb = None if not zb.any() else zb.astype(self.dtype)
        self.pair = bool(step.mac.pair_saturation)

    @staticmethod
    def applies(step, x) -> bool:
        from runtime.ops.mac import ConvStep

        if x.dtype != np.uint8:
            return False
        def int8(w):
            return w is not None and w.size and -128 <= int(w.min()) and int(w.max()) <= 127

        if isinstance(step, ConvStep):
            return step.group == 1 and int8(step.w) and x.ndim == 4
        return int8(step.b) and x.ndim == 2 and not step.trans_a

    def __call__(self, x):
        if not self.conv:
            return self._finish(simd.gemm_u8s8(x, self.packed, self.pair), x)
        a, (n, m, oh, ow) = self.operand(x)
        acc = simd.gemm_u8s8(a, self.packed, self.pair, transpose=True)  # [M, n*P]: runs of P pixels
        out = np.empty((n, m, oh * ow), self.dtype)  # to [n, M, P] and the constant terms in one pass
        np.add(acc.reshape(m, n, oh * ow).transpose(1, 0, 2), self.const[None, :, None], out=out)
        if self.zb is not None:
            out -= a.sum(axis=1, dtype=self.dtype).reshape(n, 1, oh * ow) * self.zb[None, :, None]
        return out.reshape(n, m, oh, ow)

    def gemm_only(self, a):
        return simd.gemm_u8s8(a, self.packed, self.pair, transpose=self.conv)

    def operand(self, x):
        """(A [n*oh*ow, K] uint8 in (kh, kw, c) order, (n, M, oh, ow)); a matmul's A is x itself."""
        if not self.conv:
            return x, None
        s = self.step
        n, c, h, w = x.shape
        m, cg, kh, kw = s.w.shape
        ph, pw, peh, pew = s.pads
        sh, sw = s.strides
        dh, dw = s.dilations
        oh = (h + ph + peh - (kh - 1) * dh - 1) // sh + 1
        ow = (w + pw + pew - (kw - 1) * dw - 1) // sw + 1
        xh = x.transpose(0, 2, 3, 1)
        if kh == kw == 1 and not any(s.pads):
            a = np.ascontiguousarray(xh[:, ::sh, ::sw]).reshape(-1, c)
        else:
            xp = np.full((n, h + ph + peh, w + pw + pew, c), s.x_zp, np.uint8)
            xp[:, ph:ph + h, pw:pw + w] = xh
            cols = np.empty((n, oh, ow, kh, kw, c), np.uint8)
            for i in range(kh):
                for j in range(kw):
                    y0, x0 = i * dh, j * dw
                    cols[:, :, :, i, j] = xp[:, y0:y0 + sh * (oh - 1) + 1:sh, x0:x0 + sw * (ow - 1) + 1:sw]
            a = cols.reshape(n * oh * ow, -1)
        return a, (n, m, oh, ow)

    def _finish(self, acc, a):
        acc = acc.astype(self.dtype, copy=False)
        acc += self.const
        if self.zb is not None:
            acc -= a.sum(axis=1, dtype=self.dtype)[:, None] * self.zb[None, :]
        return acc


def current_layer(step, x):
    """The layer's accumulators as the program computes them today (runtime.kernels.mac)."""
    from runtime.kernels.mac import conv_accumulate, matmul_acc
    from runtime.ops.mac import ConvStep

    if isinstance(step, ConvStep):
        return conv_accumulate(x, step.x_zp, step.weights, step.bias, step.strides, step.pads, step.dilations,
                               pair_saturation=step.mac.pair_saturation)
    return matmul_acc(x, step.a_zp, step.b.T if step.trans_b else step.b, step.b_zp, step.bias,
                      pair_saturation=step.mac.pair_saturation)


def bench_models(repeats):
    """Per model at batch 32, 1 thread: ms of all MAC layers today, and with the simd prototype on
    the layers it covers (the others, e.g. depthwise, unchanged); every covered layer checked equal."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import runtime  # noqa: F401  (the loader)
    from runtime_vs_ort import SHUFFLENET, mac_layers, with_batch

    from tests.onnx_models import quantize_with_ort, tiny_cnn

    host = load_target("ort-cpu")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rng = np.random.default_rng(0)
        models = [("tiny-cnn-32ch-16px", Path(quantize_with_ort(
            tiny_cnn(channels=32, size=16), rng.uniform(-1, 1, (32, 1, 16, 16)).astype(np.float32), d / "tiny.onnx",
            "qdq", True)), {"x": np.random.default_rng(32).uniform(-1, 1, (32, 1, 16, 16)).astype(np.float32)})]
        if SHUFFLENET.exists():
            models.append(("shufflenet-v2-12-int8", with_batch(SHUFFLENET, 32, d / "shuffle32.onnx"),
                           {"input": np.random.default_rng(32).normal(0, 20, (32, 3, 224, 224)).astype(np.float32)}))
        for name, path, feeds in models:
            prog = runtime.load(path, host)
            layers = mac_layers(prog, feeds)
            cur_total = new_total = cur_covered = gemm_total = 0.0
            covered = equal = 0
            for step, x in layers:
                t_cur = best_of(lambda: current_layer(step, x), repeats)
                cur_total += t_cur
                if not SimdLayer.applies(step, x):
                    new_total += t_cur
                    continue
                layer = SimdLayer(step)
                covered += 1
                equal += bool(np.array_equal(layer(x), current_layer(step, x)))
                new_total += best_of(lambda: layer(x), repeats)
                a = layer.operand(x)[0]
                gemm_total += best_of(lambda: layer.gemm_only(a), repeats)
                cur_covered += t_cur
            rows.append((name, len(layers), covered, equal, cur_total * 1e3, new_total * 1e3, cur_covered * 1e3,
                         gemm_total * 1e3))
    return rows


def compile_times():
    """(cold, warm) seconds for a fresh process to compile (empty Numba cache) or load (second run)
    every simd kernel specialization the runtime would use: pair u8 and exact u8/i8/i16 A."""
    code = ("import time,numpy as np;t=time.perf_counter()\n"
            "from runtime.kernels import simd\n"
            "t1=time.perf_counter();p=simd.pack_b(np.ones((24,27),np.int8))\n"
            "simd.gemm_u8s8(np.ones((9,27),np.uint8),p,True);simd.gemm_u8s8(np.ones((9,27),np.uint8),p)\n"
            "simd.gemm_exact(np.ones((9,27),np.int8),p);simd.gemm_exact(np.ones((9,27),np.int16),p)\n"
            "print(time.perf_counter()-t1)")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = []
        for _ in range(2):
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                                 cwd=REPO)
            runs.append(float(res.stdout.strip().splitlines()[-1]))
    return runs[0], runs[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-compile", action="store_true", help="skip the fresh-process compile timings")
    ap.add_argument("--models", action="store_true", help="also the MAC layers of the tiny CNN and ShuffleNet "
                    "(../shared/data) at batch 32: today's kernels vs a simd prototype of the wiring")
    args = ap.parse_args(argv)
    flags = cpu_flags()
    feats = [f for f in ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    print(f"CPU int8 features: {', '.join(feats) or 'none'}; simd.available() = {simd.available()}")
    if not simd.available():
        print("no AVX2: nothing to measure")
        return 0
    host_pair = bool(load_target("ort-cpu").arithmetic.accumulator.pair_saturation_bits)
    print(f"load average before: {os.getloadavg()}; host ort-cpu form: {'pair saturation' if host_pair else 'exact'}")
    numba.set_num_threads(1)
    results = {}
    with threadpool_limits(1):
        for name, m, k, n in SHAPES:
            results[name] = bench_shape(name, m, k, n, args.repeats, host_pair)
    labels = list(next(iter(results.values())))
    print("\nGMAC/s, 1 thread (ms in brackets; '!' = differs from its reference)")
    print(f"{'':22s}" + "".join(f"{name:>30s}" for name in results))
    for label in labels:
        cells = []
        for name in results:
            g, ms, ok = results[name][label]
            cells.append(f"{g:9.2f} ({ms:8.2f} ms){' ' if ok else '!'}")
        print(f"{label:22s}" + "".join(f"{c:>30s}" for c in cells))
    print("\nratios (simd / other):")
    for name, res in results.items():
        sp, se = res["simd pair"][0], res["simd exact"][0]
        print(f"  {name}: pair vs gemm_raw pair {sp / res['gemm_raw pair'][0]:.1f}x, exact vs gemm_raw exact "
              f"{se / res['gemm_raw exact'][0]:.1f}x, exact vs numpy einsum {se / res['numpy int64 einsum'][0]:.0f}x, "
              f"pair vs ORT {sp / res['ORT MatMulInteger'][0]:.2f}x")
    print(f"load average after: {os.getloadavg()}")
    if args.models:
        print("\nMAC layers of real models at batch 32, 1 thread (accumulators int32/int64 as today; the simd "
              "prototype: NHWC u8 im2col by numpy + gemm_u8s8 + zero-point terms + NCHW transpose)")
        print("  today: all MAC layers with runtime.kernels.mac; with simd: the covered layers by the prototype, "
              "the others as today;\n  covered today: those layers with runtime.kernels.mac; gemm: the "
              "gemm_u8s8 calls alone (the part a Numba im2col and the fused epilogue would not add to)")
        print(f"{'model':24s} {'layers':>6s} {'simd':>5s} {'equal':>5s} {'today ms':>9s} {'with simd ms':>12s} "
              f"{'covered today':>13s} {'gemm ms':>8s}")
        with threadpool_limits(1):
            for name, n_layers, covered, equal, cur, new, cov, gemm in bench_models(max(2, args.repeats // 2)):
                print(f"{name:24s} {n_layers:6d} {covered:5d} {equal:5d} {cur:9.1f} {new:12.1f} {cov:13.1f} "
                      f"{gemm:8.1f}")
        print(f"load average after: {os.getloadavg()}")
    if not args.no_compile:
        cold, warm = compile_times()
        print(f"\ncompile (fresh process, 4 specializations): cold {cold:.1f} s, from the Numba cache {warm:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
