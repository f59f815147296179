"""Integer LSTM and GRU kernels over time steps and their int16 non-linearities.

The LSTM is TFLite's fully integer LSTM (8x8_16; and 16x8_16: int16 activations, int64 accumulators and
MBQM); the GRU is this project's definition by analogy. The arithmetic is specified in
``runtime/RECURRENT_ARITHMETIC.md``; plan-time parameters come from :func:`runtime.recurrent.prepare_lstm`
and :func:`runtime.recurrent.prepare_gru`. The ``@jit`` cores see only integer arrays and numbers.
``MBQM`` below is the parameters' ``rounding``: the int32 MBQM with double or single rounding, or the
int64 MBQM (15-bit multiplier) of the 16-bit variant.

LSTM, per time step t and batch row n (gate order i, o, f, c as ONNX; all gates read h_{t-1}):

- gate FCs, per gate g and cell j (int64 sums; TFLite's folded biases ``bx = b - zp_x*rowsum(Wx)``,
  ``bh = rb - zp_h*rowsum(Wh)``, then raw products):
  ``a = clamp16(MBQM(bx[g,j] + sum_d x[d]*Wx[g,j,d], Mx[g,j], ex[g,j]))``;
  ``z = clamp16(wrap32(MBQM(bh[g,j] + sum_k h[k]*Wh[g,j,k], Mh[g,j], eh[g,j]) + a))`` (Q3.12);
- ``i, o, f = logistic_int16(z; 3 integer bits)``, ``g = tanh_int16(z; 3)`` (gemmlowp, Q0.15 out);
- ``c = clamp16(wrap16(RDBPOT(f*c, 15)) + wrap16(RDBPOT(i*g, 30 + p)))``, then ``clamp(c, -clip, clip)``
  when ``clip > 0`` (cell scale ``2^p``);
- ``h = clamp(MBQM(o * tanh_int16(c; 15 + p), M_h, e_h) + zp_h, h_min, h_max)``; ``y[t] = h``.

GRU, per time step and row (gate order z, r, n; state ``s`` in Q0.15, h the quantized hidden state):

- ``a_g = clamp16(MBQM(bx[g,j] + sum x*Wx[g,j]))``, ``u_g = clamp16(MBQM(bh[g,j] + sum h*Wh[g,j]))`` (Q3.12);
- ``z = logistic_int16(clamp16(a_z + u_z); 3)``, ``r = logistic_int16(clamp16(a_r + u_r); 3)``;
- ``n = tanh_int16(clamp16(a_n + RDBPOT(r*u_n, 15)); 3)``;
- ``s = clamp16(n + RDBPOT(z*(s - n), 15))`` (``s`` starts at ``clamp16(MBQM(h0 - zp_h, M_in, e_in))``);
- ``h = clamp(MBQM(s, M_out, e_out) + zp_h, h_min, h_max)``; ``y[t] = h``.

The gemmlowp int16 primitives (``fixedpoint/fixedpoint.h``, ``FixedPoint<int16_t, I>``): plain
``+``/``-``/negation wrap modulo 2^16, ``*`` is the int16 SaturatingRoundingDoublingHighMul, constants
are the int32 constants rounded by ``RDBPOT(c, 16)``, the last add of the exp polynomial saturates.

>>> import numpy as np
>>> logistic_int16(np.int16([0, 4096, -4096, 32767, -32768]), 3).tolist()  # 0, 1, -1, ~8, -8 in Q3.12; sigmoid(1) * 2^15 = 23955.5
[16384, 23952, 8815, 32756, 11]
>>> tanh_int16(np.int16([0, 4096, -4096, 32767]), 3).tolist()  # tanh(1) * 2^15 = 24956.6
[0, 24964, -24964, 32767]
"""
from __future__ import annotations

import weakref

import numpy as np
from numba import prange

from ..errors import HwsimError
from ..fixedpoint import mbqm_int64_scalar, mbqm_scalar, rdbpot_scalar, wrap32_scalar
from ..numba_config import jit, threads_for
from ..recurrent import GruQuantParams, LstmQuantParams

__all__ = ["logistic_int16", "tanh_int16", "lstm_int", "gru_int",
           "logistic_int16_scalar", "tanh_int16_scalar", "srdhm16_scalar", "wrap16_scalar"]

