"""Slow, obvious references for the integer kernels (stumpy's ``tests/naive.py``).

Every function loops explicitly over every output element and computes it by definition with Python
ints: no im2col, no vectorized zero-point expansion, no Numba. The fast kernels must equal these bit
for bit (0 LSB). Conventions are the kernels' documented contracts (module docstrings of
runtime/kernels/*.py) and, where they exist, ONNX's definitions.
"""
from __future__ import annotations

from fractions import Fraction
from itertools import product

import numpy as np

I16_MIN, I16_MAX = -32768, 32767


def _sat16(v: int) -> int:
    return min(max(v, I16_MIN), I16_MAX)


def pair_saturated_sum(xs: list[int], ws: list[int]) -> int:
    """sum_j sat16(x[2j]*w[2j] + x[2j+1]*w[2j+1]); an odd last product is paired with 0."""
    total = 0
    for k in range(0, len(xs), 2):
        p = xs[k] * ws[k] + (xs[k + 1] * ws[k + 1] if k + 1 < len(xs) else 0)
        total += _sat16(p)
    return total


def _dot(xs, ws, zx, zw, pair):
    """One accumulator from the raw reduction vectors: exact sum of centred products, or (pair) the
    pair-saturated raw sum corrected by S - zx*sum(w) - zw*sum(x) + K*zx*zw."""
    if not pair:
        return sum((x - zx) * (w - zw) for x, w in zip(xs, ws))
    return pair_saturated_sum(xs, ws) - zx * sum(ws) - zw * sum(xs) + len(xs) * zx * zw


# ---------------------------------------------------------------------------------------------
# MatMul
# ---------------------------------------------------------------------------------------------
def matmul_ref(a, a_zero_point, b, b_zero_point, bias=None, pair_saturation=False):
    """ONNX MatMulInteger (numpy matmul semantics: 1-D promotion and batch broadcasting), per-column
    B zero points, bias added per column."""
    a, b = np.asarray(a), np.asarray(b)
    a2 = a.reshape(1, -1) if a.ndim == 1 else a
    b2 = b.reshape(-1, 1) if b.ndim == 1 else b
    m, k = a2.shape[-2:]
    n = b2.shape[-1]
    zb = [int(v) for v in np.asarray(b_zero_point).reshape(-1)]
    zb = zb * n if len(zb) == 1 else zb
    bias_l = [0] * n if bias is None else [int(v) for v in np.asarray(bias).reshape(-1)]
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    out = np.zeros(batch + (m, n), np.int64)
    for idx in np.ndindex(*batch):
        ia = tuple(i if d > 1 else 0 for i, d in zip(idx[len(idx) - (a2.ndim - 2):], a2.shape[:-2]))
        ib = tuple(i if d > 1 else 0 for i, d in zip(idx[len(idx) - (b2.ndim - 2):], b2.shape[:-2]))
        for i in range(m):
            for j in range(n):
                xs = [int(a2[ia + (i, kk)]) for kk in range(k)]
                ws = [int(b2[ib + (kk, j)]) for kk in range(k)]
                out[idx + (i, j)] = _dot(xs, ws, int(a_zero_point), zb[j], pair_saturation) + bias_l[j]
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return out


# ---------------------------------------------------------------------------------------------
# Conv
# ---------------------------------------------------------------------------------------------
def conv_ref(x, x_zero_point, w, w_zero_point, bias, strides, pads, dilations, group,
             pair_saturation=False, pair_order="hwc"):
    """ONNX ConvInteger by definition, 1-D (NCW) or 2-D (NCHW): out[n, m, oy, ox] = bias[m] +
    sum over the reduction vector of group g = m // (M/group); padded taps hold the raw x zero point.
    The reduction vector is ordered (kh, kw, c) with c fastest (hwc) or (c, kh, kw) (chw)."""
    x, w = np.asarray(x), np.asarray(w)
    nd = x.ndim - 2
    n_b, c_in = x.shape[:2]
    m_out, cg = w.shape[:2]
    ksz = w.shape[2:]
    spatial = x.shape[2:]
    mg = m_out // group
    zx = int(x_zero_point)
    zw = [int(v) for v in np.asarray(w_zero_point).reshape(-1)]
    zw = zw * m_out if len(zw) == 1 else zw
    osz = [(spatial[d] + pads[d] + pads[nd + d] - ((ksz[d] - 1) * dilations[d] + 1)) // strides[d] + 1
           for d in range(nd)]
    out = np.zeros((n_b, m_out, *osz), np.int64)
    for n in range(n_b):
        for m in range(m_out):
            g = m // mg
            for opos in product(*[range(o) for o in osz]):
                taps = list(product(*[range(k) for k in ksz]))
                order = ([(t, c) for t in taps for c in range(cg)] if pair_order == "hwc"
                         else [(t, c) for c in range(cg) for t in taps])
                xs, ws = [], []
                for t, c in order:
                    pos = tuple(opos[d] * strides[d] - pads[d] + t[d] * dilations[d] for d in range(nd))
                    inside = all(0 <= pos[d] < spatial[d] for d in range(nd))
                    xs.append(int(x[(n, g * cg + c) + pos]) if inside else zx)
                    ws.append(int(w[(m, c) + t]))
                acc = _dot(xs, ws, zx, zw[m], pair_saturation)
                out[(n, m) + opos] = acc + (0 if bias is None else int(np.asarray(bias).reshape(-1)[m]))
    return out


