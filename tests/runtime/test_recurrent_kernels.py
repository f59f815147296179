"""Integer LSTM (runtime.recurrent, runtime.kernels.recurrent).

Exact (0 LSB): the Numba kernel == tests/reference_recurrent.py over random sizes, lengths, encodings and
edge values; the int16 gemmlowp logistic/tanh == the reference and == golden values produced by compiling
gemmlowp's ``fixedpoint/fixedpoint.h`` (commit 16e8662). Toleranced: the dequantized output against a
float64 LSTM on the dequantized parameters (bound and reason at the test).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import EncodingError, HwsimError, UnsupportedError
from runtime.fixedpoint import quantize_multiplier
from runtime.kernels.recurrent import logistic_int16, lstm_int, tanh_int16
from runtime.recurrent import GATES, gates_to_internal, prepare_lstm
from tests.reference_recurrent import logistic16, lstm_ref, tanh16

ALL_INT16 = np.arange(-32768, 32768).astype(np.int16)

# ---------------------------------------------------------------------------------------------
# strategies (draw only inputs inside prepare_lstm's domain: the int32 FC accumulator cannot overflow)
# ---------------------------------------------------------------------------------------------
_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


def _ints(rng, shape, lo, hi, edge_fraction):
    a = rng.integers(lo, hi + 1, shape)
    if edge_fraction:
        pick = rng.random(shape) < edge_fraction
        a = np.where(pick, rng.choice([lo, hi], shape), a)
    return a


@st.composite
def lstm_cases(draw):
    """(x, h0, c0, prepare_lstm kwargs) with T 1..6, N 1..3, I, H 1..12 and edge values mixed in."""
    t, n, n_in, hid = draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    edge = draw(st.sampled_from([0.0, 0.2, 1.0]))
    x_dt, h_dt = draw(st.sampled_from(["int8", "uint8"])), draw(st.sampled_from(["int8", "uint8"]))
    wx = _ints(rng, (4, hid, n_in), -128, 127, edge)
    wh = _ints(rng, (4, hid, hid), -128, 127, edge)
    headroom = (1 << 31) - 1 - 255 * np.abs(wx).sum(axis=2)
    b_mag = draw(st.sampled_from([0, 1000, 1 << 20, None]))  # None: up to the overflow limit
    b_lim = headroom if b_mag is None else np.minimum(headroom, b_mag)
    bias = np.round((rng.random((4, hid)) * 2 - 1) * b_lim).astype(np.int64)
    if b_mag is None and edge:
        bias = np.where(rng.random((4, hid)) < 0.5, headroom, -headroom)
    per_row = draw(st.booleans())
    # "wide" weight scales push effective multipliers above 1 (shift > 0): saturated Q3.12 pre-activations
    w_lo, w_hi = draw(st.sampled_from([(1e-4, 0.05), (0.05, 2.0)]))
    shape = (4, hid) if per_row else (4,)
    p = draw(st.integers(-15, -9))
    kwargs = dict(
        input_scale=draw(st.floats(1e-3, 0.5)), input_zero_point=draw(st.integers(*_RANGES[x_dt])),
        input_weight_scales=rng.uniform(w_lo, w_hi, shape), hidden_scale=draw(st.floats(1e-3, 0.5)),
        hidden_zero_point=draw(st.integers(*_RANGES[h_dt])), recurrent_weight_scales=rng.uniform(w_lo, w_hi, shape),
        cell_scale=2.0**p, cell_clip=draw(st.sampled_from([0.0, 2.0 ** (p + 3), 2.0 ** (p + 15) * 0.7])),
        input_dtype=x_dt, hidden_dtype=h_dt, rounding=draw(st.sampled_from(["double", "single"])))
    x = _ints(rng, (t, n, n_in), *_RANGES[x_dt], edge).astype(x_dt)
    h0 = _ints(rng, (n, hid), *_RANGES[h_dt], edge).astype(h_dt)
    c0 = _ints(rng, (n, hid), -32768, 32767, edge).astype(np.int16)
    return x, h0, c0, dict(input_weights=wx.astype(np.int8), recurrent_weights=wh.astype(np.int8),
                           bias=bias.astype(np.int32), **kwargs)


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


def _float_lstm(x, h, c, wx, wh, b):
    ys = []
    for t in range(x.shape[0]):
        z = np.einsum("ghi,ni->ngh", wx, x[t]) + np.einsum("ghk,nk->ngh", wh, h) + b[None]
        i, o, f, g = _sigmoid(z[:, 0]), _sigmoid(z[:, 1]), _sigmoid(z[:, 2]), np.tanh(z[:, 3])
        c = f * c + i * g
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys), c


@given(st.integers(1, 6), st.integers(1, 3), st.integers(1, 12), st.integers(1, 12), st.integers(-12, -9),
       st.sampled_from(["double", "single"]), st.integers(0, 2**32 - 1))
def test_dequantized_output_tracks_float_lstm(steps, batch, n_in, hid, p, rounding, seed):
    """A float64 LSTM (ONNX equations) on the dequantized x, weights, bias, h0, c0 against the integer output
    dequantized, h scale 2/255 (h in [-1, 1]). Weights keep |pre-activations| < 4 (inside Q3.12's +-8) and
    recurrent row sums of |W| <= 1; |c| stays below 2^(15+p). Bound: 1.5 steps of s_h = 0.5 (final rounding)
    + 1 for what the Q3.12 rounding (2^-13), the logistic/tanh approximations (<= 12.1 / 2^15), the cell
    rounding (2^(p-1)) and the fed-back quantized h add up to over <= 6 steps (measured maximum: 0.66 steps
    over 300 random draws). The cell state must agree within 16 cell steps (0.5 per update, amplified by
    the same gate errors)."""
    rng = np.random.default_rng(seed)
    xf = rng.uniform(-1, 1, (steps, batch, n_in))
    wxf = rng.uniform(-1, 1, (4, hid, n_in)) * (2.0 / n_in)
    whf = rng.uniform(-1, 1, (4, hid, hid)) / hid
    bf = rng.uniform(-1, 1, (4, hid))
    lo, hi = min(xf.min(), 0.0), max(xf.max(), 0.0)
    s_x = np.float32((hi - lo) / 255)
    zx = int(np.clip(-128 - np.round(lo / s_x), -128, 127))
    s_h, s_c = np.float32(2 / 255), 2.0**p
    s_wx = (np.abs(wxf).reshape(4, -1).max(1) / 127).astype(np.float32)
    s_wh = (np.abs(whf).reshape(4, -1).max(1) / 127).astype(np.float32)
    wq = np.round(wxf / s_wx[:, None, None]).astype(np.int8)
    rq = np.round(whf / s_wh[:, None, None]).astype(np.int8)
    s_b = s_x * s_wx  # float32 products
    bq = np.round(bf / s_b[:, None]).astype(np.int32)
    xq = np.clip(np.round(xf / s_x) + zx, -128, 127).astype(np.int8)
    h0q = np.round(rng.uniform(-0.9, 0.9, (batch, hid)) / s_h).astype(np.int8)
    c0q = np.round(rng.uniform(-2, 2, (batch, hid)) / s_c).astype(np.int16)
    params = prepare_lstm(wq, rq, bq, input_scale=s_x, input_zero_point=zx, input_weight_scales=s_wx,
                          hidden_scale=s_h, hidden_zero_point=0, recurrent_weight_scales=s_wh, cell_scale=s_c,
                          rounding=rounding)
    y, _, c_t = lstm_int(xq, h0q, c0q, params)
    yf, cf = _float_lstm(float(s_x) * (xq.astype(np.float64) - zx),
                         float(s_h) * h0q.astype(np.float64), s_c * c0q.astype(np.float64),
                         s_wx[:, None, None].astype(np.float64) * wq, s_wh[:, None, None].astype(np.float64) * rq,
                         s_b[:, None].astype(np.float64) * bq)
    assert np.abs(float(s_h) * y.astype(np.float64) - yf).max() <= 1.5 * float(s_h)
    assert np.abs(s_c * c_t.astype(np.float64) - cf).max() <= 16 * s_c


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
])
def test_prepare_refuses_clearly(kw, err, msg):
    with pytest.raises(err, match=msg):
        _prepare(**kw)


def test_lstm_int_refuses_wrong_inputs():
    p = _prepare()
    with pytest.raises(HwsimError, match="int8"):
        lstm_int(np.zeros((2, 1, 2), np.uint8), None, None, p)
    with pytest.raises(HwsimError, match=r"\[T >= 1, N, 2\]"):
        lstm_int(np.zeros((2, 1, 3), np.int8), None, None, p)
    with pytest.raises(HwsimError, match="c0"):
        lstm_int(np.zeros((2, 1, 2), np.int8), None, np.zeros((1, 3), np.int8), p)


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
