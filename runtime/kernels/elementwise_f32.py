"""ONNX Runtime's float32 QLinearAdd / QLinearMul (runtime/ORT_CPU_ARITHMETIC.md §4).

Add: ``y = clamp(rne(f32((a-za)*rA) + f32((b-zb)*rB)) + zc)`` with ``rA = f32(sa/sc)``, ``rB = f32(sb/sc)``.
Mul: ``y = clamp(rne(f32((a-za)*(b-zb)) * r) + zc)`` with ``r = f32(f32(sa*sb)/sc)``.
"""
from __future__ import annotations

import numpy as np

from ..numba_config import jit


def float32_params(kind: str, sa: np.float32, sb: np.float32, sc: np.float32) -> tuple:
    if kind == "Add":
        return (np.float32(sa / sc), np.float32(sb / sc))
    return (np.float32(np.float32(sa * sb) / sc),)


@jit
def _add(a, b, za, zb, ra, rb, zc, lo, hi, qmin, qmax, out):
    sat = 0
    for i in range(a.size):
        f = np.float32(np.float32(np.int64(a[i]) - za) * ra) + np.float32(np.float32(np.int64(b[i]) - zb) * rb)
        v = np.int64(np.rint(np.float32(f))) + zc
        if v < qmin or v > qmax:
            sat += 1
        out[i] = min(max(v, lo), hi)
    return sat


@jit
def _mul(a, b, za, zb, r, zc, lo, hi, qmin, qmax, out):
    sat = 0
    for i in range(a.size):
        p = np.float32((np.int64(a[i]) - za) * (np.int64(b[i]) - zb))
        v = np.int64(np.rint(np.float32(p * r))) + zc
        if v < qmin or v > qmax:
            sat += 1
        out[i] = min(max(v, lo), hi)
    return sat


def _run(fn, a, b, *args):
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    out = np.empty(a.shape, np.int64)
    sat = fn(np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1), *args, out.reshape(-1))
    return out, int(sat)


def add_float32(a, b, za, zb, ra, rb, zc, lo, hi, qmin, qmax):
    return _run(_add, a, b, za, zb, ra, rb, zc, lo, hi, qmin, qmax)


def mul_float32(a, b, za, zb, r, zc, lo, hi, qmin, qmax):
    return _run(_mul, a, b, za, zb, r, zc, lo, hi, qmin, qmax)
