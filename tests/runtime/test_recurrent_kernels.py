"""Integer LSTM and GRU (runtime.recurrent, runtime.kernels.recurrent), 8x8_16 and 16x8_16 variants.

Exact (0 LSB): the Numba kernels == tests/reference_recurrent.py over random sizes, lengths, encodings,
variants, int4/int8 weights, recurrent biases and edge values; the int16 gemmlowp logistic/tanh == the
reference and == golden values produced by compiling gemmlowp's ``fixedpoint/fixedpoint.h`` (commit
16e8662). Toleranced: the dequantized outputs against a float64 LSTM / GRU on the dequantized parameters
(bounds and reasons at the tests).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import EncodingError, HwsimError, UnsupportedError
from runtime.fixedpoint import quantize_multiplier
from runtime.kernels.recurrent import gru_int, logistic_int16, lstm_int, tanh_int16
from runtime.recurrent import GATES, GRU_GATES, gates_to_internal, gru_gates_to_internal, prepare_gru, prepare_lstm
from tests.reference_recurrent import gru_ref, logistic16, lstm_ref, tanh16

ALL_INT16 = np.arange(-32768, 32768).astype(np.int16)

# ---------------------------------------------------------------------------------------------
# strategies (draw only inputs inside prepare_*'s domain: the FC accumulators cannot overflow)
# ---------------------------------------------------------------------------------------------
_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


def _ints(rng, shape, lo, hi, edge_fraction):
    a = rng.integers(lo, hi + 1, shape)
    if edge_fraction:
        pick = rng.random(shape) < edge_fraction
        a = np.where(pick, rng.choice([lo, hi], shape), a)
    return a


def _bias(draw, rng, w, amp, limit, edge):
    """A bias [G, H] within the accumulator bound |b| + amp * sum|W| <= limit (sometimes exactly at it)."""
    headroom = limit - amp * np.abs(w).sum(axis=2)
    b_mag = draw(st.sampled_from([0, 1000, 1 << 20, None]))  # None: up to the overflow limit
    b_lim = headroom if b_mag is None else np.minimum(headroom, b_mag)
    bias = np.round((rng.random(headroom.shape) * 2 - 1) * b_lim).astype(np.int64)
    if b_mag is None and edge:
        bias = np.where(rng.random(headroom.shape) < 0.5, headroom, -headroom)
    return bias


@st.composite
def recurrent_cases(draw, n_gates):
    """(x, h0, rng, edge, kwargs shared by prepare_lstm and prepare_gru) with T 1..6, N 1..3, I, H 1..12,
    8-bit (int8/uint8, rounding double/single) or 16-bit (int16, zero point 0, rounding int64) activations,
    int8- or int4-valued weights, per-gate or per-row scales, biases and recurrent biases up to the
    accumulator bound, and edge values mixed in."""
    t, n, n_in, hid = draw(st.integers(1, 6)), draw(st.integers(1, 5)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    edge = draw(st.sampled_from([0.0, 0.2, 1.0]))
    wide = draw(st.booleans())
    if wide:
        x_dt = h_dt = "int16"
        rounding, amp, limit = "int64", 32768, (1 << 47) - 1
        s_x, s_h = draw(st.floats(2.0**-17, 2.0**-10)), draw(st.floats(2.0**-17, 2.0**-10))
        zx = zh = 0
    else:
        x_dt, h_dt = draw(st.sampled_from(["int8", "uint8"])), draw(st.sampled_from(["int8", "uint8"]))
        rounding, amp, limit = draw(st.sampled_from(["double", "single"])), 255, (1 << 31) - 1
        s_x, s_h = draw(st.floats(1e-3, 0.5)), draw(st.floats(1e-3, 0.5))
        zx, zh = draw(st.integers(*_RANGES[x_dt])), draw(st.integers(*_RANGES[h_dt]))
    w_lo, w_hi = (-8, 7) if draw(st.booleans()) else (-128, 127)  # int4-valued weights stored in int8
    wx = _ints(rng, (n_gates, hid, n_in), w_lo, w_hi, edge)
    wh = _ints(rng, (n_gates, hid, hid), w_lo, w_hi, edge)
    bias = _bias(draw, rng, wx, amp, limit, edge)
    rbias = _bias(draw, rng, wh, amp, limit, edge) if draw(st.booleans()) else None
    per_row = draw(st.booleans())
    # "wide" weight scales push effective multipliers above 1 (shift > 0): saturated Q3.12 pre-activations
    ws_lo, ws_hi = draw(st.sampled_from([(1e-4, 0.05), (0.05, 2.0)]))
    shape = (n_gates, hid) if per_row else (n_gates,)
    x = _ints(rng, (t, n, n_in), *_RANGES[x_dt], edge).astype(x_dt)
    h0 = _ints(rng, (n, hid), *_RANGES[h_dt], edge).astype(h_dt)
    b_dt = np.int64 if wide else np.int32
    kwargs = dict(
        input_weights=wx.astype(np.int8), recurrent_weights=wh.astype(np.int8), bias=bias.astype(b_dt),
        recurrent_bias=None if rbias is None else rbias.astype(b_dt), input_scale=s_x, input_zero_point=zx,
        input_weight_scales=rng.uniform(ws_lo, ws_hi, shape), hidden_scale=s_h, hidden_zero_point=zh,
        recurrent_weight_scales=rng.uniform(ws_lo, ws_hi, shape), input_dtype=x_dt, hidden_dtype=h_dt,
        rounding=rounding)
    return x, h0, rng, edge, kwargs


@st.composite
def lstm_cases(draw):
    """(x, h0, c0, prepare_lstm kwargs): recurrent_cases plus a cell scale 2^p, clipping and c0."""
    x, h0, rng, edge, kwargs = draw(recurrent_cases(4))
    p = draw(st.integers(-15, -9))
    kwargs.update(cell_scale=2.0**p, cell_clip=draw(st.sampled_from([0.0, 2.0 ** (p + 3), 2.0 ** (p + 15) * 0.7])))
    c0 = _ints(rng, h0.shape, -32768, 32767, edge).astype(np.int16)
    return x, h0, c0, kwargs


@st.composite
def gru_cases(draw):
    """(x, h0, prepare_gru kwargs)."""
    x, h0, _, _, kwargs = draw(recurrent_cases(3))
    return x, h0, kwargs


# ---------------------------------------------------------------------------------------------
# int16 logistic / tanh
# ---------------------------------------------------------------------------------------------
# Produced by compiling gemmlowp fixedpoint/fixedpoint.h (commit 16e8662, g++ -O1, scalar int16 path,
# constant checks on) and printing logistic/tanh of FixedPoint<int16_t, I>::FromRaw(x).
GOLDEN_X = [-32768, -20000, -4097, -4096, -2048, -1, 0, 1, 2048, 4096, 12345, 32767]
GOLDEN = {
    ("logistic", 3): [11, 243, 8807, 8815, 12367, 16383, 16384, 16384, 20400, 23952, 31236, 32756],
    ("tanh", 0): [-24964, -17844, -4080, -4076, -2048, 8, 0, -8, 2048, 4076, 11788, 24964],
    ("tanh", 3): [-32767, -32767, -24964, -24964, -15136, -8, 0, 8, 15136, 24964, 32616, 32767],
    ("tanh", 4): [-32767, -32767, -31596, -31596, -24964, -24, 0, 24, 24964, 31596, 32767, 32767],
    ("tanh", 6): [-32767, -32767, -32767, -32767, -32744, -64, 0, 64, 32744, 32767, 32767, 32767],
}


@pytest.mark.parametrize("fn_bits", sorted(GOLDEN))
def test_nonlinearities_match_compiled_gemmlowp(fn_bits):
    fn, bits = fn_bits
    kernel = logistic_int16 if fn == "logistic" else tanh_int16
    ref = logistic16 if fn == "logistic" else tanh16
    assert kernel(np.int16(GOLDEN_X), bits).tolist() == GOLDEN[fn_bits]
    assert [ref(v, bits) for v in GOLDEN_X] == GOLDEN[fn_bits]


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=64), st.integers(0, 6))
def test_nonlinearities_equal_reference(xs, bits):
    x = np.int16(xs)
    assert logistic_int16(x, bits).tolist() == [logistic16(v, bits) for v in xs]
    assert tanh_int16(x, bits).tolist() == [tanh16(v, bits) for v in xs]


@pytest.mark.parametrize("bits", range(7))
def test_nonlinearities_accuracy_and_symmetry(bits):
    """Over all 65536 inputs: |logistic - 2^15 sigmoid| <= 6.8 LSB, |tanh - 2^15 tanh| <= 12.1 LSB (the measured
    maxima are 6.72 and 12.05); sigmoid(x) + sigmoid(-x) = 32767 exactly and tanh is odd (x != -32768, 0).
    Neither is monotonic (drops of up to 8 / 16 LSB, implied by the error bounds)."""
    real = ALL_INT16.astype(np.float64) / 2.0 ** (15 - bits)
    s = logistic_int16(ALL_INT16, bits).astype(np.int64)
    t = tanh_int16(ALL_INT16, bits).astype(np.int64)
    assert np.abs(s - 32768 / (1 + np.exp(-real))).max() <= 6.8
    assert np.abs(t - 32768 * np.tanh(real)).max() <= 12.1
    assert s.min() >= 0 and s.max() <= 32767 and t.min() >= -32767 and t.max() <= 32767
    inner = slice(1, None)  # x = -32767 .. 32767; reversed is -x
    nz = ALL_INT16[inner] != 0
    assert np.all((s[inner] + s[inner][::-1])[nz] == 32767)
    assert np.all(t[inner] == -t[inner][::-1])
    assert s[32768] == 16384 and t[32768] == 0


def test_nonlinearities_refuse_bad_input():
    with pytest.raises(HwsimError, match="int16"):
        logistic_int16(np.int32([1]), 3)
    with pytest.raises(HwsimError, match="integer_bits"):
        tanh_int16(np.int16([1]), 7)


# ---------------------------------------------------------------------------------------------
# the LSTM kernel
# ---------------------------------------------------------------------------------------------
@given(lstm_cases())
def test_lstm_kernel_equals_reference(case):
    x, h0, c0, kw = case
    params = prepare_lstm(**kw)
    y, h_t, c_t = lstm_int(x, h0, c0, params)
    ry, rh, rc = lstm_ref(x, h0, c0, params)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(h_t, rh)
    np.testing.assert_array_equal(c_t, rc)
    assert y.dtype == h_t.dtype == np.dtype(kw["hidden_dtype"]) and c_t.dtype == np.int16
    np.testing.assert_array_equal(y[-1], h_t)
    lo, hi = _RANGES[kw["hidden_dtype"]]
    assert ry.min() >= lo and ry.max() <= hi  # the reference saturates in int64: nothing left the dtype's range
    if params.cell_clip:
        assert np.abs(c_t.astype(np.int64)).max() <= params.cell_clip


@given(st.integers(1, 6), st.integers(1, 3), st.integers(1, 12), st.integers(-15, -9), st.integers(-64, 63),
       st.integers(0, 2**32 - 1))
def test_zero_weights_give_half_gates_and_halving_cell(steps, batch, hid, p, zp_h, seed):
    """Zero weights and bias: every gate is sigmoid(0) = 16384 (0.5 in Q0.15) and g = tanh(0) = 0, so
    c_t = RDBPOT(16384 * c_{t-1}, 15) = c_{t-1} / 2 rounded half away from zero, and
    h_t = zp_h + MBQM(16384 * tanh(c_t)) (exactly zp_h, i.e. 0.0, once c_t = 0; |h| < 0.5 never clamps)."""
    rng = np.random.default_rng(seed)
    params = prepare_lstm(np.zeros((4, hid, 2), np.int8), np.zeros((4, hid, hid), np.int8), None,
                          input_scale=0.05, input_zero_point=3, input_weight_scales=0.01, hidden_scale=1 / 128,
                          hidden_zero_point=zp_h, recurrent_weight_scales=0.01, cell_scale=2.0**p)
    x = rng.integers(-128, 128, (steps, batch, 2)).astype(np.int8)
    h0 = rng.integers(-128, 128, (batch, hid)).astype(np.int8)
    c0 = np.concatenate([np.int16([[-32768, 32767, -3, 3, 1, -1, 0]])[:, :hid].repeat(batch, 0),
                         rng.integers(-32768, 32768, (batch, max(0, hid - 7))).astype(np.int16)], axis=1)
    y, h_t, c_t = lstm_int(x, h0, c0, params)
    c = c0.astype(np.int64)
    for t in range(steps):
        c = np.sign(c) * ((np.abs(c) + 1) // 2)
        half_tanh = 0.5 * np.tanh(c * 2.0**p)
        assert np.abs((y[t].astype(np.int64) - zp_h) / 128 - half_tanh).max() <= 0.5 / 128 + 12.1 / 65536
        np.testing.assert_array_equal(y[t][c == 0], zp_h)
    np.testing.assert_array_equal(c_t, c)
    assert np.abs(c_t.astype(np.float64) * 2.0**p - c0 * 2.0**p / 2**steps).max() <= 2.0**p


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _float_lstm(x, h, c, wx, wh, b, rb):
    ys = []
    for t in range(x.shape[0]):
        z = np.einsum("ghi,ni->ngh", wx, x[t]) + np.einsum("ghk,nk->ngh", wh, h) + (b + rb)[None]
        i, o, f, g = _sigmoid(z[:, 0]), _sigmoid(z[:, 1]), _sigmoid(z[:, 2]), np.tanh(z[:, 3])
        c = f * c + i * g
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys), c


def _float_gru(x, h, wx, wh, b, rb):
    """PyTorch's GRU (ONNX linear_before_reset = 1), gates z, r, n."""
    ys = []
    for t in range(x.shape[0]):
        a = np.einsum("ghi,ni->ngh", wx, x[t]) + b[None]
        u = np.einsum("ghk,nk->ngh", wh, h) + rb[None]
        z, r = _sigmoid(a[:, 0] + u[:, 0]), _sigmoid(a[:, 1] + u[:, 1])
        n = np.tanh(a[:, 2] + r * u[:, 2])
        h = (1 - z) * n + z * h
        ys.append(h)
    return np.stack(ys)