def same_pads_ref(auto_pad, input_hw, kernel, strides, dilations):
    """ONNX auto_pad: VALID/NOTSET -> 0; SAME_*: output = ceil(in / stride), total padding
    (out - 1) * stride + (k - 1) * d + 1 - in (at least 0), the odd extra at the end (UPPER) or the
    beginning (LOWER)."""
    nd = len(kernel)
    if auto_pad in ("NOTSET", "VALID", "", None):
        return (0,) * (2 * nd)
    begins, ends = [], []
    for i in range(nd):
        out = -(-input_hw[i] // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - input_hw[i])
        extra = total % 2
        half = total // 2
        if auto_pad == "SAME_UPPER":
            begins.append(half)
            ends.append(half + extra)
        else:
            begins.append(half + extra)
            ends.append(half)
    return tuple(begins + ends)


def accumulator_ref(acc, bits, policy):
    """(result, count): saturate clamps to the signed ``bits`` range, wrap reduces modulo 2^bits."""
    if bits >= 64:
        return np.asarray(acc), 0
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    out = np.empty(np.shape(acc), np.int64)
    count = 0
    for idx in np.ndindex(*np.shape(acc)):
        v = int(acc[idx])
        if lo <= v <= hi:
            out[idx] = v
            continue
        count += 1
        out[idx] = min(max(v, lo), hi) if policy == "saturate" else (v - lo) % 2**bits + lo
    return out, count


# ---------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------
def pool_out_size_ref(n, k, s, d, pb, pe, ceil):
    """Number of windows: floor mode counts windows inside the padded input; ceil mode also counts a
    last window that runs past the end padding, provided it starts inside the input or the begin
    padding (ONNX / PyTorch)."""
    eff = (k - 1) * d + 1
    count = 0
    while True:
        start = count * s - pb
        if start + eff <= n + pe or (ceil and start < n and start + eff < n + pe + s):
            count += 1
        else:
            return count


def round_div_ref(a: int, n: int, mode: str) -> int:
    """round(a / n), n > 0, by exact rational arithmetic."""
    q = Fraction(a, n)
    fl = q.numerator // q.denominator
    frac = q - fl
    if mode == "floor":
        return fl
    if mode == "trunc":
        return fl if q >= 0 or frac == 0 else fl + 1
    if frac != Fraction(1, 2):
        return fl + (1 if frac > Fraction(1, 2) else 0)
    if mode == "half_away_from_zero":
        return fl + 1 if q > 0 else fl
    if mode == "half_to_even":
        return fl if fl % 2 == 0 else fl + 1
    return fl + 1  # half_up


def _pool_windows(x, kernel, strides, pads, dilations, ceil_mode):
    x = np.asarray(x)
    nd = x.ndim - 2
    spatial = x.shape[2:]
    osz = [pool_out_size_ref(spatial[d], kernel[d], strides[d], dilations[d], pads[d], pads[nd + d], ceil_mode)
           for d in range(nd)]
    for n, c in product(range(x.shape[0]), range(x.shape[1])):
        for opos in product(*[range(o) for o in osz]):
            vals, in_pad_extent = [], 0
            for t in product(*[range(k) for k in kernel]):
                pos = tuple(opos[d] * strides[d] - pads[d] + t[d] * dilations[d] for d in range(nd))
                if all(0 <= pos[d] < spatial[d] for d in range(nd)):
                    vals.append(int(x[(n, c) + pos]))
                if all(-pads[d] <= pos[d] < spatial[d] + pads[nd + d] for d in range(nd)):
                    in_pad_extent += 1
            yield (n, c) + opos, vals, in_pad_extent, osz


def max_pool_ref(x, kernel, strides, pads, dilations=None, ceil_mode=0):
    """Max over the window's taps inside the input (padding never wins); dtype kept."""
    x = np.asarray(x)
    dilations = dilations or (1,) * len(kernel)
    out = None
    for idx, vals, _, osz in _pool_windows(x, kernel, strides, pads, dilations, ceil_mode):
        if out is None:
            out = np.zeros(x.shape[:2] + tuple(osz), x.dtype)
        out[idx] = max(vals) if vals else np.iinfo(x.dtype).min
    return out


def average_pool_ref(x, x_zero_point, kernel, strides, pads, count_include_pad, ceil_mode, rounding):
    """zp + round(sum of (x - zp) over input taps / count). count = taps inside the input, or with
    count_include_pad the taps inside the declared padded extent [-pad_begin, n + pad_end) (ONNX's
    reference and ONNX Runtime: a ceil-mode overhang past the end padding is not counted)."""
    x = np.asarray(x)
    zp = int(x_zero_point)
    out = None
    for idx, vals, extent, osz in _pool_windows(x, kernel, strides, pads, (1,) * len(kernel), ceil_mode):
        if out is None:
            out = np.zeros(x.shape[:2] + tuple(osz), np.int64)
        denom = extent if count_include_pad else len(vals)
        out[idx] = zp + round_div_ref(sum(v - zp for v in vals), denom, rounding) if denom else zp
    return out


# ---------------------------------------------------------------------------------------------
# Elementwise
# ---------------------------------------------------------------------------------------------
def _wrap32(v: int) -> int:
    return (v + 2**31) % 2**32 - 2**31


def _srdhm(a: int, b: int) -> int:
    if a == b == -(2**31):
        return 2**31 - 1
    p = a * b
    s = p + (2**30 if p >= 0 else 1 - 2**30)
    return s // 2**31 if s >= 0 else -((-s) // 2**31)  # C truncating division


def _rdbpot(x: int, e: int) -> int:
    mask = 2**e - 1
    rem, thr = x & mask, (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > thr else 0)


def mbqm_ref(x: int, m: int, e: int, single: bool) -> int:
    """TFLite MultiplyByQuantizedMultiplier on a Python int (single or double rounding)."""
    if single:
        t = 31 - e
        return _wrap32((x * m + 2 ** (t - 1)) >> t)
    if e > 0:
        return _srdhm(_wrap32(x * 2**e), m)
    return _rdbpot(_srdhm(x, m), -e)


def _binary(a, b, fn):
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    out = np.empty(a.shape, np.int64)
    for idx in np.ndindex(*a.shape):
        out[idx] = fn(int(a[idx]), int(b[idx]))
    return out


def _clamp_count(out, qmin, qmax, lo, hi):
    return np.clip(out, lo, hi), int(np.count_nonzero((out < qmin) | (out > qmax)))


def add_fixed_point_ref(a, b, z1, z2, left_shift, m1, e1, m2, e2, mo, eo, zo, lo, hi, qmin, qmax, single):
    def one(x, y):
        s = mbqm_ref((x - z1) * 2**left_shift, m1, e1, single) + mbqm_ref((y - z2) * 2**left_shift, m2, e2, single)
        return mbqm_ref(s, mo, eo, single) + zo
    return _clamp_count(_binary(a, b, one), qmin, qmax, lo, hi)


def mul_fixed_point_ref(a, b, z1, z2, m, e, zo, lo, hi, qmin, qmax, single):
    return _clamp_count(_binary(a, b, lambda x, y: mbqm_ref((x - z1) * (y - z2), m, e, single) + zo),
                        qmin, qmax, lo, hi)


def add_float32_ref(a, b, za, zb, ra, rb, zc, lo, hi, qmin, qmax):
    """rne(fma(a, rA, fma(b, rB, C))), C = f32(zc - f32(f32(rA*za) + f32(rB*zb))), one element at a time;
    fma(x, y, z) = f32(f64(x) * f64(y) + f64(z)) (the float32 product is exact in float64)."""
    f32, f64 = np.float32, np.float64
    c = f32(f32(zc) - f32(f32(f32(ra) * f32(za)) + f32(f32(rb) * f32(zb))))

    def fma(x, y, z):
        return f32(f64(f32(x)) * f64(f32(y)) + f64(z))

    def one(x, y):
        return int(np.rint(fma(x, ra, fma(y, rb, c))))
    return _clamp_count(_binary(a, b, one), qmin, qmax, lo, hi)


def mul_float32_ref(a, b, za, zb, r, zc, lo, hi, qmin, qmax):
    """rne(f32((a - za) * (b - zb)) * r) + zc, numpy float32 scalars."""
    f32 = np.float32
    return _clamp_count(_binary(a, b, lambda x, y: int(np.rint(f32(f32((x - za) * (y - zb)) * f32(r)))) + zc),
                        qmin, qmax, lo, hi)
