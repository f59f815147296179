"""Slow, obvious reference of the integer LSTM and GRU (runtime/RECURRENT_ARITHMETIC.md), in Python ints.

Written from the definition, not from the kernel: the gate FCs use the centred sums
``b + sum (x - zp_x) * W`` (the kernel uses TFLite's folded bias and raw products), the gemmlowp int16
functions are re-derived here on Python ints with explicit int16 wrapping, the int32 MBQM comes from
tests/reference_kernels.py and the int64 MBQM of the 16-bit variant is written out here. The Numba
kernels must equal this bit for bit.
"""
from __future__ import annotations

import numpy as np

from tests.reference_kernels import mbqm_ref


def wrap16(v: int) -> int:
    return (v + 2**15) % 2**16 - 2**15


def sat16(v: int) -> int:
    return min(max(v, -(2**15)), 2**15 - 1)


def wrap32(v: int) -> int:
    return (v + 2**31) % 2**32 - 2**31


def tdiv(a: int, b: int) -> int:
    """C division (truncates toward zero), b > 0."""
    q = abs(a) // b
    return q if a >= 0 else -q


def rdbpot(x: int, e: int) -> int:
    """round(x / 2^e), ties away from zero (gemmlowp RoundingDivideByPOT)."""
    if e == 0:
        return x
    q, r = divmod(abs(x), 2**e)
    q += 1 if 2 * r >= 2**e else 0
    return q if x >= 0 else -q


def srdhm16(a: int, b: int) -> int:
    if a == b == -(2**15):
        return 2**15 - 1
    p = a * b
    return wrap16(tdiv(p + (2**14 if p >= 0 else 1 - 2**14), 2**15))


def sat_shl16(x: int, e: int) -> int:
    return sat16(x * 2**e)


def c16(raw32: int) -> int:
    return rdbpot(raw32, 16)


def exp_interval16(a: int) -> int:
    """exp(a), a in [-1/4, 0) as Q0.15: Taylor series around -1/8."""
    x = wrap16(a + 2**12)
    x2 = srdhm16(x, x)
    x3 = srdhm16(x2, x)
    x4 = srdhm16(x2, x2)
    poly = rdbpot(wrap16(srdhm16(wrap16(rdbpot(x4, 2) + x3), c16(715827883)) + x2), 1)
    k = c16(1895147668)
    return sat16(k + srdhm16(k, wrap16(x + poly)))


def exp_neg16(a: int, ibits: int) -> int:
    """exp(a) for raw a <= 0 in Q(ibits).(15 - ibits); result Q0.15."""
    frac = 15 - ibits
    quarter = 2 ** (frac - 2)
    r = wrap16((a & (quarter - 1)) - quarter)
    res = exp_interval16(sat_shl16(r, ibits))
    rem = wrap16(r - a)
    table = {-2: 1672461947, -1: 1302514674, 0: 790015084, 1: 290630308, 2: 39332535, 3: 720401, 4: 242}
    for k in sorted(table):
        if ibits > k and rem & (1 << (frac + k)):
            res = srdhm16(res, c16(table[k]))
    if ibits > 5 and a < -32 * 2**frac:
        res = 0
    return 2**15 - 1 if a == 0 else res


def newton16(a: int) -> int:
    """Q2.13 approximation of 2 / (1 + a) for Q0.15 a (Newton-Raphson, 3 steps)."""
    s = a + 2**15 - 1
    hd = wrap16(tdiv(s + (1 if s >= 0 else -1), 2))
    x = wrap16(c16(1515870810) + srdhm16(hd, c16(-1010580540)))
    for _ in range(3):
        x = wrap16(x + sat_shl16(srdhm16(x, wrap16(2**13 - srdhm16(hd, x))), 2))
    return x


def logistic16(a: int, ibits: int = 3) -> int:
    if a == 0:
        return c16(2**30)
    m = a if a > 0 else wrap16(-a)
    pos = sat_shl16(newton16(exp_neg16(wrap16(-m), ibits)), 1)
    return pos if a > 0 else wrap16(2**15 - 1 - pos)


def tanh16(a: int, ibits: int) -> int:
    if a == 0:
        return 0
    n = a if a < 0 else wrap16(-a)
    t = sat_shl16(wrap16(newton16(exp_neg16(n, ibits + 1)) - 2**13), 2)
    return wrap16(-t) if a < 0 else t