def _quantized_layer(rng, n_gates, steps, batch, n_in, hid, wide, rounding):
    """A random float layer (|pre-activations| < 4.5, inside Q3.12's +-8) quantized as an exporter would:
    x asymmetric int8 (8-bit) or symmetric int16; h at 2/255 int8 or 2^-15 int16 (h in [-1, 1]); weights
    symmetric int8 per gate; biases at float32(s_x * s_Wx[g]) and float32(s_h * s_Wh[g]). Returns
    (x_q, h0_q, prepare kwargs, dequantized float64 (x, h0, Wx, Wh, b, rb))."""
    xf = rng.uniform(-1, 1, (steps, batch, n_in))
    wxf = rng.uniform(-1, 1, (n_gates, hid, n_in)) * (2.0 / n_in)
    whf = rng.uniform(-1, 1, (n_gates, hid, hid)) / hid
    bf = rng.uniform(-1, 1, (n_gates, hid))
    rbf = rng.uniform(-0.5, 0.5, (n_gates, hid))
    if wide:
        dt, b_dt = "int16", np.int64
        s_x, zx = np.float32(np.abs(xf).max() / 32767), 0
        s_h = np.float32(2.0**-15)
    else:
        dt, b_dt = "int8", np.int32
        lo, hi = min(xf.min(), 0.0), max(xf.max(), 0.0)
        s_x = np.float32((hi - lo) / 255)
        zx = int(np.clip(-128 - np.round(lo / s_x), -128, 127))
        s_h = np.float32(2 / 255)
    qlo, qhi = _RANGES[dt]
    s_wx = (np.abs(wxf).reshape(n_gates, -1).max(1) / 127).astype(np.float32)
    s_wh = (np.abs(whf).reshape(n_gates, -1).max(1) / 127).astype(np.float32)
    wq = np.round(wxf / s_wx[:, None, None]).astype(np.int8)
    rq = np.round(whf / s_wh[:, None, None]).astype(np.int8)
    s_b, s_rb = s_x * s_wx, s_h * s_wh  # float32 products
    bq = np.round(bf / s_b[:, None]).astype(b_dt)
    rbq = np.round(rbf / s_rb[:, None]).astype(b_dt)
    xq = np.clip(np.round(xf / s_x) + zx, qlo, qhi).astype(dt)
    h0q = np.round(rng.uniform(-0.9, 0.9, (batch, hid)) / s_h).astype(dt)
    kwargs = dict(input_weights=wq, recurrent_weights=rq, bias=bq, recurrent_bias=rbq, input_scale=s_x,
                  input_zero_point=zx, input_weight_scales=s_wx, hidden_scale=s_h, hidden_zero_point=0,
                  recurrent_weight_scales=s_wh, input_dtype=dt, hidden_dtype=dt, rounding=rounding)
    f64 = (float(s_x) * (xq.astype(np.float64) - zx), float(s_h) * h0q.astype(np.float64),
           s_wx[:, None, None].astype(np.float64) * wq, s_wh[:, None, None].astype(np.float64) * rq,
           s_b[:, None].astype(np.float64) * bq, s_rb[:, None].astype(np.float64) * rbq)
    return xq, h0q, kwargs, f64


