"""Parameters shared by the integer ops, computed once at plan time."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..fixedpoint import quantize_multipliers
from ..kernels.requant import requantize_accumulator
from ..program import LayerStats
from ..target import Target


@dataclass
class Requant:
    """acc (int64, scale s_x*s_w[c]) -> output integers at (s_y, zp_y), clamped to [lo, hi].

    Saturation counts the values beyond the output dtype's range that the fused activation's clamp
    does not explain (:func:`saturation_bounds`).

    ``fixed_point``: per-channel (multiplier, shift) from the real ratio formed in the target's
    ``ratio_precision``; ``float32``: a float32 ratio per channel.
    """

    form: str
    rounding: str
    multipliers: np.ndarray | None
    shifts: np.ndarray | None
    scales: np.ndarray | None
    zero_point: int
    qmin: int  # saturation is counted outside [qmin, qmax]: the output dtype's range, or wider on a side
    qmax: int  # that a fused activation explains (runtime.plan.Planner.saturation_bounds)
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

    def apply(self, acc: np.ndarray, axis: int, stats: LayerStats, out_dtype, acc_bits: int = 64,
              acc_policy: str = "saturate") -> np.ndarray:
        """The accumulator policy, requantization, saturation count and clamp in one pass
        (:func:`runtime.kernels.requant.requantize_accumulator`); returns ``out_dtype`` integers and
        adds the overflow and saturation counts (rule: :func:`saturation_bounds`) to ``stats``."""
        params = (self.multipliers, self.shifts) if self.form == "fixed_point" else self.scales
        c_lo, c_hi = saturation_bounds(self.qmin, self.qmax, self.lo, self.hi)
        y, sat, over = requantize_accumulator(acc, self.form, self.rounding, params, axis, self.zero_point,
                                              self.lo, self.hi, c_lo, c_hi, out_dtype, acc_bits, acc_policy)
        stats.saturation += sat
        stats.overflow += over
        return y


NO_COUNT = 1 << 62  # a saturation bound no requantized value reaches


def saturation_bounds(qmin: int, qmax: int, lo: int, hi: int) -> tuple[int, int]:
    """The range outside which a requantized value counts as saturated: the output dtype's
    ``[qmin, qmax]``, except on a side where a fused activation narrows the clamp (``lo > qmin``:
    Relu, Clip) -- there the activation, not the dtype, decides, and nothing is counted.

    >>> saturation_bounds(-128, 127, -128, 127)  # no activation: both ends count
    (-128, 127)
    >>> saturation_bounds(-128, 127, -128 + 128, 127)[0] == -NO_COUNT  # Relu at zero point 0: low end not counted
    True
    """
    return (int(qmin) if int(lo) <= int(qmin) else -NO_COUNT), (int(qmax) if int(hi) >= int(qmax) else NO_COUNT)


def broadcast_channels(values: np.ndarray, n: int, what: str) -> np.ndarray:
    v = np.asarray(values).reshape(-1)
    if v.size == 1:
        return np.repeat(v, n)
    if v.size != n:
        raise ValueError(f"{what} has {v.size} entries, expected 1 or {n}")
    return v
