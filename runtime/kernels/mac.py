"""Integer multiply-accumulate kernels: MatMul/Gemm and Conv (via NHWC im2col), exact int64 sums.

``pair_saturation`` reproduces ONNX Runtime's x86 AVX2 u8 x s8 kernels (``vpmaddubsw``): the RAW
products of each adjacent pair (k = 2j, 2j+1) along the reduction vector are summed and saturated to
int16, then accumulated exactly; an odd K pairs the last product with 0. Zero points are applied
after, by the exact expansion acc = S - za*sum_k b - zb*sum_k a + K*za*zb (runtime/ORT_CPU_ARITHMETIC.md).
Convolutions order their reduction index (kh, kw, c) with c fastest (``hwc``, NHWC im2col as
ONNX Runtime) or (c, kh, kw) (``chw``); padded taps hold the raw input zero point.
The accumulator policy (width, saturate/wrap/error) is applied to the exact final sum by
:func:`apply_accumulator`; per-partial-sum saturation is not modelled (a known limitation: it only
differs when a partial sum leaves the range and comes back).
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ..errors import HwsimError, OverflowPolicyError
from ..numba_config import jit


@jit(parallel=True)
def _gemm_raw(a, bt, pair, out):
    """out[m, n] = sum_k a[m, k] * bt[n, k] (int64), optionally with int16 pair saturation."""
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
                acc = np.int64(0)
                for k in range(k_dim):
                    acc += np.int64(a[m, k]) * np.int64(bt[n, k])
                s = acc
            out[m, n] = s


@jit(parallel=True)
def _gemm_raw32(a, bt, out):
    """As :func:`_gemm_raw` without pair saturation, in int32 (the caller proves it cannot overflow),
    so that LLVM vectorizes the unit-stride reduction."""
    m_dim, k_dim = a.shape
    n_dim = bt.shape[0]
    for m in prange(m_dim):
        ar = a[m]
        for n in range(n_dim):
            br = bt[n]
            acc = np.int32(0)
            for k in range(k_dim):
                acc += ar[k] * br[k]
            out[m, n] = acc


@jit(parallel=True)
def _gemm_pairs32(a_even, a_odd, b_even, b_odd, out):
    """Pair-saturated sums on de-interleaved operands (even and odd reduction indices in separate
    contiguous arrays, odd K padded with a zero product): unit stride, so the int16 clamp vectorizes."""
    m_dim, k2 = a_even.shape
    n_dim = b_even.shape[0]
    for m in prange(m_dim):
        ae = a_even[m]
        ao = a_odd[m]
        for n in range(n_dim):
            be = b_even[n]
            bo = b_odd[n]
            acc = np.int32(0)
            for k in range(k2):
                p = ae[k] * be[k] + ao[k] * bo[k]
                acc += min(max(p, np.int32(-32768)), np.int32(32767))
            out[m, n] = acc


@jit(parallel=True)
def _depthwise(x, zx, w, zw, mult, sh, sw, dh, dw, ph, pw, oh, ow, out):
    """Direct depthwise conv: out[n, c] = sum_ij (x[n, c // mult] - zx) * (w[c, 0] - zw[c]); padded taps add 0."""
    n_dim, c_in, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    for nc in prange(n_dim * c_out):
        n = nc // c_out
        c = nc % c_out
        ci = c // mult
        z = zw[c]
        for y in range(oh):
            for xx in range(ow):
                acc = np.int64(0)
                for i in range(kh):
                    iy = y * sh - ph + i * dh
                    if iy < 0 or iy >= h:
                        continue
                    for j in range(kw):
                        ix = xx * sw - pw + j * dw
                        if 0 <= ix < wd:
                            acc += (np.int64(x[n, ci, iy, ix]) - zx) * (np.int64(w[c, 0, i, j]) - z)
                out[n, c, y, xx] = acc


def _as_int(x, what):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise HwsimError(f"{what} must be an integer array, found {x.dtype}")
    return x


def gemm_raw(a2d: np.ndarray, bt2d: np.ndarray, pair_saturation: bool = False) -> np.ndarray:
    """[M, K] x [N, K]^T raw integer products summed exactly (int64) or with pair saturation.

    Uses int32 arithmetic when the bound K * max|a| * max|b| (or K/2 * 2^15 with pair saturation)
    proves the sum fits, int64 otherwise; both give the exact same result.
    """
    a2d = np.ascontiguousarray(a2d, dtype=np.int32)
    bt2d = np.ascontiguousarray(bt2d, dtype=np.int32)
    out = np.empty((a2d.shape[0], bt2d.shape[0]), np.int64)
    k = a2d.shape[1]
    if a2d.size and bt2d.size:
        amax = int(np.abs(a2d).max())
        bmax = int(np.abs(bt2d).max())
        bound = (k // 2 + 1) * 32768 if pair_saturation else k * amax * bmax
        pair_ok = not pair_saturation or 2 * amax * bmax < (1 << 31)
        if bound < (1 << 31) - 1 and pair_ok:
            out32 = np.empty(out.shape, np.int32)
            if pair_saturation:
                if k % 2:
                    a2d = np.concatenate([a2d, np.zeros((a2d.shape[0], 1), np.int32)], axis=1)
                    bt2d = np.concatenate([bt2d, np.zeros((bt2d.shape[0], 1), np.int32)], axis=1)
                _gemm_pairs32(np.ascontiguousarray(a2d[:, 0::2]), np.ascontiguousarray(a2d[:, 1::2]),
                              np.ascontiguousarray(bt2d[:, 0::2]), np.ascontiguousarray(bt2d[:, 1::2]), out32)
            else:
                _gemm_raw32(a2d, bt2d, out32)
            return out32.astype(np.int64)
    _gemm_raw(a2d, bt2d, bool(pair_saturation), out)
    return out


def _zp_correct(raw, a2d, bt2d, za, zb):
    """raw - za*colsum(b) - zb*rowsum(a) + K*za*zb, broadcast over [M, N]."""
    k = a2d.shape[1]
    zb = np.asarray(zb, np.int64).reshape(-1)
    col = bt2d.astype(np.int64).sum(axis=1)  # [N]
    row = a2d.astype(np.int64).sum(axis=1)  # [M]
    return raw - np.int64(za) * col[None, :] - row[:, None] * zb[None, :] + np.int64(k) * np.int64(za) * zb[None, :]


def matmul_acc(a, a_zero_point, b, b_zero_point, bias=None, pair_saturation=False) -> np.ndarray:
    """ONNX MatMul(Integer) accumulators: bias[n] + sum_k (a - za)(b - zb[n]), numpy batch broadcasting."""
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
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    ab = np.broadcast_to(a2, batch + a2.shape[-2:])
    bb = np.broadcast_to(b2, batch + b2.shape[-2:])
    out = np.empty(batch + (a2.shape[-2], n), np.int64)
    for idx in np.ndindex(*batch) if batch else [()]:
        a_m = np.ascontiguousarray(ab[idx])
        bt = np.ascontiguousarray(bb[idx].T)
        raw = gemm_raw(a_m, bt, pair_saturation)
        out[idx] = _zp_correct(raw, a_m, bt, int(a_zero_point), zb)
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


@jit
def _im2col(x, zp, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow, c0, cg, hwc, out):
    """out[n*oh*ow + y*ow + x, r] with r = (i*kw + j)*cg + c (hwc) or (c*kh + i)*kw + j (chw)."""
    n_dim, _, h, w = x.shape
    for n in range(n_dim):
        for y in range(oh):
            for xx in range(ow):
                row = (n * oh + y) * ow + xx
                for i in range(kh):
                    iy = y * sh - ph + i * dh
                    for j in range(kw):
                        ix = xx * sw - pw + j * dw
                        inside = 0 <= iy < h and 0 <= ix < w
                        for c in range(cg):
                            r = (i * kw + j) * cg + c if hwc else (c * kh + i) * kw + j
                            out[row, r] = x[n, c0 + c, iy, ix] if inside else zp


def conv_acc(x, x_zero_point, w, w_zero_point, bias, strides, pads, dilations, group,
             pair_saturation=False, pair_order="hwc") -> np.ndarray:
    """ONNX Conv(Integer) accumulators for 1-D (NCW) and 2-D (NCHW) inputs, int64 [N, M, ...]."""
    x = _as_int(x, "X")
    w = _as_int(w, "W")
    one_d = x.ndim == 3
    if one_d:
        x, w = x[:, :, None, :], w[:, :, None, :]
        strides, dilations = (1,) + tuple(strides), (1,) + tuple(dilations)
        pads = (0, pads[0], 0, pads[1])
    if x.ndim != 4 or w.ndim != 4:
        raise HwsimError(f"Conv expects NCHW input and [M, C/group, kH, kW] weights, found {x.shape} and {w.shape}")
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    if c != cg * group or m % group:
        raise HwsimError(f"Conv: {c} input channels, weights {w.shape} and group {group} do not agree")
    sh, sw = strides
    dh, dw = dilations
    ph, pw, peh, pew = pads
    oh = (h + ph + peh - ((kh - 1) * dh + 1)) // sh + 1
    ow = (wd + pw + pew - ((kw - 1) * dw + 1)) // sw + 1
    if oh < 1 or ow < 1:
        raise HwsimError(f"Conv output would be empty ({oh}x{ow}) for input {x.shape} and kernel {(kh, kw)}")
    zb = np.asarray(w_zero_point, np.int64).reshape(-1)
    zb = np.repeat(zb, m) if zb.size == 1 else zb
    mg = m // group
    if cg == 1 and group == c and not pair_saturation:  # depthwise (any depth multiplier): direct kernel
        out = np.empty((n, m, oh, ow), np.int64)
        _depthwise(np.ascontiguousarray(x, dtype=np.int32), int(x_zero_point), np.ascontiguousarray(w, dtype=np.int32),
                   zb, mg, sh, sw, dh, dw, ph, pw, oh, ow, out)
        if bias is not None:
            out += np.asarray(bias, np.int64).reshape(1, m, 1, 1)
        return out[:, :, 0, :] if one_d else out
    hwc = pair_order == "hwc"
    xc = np.ascontiguousarray(x, dtype=np.int32)
    out = np.empty((n, m, oh, ow), np.int64)
    cols = np.empty((n * oh * ow, kh * kw * cg), np.int32)
    for g in range(group):
        _im2col(xc, int(x_zero_point), kh, kw, sh, sw, dh, dw, ph, pw, oh, ow, g * cg, cg, hwc, cols)
        wg = w[g * mg:(g + 1) * mg]
        wt = (np.transpose(wg, (0, 2, 3, 1)) if hwc else wg).reshape(mg, -1)
        wt = np.ascontiguousarray(wt, dtype=np.int32)
        raw = gemm_raw(cols, wt, pair_saturation)
        acc = _zp_correct(raw, cols, wt, int(x_zero_point), zb[g * mg:(g + 1) * mg])
        out[:, g * mg:(g + 1) * mg] = acc.reshape(n, oh, ow, mg).transpose(0, 3, 1, 2)
    if bias is not None:
        out += np.asarray(bias, np.int64).reshape(1, m, 1, 1)
    return out[:, :, 0, :] if one_d else out


def apply_accumulator(acc: np.ndarray, bits: int, policy: str) -> tuple[np.ndarray, int]:
    """The target's accumulator on the exact sum: (result, number of elements outside the width).

    ``saturate`` clamps to the signed range, ``wrap`` wraps two's complement, ``error`` raises
    OverflowPolicyError naming the first overflowing element.
    """
    if bits >= 64:
        return acc, 0
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    over = (acc < lo) | (acc > hi)
    count = int(np.count_nonzero(over))
    if not count:
        return acc, 0
    if policy == "error":
        idx = tuple(int(i) for i in np.argwhere(over)[0])
        raise OverflowPolicyError(f"accumulator overflow at element {idx}: {int(acc[idx])} is outside the "
                                  f"{bits}-bit range [{lo}, {hi}] ({count} elements overflow)")
    if policy == "saturate":
        return np.clip(acc, lo, hi), count
    if policy == "wrap":
        return ((acc - lo) & ((1 << bits) - 1)) + lo, count
    raise HwsimError(f"unknown overflow policy {policy!r}")