_SIZES = (st.integers(1, 6), st.integers(1, 3), st.integers(1, 12), st.integers(1, 12))
_VARIANTS = st.sampled_from([(False, "double"), (False, "single"), (True, "int64")])


@given(*_SIZES, st.integers(-12, -9), _VARIANTS, st.integers(0, 2**32 - 1))
def test_dequantized_output_tracks_float_lstm(steps, batch, n_in, hid, p, variant, seed):
    """A float64 LSTM (ONNX equations) on the dequantized x, weights, biases, h0, c0 against the integer output
    dequantized; recurrent row sums of |W| <= 1; |c| stays below 2^(15+p).

    8-bit (h step s_h = 2/255): bound 1.5 steps of s_h = 0.5 (final rounding) + 1 for what the Q3.12 rounding
    (2^-13), the logistic/tanh approximations (<= 12.1 / 2^15), the cell rounding (2^(p-1)) and the fed-back
    quantized h add up to over <= 6 steps (measured maximum: 0.77 steps over 2000 random draws).
    16-bit (s_h = 2^-15): the output rounding vanishes; what remains is dominated by the cell grid (each update
    rounds c by <= 2^(p-1), tanh(c) carries it to h), plus the gate arithmetic: bound 2^(p+1) + 2^-11, i.e.
    0.0044 at p = -9 down to 0.00098 at p = -12, against the 8-bit 1.5 * 2/255 = 0.0118 (measured maxima
    0.0029 at p = -9 and 0.00057 at p = -12 over 2000 draws per p). The cell state must agree within 16 cell steps in both (0.5 per update,
    amplified by the same gate errors)."""
    wide, rounding = variant
    rng = np.random.default_rng(seed)
    xq, h0q, kw, (x, h0, wx, wh, b, rb) = _quantized_layer(rng, 4, steps, batch, n_in, hid, wide, rounding)
    s_c = 2.0**p
    c0q = np.round(rng.uniform(-2, 2, (batch, hid)) / s_c).astype(np.int16)
    params = prepare_lstm(**kw, cell_scale=s_c)
    y, _, c_t = lstm_int(xq, h0q, c0q, params)
    yf, cf = _float_lstm(x, h0, s_c * c0q.astype(np.float64), wx, wh, b, rb)
    s_h = params.hidden_scale
    assert np.abs(s_h * y.astype(np.float64) - yf).max() <= (2.0 ** (p + 1) + 2.0**-11 if wide else 1.5 * s_h)
    assert np.abs(s_c * c_t.astype(np.float64) - cf).max() <= 16 * s_c


