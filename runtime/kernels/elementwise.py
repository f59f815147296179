"""Integer Add and Mul with TFLite's fixed-point rescale rule.

Add (TFLite ``add.h``): both centred inputs are shifted left by ``left_shift`` bits, rescaled to a
common scale 2*max(s1, s2) with ``MBQM``, summed in int32, and requantized to the output:
``out = clamp(MBQM(MBQM((x1-z1) << ls, M1, e1) + MBQM((x2-z2) << ls, M2, e2), Mo, eo) + zo)``.
Mul (TFLite ``mul.h``): ``out = clamp(zo + MBQM((x1-z1)*(x2-z2), M, e))``.
Inputs are broadcast numpy-style by the caller (``np.broadcast_arrays``); kernels see flat arrays.
"""
from __future__ import annotations

import numpy as np

from ..fixedpoint import mbqm_scalar
from ..numba_config import jit


@jit
def _add_fp(a, b, z1, z2, ls, m1, e1, m2, e2, mo, eo, zo, lo, hi, qmin, qmax, single, out):
    sat = 0
    for i in range(a.size):
        x = (np.int64(a[i]) - z1) << ls
        y = (np.int64(b[i]) - z2) << ls
        s = mbqm_scalar(x, m1, e1, single) + mbqm_scalar(y, m2, e2, single)
        v = mbqm_scalar(s, mo, eo, single) + zo
        if v < qmin or v > qmax:
            sat += 1
        out[i] = min(max(v, lo), hi)
    return sat


@jit
def _mul_fp(a, b, z1, z2, m, e, zo, lo, hi, qmin, qmax, single, out):
    sat = 0
    for i in range(a.size):
        p = (np.int64(a[i]) - z1) * (np.int64(b[i]) - z2)
        v = mbqm_scalar(p, m, e, single) + zo
        if v < qmin or v > qmax:
            sat += 1
        out[i] = min(max(v, lo), hi)
    return sat


def add_fixed_point(a, b, z1, z2, left_shift, m1, e1, m2, e2, mo, eo, zo, lo, hi, qmin, qmax, single):
    """TFLite integer Add on broadcast integer arrays; returns (int64 result, saturation count)."""
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    out = np.empty(a.shape, np.int64)
    sat = _add_fp(np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1), z1, z2, left_shift,
                  m1, e1, m2, e2, mo, eo, zo, lo, hi, qmin, qmax, single, out.reshape(-1))
    return out, int(sat)


def mul_fixed_point(a, b, z1, z2, m, e, zo, lo, hi, qmin, qmax, single):
    """TFLite integer Mul on broadcast integer arrays; returns (int64 result, saturation count)."""
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    out = np.empty(a.shape, np.int64)
    sat = _mul_fp(np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1), z1, z2, m, e, zo,
                  lo, hi, qmin, qmax, single, out.reshape(-1))
    return out, int(sat)
