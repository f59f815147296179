"""Parameters shared by the integer ops, computed once at plan time."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..fixedpoint import quantize_multipliers
from ..kernels.requant import requantize_fixed_point, requantize_float32
from ..program import LayerStats
from ..target import Target


@dataclass
class Requant:
    """acc (int64, scale s_x*s_w[c]) -> output integers at (s_y, zp_y), clamped to [lo, hi].

    ``fixed_point``: per-channel (multiplier, shift) from the real ratio formed in the target's
    ``ratio_precision``; ``float32``: a float32 ratio per channel.
    """

    form: str
    rounding: str
    multipliers: np.ndarray | None
    shifts: np.ndarray | None
    scales: np.ndarray | None
    zero_point: int
    qmin: int  # the output dtype's range (saturation is counted against it)
    qmax: int
    lo: int  # the clamp actually applied (fused activations narrow it)
    hi: int

    @classmethod
    def prepare(cls, target: Target, s_x, s_w, s_y, zero_point: int, qmin: int, qmax: int,
                lo: int | None = None, hi: int | None = None, extra: float = 1.0) -> "Requant":
        """Requantization of an accumulator at scale s_x * s_w (s_w per channel or scalar) to s_y."""
        r = target.arithmetic.requant
        s_x = np.float32(s_x)
        s_w = np.atleast_1d(np.asarray(s_w, np.float32))
        s_y = np.float32(s_y)
        lo = qmin if lo is None else lo
        hi = qmax if hi is None else hi
        if r.ratio_precision == "float64":
            real = s_x.astype(np.float64) * s_w.astype(np.float64) / np.float64(s_y) * extra
        else:
            real32 = (s_x * s_w).astype(np.float32) / s_y
            real = (real32 * np.float32(extra)).astype(np.float32).astype(np.float64)
        if r.form == "fixed_point":
            m, e = quantize_multipliers(real)
            return cls("fixed_point", r.rounding, np.asarray(m, np.int64), np.asarray(e, np.int64), None,
                       int(zero_point), qmin, qmax, lo, hi)
        scales = real.astype(np.float32)
        return cls("float32", r.rounding, None, None, scales, int(zero_point), qmin, qmax, lo, hi)

    def apply(self, acc: np.ndarray, axis: int, stats: LayerStats) -> np.ndarray:
        """Requantize, count dtype saturation, apply the clamp; returns int64."""
        wide_lo, wide_hi = -(1 << 31), (1 << 31) - 1  # unclamped, to count saturation
        if self.form == "fixed_point":
            y = requantize_fixed_point(acc, self.multipliers, self.shifts, axis, self.zero_point,
                                       wide_lo, wide_hi, self.rounding)
        else:
            y = requantize_float32(acc, self.scales, axis, self.zero_point, wide_lo, wide_hi)
        y = np.asarray(y, np.int64)
        stats.saturation += int(np.count_nonzero((y < self.qmin) | (y > self.qmax)))
        return np.clip(y, self.lo, self.hi)


def broadcast_channels(values: np.ndarray, n: int, what: str) -> np.ndarray:
    v = np.asarray(values).reshape(-1)
    if v.size == 1:
        return np.repeat(v, n)
    if v.size != n:
        raise ValueError(f"{what} has {v.size} entries, expected 1 or {n}")
    return v