MAX_TANH_INTEGER_BITS = 6  # TFLite's ApplyTanh dispatches integer bits 0..6 (also logistic's domain here)


def _c16(raw32: int) -> int:
    """gemmlowp RescaleConstantInitializer<int16>: an int32 Q0.31 constant rounded to Q0.15, RDBPOT(c, 16)."""
    mask = (1 << 16) - 1
    return (raw32 >> 16) + (1 if (raw32 & mask) > ((mask >> 1) + (1 if raw32 < 0 else 0)) else 0)


_EXP_M1_8 = _c16(1895147668)  # exp(-1/8), Q0.15
_ONE_THIRD = _c16(715827883)  # 1/3, Q0.15
_C48_17 = _c16(1515870810)  # 48/17, Q2.13
_CM32_17 = _c16(-1010580540)  # -32/17, Q2.13
_EXP_NEG_POW2 = ((-2, _c16(1672461947)), (-1, _c16(1302514674)), (0, _c16(790015084)), (1, _c16(290630308)),
                 (2, _c16(39332535)), (3, _c16(720401)), (4, _c16(242)))  # (k, exp(-2^k)) Q0.15
_ONE_HALF = _c16(1 << 30)  # 0.5, Q0.15


# ---------------------------------------------------------------------------------------------
# gemmlowp int16 fixed point (Numba scalar cores on int64 holding int16 values; no validation)
# ---------------------------------------------------------------------------------------------
@jit
def wrap16_scalar(x):
    """Two's-complement int16 wrap (``static_cast<int16_t>`` of a wider value)."""
    return ((np.int64(x) + 32768) & 65535) - 32768


