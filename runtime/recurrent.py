"""Integer LSTM: the arithmetic's parameters and their plan-time computation (TFLite's 8x8_16 LSTM).

The integer semantics, with sources, are in ``runtime/RECURRENT_ARITHMETIC.md``; the kernels are
:mod:`runtime.kernels.recurrent`. This module turns float scales and integer weights into the
integer parameters once (TFLite's ``PopulateQuantizedLstmParams8x8_16`` and
``PopulatePrecomputedZPTimesWeightsWithBias``, LiteRT ``tflite/kernels/lstm.cc``); the kernels never see
a float.

Tensors and their encodings (``real = scale * (q - zero_point)``):

========================  =======================  ==========================================
tensor                    storage                  encoding
========================  =======================  ==========================================
x (input)                 int8 or uint8            ``s_x``, ``zp_x`` (any)
h (hidden = output)       int8 or uint8            ``s_h``, ``zp_h``; feeds back as input of
                                                   the recurrent FCs and is the layer output
Wx[g], Wh[g] (weights)    int8, symmetric (zp 0)   ``s_Wx[g]``, ``s_Wh[g]``: per gate, or per
                                                   gate and cell (per row)
b[g] (bias)               int32, zp 0              ``s_x * s_Wx[g]`` (float32 product)
gate pre-activations      int16, zp 0              ``2^-12`` (Q3.12)
gate outputs              int16, zp 0              ``2^-15`` (Q0.15)
c (cell state)            int16, zp 0              ``2^p``, ``-15 <= p <= -9``
========================  =======================  ==========================================

Gate order: the arrays stack the four gates in ONNX's order ``i, o, f, c`` (``GATES``), so an ONNX
``LSTM`` weight ``W[0]`` of shape ``[4H, I]`` is ``W[0].reshape(4, H, I)`` as it is.
:func:`gates_to_internal` reorders other layouts (TFLite ``ifco``, PyTorch ``ifgo``, where g is the
cell gate c). ONNX's two biases ``Wb + Rb`` are one bias here, quantized at the input FC's scale
``s_x * s_Wx[g]`` (TFLite has no recurrent bias).

Effective multipliers (float32 arithmetic on the float32 scales, as ``lstm.cc`` does; then
:func:`runtime.fixedpoint.quantize_multiplier` in binary64):

- input FC of gate g: ``float32(float32(s_Wx[g] * s_x) / 2^-12)``;
- recurrent FC of gate g: ``float32(float32(s_Wh[g] * s_h) / 2^-12)``;
- hidden: ``float32(2^-15 / s_h * 2^-15)`` (binary64, then float32);
- folded biases (Prepare, in integers): ``bx = b - zp_x * rowsum(Wx)``, ``bh = -zp_h * rowsum(Wh)``.

>>> import numpy as np
>>> w = np.ones((4, 2, 3), np.int8); r = np.ones((4, 2, 2), np.int8); b = np.zeros((4, 2), np.int32)
>>> p = prepare_lstm(w, r, b, input_scale=0.5, input_zero_point=1, input_weight_scales=2.0 ** -8,
...                  hidden_scale=2.0 ** -7, hidden_zero_point=0, recurrent_weight_scales=2.0 ** -8,
...                  cell_scale=2.0 ** -11)
>>> int(p.input_multipliers[0, 0]), int(p.input_shifts[0, 0])   # 0.5 * 2^-8 / 2^-12 = 8 = 2^30 * 2^(4-31)
(1073741824, 4)
>>> int(p.input_bias_folded[0, 0]), p.cell_scale_log2, (p.hidden_multiplier, p.hidden_shift)  # 2^-23 = 2^30*2^(-22-31)
(-3, -11, (1073741824, -22))
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import EncodingError, HwsimError, UnsupportedError
from .fixedpoint import quantize_multipliers

__all__ = ["GATES", "GATE_I", "GATE_O", "GATE_F", "GATE_C", "GATE_PREACT_SCALE", "CELL_SCALE_LOG2_RANGE",
           "LstmQuantParams", "prepare_lstm", "gates_to_internal"]

GATES = ("i", "o", "f", "c")  # internal gate order = ONNX's
GATE_I, GATE_O, GATE_F, GATE_C = 0, 1, 2, 3
GATE_PREACT_INTEGER_BITS = 3  # Q3.12 pre-activations
GATE_PREACT_SCALE = 2.0 ** -12
CELL_SCALE_LOG2_RANGE = (-15, -9)  # lstm.cc: p <= -9; ApplyTanh(15 + p) needs 15 + p >= 0
ACTIVATION_DTYPES = {"int8": (-128, 127), "uint8": (0, 255)}
ROUNDINGS = ("double", "single")
INT32_MAX = (1 << 31) - 1


@dataclass(frozen=True, eq=False)
class LstmQuantParams:
    """Everything the integer LSTM kernel needs; built by :func:`prepare_lstm` (do not fill by hand).

    Shapes: ``H`` cells, ``I`` input features; gates stacked ``i, o, f, c`` on axis 0.

    - ``input_zero_point``, ``input_dtype``: x's zero point and storage (``"int8"``/``"uint8"``).
    - ``hidden_zero_point``, ``hidden_dtype``, ``hidden_qmin``, ``hidden_qmax``: h's (= the output's).
    - ``input_scale``, ``hidden_scale``: the float32 scales (kept for dequantizing, never read by
      kernels).
    - ``input_weights`` int8 ``[4, H, I]``, ``recurrent_weights`` int8 ``[4, H, H]``, ``bias`` int32
      ``[4, H]`` (at ``s_x * s_Wx[g]``).
    - ``input_bias_folded`` ``= bias - zp_x * rowsum(Wx)``, ``recurrent_bias_folded`` ``= -zp_h *
      rowsum(Wh)``: int32 ``[4, H]``.
    - ``input_multipliers``/``input_shifts``, ``recurrent_multipliers``/``recurrent_shifts``: int32
      ``[4, H]`` (a per-gate scale is repeated along H).
    - ``hidden_multiplier``, ``hidden_shift``: rescale of ``o * tanh(c)`` (Q0.30) to h.
    - ``cell_scale_log2`` ``p``: the cell state's scale is ``2^p``.
    - ``cell_clip``: int16 bound, 0 = no clipping.
    - ``rounding``: ``"double"`` (stock TFLite build) or ``"single"`` (``TFLITE_SINGLE_ROUNDING``),
      the MBQM of the gate FCs and of the hidden rescale.
    """

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
    input_bias_folded: np.ndarray
    recurrent_bias_folded: np.ndarray
    input_multipliers: np.ndarray
    input_shifts: np.ndarray
    recurrent_multipliers: np.ndarray
    recurrent_shifts: np.ndarray
    hidden_multiplier: int
    hidden_shift: int
    cell_scale_log2: int
    cell_clip: int
    rounding: str

    @property
    def hidden_size(self) -> int:
        return int(self.input_weights.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.input_weights.shape[2])

    @property
    def cell_scale(self) -> float:
        return 2.0 ** self.cell_scale_log2


def gates_to_internal(w, order: str) -> np.ndarray:
    """Reorder a stacked ``[4H, ...]`` (or ``[4, H, ...]``) gate tensor from ``order`` to ``i, o, f, c``.

    ``order`` names the source's gates top to bottom: ONNX ``"iofc"``, TFLite ``"ifco"``, PyTorch
    ``"ifgo"`` (``g`` is the cell gate, the same as ``c``). Returns ``[4, H, ...]``.

    >>> w = np.arange(8).reshape(8, 1)          # PyTorch weight_ih_l0 rows: i i f f g g o o
    >>> gates_to_internal(w, "ifgo")[:, :, 0].tolist()
    [[0, 1], [6, 7], [2, 3], [4, 5]]
    """
    src = order.replace("g", "c")
    if sorted(src) != sorted("iofc") or len(src) != 4:
        raise HwsimError(f"gates_to_internal: order must name the gates i, o, f, c (g = c) once each, found {order!r}")
    a = np.asarray(w)
    if a.ndim >= 1 and a.shape[0] != 4:
        if a.shape[0] % 4:
            raise HwsimError(f"gates_to_internal: the first axis must hold 4 stacked gates, found shape {a.shape}")
        a = a.reshape((4, a.shape[0] // 4) + a.shape[1:])
    return np.stack([a[src.index(g)] for g in GATES])


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------
def _float32_scale(name: str, value) -> np.float32:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != 1:
        raise EncodingError(f"LSTM {name}: expected one per-tensor scale, found shape {arr.shape}")
    s = np.float32(arr.reshape(()))
    if not (np.isfinite(s) and s > 0):
        raise EncodingError(f"LSTM {name}: scale must be finite and > 0, found {float(arr.reshape(()))!r}")
    return s


def _gate_scales(name: str, value, hidden: int) -> np.ndarray:
    """Per-gate ([4]) or per-gate-and-cell ([4, H]) weight scales as float32 [4, H]."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(4, float(arr))
    if arr.shape == (4,):
        arr = np.repeat(arr[:, None], hidden, axis=1)
    if arr.shape != (4, hidden):
        raise EncodingError(f"LSTM {name}: expected a scalar, 4 per-gate scales or [4, {hidden}] per-row scales, "
                            f"found shape {arr.shape}")
    s = arr.astype(np.float32)
    if not np.all(np.isfinite(s) & (s > 0)):
        raise EncodingError(f"LSTM {name}: weight scales must be finite and > 0, found minimum {float(arr.min())!r}")
    return s


