"""Integer LSTM and GRU: the arithmetic's parameters and their plan-time computation.

The LSTM is TFLite's fully integer LSTM (``8x8_16``: 8-bit activations; ``16x8_16``: 16-bit
activations, int64 biases and accumulators). The GRU is this project's definition by analogy (TFLite
has no integer GRU). The integer semantics, with sources, are in ``runtime/RECURRENT_ARITHMETIC.md``;
the kernels are :mod:`runtime.kernels.recurrent`. This module turns float scales and integer weights
into the integer parameters once (TFLite's ``PopulateQuantizedLstmParams8x8_16`` and
``PopulatePrecomputedZPTimesWeightsWithBias``, LiteRT ``tflite/kernels/lstm.cc``); the kernels never see
a float.

Tensors and their encodings (``real = scale * (q - zero_point)``):

========================  =======================  ==========================================
tensor                    storage                  encoding
========================  =======================  ==========================================
x (input)                 int8 or uint8; int16     ``s_x``, ``zp_x`` (any; 0 for int16)
h (hidden = output)       int8 or uint8; int16     ``s_h``, ``zp_h`` (any; 0 for int16); feeds
                                                   back as input of the recurrent FCs and is
                                                   the layer output
Wx[g], Wh[g] (weights)    int8 (int4 values fit),  ``s_Wx[g]``, ``s_Wh[g]``: per gate, or per
                          symmetric (zp 0)         gate and cell (per row)
b[g] (bias)               int32; int64 (16-bit)    ``s_x * s_Wx[g]`` (float32 product)
rb[g] (recurrent bias)    int32; int64 (16-bit)    ``s_h * s_Wh[g]`` (float32 product)
gate pre-activations      int16, zp 0              ``2^-12`` (Q3.12)
gate outputs              int16, zp 0              ``2^-15`` (Q0.15)
c (LSTM cell state)       int16, zp 0              ``2^p``, ``-15 <= p <= -9``
s (GRU state)             int16, zp 0              ``2^-15`` (Q0.15)
========================  =======================  ==========================================

Variants (``rounding`` names the MBQM of every FC and rescale): 8-bit activations take ``"double"``
(the stock TFLite build) or ``"single"`` (``TFLITE_SINGLE_ROUNDING``), int32 biases and accumulators;
16-bit activations (input and hidden both int16, zero points 0) take ``"int64"``: int64 biases and
accumulators, TFLite's int64 MBQM (15-bit multiplier) everywhere.

Gate order: the LSTM arrays stack the four gates in ONNX's order ``i, o, f, c`` (``GATES``), the GRU
arrays ``z, r, n`` (``GRU_GATES``, ONNX's ``z, r, h``), so an ONNX weight ``W[0]`` of shape ``[4H, I]``
(``[3H, I]``) is ``W[0].reshape(4, H, I)`` as it is. :func:`gates_to_internal` and
:func:`gru_gates_to_internal` reorder other layouts (TFLite ``ifco``, PyTorch ``ifgo`` and ``rzn``).

Effective multipliers (float32 arithmetic on the float32 scales, as ``lstm.cc`` does; then
:func:`runtime.fixedpoint.quantize_multiplier` in binary64):

- input FC of gate g: ``float32(float32(s_Wx[g] * s_x) / 2^-12)``;
- recurrent FC of gate g: ``float32(float32(s_Wh[g] * s_h) / 2^-12)``;
- LSTM hidden: ``float32(2^-15 / s_h * 2^-15)`` (binary64, then float32);
- GRU state in: ``float32(s_h / 2^-15)``; GRU state out: ``float32(2^-15 / s_h)`` (float32 division);
- folded biases (Prepare, in integers): ``bx = b - zp_x * rowsum(Wx)``, ``bh = rb - zp_h * rowsum(Wh)``.

>>> import numpy as np
>>> w = np.ones((4, 2, 3), np.int8); r = np.ones((4, 2, 2), np.int8); b = np.zeros((4, 2), np.int32)
>>> p = prepare_lstm(w, r, b, input_scale=0.5, input_zero_point=1, input_weight_scales=2.0 ** -8,
...                  hidden_scale=2.0 ** -7, hidden_zero_point=0, recurrent_weight_scales=2.0 ** -8,
...                  cell_scale=2.0 ** -11)
>>> int(p.input_multipliers[0, 0]), int(p.input_shifts[0, 0])   # 0.5 * 2^-8 / 2^-12 = 8 = 2^30 * 2^(4-31)
(1073741824, 4)
>>> int(p.input_bias_folded[0, 0]), p.cell_scale_log2, (p.hidden_multiplier, p.hidden_shift)  # 2^-23 = 2^30*2^(-22-31)
(-3, -11, (1073741824, -22))
>>> g = prepare_gru(np.ones((3, 2, 3), np.int8), np.ones((3, 2, 2), np.int8), None, None, input_scale=0.5,
...                 input_zero_point=0, input_weight_scales=2.0 ** -8, hidden_scale=2.0 ** -7, hidden_zero_point=0,
...                 recurrent_weight_scales=2.0 ** -8)
>>> (g.state_in_multiplier, g.state_in_shift), (g.state_out_multiplier, g.state_out_shift)  # 2^8 and 2^-8
((1073741824, 9), (1073741824, -7))
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import EncodingError, HwsimError, UnsupportedError
from .fixedpoint import INT64_ACC_LIMIT, quantize_multipliers

__all__ = ["GATES", "GATE_I", "GATE_O", "GATE_F", "GATE_C", "GRU_GATES", "GRU_GATE_Z", "GRU_GATE_R", "GRU_GATE_N",
           "GATE_PREACT_SCALE", "CELL_SCALE_LOG2_RANGE", "ROUNDINGS",
           "LstmQuantParams", "GruQuantParams", "prepare_lstm", "prepare_gru", "gates_to_internal",
           "gru_gates_to_internal"]

GATES = ("i", "o", "f", "c")  # internal LSTM gate order = ONNX's
GATE_I, GATE_O, GATE_F, GATE_C = 0, 1, 2, 3
GRU_GATES = ("z", "r", "n")  # internal GRU gate order = ONNX's z, r, h
GRU_GATE_Z, GRU_GATE_R, GRU_GATE_N = 0, 1, 2
GATE_PREACT_INTEGER_BITS = 3  # Q3.12 pre-activations
GATE_PREACT_SCALE = 2.0 ** -12
STATE_SCALE = 2.0 ** -15  # gate outputs and the GRU state: Q0.15
CELL_SCALE_LOG2_RANGE = (-15, -9)  # lstm.cc: p <= -9; ApplyTanh(15 + p) needs 15 + p >= 0
ACTIVATION_DTYPES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
ROUNDINGS = ("double", "single", "int64")
INT32_MAX = (1 << 31) - 1
INT64_BIAS_MAX = INT64_ACC_LIMIT - 1  # |acc| < 2^47 keeps the int64 MBQM exact (fixedpoint.py)
INT64_MBQM_MAX_SHIFT = 7  # the int64 MBQM needs -31 <= e < 8


@dataclass(frozen=True, eq=False)
class _RecurrentParams:
    """The fields LSTM and GRU parameters share: encodings, integer weights and biases, FC multipliers."""

    input_scale: float
    input_zero_point: int
    input_dtype: str
    hidden_scale: float
    hidden_zero_point: int
    hidden_dtype: str
    hidden_qmin: int
    hidden_qmax: int
    input_weights: np.ndarray
    recurrent_weights: np.ndarray
    bias: np.ndarray
    recurrent_bias: np.ndarray
    input_bias_folded: np.ndarray
    recurrent_bias_folded: np.ndarray
    input_multipliers: np.ndarray
    input_shifts: np.ndarray
    recurrent_multipliers: np.ndarray
    recurrent_shifts: np.ndarray

    @property
    def hidden_size(self) -> int:
        return int(self.input_weights.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.input_weights.shape[2])

    @property
    def variant(self) -> str:
        """``"8x8_16"`` (8-bit activations) or ``"16x8_16"`` (16-bit activations, rounding ``"int64"``)."""
        return "16x8_16" if self.rounding == "int64" else "8x8_16"


@dataclass(frozen=True, eq=False)
class LstmQuantParams(_RecurrentParams):
    """Everything the integer LSTM kernel needs; built by :func:`prepare_lstm` (do not fill by hand).

    Shapes: ``H`` cells, ``I`` input features; gates stacked ``i, o, f, c`` on axis 0.

    - ``input_zero_point``, ``input_dtype``: x's zero point and storage (``"int8"``/``"uint8"``/``"int16"``).
    - ``hidden_zero_point``, ``hidden_dtype``, ``hidden_qmin``, ``hidden_qmax``: h's (= the output's).
    - ``input_scale``, ``hidden_scale``: the float32 scales (kept for dequantizing, never read by
      kernels).
    - ``input_weights`` int8 ``[4, H, I]``, ``recurrent_weights`` int8 ``[4, H, H]``, ``bias`` (at
      ``s_x * s_Wx[g]``) and ``recurrent_bias`` (at ``s_h * s_Wh[g]``) ``[4, H]``: int32, or int64 for
      16-bit activations.
    - ``input_bias_folded`` ``= bias - zp_x * rowsum(Wx)``, ``recurrent_bias_folded`` ``= recurrent_bias
      - zp_h * rowsum(Wh)``: ``[4, H]``, int32 (int64 for 16-bit activations).
    - ``input_multipliers``/``input_shifts``, ``recurrent_multipliers``/``recurrent_shifts``: int32
      ``[4, H]`` (a per-gate scale is repeated along H).
    - ``hidden_multiplier``, ``hidden_shift``: rescale of ``o * tanh(c)`` (Q0.30) to h.
    - ``cell_scale_log2`` ``p``: the cell state's scale is ``2^p``.
    - ``cell_clip``: int16 bound, 0 = no clipping.
    - ``rounding``: ``"double"`` (stock TFLite build) or ``"single"`` (``TFLITE_SINGLE_ROUNDING``) for
      8-bit activations, ``"int64"`` (the int64 MBQM, 16x8_16) for 16-bit ones: the MBQM of the gate
      FCs and of the hidden rescale.
    """

    hidden_multiplier: int
    hidden_shift: int
    cell_scale_log2: int
    cell_clip: int
    rounding: str

    @property
    def cell_scale(self) -> float:
        return 2.0 ** self.cell_scale_log2



@dataclass(frozen=True, eq=False)
class GruQuantParams(_RecurrentParams):
    """Everything the integer GRU kernel needs; built by :func:`prepare_gru` (do not fill by hand).

    Shapes: ``H`` cells, ``I`` input features; gates stacked ``z, r, n`` on axis 0. The fields shared
    with :class:`LstmQuantParams` mean the same (biases, folded biases, FC multipliers, dtypes,
    ``rounding``). GRU-specific:

    - ``state_in_multiplier``, ``state_in_shift``: ``h0 - zp_h`` to the Q0.15 state,
      ``QM(float32(s_h / 2^-15))``;
    - ``state_out_multiplier``, ``state_out_shift``: the Q0.15 state to h, ``QM(float32(2^-15 / s_h))``;
    - ``linear_before_reset``: always True (``r * (Wh_n h + rb_n)``, PyTorch's and ONNX's lbr = 1).
    """

    state_in_multiplier: int
    state_in_shift: int
    state_out_multiplier: int
    state_out_shift: int
    rounding: str
    linear_before_reset: bool = True



# ---------------------------------------------------------------------------------------------
# gate order
# ---------------------------------------------------------------------------------------------
def _reorder(w, order: str, gates: tuple, aliases: dict, fn: str) -> np.ndarray:
    n = len(gates)
    src = "".join(aliases.get(ch, ch) for ch in order)
    if len(src) != n or sorted(src) != sorted(gates):
        names = ", ".join(gates) + "".join(f" ({a} = {b})" for a, b in aliases.items())
        raise HwsimError(f"{fn}: order must name the gates {names} once each, found {order!r}")
    a = np.asarray(w)
    if a.ndim >= 1 and a.shape[0] != n:
        if a.shape[0] % n:
            raise HwsimError(f"{fn}: the first axis must hold {n} stacked gates, found shape {a.shape}")
        a = a.reshape((n, a.shape[0] // n) + a.shape[1:])
    return np.stack([a[src.index(g)] for g in gates])


def gates_to_internal(w, order: str) -> np.ndarray:
    """Reorder a stacked ``[4H, ...]`` (or ``[4, H, ...]``) LSTM gate tensor from ``order`` to ``i, o, f, c``.

    ``order`` names the source's gates top to bottom: ONNX ``"iofc"``, TFLite ``"ifco"``, PyTorch
    ``"ifgo"`` (``g`` is the cell gate, the same as ``c``). Returns ``[4, H, ...]``.

    >>> w = np.arange(8).reshape(8, 1)          # PyTorch weight_ih_l0 rows: i i f f g g o o
    >>> gates_to_internal(w, "ifgo")[:, :, 0].tolist()
    [[0, 1], [6, 7], [2, 3], [4, 5]]
    """
    return _reorder(w, order, GATES, {"g": "c"}, "gates_to_internal")


def gru_gates_to_internal(w, order: str) -> np.ndarray:
    """Reorder a stacked ``[3H, ...]`` (or ``[3, H, ...]``) GRU gate tensor from ``order`` to ``z, r, n``.

    ``order`` names the source's gates top to bottom: ONNX ``"zrh"`` (``h`` is the candidate gate, the
    same as ``n``), PyTorch ``"rzn"`` (``weight_ih_l0``: reset, update, new). Returns ``[3, H, ...]``.

    >>> w = np.arange(6).reshape(6, 1)          # PyTorch weight_ih_l0 rows: r r z z n n
    >>> gru_gates_to_internal(w, "rzn")[:, :, 0].tolist()
    [[2, 3], [0, 1], [4, 5]]
    """
    return _reorder(w, order, GRU_GATES, {"h": "n"}, "gru_gates_to_internal")


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------
def _float32_scale(layer: str, name: str, value) -> np.float32:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != 1:
        raise EncodingError(f"{layer} {name}: expected one per-tensor scale, found shape {arr.shape}")
    s = np.float32(arr.reshape(()))
    if not (np.isfinite(s) and s > 0):
        raise EncodingError(f"{layer} {name}: scale must be finite and > 0, found {float(arr.reshape(()))!r}")
    return s


def _gate_scales(layer: str, name: str, value, gates: tuple, hidden: int) -> np.ndarray:
    """Per-gate ([G]) or per-gate-and-cell ([G, H]) weight scales as float32 [G, H]."""
    n = len(gates)
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape == (n,):
        arr = np.repeat(arr[:, None], hidden, axis=1)
    if arr.shape != (n, hidden):
        raise EncodingError(f"{layer} {name}: expected a scalar, {n} per-gate scales or [{n}, {hidden}] per-row "
                            f"scales, found shape {arr.shape}")
    s = arr.astype(np.float32)
    if not np.all(np.isfinite(s) & (s > 0)):
        raise EncodingError(f"{layer} {name}: weight scales must be finite and > 0, found minimum "
                            f"{float(arr.min())!r}")
    return s


def _int_array(layer: str, name: str, value, shape: tuple, lo: int, hi: int, gates: tuple) -> np.ndarray:
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.integer):
        raise EncodingError(f"{layer} {name}: expected integers (quantized values), found dtype {arr.dtype}")
    if arr.shape != shape:
        raise HwsimError(f"{layer} {name}: expected shape {shape} (gates {', '.join(gates)} stacked on axis 0), "
                         f"found {arr.shape}")
    if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        raise EncodingError(f"{layer} {name}: values must lie in [{lo}, {hi}], found [{int(arr.min())}, "
                            f"{int(arr.max())}]")
    return arr.astype(np.int64)


def _variant(layer: str, input_dtype: str, hidden_dtype: str, rounding: str) -> bool:
    """Check the (dtypes, rounding) combination; True for the 16-bit (16x8_16) variant."""
    if rounding not in ROUNDINGS:
        raise HwsimError(f"prepare_{layer.lower()}: rounding must be one of {ROUNDINGS}, found {rounding!r}")
    for name, dt in (("input", input_dtype), ("hidden state", hidden_dtype)):
        if dt not in ACTIVATION_DTYPES:
            raise UnsupportedError(f"{layer} {name}: the integer {layer} takes int8, uint8 or int16 activations, "
                                   f"found {dt!r}")
    wide = (input_dtype == "int16", hidden_dtype == "int16", rounding == "int64")
    if any(wide) and not all(wide):
        raise UnsupportedError(
            f"{layer}: input {input_dtype}, hidden state {hidden_dtype} with rounding {rounding!r} is not a supported "
            "combination: 8-bit activations (int8 or uint8 input and hidden state, the 8x8_16 variant) take rounding "
            "'double' or 'single'; 16-bit activations (int16 input and hidden state, the 16x8_16 variant) take "
            "rounding 'int64'")
    return all(wide)


def _zero_point(layer: str, name: str, zp, dtype: str) -> int:
    lo, hi = ACTIVATION_DTYPES[dtype]
    if isinstance(zp, bool) or not isinstance(zp, (int, np.integer)) or not lo <= int(zp) <= hi:
        raise EncodingError(f"{layer} {name}: zero point must be an int in [{lo}, {hi}] ({dtype}), found {zp!r}")
    if dtype == "int16" and int(zp) != 0:
        raise EncodingError(f"{layer} {name}: the 16-bit (16x8_16) variant needs a symmetric int16 encoding with "
                            f"zero point 0, found {int(zp)}; quantize this tensor symmetrically")
    return int(zp)


def _cell_scale_log2(cell_scale) -> int:
    s = float(np.float32(cell_scale))
    m, e = math.frexp(s) if s > 0 and math.isfinite(s) else (0.0, 0)
    lo, hi = CELL_SCALE_LOG2_RANGE
    if m != 0.5 or not lo <= e - 1 <= hi:
        raise EncodingError(f"LSTM cell state: the integer LSTM needs a power-of-two cell scale 2^p with {lo} <= p "
                            f"<= {hi} (Q{15 + lo}.{-lo} .. Q{15 + hi}.{-hi}), found {cell_scale!r}; calibrate the cell "
                            "range and round its scale up to a power of two")
    return e - 1


def _multipliers(layer: str, name: str, real: np.ndarray, rounding: str) -> tuple[np.ndarray, np.ndarray]:
    m, e = quantize_multipliers(real.astype(np.float64), single_rounding_clamp=(rounding == "single"))
    hi = INT64_MBQM_MAX_SHIFT if rounding == "int64" else 31
    if int(e.min()) < -31 or int(e.max()) > hi:
        what = "the int64 MBQM (16x8_16)" if rounding == "int64" else "MBQM"
        raise EncodingError(f"{layer} {name}: effective scale outside what {what} can apply (shift "
                            f"{int(e.min())}..{int(e.max())}, allowed -31..{hi}); check the scales of this layer")
    return m, e


def _check_accumulator(layer: str, name: str, b: np.ndarray, w: np.ndarray, wide: bool, gates: tuple) -> None:
    """|b| + max|x - zp| * sum|W| must fit the accumulator: int32 (8-bit), |acc| < 2^47 (int64 MBQM)."""
    amp, limit = (32768, INT64_BIAS_MAX) if wide else (255, INT32_MAX)
    worst = np.abs(b) + amp * np.abs(w).sum(axis=2)
    if worst.size and int(worst.max()) > limit:
        g, j = np.unravel_index(int(np.argmax(worst)), worst.shape)
        acc = "the int64 MBQM's domain |acc| < 2^47" if wide else "the int32 accumulator"
        raise EncodingError(f"{layer} {name}: gate {gates[g]} cell {j} can overflow {acc} "
                            f"(|b| + {amp} * sum|W| = {int(worst[g, j])}); the bias is too large for its scale")


def _fc_params(layer: str, gates: tuple, input_weights, recurrent_weights, bias, recurrent_bias, input_scale,
               input_zero_point, input_weight_scales, hidden_scale, hidden_zero_point, recurrent_weight_scales,
               input_dtype: str, hidden_dtype: str, rounding: str) -> dict:
    """Validate and prepare what the LSTM and GRU share: weights, biases, FC multipliers, encodings."""
    wide = _variant(layer, input_dtype, hidden_dtype, rounding)
    n = len(gates)
    wx = np.asarray(input_weights)
    if wx.ndim != 3 or wx.shape[0] != n or min(wx.shape) < 1:
        raise HwsimError(f"{layer} input weights: expected shape [{n}, H, I] (gates {', '.join(gates)}), "
                         f"found {wx.shape}")
    hid, n_in = int(wx.shape[1]), int(wx.shape[2])
    wx = _int_array(layer, "input weights", wx, (n, hid, n_in), -128, 127, gates)
    wh = _int_array(layer, "recurrent weights", recurrent_weights, (n, hid, hid), -128, 127, gates)
    b_lo, b_hi = (-INT64_BIAS_MAX, INT64_BIAS_MAX) if wide else (-(1 << 31), INT32_MAX)
    b = np.zeros((n, hid), np.int64) if bias is None else \
        _int_array(layer, "bias", bias, (n, hid), b_lo, b_hi, gates)
    rb = np.zeros((n, hid), np.int64) if recurrent_bias is None else \
        _int_array(layer, "recurrent bias", recurrent_bias, (n, hid), b_lo, b_hi, gates)
    zx = _zero_point(layer, "input", input_zero_point, input_dtype)
    zh = _zero_point(layer, "hidden state", hidden_zero_point, hidden_dtype)
    s_x = _float32_scale(layer, "input", input_scale)
    s_h = _float32_scale(layer, "hidden state", hidden_scale)
    s_wx = _gate_scales(layer, "input weights", input_weight_scales, gates, hid)
    s_wh = _gate_scales(layer, "recurrent weights", recurrent_weight_scales, gates, hid)
    _check_accumulator(layer, "bias/input weights", b, wx, wide, gates)
    _check_accumulator(layer, "recurrent bias/recurrent weights", rb, wh, wide, gates)

    gate_scale = np.float32(GATE_PREACT_SCALE)
    with np.errstate(under="ignore", over="ignore"):
        real_x = (s_wx * s_x) / gate_scale
        real_h = (s_wh * s_h) / gate_scale
    m_x, e_x = _multipliers(layer, "input FC", real_x, rounding)
    m_h, e_h = _multipliers(layer, "recurrent FC", real_h, rounding)
    lo, hi = ACTIVATION_DTYPES[hidden_dtype]
    bias_dtype = np.int64 if wide else np.int32
    return dict(
        input_scale=float(s_x), input_zero_point=zx, input_dtype=input_dtype,
        hidden_scale=float(s_h), hidden_zero_point=zh, hidden_dtype=hidden_dtype, hidden_qmin=lo, hidden_qmax=hi,
        input_weights=wx.astype(np.int8), recurrent_weights=wh.astype(np.int8), bias=b.astype(bias_dtype),
        recurrent_bias=rb.astype(bias_dtype), input_bias_folded=(b - zx * wx.sum(axis=2)).astype(bias_dtype),
        recurrent_bias_folded=(rb - zh * wh.sum(axis=2)).astype(bias_dtype),
        input_multipliers=m_x, input_shifts=e_x, recurrent_multipliers=m_h, recurrent_shifts=e_h, rounding=rounding)


def _scalar_multiplier(layer: str, name: str, real: np.float32, rounding: str) -> tuple[int, int]:
    (m,), (e,) = _multipliers(layer, name, np.array([real]), rounding)
    return int(m), int(e)


# ---------------------------------------------------------------------------------------------
# plan time
# ---------------------------------------------------------------------------------------------
def prepare_lstm(input_weights, recurrent_weights, bias, *, input_scale, input_zero_point, input_weight_scales,
                 hidden_scale, hidden_zero_point, recurrent_weight_scales, cell_scale, cell_clip: float = 0.0,
                 input_dtype: str = "int8", hidden_dtype: str = "int8", rounding: str = "double",
                 recurrent_bias=None, projection_weights=None, layer_norm_coefficients=None,
                 peephole_weights=None) -> LstmQuantParams:
    """Integer parameters of one LSTM direction (TFLite ``PopulateQuantizedLstmParams8x8_16``).

    - ``input_weights`` int8 ``[4, H, I]``, ``recurrent_weights`` int8 ``[4, H, H]``, gates ``i, o, f, c``
      (see :func:`gates_to_internal`); symmetric (their zero point is 0); int4 values are int8 values.
    - ``bias``: integer ``[4, H]`` at scale ``float32(s_x * s_Wx[g])``, or None (zeros).
    - ``recurrent_bias``: integer ``[4, H]`` at scale ``float32(s_h * s_Wh[g])``, or None (zeros); added to
      the recurrent FC's accumulator (TFLite has none; ONNX's ``Rb`` may come here or be summed into
      ``bias``).
    - ``input_scale``/``input_zero_point``/``input_dtype``: x's encoding; ``hidden_*``: h's (the
      output's and the recurrent input's).
    - ``input_weight_scales``/``recurrent_weight_scales``: scalar, ``[4]`` (per gate, TFLite) or
      ``[4, H]`` (per gate and cell: this project's extension, same formula per row).
    - ``cell_scale``: must be ``2^p`` exactly, ``-15 <= p <= -9`` (TFLite ``CheckedLog2`` and ``p <= -9``).
    - ``cell_clip``: float bound on the cell state (0 = none), quantized as TFLite does:
      ``int16(trunc(min(max(float32(clip) / float32(s_c), -32768), 32767)))``.
    - ``rounding``: ``"double"`` or ``"single"`` (the MBQM build) with 8-bit (int8/uint8) activations;
      ``"int64"`` with 16-bit activations (``input_dtype = hidden_dtype = "int16"``, zero points 0,
      int64 biases and accumulators, the int64 MBQM everywhere: the 16x8_16 variant). Other
      combinations raise :class:`~runtime.errors.UnsupportedError`.
    - ``projection_weights``, ``layer_norm_coefficients``, ``peephole_weights``: not supported; any
      value other than None raises :class:`~runtime.errors.UnsupportedError`.

    Both FCs must fit their accumulator: ``|b| + 255 * sum|W|`` per row within int32 (8-bit, TFLite's
    int32 accumulator), ``|b| + 32768 * sum|W| < 2^47`` (16-bit, the int64 MBQM's domain); otherwise
    :class:`~runtime.errors.EncodingError`.
    """
    for what, given in (("projection", projection_weights), ("layer normalization", layer_norm_coefficients),
                        ("peephole connections", peephole_weights)):
        if given is not None:
            raise UnsupportedError(f"LSTM: {what} is not supported by the integer LSTM (TFLite's 8x8_16 path is "
                                   "implemented without it); run this layer in float or remove the " + what)
    fc = _fc_params("LSTM", GATES, input_weights, recurrent_weights, bias, recurrent_bias, input_scale,
                    input_zero_point, input_weight_scales, hidden_scale, hidden_zero_point, recurrent_weight_scales,
                    input_dtype, hidden_dtype, rounding)
    p = _cell_scale_log2(cell_scale)
    s_c = np.float32(2.0 ** p)
    clip = float(cell_clip)
    if not math.isfinite(clip) or clip < 0:
        raise EncodingError(f"LSTM cell_clip must be finite and >= 0 (0 = no clipping), found {cell_clip!r}")
    clip_q = 0
    if clip > 0:
        clip_q = int(np.float32(min(max(np.float32(clip) / s_c, np.float32(-32768.0)), np.float32(32767.0))))
        if clip_q == 0:
            raise EncodingError(f"LSTM cell_clip {clip!r} is below the cell state's step {float(s_c)!r}")
    real_hidden = np.float32(2.0 ** -15 / fc["hidden_scale"] * 2.0 ** -15)
    m_o, e_o = _scalar_multiplier("LSTM", "hidden rescale", real_hidden, rounding)
    return LstmQuantParams(**fc, hidden_multiplier=m_o, hidden_shift=e_o, cell_scale_log2=p, cell_clip=clip_q)


def prepare_gru(input_weights, recurrent_weights, bias=None, recurrent_bias=None, *, input_scale, input_zero_point,
                input_weight_scales, hidden_scale, hidden_zero_point, recurrent_weight_scales,
                input_dtype: str = "int8", hidden_dtype: str = "int8", rounding: str = "double",
                linear_before_reset=True) -> GruQuantParams:
    """Integer parameters of one GRU direction (this project's definition, RECURRENT_ARITHMETIC.md).

    - ``input_weights`` int8 ``[3, H, I]``, ``recurrent_weights`` int8 ``[3, H, H]``, gates ``z, r, n``
      (ONNX ``z, r, h``; see :func:`gru_gates_to_internal`), symmetric; int4 values are int8 values.
    - ``bias``: integer ``[3, H]`` at ``float32(s_x * s_Wx[g])``; ``recurrent_bias``: integer ``[3, H]``
      at ``float32(s_h * s_Wh[g])``; None = zeros. The n gate's recurrent bias is inside the reset
      product (``r * (Wh_n h + rb_n)``), so it cannot be moved into ``bias``; z's and r's can.
    - encodings, weight scales (scalar, ``[3]`` or ``[3, H]``), dtypes and ``rounding``: as
      :func:`prepare_lstm` (8-bit activations with ``"double"``/``"single"``, int16 with ``"int64"``).
    - ``linear_before_reset``: must be true (PyTorch's GRU, ONNX ``linear_before_reset = 1``); the
      lbr = 0 form (``Wh_n (r * h)``) is not defined here: :class:`~runtime.errors.UnsupportedError`.

    The state multipliers are ``QM(float32(s_h / 2^-15))`` (h0 to the Q0.15 state) and
    ``QM(float32(2^-15 / s_h))`` (the state to h).
    """
    if isinstance(linear_before_reset, (bool, np.bool_)) or linear_before_reset in (0, 1):
        lbr = bool(linear_before_reset)
    else:
        raise HwsimError(f"prepare_gru: linear_before_reset must be a boolean (or the ONNX attribute 0/1), found "
                         f"{linear_before_reset!r}")
    if not lbr:
        raise UnsupportedError("GRU linear_before_reset = 0: the integer GRU is defined only for linear_before_reset "
                               "= 1 (PyTorch's GRU: the reset gate multiplies Wh_n h + b_hn); export the layer with "
                               "linear_before_reset = 1 or run it in float")
    fc = _fc_params("GRU", GRU_GATES, input_weights, recurrent_weights, bias, recurrent_bias, input_scale,
                    input_zero_point, input_weight_scales, hidden_scale, hidden_zero_point, recurrent_weight_scales,
                    input_dtype, hidden_dtype, rounding)
    s_h = np.float32(fc["hidden_scale"])
    with np.errstate(under="ignore", over="ignore"):
        real_in = s_h / np.float32(STATE_SCALE)
        real_out = np.float32(STATE_SCALE) / s_h
    m_in, e_in = _scalar_multiplier("GRU", "hidden state to Q0.15 state", real_in, rounding)
    m_out, e_out = _scalar_multiplier("GRU", "Q0.15 state to hidden state", real_out, rounding)
    return GruQuantParams(**fc, state_in_multiplier=m_in, state_in_shift=e_in, state_out_multiplier=m_out,
                          state_out_shift=e_out, linear_before_reset=True)
