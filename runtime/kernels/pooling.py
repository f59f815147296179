"""Integer pooling: MaxPool, AveragePool (integer division with an explicit rounding mode),
GlobalAveragePool, and int64 sums. NCHW (or NCW) tensors; padded taps never win a max and are
not counted in an average unless ``count_include_pad``."""
from __future__ import annotations

import numpy as np
from numba import prange

from ..errors import HwsimError
from ..numba_config import jit

ROUNDINGS = {"half_away_from_zero": 0, "half_to_even": 1, "half_up": 2, "floor": 3, "trunc": 4}


def _out_size(n, k, s, d, pb, pe, ceil):
    eff = (k - 1) * d + 1
    num = n + pb + pe - eff
    o = (-(-num // s) if ceil else num // s) + 1
    if ceil and (o - 1) * s >= n + pb:  # the last window may not start in the end padding
        o -= 1
    return o


@jit
def _round_div(a, n, mode):
    """round(a / n) for n > 0 with integer arithmetic only."""
    q = a // n  # floor
    r = a - q * n  # 0 <= r < n
    if mode == 3:
        return q
    if mode == 4:
        return q + 1 if (a < 0 and r != 0) else q
    twice = 2 * r
    if twice > n:
        return q + 1
    if twice < n:
        return q
    if mode == 0:  # tie: away from zero
        return q + 1 if a > 0 else q
    if mode == 1:  # tie: to even
        return q + 1 if (q % 2) != 0 else q
    return q + 1  # half_up


@jit
def _pool(x, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow, peh, pew, is_max, lowest, zp, include_pad, mode, out):
    n_dim, c_dim, h, w = x.shape
    for n in range(n_dim):
        for c in range(c_dim):
            for y in range(oh):
                for xx in range(ow):
                    best = lowest
                    s = np.int64(0)
                    cnt = 0
                    total = 0
                    for i in range(kh):
                        iy = y * sh - ph + i * dh
                        for j in range(kw):
                            ix = xx * sw - pw + j * dw
                            inside = 0 <= iy < h and 0 <= ix < w
                            if inside:
                                v = np.int64(x[n, c, iy, ix])
                                if v > best:
                                    best = v
                                s += v - zp
                                cnt += 1
                            if -ph <= iy < h + peh and -pw <= ix < w + pew:
                                total += 1  # taps in the declared padding count; ceil_mode overhang does not
                    if is_max:
                        out[n, c, y, xx] = best
                    else:
                        denom = total if include_pad else cnt
                        out[n, c, y, xx] = zp + _round_div(s, denom, mode) if denom > 0 else zp


@jit(parallel=True)
def _max_pool_planes(x, lowest, ph, pw, hp, wp, kh, kw, s, dh, dw, out):
    """MaxPool with equal strides s, one plane at a time: the plane is copied into a Hp x Wp plane
    filled with ``lowest`` (padded and overhanging taps never win), split into s*s phases (row % s,
    column % s) so that each tap reads one phase with unit stride, and each phase is treated as flat
    (output q = y*Wq + x reads q + off_ij; the columns x >= OW are computed and dropped): long
    unit-stride max loops that vectorize (32 lanes for 8-bit data) whatever the image size."""
    n_dim, c_dim, h, w = x.shape
    _, _, oh, ow = out.shape
    hq = (hp + s - 1) // s
    wq = (wp + s - 1) // s
    span = (oh - 1) * wq + ow
    for nc in prange(n_dim * c_dim):
        n = nc // c_dim
        c = nc % c_dim
        plane = np.full(s * s * hq * wq, lowest, x.dtype)
        for iy in range(h):
            src = x[n, c, iy]
            r = iy + ph
            for rx in range(s):
                t0 = (pw - rx + s - 1) // s
                t1 = (pw + w - rx + s - 1) // s
                dst0 = np.uint64(((r % s) * s + rx) * hq * wq + (r // s) * wq + t0)
                src0 = np.uint64(rx + s * t0 - pw)
                step = np.uint64(s)
                for u in range(np.uint64(max(0, t1 - t0))):
                    plane[dst0 + u] = src[src0 + step * u]
        acc = np.full(span, lowest, x.dtype)
        for i in range(kh):
            for j in range(kw):
                ri, cj = i * dh, j * dw
                off = np.uint64(((ri % s) * s + cj % s) * hq * wq + (ri // s) * wq + cj // s)
                for q in range(np.uint64(span)):
                    acc[q] = max(acc[q], plane[q + off])
        for y in range(oh):
            dst = out[n, c, y]
            for t in range(ow):
                dst[t] = acc[y * wq + t]


def _prep(x, kernel, strides, pads, dilations, ceil_mode):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise HwsimError(f"pooling expects an integer tensor, found {x.dtype}")
    one_d = x.ndim == 3
    if one_d:
        x = x[:, :, None, :]
        kernel, strides, dilations = (1,) + tuple(kernel), (1,) + tuple(strides), (1,) + tuple(dilations)
        pads = (0, pads[0], 0, pads[1])
    if x.ndim != 4:
        raise HwsimError(f"pooling expects NCHW or NCW input, found shape {x.shape}")
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    ph, pw, peh, pew = pads
    oh = _out_size(x.shape[2], kh, sh, dh, ph, peh, ceil_mode)
    ow = _out_size(x.shape[3], kw, sw, dw, pw, pew, ceil_mode)
    return x, one_d, (kh, kw, sh, sw, dh, dw, ph, pw, oh, ow, peh, pew)


def max_pool(x, kernel, strides, pads, dilations=None, ceil_mode=0) -> np.ndarray:
    dilations = dilations or (1,) * len(kernel)
    xs, one_d, geo = _prep(x, kernel, strides, pads, dilations, ceil_mode)
    out = np.empty(xs.shape[:2] + geo[8:10], xs.dtype)
    lowest = int(np.iinfo(xs.dtype).min)
    kh, kw, sh, sw, dh, dw, ph, pw, oh, ow = geo[:10]
    if sh == sw and out.size:  # vectorized plane kernel (same result as the generic loop)
        hp = max(xs.shape[2] + ph, (oh - 1) * sh + (kh - 1) * dh + 1)
        wp = max(xs.shape[3] + pw, (ow - 1) * sw + (kw - 1) * dw + 1)
        _max_pool_planes(np.ascontiguousarray(xs), xs.dtype.type(lowest), ph, pw, hp, wp, kh, kw, sh, dh, dw, out)
    else:
        _pool(np.ascontiguousarray(xs), *geo, True, lowest, 0, False, 0, out)
    return out[:, :, 0, :] if one_d else out


def average_pool(x, x_zero_point, kernel, strides, pads, count_include_pad, ceil_mode, rounding) -> np.ndarray:
    """zp + round_div(sum over counted taps of (x - zp), n): padded taps contribute 0 (int64 result)."""
    xs, one_d, geo = _prep(x, kernel, strides, pads, (1,) * len(kernel), ceil_mode)
    out = np.empty(xs.shape[:2] + geo[8:10], np.int64)
    _pool(np.ascontiguousarray(xs), *geo, False, 0, int(x_zero_point), bool(count_include_pad), ROUNDINGS[rounding], out)
    return out[:, :, 0, :] if one_d else out


def reduce_sum_acc(x, axes) -> np.ndarray:
    """Exact int64 sums over ``axes`` (dimensions kept)."""
    return np.asarray(x).astype(np.int64).sum(axis=tuple(axes), keepdims=True)


@jit
def _row_sums(x2, out):
    for r in range(x2.shape[0]):
        row = x2[r]
        t = np.int64(0)
        for i in range(row.shape[0]):
            t += np.int64(row[i])
        out[r] = t


def plane_sums(x) -> np.ndarray:
    """Exact int64 sums of each [N, C] plane of an N, C, ... integer tensor, shape [N, C] (one pass,
    no int64 copy of x).

    >>> plane_sums(np.arange(8, dtype=np.uint8).reshape(1, 2, 2, 2))
    array([[ 6, 22]])
    """
    x = np.ascontiguousarray(x)
    if x.ndim < 3:
        raise HwsimError(f"global pooling needs an [N, C, spatial...] tensor, found shape {x.shape}")
    out = np.empty(x.shape[:2], np.int64)
    _row_sums(x.reshape(x.shape[0] * x.shape[1], -1), out.reshape(-1))
    return out