def _int_array(name: str, value, shape: tuple, lo: int, hi: int) -> np.ndarray:
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.integer):
        raise EncodingError(f"LSTM {name}: expected integers (quantized values), found dtype {arr.dtype}")
    if arr.shape != shape:
        raise HwsimError(f"LSTM {name}: expected shape {shape} (gates i, o, f, c stacked on axis 0), found {arr.shape}")
    if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        raise EncodingError(f"LSTM {name}: values must lie in [{lo}, {hi}], found [{int(arr.min())}, {int(arr.max())}]")
    return arr.astype(np.int64)


def _zero_point(name: str, zp, dtype: str) -> int:
    if dtype not in ACTIVATION_DTYPES:
        raise UnsupportedError(f"LSTM {name}: the integer LSTM takes int8 or uint8 activations, found {dtype!r}")
    lo, hi = ACTIVATION_DTYPES[dtype]
    if isinstance(zp, bool) or not isinstance(zp, (int, np.integer)) or not lo <= int(zp) <= hi:
        raise EncodingError(f"LSTM {name}: zero point must be an int in [{lo}, {hi}] ({dtype}), found {zp!r}")
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


def _multipliers(name: str, real: np.ndarray, rounding: str) -> tuple[np.ndarray, np.ndarray]:
    m, e = quantize_multipliers(real.astype(np.float64), single_rounding_clamp=(rounding == "single"))
    if int(e.min()) < -31 or int(e.max()) > 31:
        raise EncodingError(f"LSTM {name}: effective scale outside what MBQM can apply (shift {int(e.min())}.."
                            f"{int(e.max())})")
    return m, e


