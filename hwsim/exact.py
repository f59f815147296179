"""The target's integer arithmetic written in torch, for the simulator's **exact** mode.

Every function takes and returns integer-valued torch tensors (int64) and computes what the integer
runtime (``runtime/kernels``) computes, bit for bit, written independently in torch so that the
equality of the two (``tests/hwsim/test_sim_exact.py``) is a real check and not a tautology. Only the
*parameters* (multipliers, shifts, float32 ratios) come from the runtime's plan-time helpers
(:mod:`runtime.fixedpoint`, :class:`runtime.ops.common.Requant`): they are data, not arithmetic.

Exactness arguments, per primitive:

- Multiply-accumulate: integer operands (|x - z| <= 2^16, |w - z| <= 2^16) are multiplied and summed
  in float64 by torch's conv/linear. Every partial sum is an integer below 2^53 in magnitude for any
  K < 2^21 (checked), so the float64 result is the exact integer whatever the summation order.
- Fixed-point requantization (gemmlowp SRDHM, RDBPOT, TFLite MBQM in its double, single and int64
  builds): int64 torch arithmetic; products of two int32 values fit in int64; ``>>`` on int64 tensors
  is arithmetic, ``&`` is two's complement.
- float32 requantization (ONNX Runtime MLAS): int64 -> float32 conversion (round to nearest even),
  a float32 product (one IEEE rounding), round half to even (``torch.round``), as MLAS.
- Quantize: float32 division (one IEEE rounding), then the target's tie rule on the quotient.
"""
from __future__ import annotations

import torch

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
_F64_EXACT_K = 1 << 21  # K * 2^16 * 2^16 < 2^53


def _t(v, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.int64, device=like.device)


def wrap32(x: torch.Tensor) -> torch.Tensor:
    """Two's complement wrap of int64 values to int32."""
    return ((x - INT32_MIN) & 0xFFFFFFFF) + INT32_MIN


