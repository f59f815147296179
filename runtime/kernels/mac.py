"""Integer multiply-accumulate kernels: MatMul/Gemm and Conv accumulators, exact int64 results.

Contract (0 LSB against tests/reference_kernels.py)::

    acc[m, n] = bias[n] + sum_k (a[m, k] - za) * (b[k, n] - zb[n])

``pair_saturation`` reproduces ONNX Runtime's x86 AVX2 u8 x s8 kernels (``vpmaddubsw``): the RAW
products of each adjacent pair (k = 2j, 2j+1) along the reduction vector are summed and saturated to
int16, then accumulated exactly; an odd K pairs the last product with 0. Zero points are applied
after, by the exact expansion acc = S - za*sum_k b - zb*sum_k a + K*za*zb (runtime/ORT_CPU_ARITHMETIC.md).
Convolutions order their reduction index (kh, kw, c) with c fastest (``hwc``, NHWC im2col as
ONNX Runtime) or (c, kh, kw) (``chw``); padded taps hold the raw input zero point.
The accumulator policy (width, saturate/wrap/error) is applied to the exact final sum by
:func:`apply_accumulator`; per-partial-sum saturation is not modelled (a known limitation: it only
differs when a partial sum leaves the range and comes back).

How it is computed fast, and why it stays exact (every path equals the slow references bit for
bit; tests/runtime/test_mac_fastpaths.py forces each one):

- **Exact sums by BLAS.** With centred operands |a - za| <= A and |b - zb| <= B, every partial sum
  of any subset of the K products is an integer of magnitude <= K*A*B. Float32 holds every integer
  up to 2^24 and float64 every integer up to 2^53, so when K*A*B < 2^24 a float32 SGEMM is exact
  whatever its summation order, blocking or FMA use; otherwise K is cut into chunks with
  chunk*A*B < 2^24 whose exact float32 results are summed in float64 (exact below 2^53); without a
  useful chunk (wide operands) one float64 DGEMM is used when K*A*B < 2^53, and an int64 Numba
  loop beyond (:func:`_exact_dtype`). The float results are integers and convert exactly.
- **Convolutions** multiply the centred weights [M, (c, kh, kw)] by a centred im2col matrix
  [(c, kh, kw), (n, oy, ox)] built in the GEMM's type for a whole batch slice (one BLAS call per
  group and slice: many small multi-threaded BLAS calls stall when the cores are shared); padded
  taps hold the zero point, i.e. 0 once centred; for one image a 1x1 stride-1 unpadded conv is the
  input itself, centred. The order of the exact sum does not matter. One input channel per group
  (depthwise, any depth multiplier) runs a direct kernel instead: each plane is centred into a
  zero-padded plane in cache, split into stride^2 phases so that every tap is one long unit-stride
  loop over the flattened plane (vectorized whatever the image size).
- **Pair saturation** (raw operands in the target's reduction order: the input pixels of a 1x1
  conv, an explicit raw im2col otherwise) is S_pair = S_exact + sum_j (sat16(p_j) - p_j) with
  p_j[n] = a0*w0[n] + a1*w1[n]. A first pass flags the pairs that may saturate for some column n;
  then either only those are corrected (sparse, after the exact GEMM) or, when many are flagged,
  a dense kernel computes the whole pair-saturated sum with the zero-point expansion instead of the
  GEMM (:func:`_dense_is_cheaper`, a cost model). int32 arithmetic (the caller checks
  K*max|a|*max|w| < 2^30; wider operands take the int64 direct loop). The flag test is a proven
  upper bound of max_n p_j (and lower bound of min_n p_j): for a0, a1 >= 0 write s = a0 + a1 and
  theta = a1/s; max_n p_j = s*h(theta) with h the maximum of the lines (1-theta)*w0[n] +
  theta*w1[n], a convex function, so on the bucket theta in [b/4, (b+1)/4] it is at most
  max(h(b/4), h((b+1)/4)); 4*h(b/4) = max_n ((4-b)*w0[n] + b*w1[n]) is an integer table per pair
  (min_n p_j likewise with the concave minimum). With any signs the looser
  max(a0*hi0, a0*lo0) + max(a1*hi1, a1*lo1) (column extremes) is used. On ShuffleNet's real
  activations the bucket test flags 1.6 % of the pairs (0.8 % truly saturate), the column-extreme
  test 13 %.
- **Prepared weights and narrow accumulators.** :class:`ConvWeights` holds the weight side of a
  conv (centred weights, bounds, the GEMM/depthwise operands per exact-sum type, the pair tables);
  the integer program builds it once at plan time and :func:`conv_accumulate` reuses it on every
  call. When K*max|a-za|*max|w-zw| + max|bias| (+ the pair corrections' bound) < 2^31 the
  accumulators are stored as int32, halving the traffic of the requantization that reads them;
  :func:`conv_acc` returns them as int64.
- **Fused epilogue.** :func:`conv_requantize` hands each GEMM result (integer-valued floats) with
  its sparse pair corrections (added in the float result, exact below 2^24 in float32, else in a
  float64 copy) straight to the float32-lane epilogue of :mod:`runtime.kernels.epilogue`, which adds
  the bias and writes the output type; the int32 accumulators are never stored. It applies when the
  bound proves |acc| < 2^31 (no accumulator policy can act) and returns None otherwise.
- **AVX2 integer GEMM** (:mod:`runtime.kernels.simd`, only when ``simd.available()``): on operands
  prepared at plan time (:meth:`ConvWeights.prepare` packs the raw weights [M, (kh, kw, c)];
  :func:`matmul_acc` takes a packed constant B) a group-1 conv with several input channels or a
  MatMul on u8 (or s8) raw values computes the raw sums S in int32 directly -- ``vpmaddubsw`` is
  ONNX Runtime's pair saturation itself, and exact whenever no pair can leave int16 --, over a raw
  NHWC im2col (:func:`_rows_nhwc`, zx at padded taps, pairs in ``hwc`` order), and adds the zero
  points by the expansion acc = S + (bias - zx*sum w + K*zx*zw) - zw*R, R the im2col's row sums (a
  ones row of the packed weights when some zw is not 0). The kernels prove K*max|a|*max|w| < 2^31;
  the fused epilogue adds the constant in wrapping int32 (exact: the final sum lies in int32), the
  general path in int64. Depthwise and grouped convs, other reduction orders with pair saturation,
  wider operands and one-shot calls (:func:`conv_acc`, :func:`gemm_raw`, unprepared weights) take
  the paths above: the flag/correction passes and BLAS are not needed on this path.
- Numba details that matter for speed: int32 (not Numba's default int64) arithmetic in the pair
  kernels, loops counting from 0 and unsigned computed indices (a signed computed index costs a
  negative-index test per element and blocks vectorization).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from ..errors import HwsimError, OverflowPolicyError
from ..numba_config import jit
from . import simd
from .epilogue import Float32Epilogue, requantize_gemm, requantize_int32

F32_EXACT = 1 << 24  # every integer of magnitude <= 2^24 is a float32
F64_EXACT = 1 << 53  # ... <= 2^53 a float64
INT32_SAFE = 1 << 30  # pair corrections compute in int32 when K*max|a|*max|w| < 2^30 (and 8*max|a|*max|w| < 2^31)
MIN_F32_CHUNK = 64  # narrower float32 chunks lose to one float64 GEMM
I16_MAX = 32767
BUCKETS = 4  # theta buckets of the pair flag test (the kernel _pair_flags is written for 4)
BLOCK = 256  # pixels per parallel work item of the pair flag test
APPLY_BLOCK = 64  # pixels per work item of the pair corrections (a multiple of 8)
LANES = 32  # output columns of the pair corrections are padded to a multiple of this
DENSE_BLOCK = 256  # pixels per work item of the dense pair kernel
# cost model of sparse correction vs dense pair kernel (ns, measured on the 2-core AVX2 host)
GEMM_NS_PER_PAIR = 0.07
DENSE_NS_PER_PAIR = 0.2
SPARSE_NS_PAIR = 20.0
SPARSE_NS_LANE = 0.32
DEPTHWISE_ITEMS = 64  # parallel work items of the depthwise kernel (each reuses its plane buffers)
COLS_BUDGET_BYTES = 64 << 20  # im2col matrix size per batch slice


# ---------------------------------------------------------------------------------------------
# private kernels
# ---------------------------------------------------------------------------------------------
@jit(parallel=True)
def _gemm_raw(a, bt, pair, out):
    """out[m, n] = sum_k a[m, k] * bt[n, k] (int64), optionally with int16 pair saturation.

    The direct loop: the fallback for operands too wide for the float and int32 paths."""
    m_dim, k_dim = a.shape
    n_dim = bt.shape[0]
    kp = k_dim - (k_dim % 2)
    for m in prange(m_dim):
        for n in range(n_dim):
            s = np.int64(0)
            if pair:
                for k in range(0, kp, 2):
                    p = np.int64(a[m, k]) * bt[n, k] + np.int64(a[m, k + 1]) * bt[n, k + 1]
                    if p > 32767:
                        p = 32767
                    elif p < -32768:
                        p = -32768
                    s += p
                if kp < k_dim:
                    p = np.int64(a[m, kp]) * bt[n, kp]
                    if p > 32767:
                        p = 32767
                    elif p < -32768:
                        p = -32768
                    s += p
            else:
                for k in range(k_dim):
                    s += np.int64(a[m, k]) * np.int64(bt[n, k])
            out[m, n] = s


@jit
def _pair_bounds(w0, w1, hi0, lo0, hi1, lo1, thr):
    """Per pair (g, j): column extremes of w0/w1 and the bucket thresholds thr[g, j, b] of the
    non-negative flag test (module docstring): with U = max and L = min over the bucket ends e in
    {b, b+1} of max_n / min_n ((4-e)*w0[n] + e*w1[n]), s*U > 4*32767 or s*L < -4*32768 (s >= 0) is
    s > thr = min(floor(4*32767 / U) if U > 0, floor(4*32768 / -L) if L < 0) (2^30 when neither)."""
    n_g, n_pairs, n_out = w0.shape
    for gj in range(n_g * n_pairs):
        g = gj // n_pairs
        j = gj % n_pairs
        h = np.full(BUCKETS + 1, -(1 << 30), np.int64)
        l = np.full(BUCKETS + 1, 1 << 30, np.int64)
        a_hi = np.int32(-(1 << 30))
        a_lo = np.int32(1 << 30)
        b_hi = np.int32(-(1 << 30))
        b_lo = np.int32(1 << 30)
        for n in range(n_out):
            u = w0[g, j, n]
            v = w1[g, j, n]
            a_hi = max(a_hi, u)
            a_lo = min(a_lo, u)
            b_hi = max(b_hi, v)
            b_lo = min(b_lo, v)
            for e in range(BUCKETS + 1):
                t = (BUCKETS - e) * np.int64(u) + e * np.int64(v)
                h[e] = max(h[e], t)
                l[e] = min(l[e], t)
        hi0[g, j] = a_hi
        lo0[g, j] = a_lo
        hi1[g, j] = b_hi
        lo1[g, j] = b_lo
        for b in range(BUCKETS):
            t = 1 << 30
            up = max(h[b], h[b + 1])
            dn = min(l[b], l[b + 1])
            if up > 0:
                t = min(t, (BUCKETS * 32767) // up)
            if dn < 0:
                t = min(t, (BUCKETS * 32768) // -dn)
            thr[g, j, b] = t


@jit(parallel=True)
def _pair_flags(a, k_dim, nonneg, thr, hi0, lo0, hi1, lo1, flags):
    """Pass 1 of the pair correction: flags[n, g*J + j, p] = 1 when pair j of group g at pixel p may
    saturate for some output column (bucket test when ``nonneg``, column-extreme test otherwise).
    a [N, G*K, P] holds the raw reduction vectors in pair order (row g*K + k). int32 arithmetic
    (caller's bound), so that it vectorizes."""
    n_dim, _, n_pix = a.shape
    n_g, n_pairs, _ = thr.shape
    n_blocks = (n_pix + BLOCK - 1) // BLOCK
    zero = np.int32(0)
    for item in prange(n_dim * n_g * n_blocks):
        n = item // (n_g * n_blocks)
        g = (item // n_blocks) % n_g
        p0 = (item % n_blocks) * BLOCK
        p1 = min(n_pix, p0 + BLOCK)
        for j in range(n_pairs):
            r0 = g * k_dim + 2 * j
            fl = flags[n, g * n_pairs + j]
            src0 = a[n, r0]
            src1 = a[n, r0 + 1] if 2 * j + 1 < k_dim else a[n, r0]  # unused row when K is odd
            w1 = np.int32(1) if 2 * j + 1 < k_dim else zero
            if nonneg:
                _flag_bucket(src0[p0:p1], src1[p0:p1], w1, thr[g, j], fl[p0:p1])
            else:
                _flag_extremes(src0[p0:p1], src1[p0:p1], w1, hi0[g, j], lo0[g, j], hi1[g, j], lo1[g, j],
                               fl[p0:p1])


@jit
def _flag_bucket(src0, src1, w1, thr, fl):
    """Bucket flag test over a block of pixels of one pair (see :func:`_pair_flags`); int32 and a
    loop from 0 (not range(p0, p1)) so that LLVM vectorizes it; w1 = 0 drops the second operand (odd K)."""
    t0, t1, t2, t3 = thr[0], thr[1], thr[2], thr[3]
    two = np.int32(2)
    for p in range(src0.shape[0]):
        x0 = np.int32(src0[p])
        x1 = np.int32(np.int32(src1[p]) * w1)
        s = np.int32(x0 + x1)
        s2 = np.int32(s + s)
        s3 = np.int32(s2 + s)
        t = np.int32(x1 << two)
        th = t0
        th = t1 if t >= s else th
        th = t2 if t >= s2 else th
        th = t3 if t >= s3 else th
        fl[p] = np.uint8(s > th)


@jit
def _flag_extremes(src0, src1, w1, h0, m0, h1, m1, fl):
    """Column-extreme flag test (any signs) over a block of pixels of one pair, int32."""
    hi16 = np.int32(32767)
    lo16 = np.int32(-32768)
    for p in range(src0.shape[0]):
        x0 = np.int32(src0[p])
        x1 = np.int32(np.int32(src1[p]) * w1)
        u0 = np.int32(x0 * h0)
        v0 = np.int32(x0 * m0)
        u1 = np.int32(x1 * h1)
        v1 = np.int32(x1 * m1)
        up = np.int32(max(u0, v0) + max(u1, v1))
        dn = np.int32(min(u0, v0) + min(u1, v1))
        fl[p] = np.uint8(up > hi16) | np.uint8(dn < lo16)


@jit(parallel=True)
def _pair_apply(a, k_dim, flags, flags64, w0, w1, mg, out):
    """Pass 2: out[n, g*mg + m, p] += sum over flagged pairs j of sat16(q) - q,
    q = a0*w0[g, j, m] + a1*w1[g, j, m] (raw values; int32 arithmetic, caller's bound; w0/w1 may be
    zero-padded beyond mg columns, whose corrections are 0 and dropped). flags64 is
    flags viewed as uint64 (rows padded to a multiple of 8 pixels with zeros), so that a block of
    pixels skips 8 unflagged pixels per test; corrections accumulate per block, then are added."""
    n_dim, _, n_pix = a.shape
    n_g, n_pairs, lanes = w0.shape
    n_words = flags64.shape[2]
    words = APPLY_BLOCK // 8
    n_blocks = (n_words + words - 1) // words
    hi16 = np.int32(32767)
    lo16 = np.int32(-32768)
    for item in prange(n_dim * n_g * n_blocks):
        n = item // (n_g * n_blocks)
        g = (item // n_blocks) % n_g
        q0 = (item % n_blocks) * words
        q1 = min(n_words, q0 + words)
        p0 = q0 * 8
        corr = np.empty((APPLY_BLOCK, lanes), np.int32)
        hit = np.zeros(APPLY_BLOCK, np.uint8)
        for j in range(n_pairs):
            row = g * n_pairs + j
            r0 = g * k_dim + 2 * j
            for word in range(q0, q1):
                if flags64[n, row, word] == 0:
                    continue
                for p in range(word * 8, min(word * 8 + 8, n_pix)):
                    if not flags[n, row, p]:
                        continue
                    x0 = np.int32(a[n, r0, p])
                    x1 = np.int32(a[n, r0 + 1, p]) if 2 * j + 1 < k_dim else np.int32(0)
                    if not hit[p - p0]:
                        corr[p - p0] = 0
                        hit[p - p0] = 1
                    cr = corr[p - p0]
                    wa = w0[g, j]
                    wb = w1[g, j]
                    for m in range(lanes):
                        v = np.int32(x0 * wa[m] + x1 * wb[m])
                        cr[m] = np.int32(cr[m] + np.int32(min(max(v, lo16), hi16) - v))
        for i in range(min(n_pix, q1 * 8) - p0):
            if hit[i]:  # most corrections are 0 (the pair saturates for few columns): add the others
                cr = corr[i]
                for m0 in range(0, mg, 16):
                    m1 = min(mg, m0 + 16)
                    any_set = np.int32(0)
                    for m in range(m0, m1):
                        any_set |= cr[m]
                    if any_set:
                        for m in range(m0, m1):
                            if cr[m] != 0:
                                out[n, g * mg + m, p0 + i] += cr[m]


@jit(parallel=True)
def _pair_dense(a, k_dim, w0, w1, zb, const, out):
    """The pair-saturated sums computed densely (when too many pairs are flagged for the sparse
    correction to pay): out[n, g*mg + m, p] = const[g*mg + m] - zb[g*mg + m]*sum_k a[n, g*K + k, p]
    + sum_j sat16(a0*w0[g, j, m] + a1*w1[g, j, m]) on the raw operands (the zero-point expansion;
    const carries bias - za*sum_k w + K*za*zb). int32 sums (caller's bound), vectorized over pixels."""
    n_dim, _, n_pix = a.shape
    n_g, n_pairs, mg = w0.shape
    n_blocks = (n_pix + DENSE_BLOCK - 1) // DENSE_BLOCK
    for item in prange(n_dim * n_g * n_blocks):
        n = item // (n_g * n_blocks)
        g = (item // n_blocks) % n_g
        p0 = (item % n_blocks) * DENSE_BLOCK
        p1 = min(n_pix, p0 + DENSE_BLOCK)
        acc = np.zeros((mg, p1 - p0), np.int32)
        asum = np.zeros(p1 - p0, np.int32)
        for j in range(n_pairs):
            r0 = g * k_dim + 2 * j
            x0 = a[n, r0, p0:p1]
            _row_add(x0, asum)
            x1 = x0  # odd K: the last product pairs with 0 (its w1 row is 0)
            if 2 * j + 1 < k_dim:
                x1 = a[n, r0 + 1, p0:p1]
                _row_add(x1, asum)
            _dense_pairs(x0, x1, w0[g, j], w1[g, j], acc)
        for m in range(mg):
            c = const[g * mg + m]
            z = zb[g * mg + m]
            dst = out[n, g * mg + m, p0:p1]
            src = acc[m]
            if z == 0:
                for i in range(p1 - p0):
                    dst[i] = np.int64(src[i]) + c
            else:
                for i in range(p1 - p0):
                    dst[i] = np.int64(src[i]) + c - z * np.int64(asum[i])


@jit
def _row_add(x, asum):
    """asum += x (int32)."""
    for i in range(x.shape[0]):
        asum[i] = np.int32(asum[i] + np.int32(x[i]))


@jit
def _dense_pairs(x0, x1, wa, wb, acc):
    """acc[m, i] += sat16(x0[i]*wa[m] + x1[i]*wb[m]) (int32; vectorized over pixels i)."""
    hi16 = np.int32(32767)
    lo16 = np.int32(-32768)
    for m in range(acc.shape[0]):
        u = np.int32(wa[m])
        v = np.int32(wb[m])
        row = acc[m]
        for i in range(x0.shape[0]):
            q = np.int32(np.int32(x0[i]) * u + np.int32(x1[i]) * v)
            row[i] = np.int32(row[i] + min(max(q, lo16), hi16))


@jit(parallel=True)
def _im2col_centered(x, zx, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow, c0, cg, out):
    """out[(c*kh + i)*kw + j, n*oh*ow + y*ow + xx] = x[n, c0 + c, iy, ix] - zx, 0 at padded taps: one
    GEMM operand for the whole batch slice (one BLAS call, not one per image); out's dtype (float32,
    float64 or int64) is the GEMM's."""
    n_dim, _, h, w = x.shape
    taps = kh * kw
    rows = cg * taps
    plane = taps == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0 and oh == h and ow == w
    for nr in prange(n_dim * rows):
        n = nr // rows
        row = nr % rows
        c = row // taps
        i = (row // kw) % kh
        j = row % kw
        dst = out[row]
        if plane:  # a 1x1 stride-1 unpadded conv: the whole plane is one contiguous run
            src = x[n, c0 + c].reshape(-1)
            base = np.uint64(n * oh * ow)
            for t in range(h * w):
                dst[base + np.uint64(t)] = src[t] - zx
            continue
        off = j * dw - pw
        x_lo = min(ow, max(0, (sw - 1 - off) // sw))  # first xx with xx*sw + off >= 0
        x_hi = max(x_lo, min(ow, (w - 1 - off) // sw + 1))  # one past the last with xx*sw + off < w
        for y in range(oh):
            base = (n * oh + y) * ow
            iy = y * sh - ph + i * dh
            if iy < 0 or iy >= h:
                for t in range(ow):
                    dst[base + t] = 0
                continue
            src = x[n, c0 + c, iy]
            for t in range(x_lo):
                dst[base + t] = 0
            d0 = np.uint64(base + x_lo)  # unsigned offsets: no negative-index wraparound test per element
            s0 = np.uint64(x_lo * sw + off)
            step = np.uint64(sw)
            for t in range(np.uint64(x_hi - x_lo)):
                dst[d0 + t] = src[s0 + t * step] - zx
            for t in range(ow - x_hi):
                dst[base + x_hi + t] = 0


@jit(parallel=True)
def _im2col_raw(x, zx, kc, ki, kj, cg, sh, sw, dh, dw, ph, pw, oh, ow, out):
    """out[n, g*K + k, y*ow + xx] = x[n, g*cg + kc[k], iy, ix] with the tap (ki[k], kj[k]); the raw
    zero point zx at padded taps (the pair-correction operand, in the target's reduction order)."""
    n_dim, _, h, w = x.shape
    k_dim = kc.shape[0]
    rows = out.shape[1]
    for nr in prange(n_dim * rows):
        n = nr // rows
        row = nr % rows
        g = row // k_dim
        k = row % k_dim
        c = g * cg + kc[k]
        off = kj[k] * dw - pw
        x_lo = min(ow, max(0, (sw - 1 - off) // sw))
        x_hi = max(x_lo, min(ow, (w - 1 - off) // sw + 1))
        dst = out[n, row]
        for y in range(oh):
            base = y * ow
            iy = y * sh - ph + ki[k] * dh
            if iy < 0 or iy >= h:
                for t in range(ow):
                    dst[base + t] = zx
                continue
            src = x[n, c, iy]
            for t in range(x_lo):
                dst[base + t] = zx
            d0 = np.uint64(base + x_lo)
            s0 = np.uint64(x_lo * sw + off)
            step = np.uint64(sw)
            for t in range(np.uint64(x_hi - x_lo)):
                dst[d0 + t] = src[s0 + t * step]
            for t in range(ow - x_hi):
                dst[base + x_hi + t] = zx


@jit(parallel=True)
def _store_acc(res, m0, bias, narrow, out):
    """out[n, m0 + m, p] = res[m, n*P + p] + bias[m0 + m] as int64, res being the integer-valued GEMM
    result (float32/float64/int64) over a batch slice; ``narrow`` (every |value| < 2^31) converts
    through int32, which AVX2 vectorizes (it has no float -> int64 conversion)."""
    mg = res.shape[0]
    n_dim, _, n_pix = out.shape
    for nm in prange(n_dim * mg):
        n = nm // mg
        m = nm % mg
        b = bias[m0 + m]
        src = res[m, n * n_pix:(n + 1) * n_pix]
        dst = out[n, m0 + m]
        if narrow:
            for p in range(n_pix):
                dst[p] = np.int64(np.int32(src[p])) + b
        else:
            for p in range(n_pix):
                dst[p] = np.int64(src[p]) + b


@jit(parallel=True)
def _depthwise(x, zx, narrow, ph, pw, hp, wp, wc, mult, sh, sw, dh, dw, bias, n_items, out):
    """Direct conv with one input channel per group: out[n, c, y, x] = bias[c] +
    sum_ij (x[n, c // mult, y*sh + i*dh - ph, x*sw + j*dw - pw] - zx) * wc[c, i, j], padded taps 0.

    Each input plane is centred into a zero-padded Hp x Wp plane held in cache (wc's dtype;
    ``narrow``: |x - zx| < 2^31, subtracted in int32 so that it vectorizes). With equal strides s the
    padded plane is split into s*s phases (row % s, column % s) of Hq x Wq = ceil(Hp/s) x ceil(Wp/s),
    so that every tap reads one phase with unit stride, and each phase is treated as flat: output
    q = y*Wq + x reads q + off_ij, one long loop per tap that vectorizes whatever the image size
    (the columns x >= OW of the Wq-pitched grid are computed and dropped). Unequal strides take a
    row-by-row loop. Planes are shared out in ``n_items`` work items that reuse their buffers (the
    padding stays 0, the interior is rewritten). The caller proves the arithmetic exact in wc's
    dtype; out is NCHW int64."""
    n_dim, _, h, w = x.shape
    c_out, kh, kw = wc.shape
    _, _, oh, ow = out.shape
    flat = sh == sw
    s = sh if flat else 1
    hq = (hp + s - 1) // s
    wq = (wp + s - 1) // s
    span = (oh - 1) * wq + ow if flat else ow
    step = np.uint64(1 if flat else sw)
    total = n_dim * c_out
    for item in prange(n_items):
        plane = np.zeros(s * s * hq * wq, wc.dtype)
        acc = np.empty(span, wc.dtype)
        for nc in range(item * total // n_items, (item + 1) * total // n_items):
            n = nc // c_out
            c = nc % c_out
            _fill_phases(x[n, c // mult], zx, narrow, ph, pw, s, hq, wq, plane)
            for y in range(1 if flat else oh):
                first = True
                for i in range(kh):
                    for j in range(kw):
                        wv = wc[c, i, j]
                        if flat:
                            ri, cj = i * dh, j * dw
                            off = np.uint64(((ri % s) * s + cj % s) * hq * wq + (ri // s) * wq + cj // s)
                        else:
                            off = np.uint64((y * sh + i * dh) * wp + j * dw)
                        if first:
                            for q in range(np.uint64(span)):
                                acc[q] = plane[step * q + off] * wv
                            first = False
                        else:
                            for q in range(np.uint64(span)):
                                acc[q] += plane[step * q + off] * wv
                dst = out[n, c]
                b = bias[c]
                if flat:
                    for yy in range(oh):
                        base = np.uint64(yy * wq)
                        for t in range(ow):
                            dst[yy, t] = np.int64(acc[base + np.uint64(t)]) + b
                else:
                    for t in range(ow):
                        dst[y, t] = np.int64(acc[t]) + b


@jit
def _fill_phases(src2d, zx, narrow, ph, pw, s, hq, wq, plane):
    """The plane src2d [H, W] placed at padded row ph, column pw of a plane split into s*s phases:
    plane[phase(r % s, pc % s), r // s, pc // s] = src2d[r - ph, pc - pw] - zx (stride 2 reads each
    row in pairs, an interleaved access LLVM vectorizes; ``narrow``: subtract in int32)."""
    h, w = src2d.shape
    zx32 = np.int32(zx) if narrow else np.int32(0)
    for iy in range(h):
        src = src2d[iy]
        r = iy + ph
        row0 = (r % s) * s
        if s == 2:
            b0 = np.uint64((row0 + pw % 2) * hq * wq + (r // 2) * wq + pw // 2)  # even input columns
            b1 = np.uint64((row0 + (pw + 1) % 2) * hq * wq + (r // 2) * wq + (pw + 1) // 2)  # odd ones
            two = np.uint64(2)
            one = np.uint64(1)
            if narrow:
                for u in range(np.uint64(w // 2)):
                    plane[b0 + u] = np.int32(np.int32(src[two * u]) - zx32)
                    plane[b1 + u] = np.int32(np.int32(src[two * u + one]) - zx32)
            else:
                for u in range(np.uint64(w // 2)):
                    plane[b0 + u] = src[two * u] - zx
                    plane[b1 + u] = src[two * u + one] - zx
            if w % 2:
                plane[b0 + np.uint64(w // 2)] = src[w - 1] - zx
            continue
        for rx in range(s):  # the columns of one phase: padded column pc = rx + s*t
            t0 = (pw - rx + s - 1) // s  # first t with pc >= pw
            t1 = (pw + w - rx + s - 1) // s  # one past the last with pc < pw + w
            dst0 = np.uint64((row0 + rx) * hq * wq + (r // s) * wq + t0)
            src0 = np.uint64(rx + s * t0 - pw)  # input column of t0 (unsigned: no wraparound test)
            sstep = np.uint64(s)
            if narrow:
                for u in range(np.uint64(max(0, t1 - t0))):
                    plane[dst0 + u] = np.int32(np.int32(src[src0 + sstep * u]) - zx32)
            else:
                for u in range(np.uint64(max(0, t1 - t0))):
                    plane[dst0 + u] = src[src0 + sstep * u] - zx


@jit(parallel=True)
def _center(src, zx, out):
    """out[i] = src[i] - zx (integer subtraction, then conversion to out's dtype)."""
    for i in prange(src.shape[0]):
        out[i] = src[i] - zx


@jit(parallel=True)
def _center_cols(src, zp, narrow, out):
    """out[r, c] = src[r, c] - zp[c] (zp of length 1: one zero point), in out's dtype; ``narrow``
    (every |src - zp| < 2^31) subtracts in int32, which vectorizes with the float conversion."""
    n_r, n_c = src.shape
    zpc = np.empty(n_c, np.int64)
    zpc[:] = zp[0]
    if zp.shape[0] > 1:
        zpc[:] = zp
    zp32 = zpc.astype(np.int32) if narrow else np.zeros(n_c, np.int32)
    for r in prange(n_r):
        s_row = src[r]
        o_row = out[r]
        if narrow:
            for c in range(n_c):
                o_row[c] = np.int32(np.int32(s_row[c]) - zp32[c])
        else:
            for c in range(n_c):
                o_row[c] = s_row[c] - zpc[c]


@jit(parallel=True)
def _rows_nhwc(x, zx, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow, k_dim, out):
    """The raw NHWC im2col of an NCHW input, read in place (out flat, K = kh*kw*C):
    out[((n*oh + y)*ow + xx)*K + (i*kw + j)*C + c] = x[n, c, y*sh - ph + i*dh, xx*sw - pw + j*dw], the
    raw zero point zx (x's dtype) at padded taps. Rows are pixels, the reduction index (kh, kw, c) with
    c fastest (ONNX Runtime's order, ``hwc``): the left operand of :mod:`runtime.kernels.simd`. For a
    1x1 stride-1 kernel it is the transpose [N*H*W, C]. One work item per output row. With 8 or more
    channels each pixel's channels are gathered (reads H*W apart, contiguous writes: 6x faster than
    scattering on a 116-channel layer); with fewer each channel's row is copied into its strided
    places (the first conv's 3 channels: 1.4x faster than gathering). Unsigned indices (no
    negative-index test per element)."""
    n_dim, c_dim, h, w = x.shape
    hw = h * w
    xf = x.reshape(-1)
    kk = np.uint64(k_dim)
    for ny in prange(n_dim * oh):
        n = ny // oh
        y = ny % oh
        row0 = np.uint64(ny * ow) * kk
        for i in range(kh):
            iy = y * sh - ph + i * dh
            for j in range(kw):
                off = j * dw - pw
                x_lo = min(ow, max(0, (sw - 1 - off) // sw))  # first xx with xx*sw + off >= 0
                x_hi = max(x_lo, min(ow, (w - 1 - off) // sw + 1))  # one past the last with xx*sw + off < w
                if iy < 0 or iy >= h:
                    x_lo = x_hi = ow
                col0 = np.uint64((i * kw + j) * c_dim)
                for xx in range(x_lo):
                    for c in range(c_dim):
                        out[row0 + np.uint64(xx) * kk + col0 + np.uint64(c)] = zx
                for xx in range(x_hi, ow):
                    for c in range(c_dim):
                        out[row0 + np.uint64(xx) * kk + col0 + np.uint64(c)] = zx
                if x_hi <= x_lo:
                    continue
                if c_dim >= 8:
                    for xx in range(x_lo, x_hi):
                        d0 = row0 + np.uint64(xx) * kk + col0
                        s0 = np.uint64(n * c_dim * hw + iy * w + xx * sw + off)
                        for c in range(np.uint64(c_dim)):
                            out[d0 + c] = xf[s0 + c * np.uint64(hw)]
                    continue
                s0 = np.uint64(x_lo * sw + off)
                step = np.uint64(sw)
                for c in range(c_dim):
                    src = x[n, c, iy]
                    d0 = row0 + np.uint64(x_lo) * kk + col0 + np.uint64(c)
                    for t in range(np.uint64(x_hi - x_lo)):
                        out[d0 + t * kk] = src[s0 + t * step]


@jit(parallel=True)
def _store_expanded(res, const, zw, out3):
    """out3[n, m, p] = res[m, n*P + p] + const[m] - zw[m] * res[M, n*P + p] in int64, then out3's type
    (the caller's bound), res [M (+1), N*P] int32 being the raw sums of :mod:`runtime.kernels.simd`
    (row M: the row sums of A, present when zw is not all 0)."""
    n_dim, m_dim, n_pix = out3.shape
    rs = res.shape[0] > m_dim
    for nm in prange(n_dim * m_dim):
        n = nm // m_dim
        m = nm % m_dim
        c = const[m]
        z = zw[m]
        src = res[m, n * n_pix:(n + 1) * n_pix]
        dst = out3[n, m]
        if rs and z != 0:
            asum = res[m_dim, n * n_pix:(n + 1) * n_pix]
            for p in range(n_pix):
                dst[p] = np.int64(src[p]) + c - z * np.int64(asum[p])
        else:
            for p in range(n_pix):
                dst[p] = np.int64(src[p]) + c


@jit(parallel=True)
def _sub_row_sums(res, zw):
    """res[m, q] -= zw[m] * res[M, q] for m < M = len(zw), in two's-complement int32 (wrapping: the
    caller adds the rest of the sum in int32 too and proves the final value within int32, so every
    wrap cancels)."""
    m_dim = zw.shape[0]
    n_q = res.shape[1]
    asum = res[m_dim]
    for m in prange(m_dim):
        z = np.int32(zw[m])
        if z == 0:
            continue
        row = res[m]
        for q in range(n_q):
            row[q] = np.int32(row[q] - z * asum[q])


@jit(parallel=True)
def _count_outside(acc, lo, hi):
    """Number of elements of the flat int64 array outside [lo, hi]."""
    total = 0
    for i in prange(acc.shape[0]):
        v = acc[i]
        if v < lo or v > hi:
            total += 1
    return total


# ---------------------------------------------------------------------------------------------
# exact sums
# ---------------------------------------------------------------------------------------------
def _exact_dtype(k: int, amax: int, bmax: int):
    """(dtype, chunk): the cheapest type in which every partial sum of a K-long integer dot product
    with |a| <= amax, |b| <= bmax is exact: float32 in K-chunks of ``chunk`` (chunk*amax*bmax <
    2^24), float64 (K*amax*bmax < 2^53) or int64 (chunk = K)."""
    per = max(1, int(amax) * int(bmax))
    chunk = (F32_EXACT - 1) // per
    if chunk >= k:
        return np.float32, k
    if chunk >= MIN_F32_CHUNK and k * per < F64_EXACT:
        return np.float32, chunk
    if k * per < F64_EXACT:
        return np.float64, k
    return np.int64, k


def _exact_matmul(a, b, chunk: int):
    """a [M, K] @ b [K, N] for integer-valued operands of one dtype whose every partial sum is exact
    in it within ``chunk``-long slices of K (see :func:`_exact_dtype`); integer-valued result."""
    k = a.shape[1]
    if a.dtype == np.int64:
        out = np.empty((a.shape[0], b.shape[1]), np.int64)
        _gemm_raw(np.ascontiguousarray(a), np.ascontiguousarray(b.T), False, out)
        return out
    if chunk >= k:
        return a @ b
    total = np.zeros((a.shape[0], b.shape[1]), np.float64)
    for k0 in range(0, k, chunk):
        total += a[:, k0:k0 + chunk] @ b[k0:k0 + chunk]
    return total


def _abs_max(x, zero_point=0) -> int:
    """max |x - zero_point| over the array (0 when empty)."""
    if x.size == 0:
        return 0
    return max(int(x.max()) - int(zero_point), int(zero_point) - int(x.min()), 0)


def _store(res, m0, bias, narrow, out3):
    _store_acc(res if res.flags.c_contiguous else np.ascontiguousarray(res), m0, bias, bool(narrow), out3)


# ---------------------------------------------------------------------------------------------
# pair-saturation corrections
# ---------------------------------------------------------------------------------------------
def _int32_safe(k: int, amax: int, wmax: int) -> bool:
    """The pair-correction kernels' int32 domain (sums, bucket products and corrections fit)."""
    per = max(1, amax) * max(1, wmax)
    return k * per < INT32_SAFE and 2 * BUCKETS * per < (1 << 31)


class _Pairs(NamedTuple):
    """Weight-side tables of the pair-saturation kernels for one conv/matmul (int32): the even and
    odd reduction rows [G, J, mg] (an odd K's last pair has a zero w1 row), the same zero-padded to
    whole vector widths, the flag-test bounds, and K, the columns per group, the operands' sign."""

    k: int
    mg: int
    nonneg: bool
    w0: np.ndarray
    w1: np.ndarray
    w0p: np.ndarray
    w1p: np.ndarray
    thr: np.ndarray
    hi0: np.ndarray
    lo0: np.ndarray
    hi1: np.ndarray
    lo1: np.ndarray


def _pair_tables(wk, nonneg: bool) -> _Pairs:
    """Tables for raw weights in reduction order wk [G, K, mg]."""
    n_g, k, mg = wk.shape
    j = (k + 1) // 2
    w0 = np.empty((n_g, j, mg), np.int32)
    w1 = np.zeros((n_g, j, mg), np.int32)
    w0[...] = wk[:, 0::2, :]
    w1[:, :k // 2, :] = wk[:, 1::2, :]
    hi0, lo0, hi1, lo1 = (np.empty((n_g, j), np.int32) for _ in range(4))
    thr = np.empty((n_g, j, BUCKETS), np.int32)
    _pair_bounds(w0, w1, hi0, lo0, hi1, lo1, thr)
    lanes = -(-mg // LANES) * LANES  # whole vector iterations: short columns would run scalar remainders
    w0p = np.zeros((n_g, j, lanes), np.int32)
    w1p = np.zeros((n_g, j, lanes), np.int32)
    w0p[..., :mg] = w0
    w1p[..., :mg] = w1
    return _Pairs(k, mg, bool(nonneg), w0, w1, w0p, w1p, thr, hi0, lo0, hi1, lo1)


def _pair_flag_pass(t: _Pairs, a3):
    """Pass 1 on the raw operand a3 [N, G*K, P] (int32, pair order): (flags, number flagged)."""
    n, _, n_pix = a3.shape
    n_g, j, _ = t.w0.shape
    flags = np.empty((n, n_g * j, -(-n_pix // 8) * 8), np.uint8)
    flags[..., n_pix:] = 0
    _pair_flags(a3, t.k, t.nonneg, t.thr, t.hi0, t.lo0, t.hi1, t.lo1, flags)
    return flags, int(np.count_nonzero(flags))


def _dense_is_cheaper(t: _Pairs, flagged: int, a3) -> bool:
    """Cost model (measured on this project's 2-core AVX2 host, ns): sparse = exact GEMM
    (GEMM_NS_PER_PAIR per pair and column) + per flagged pair SPARSE_NS_PAIR + SPARSE_NS_LANE per
    padded column; dense = DENSE_NS_PER_PAIR per pair and column."""
    n, _, n_pix = a3.shape
    pairs = n * t.w0.shape[0] * t.w0.shape[1] * n_pix
    sparse = pairs * t.mg * GEMM_NS_PER_PAIR + flagged * (SPARSE_NS_PAIR + SPARSE_NS_LANE * t.w0p.shape[2])
    return pairs * t.mg * DENSE_NS_PER_PAIR < sparse


def _pair_sparse(t: _Pairs, a3, flags, out3):
    """Pass 2: adds the corrections of the flagged pairs to out3 [N, M, P] (holding the exact sums)."""
    _pair_apply(a3, t.k, flags, flags.view(np.uint64), t.w0p, t.w1p, t.mg, out3)


def _pair_direct(t: _Pairs, a3, za: int, zb, bias, wk, out3):
    """The whole accumulator by the dense pair kernel: out3 = bias + pair-saturated raw sum
    - za*sum_k w - zb*sum_k a + K*za*zb (zb and bias per output column)."""
    wsum = wk.sum(axis=1, dtype=np.int64).reshape(-1)  # [G*mg]
    const = bias - np.int64(za) * wsum + np.int64(t.k) * np.int64(za) * zb
    _pair_dense(a3, t.k, t.w0, t.w1, np.ascontiguousarray(zb, np.int64), const, out3)


# ---------------------------------------------------------------------------------------------
# the AVX2 integer GEMM (runtime/kernels/simd.py)
# ---------------------------------------------------------------------------------------------
def _simd_mode(a_lo: int, a_hi: int, b_lo: int, b_hi: int, k: int, pair_saturation: bool):
    """(kernel, A dtype) for raw sums of A values in [a_lo, a_hi] by B values in [b_lo, b_hi] on
    :mod:`runtime.kernels.simd`, or None (the CPU has no AVX2, or the operands do not fit): "pair"
    (``vpmaddubsw``: u8 x s8, ONNX Runtime's pair saturation, or exact whenever no pair can leave
    int16: 2*max|a|*max|b| <= 32767, its faster kernel then) or "exact" (u8/s8 x int16-range B),
    with every int32 accumulator proven not to wrap (K*max|a|*max|b| < 2^31, max|a| from A's dtype)."""
    if not simd.available() or k == 0:
        return None
    if 0 <= a_lo and a_hi <= 255:
        a_dtype, amax = np.uint8, 255
    elif -128 <= a_lo and a_hi <= 127:
        a_dtype, amax = np.int8, 128
    else:
        return None
    bmax = max(-b_lo, b_hi, 0)
    can_saturate = 2 * max(-a_lo, a_hi, 0) * bmax > I16_MAX
    if a_dtype is np.uint8 and -128 <= b_lo and b_hi <= 127 and (pair_saturation or not can_saturate):
        return ("pair", a_dtype) if k * 255 * bmax < simd.INT32_LIMIT else None
    if pair_saturation and can_saturate:  # pair saturation of other operand types: not the kernel's
        return None
    if -32768 <= b_lo and b_hi <= 32767 and k * amax * bmax < simd.INT32_LIMIT:
        return "exact", a_dtype
    return None


def _simd_gemm(a, packed, kernel: str, transpose: bool = False):
    """The raw sums of A [rows, K] (uint8/int8) by the packed B, int32 (see :func:`_simd_mode`)."""
    if kernel == "pair":
        return simd.gemm_u8s8(a, packed, pair_saturation=True, transpose=transpose)
    return simd.gemm_exact(a, packed, transpose=transpose)


def _wrap32(v) -> np.ndarray:
    """Two's-complement int32 of int64 values (their residue mod 2^32)."""
    return np.asarray(v, np.int64).astype(np.uint32).view(np.int32)


def _conv_simd_mode(x_lo, x_hi, zx, cw: "ConvWeights", pair_saturation: bool, plan: bool = False):
    """:func:`_simd_mode` of a convolution (padded taps hold zx), or None: weights not prepared for it
    (:meth:`ConvWeights.prepare`, unless ``plan``), groups of one input channel (depthwise: a direct
    kernel) or several groups keep their paths, and so do pair-saturated sums in another reduction
    order than ``hwc`` (the NHWC im2col's)."""
    m, cg, kh, kw = cw.shape
    if not (plan or cw.simd) or cw.group != 1 or cg == 1:
        return None
    mode = _simd_mode(min(x_lo, zx), max(x_hi, zx), cw.wr_lo, cw.wr_hi, cg * kh * kw, pair_saturation)
    if mode is not None and mode[0] == "pair" and pair_saturation and cw.pair_order != "hwc" \
            and 2 * max(-x_lo, x_hi, abs(zx), 0) * cw.wrmax > I16_MAX:
        return None
    return mode


def _conv_simd_slices(x, zx, cw: "ConvWeights", geom, mode):
    """Per batch slice (n0, n1, res): res [M (+1), (n1-n0)*P] int32 = the raw sums of a group-1 conv
    (pair-saturated or exact, :func:`_simd_mode`) over the NHWC im2col (:func:`_rows_nhwc`), rows
    = output channels (the transposed GEMM result); row M (when some weight zero point is not 0)
    holds the row sums of the im2col (a ones column of B: 1 x u8 pairs never saturate)."""
    kernel, a_dtype = mode
    n, c, h, wd = x.shape
    m, cg, kh, kw = cw.shape
    sh, sw, dh, dw, ph, pw, oh, ow = geom
    k = cg * kh * kw
    n_pix = oh * ow
    xs_all = np.ascontiguousarray(x, dtype=a_dtype)
    packed = cw.simd_packed()
    for n0, n1 in _batch_slices(n, n_pix * (k + 4 * (m + 1))):
        rows = np.empty((n1 - n0) * n_pix * k, a_dtype)
        _rows_nhwc(xs_all[n0:n1], a_dtype(zx), kh, kw, sh, sw, dh, dw, ph, pw, oh, ow, k, rows)
        yield n0, n1, _simd_gemm(rows.reshape(-1, k), packed, kernel, transpose=True)


def _conv_simd_const(cw: "ConvWeights", zx: int, bias64) -> np.ndarray:
    """const[m] = bias[m] - zx*sum_k w[m, k] + K*zx*zw[m] (int64): with the raw sums S and the im2col
    row sums R, acc = S + const - zw*R (the zero-point expansion)."""
    m, cg, kh, kw = cw.shape
    k = cg * kh * kw
    return bias64 - np.int64(zx) * cw.raw_sums() + np.int64(k) * np.int64(zx) * cw.zw


# ---------------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------------
def _as_int(x, what):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise HwsimError(f"{what} must be an integer array, found {x.dtype}")
    return x


def gemm_raw(a2d: np.ndarray, bt2d: np.ndarray, pair_saturation: bool = False) -> np.ndarray:
    """[M, K] x [N, K]^T raw integer products summed exactly (int64) or with pair saturation.

    The exact sum runs in float32/float64 BLAS when the bound K * max|a| * max|b| proves it exact,
    the pair saturation as a sparse int32 correction (module docstring); operands too wide for
    either take the int64 direct loop. Every path gives the same integers.
    """
    a2d = _as_int(a2d, "A")
    bt2d = _as_int(bt2d, "B")
    return _matmul_2d(a2d, 0, bt2d.T, np.zeros(bt2d.shape[0], np.int64), pair_saturation)


def _matmul_2d(a, za, b, zb, pair, packed=None):
    """One [M, K] x [K, N] accumulator matrix (no bias), int64; zb has N entries; ``packed``: b.T
    prepared for :mod:`runtime.kernels.simd` (``simd.pack_b``): the AVX2 GEMM then runs whenever the
    operands fit it (:func:`_simd_mode`)."""
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0 or k == 0:
        return np.zeros((m, n), np.int64)
    if packed is not None and simd.available():
        mode = _simd_mode(int(a.min()), int(a.max()), packed.lo, packed.hi, k, pair)
        if mode is not None:  # raw sums, then acc = S - za*sum_k b - zb*sum_k a + K*za*zb
            a8 = np.ascontiguousarray(a, dtype=mode[1])
            out = _simd_gemm(a8, packed, mode[0]).astype(np.int64)
            if za:
                out -= np.int64(za) * b.sum(axis=0, dtype=np.int64)[None, :] - np.int64(k) * np.int64(za) * zb[None, :]
            if zb.any():
                out -= a8.sum(axis=1, dtype=np.int64)[:, None] * zb[None, :]
            return out
    if pair and not _int32_safe(k, _abs_max(a), _abs_max(b)):
        raw = np.empty((m, n), np.int64)
        a64 = np.ascontiguousarray(a, np.int64)
        bt64 = np.ascontiguousarray(b.T, np.int64)
        _gemm_raw(a64, bt64, True, raw)
        col = bt64.sum(axis=1)
        row = a64.sum(axis=1)
        return raw - np.int64(za) * col[None, :] - row[:, None] * zb[None, :] + np.int64(k) * np.int64(za) * zb[None, :]
    out = np.empty((m, n), np.int64)
    if pair:  # rows of A are the "pixels" of the pair kernels: a3 = A^T [1, K, M], out3 = out^T [1, N, M]
        a3 = np.ascontiguousarray(a.T, dtype=np.int32)[None]
        tables = _pair_tables(np.asarray(b)[None], int(a.min()) >= 0)
        flags, flagged = _pair_flag_pass(tables, a3)
        if _dense_is_cheaper(tables, flagged, a3):
            _pair_direct(tables, a3, za, zb, np.zeros(n, np.int64), np.asarray(b)[None], out.T[None])
            return out
    a_lo, a_hi = int(a.min()), int(a.max())
    amax = max(a_hi - za, za - a_lo, 0)
    bmax = max(0, int((b.max(axis=0) - zb).max()), int((zb - b.min(axis=0)).max()))
    dtype, chunk = _exact_dtype(k, amax, bmax)
    # canonical operand types (int32 / int64, contiguous) keep the kernels' specializations few
    a_int = np.ascontiguousarray(a, dtype=np.int32 if max(-a_lo, a_hi) < 1 << 31 else np.int64)
    b_int = np.ascontiguousarray(b, dtype=np.int64)
    ac = np.empty((m, k), dtype)
    _center_cols(a_int, np.full(1, za, np.int64), amax < 1 << 31, ac)
    bc = np.empty((k, n), dtype)
    _center_cols(b_int, np.ascontiguousarray(zb, np.int64), bmax < 1 << 31, bc)
    _store(_exact_matmul(ac, bc, chunk), 0, np.zeros(m, np.int64), k * max(1, amax * bmax) < (1 << 31), out[None])
    if pair and flagged:
        _pair_sparse(tables, a3, flags, out.T[None])
    return out


def matmul_acc(a, a_zero_point, b, b_zero_point, bias=None, pair_saturation=False, b_packed=None) -> np.ndarray:
    """ONNX MatMul(Integer) accumulators: bias[n] + sum_k (a - za)(b - zb[n]), numpy batch broadcasting.
    ``b_packed``: for a 2-D b, ``simd.pack_b(b.T)`` prepared once by the caller (used when the AVX2
    GEMM runs)."""
    a = _as_int(a, "A")
    b = _as_int(b, "B")
    if a.ndim < 1 or b.ndim < 1:
        raise HwsimError("MatMul inputs must have at least one dimension")
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise HwsimError(f"MatMul shapes {a.shape} and {b.shape} do not agree on K ({a2.shape[-1]} vs {b2.shape[-2]})")
    n = b2.shape[-1]
    zb = np.asarray(b_zero_point, np.int64).reshape(-1)
    if zb.size not in (1, n):
        raise HwsimError(f"B zero point has {zb.size} values, expected 1 or {n}")
    zb = np.ascontiguousarray(np.broadcast_to(zb, (n,)))
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    ab = np.broadcast_to(a2, batch + a2.shape[-2:])
    bb = np.broadcast_to(b2, batch + b2.shape[-2:])
    out = np.empty(batch + (a2.shape[-2], n), np.int64)
    za = int(a_zero_point)
    for idx in np.ndindex(*batch) if batch else [()]:
        out[idx] = _matmul_2d(ab[idx], za, bb[idx], zb, pair_saturation, b_packed if b.ndim == 2 else None)
    if bias is not None:
        out += np.asarray(bias, np.int64).reshape(-1)
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return out


def explicit_pads(auto_pad: str, input_hw, kernel, strides, dilations) -> tuple[int, ...]:
    """ONNX auto_pad rules -> explicit pads [begin..., end...]."""
    nd = len(kernel)
    if auto_pad in ("NOTSET", "VALID", "", None):
        return (0,) * (2 * nd)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise HwsimError(f"auto_pad must be NOTSET, VALID, SAME_UPPER or SAME_LOWER, found {auto_pad!r}")
    begins, ends = [], []
    for i in range(nd):
        out = -(-int(input_hw[i]) // int(strides[i]))
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - int(input_hw[i]))
        small, big = total // 2, total - total // 2
        b, e = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        begins.append(b)
        ends.append(e)
    return tuple(begins + ends)


def _reduction_order(cg: int, kh: int, kw: int, hwc: bool):
    """(kc, ki, kj): channel and tap of each reduction index k, (kh, kw, c) c fastest or (c, kh, kw)."""
    if hwc:
        ki, kj, kc = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(cg), indexing="ij")
    else:
        kc, ki, kj = np.meshgrid(np.arange(cg), np.arange(kh), np.arange(kw), indexing="ij")
    return kc.reshape(-1), ki.reshape(-1), kj.reshape(-1)


def _batch_slices(n: int, bytes_per_item: int):
    step = max(1, COLS_BUDGET_BYTES // max(1, bytes_per_item))
    return [(n0, min(n, n0 + step)) for n0 in range(0, n, step)]


def _is_pointwise(kh, kw, geom, h, wd) -> bool:
    """1x1 kernel without padding: the conv reads the (strided) input pixels as they are."""
    sh, sw, dh, dw, ph, pw, oh, ow = geom
    return kh == kw == 1 and ph == pw == 0 and oh == -(-h // sh) and ow == -(-wd // sw)


def _conv_exact_gemm(xi, zx, cw: "ConvWeights", geom, dtype, chunk, bias, narrow, out3, sink=None):
    """The exact centred sums of a conv by (implicit) im2col + GEMM into out3 [N, M, P] (+ bias), or,
    with ``sink``, each GEMM result handed over as ``sink(res [mg, n*P], m0, n0, n1)`` instead."""
    n, c, h, wd = xi.shape
    m, cg, kh, kw = cw.shape
    group = cw.group
    sh, sw, dh, dw, ph, pw, oh, ow = geom
    mg = m // group
    k = cg * kh * kw
    n_pix = oh * ow
    flat = group == 1 and _is_pointwise(kh, kw, geom, h, wd) and sh == sw == 1
    w2 = cw.gemm(dtype)
    for n0, n1 in _batch_slices(n, k * n_pix * np.dtype(dtype).itemsize):
        xs = xi[n0:n1]
        for g in range(group):
            cols = np.empty((k, (n1 - n0) * n_pix), dtype)
            if flat and n1 - n0 == 1:  # one image: x[n] is already [C, P], centre it
                _center(xs.reshape(-1), zx, cols.reshape(-1))
            else:
                _im2col_centered(xs, zx, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow, g * cg, cg, cols)
            res = _exact_matmul(w2[g * mg:(g + 1) * mg], cols, chunk)
            if sink is None:
                _store(res, g * mg, bias, narrow, out3[n0:n1])
            else:
                sink(np.ascontiguousarray(res), g * mg, n0, n1)


def _raw_operand(x, zx, group, kh, kw, geom, order):
    """The pair kernels' operand [N, G*K, P] (int32, raw values, the target's reduction order) from
    the int32 input x: x itself for a pointwise conv (its channels are the reduction), an explicit
    im2col else."""
    n, c, h, wd = x.shape
    sh, sw, dh, dw, ph, pw, oh, ow = geom
    if _is_pointwise(kh, kw, geom, h, wd):  # a view of x when x is int32 and the stride 1
        return np.ascontiguousarray(x[:, :, ::sh, ::sw], dtype=np.int32).reshape(n, c, oh * ow)
    kc, ki, kj = order
    a3 = np.empty((n, group * kc.size, oh * ow), np.int32)
    _im2col_raw(x, zx, kc, ki, kj, c // group, sh, sw, dh, dw, ph, pw, oh, ow, a3)
    return a3


def _conv_exact(xi, zx, cw: "ConvWeights", geom, dtype, chunk, bias, narrow, out3, sink=None):
    """The exact centred sums (+ bias) of a conv into out3 [N, M, P]: direct kernel for one input
    channel per group, (implicit) im2col + GEMM otherwise (``sink``: see :func:`_conv_exact_gemm`;
    the direct kernel ignores it and fills out3)."""
    n, c, h, wd = xi.shape
    m, cg, kh, kw = cw.shape
    sh, sw, dh, dw, ph, pw, oh, ow = geom
    if cg == 1:  # depthwise, any multiplier
        if chunk < kh * kw:  # the float32 chunking does not apply to a direct kernel
            dtype = np.float64 if dtype == np.float32 else dtype
        hp = max(h + ph, (oh - 1) * sh + (kh - 1) * dh + 1)  # the padded rows/columns actually read
        wp = max(wd + pw, (ow - 1) * sw + (kw - 1) * dw + 1)
        _depthwise(xi, zx, dtype == np.float32, ph, pw, hp, wp, cw.depthwise(dtype), m // cw.group, sh, sw, dh, dw,
                   bias, min(n * m, DEPTHWISE_ITEMS), out3.reshape(n, m, oh, ow))
    else:
        _conv_exact_gemm(xi, zx, cw, geom, dtype, chunk, bias, narrow, out3, sink)


def _conv_pair_correction_int64(x, zx, w, group, geom, hwc, out3):
    """Wide operands: the raw pair-saturated sums by the int64 direct loop on an explicit raw im2col,
    minus the exact raw sums (both int64), added to out3."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    sh, sw, dh, dw, ph, pw, oh, ow = geom
    mg = m // group
    kc, ki, kj = _reduction_order(cg, kh, kw, hwc)
    ys = np.arange(oh)[:, None, None] * sh - ph + ki[None, None, :] * dh  # [oh, 1, K]
    xs = np.arange(ow)[None, :, None] * sw - pw + kj[None, None, :] * dw  # [1, ow, K]
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < wd)
    ysc, xsc = np.clip(ys, 0, h - 1), np.clip(xs, 0, wd - 1)
    x64 = x.astype(np.int64)
    for g in range(group):
        cols = x64[:, g * cg + kc[None, None, :], ysc, xsc]  # [N, oh, ow, K]
        cols = np.ascontiguousarray(np.where(inside[None], cols, zx).reshape(n * oh * ow, -1))
        wt = np.ascontiguousarray(w[g * mg:(g + 1) * mg][:, kc, ki, kj], dtype=np.int64)  # [mg, K]
        paired = np.empty((cols.shape[0], mg), np.int64)
        exact = np.empty((cols.shape[0], mg), np.int64)
        _gemm_raw(cols, wt, True, paired)
        _gemm_raw(cols, wt, False, exact)
        out3[:, g * mg:(g + 1) * mg] += (paired - exact).reshape(n, oh * ow, mg).transpose(0, 2, 1)


class ConvWeights:
    """The weight side of a convolution, prepared once (the integer program builds it at plan time)
    and reused by every call of :func:`conv_accumulate`: raw weights [M, C/group, kH, kW] (1-D
    convolutions as kH = 1), per-output-channel zero points, centred weights and their bounds, and
    on demand -- cached, as their type depends on the input's range -- the GEMM matrix [M, K] or the
    depthwise taps [M, kH, kW] in the exact-sum type, and the pair-saturation tables.
    """

    def __init__(self, w, w_zero_point, group: int, pair_order: str = "hwc"):
        w = _as_int(w, "W")
        self.one_d = w.ndim == 3
        if self.one_d:
            w = w[:, :, None, :]
        if w.ndim != 4:
            raise HwsimError(f"Conv expects [M, C/group, kH, kW] weights, found shape {w.shape}")
        m = w.shape[0]
        group = int(group)
        if group < 1 or m % group:
            raise HwsimError(f"Conv: {m} output channels are not divisible by group {group}")
        zw = np.asarray(w_zero_point, np.int64).reshape(-1)
        zw = np.repeat(zw, m) if zw.size == 1 else zw
        if zw.size != m:
            raise HwsimError(f"Conv: weight zero point has {zw.size} values, expected 1 or {m}")
        self.w = w
        self.shape = w.shape
        self.group = group
        self.zw = np.ascontiguousarray(zw)
        self.pair_order = pair_order
        self.wc = w.astype(np.int64) - zw.reshape(m, 1, 1, 1)
        self.wmax = _abs_max(self.wc)
        self.wrmax = _abs_max(w)
        self.wr_lo = int(w.min()) if w.size else 0
        self.wr_hi = int(w.max()) if w.size else 0
        self.simd = False  # set by prepare(): calls take the AVX2 GEMM whenever their operands fit it
        self._cache: dict = {}

    def gemm(self, dtype) -> np.ndarray:
        """Centred weights as the GEMM's left operand [M, cg*kH*kW] in ``dtype``."""
        key = ("gemm", np.dtype(dtype))
        if key not in self._cache:
            self._cache[key] = np.ascontiguousarray(self.wc.reshape(self.shape[0], -1), dtype=dtype)
        return self._cache[key]

    def depthwise(self, dtype) -> np.ndarray:
        """Centred taps [M, kH, kW] of a one-input-channel-per-group conv in ``dtype``."""
        key = ("depthwise", np.dtype(dtype))
        if key not in self._cache:
            self._cache[key] = np.ascontiguousarray(self.wc[:, 0], dtype=dtype)
        return self._cache[key]

    def raw_sums(self) -> np.ndarray:
        """sum_k w[m, k] of the raw weights, int64 [M]."""
        if "raw_sums" not in self._cache:
            self._cache["raw_sums"] = self.w.reshape(self.shape[0], -1).sum(axis=1, dtype=np.int64)
        return self._cache["raw_sums"]

    def simd_packed(self) -> "simd.PackedB":
        """The raw weights [M, (kh, kw, c)] (the NHWC im2col's order) as :mod:`runtime.kernels.simd`'s
        packed right operand, with a row of ones after them when a weight zero point is not 0 (its
        result row is the im2col's row sums)."""
        if "simd" not in self._cache:
            m = self.shape[0]
            bt = self.w.transpose(0, 2, 3, 1).reshape(m, -1)
            if self.zw.any():
                bt = np.concatenate([bt, np.ones((1, bt.shape[1]), bt.dtype)])
            self._cache["simd"] = simd.pack_b(bt)
        return self._cache["simd"]

    def prepare(self, x_min: int, x_max: int, x_zero_point: int, pair_saturation: bool) -> None:
        """Build now the operands that calls on inputs within [x_min, x_max] will use (the exact-sum
        type follows from the range's bound, as in :func:`conv_accumulate`; the packed weights of the
        AVX2 GEMM when it will run them)."""
        m, cg, kh, kw = self.shape
        k = cg * kh * kw
        zx = int(x_zero_point)
        mode = _conv_simd_mode(int(x_min), int(x_max), zx, self, pair_saturation, plan=True)
        if mode is not None:
            self.simd = True
            packed = self.simd_packed()
            if mode[0] == "pair":
                packed.pair()
            else:
                packed.exact()
            self.raw_sums()
            return
        dtype, chunk = _exact_dtype(k, max(int(x_max) - zx, zx - int(x_min), 0), self.wmax)
        if cg == 1:
            self.depthwise(np.float64 if dtype == np.float32 and chunk < kh * kw else dtype)
        else:
            self.gemm(dtype)
        if pair_saturation:
            self.pairs(int(x_min) >= 0 and zx >= 0)

    def pairs(self, nonneg: bool):
        """(reduction order, raw weights in it [G, K, mg], pair tables) for the pair-saturation kernels."""
        key = ("pairs", bool(nonneg))
        if key not in self._cache:
            m, cg, kh, kw = self.shape
            order = _reduction_order(cg, kh, kw, self.pair_order == "hwc")
            kc, ki, kj = order
            wk = self.w.reshape(self.group, m // self.group, cg, kh, kw)[:, :, kc, ki, kj].transpose(0, 2, 1)
            self._cache[key] = (order, wk, _pair_tables(wk, nonneg))
        return self._cache[key]


def conv_acc(x, x_zero_point, w, w_zero_point, bias, strides, pads, dilations, group,
             pair_saturation=False, pair_order="hwc") -> np.ndarray:
    """ONNX Conv(Integer) accumulators for 1-D (NCW) and 2-D (NCHW) inputs, int64 [N, M, ...]."""
    acc = conv_accumulate(x, x_zero_point, ConvWeights(w, w_zero_point, group, pair_order), bias, strides, pads,
                          dilations, pair_saturation)
    return acc.astype(np.int64, copy=False)


def conv_accumulate(x, x_zero_point, weights: ConvWeights, bias, strides, pads, dilations,
                    pair_saturation=False) -> np.ndarray:
    """:func:`conv_acc` on prepared weights, in int32 when a bound proves every accumulator (bias
    and pair corrections included) below 2^31 in magnitude, int64 otherwise (half the memory traffic
    for the requantization that reads them)."""
    return _conv(x, x_zero_point, weights, bias, strides, pads, dilations, pair_saturation)


def conv_requantize(x, x_zero_point, weights: ConvWeights, bias, strides, pads, dilations, pair_saturation,
                    epilogue: Float32Epilogue, out_dtype):
    """The convolution and the float32-lane epilogue (:mod:`runtime.kernels.epilogue`) fused:
    ``(out [N, M, ...] in out_dtype, saturated)``, equal to :func:`conv_accumulate` followed by the
    epilogue; or None when the accumulator bound does not prove |acc| < 2^31 (the caller then runs
    the general path). The GEMM paths requantize the integer-valued GEMM result directly (the
    accumulators are never stored), after the sparse pair corrections when the target has them;
    the direct paths (depthwise, dense pairs, int64) requantize their int32 accumulators."""
    return _conv(x, x_zero_point, weights, bias, strides, pads, dilations, pair_saturation, epilogue,
                 np.dtype(out_dtype))


def _conv(x, x_zero_point, cw: ConvWeights, bias, strides, pads, dilations, pair_saturation=False, ep=None,
          out_dtype=None):
    x = _as_int(x, "X")
    one_d = x.ndim == 3
    if one_d != cw.one_d:
        raise HwsimError(f"Conv: input {x.shape} and weights {cw.w.shape} are not both 1-D or both 2-D")
    if one_d:
        x = x[:, :, None, :]
        strides, dilations = (1,) + tuple(strides), (1,) + tuple(dilations)
        pads = (0, pads[0], 0, pads[1])
    if x.ndim != 4:
        raise HwsimError(f"Conv expects NCHW input and [M, C/group, kH, kW] weights, found {x.shape} and {cw.w.shape}")
    n, c, h, wd = x.shape
    m, cg, kh, kw = cw.shape
    group = cw.group
    if c != cg * group:
        raise HwsimError(f"Conv: {c} input channels, weights {cw.w.shape} and group {group} do not agree")
    sh, sw = strides
    dh, dw = dilations
    ph, pw, peh, pew = pads
    oh = (h + ph + peh - ((kh - 1) * dh + 1)) // sh + 1
    ow = (wd + pw + pew - ((kw - 1) * dw + 1)) // sw + 1
    if oh < 1 or ow < 1:
        raise HwsimError(f"Conv output would be empty ({oh}x{ow}) for input {x.shape} and kernel {(kh, kw)}")
    zx = int(x_zero_point)
    zw = cw.zw
    bias64 = np.zeros(m, np.int64) if bias is None else np.asarray(bias, np.int64).reshape(-1)
    if bias64.size != m:
        raise HwsimError(f"Conv: bias has {bias64.size} values, expected {m}")
    if not (n and m and oh * ow):
        empty = _conv_shape(np.zeros((n, m, oh * ow), np.int64), n, m, oh, ow, one_d)
        return empty if ep is None else (empty.astype(out_dtype), 0)
    x_lo, x_hi = int(x.min()), int(x.max())
    xmax = max(abs(x_lo), abs(x_hi), abs(zx))  # raw magnitude, padded taps included
    amax, wmax, wrmax = max(x_hi - zx, zx - x_lo, 0), cw.wmax, cw.wrmax
    k = cg * kh * kw
    # every accumulator: |centred sum| + |bias| + |pair corrections| (each pair moves by < its raw product)
    bound = k * amax * wmax + _abs_max(bias64) + (k // 2 + 1) * 2 * xmax * wrmax * bool(pair_saturation)
    geom = (sh, sw, dh, dw, ph, pw, oh, ow)
    simd_mode = _conv_simd_mode(x_lo, x_hi, zx, cw, pair_saturation)
    if ep is not None:
        if bound >= 1 << 31 or xmax >= 1 << 31:
            return None
        if simd_mode is not None:
            return _conv_fused_simd(x, zx, cw, bias64, geom, simd_mode, ep, out_dtype, one_d)
        return _conv_fused(x, zx, cw, bias64, bound, pair_saturation, geom, ep, out_dtype, one_d)
    out3 = np.empty((n, m, oh * ow), np.int32 if bound < 1 << 31 else np.int64)
    if simd_mode is not None:
        const = _conv_simd_const(cw, zx, bias64)
        for n0, n1, res in _conv_simd_slices(x, zx, cw, geom, simd_mode):
            _store_expanded(res, const, zw, out3[n0:n1])
        return _conv_shape(out3, n, m, oh, ow, one_d)
    xi = np.ascontiguousarray(x, dtype=np.int32 if xmax < 1 << 31 else np.int64)
    dtype, chunk = _exact_dtype(k, amax, wmax)
    narrow = k * max(1, amax * wmax) < (1 << 31)
    tables = None
    if pair_saturation:
        if not _int32_safe(k, xmax, wrmax):
            _conv_exact(xi, zx, cw, geom, dtype, chunk, bias64, narrow, out3)
            _conv_pair_correction_int64(x, zx, cw.w, group, geom, cw.pair_order == "hwc", out3)
            return _conv_shape(out3, n, m, oh, ow, one_d)
        if 2 * xmax * wrmax > I16_MAX:  # else no pair can leave the int16 range
            order, wk, tables = cw.pairs(x_lo >= 0 and zx >= 0)
    if tables is None:
        _conv_exact(xi, zx, cw, geom, dtype, chunk, bias64, narrow, out3)
        return _conv_shape(out3, n, m, oh, ow, one_d)
    for n0, n1 in _batch_slices(n, group * k * oh * ow * 4):
        a3 = _raw_operand(xi[n0:n1], zx, group, kh, kw, geom, order)
        flags, flagged = _pair_flag_pass(tables, a3)
        if _dense_is_cheaper(tables, flagged, a3):
            _pair_direct(tables, a3, zx, zw, bias64, wk, out3[n0:n1])
            continue
        _conv_exact(xi[n0:n1], zx, cw, geom, dtype, chunk, bias64, narrow, out3[n0:n1])
        if flagged:
            _pair_sparse(tables, a3, flags, out3[n0:n1])
    return _conv_shape(out3, n, m, oh, ow, one_d)


def _conv_fused_simd(x, zx, cw: ConvWeights, bias64, geom, mode, ep, out_dtype, one_d):
    """:func:`conv_requantize` by the AVX2 GEMM (the caller proved |acc| < 2^31): per batch slice the
    raw sums S [M, n*P] (int32), S - zw*R (R the row sums) in wrapping int32, then the epilogue adds
    const = bias - zx*sum(w) + K*zx*zw as wrapping int32 (:func:`_conv_simd_const`): every wrap
    cancels as the final sum lies within int32."""
    n = x.shape[0]
    m = cw.shape[0]
    oh, ow = geom[6], geom[7]
    const32 = _wrap32(_conv_simd_const(cw, zx, bias64))
    y = np.empty((n, m, oh * ow), out_dtype)
    sat = 0
    for n0, n1, res in _conv_simd_slices(x, zx, cw, geom, mode):
        if res.shape[0] > m:
            _sub_row_sums(res, cw.zw)
        sat += requantize_gemm(res[:m], 0, const32, ep, y[n0:n1])
    return _conv_shape(y, n, m, oh, ow, one_d), sat


def _conv_fused(x, zx, cw: ConvWeights, bias64, bound, pair_saturation, geom, ep, out_dtype, one_d):
    """:func:`conv_requantize` once the caller proved |acc| < 2^31 (``bound``)."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = cw.shape
    sh, sw, dh, dw, ph, pw, oh, ow = geom
    group = cw.group
    x_lo, x_hi = int(x.min()), int(x.max())
    xmax = max(abs(x_lo), abs(x_hi), abs(zx))
    amax, wmax, wrmax = max(x_hi - zx, zx - x_lo, 0), cw.wmax, cw.wrmax
    k = cg * kh * kw
    xi = np.ascontiguousarray(x, dtype=np.int32)
    dtype, chunk = _exact_dtype(k, amax, wmax)
    narrow = True
    bias32 = bias64.astype(np.int32)
    y = np.empty((n, m, oh * ow), out_dtype)
    sat = [0]

    def requant_acc(acc3, n0):  # int32 accumulators [nn, M, P] -> y[n0:...]
        part, s_ = requantize_int32(acc3, ep, out_dtype)
        y[n0:n0 + acc3.shape[0]] = part
        sat[0] += s_

    def exact_then_requant(xs, n0):
        if cg == 1:  # depthwise: int32 accumulators, then the epilogue
            acc3 = np.empty((xs.shape[0], m, oh * ow), np.int32)
            _conv_exact(xs, zx, cw, geom, dtype, chunk, bias64, narrow, acc3)
            requant_acc(acc3, n0)
            return

        def sink(res, m0, s0, s1):
            sat[0] += requantize_gemm(res, m0, bias32, ep, y[n0 + s0:n0 + s1])
        _conv_exact_gemm(xs, zx, cw, geom, dtype, chunk, bias64, narrow, None, sink)

    tables = None
    if pair_saturation and 2 * xmax * wrmax > I16_MAX:  # else no pair can leave the int16 range
        if not _int32_safe(k, xmax, wrmax):
            acc3 = np.empty((n, m, oh * ow), np.int32)
            _conv_exact(xi, zx, cw, geom, dtype, chunk, bias64, narrow, acc3)
            _conv_pair_correction_int64(x, zx, cw.w, group, geom, cw.pair_order == "hwc", acc3)
            requant_acc(acc3, 0)
            return _conv_shape(y, n, m, oh, ow, one_d), sat[0]
        order, wk, tables = cw.pairs(x_lo >= 0 and zx >= 0)
    if tables is None:
        exact_then_requant(xi, 0)
        return _conv_shape(y, n, m, oh, ow, one_d), sat[0]
    # float results take integer corrections exactly below 2^24 (float32) / 2^53 (float64)
    unbiased = bound - _abs_max(bias64)
    for n0, n1 in _batch_slices(n, group * k * oh * ow * 4):
        a3 = _raw_operand(xi[n0:n1], zx, group, kh, kw, geom, order)
        flags, flagged = _pair_flag_pass(tables, a3)
        if _dense_is_cheaper(tables, flagged, a3):
            acc3 = np.empty((n1 - n0, m, oh * ow), np.int32)
            _pair_direct(tables, a3, zx, cw.zw, bias64, wk, acc3)
            requant_acc(acc3, n0)
            continue
        if not flagged:
            exact_then_requant(xi[n0:n1], n0)
            continue
        if cg == 1 or group > 1:  # corrections on int32 accumulators
            acc3 = np.empty((n1 - n0, m, oh * ow), np.int32)
            _conv_exact(xi[n0:n1], zx, cw, geom, dtype, chunk, bias64, narrow, acc3)
            _pair_sparse(tables, a3, flags, acc3)
            requant_acc(acc3, n0)
            continue

        def sink(res, m0, s0, s1, n0=n0, a3=a3, flags=flags):  # group 1: res is [M, nn*P]
            if res.dtype == np.float32 and unbiased >= F32_EXACT:
                res = res.astype(np.float64)
            view = res.reshape(m, s1 - s0, oh * ow).transpose(1, 0, 2)
            _pair_sparse(tables, a3[s0:s1], flags[s0:s1], view)
            sat[0] += requantize_gemm(res, m0, bias32, ep, y[n0 + s0:n0 + s1])
        _conv_exact_gemm(xi[n0:n1], zx, cw, geom, dtype, chunk, bias64, narrow, None, sink)
    return _conv_shape(y, n, m, oh, ow, one_d), sat[0]


def _conv_shape(out3, n, m, oh, ow, one_d):
    out = out3.reshape(n, m, oh, ow)
    return out[:, :, 0, :] if one_d else out


def apply_accumulator(acc: np.ndarray, bits: int, policy: str) -> tuple[np.ndarray, int]:
    """The target's accumulator on the exact sum: (result, number of elements outside the width).

    ``saturate`` clamps to the signed range, ``wrap`` wraps two's complement, ``error`` raises
    OverflowPolicyError naming the first overflowing element. Counting is one pass; the array is
    returned as it is when nothing overflows.
    """
    acc = np.asarray(acc)
    if bits >= 64 or (np.issubdtype(acc.dtype, np.signedinteger) and acc.dtype.itemsize * 8 <= bits):
        return acc, 0  # the storage type cannot hold a value outside the width
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    flat = np.ascontiguousarray(acc, dtype=np.int64).reshape(-1)
    count = int(_count_outside(flat, lo, hi)) if flat.size else 0
    if not count:
        return acc, 0
    over = (acc < lo) | (acc > hi)
    if policy == "error":
        idx = tuple(int(i) for i in np.argwhere(over)[0])
        raise OverflowPolicyError(f"accumulator overflow at element {idx}: {int(acc[idx])} is outside the "
                                  f"{bits}-bit range [{lo}, {hi}] ({count} elements overflow)")
    if policy == "saturate":
        return np.clip(acc, lo, hi), count
    if policy == "wrap":
        return ((acc - lo) & ((1 << bits) - 1)) + lo, count
    raise HwsimError(f"unknown overflow policy {policy!r}")
