"""ONNX LSTM and GRU (QDQ form) as one integer step per node (TFLite's fully integer LSTM, and its GRU
analogue): ``runtime/RECURRENT_ARITHMETIC.md`` gives the arithmetic, ``runtime.recurrent`` the plan-time
parameters, ``runtime.kernels.recurrent`` the kernels.

What the node must look like (the contract hwsim's exporter writes; anything else is refused with the
file and node named):

- ``X`` [T, N, I] (``layout = 1``: [N, T, I]): a DequantizeLinear view in the target's activation dtype,
  per tensor.
- ``W`` [D, G*H, I], ``R`` [D, G*H, H] (G = 4 gates i, o, f, c for LSTM; 3 gates z, r, h for GRU):
  DequantizeLinear of integer constants, zero point 0, values inside the target's recurrent weight
  range, one scale (per tensor) or one per gate row (per axis, ``axis = 1``, shared by both directions).
  A target whose recurrent weights are ``per_tensor`` takes one scale per gate (rows of a gate equal).
- ``B`` [D, 2*G*H] (optional): DequantizeLinear of an int32 constant, zero point 0; the input half Wb
  at ``float32(s_x * s_W[row])``, the recurrent half Rb at ``float32(s_h * s_R[row])`` (checked on the
  columns holding a nonzero value, to float32 rounding).
- ``sequence_lens``: absent, or a constant equal to T for every batch row (checked when run).
- ``initial_h`` [D, N, H] (optional): a DequantizeLinear view (or quantized constant) with the hidden
  encoding; LSTM ``initial_c`` [D, N, H]: int16 at the cell encoding. LSTM ``P`` must be absent.
- ``Y`` [T, D, N, H] and ``Y_h`` [D, N, H], where used: each read by exactly one QuantizeLinear with
  the hidden encoding (activation dtype, per tensor), which is fused into the step. LSTM ``Y_c`` is
  read by a QuantizeLinear to int16, zero point 0, scale ``2^p`` with ``p`` in the target's
  ``[cell_scale_log2_min, cell_scale_log2_max]``: the cell encoding (its output may be unused).
- Attributes: ``direction`` forward | reverse | bidirectional; ``layout`` 0 or 1; ``activations``
  absent or the defaults; LSTM ``input_forget = 0``; GRU ``linear_before_reset`` as the target's
  ``recurrent.gru_linear_before_reset``, no ``clip``. LSTM ``clip`` is read as TFLite's ``cell_clip``
  (the contract's choice): the integer cell state is clamped to ``[-clip, clip]`` after each update.
  ONNX defines ``clip`` differently (a bound on the *inputs of the activations*), so a model with
  ``clip`` does not compute the same thing in ONNX Runtime.

Each direction's parameters are computed once at plan time (``prepare_lstm``/``prepare_gru`` with the
target's ``recurrent.rounding``); a reverse direction runs the kernel on the time-reversed input and
reverses its output. The step writes the integer tensors of the fused QuantizeLinear outputs; nothing
is quantized in float. Saturation counts the ``Y`` elements at the hidden dtype's ends.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..encoding import Encoding, PerAxis, PerTensor
from ..errors import DataError, EncodingError, HwsimError
from ..kernels.recurrent import gru_int, lstm_int
from ..plan import Planner, Val, planner_op, saturation_bounds_for
from ..program import LayerStats, Step
from ..recurrent import prepare_gru, prepare_lstm

GATE_COUNT = {"LSTM": 4, "GRU": 3}
DEFAULT_ACTIVATIONS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh")}
DIRECTIONS = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}
BIAS_SCALE_RTOL = 2.0 ** -21  # "equal within float32 rounding": 4 float32 ulps


@dataclass
class RecurrentStep(Step):
    """One LSTM/GRU node: per direction the integer kernel over the whole sequence.

    ``inputs``: X, then initial_h and initial_c when they are tensors (``h0_input``/``c0_input``);
    constant initial states are held in ``h0_const``/``c0_const`` ([D, N, H]). ``outputs``: the fused
    QuantizeLinear outputs of Y, Y_h, Y_c that exist (``emit`` says which, in that order).
    """

    params: tuple = ()  # LstmQuantParams or GruQuantParams, one per direction
    reverse: tuple = ()  # per direction: run on the time-reversed sequence
    layout: int = 0
    h0_input: bool = False
    c0_input: bool = False
    h0_const: np.ndarray | None = None
    c0_const: np.ndarray | None = None
    sequence_lens: np.ndarray | None = None
    emit: tuple = (True, False, False)  # Y, Y_h, Y_c
    count_lo: int = 0  # Y elements <= count_lo or >= count_hi count as saturated
    count_hi: int = 0

    def compute(self, *arrays, stats: LayerStats):
        x = arrays[0]
        k = 1
        h0 = c0 = None
        if self.h0_input:
            h0, k = arrays[k], k + 1
        if self.c0_input:
            c0 = arrays[k]
        h0 = self.h0_const if h0 is None else h0
        c0 = self.c0_const if c0 is None else c0
        if x.ndim != 3:
            raise DataError(f"X must be 3-D ({'[N, T, I]' if self.layout else '[T, N, I]'}), found shape {x.shape}")
        if self.layout == 1:  # [N, T, I] -> [T, N, I]; states [N, D, H] -> [D, N, H]
            x = x.transpose(1, 0, 2)
            h0 = None if h0 is None else h0.transpose(1, 0, 2)
            c0 = None if c0 is None else c0.transpose(1, 0, 2)
        steps, batch = x.shape[0], x.shape[1]
        seq = self.sequence_lens
        if seq is not None and (seq.size not in (1, batch) or np.any(seq != steps)):
            raise DataError(f"sequence_lens {self.sequence_lens.tolist()} differ from the sequence length {steps}; "
                            "the integer runtime runs full-length sequences only")
        n_dir = len(self.params)
        for what, s in (("initial_h", h0), ("initial_c", c0)):
            if s is not None and (s.ndim != 3 or s.shape[0] != n_dir or s.shape[1] != batch):
                raise DataError(f"{what} must have shape [{n_dir}, {batch}, H] (layout 0), found {s.shape}")
        ys, hs, cs = [], [], []
        for d, (params, rev) in enumerate(zip(self.params, self.reverse)):
            xd = np.ascontiguousarray(x[::-1] if rev else x)
            h0d = None if h0 is None else np.ascontiguousarray(h0[d])
            if self.op_type == "GRU":
                y, h_t = gru_int(xd, h0d, params)
                c_t = None
            else:
                y, h_t, c_t = lstm_int(xd, h0d, None if c0 is None else np.ascontiguousarray(c0[d]), params)
            ys.append(y[::-1] if rev else y)
            hs.append(h_t)
            cs.append(c_t)
        y = np.stack(ys, axis=1)  # [T, D, N, H]
        stats.saturation += int(np.count_nonzero((y <= self.count_lo) | (y >= self.count_hi)))
        out = []
        if self.emit[0]:
            out.append(np.ascontiguousarray(y.transpose(2, 0, 1, 3)) if self.layout == 1 else y)
        for flag, states in ((self.emit[1], hs), (self.emit[2], cs)):
            if flag:
                s = np.stack(states, axis=0)  # [D, N, H]
                out.append(np.ascontiguousarray(s.transpose(1, 0, 2)) if self.layout == 1 else s)
        return tuple(out)


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------
def _encoding_error(p: Planner, node, why: str) -> EncodingError:
    return EncodingError(f"{p.graph.source}: {node.op_type} node {node.name!r}: {why}")


def _quantize_consumer(p: Planner, node, idx: int, what: str, required: bool):
    """The QuantizeLinear that is the only reader of output ``idx`` (marked fused), with its
    per-tensor encoding: (QuantizeLinear output name, encoding), or None when the output is unused."""
    out = node.outputs[idx] if idx < len(node.outputs) and node.outputs[idx] else None
    users = p.consumers.get(out, []) if out else []
    graph_out = out is not None and any(o.name == out for o in p.graph.outputs)
    if out is None or (not users and not graph_out):
        if required:
            raise p.refuse(node, f"output {what} is {'absent' if out is None else 'unused'}; a QuantizeLinear on it "
                           "carries an encoding the integer step needs")
        return None
    if graph_out or len(users) != 1 or users[0].op_type != "QuantizeLinear" or users[0].domain:
        found = "a graph output" if graph_out else \
            ", ".join(f"{u.op_type} node {u.name!r}" for u in users)
        raise p.refuse(node, f"its float output {what} ({out!r}) must be read by exactly one QuantizeLinear; "
                       f"found {found}")
    (q,) = users
    enc = p.encoding_from(q, p.const(q, 1, "QuantizeLinear scale"), p.const(q, 2, "QuantizeLinear zero point"),
                          q.attr("output_dtype"), q.attr("axis"), q.attr("block_size", 0))
    if not enc.is_per_tensor:
        raise _encoding_error(p, node, f"the QuantizeLinear {q.name!r} of {what} must be per tensor, found "
                              f"{enc.granularity}")
    p.fused.add(q.name)
    return q.outputs[0], enc


def _same_encoding(a: Encoding, b: Encoding) -> bool:
    return a.dtype == b.dtype and np.float32(a.scale) == np.float32(b.scale) and int(a.zero_point) == int(b.zero_point)


def _describe(e: Encoding) -> str:
    return f"{e.dtype} scale {float(np.float32(e.scale))!r} zero point {int(e.zero_point)}"


def _check_attributes(p: Planner, node, op: str) -> tuple[str, int]:
    direction = node.attr("direction", "forward")
    if direction not in DIRECTIONS:
        raise p.bad(node, f"direction must be forward, reverse or bidirectional, found {direction!r}")
    layout = int(node.attr("layout", 0))
    if layout not in (0, 1):
        raise p.bad(node, f"layout must be 0 or 1, found {layout}")
    acts = node.attr("activations")
    if acts is not None:
        want = DEFAULT_ACTIVATIONS[op] * len(DIRECTIONS[direction])
        if tuple(a.lower() for a in acts) != want:
            raise p.refuse(node, f"activations {list(acts)}: the integer {op} computes the default activations "
                           f"({', '.join(a.capitalize() for a in DEFAULT_ACTIVATIONS[op])} per direction) only")
    if op == "LSTM":
        if int(node.attr("input_forget", 0)):
            raise p.refuse(node, "input_forget = 1 (coupled input and forget gates) is not supported by the "
                           "integer LSTM")
        if node.input(7) is not None:
            raise p.refuse(node, f"peephole weights P ({node.input(7)!r}) are not supported by the integer LSTM")
    else:
        if node.attr("clip") is not None:
            raise p.refuse(node, "clip on a GRU is not supported by the integer GRU (no clipping of gate inputs)")
        lbr = bool(int(node.attr("linear_before_reset", 0)))
        want = p.target.arithmetic.recurrent.gru_linear_before_reset
        if lbr != want:
            raise p.refuse(node, f"linear_before_reset = {int(lbr)}: target {p.target.name!r} computes the GRU "
                           f"candidate gate with linear_before_reset = {int(want)} only")
    return direction, layout


def _weights(p: Planner, node, idx: int, what: str, gates: int, n_dir: int, cols: int | None):
    """Integer weights [D, G, H, cols] and row scales float32 [G, H] of W (idx 1) or R (idx 2)."""
    v = p.int_input(node, idx, what)
    name = node.input(idx)
    if v.kind != "qconst":
        raise p.refuse(node, f"{what} ({name!r}) must be a DequantizeLinear of an integer constant")
    w = np.asarray(v.const)
    if w.ndim != 3 or w.shape[0] != n_dir or w.shape[1] % gates or (cols is not None and w.shape[2] != cols):
        want = f"[{n_dir}, {gates}*H, {'I' if cols is None else cols}]"
        raise p.bad(node, f"{what} {name!r} must have shape {want}, found {w.shape}")
    hid = w.shape[1] // gates
    tq = p.target.arithmetic.recurrent_weights()
    lo, hi = tq.qtype.qmin, tq.qtype.qmax
    if tq.scheme == "strict_symmetric":
        lo += 1
    if w.size and (int(w.min()) < lo or int(w.max()) > hi):
        raise _encoding_error(p, node, f"{what} {name!r}: integer values must lie in [{lo}, {hi}] (the target's "
                              f"recurrent weights are {tq.dtype} {tq.scheme}), found [{int(w.min())}, {int(w.max())}]")
    enc = v.enc
    if np.any(enc.zero_point != 0):
        raise _encoding_error(p, node, f"{what} {name!r} must be symmetric (zero point 0), found zero points "
                              f"{np.unique(enc.zero_point).tolist()[:4]}")
    if isinstance(enc.granularity, PerTensor):
        rows = np.full(gates * hid, np.float32(enc.scale), np.float32)
    elif isinstance(enc.granularity, PerAxis) and enc.granularity.axis == 1 and enc.scale.size == gates * hid:
        rows = np.asarray(enc.scale, np.float32)
    else:
        raise _encoding_error(p, node, f"{what} {name!r} must be quantized per tensor or per gate row (per axis, "
                              f"axis 1, {gates * hid} scales), found {enc.granularity} with {enc.scale.size} scales")
    rows = rows.reshape(gates, hid)
    if tq.granularity == "per_tensor" and np.any(rows != rows[:, :1]):
        g = int(np.argmax(np.any(rows != rows[:, :1], axis=1)))
        raise _encoding_error(p, node, f"{what} {name!r}: target {p.target.name!r} takes one weight scale per gate; "
                              f"the rows of gate {g} have different scales")
    return w.astype(np.int64).reshape(n_dir, gates, hid, w.shape[2]), rows


def _biases(p: Planner, node, gates: int, hid: int, n_dir: int, s_x, s_h, s_w, s_r):
    """(Wb, Rb) as int64 [D, G, H] (zeros when B is absent), their scales checked."""
    name = node.input(3)
    zeros = np.zeros((n_dir, gates, hid), np.int64)
    if name is None:
        return zeros, zeros.copy()
    v = p.int_input(node, 3, "B")
    if v.kind != "qconst":
        raise p.refuse(node, f"bias B ({name!r}) must be a DequantizeLinear of an integer constant")
    b = np.asarray(v.const)
    if b.shape != (n_dir, 2 * gates * hid):
        raise p.bad(node, f"bias B {name!r} must have shape [{n_dir}, {2 * gates * hid}], found {b.shape}")
    if b.dtype not in (np.int32, np.int64):
        raise _encoding_error(p, node, f"bias B {name!r} must be int32 (or int64), found {b.dtype}")
    enc = v.enc
    if np.any(enc.zero_point != 0):
        raise _encoding_error(p, node, f"bias B {name!r} must have zero point 0")
    if isinstance(enc.granularity, PerAxis) and enc.granularity.axis == 1 and enc.scale.size == b.shape[1]:
        scale = np.asarray(enc.scale, np.float32)
    elif isinstance(enc.granularity, PerTensor):
        scale = np.full(b.shape[1], np.float32(enc.scale), np.float32)
    else:
        raise _encoding_error(p, node, f"bias B {name!r} must be quantized per axis (axis 1, {b.shape[1]} scales), "
                              f"found {enc.granularity} with {enc.scale.size} scales")
    expected = np.concatenate([(np.float32(s_x) * s_w).reshape(-1), (np.float32(s_h) * s_r).reshape(-1)])
    used = np.any(b != 0, axis=0)
    off = used & ~np.isclose(scale, expected, rtol=BIAS_SCALE_RTOL, atol=0)
    if off.any():
        j = int(np.argmax(off))
        half, row = ("input half Wb", j) if j < gates * hid else ("recurrent half Rb", j - gates * hid)
        form = "s_x * s_W[row]" if j < gates * hid else "s_h * s_R[row]"
        raise _encoding_error(p, node, f"bias B {name!r}: {half} row {row} has scale {float(scale[j])!r}, expected "
                              f"float32({form}) = {float(expected[j])!r}; the integer step adds the bias at that "
                              "scale")
    b = b.astype(np.int64).reshape(n_dir, 2, gates, hid)
    return b[:, 0], b[:, 1]


def _initial_state(p: Planner, node, idx: int, what: str, want: Encoding, kind: str):
    """(tensor name or None, constant [D, N, H] (layout 0 axes as stored) or None) of initial_h/initial_c."""
    name = node.input(idx)
    if name is None:
        return None, None
    v = p.int_input(node, idx, what)
    if not (v.enc.is_per_tensor and _same_encoding(v.enc, want)):
        raise _encoding_error(p, node, f"{what} {name!r} must have the {kind} encoding ({_describe(want)}), found "
                              f"{_describe(v.enc) if v.enc.is_per_tensor else v.enc}")
    if v.kind == "qconst":
        return None, np.asarray(v.const).astype(want.dtype.numpy_dtype)
    return v.name, None


def _cell_encoding(p: Planner, node, enc: Encoding) -> Encoding:
    rec = p.target.arithmetic.recurrent
    lo, hi = rec.cell_scale_log2_min, rec.cell_scale_log2_max
    s = float(np.float32(enc.scale))
    m, e = np.frexp(s)
    if str(enc.dtype) != rec.cell_dtype or int(enc.zero_point) != 0 or m != 0.5 or not lo <= int(e) - 1 <= hi:
        raise _encoding_error(p, node, f"the cell encoding (the QuantizeLinear of Y_c) must be {rec.cell_dtype}, zero "
                              f"point 0, scale 2^p with {lo} <= p <= {hi} (target {p.target.name!r}); found "
                              f"{_describe(enc)}")
    return enc


def _prepare(p: Planner, node, direction: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except HwsimError as e:
        raise type(e)(f"{p.graph.source}: {node.op_type} node {node.name!r} ({direction} direction): {e}") from None


@planner_op("LSTM", "GRU")
def plan_recurrent(p: Planner, node):
    op = node.op_type
    rec = p.target.arithmetic.recurrent
    why = p.target.arithmetic.recurrent_problem(op)
    if why is not None:
        raise p.refuse(node, f"target {p.target.name!r} does not run {op} in integers: {why}")
    direction, layout = _check_attributes(p, node, op)
    reverse = DIRECTIONS[direction]
    n_dir, gates = len(reverse), GATE_COUNT[op]

    x = p.int_input(node, 0, "X")
    if x.kind != "dq":
        raise p.refuse(node, f"X ({node.input(0)!r}) must be a dequantized tensor, found a quantized constant")
    act = p.target.arithmetic.activations.qtype
    if not x.enc.is_per_tensor or x.enc.dtype != act:
        raise _encoding_error(p, node, f"X {node.input(0)!r} must be quantized per tensor as {act} (the target's "
                              f"activations), found {x.enc.dtype} {x.enc.granularity}")
    wx, s_w = _weights(p, node, 1, "W", gates, n_dir, None)
    hid = wx.shape[2]
    if node.attr("hidden_size") is not None and int(node.attr("hidden_size")) != hid:
        raise p.bad(node, f"hidden_size = {node.attr('hidden_size')} but W has {gates * hid} rows ({gates} gates)")
    wh, s_r = _weights(p, node, 2, "R", gates, n_dir, hid)

    y_q = _quantize_consumer(p, node, 0, "Y", required=False)
    yh_q = _quantize_consumer(p, node, 1, "Y_h", required=False)
    yc_q = _quantize_consumer(p, node, 2, "Y_c", required=True) if op == "LSTM" else None
    if y_q is None and yh_q is None:
        raise p.refuse(node, "neither Y nor Y_h is used: nothing to compute (and no hidden encoding)")
    hidden = (y_q or yh_q)[1]
    if y_q is not None and yh_q is not None and not _same_encoding(y_q[1], yh_q[1]):
        raise _encoding_error(p, node, f"Y and Y_h must be quantized with one hidden encoding; found "
                              f"{_describe(y_q[1])} and {_describe(yh_q[1])}")
    if hidden.dtype != act:
        raise _encoding_error(p, node, f"the hidden encoding (the QuantizeLinear of Y) must be {act} (the target's "
                              f"activations), found {_describe(hidden)}")
    cell = _cell_encoding(p, node, yc_q[1]) if yc_q is not None else None

    wb, rb = _biases(p, node, gates, hid, n_dir, x.enc.scale, hidden.scale, s_w, s_r)

    seq = None
    if node.input(4) is not None:
        seq = np.asarray(p.const(node, 4, "sequence_lens")).astype(np.int64).reshape(-1)
        # T when a shape is known: X's, else that of the integer tensor X is a view of
        info = p.graph.value_info.get(node.input(0)) or p.graph.value_info.get(x.name)
        t_static = info.shape[layout] if info is not None and info.shape and len(info.shape) == 3 else None
        if isinstance(t_static, int) and t_static > 0 and np.any(seq != t_static):
            raise p.refuse(node, f"sequence_lens {seq.tolist()} differ from the sequence length {t_static}; the "
                           "integer runtime runs full-length sequences only")
    h0_name, h0_const = _initial_state(p, node, 5, "initial_h", hidden, "hidden")
    c0_name, c0_const = (None, None)
    if op == "LSTM":
        c0_name, c0_const = _initial_state(p, node, 6, "initial_c", cell, "cell")

    common = dict(input_scale=float(np.float32(x.enc.scale)), input_zero_point=int(x.enc.zero_point),
                  hidden_scale=float(np.float32(hidden.scale)), hidden_zero_point=int(hidden.zero_point),
                  input_dtype=str(act), hidden_dtype=str(act), rounding=rec.rounding)
    params = []
    for d, rev in enumerate(reverse):
        which = "reverse" if rev else "forward"
        rb_d = rb[d] if rb[d].any() else None
        if op == "LSTM":
            params.append(_prepare(p, node, which, prepare_lstm, wx[d], wh[d], wb[d], recurrent_bias=rb_d,
                                   input_weight_scales=s_w, recurrent_weight_scales=s_r,
                                   cell_scale=float(np.float32(cell.scale)), cell_clip=float(node.attr("clip", 0.0)),
                                   **common))
        else:
            params.append(_prepare(p, node, which, prepare_gru, wx[d], wh[d], wb[d], rb_d,
                                   input_weight_scales=s_w, recurrent_weight_scales=s_r,
                                   linear_before_reset=rec.gru_linear_before_reset, **common))

    c_lo, c_hi = saturation_bounds_for([], hidden, p.target.arithmetic.rounding.quantize)
    inputs = (x.name,) + tuple(n for n in (h0_name, c0_name) if n is not None)
    produced = [q for q in (y_q, yh_q, yc_q) if q is not None]
    p.emit(RecurrentStep(node.name, op, inputs, tuple(o for o, _ in produced), params=tuple(params),
                         reverse=reverse, layout=layout, h0_input=h0_name is not None, c0_input=c0_name is not None,
                         h0_const=h0_const, c0_const=c0_const, sequence_lens=seq,
                         emit=(y_q is not None, yh_q is not None, yc_q is not None), count_lo=c_lo, count_hi=c_hi))
    for out, enc in produced:
        p.set(out, Val("int", out, enc))