@given(*_SIZES, _VARIANTS, st.integers(0, 2**32 - 1))
def test_dequantized_output_tracks_float_gru(steps, batch, n_in, hid, variant, seed):
    """A float64 GRU (PyTorch's formula, linear_before_reset = 1) on the dequantized x, weights, biases and h0
    against the integer output dequantized. The state is carried in Q0.15, so the only 8-bit rounding per step
    is the fed-back h (it moves the pre-activations by <= sum|W_h| * s_h / 2); errors do not accumulate since
    h' = (1 - z) n + z h contracts them by z < 1. 8-bit bound: 1 step of s_h = 2/255 (0.5 output rounding, 0.5
    for the Q3.12 rounding 2^-13, the logistic/tanh approximations <= 12.1 / 2^15, the reset product and the
    fed-back h over <= 6 steps; measured maximum 0.65 steps over 2000 draws). 16-bit bound (s_h = 2^-15): 0.001
    absolute, 8x tighter (measured maximum 0.0005 over 2000 draws: Q3.12 rounding and the tanh/logistic error)."""
    wide, rounding = variant
    rng = np.random.default_rng(seed)
    xq, h0q, kw, (x, h0, wx, wh, b, rb) = _quantized_layer(rng, 3, steps, batch, n_in, hid, wide, rounding)
    params = prepare_gru(**kw)
    y, h_t = gru_int(xq, h0q, params)
    yf = _float_gru(x, h0, wx, wh, b, rb)
    s_h = params.hidden_scale
    assert np.abs(s_h * y.astype(np.float64) - yf).max() <= (0.001 if wide else s_h)
    np.testing.assert_array_equal(y[-1], h_t)


# ---------------------------------------------------------------------------------------------
# the GRU kernel
# ---------------------------------------------------------------------------------------------
@given(gru_cases())
def test_gru_kernel_equals_reference(case):
    x, h0, kw = case
    params = prepare_gru(**kw)
    y, h_t = gru_int(x, h0, params)
    ry, rh = gru_ref(x, h0, params)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(h_t, rh)
    assert y.dtype == h_t.dtype == np.dtype(kw["hidden_dtype"])
    np.testing.assert_array_equal(y[-1], h_t)
    lo, hi = _RANGES[kw["hidden_dtype"]]
    assert ry.min() >= lo and ry.max() <= hi  # the reference saturates in int64: nothing left the dtype's range


@given(st.integers(1, 6), st.integers(1, 3), st.integers(1, 12), st.booleans(), st.integers(-64, 63),
       st.integers(0, 2**32 - 1))
