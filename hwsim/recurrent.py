"""Quantized LSTM and GRU layers in the simulation model: placement, calibration, fast, exact, export.

A ``torch.nn.LSTM`` / ``torch.nn.GRU`` is captured as one op per layer (:mod:`hwsim.graph`), each
with the quantizers the target's ``[arithmetic.recurrent]`` section implies
(``runtime/RECURRENT_ARITHMETIC.md``):

- the input ``x``: the encoding of the value feeding the layer (a model input or the previous op);
- ``h`` (the hidden state: the layer's output and the recurrent input): the op's output quantizer,
  one per layer (both directions), calibrated over every time step;
- ``c`` (LSTM cell state): int16 at a power-of-two scale ``2^p``, ``p`` the smallest exponent whose
  int16 range holds the calibrated ``max |c|`` over all steps, clamped to the target's
  ``[cell_scale_log2_min, cell_scale_log2_max]``;
- weights ``W`` (input) and ``R`` (recurrent): symmetric, one scale per gate (``per_tensor``) or per
  gate row (``per_channel``), shared by the two directions (ONNX's DequantizeLinear has one axis);
- biases: the input FC's bias (PyTorch's ``b_ih + b_hh``; for a GRU only the z and r parts of
  ``b_hh``) at ``s_x * s_W[row]``, and the GRU's candidate recurrent bias ``b_hn`` at ``s_h * s_R[row]``;
- fixed formats: gate pre-activations Q3.12, gate outputs Q0.15 (the GRU's state Q0.15).

Modes: ``float`` runs the layer's float equations; ``fast`` fake-quantizes every tensor above on its
grid with straight-through gradients (QAT; sigmoid and tanh in float, so fast mode differs from the
hardware by the fixed-point approximations' few LSB); ``exact`` runs the integer kernels of the
runtime (:func:`runtime.kernels.recurrent.lstm_int` / ``gru_int``) on the parameters
:func:`runtime.recurrent.prepare_lstm` / ``prepare_gru`` derive, which are independently checked
against a slow int64 reference (``tests/reference_recurrent.py``); so exact mode equals the
integer runtime on the exported model bit for bit.

Export (``/work`` contract in RECURRENT_ARITHMETIC.md, "ONNX form"): one ONNX LSTM/GRU node per
layer (``layout = 0``, a Transpose around it for ``batch_first``), integer W/R/B behind
DequantizeLinear, Y quantized with the hidden encoding, Y_c with the cell encoding. Encodings JSON
names follow AIMET's recurrent quantizers: ``<module>.input_l{k}``, ``<module>.h_l{k}``,
``<module>.c_l{k}``, ``<module>.weight_ih_l{k}[_reverse]``, ``<module>.weight_hh_l{k}[_reverse]``,
``<module>.bias_ih_l{k}[_reverse]``, ``<module>.bias_hh_l{k}[_reverse]``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from runtime.encoding import Encoding, PerAxis, PerTensor, bias_encoding
from runtime.errors import HwsimError, UnsupportedError

GATES = {"LSTM": 4, "GRU": 3}
# torch gate order -> internal (ONNX) order: LSTM torch i,f,g,o -> i,o,f,c; GRU torch r,z,n -> z,r,n
TO_INTERNAL = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}
PREACT_STEP = 2.0 ** -12  # Q3.12
GATE_STEP = 2.0 ** -15  # Q0.15


def _key(name: str) -> str:
    return name.replace(".", "_")


def _sfx(d: int) -> str:
    return "_reverse" if d else ""


def check_target(target, op) -> None:
    why = target.arithmetic.recurrent_problem(op.op_type)
    if why is not None:
        raise UnsupportedError(f"{target.name}: node {op.name!r} is an {op.op_type}, which the target cannot run in "
                               f"integers: {why}")


# ---------------------------------------------------------------------------------------------
# placement
# ---------------------------------------------------------------------------------------------
def place(sim, g) -> None:
    """Create the weight, bias and cell quantizers of a recurrent group (the hidden one is the
    group's output quantizer, created by the caller)."""
    from .sim import Quantizer

    op = g.head
    check_target(sim.target, op)
    ar = sim.target.arithmetic
    wq = ar.recurrent_weights()
    k = _key(op.name)
    mod, layer = op.attrs["module"], op.attrs["layer"]
    gran = PerAxis(0)  # on the row view (per gate row) or the gate view (per gate)
    for which in ("ih", "hh"):
        q = Quantizer(f"{mod}.weight_{which}_l{layer}", "weight", wq.qtype, wq.scheme, gran, "half_to_even")
        q.per_gate = wq.granularity == "per_tensor"
        sim.weight_q[f"{k}__w_{which}"] = q
        sim.bias_q[f"{k}__b_{which}"] = Quantizer(f"{mod}.bias_{which}_l{layer}", "bias", ar.bias.qtype,
                                                  "symmetric", gran, "half_to_even")
    if op.op_type == "LSTM":
        c = Quantizer(f"{mod}.c_l{layer}", "activation", "int16", "symmetric", PerTensor(), "half_away_from_zero")
        c.power_of_two = True
        sim.cell_q[k] = c


def _module_params(op):
    """Per direction: (W_ih [G*H, I], W_hh [G*H, H], b_in [G*H], b_rec [G*H]) in torch gate order,
    with the biases as the integer kernels add them (see the module docstring)."""
    m, layer = op.module, op.attrs["layer"]
    g_n, h = GATES[op.op_type], op.attrs["hidden"]
    out = []
    for d in range(op.attrs["directions"]):
        s = f"_l{layer}{_sfx(d)}"
        w_ih, w_hh = getattr(m, "weight_ih" + s), getattr(m, "weight_hh" + s)
        if m.bias:
            b_ih, b_hh = getattr(m, "bias_ih" + s), getattr(m, "bias_hh" + s)
        else:
            b_ih = b_hh = torch.zeros(g_n * h, dtype=w_ih.dtype, device=w_ih.device)
        if op.op_type == "LSTM":
            b_in, b_rec = b_ih + b_hh, torch.zeros_like(b_hh)
        else:  # GRU: b_hr, b_hz fold into the input bias; b_hn stays inside r * (W_hn h + b_hn)
            keep = torch.cat([torch.zeros(2 * h, dtype=b_hh.dtype, device=b_hh.device),
                              torch.ones(h, dtype=b_hh.dtype, device=b_hh.device)])
            b_in, b_rec = b_ih + b_hh * (1 - keep), b_hh * keep
        out.append((w_ih, w_hh, b_in, b_rec))
    return out


def _view(ws: list[torch.Tensor], gates: int, per_gate: bool) -> torch.Tensor:
    """Directions' [G*H, K] weights as the quantizer's view: rows [G*H, D*K] or gates [G, H*D*K]."""
    v = torch.stack(ws, 1)  # [G*H, D, K]
    return v.reshape(gates, -1) if per_gate else v.reshape(v.shape[0], -1)


def _unview(v: torch.Tensor, rows: int, d: int) -> list[torch.Tensor]:
    return list(v.reshape(rows, d, -1).unbind(1))


def row_scales(enc: Encoding, rows: int) -> np.ndarray:
    """Per-row float32 scales [G*H] (torch gate order) of a weight encoding (per gate or per row)."""
    s = np.asarray(enc.scale, np.float32).reshape(-1)
    return np.repeat(s, rows // s.size) if s.size != rows else s


def _bias_view(bs: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(bs, 1)  # [G*H, D]


@torch.no_grad()
def set_weight_encodings(sim, g, scheme: str) -> None:
    """Weight encodings of W and R (over both directions) and the bias encodings derived from them."""
    from runtime.encoding import encoding_from_range

    from .ranges import make_observer

    op = g.head
    k = _key(op.name)
    gates = GATES[op.op_type]
    params = _module_params(op)
    for i, which in enumerate(("ih", "hh")):
        q = sim.weight_q[f"{k}__w_{which}"]
        v = _view([p[i].detach() for p in params], gates, q.per_gate)
        sc = getattr(sim, "_weight_schemes", {}).get(q.tensor_name, scheme)
        obs = make_observer(sc, q.qtype, q.scheme, axis=0, name=q.tensor_name)
        obs.update(v)
        mn, mx = obs.compute()
        q.set_encoding(encoding_from_range(mn, mx, q.qtype, q.scheme, PerAxis(0)))
    set_bias_encodings(sim, g)


def set_bias_encodings(sim, g) -> None:
    op = g.head
    k = _key(op.name)
    rows = GATES[op.op_type] * op.attrs["hidden"]
    qt = sim.target.arithmetic.bias.qtype
    for which, src in (("ih", op.inputs[0]), ("hh", g.output)):
        wenc = sim.weight_q[f"{k}__w_{which}"].encoding
        xenc = sim.quantizer_of(src).encoding
        if wenc is None or xenc is None:
            continue
        sim.bias_q[f"{k}__b_{which}"].set_encoding(bias_encoding(xenc.scale, row_scales(wenc, rows), qt))


def cell_encoding(absmax: float, target) -> Encoding:
    """int16 at ``2^p``: the smallest p with ``32767 * 2^p >= absmax``, clamped to the target's range."""
    r = target.arithmetic.recurrent
    p = r.cell_scale_log2_min if absmax <= 0 else math.ceil(math.log2(absmax / 32767.0))
    p = min(max(p, r.cell_scale_log2_min), r.cell_scale_log2_max)
    return Encoding(np.float32(2.0 ** p), 0, "int16", PerTensor(), symmetric=True)


class AbsMax:
    """Calibration observer of an internal tensor: the maximum magnitude and a saturation count."""

    def __init__(self):
        self.absmax, self.count, self.beyond = 0.0, 0, 0

    def update(self, x: torch.Tensor, bound: float | None = None) -> None:
        x = x.detach()
        if not torch.isfinite(x).all():
            from runtime.errors import DataError

            raise DataError(f"calibration: a recurrent layer's internal tensor has {int((~torch.isfinite(x)).sum())} "
                            "NaN/Inf values")
        self.absmax = max(self.absmax, float(x.abs().max()) if x.numel() else 0.0)
        self.count += x.numel()
        if bound is not None:
            self.beyond += int((x.abs() >= bound).sum())


# ---------------------------------------------------------------------------------------------
# float and fast forward
# ---------------------------------------------------------------------------------------------
def _ste_round(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def _grid(v: torch.Tensor, step: float, lo: int = -32768, hi: int = 32767) -> torch.Tensor:
    """Fake quantization on a fixed grid (int16 raws of ``step``), straight-through inside the range."""
    return torch.clamp(_ste_round(v / step), lo, hi) * step


def forward(sim, g, xs: list[torch.Tensor], fake: bool, observe: bool) -> torch.Tensor:
    """The layer's output sequence in the torch layout (``[N, T, D*H]`` batch-first, else ``[T, N, D*H]``)."""
    op = g.head
    a = op.attrs
    k = _key(op.name)
    lstm = op.op_type == "LSTM"
    gates, hid, dirs = GATES[op.op_type], a["hidden"], a["directions"]
    rows = gates * hid
    x = xs[0].transpose(0, 1) if a["batch_first"] else xs[0]  # [T, N, I]
    t_len, n = x.shape[0], x.shape[1]
    params = _module_params(op)
    hq = sim.quantizer_of(g.output)
    cq = sim.cell_q[k] if lstm else None
    fake_h = fake and hq.enabled and hq.encoding is not None
    fake_w = fake and all(sim.weight_q[f"{k}__w_{w}"].enabled for w in ("ih", "hh"))
    fake_i = fake and fake_w and fake_h and sim.quantizer_of(op.inputs[0]).enabled  # the integer FCs exist
    if fake_w:
        for i, which in enumerate(("ih", "hh")):
            q = sim.weight_q[f"{k}__w_{which}"]
            v = q(_view([p[i] for p in params], gates, q.per_gate))
            ws = _unview(v, rows, dirs)
            params = [tuple(ws[d] if j == i else p[j] for j in range(4)) for d, p in enumerate(params)]
        if fake_i:
            bi, bh = sim.bias_q[f"{k}__b_ih"], sim.bias_q[f"{k}__b_hh"]
            if bi.encoding is not None and bh.encoding is not None:
                b_in = _unview(bi(_bias_view([p[2] for p in params])), rows, dirs)
                b_rec = _unview(bh(_bias_view([p[3] for p in params])), rows, dirs)
                params = [(p[0], p[1], b_in[d].reshape(-1), b_rec[d].reshape(-1)) for d, p in enumerate(params)]
    fake_c = fake_i and lstm and cq.enabled and cq.encoding is not None
    s_c = float(cq.encoding.scale) if fake_c else None
    stats = sim.recurrent_observers.get(k) if observe else None
    init = list(xs[1:])
    outs = []
    for d in range(dirs):
        w_ih, w_hh, b_in, b_rec = params[d]
        h = init[0][d] if init else x.new_zeros(n, hid)
        if fake_h:
            h = hq(h)
        c = (init[1][d] if len(init) > 1 else x.new_zeros(n, hid)) if lstm else None
        s = h  # the GRU's Q0.15 state
        if fake_i and not lstm:
            s = _grid(s, GATE_STEP)
        gi_all = torch.nn.functional.linear(x, w_ih, b_in)  # [T, N, G*H]
        if fake_i:
            gi_all = _grid(gi_all, PREACT_STEP)
        ys = [None] * t_len
        steps = range(t_len - 1, -1, -1) if d else range(t_len)
        for t in steps:
            gi = gi_all[t]
            gh = torch.nn.functional.linear(h, w_hh, b_rec)
            if fake_i:
                gh = _grid(gh, PREACT_STEP)
            if lstm:
                z = gi + gh
                if fake_i:
                    z = _grid(z, PREACT_STEP)
                if stats is not None:
                    stats["gates"].update(z, 8.0)
                zi, zf, zg, zo = z.chunk(4, 1)
                ig, fg, og, gg = torch.sigmoid(zi), torch.sigmoid(zf), torch.sigmoid(zo), torch.tanh(zg)
                if fake_i:
                    ig, fg, og, gg = (_grid(v, GATE_STEP) for v in (ig, fg, og, gg))
                if fake_c:
                    c = torch.clamp(_ste_round(fg * c / s_c) + _ste_round(ig * gg / s_c), -32768, 32767) * s_c
                else:
                    c = fg * c + ig * gg
                if stats is not None:
                    stats["cell"].update(c)
                tc = torch.tanh(c)
                if fake_i:
                    tc = _grid(tc, GATE_STEP)
                h = og * tc
            else:
                ri, zi_, ni = gi.chunk(3, 1)
                rh, zh, nh = gh.chunk(3, 1)
                pre_r, pre_z = ri + rh, zi_ + zh
                if fake_i:
                    pre_r, pre_z = _grid(pre_r, PREACT_STEP), _grid(pre_z, PREACT_STEP)
                r, zg = torch.sigmoid(pre_r), torch.sigmoid(pre_z)
                if fake_i:
                    r, zg = _grid(r, GATE_STEP), _grid(zg, GATE_STEP)
                rn = r * nh
                if fake_i:
                    rn = _grid(rn, PREACT_STEP)
                pre_n = ni + rn
                if fake_i:
                    pre_n = _grid(pre_n, PREACT_STEP)
                if stats is not None:
                    stats["gates"].update(torch.cat([pre_r, pre_z, pre_n], 1), 8.0)
                nn_ = torch.tanh(pre_n)
                if fake_i:
                    nn_ = _grid(nn_, GATE_STEP)
                    s = _grid(nn_ + zg * (s - nn_), GATE_STEP)
                else:
                    s = nn_ + zg * (s - nn_)
                h = s
            if fake_h:
                h = hq(h)
            ys[t] = h
        outs.append(torch.stack(ys))
    y = torch.cat(outs, -1) if dirs > 1 else outs[0]  # [T, N, D*H]
    return y.transpose(0, 1) if a["batch_first"] else y


# ---------------------------------------------------------------------------------------------
# exact (integer) mode
# ---------------------------------------------------------------------------------------------
def _internal(a: np.ndarray, kind: str, hid: int) -> np.ndarray:
    """Torch-ordered rows [G*H, ...] -> internal gates [G, H, ...]."""
    g = a.reshape((GATES[kind], hid) + a.shape[1:])
    return g[list(TO_INTERNAL[kind])]


def integer_params(sim, g) -> list:
    """Per direction, the runtime's prepared integer parameters (LstmQuantParams / GruQuantParams)."""
    from runtime.recurrent import prepare_gru, prepare_lstm

    op = g.head
    k = _key(op.name)
    kind, hid = op.op_type, op.attrs["hidden"]
    rows = GATES[kind] * hid
    r = sim.target.arithmetic.recurrent
    xenc, henc = sim.quantizer_of(op.inputs[0]).encoding, sim.quantizer_of(g.output).encoding
    wq, rq = sim.weight_q[f"{k}__w_ih"], sim.weight_q[f"{k}__w_hh"]
    bi, bh = sim.bias_q[f"{k}__b_ih"], sim.bias_q[f"{k}__b_hh"]
    params = _module_params(op)
    w_int = _unview(wq.quantize(_view([p[0].detach() for p in params], GATES[kind], wq.per_gate)), rows, len(params))
    r_int = _unview(rq.quantize(_view([p[1].detach() for p in params], GATES[kind], rq.per_gate)), rows, len(params))
    b_int = _unview(bi.quantize(_bias_view([p[2].detach() for p in params])), rows, len(params))
    rb_int = _unview(bh.quantize(_bias_view([p[3].detach() for p in params])), rows, len(params))
    s_w = _internal(row_scales(wq.encoding, rows), kind, hid)
    s_r = _internal(row_scales(rq.encoding, rows), kind, hid)
    common = dict(input_scale=float(xenc.scale), input_zero_point=int(xenc.zero_point),
                  input_weight_scales=s_w, hidden_scale=float(henc.scale), hidden_zero_point=int(henc.zero_point),
                  recurrent_weight_scales=s_r, input_dtype=str(xenc.dtype), hidden_dtype=str(henc.dtype),
                  rounding=r.rounding)
    out = []
    for d in range(len(params)):
        w = _internal(w_int[d].cpu().numpy().astype(np.int64), kind, hid)
        rr = _internal(r_int[d].cpu().numpy().astype(np.int64), kind, hid)
        b = _internal(b_int[d].reshape(-1).cpu().numpy().astype(np.int64), kind, hid)
        rb = _internal(rb_int[d].reshape(-1).cpu().numpy().astype(np.int64), kind, hid)
        try:
            if kind == "LSTM":
                extra = {"recurrent_bias": rb} if rb.any() else {}
                out.append(prepare_lstm(w, rr, b, cell_scale=float(sim.cell_q[k].encoding.scale), **extra, **common))
            else:
                out.append(prepare_gru(w, rr, b, rb, **common))
        except HwsimError as e:
            raise type(e)(f"{kind} node {op.name!r}: {e}") from None
    return out


def exact(sim, g, vals, stats) -> torch.Tensor:
    """The layer in integers (the runtime's kernels): int64 tensor in the torch layout."""
    from runtime.kernels.recurrent import gru_int, lstm_int

    op = g.head
    a = op.attrs
    x = vals[op.inputs[0]]
    dev = x.device
    x = x.transpose(0, 1) if a["batch_first"] else x
    xenc, henc = sim.quantizer_of(op.inputs[0]).encoding, sim.quantizer_of(g.output).encoding
    xn = x.cpu().numpy().astype(str(xenc.dtype))
    init = [vals[i].cpu().numpy() for i in op.inputs[1:]]
    outs = []
    for d, p in enumerate(integer_params(sim, g)):
        xd = np.ascontiguousarray(xn[::-1] if d else xn)
        h0 = init[0][d].astype(str(henc.dtype)) if init else None
        if op.op_type == "LSTM":
            c0 = init[1][d].astype(np.int16) if len(init) > 1 else None
            y, _, _ = lstm_int(xd, h0, c0, p)
        else:
            y, _ = gru_int(xd, h0, p)
        outs.append(y[::-1] if d else y)
    y = np.concatenate(outs, -1) if len(outs) > 1 else outs[0]
    stats["saturation"] += int(((y == henc.qmin) | (y == henc.qmax)).sum())
    yt = torch.as_tensor(np.ascontiguousarray(y).astype(np.int64), device=dev)
    return yt.transpose(0, 1) if a["batch_first"] else yt


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def _onnx_rows(a: np.ndarray, kind: str, hid: int) -> np.ndarray:
    """Torch-ordered rows -> ONNX-ordered rows (LSTM i,o,f,c; GRU z,r,h), flat [G*H, ...]."""
    return _internal(a, kind, hid).reshape((-1,) + a.shape[1:])


def export_node(b, sim, g, x: str, init: list[str], out: str, qdq: bool) -> str:
    """Emit the ONNX node(s) of one recurrent layer reading ``x`` (torch layout); returns the name of
    the float output sequence in the torch layout (before the caller's QuantizeLinear)."""
    from .export import _bias32

    op = g.head
    a = op.attrs
    k = _key(op.name)
    kind, hid, dirs = op.op_type, a["hidden"], a["directions"]
    rows = GATES[kind] * hid
    name = op.name
    if a["batch_first"]:
        b.node("Transpose", [x], [name + "_x_tnc"], name + "_x_transpose", perm=[1, 0, 2])
        x = name + "_x_tnc"
        if qdq:  # repeat the input's encoding after the movement, as for every exported movement op
            sn, zn, attrs = b.qparams(name + "_x", sim.quantizer_of(op.inputs[0]).encoding)
            b.node("QuantizeLinear", [x, sn, zn], [x + "_q"], x + "_quantize", **attrs)
            b.node("DequantizeLinear", [x + "_q", sn, zn], [x + "_dq"], x + "_dequantize", **attrs)
            x = x + "_dq"
    params = _module_params(op)
    ins = [x]
    for i, which, label in ((0, "ih", "W"), (1, "hh", "R")):
        q = sim.weight_q[f"{k}__w_{which}"]
        wname = f"{name}.{label}"
        if qdq:
            qv = q.quantize(_view([p[i].detach() for p in params], GATES[kind], q.per_gate))
            wi = _unview(qv, rows, dirs)
            arr = np.stack([_onnx_rows(w.cpu().numpy().astype(np.int64), kind, hid) for w in wi])
            enc = q.encoding
            s = _onnx_rows(row_scales(enc, rows), kind, hid)
            wenc = Encoding(s, np.zeros(rows, np.int64), enc.dtype, PerAxis(1), enc.qmin, enc.qmax, symmetric=True)
            ii = b.int_init(wname + "_int", arr, wenc)
            sn, zn, attrs = b.qparams(wname, wenc)
            b.node("DequantizeLinear", [ii, sn, zn], [wname], wname + "_dequantize", **attrs)
        else:
            arr = np.stack([_onnx_rows(p[i].detach().cpu().numpy(), kind, hid) for p in params]).astype(np.float32)
            b.init(wname, arr)
        ins.append(wname)
    bname = f"{name}.B"
    if qdq:
        halves, scales = [], []
        for which, idx in (("ih", 2), ("hh", 3)):
            q = sim.bias_q[f"{k}__b_{which}"]
            qv = _unview(q.quantize(_bias_view([p[idx].detach() for p in params])), rows, dirs)
            halves.append(np.stack([_onnx_rows(v.reshape(-1).cpu().numpy().astype(np.int64), kind, hid) for v in qv]))
            scales.append(_onnx_rows(np.asarray(q.encoding.scale, np.float32).reshape(-1), kind, hid))
        bint = np.concatenate(halves, 1)
        bdt = sim.bias_q[f"{k}__b_ih"].encoding.dtype
        benc = _bias32(Encoding(np.concatenate(scales), np.zeros(2 * rows, np.int64), bdt, PerAxis(1), symmetric=True),
                       bint, bname)
        bi = b.init(bname + "_int", bint.astype(np.int32))
        sn, zn, attrs = b.qparams(bname, benc)
        b.node("DequantizeLinear", [bi, sn, zn], [bname], bname + "_dequantize", **attrs)
    else:
        arr = np.stack([np.concatenate([_onnx_rows(p[2].detach().cpu().numpy(), kind, hid),
                                        _onnx_rows(p[3].detach().cpu().numpy(), kind, hid)]) for p in params])
        b.init(bname, arr.astype(np.float32))
    ins += [bname, ""]  # no sequence_lens
    ins += init
    while ins and ins[-1] == "":
        ins.pop()
    y, yc = name + "_Y", name + "_Y_c"
    outs = [y] + (["", yc] if kind == "LSTM" and qdq else [])
    direction = "bidirectional" if dirs == 2 else "forward"
    b.node(kind, ins, outs, name, hidden_size=hid, direction=direction,
           **({"linear_before_reset": 1} if kind == "GRU" else {}))
    if kind == "LSTM" and qdq:  # the cell encoding lives on Y_c's QuantizeLinear (no other consumer)
        cenc = sim.cell_q[k].encoding
        sn, zn, attrs = b.qparams(f"{name}.cell", cenc)
        b.node("QuantizeLinear", [yc, sn, zn], [yc + "_q"], yc + "_quantize", **attrs)
    # Y [T, D, N, H] -> quantized with the hidden encoding -> torch layout
    henc = sim.quantizer_of(g.output).encoding
    if qdq:
        sn, zn, attrs = b.qparams(name + "_Y", henc)
        b.node("QuantizeLinear", [y, sn, zn], [y + "_q"], y + "_quantize", **attrs)
        b.node("DequantizeLinear", [y + "_q", sn, zn], [y + "_dq"], y + "_dequantize", **attrs)
        y = y + "_dq"
    perm = [2, 0, 1, 3] if a["batch_first"] else [0, 2, 1, 3]
    b.node("Transpose", [y], [name + "_Y_t"], name + "_Y_transpose", perm=perm)
    shape = b.init(name + "_Y_shape", np.asarray([0, 0, dirs * hid], np.int64))
    b.node("Reshape", [name + "_Y_t", shape], [out], name + "_Y_reshape")
    return out


def runtime_tensor(g, tensors: dict) -> np.ndarray:
    """The layer's output integers from the runtime's tensors (its fused ``Y`` QuantizeLinear,
    ``[T, D, N, H]``) in the simulator's torch layout."""
    a = g.head.attrs
    y = tensors[g.head.name + "_Y_q"]
    t, d, n, h = y.shape
    y = y.transpose(0, 2, 1, 3).reshape(t, n, d * h)
    return np.ascontiguousarray(y.transpose(1, 0, 2) if a["batch_first"] else y)


def encodings(sim, g) -> tuple[dict, dict]:
    """AIMET-named activation and parameter encodings of one recurrent layer (see module docstring)."""
    op = g.head
    a = op.attrs
    k = _key(op.name)
    mod, layer = a["module"], a["layer"]
    acts = {f"{mod}.input_l{layer}": sim.quantizer_of(op.inputs[0]).encoding,
            f"{mod}.h_l{layer}": sim.quantizer_of(g.output).encoding}
    if op.op_type == "LSTM":
        acts[f"{mod}.c_l{layer}"] = sim.cell_q[k].encoding
    if a["initial"]:
        acts[f"{mod}.initial_h_l{layer}"] = sim.quantizer_of(g.output).encoding
        if op.op_type == "LSTM" and a["initial"] > 1:
            acts[f"{mod}.initial_c_l{layer}"] = sim.cell_q[k].encoding
    params = {}
    for d in range(a["directions"]):
        for which, kind in (("weight_ih", "w_ih"), ("weight_hh", "w_hh"), ("bias_ih", "b_ih"), ("bias_hh", "b_hh")):
            q = (sim.weight_q if kind[0] == "w" else sim.bias_q)[f"{k}__{kind}"]
            params[f"{mod}.{which}_l{layer}{_sfx(d)}"] = q.encoding
    return acts, params


__all__ = ["runtime_tensor", "place", "set_weight_encodings", "set_bias_encodings", "cell_encoding", "forward", "exact",
           "integer_params", "export_node", "encodings", "AbsMax"]