def mbqm64(x: int, m: int, e: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier(int64 x): 15-bit multiplier, one rounding (ties toward +inf)."""
    m16 = (m + 2**15) // 2**16 if m < 0x7FFF0000 else 0x7FFF
    t = 15 - e
    return wrap32((x * m16 + 2 ** (t - 1)) // 2**t)


def requant(x: int, m: int, e: int, rounding: str) -> int:
    """The MBQM named by a params' ``rounding``."""
    if rounding == "int64":
        return mbqm64(x, m, e)
    return mbqm_ref(x, m, e, rounding == "single")


def _fcs(p, xt, h):
    """Per gate g and cell j: (a, u) = (MBQM(b + sum (x - zp_x) Wx), MBQM(rb + sum (h - zp_h) Wh)), unclamped."""
    n_gates, hid, n_in = p.input_weights.shape
    wx = p.input_weights.astype(np.int64).tolist()
    wh = p.recurrent_weights.astype(np.int64).tolist()
    b = p.bias.astype(np.int64).tolist()
    rb = p.recurrent_bias.astype(np.int64).tolist()
    zx, zh = p.input_zero_point, p.hidden_zero_point
    a = [[0] * hid for _ in range(n_gates)]
    u = [[0] * hid for _ in range(n_gates)]
    for g in range(n_gates):
        for j in range(hid):
            acc_x = b[g][j] + sum((xt[d] - zx) * wx[g][j][d] for d in range(n_in))
            acc_h = rb[g][j] + sum((h[k] - zh) * wh[g][j][k] for k in range(hid))
            a[g][j] = requant(acc_x, int(p.input_multipliers[g, j]), int(p.input_shifts[g, j]), p.rounding)
            u[g][j] = requant(acc_h, int(p.recurrent_multipliers[g, j]), int(p.recurrent_shifts[g, j]), p.rounding)
    return a, u


def lstm_ref(x, h0, c0, p):
    """The integer LSTM by definition; ``p`` an LstmQuantParams. Returns (y, h_T, c_T) as int64 arrays."""
    x = np.asarray(x)
    steps, batch, _ = x.shape
    hid = p.hidden_size
    shift_c = 30 + p.cell_scale_log2
    y = np.zeros((steps, batch, hid), np.int64)
    h_all = np.zeros((batch, hid), np.int64)
    c_all = np.zeros((batch, hid), np.int64)
    for n in range(batch):
        h = [int(v) for v in h0[n]]
        c = [int(v) for v in c0[n]]
        for t in range(steps):
            a, u = _fcs(p, [int(v) for v in x[t, n]], h)
            gate = [[0] * hid for _ in range(4)]
            for g in range(4):
                for j in range(hid):
                    z = sat16(wrap32(u[g][j] + sat16(a[g][j])))
                    gate[g][j] = tanh16(z, 3) if g == 3 else logistic16(z, 3)
            i_g, o_g, f_g, g_g = gate
            for j in range(hid):
                cj = sat16(wrap16(rdbpot(f_g[j] * c[j], 15)) + wrap16(rdbpot(i_g[j] * g_g[j], shift_c)))
                if p.cell_clip > 0:
                    cj = min(max(cj, -p.cell_clip), p.cell_clip)
                c[j] = cj
            for j in range(hid):
                v = requant(o_g[j] * tanh16(c[j], 15 + p.cell_scale_log2), p.hidden_multiplier, p.hidden_shift,
                            p.rounding) + p.hidden_zero_point
                h[j] = min(max(v, p.hidden_qmin), p.hidden_qmax)
                y[t, n, j] = h[j]
        h_all[n] = h
        c_all[n] = c
    return y, h_all, c_all


def gru_ref(x, h0, p):
    """The integer GRU by definition; ``p`` a GruQuantParams. Returns (y, h_T) as int64 arrays."""
    x = np.asarray(x)
    steps, batch, _ = x.shape
    hid = p.hidden_size
    zh = p.hidden_zero_point
    y = np.zeros((steps, batch, hid), np.int64)
    h_all = np.zeros((batch, hid), np.int64)
    for n in range(batch):
        h = [int(v) for v in h0[n]]
        s = [sat16(requant(v - zh, p.state_in_multiplier, p.state_in_shift, p.rounding)) for v in h]
        for t in range(steps):
            a, u = _fcs(p, [int(v) for v in x[t, n]], h)
            for j in range(hid):
                z = logistic16(sat16(sat16(a[0][j]) + sat16(u[0][j])), 3)
                r = logistic16(sat16(sat16(a[1][j]) + sat16(u[1][j])), 3)
                cand = tanh16(sat16(sat16(a[2][j]) + rdbpot(r * sat16(u[2][j]), 15)), 3)
                s[j] = sat16(cand + rdbpot(z * (s[j] - cand), 15))  # (1 - z) * n + z * s
            for j in range(hid):
                v = requant(s[j], p.state_out_multiplier, p.state_out_shift, p.rounding) + zh
                h[j] = min(max(v, p.hidden_qmin), p.hidden_qmax)
                y[t, n, j] = h[j]
        h_all[n] = h
    return y, h_all
