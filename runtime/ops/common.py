"""Parameters shared by the integer ops, computed once at plan time."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..fixedpoint import INT32_MIN, INT32_MAX, quantize_multipliers
from ..kernels.epilogue import Float32Epilogue, make_epilogue, requantize_int32
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
    fast: Float32Epilogue | None = None  # float32 form whose bounds allow float32 lanes (kernels.epilogue)

    def __post_init__(self):
        if self.form == "float32" and self.fast is None:
            c_lo, c_hi = saturation_bounds(self.qmin, self.qmax, self.lo, self.hi)
            self.fast = make_epilogue(self.scales, self.zero_point, self.lo, self.hi,
                                      c_lo if c_lo > INT32_MIN else None, c_hi if c_hi < INT32_MAX else None)

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
        if self.fast is not None and acc.dtype == np.int32 and acc_bits >= 32:
            y = self._apply_fast(acc, axis, out_dtype)
            if y is not None:
                stats.saturation += y[1]
                return y[0]
        params = (self.multipliers, self.shifts) if self.form == "fixed_point" else self.scales
        c_lo, c_hi = saturation_bounds(self.qmin, self.qmax, self.lo, self.hi)
        y, sat, over = requantize_accumulator(acc, self.form, self.rounding, params, axis, self.zero_point,
                                              self.lo, self.hi, c_lo, c_hi, out_dtype, acc_bits, acc_policy)
        stats.saturation += sat
        stats.overflow += over
        return y

    def _apply_fast(self, acc: np.ndarray, axis: int, out_dtype):
        """(out, saturated) by the float32-lane epilogue on int32 accumulators (no policy applies
        below 2^31 with a 32-bit or wider accumulator), or None when the layout does not suit it
        (per-channel scales on the last axis: rows of one element)."""
        n_ch = self.fast.scales.size
        if n_ch == 1:
            acc3 = acc.reshape(1, 1, acc.size)
        else:
            ax = axis % acc.ndim
            inner = int(np.prod(acc.shape[ax + 1:], dtype=np.int64))
            if acc.shape[ax] != n_ch or inner < 16:
                return None
            acc3 = acc.reshape(-1, n_ch, inner)
        y, sat = requantize_int32(np.ascontiguousarray(acc3), self.fast, out_dtype)
        return y.reshape(acc.shape), sat


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