# ------------------------------------------------------------------------------------------------
# rounding of float32 quotients
# ------------------------------------------------------------------------------------------------
def round_half(v: torch.Tensor, mode: str) -> torch.Tensor:
    """Round float values to integer-valued float64 with the named tie rule (exact tie detection:
    ``v - floor(v)`` is exact for float32 inputs, see runtime.quantize)."""
    v = v.to(torch.float64)
    if mode == "half_to_even":
        return torch.round(v)
    f = torch.floor(v)
    d = v - f
    up = d > 0.5
    tie = d == 0.5
    if mode == "half_away_from_zero":
        up = up | (tie & (f >= 0))
    elif mode == "half_up":
        up = up | tie
    elif mode != "half_down":
        raise ValueError(f"unknown rounding {mode!r}")
    return f + up.to(torch.float64)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
             rounding: str) -> torch.Tensor:
    """``clamp(round(float32(x) / s) + z, qmin, qmax)`` as runtime.quantize (scale/zp broadcastable)."""
    v = x.to(torch.float32) / scale.to(torch.float32)
    r = round_half(v, rounding)
    lo = (qmin - zero_point).to(torch.float64)
    hi = (qmax - zero_point).to(torch.float64)
    r = torch.minimum(torch.maximum(r, lo), hi)
    return r.to(torch.int64) + zero_point


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``float32(q - z) * s`` in float32 (ONNX Runtime's DequantizeLinear)."""
    return (q - zero_point).to(torch.float32) * scale.to(torch.float32)


# ------------------------------------------------------------------------------------------------
# fixed-point requantization (gemmlowp / TFLite)
# ------------------------------------------------------------------------------------------------
def srdhm(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """SaturatingRoundingDoublingHighMul(a, m) for int32 a and 0 <= m < 2^31 (no saturation case)."""
    p = a * m
    s = p + torch.where(p >= 0, _t(1 << 30, p), _t(1 - (1 << 30), p))
    return torch.where(s >= 0, s >> 31, -((-s) >> 31))


def rdbpot(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """RoundingDivideByPOT(x, e), 0 <= e <= 31: ties away from zero."""
    one = _t(1, x)
    mask = (one << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (x < 0).to(torch.int64)
    return (x >> e) + (rem > thr).to(torch.int64)


def mbqm(x: torch.Tensor, m: torch.Tensor, e: torch.Tensor, rounding: str) -> torch.Tensor:
    """TFLite MultiplyByQuantizedMultiplier (``double`` / ``single`` / ``int64`` builds), as
    runtime.fixedpoint: int32 x for double/single, |x| < 2^47 for int64."""
    one = _t(1, x)
    if rounding == "single":
        t = 31 - e
        return wrap32((x * m + (one << (t - 1))) >> t)
    if rounding == "int64":
        m16 = torch.where(m < 0x7FFF0000, (m + 32768) >> 16, _t(0x7FFF, m))
        t = 15 - e
        return wrap32((x * m16 + (one << (t - 1))) >> t)
    left = torch.clamp(e, min=0)
    right = torch.clamp(-e, min=0)
    pos = srdhm(wrap32(x << left), m)
    neg = rdbpot(srdhm(x, m), right)
    return torch.where(e > 0, pos, neg)


def requant_f32(acc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """MLAS: ``rint(float32(acc) * scale)`` as int64 (the caller adds the zero point and clamps)."""
    return torch.round(acc.to(torch.float32) * scale.to(torch.float32)).to(torch.int64)


def requantize(acc: torch.Tensor, rq, channel_dim: int) -> tuple[torch.Tensor, int]:
    """Apply a :class:`runtime.ops.common.Requant` (per-tensor or per-channel along ``channel_dim``):
    returns (clamped int64 output, number of values outside the output dtype before clamping)."""
    shape = [1] * acc.dim()
    if rq.form == "fixed_point":
        m = torch.as_tensor(rq.multipliers, dtype=torch.int64, device=acc.device)
        e = torch.as_tensor(rq.shifts, dtype=torch.int64, device=acc.device)
        if m.numel() > 1:
            shape[channel_dim] = m.numel()
            m, e = m.reshape(shape), e.reshape(shape)
        y = torch.clamp(mbqm(acc, m, e, rq.rounding) + rq.zero_point, INT32_MIN, INT32_MAX)
    else:
        s = torch.as_tensor(rq.scales, dtype=torch.float32, device=acc.device)
        if s.numel() > 1:
            shape[channel_dim] = s.numel()
            s = s.reshape(shape)
        r = requant_f32(acc, s)
        y = torch.clamp(r, INT32_MIN - rq.zero_point, INT32_MAX - rq.zero_point) + rq.zero_point
    sat = int(((y < rq.qmin) | (y > rq.qmax)).sum())
    return torch.clamp(y, rq.lo, rq.hi), sat


def accumulator(acc: torch.Tensor, bits: int, policy: str, where: str = "") -> tuple[torch.Tensor, int]:
    """The target's accumulator width and overflow policy on the exact sum (runtime.kernels.mac)."""
    if bits >= 64:
        return acc, 0
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    over = (acc < lo) | (acc > hi)
    n = int(over.sum())
    if not n:
        return acc, 0
    if policy == "error":
        from runtime.errors import OverflowPolicyError

        idx = tuple(int(i) for i in torch.nonzero(over)[0])
        raise OverflowPolicyError(f"{where}: accumulator overflow at element {idx}: {int(acc[idx])} is outside "
                                  f"the {bits}-bit range [{lo}, {hi}] ({n} elements overflow)")
    if policy == "saturate":
        return torch.clamp(acc, lo, hi), n
    return ((acc - lo) & ((1 << bits) - 1)) + lo, n


# ------------------------------------------------------------------------------------------------
# multiply-accumulate
# ------------------------------------------------------------------------------------------------
def _check_k(k: int, what: str) -> None:
    if k >= _F64_EXACT_K:
        raise ValueError(f"{what}: reduction length {k} is too long for exact float64 accumulation")


def _pair_sum(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_j sat16(a[..., 2j]*w[o, 2j] + a[..., 2j+1]*w[o, 2j+1]) for a [M, K] raw, w [O, K] raw -> [M, O].

    ONNX Runtime's AVX2 u8 x s8 ``vpmaddubsw`` (runtime/ORT_CPU_ARITHMETIC.md); an odd K pairs the last
    product with 0. Chunked over M to bound memory."""
    k = a.shape[1]
    if k % 2:
        a = torch.nn.functional.pad(a, (0, 1))
        w = torch.nn.functional.pad(w, (0, 1))
    ae, ao = a[:, 0::2].to(torch.int32), a[:, 1::2].to(torch.int32)
    we, wo = w[:, 0::2].to(torch.int32), w[:, 1::2].to(torch.int32)
    out = torch.empty((a.shape[0], w.shape[0]), dtype=torch.int64, device=a.device)
    k2 = ae.shape[1]
    step = max(1, (1 << 22) // max(1, w.shape[0] * k2))
    for i in range(0, a.shape[0], step):
        p = ae[i:i + step, None, :] * we[None] + ao[i:i + step, None, :] * wo[None]
        out[i:i + step] = torch.clamp(p, -32768, 32767).sum(-1, dtype=torch.int64)
    return out


def gemm_acc(x: torch.Tensor, zx: int, w: torch.Tensor, zw: torch.Tensor, bias: torch.Tensor | None,
             pair_saturation: bool = False) -> torch.Tensor:
    """bias[o] + sum_k (x[m, k] - zx)(w[o, k] - zw[o]) exactly; x [M, K], w [O, K] raw integers."""
    _check_k(x.shape[1], "Gemm")
    if pair_saturation:
        raw = _pair_sum(x, w)
        k = x.shape[1]
        acc = raw - zx * w.sum(1)[None, :] - x.sum(1, keepdim=True) * zw[None, :] + k * zx * zw[None, :]
    else:
        xc = (x - zx).to(torch.float64)
        wc = (w - zw[:, None]).to(torch.float64)
        acc = torch.nn.functional.linear(xc, wc).to(torch.int64)
    if bias is not None:
        acc = acc + bias
    return acc


def conv_acc(x: torch.Tensor, zx: int, w: torch.Tensor, zw: torch.Tensor, bias: torch.Tensor | None,
             stride, padding, dilation, groups: int, pair_saturation: bool = False,
             pair_order: str = "hwc") -> torch.Tensor:
    """ONNX Conv accumulators on raw NCHW integers; ``padding`` = (top, left, bottom, right); padded taps
    hold the raw zero point (contribute 0 after centring)."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    _check_k(cg * kh * kw, "Conv")
    pt, pl, pb, pr = padding
    xp = torch.nn.functional.pad(x, (pl, pr, pt, pb), value=zx)
    if not pair_saturation:
        xc = (xp - zx).to(torch.float64)
        wc = (w - zw.reshape(-1, 1, 1, 1)).to(torch.float64)
        acc = torch.nn.functional.conv2d(xc, wc, None, stride, 0, dilation, groups).to(torch.int64)
    else:
        oh = (h + pt + pb - ((kh - 1) * dilation[0] + 1)) // stride[0] + 1
        ow = (wd + pl + pr - ((kw - 1) * dilation[1] + 1)) // stride[1] + 1
        mg = m // groups
        acc = torch.empty((n, m, oh, ow), dtype=torch.int64, device=x.device)
        for g in range(groups):
            xg = xp[:, g * cg:(g + 1) * cg].to(torch.float64)
            cols = torch.nn.functional.unfold(xg, (kh, kw), dilation=dilation, stride=stride)  # [N, cg*kh*kw, L]
            cols = cols.round().to(torch.int64)
            wg = w[g * mg:(g + 1) * mg]
            if pair_order == "hwc":  # reduction index (kh, kw, c), c fastest
                cols = cols.reshape(n, cg, kh * kw, -1).transpose(1, 2).reshape(n, cg * kh * kw, -1)
                wt = wg.permute(0, 2, 3, 1).reshape(mg, -1)
            else:
                wt = wg.reshape(mg, -1)
            a = cols.transpose(1, 2).reshape(-1, cg * kh * kw)
            accg = gemm_acc(a, zx, wt, zw[g * mg:(g + 1) * mg], None, True)
            acc[:, g * mg:(g + 1) * mg] = accg.reshape(n, oh, ow, mg).permute(0, 3, 1, 2)
    if bias is not None:
        acc = acc + bias.reshape(1, -1, 1, 1)
    return acc


# ------------------------------------------------------------------------------------------------
# elementwise and pooling
# ------------------------------------------------------------------------------------------------
def add_fixed_point(a, b, z1, z2, left_shift, m1, e1, m2, e2, mo, eo, zo, rounding):
    """TFLite integer Add (runtime.kernels.elementwise): unclamped int64 result."""
    x = (a - z1) << left_shift
    y = (b - z2) << left_shift
    s = mbqm(x, _t(m1, x), _t(e1, x), rounding) + mbqm(y, _t(m2, y), _t(e2, y), rounding)
    return mbqm(s, _t(mo, s), _t(eo, s), rounding) + zo


def mul_fixed_point(a, b, z1, z2, m, e, zo, rounding):
    p = (a - z1) * (b - z2)
    return mbqm(p, _t(m, p), _t(e, p), rounding) + zo


def add_float32(a, b, za, zb, ra, rb, zc):
    """ONNX Runtime's QLinearAdd: ``rne(fma(a, rA, fma(b, rB, C)))`` on raw operands, with the fused
    multiply-add emulated as runtime.kernels.elementwise_f32 does (float64 product and sum, one
    float32 rounding)."""
    import numpy as np

    c = np.float32(np.float32(zc) - np.float32(np.float32(ra * np.float32(za)) + np.float32(rb * np.float32(zb))))
    inner = (b.to(torch.float32).to(torch.float64) * float(rb) + float(c)).to(torch.float32)
    f = (a.to(torch.float32).to(torch.float64) * float(ra) + inner.to(torch.float64)).to(torch.float32)
    return torch.round(f).to(torch.int64)


def mul_float32(a, b, za, zb, r, zc):
    p = ((a - za) * (b - zb)).to(torch.float32)
    return torch.round(p * float(r)).to(torch.float32).to(torch.int64) + zc


def round_div(s: torch.Tensor, n: torch.Tensor, mode: str) -> torch.Tensor:
    """round(s / n) for n > 0 in integers (runtime.kernels.pooling._round_div)."""
    q = torch.div(s, n, rounding_mode="floor")
    r = s - q * n
    if mode == "floor":
        return q
    if mode == "trunc":
        return q + ((s < 0) & (r != 0)).to(torch.int64)
    twice = 2 * r
    up = twice > n
    tie = twice == n
    if mode == "half_away_from_zero":
        up = up | (tie & (s > 0))
    elif mode == "half_to_even":
        up = up | (tie & (q % 2 != 0))
    else:  # half_up
        up = up | tie
    return q + up.to(torch.int64)