# ---------------------------------------------------------------------------------------------
# plan time
# ---------------------------------------------------------------------------------------------
def prepare_lstm(input_weights, recurrent_weights, bias, *, input_scale, input_zero_point, input_weight_scales,
                 hidden_scale, hidden_zero_point, recurrent_weight_scales, cell_scale, cell_clip: float = 0.0,
                 input_dtype: str = "int8", hidden_dtype: str = "int8", rounding: str = "double",
                 projection_weights=None, layer_norm_coefficients=None, peephole_weights=None) -> LstmQuantParams:
    """Integer parameters of one LSTM direction (TFLite ``PopulateQuantizedLstmParams8x8_16``).

    - ``input_weights`` int8 ``[4, H, I]``, ``recurrent_weights`` int8 ``[4, H, H]``, gates ``i, o, f, c``
      (see :func:`gates_to_internal`); symmetric (their zero point is 0).
    - ``bias``: int32 ``[4, H]`` at scale ``float32(s_x * s_Wx[g])``, or None (zeros).
    - ``input_scale``/``input_zero_point``/``input_dtype``: x's encoding; ``hidden_*``: h's (the
      output's and the recurrent input's).
    - ``input_weight_scales``/``recurrent_weight_scales``: scalar, ``[4]`` (per gate, TFLite) or
      ``[4, H]`` (per gate and cell: this project's extension, same formula per row).
    - ``cell_scale``: must be ``2^p`` exactly, ``-15 <= p <= -9`` (TFLite ``CheckedLog2`` and ``p <= -9``).
    - ``cell_clip``: float bound on the cell state (0 = none), quantized as TFLite does:
      ``int16(trunc(min(max(float32(clip) / float32(s_c), -32768), 32767)))``.
    - ``rounding``: ``"double"`` or ``"single"`` (the MBQM build).
    - ``projection_weights``, ``layer_norm_coefficients``, ``peephole_weights``: not supported; any
      value other than None raises :class:`~runtime.errors.UnsupportedError`.

    The 8-bit input FC must fit int32: ``|b| + 255 * sum|Wx|`` per row is checked (TFLite's int32
    accumulator); otherwise :class:`~runtime.errors.EncodingError`.
    """
    for what, given in (("projection", projection_weights), ("layer normalization", layer_norm_coefficients),
                        ("peephole connections", peephole_weights)):
        if given is not None:
            raise UnsupportedError(f"LSTM: {what} is not supported by the integer LSTM (TFLite's 8x8_16 path is "
                                   "implemented without it); run this layer in float or remove the " + what)
    if rounding not in ROUNDINGS:
        raise HwsimError(f"prepare_lstm: rounding must be one of {ROUNDINGS}, found {rounding!r}")
    wx = np.asarray(input_weights)
    if wx.ndim != 3 or wx.shape[0] != 4 or min(wx.shape) < 1:
        raise HwsimError(f"LSTM input weights: expected shape [4, H, I] (gates i, o, f, c), found {wx.shape}")
    hid, n_in = int(wx.shape[1]), int(wx.shape[2])
    wx = _int_array("input weights", wx, (4, hid, n_in), -128, 127)
    wh = _int_array("recurrent weights", recurrent_weights, (4, hid, hid), -128, 127)
    b = np.zeros((4, hid), np.int64) if bias is None else \
        _int_array("bias", bias, (4, hid), -(1 << 31), INT32_MAX)
    zx = _zero_point("input", input_zero_point, input_dtype)
    zh = _zero_point("hidden state", hidden_zero_point, hidden_dtype)
    s_x = _float32_scale("input", input_scale)
    s_h = _float32_scale("hidden state", hidden_scale)
    s_wx = _gate_scales("input weights", input_weight_scales, hid)
    s_wh = _gate_scales("recurrent weights", recurrent_weight_scales, hid)
    p = _cell_scale_log2(cell_scale)
    s_c = np.float32(2.0 ** p)

    worst = np.abs(b) + 255 * np.abs(wx).sum(axis=2)
    if int(worst.max()) > INT32_MAX:
        g, j = np.unravel_index(int(np.argmax(worst)), worst.shape)
        raise EncodingError(f"LSTM bias/input weights: gate {GATES[g]} cell {j} can overflow the int32 accumulator "
                            f"(|b| + 255 * sum|W| = {int(worst[g, j])}); the bias is too large for its scale")

    clip = float(cell_clip)
    if not math.isfinite(clip) or clip < 0:
        raise EncodingError(f"LSTM cell_clip must be finite and >= 0 (0 = no clipping), found {cell_clip!r}")
    clip_q = 0
    if clip > 0:
        clip_q = int(np.float32(min(max(np.float32(clip) / s_c, np.float32(-32768.0)), np.float32(32767.0))))
        if clip_q == 0:
            raise EncodingError(f"LSTM cell_clip {clip!r} is below the cell state's step {float(s_c)!r}")

    gate_scale = np.float32(GATE_PREACT_SCALE)
    with np.errstate(under="ignore", over="ignore"):
        real_x = (s_wx * s_x) / gate_scale
        real_h = (s_wh * s_h) / gate_scale
    m_x, e_x = _multipliers("input FC", real_x, rounding)
    m_h, e_h = _multipliers("recurrent FC", real_h, rounding)
    real_hidden = np.float32(2.0 ** -15 / float(s_h) * 2.0 ** -15)
    (m_o,), (e_o,) = _multipliers("hidden rescale", np.array([real_hidden]), rounding)

    lo, hi = ACTIVATION_DTYPES[hidden_dtype]
    bx = b - zx * wx.sum(axis=2)
    bh = -zh * wh.sum(axis=2)
    return LstmQuantParams(
        input_scale=float(s_x), input_zero_point=zx, input_dtype=input_dtype,
        hidden_scale=float(s_h), hidden_zero_point=zh, hidden_dtype=hidden_dtype, hidden_qmin=lo, hidden_qmax=hi,
        input_weights=wx.astype(np.int8), recurrent_weights=wh.astype(np.int8), bias=b.astype(np.int32),
        input_bias_folded=bx.astype(np.int32), recurrent_bias_folded=bh.astype(np.int32),
        input_multipliers=m_x, input_shifts=e_x, recurrent_multipliers=m_h, recurrent_shifts=e_h,
        hidden_multiplier=int(m_o), hidden_shift=int(e_o), cell_scale_log2=p, cell_clip=clip_q, rounding=rounding)