def test_gru_zero_weights_give_half_gates_and_halving_state(steps, batch, hid, wide, zp_h, seed):
    """Zero weights and biases: z = r = sigmoid(0) = 16384 (0.5 in Q0.15), n = tanh(0) = 0, so
    s_t = n + RDBPOT(z * (s - n), 15) = s_{t-1} / 2 rounded half away from zero. 16-bit with s_h = 2^-15: the
    state multipliers are exactly 1, so h_t = s_t exactly (h0 = s_0). 8-bit with s_h = 2^-7: s_0 =
    clamp16(256 * (h0 - zp_h)) and h_t = zp_h + s_t / 256 within 0.5 + 2^-8 (double rounding), exactly zp_h
    (0.0) once s_t = 0."""
    rng = np.random.default_rng(seed)
    dt = "int16" if wide else "int8"
    s_h = 2.0**-15 if wide else 2.0**-7
    zp_h = 0 if wide else zp_h
    params = prepare_gru(np.zeros((3, hid, 2), np.int8), np.zeros((3, hid, hid), np.int8), None, None,
                         input_scale=0.05, input_zero_point=0, input_weight_scales=0.01, hidden_scale=s_h,
                         hidden_zero_point=zp_h, recurrent_weight_scales=0.01, input_dtype=dt, hidden_dtype=dt,
                         rounding="int64" if wide else "double")
    lo, hi = _RANGES[dt]
    x = rng.integers(lo, hi + 1, (steps, batch, 2)).astype(dt)
    edges = np.array([lo, hi, zp_h - 1, zp_h + 1, zp_h, zp_h + 3, zp_h - 3]).clip(lo, hi)[:hid]
    h0 = np.concatenate([np.repeat(edges[None], batch, 0),
                         rng.integers(lo, hi + 1, (batch, max(0, hid - 7)))], axis=1).astype(dt)
    y, h_t = gru_int(x, h0, params)
    s = np.clip((h0.astype(np.int64) - zp_h) * (1 if wide else 256), -32768, 32767)
    for t in range(steps):
        s = np.sign(s) * ((np.abs(s) + 1) // 2)
        if wide:
            np.testing.assert_array_equal(y[t], s)
        else:
            assert np.abs(y[t].astype(np.int64) - zp_h - s / 256).max() <= 0.5 + 2.0**-8
            np.testing.assert_array_equal(y[t][s == 0], zp_h)
    np.testing.assert_array_equal(h_t, y[-1])


# ---------------------------------------------------------------------------------------------
# plan time
# ---------------------------------------------------------------------------------------------
def _prepare(**over):
    hid, n_in = 3, 2
    kw = dict(input_weights=np.ones((4, hid, n_in), np.int8), recurrent_weights=np.ones((4, hid, hid), np.int8),
              bias=np.zeros((4, hid), np.int32), input_scale=0.02, input_zero_point=5, input_weight_scales=0.01,
              hidden_scale=1 / 128, hidden_zero_point=0, recurrent_weight_scales=0.01, cell_scale=2.0**-11)
    kw.update(over)
    return prepare_lstm(**kw)


_WIDE = dict(input_dtype="int16", hidden_dtype="int16", rounding="int64", input_scale=2.0**-14, input_zero_point=0,
             hidden_scale=2.0**-15, bias=np.zeros((4, 3), np.int64))


def _prepare_gru(**over):
    hid, n_in = 3, 2
    kw = dict(input_weights=np.ones((3, hid, n_in), np.int8), recurrent_weights=np.ones((3, hid, hid), np.int8),
              bias=np.zeros((3, hid), np.int32), recurrent_bias=None, input_scale=0.02, input_zero_point=5,
              input_weight_scales=0.01, hidden_scale=1 / 128, hidden_zero_point=0, recurrent_weight_scales=0.01)
    kw.update(over)
    return prepare_gru(**kw)


def test_effective_scales_are_formed_in_float32():
    """lstm.cc: ``float(float(s_w * s_x) / 2^-12)`` for the FCs, ``float(2^-15 / s_h * 2^-15)`` for h. The scales
    below make the float32 product differ from the binary64 one, so a binary64 formula would give another M."""
    s_x, s_w, s_h = np.float32(0.0123), np.float32(0.00771), np.float32(0.0091)
    p = _prepare(input_scale=s_x, input_weight_scales=s_w, recurrent_weight_scales=s_w, hidden_scale=s_h)
    f32 = quantize_multiplier(float(np.float32(s_w * s_x) / np.float32(2.0**-12)))
    f64 = quantize_multiplier(float(s_w) * float(s_x) / 2.0**-12)
    assert f32 != f64
    assert (int(p.input_multipliers[1, 2]), int(p.input_shifts[1, 2])) == f32
    assert (int(p.recurrent_multipliers[0, 0]), int(p.recurrent_shifts[0, 0])) == \
        quantize_multiplier(float(np.float32(s_w * s_h) / np.float32(2.0**-12)))
    assert (p.hidden_multiplier, p.hidden_shift) == quantize_multiplier(float(np.float32(2.0**-30 / float(s_h))))


def test_folded_bias_and_per_row_scales():
    w = np.arange(24).reshape(4, 3, 2).astype(np.int8)
    b = np.arange(12).reshape(4, 3).astype(np.int32)
    rows = np.linspace(0.001, 0.012, 12).reshape(4, 3)
    p = _prepare(input_weights=w, bias=b, input_zero_point=-7, hidden_zero_point=4, input_weight_scales=rows)
    np.testing.assert_array_equal(p.input_bias_folded, b + 7 * w.astype(np.int64).sum(axis=2))
    np.testing.assert_array_equal(p.recurrent_bias_folded, np.full((4, 3), -4 * 3))
    rb = -np.arange(12).reshape(4, 3).astype(np.int32)
    q = _prepare(recurrent_weights=w.reshape(4, 2, 3)[:, :1].repeat(3, 1), recurrent_bias=rb, hidden_zero_point=4)
    np.testing.assert_array_equal(q.recurrent_bias_folded, rb - 4 * q.recurrent_weights.astype(np.int64).sum(axis=2))
    np.testing.assert_array_equal(q.recurrent_bias, rb)
    real = p.input_multipliers.astype(np.float64) * 2.0 ** (p.input_shifts.astype(np.float64) - 31)
    np.testing.assert_allclose(real, rows.astype(np.float32) * np.float32(0.02) / 2.0**-12, rtol=2.0**-23)


@pytest.mark.parametrize("clip,expected", [(0.0, 0), (1.0, 2048), (1.00049, 2049), (1e9, 32767)])
def test_cell_clip_is_truncated_to_the_cell_grid(clip, expected):
    assert _prepare(cell_clip=clip).cell_clip == expected  # s_c = 2^-11: 1.00049 * 2048 = 2049.0


@pytest.mark.parametrize("cell_scale", [2.0**-11 * 1.001, 0.001, 2.0**-8, 2.0**-16, 0.0, -(2.0**-11), math.inf])
def test_cell_scale_must_be_a_supported_power_of_two(cell_scale):
    with pytest.raises(EncodingError, match="power-of-two cell scale"):
        _prepare(cell_scale=cell_scale)


@pytest.mark.parametrize("kw,err,msg", [
    (dict(projection_weights=np.ones((2, 3), np.int8)), UnsupportedError, "projection"),
    (dict(layer_norm_coefficients=np.ones((4, 3), np.int16)), UnsupportedError, "layer normalization"),
    (dict(peephole_weights=np.ones((3, 3), np.int16)), UnsupportedError, "peephole"),
    (dict(input_dtype="int16"), UnsupportedError, "int8 or uint8"),
    (dict(bias=np.full((4, 3), 2**31 - 1, np.int64)), EncodingError, "overflow the int32 accumulator"),
    (dict(cell_clip=-1.0), EncodingError, "cell_clip"),
    (dict(input_weights=np.ones((4, 3, 2), np.float32)), EncodingError, "integers"),
    (dict(recurrent_weights=np.ones((4, 3, 2), np.int8)), HwsimError, r"\(4, 3, 3\)"),
    (dict(input_weight_scales=[0.1, 0.1]), EncodingError, "per-gate"),
    (dict(hidden_zero_point=200), EncodingError, "zero point"),
    (dict(rounding="nearest"), HwsimError, "rounding"),
    (dict(recurrent_bias=np.full((4, 3), 2**31 - 1 - 255 * 3 + 1)), EncodingError,
     "recurrent bias/recurrent weights: gate i cell 0 can overflow the int32"),
    (dict(input_dtype="int32"), UnsupportedError, "int8, uint8 or int16"),
    (dict(rounding="int64"), UnsupportedError, "take rounding 'int64'"),
    (dict(_WIDE, hidden_dtype="int8"), UnsupportedError, "input int16, hidden state int8"),
    (dict(_WIDE, rounding="double"), UnsupportedError, "16x8_16 variant"),
    (dict(_WIDE, input_zero_point=3), EncodingError, "LSTM input: .*zero point 0, found 3"),
    (dict(_WIDE, hidden_zero_point=-1), EncodingError, "LSTM hidden state: .*zero point 0, found -1"),
    (dict(_WIDE, bias=np.full((4, 3), 2**47 - 32768 * 2)), EncodingError, r"\|acc\| < 2\^47"),
    (dict(_WIDE, bias=np.full((4, 3), 2**47)), EncodingError, r"bias: values must lie in \[-140737488355327"),
    (dict(_WIDE, input_scale=0.5, input_weight_scales=1.0), EncodingError, "input FC: .*int64 MBQM"),
])
def test_prepare_refuses_clearly(kw, err, msg):
    with pytest.raises(err, match=msg):
        _prepare(**kw)


@pytest.mark.parametrize("kw,err,msg", [
    (dict(linear_before_reset=False), UnsupportedError, "linear_before_reset = 0"),
    (dict(linear_before_reset=0), UnsupportedError, "linear_before_reset = 0"),
    (dict(linear_before_reset="yes"), HwsimError, "linear_before_reset must be a boolean"),
    (dict(input_weights=np.ones((4, 3, 2), np.int8)), HwsimError, r"GRU input weights: expected shape \[3, H, I\]"),
    (dict(recurrent_bias=np.zeros((4, 3), np.int32)), HwsimError, r"GRU recurrent bias: expected shape \(3, 3\)"),
    (dict(recurrent_weight_scales=[0.1] * 4), EncodingError, "3 per-gate scales"),
    (dict(bias=np.full((3, 3), 2**31 - 1)), EncodingError, "GRU bias/input weights: gate z cell 0"),
    (dict(input_dtype="int16", hidden_dtype="int16", rounding="int64", input_zero_point=0, hidden_zero_point=4),
     EncodingError, "GRU hidden state: .*zero point 0"),
    (dict(hidden_scale=2.0**-7, input_dtype="int16", hidden_dtype="int16", rounding="int64", input_zero_point=0,
          input_scale=2.0**-15), EncodingError, "GRU hidden state to Q0.15 state: .*int64 MBQM"),
])
def test_prepare_gru_refuses_clearly(kw, err, msg):
    with pytest.raises(err, match=msg):
        _prepare_gru(**kw)


def test_sixteen_bit_variant_parameters():
    """16x8_16: int64 biases, unclamped QuantizeMultiplier (the int64 MBQM takes any shift below 8), the
    hidden rescale float32(2^-30 / s_h); folded biases are the biases themselves (zero points 0)."""
    b = np.arange(12).reshape(4, 3) * (1 << 40)
    rb = -np.arange(12).reshape(4, 3) * (1 << 39)
    p = _prepare(**{**_WIDE, "bias": b, "recurrent_bias": rb})
    assert p.variant == "16x8_16" and _prepare().variant == "8x8_16"
    assert p.bias.dtype == p.recurrent_bias.dtype == p.input_bias_folded.dtype == np.int64
    np.testing.assert_array_equal(p.input_bias_folded, b)
    np.testing.assert_array_equal(p.recurrent_bias_folded, rb)
    assert (p.hidden_multiplier, p.hidden_shift) == (1 << 30, -14)  # 2^-30 / 2^-15 = 2^-15
    assert (int(p.input_multipliers[0, 0]), int(p.input_shifts[0, 0])) == \
        quantize_multiplier(float(np.float32(np.float32(0.01) * np.float32(2.0**-14)) / np.float32(2.0**-12)))


def test_gru_state_multipliers():
    """h0 -> Q0.15: QM(float32(s_h / 2^-15)); Q0.15 -> h: QM(float32(2^-15 / s_h)) (a float32 division)."""
    s_h = np.float32(0.0091)
    p = _prepare_gru(hidden_scale=s_h, rounding="single")
    assert (p.state_in_multiplier, p.state_in_shift) == quantize_multiplier(float(s_h) * 2.0**15)
    assert (p.state_out_multiplier, p.state_out_shift) == quantize_multiplier(float(np.float32(2.0**-15) / s_h))
    assert p.linear_before_reset is True and p.variant == "8x8_16"
    np.testing.assert_array_equal(p.recurrent_bias, np.zeros((3, 3)))


def test_lstm_int_refuses_wrong_inputs():
    p = _prepare()
    with pytest.raises(HwsimError, match="int8"):
        lstm_int(np.zeros((2, 1, 2), np.uint8), None, None, p)
    with pytest.raises(HwsimError, match=r"\[T >= 1, N, 2\]"):
        lstm_int(np.zeros((2, 1, 3), np.int8), None, None, p)
    with pytest.raises(HwsimError, match="c0"):
        lstm_int(np.zeros((2, 1, 2), np.int8), None, np.zeros((1, 3), np.int8), p)


def test_gru_int_refuses_wrong_inputs():
    p = _prepare_gru()
    with pytest.raises(HwsimError, match="GruQuantParams"):
        gru_int(np.zeros((2, 1, 2), np.int8), None, _prepare())
    with pytest.raises(HwsimError, match="LstmQuantParams"):
        lstm_int(np.zeros((2, 1, 2), np.int8), None, None, p)
    with pytest.raises(HwsimError, match="gru_int: x must be int8"):
        gru_int(np.zeros((2, 1, 2), np.int16), None, p)
    with pytest.raises(HwsimError, match=r"gru_int: h0 must have shape \(1, 3\)"):
        gru_int(np.zeros((2, 1, 2), np.int8), np.zeros((2, 3), np.int8), p)
    wide = _prepare(**_WIDE)
    with pytest.raises(HwsimError, match="lstm_int: x must be int16"):
        lstm_int(np.zeros((2, 1, 2), np.int8), None, None, wide)


@pytest.mark.parametrize("wide", [False, True])
def test_lstm_recurrent_bias_enters_the_gate_sum(wide):
    """With both FC multipliers exactly 1 (s_x * s_Wx = s_h * s_Wh = 2^-12) MBQM is the identity, so a bias
    moved from the input FC to the recurrent FC (the same real value) gives the same gate pre-activations and
    outputs bit for bit, as long as the input FC alone does not saturate (a = clamp16(...) is taken before the
    sum: |b + sum x Wx| <= 6000 + 2 * 1000 * 8 here); a recurrent bias on the wrong side of the sum would not."""
    rng = np.random.default_rng(7)
    dt, rounding = ("int16", "int64") if wide else ("int8", "double")
    lo, hi = (-1000, 1000) if wide else _RANGES[dt]
    common = dict(input_weights=rng.integers(-8, 8, (4, 3, 2)).astype(np.int8),
                  recurrent_weights=rng.integers(-8, 8, (4, 3, 3)).astype(np.int8), input_scale=2.0**-6,
                  input_zero_point=0, input_weight_scales=2.0**-6, hidden_scale=2.0**-7, hidden_zero_point=0,
                  recurrent_weight_scales=2.0**-5, cell_scale=2.0**-11, input_dtype=dt, hidden_dtype=dt,
                  rounding=rounding)
    b = rng.integers(-6000, 6000, (4, 3))
    x = rng.integers(lo, hi + 1, (4, 2, 2)).astype(dt)
    h0 = rng.integers(-100, 100, (2, 3)).astype(dt)
    in_bias = lstm_int(x, h0, None, prepare_lstm(bias=b, **common))
    in_rec = lstm_int(x, h0, None, prepare_lstm(bias=None, recurrent_bias=b, **common))
    no_bias = lstm_int(x, h0, None, prepare_lstm(bias=None, **common))
    for got, want in zip(in_rec, in_bias):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(no_bias[0], in_bias[0])


@pytest.mark.parametrize("wide", [False, True])
def test_gru_candidate_recurrent_bias_is_reset_gated(wide):
    """Zero weights, h0 = 0, exact multipliers (1 for the FCs): z = r = 16384. A recurrent bias of 4096 (1.0 in
    Q3.12) on the n gate enters as r * u_n = 0.5, so n = tanh16(2048) = 15136 (tanh(0.5)); the same value as an
    input bias gives n = tanh16(4096) = 24964 (tanh(1)). Then s = n - RDBPOT(n / 2) (h' = (1 - z) n) and the
    output is s rescaled to h: 8-bit s_h = 2^-7: round(7568 / 256) = 30 vs round(12482 / 256) = 49; 16-bit
    s_h = 2^-15: the state itself."""
    dt, rounding = ("int16", "int64") if wide else ("int8", "double")
    s_h = 2.0**-15 if wide else 2.0**-7
    common = dict(input_weights=np.zeros((3, 1, 1), np.int8), recurrent_weights=np.zeros((3, 1, 1), np.int8),
                  input_scale=2.0**-6, input_zero_point=0, input_weight_scales=2.0**-6, hidden_scale=s_h,
                  hidden_zero_point=0, recurrent_weight_scales=2.0**-12 / s_h, input_dtype=dt, hidden_dtype=dt,
                  rounding=rounding)
    n_bias = np.array([[0], [0], [4096]])
    x = np.zeros((1, 1, 1), dt)
    y_rec, _ = gru_int(x, None, prepare_gru(recurrent_bias=n_bias, **common))
    y_in, _ = gru_int(x, None, prepare_gru(bias=n_bias, **common))
    assert (int(y_rec[0, 0, 0]), int(y_in[0, 0, 0])) == ((7568, 12482) if wide else (30, 49))


def test_default_states_are_zero():
    p = _prepare()
    x = np.int8([[[1, -2]], [[3, 4]]])
    got = lstm_int(x, None, None, p)
    want = lstm_int(x, np.zeros((1, 3), np.int8), np.zeros((1, 3), np.int16), p)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_gate_order_mapping():
    assert GATES == ("i", "o", "f", "c")
    onnx = np.arange(8).reshape(8, 1)  # rows i i o o f f c c
    np.testing.assert_array_equal(gates_to_internal(onnx, "iofc"), onnx.reshape(4, 2, 1))
    torch_rows = np.array([0, 1, 4, 5, 6, 7, 2, 3]).reshape(8, 1)  # i i f f g g o o, same values as above
    np.testing.assert_array_equal(gates_to_internal(torch_rows, "ifgo"), onnx.reshape(4, 2, 1))
    tflite = np.array([0, 1, 4, 5, 6, 7, 2, 3])  # i f c o
    np.testing.assert_array_equal(gates_to_internal(tflite.reshape(4, 2), "ifco").reshape(-1), np.arange(8))
    with pytest.raises(HwsimError, match="once each"):
        gates_to_internal(onnx, "iiofc"[:4])


def test_gru_gate_order_mapping():
    assert GRU_GATES == ("z", "r", "n")
    onnx = np.arange(6).reshape(6, 1)  # rows z z r r h h
    np.testing.assert_array_equal(gru_gates_to_internal(onnx, "zrh"), onnx.reshape(3, 2, 1))
    np.testing.assert_array_equal(gru_gates_to_internal(onnx, "zrn"), onnx.reshape(3, 2, 1))
    torch_rows = np.array([2, 3, 0, 1, 4, 5]).reshape(6, 1)  # r r z z n n, same values as above
    np.testing.assert_array_equal(gru_gates_to_internal(torch_rows, "rzn"), onnx.reshape(3, 2, 1))
    np.testing.assert_array_equal(gru_gates_to_internal(torch_rows.reshape(3, 2, 1), "rzn"), onnx.reshape(3, 2, 1))
    with pytest.raises(HwsimError, match="z, r, n"):
        gru_gates_to_internal(onnx, "zrr")
    with pytest.raises(HwsimError, match="3 stacked gates"):
        gru_gates_to_internal(np.arange(4), "zrn")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_sequence_and_per_step_kernels_agree(kind):
    """Batches of up to two rows run the whole-sequence kernel, larger ones the per-step kernels (BLAS
    FCs): the same rows give the same integers either way, and both equal the reference."""
    rng = np.random.default_rng(11)
    g, hid, n_in, steps = (4, 7, 5, 6) if kind == "lstm" else (3, 7, 5, 6)
    kw = dict(input_scale=0.02, input_zero_point=3, input_weight_scales=0.01, hidden_scale=1 / 100,
              hidden_zero_point=-2, recurrent_weight_scales=0.02, input_dtype="int8", hidden_dtype="int8")
    w, r = rng.integers(-127, 128, (g, hid, n_in)), rng.integers(-127, 128, (g, hid, hid))
    b = rng.integers(-3000, 3000, (g, hid))
    x = rng.integers(-128, 128, (steps, 6, n_in)).astype(np.int8)
    if kind == "lstm":
        p = prepare_lstm(w, r, b, cell_scale=2.0 ** -11, **kw)
        run = lambda xs: lstm_int(xs, None, None, p)[0]  # noqa: E731
        ref = lstm_ref(x, np.full((6, hid), -2, np.int8), np.zeros((6, hid), np.int16), p)[0]
    else:
        p = prepare_gru(w, r, b, None, **kw)
        run = lambda xs: gru_int(xs, None, p)[0]  # noqa: E731
        ref = gru_ref(x, np.full((6, hid), -2, np.int8), p)[0]
    whole = run(x)  # per-step path
    np.testing.assert_array_equal(whole, ref)
    for i in range(0, 6, 2):  # sequence path, two rows at a time
        np.testing.assert_array_equal(run(np.ascontiguousarray(x[:, i:i + 2])), whole[:, i:i + 2])