@jit
def srdhm16_scalar(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul on int16: ``tdiv(a*b + nudge, 2^15)``, nudge ``2^14``
    (``1 - 2^14`` for a negative product), ``-32768 * -32768 -> 32767``."""
    a = np.int64(a)
    b = np.int64(b)
    if a == -32768 and b == -32768:
        return np.int64(32767)
    p = a * b
    s = p + (16384 if p >= 0 else -16383)
    return wrap16_scalar(s >> 15 if s >= 0 else -((-s) >> 15))


@jit
def _sat_shl16(x, e):
    """gemmlowp SaturatingRoundingMultiplyByPOT<e> for e > 0 on int16: ``x << e`` saturated when
    ``|x| > 2^(15-e) - 1``; e == 0 is the identity."""
    if e == 0:
        return np.int64(x)
    thr = (np.int64(1) << (15 - e)) - 1
    if x > thr:
        return np.int64(32767)
    if x < -thr:
        return np.int64(-32768)
    return np.int64(x) << e


@jit
def _exp_on_interval16(a):
    """exp(a) for a in [-1/4, 0), Q0.15 in and out (gemmlowp exp_on_interval_between_negative_one_quarter_and_0_excl)."""
    x = wrap16_scalar(a + 4096)  # a + 1/8
    x2 = srdhm16_scalar(x, x)
    x3 = srdhm16_scalar(x2, x)
    x4 = srdhm16_scalar(x2, x2)
    x4_over_4 = rdbpot_scalar(x4, 2)
    poly = rdbpot_scalar(wrap16_scalar(srdhm16_scalar(wrap16_scalar(x4_over_4 + x3), _ONE_THIRD) + x2), 1)
    s = _EXP_M1_8 + srdhm16_scalar(_EXP_M1_8, wrap16_scalar(x + poly))
    return min(max(s, -32768), 32767)  # AddSaturatingIf16Bit


@jit
def _exp_on_negative_values16(a, integer_bits):
    """exp(a) for a <= 0 given as raw Q(integer_bits).(15-integer_bits); result Q0.15."""
    frac = 15 - integer_bits
    quarter = np.int64(1) << (frac - 2)
    r = wrap16_scalar((a & (quarter - 1)) - quarter)
    result = _exp_on_interval16(_sat_shl16(r, integer_bits))
    remainder = wrap16_scalar(r - a)
    for k, ck in _EXP_NEG_POW2:
        if integer_bits > k:
            if remainder & (np.int64(1) << (frac + k)):
                result = srdhm16_scalar(result, ck)
    if integer_bits > 5:
        if a < -(np.int64(32) << frac):  # RDBPOT(-(1 << (36 - I)), 16) = -32 in Q(I)
            result = np.int64(0)
    if a == 0:
        result = np.int64(32767)
    return result


@jit
def _newton_reciprocal16(half_den):
    """Three Newton steps for 1/(2*half_den) in Q2.13 (48/17 - 32/17 * d start)."""
    x = wrap16_scalar(_C48_17 + srdhm16_scalar(half_den, _CM32_17))
    for _ in range(3):
        hdx = srdhm16_scalar(half_den, x)
        one_minus = wrap16_scalar(8192 - hdx)
        x = wrap16_scalar(x + _sat_shl16(srdhm16_scalar(x, one_minus), 2))
    return x


@jit
def _rounding_half_sum16(a, b):
    s = np.int64(a) + np.int64(b)
    t = s + (1 if s >= 0 else -1)
    return wrap16_scalar(t // 2 if t >= 0 else -((-t) // 2))


@jit
def logistic_int16_scalar(a, integer_bits):
    """gemmlowp ``logistic`` of ``FixedPoint<int16_t, integer_bits>`` raw ``a``; raw Q0.15 result in [0, 32767]."""
    a = np.int64(a)
    if a == 0:
        return np.int64(_ONE_HALF)
    abs_a = a if a > 0 else wrap16_scalar(-a)
    e = _exp_on_negative_values16(wrap16_scalar(-abs_a), integer_bits)
    x = _newton_reciprocal16(_rounding_half_sum16(e, 32767))
    pos = _sat_shl16(x, 1)  # Rescale<0>(ExactMulByPot<-1>(x)): Q1.14 -> Q0.15
    return pos if a > 0 else wrap16_scalar(32767 - pos)


@jit
def tanh_int16_scalar(a, integer_bits):
    """gemmlowp ``tanh`` of ``FixedPoint<int16_t, integer_bits>`` raw ``a``; raw Q0.15 result."""
    a = np.int64(a)
    if a == 0:
        return np.int64(0)
    n = a if a < 0 else wrap16_scalar(-a)
    e = _exp_on_negative_values16(n, integer_bits + 1)  # ExactMulByPot<1>: same raw, one more integer bit
    x = _newton_reciprocal16(_rounding_half_sum16(e, 32767))
    t = _sat_shl16(wrap16_scalar(x - 8192), 2)  # Rescale<0>(x - One): Q2.13 -> Q0.15
    return wrap16_scalar(-t) if a < 0 else t


@jit
def _apply16(x, integer_bits, which, out):
    for k in range(x.size):
        if which == 0:
            out[k] = logistic_int16_scalar(x[k], integer_bits)
        else:
            out[k] = tanh_int16_scalar(x[k], integer_bits)


def _apply_public(x, integer_bits: int, which: int, name: str, max_bits: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != np.int16:
        raise HwsimError(f"{name}: expected an int16 array (raw fixed-point values), found dtype {arr.dtype}")
    if isinstance(integer_bits, bool) or not isinstance(integer_bits, (int, np.integer)) \
            or not 0 <= int(integer_bits) <= max_bits:
        raise HwsimError(f"{name}: integer_bits must be an int in [0, {max_bits}], found {integer_bits!r}")
    flat = np.ascontiguousarray(arr).reshape(-1)
    out = np.empty(flat.shape, np.int16)
    _apply16(flat, np.int64(integer_bits), which, out)
    return out.reshape(arr.shape)


def logistic_int16(x, integer_bits: int = 3) -> np.ndarray:
    """gemmlowp int16 ``logistic``: raw ``Q(I).(15-I)`` in, ``sigmoid`` as raw Q0.15 in [0, 32767] out.

    ``real_in = x / 2^(15-I)``, ``real_out = y / 2^15``. TFLite's LSTM uses ``I = 3`` (Q3.12 gate
    pre-activations). Accuracy (all 65536 inputs, 0 <= I <= 6): within 6.8 LSB of ``2^15 * sigmoid(real_in)``;
    ``x = 0`` gives exactly 16384. Domain: ``0 <= I <= 6``.

    >>> logistic_int16(np.int16([0, 1, -1]), 3).tolist()
    [16384, 16384, 16383]
    """
    return _apply_public(x, integer_bits, 0, "logistic_int16", MAX_TANH_INTEGER_BITS)


def tanh_int16(x, integer_bits: int = 3) -> np.ndarray:
    """gemmlowp int16 ``tanh``: raw ``Q(I).(15-I)`` in, ``tanh`` as raw Q0.15 in [-32767, 32767] out.

    TFLite's LSTM uses ``I = 3`` for the cell gate and ``I = 15 + p`` (cell scale ``2^p``) for the cell
    state; ``0 <= I <= 6`` (ApplyTanh's dispatch). Odd: ``tanh(-x) = -tanh(x)`` for ``x > -32768``.
    Accuracy (all 65536 inputs, 0 <= I <= 6): within 12.1 LSB of ``2^15 * tanh(real_in)``.

    >>> tanh_int16(np.int16([2048, -2048]), 3).tolist()  # tanh(0.5) * 2^15 = 15142.9
    [15136, -15136]
    """
    return _apply_public(x, integer_bits, 1, "tanh_int16", MAX_TANH_INTEGER_BITS)


# ---------------------------------------------------------------------------------------------
# LSTM and GRU over time steps
# ---------------------------------------------------------------------------------------------
MBQM_DOUBLE, MBQM_SINGLE, MBQM_INT64 = 0, 1, 2  # the kernels' ``mode``: which MBQM (params.rounding)
_MODES = {"double": MBQM_DOUBLE, "single": MBQM_SINGLE, "int64": MBQM_INT64}


@jit
def _mbqm(x, m, e, mode):
    """The MBQM of ``mode``: int32 double (0) or single (1) rounding, or the int64 one (2, 15-bit multiplier)."""
    if mode == MBQM_INT64:
        return mbqm_int64_scalar(x, m, e)
    return mbqm_scalar(x, m, e, mode == MBQM_SINGLE)


@jit
def _clamp16(v):
    return min(max(v, -32768), 32767)


# The gate FCs are exact integer sums computed by BLAS in floating point: every product and partial
# sum of ``bias-free raw x (or h) @ W^T`` is an integer below ``K * max|x| * max|W|``, so float32 holds it
# exactly while that bound is below 2^24 and float64 below 2^53 (checked per call; the summation order
# cannot matter when every partial sum is exact). The folded bias is added in int64 afterwards.
# sigmoid/tanh are read from 65536-entry tables built from the scalar gemmlowp functions above (so equal
# to them by construction), one table per (function, integer bits).
_TABLES: dict = {}
# threads: a step of N rows x H cells runs in parallel (Numba and BLAS) only when N * H * _STEP_ELEMENTS
# reaches runtime.numba_config.PARALLEL_MIN_ELEMENTS (N * H >= 8192): smaller steps lose more to
# starting the parallel region on a shared 2-core machine than they gain
_STEP_ELEMENTS = 64


def _table(which: int, integer_bits: int) -> np.ndarray:
    key = (which, int(integer_bits))
    t = _TABLES.get(key)
    if t is None:
        t = np.empty(65536, np.int16)
        _apply16(np.arange(-32768, 32768, dtype=np.int16), np.int64(integer_bits), which, t)
        _TABLES[key] = t
    return t


def _fc_dtype(k: int, vmax: int, wmax: int):
    bound = k * vmax * wmax
    return np.float32 if bound < (1 << 24) else np.float64


def _transposed(w: np.ndarray, dtype) -> np.ndarray:
    """[G, H, K] int weights -> [K, G*H] in ``dtype`` (the right operand of ``v @ W^T``)."""
    g, h, k = w.shape
    return np.ascontiguousarray(w.reshape(g * h, k).T.astype(dtype))


def _vmax(dtype) -> int:
    info = np.iinfo(np.dtype(dtype))
    return max(abs(int(info.min)), abs(int(info.max)))


@jit
def _lstm_cell(axr, ahr, n, j, hid, bx, bh, mx, ex, mh, eh, sig, tnh3, tnhc, c, m_hid, e_hid, zp_h, h_lo, h_hi,
               cell_shift, clip, mode):
    """Cell j of row n: gates from the raw FC sums ``axr[g*H + j]``, ``ahr[g*H + j]`` (row n's); updates
    ``c[n, j]`` and returns h."""
    i_g = 0
    o_g = 0
    f_g = 0
    c_g = 0
    for g in range(4):
        col = g * hid + j
        a = _clamp16(_mbqm(np.int64(axr[col]) + bx[g, j], mx[g, j], ex[g, j], mode))
        z = _clamp16(wrap32_scalar(_mbqm(np.int64(ahr[col]) + bh[g, j], mh[g, j], eh[g, j], mode) + a))
        if g == 0:
            i_g = np.int64(sig[z + 32768])
        elif g == 1:
            o_g = np.int64(sig[z + 32768])
        elif g == 2:
            f_g = np.int64(sig[z + 32768])
        else:
            c_g = np.int64(tnh3[z + 32768])
    fc = wrap16_scalar(rdbpot_scalar(f_g * c[n, j], 15))
    ig = wrap16_scalar(rdbpot_scalar(i_g * c_g, cell_shift))
    cj = _clamp16(fc + ig)
    if clip > 0:
        cj = min(max(cj, -clip), clip)
    c[n, j] = cj
    v = _mbqm(o_g * np.int64(tnhc[cj + 32768]), m_hid, e_hid, mode) + zp_h
    return min(max(v, h_lo), h_hi)


@jit(parallel=True)
def _lstm_step(ax, ah, bx, bh, mx, ex, mh, eh, sig, tnh3, tnhc, c, m_hid, e_hid, zp_h, h_lo, h_hi, cell_shift,
               clip, mode, h, y_t):
    """One LSTM step for every row: ``ax``/``ah`` [N, 4H] the raw input/recurrent FC sums (exact
    integers in float), ``c`` [N, H] int64 updated in place, ``h`` [N, H] and ``y_t`` written."""
    batch, hid = c.shape
    for n in prange(batch):
        for j in range(hid):
            hv = _lstm_cell(ax[n], ah[n], n, j, hid, bx, bh, mx, ex, mh, eh, sig, tnh3, tnhc, c, m_hid, e_hid, zp_h,
                            h_lo, h_hi, cell_shift, clip, mode)
            h[n, j] = hv
            y_t[n, j] = hv


@jit
def _recurrent_fc(h, whi, n, acc):
    """acc[0, r] = sum_k h[n, k] * whi[r, k] (int32 lanes: the caller bounds |sum| < 2^31)."""
    rows, hid = whi.shape
    for r in range(rows):
        sm = np.int32(0)
        for k in range(hid):
            sm += np.int32(h[n, k]) * np.int32(whi[r, k])
        acc[0, r] = sm


@jit(parallel=True)
def _lstm_seq(ax, whi, bx, bh, mx, ex, mh, eh, sig, tnh3, tnhc, c, m_hid, e_hid, zp_h, h_lo, h_hi, cell_shift,
              clip, mode, h, y):
    """The whole sequence with the recurrent FC in integer loops (small batches: no per-step calls)."""
    steps, batch, _ = ax.shape
    hid = c.shape[1]
    for n in prange(batch):
        acc = np.empty((1, whi.shape[0]), np.int32)
        for t in range(steps):
            _recurrent_fc(h, whi, n, acc)
            axt = ax[t]
            for j in range(hid):
                h_new = _lstm_cell(axt[n], acc[0], n, j, hid, bx, bh, mx, ex, mh, eh, sig, tnh3, tnhc, c, m_hid, e_hid,
                                   zp_h, h_lo, h_hi, cell_shift, clip, mode)
                y[t, n, j] = h_new
            for j in range(hid):  # h of this step feeds the next only after every cell read the old one
                h[n, j] = y[t, n, j]


@jit
def _gru_cell(axr, ahr, n, j, hid, bx, bh, mx, ex, mh, eh, sig, tnh3, s, m_out, e_out, zp_h, h_lo, h_hi, mode):
    a_z = _clamp16(_mbqm(np.int64(axr[j]) + bx[0, j], mx[0, j], ex[0, j], mode))
    a_r = _clamp16(_mbqm(np.int64(axr[hid + j]) + bx[1, j], mx[1, j], ex[1, j], mode))
    a_n = _clamp16(_mbqm(np.int64(axr[2 * hid + j]) + bx[2, j], mx[2, j], ex[2, j], mode))
    u_z = _clamp16(_mbqm(np.int64(ahr[j]) + bh[0, j], mh[0, j], eh[0, j], mode))
    u_r = _clamp16(_mbqm(np.int64(ahr[hid + j]) + bh[1, j], mh[1, j], eh[1, j], mode))
    u_n = _clamp16(_mbqm(np.int64(ahr[2 * hid + j]) + bh[2, j], mh[2, j], eh[2, j], mode))
    zg = np.int64(sig[_clamp16(a_z + u_z) + 32768])
    rg = np.int64(sig[_clamp16(a_r + u_r) + 32768])
    ng = np.int64(tnh3[_clamp16(a_n + rdbpot_scalar(rg * u_n, 15)) + 32768])
    sj = _clamp16(ng + rdbpot_scalar(zg * (s[n, j] - ng), 15))
    s[n, j] = sj
    v = _mbqm(sj, m_out, e_out, mode) + zp_h
    return min(max(v, h_lo), h_hi)


@jit(parallel=True)
def _gru_step(ax, ah, bx, bh, mx, ex, mh, eh, sig, tnh3, s, m_out, e_out, zp_h, h_lo, h_hi, mode, h, y_t):
    """One GRU step for every row (gates z, r, n); ``s`` [N, H] the Q0.15 state, updated in place."""
    batch, hid = s.shape
    for n in prange(batch):
        for j in range(hid):
            hv = _gru_cell(ax[n], ah[n], n, j, hid, bx, bh, mx, ex, mh, eh, sig, tnh3, s, m_out, e_out, zp_h, h_lo,
                           h_hi, mode)
            h[n, j] = hv
            y_t[n, j] = hv


@jit(parallel=True)
def _gru_seq(ax, whi, bx, bh, mx, ex, mh, eh, sig, tnh3, s, m_out, e_out, zp_h, h_lo, h_hi, mode, h, y):
    steps, batch, _ = ax.shape
    hid = s.shape[1]
    for n in prange(batch):
        acc = np.empty((1, whi.shape[0]), np.int32)
        for t in range(steps):
            _recurrent_fc(h, whi, n, acc)
            axt = ax[t]
            for j in range(hid):
                y[t, n, j] = _gru_cell(axt[n], acc[0], n, j, hid, bx, bh, mx, ex, mh, eh, sig, tnh3, s, m_out, e_out,
                                       zp_h, h_lo, h_hi, mode)
            for j in range(hid):
                h[n, j] = y[t, n, j]


@jit
def _gru_state_in(h0, m_in, e_in, zp_h, mode, s):
    for n in range(h0.shape[0]):
        for j in range(h0.shape[1]):
            s[n, j] = _clamp16(_mbqm(np.int64(h0[n, j]) - zp_h, m_in, e_in, mode))


_SEQ_MAX_BATCH = 2  # up to this many rows: the sequence kernel (recurrent FC in integer loops)


_PREPARED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _prepared(params):
    """The weight operands of one parameter set, formed once (params are immutable) and kept while it
    lives: (input FC right operand [I, G*H] and its dtype, recurrent [H, G*H] and its dtype, int32
    recurrent weights [G*H, H] for the sequence kernel, or None when a recurrent sum may leave int32)."""
    got = _PREPARED.get(params)
    if got is None:
        wx, wh = params.input_weights, params.recurrent_weights
        wmax_x = int(np.abs(wx.astype(np.int64)).max()) if wx.size else 0
        wmax_h = int(np.abs(wh.astype(np.int64)).max()) if wh.size else 0
        vmax_h = _vmax(params.hidden_dtype)
        dx = _fc_dtype(wx.shape[2], _vmax(params.input_dtype), wmax_x)
        dh = _fc_dtype(wh.shape[2], vmax_h, wmax_h)
        g, hid, k = wh.shape
        whi = None if k * vmax_h * wmax_h >= (1 << 31) else \
            np.ascontiguousarray(wh.reshape(g * hid, k).astype(np.int32))
        got = (_transposed(wx, dx), dx, _transposed(wh, dh), dh, whi)
        _PREPARED[params] = got
    return got


def _fc_operands(x, params):
    """(raw input FC sums for every step [T, N, G*H], recurrent right operand [H, G*H], its dtype, int32
    recurrent weights or None)."""
    wxt, dx, wht, dh, whi = _prepared(params)
    steps, batch, n_in = x.shape
    ax = (x.reshape(steps * batch, n_in).astype(dx) @ wxt).reshape(steps, batch, -1)
    return ax, wht, dh, whi


def _check_state(fn: str, name: str, arr, shape: tuple, dtype) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype != np.dtype(dtype):
        raise HwsimError(f"{fn}: {name} must be {np.dtype(dtype)}, found dtype {a.dtype}")
    if a.shape != shape:
        raise HwsimError(f"{fn}: {name} must have shape {shape}, found {a.shape}")
    return np.ascontiguousarray(a)


def _check_input(fn: str, x_q, params) -> np.ndarray:
    x = np.asarray(x_q)
    n_in = params.input_size
    if x.ndim != 3 or x.shape[2] != n_in or x.shape[0] < 1:
        raise HwsimError(f"{fn}: x must have shape [T >= 1, N, {n_in}], found {x.shape}")
    if x.dtype != np.dtype(params.input_dtype):
        raise HwsimError(f"{fn}: x must be {params.input_dtype} (the input encoding's dtype), found {x.dtype}")
    return np.ascontiguousarray(x)


def _initial_h(fn: str, h0, params, batch: int) -> np.ndarray:
    h_dtype = np.dtype(params.hidden_dtype)
    shape = (batch, params.hidden_size)
    if h0 is None:
        return np.full(shape, params.hidden_zero_point, h_dtype)
    return _check_state(fn, "h0", h0, shape, h_dtype)


def lstm_int(x_q, h0, c0, params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run one integer LSTM direction over a sequence (the module docstring gives the arithmetic).

    - ``x_q``: ``[T, N, I]`` in ``params.input_dtype`` (int8, uint8 or int16), T >= 1 time steps of N
      rows; feed ``x_q[::-1]`` for a reverse direction.
    - ``h0``: ``[N, H]`` in ``params.hidden_dtype`` (or None: all ``hidden_zero_point``, i.e. 0.0);
      ``c0``: ``[N, H]`` int16 at scale ``2^p`` (or None: zeros).
    - ``params``: :class:`runtime.recurrent.LstmQuantParams` from :func:`runtime.recurrent.prepare_lstm`.

    Returns ``(y [T, N, H], h_T [N, H], c_T [N, H] int16)``; y and h_T in the hidden dtype. Exact
    integer arithmetic; equal bit for bit to ``tests/reference_recurrent.py``.
    """
    if not isinstance(params, LstmQuantParams):
        raise HwsimError(f"lstm_int: params must be an LstmQuantParams from prepare_lstm, found {type(params).__name__}")
    x = _check_input("lstm_int", x_q, params)
    batch, hid = x.shape[1], params.hidden_size
    h0 = _initial_h("lstm_int", h0, params, batch)
    c0 = np.zeros((batch, hid), np.int16) if c0 is None else _check_state("lstm_int", "c0", c0, (batch, hid), np.int16)
    h_dtype = np.dtype(params.hidden_dtype)
    y = np.empty((x.shape[0], batch, hid), h_dtype)
    p = params.cell_scale_log2
    mode = np.int64(_MODES[params.rounding])
    ax, wht, dh, whi = _fc_operands(x, params)
    sig, tnh3, tnhc = _table(0, 3), _table(1, 3), _table(1, 15 + p)
    h = np.array(h0, h_dtype)
    c = c0.astype(np.int64)
    if batch <= _SEQ_MAX_BATCH and whi is not None:  # the whole sequence in one call: no per-step overheads
        with threads_for(0):
            _lstm_seq(ax, whi, params.input_bias_folded, params.recurrent_bias_folded, params.input_multipliers,
                      params.input_shifts, params.recurrent_multipliers, params.recurrent_shifts, sig, tnh3, tnhc,
                      c, np.int64(params.hidden_multiplier), np.int64(params.hidden_shift),
                      np.int64(params.hidden_zero_point), np.int64(params.hidden_qmin), np.int64(params.hidden_qmax),
                      np.int64(30 + p), np.int64(params.cell_clip), mode, h, y)
        return y, h, c.astype(np.int16)
    with threads_for(batch * hid * _STEP_ELEMENTS):  # per-step work is small: one thread unless the batch is big
        for t in range(x.shape[0]):
            ah = h.astype(dh) @ wht
            _lstm_step(ax[t], ah, params.input_bias_folded, params.recurrent_bias_folded,
                       params.input_multipliers, params.input_shifts, params.recurrent_multipliers,
                       params.recurrent_shifts, sig, tnh3, tnhc, c, np.int64(params.hidden_multiplier),
                       np.int64(params.hidden_shift), np.int64(params.hidden_zero_point), np.int64(params.hidden_qmin),
                       np.int64(params.hidden_qmax), np.int64(30 + p), np.int64(params.cell_clip), mode, h, y[t])
    h_out, c_out = h, c.astype(np.int16)
    return y, h_out, c_out


def gru_int(x_q, h0, params) -> tuple[np.ndarray, np.ndarray]:
    """Run one integer GRU direction over a sequence (the module docstring gives the arithmetic).

    - ``x_q``: ``[T, N, I]`` in ``params.input_dtype`` (int8, uint8 or int16), T >= 1 time steps of N
      rows; feed ``x_q[::-1]`` for a reverse direction.
    - ``h0``: ``[N, H]`` in ``params.hidden_dtype`` (or None: all ``hidden_zero_point``, i.e. 0.0).
    - ``params``: :class:`runtime.recurrent.GruQuantParams` from :func:`runtime.recurrent.prepare_gru`.

    Returns ``(y [T, N, H], h_T [N, H])`` in the hidden dtype (``h_T = y[-1]``). The Q0.15 state is
    internal: it starts from h0 and is carried between steps at full precision. Exact integer
    arithmetic; equal bit for bit to ``tests/reference_recurrent.py``.
    """
    if not isinstance(params, GruQuantParams):
        raise HwsimError(f"gru_int: params must be a GruQuantParams from prepare_gru, found {type(params).__name__}")
    x = _check_input("gru_int", x_q, params)
    batch, hid = x.shape[1], params.hidden_size
    h0 = _initial_h("gru_int", h0, params, batch)
    h_dtype = np.dtype(params.hidden_dtype)
    y = np.empty((x.shape[0], batch, hid), h_dtype)
    mode = np.int64(_MODES[params.rounding])
    ax, wht, dh, whi = _fc_operands(x, params)
    sig, tnh3 = _table(0, 3), _table(1, 3)
    h = np.array(h0, h_dtype)
    s = np.empty((batch, hid), np.int64)
    _gru_state_in(h, np.int64(params.state_in_multiplier), np.int64(params.state_in_shift),
                  np.int64(params.hidden_zero_point), mode, s)
    if batch <= _SEQ_MAX_BATCH and whi is not None:
        with threads_for(0):
            _gru_seq(ax, whi, params.input_bias_folded, params.recurrent_bias_folded, params.input_multipliers,
                     params.input_shifts, params.recurrent_multipliers, params.recurrent_shifts, sig, tnh3, s,
                     np.int64(params.state_out_multiplier), np.int64(params.state_out_shift),
                     np.int64(params.hidden_zero_point), np.int64(params.hidden_qmin), np.int64(params.hidden_qmax),
                     mode, h, y)
        return y, h
    with threads_for(batch * hid * _STEP_ELEMENTS):
        for t in range(x.shape[0]):
            ah = h.astype(dh) @ wht
            _gru_step(ax[t], ah, params.input_bias_folded, params.recurrent_bias_folded,
                      params.input_multipliers, params.input_shifts, params.recurrent_multipliers,
                      params.recurrent_shifts, sig, tnh3, s, np.int64(params.state_out_multiplier),
                      np.int64(params.state_out_shift), np.int64(params.hidden_zero_point),
                      np.int64(params.hidden_qmin), np.int64(params.hidden_qmax), mode, h, y[t])
    h_out = h
    return y, h_out
