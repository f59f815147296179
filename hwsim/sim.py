"""The simulation model: a float model plus a target, with quantizers where the target quantizes.

>>> import torch, hwsim
>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 3))
>>> sim = hwsim.simulate(net, "dsp-int8", torch.zeros(1, 1, 6, 6))
>>> sim.calibrate([torch.rand(8, 1, 6, 6)], progress=False)
>>> [g.op_type + ("+" + "+".join(a.op_type for a in g.acts) if g.acts else "") for g in sim.groups]
['Conv+Relu', 'Flatten', 'Gemm']
>>> sim.mode = "exact"; y = sim(torch.rand(2, 1, 6, 6)); y.shape
torch.Size([2, 3])

Placement (the target's ``placement`` section, AIMET quantsim-config concepts): model inputs are
quantized when ``model_input.is_input_quantized``; each op's output when the op type's
``is_output_quantized`` says so, except inside a matched supergroup (greedy longest chain of
single-consumer ops whose types follow a supergroup's ``op_list``), where only the last op's output
is; data-movement ops whose output is not quantized keep their input's encoding (an *alias*, so the
exported model repeats that encoding after them); weights and biases per ``params``. A batch norm is
folded into the Conv/Linear before it first (also after a depthwise conv).

Modes (``sim.mode``):

- ``"float"``: the folded float model, no quantization.
- ``"fast"``: float32 fake quantization with straight-through gradients (QAT, quick evaluation):
  weights on their integer grid, bias on the int32 grid at ``s_x*s_w``, fused Relu/Clip before the
  output quantizer; rounding is the target's.
- ``"exact"``: the target's integer arithmetic in torch (:mod:`hwsim.exact`): integer tensors, exact
  accumulation, the target's accumulator, requantization, elementwise and pooling rules. Outputs
  equal the integer runtime's (``runtime.load`` on the exported model) bit for bit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from runtime.encoding import Encoding, PerAxis, PerBlock, PerTensor, bias_encoding, encoding_from_range
from runtime.errors import DataError, HwsimError, UnsupportedError
from runtime.target import Target, load_target

from . import exact as X
from . import recurrent as R
from .graph import MOVEMENT, RECURRENT, Captured, Op, capture

MAC_OPS = ("Conv", "Gemm")
ACTIVATIONS = ("Relu", "Clip")
MODES = ("float", "fast", "exact")


@dataclass
class Group:
    """A fused group: a head op plus the Relu/Clip folded into it (a matched supergroup)."""

    head: Op
    acts: list[Op] = field(default_factory=list)
    output: str = ""          # the value the group produces
    out_quantized: bool = True

    @property
    def op_type(self) -> str:
        return self.head.op_type

    @property
    def name(self) -> str:
        return self.head.name


class Quantizer(nn.Module):
    """One tensor's quantizer: its kind, integer type, scheme, granularity and (once set) encoding.

    ``scale`` and ``zero_point`` are buffers (float32 / int64) so that the simulation model moves
    between devices with ``.to()``; ``encoding`` is the canonical runtime Encoding.

    Learned ranges (LSQ, Esser et al. 2020, "Learned Step Size Quantization"; the zero point as in
    LSQ+, Bhalgat et al. 2020): :meth:`learn_range` turns the scale (and the zero point) into
    parameters initialized from the encoding; the forward value stays the target's fake quantization
    ``s * (clamp(round(x / s) + z, qmin, qmax) - z)`` exactly (the target's rounding, with the live
    float32 scale and the rounded zero point), and only the gradient changes. With ``v = x / s`` and
    the LSQ gradient scale ``g = 1 / sqrt(N * Qp)`` (``N`` elements per scale, per sample for
    activations; ``Qp = max(qmax - z, z - qmin)``)::

        inside  (qmin <= v + z <= qmax):  d/dx = 1,  d/ds = g * (round(v) - v),  d/dz = 0
        outside (clamped to the bound b):  d/dx = 0,  d/ds = g * (b - z),          d/dz = -g * s

    The parameters are dimensionless, so that one optimizer step size (Adam's steps are about the
    learning rate in parameter units) moves every range by the same fraction whatever its magnitude:
    ``s = s0 * max(|p_s|, 1/1024)`` (``s0`` the initial scale, ``p_s`` starts at 1), which stays
    positive whatever the optimizer does; ``z = round(p_z * (qmax - qmin))`` (the zero point as a
    fraction of the integer range), rounded half to even and clamped to ``[qmin, qmax]``, with a
    straight-through gradient. :meth:`sync_encoding` writes the live values into ``encoding`` (float32
    scale, int zero point), :meth:`freeze_range` does that and ends learning. While the encoding is
    older than the learned values, :meth:`quantize` and :meth:`dequantize` (exact mode, export)
    refuse to run; :meth:`set_encoding` with another encoding (e.g. a new calibration) while
    learning restarts learning from it.

    >>> from runtime.encoding import Encoding
    >>> q = Quantizer("t", "activation", "uint8", "asymmetric", PerTensor(), "half_to_even")
    >>> q.set_encoding(Encoding(0.5, 10, "uint8")); q.learn_range()
    >>> x = torch.tensor([0.25, 0.75, 200.0], requires_grad=True)
    >>> y = q(x); y.detach().tolist()       # 0.5 and 1.5 are ties: half to even
    [0.0, 1.0, 122.5]
    >>> y.sum().backward(); x.grad.tolist()  # the last value is clamped at qmax
    [1.0, 1.0, 0.0]
    """

    SCALE_FLOOR = 2.0 ** -10  # a learned scale never drops below this fraction of its initial value

    def __init__(self, name: str, kind: str, qtype, scheme: str, granularity, rounding: str):
        super().__init__()
        self.tensor_name, self.kind, self.qtype, self.scheme = name, kind, qtype, scheme
        self.granularity, self.rounding = granularity, rounding
        self.encoding: Encoding | None = None
        self.observer = None
        self.enabled = True  # False: fast mode passes the tensor through in float (sensitivity analysis)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int64))

    def set_encoding(self, enc: Encoding) -> None:
        self.encoding = enc
        dev = self.scale.device
        self.scale = torch.as_tensor(np.array(enc.scale, np.float32), device=dev)
        self.zero_point = torch.as_tensor(np.array(enc.zero_point, np.int64), device=dev)
        if self.learning and not self._in_sync():  # a new encoding from outside: learn from it
            with torch.no_grad():
                if self.scale_unit.shape != self.scale.shape:
                    raise HwsimError(f"tensor {self.tensor_name!r} is learning a scale of shape "
                                     f"{tuple(self.scale_unit.shape)}; the new encoding's scale has shape "
                                     f"{tuple(self.scale.shape)}: call freeze_range() first")
                self.scale_unit.copy_(self.scale)
                self.learned_scale.fill_(1.0)
                if "learned_zero_point" in self._parameters:
                    self.learned_zero_point.copy_(self.zero_point.to(torch.float32) / float(enc.qmax - enc.qmin))

    def _params(self, x: torch.Tensor, s: torch.Tensor | None = None, z: torch.Tensor | None = None):
        if self.encoding is None:
            raise HwsimError(f"tensor {self.tensor_name!r} has no encoding yet: call sim.calibrate(...) first")
        s = self.scale if s is None else s
        z = self.zero_point if z is None else z
        g = self.encoding.granularity
        if isinstance(g, PerAxis) and s.dim() == 1:
            shape = [1] * x.dim()
            shape[g.axis % x.dim()] = -1
            s, z = s.reshape(shape), z.reshape(shape)
        elif isinstance(g, PerBlock):
            a = g.axis % x.dim()
            s = s.repeat_interleave(g.block_size, dim=a).narrow(a, 0, x.shape[a])
            z = z.repeat_interleave(g.block_size, dim=a).narrow(a, 0, x.shape[a])
        return s, z

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer values (int64) with the target's rounding."""
        self.check_in_sync()
        if not torch.isfinite(x).all():
            raise DataError(f"tensor {self.tensor_name!r}: {int((~torch.isfinite(x)).sum())} NaN/Inf values cannot "
                            "be quantized")
        s, z = self._params(x)
        return X.quantize(x.detach(), s, z, self.encoding.qmin, self.encoding.qmax, self.rounding)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        self.check_in_sync()
        s, z = self._params(q)
        return X.dequantize(q, s, z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake quantization with a straight-through gradient (identity inside the range); with a
        learned range, the LSQ gradients of the class docstring. A disabled quantizer is the identity."""
        if not self.enabled:
            return x
        if self.learning:
            return self._learned_forward(x)
        fq = self.dequantize(self.quantize(x)).to(x.dtype)
        return fq + (x - x.detach())  # the value is fq exactly (x - x == 0), the gradient is 1

    # ---- learned ranges ---------------------------------------------------------------------------
    @property
    def learning(self) -> bool:
        """True while the scale is a trainable parameter (between learn_range and freeze_range)."""
        return "learned_scale" in self._parameters

    def learn_range(self, zero_point: bool | None = None) -> None:
        """Make the scale trainable (``learned_scale``, relative to the current scale), and the zero
        point (``learned_zero_point``, as a fraction of ``qmax - qmin``)
        when ``zero_point`` is true (default: for the asymmetric scheme only), starting from the
        current encoding. Idempotent."""
        if self.encoding is None:
            raise HwsimError(f"tensor {self.tensor_name!r} has no encoding to learn from: call sim.calibrate(...) "
                             "first")
        if self.kind == "bias":
            raise HwsimError(f"tensor {self.tensor_name!r}: a bias scale is s_x * s_w, derived from the input and "
                             "weight scales; learn those instead")
        if self.learning:
            return
        if zero_point is None:
            zero_point = self.scheme == "asymmetric"
        s0 = self.scale.detach().to(torch.float32).clone()
        self.register_buffer("scale_unit", s0)
        self.learned_scale = nn.Parameter(torch.ones_like(s0))  # s = s0 * |p|: exactly s0 at the start
        if zero_point:
            span = float(self.encoding.qmax - self.encoding.qmin)
            self.learned_zero_point = nn.Parameter(self.zero_point.detach().to(torch.float32) / span)

    def _live(self):
        """(scale, zero point as an integer-valued float, zero point with a straight-through gradient)."""
        s = self.scale_unit * torch.clamp(self.learned_scale.abs(), min=self.SCALE_FLOOR)
        if "learned_zero_point" not in self._parameters:
            z = self.zero_point.to(torch.float32)
            return s, z, z
        zf = self.learned_zero_point * float(self.encoding.qmax - self.encoding.qmin)
        z = torch.clamp(X.round_half(zf.detach(), "half_to_even"), self.encoding.qmin,
                        self.encoding.qmax).to(torch.float32)
        return s, z, zf + (z - zf).detach()

    def range_encoding(self) -> Encoding:
        """The Encoding of the live learned values (float32 scale, int64 zero point)."""
        if not self.learning:
            return self.encoding
        s, z, _ = self._live()
        e = self.encoding
        return Encoding(s.detach().cpu().numpy().astype(np.float32), z.detach().cpu().numpy().astype(np.int64),
                        e.dtype, e.granularity, e.qmin, e.qmax, symmetric=e.symmetric)

    def sync_encoding(self) -> None:
        """Write the learned values into ``encoding`` (and the buffers); learning goes on."""
        if self.learning:
            with torch.no_grad():
                self.set_encoding(self.range_encoding())

    def freeze_range(self) -> None:
        """Write the learned values into ``encoding`` and make the range fixed again."""
        if not self.learning:
            return
        self.sync_encoding()
        for name in ("learned_scale", "learned_zero_point", "scale_unit"):
            if hasattr(self, name):
                delattr(self, name)

    def _in_sync(self) -> bool:
        if not self.learning or self.encoding is None:
            return True
        s, z, _ = self._live()
        return (np.array_equal(s.detach().cpu().numpy(), self.encoding.scale)
                and np.array_equal(z.detach().cpu().numpy().astype(np.int64), self.encoding.zero_point))

    def check_in_sync(self) -> None:
        """Raise HwsimError if the range is learning and ``encoding`` is older than the learned values."""
        if not self._in_sync():
            raise HwsimError(f"tensor {self.tensor_name!r} is learning its range and its encoding is older than the "
                             "learned values: call quantizer.qat.freeze_ranges(sim) (or sync_ranges(sim)) before "
                             "exact mode, export or quantize()")

    def _learned_forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.isfinite(x).all():
            raise DataError(f"tensor {self.tensor_name!r}: {int((~torch.isfinite(x)).sum())} NaN/Inf values cannot "
                            "be quantized")
        e = self.encoding
        s, z, z_ste = self._live()
        sb, zb = self._params(x, s.detach(), z.detach())
        q = X.quantize(x.detach(), sb, zb.to(torch.int64), e.qmin, e.qmax, self.rounding)
        fq = X.dequantize(q, sb, zb.to(torch.int64)).to(x.dtype)
        # the surrogate: its value is discarded (sur - sur.detach() == 0), its gradient is LSQ's
        n = x.numel() // max(1, x.shape[0]) if self.kind == "activation" and x.dim() > 0 else x.numel() // s.numel()
        g = torch.rsqrt(n * torch.clamp(torch.maximum(e.qmax - z, z - e.qmin), min=1.0)).detach()
        sg, zg = self._params(x, _grad_scale(s, g), _grad_scale(z_ste, g))
        v = x.detach().to(torch.float32) / sb
        r = X.round_half(v, self.rounding).to(torch.float32)
        inside = (v + zb >= e.qmin) & (v + zb <= e.qmax)
        bound = torch.where(v + zb < e.qmin, float(e.qmin), float(e.qmax))
        sur = torch.where(inside, x + (r - v) * sg, (bound - zg) * sg)
        return fq + (sur - sur.detach()).to(x.dtype)


def _grad_scale(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``t`` in value (approximately; used only inside gradient surrogates), ``g * dL/dt`` in gradient."""
    return t * g + (t - t * g).detach()


class SimModel(nn.Module):
    """A model simulated on a target (see the module docstring)."""

    def __init__(self, captured: Captured, target: Target):
        super().__init__()
        self.target = target
        self.cap = captured
        self.mode = "fast"
        self.layers = nn.ModuleDict()
        for op in captured.ops:
            if op.module is not None:
                self.layers[_key(op.name)] = op.module
        self.input_names = list(captured.inputs)
        self.output_names = list(captured.outputs)
        self.groups: list[Group] = []
        self.alias: dict[str, str] = {}  # value -> the value whose encoding it shares
        self.act_q = nn.ModuleDict()     # quantized activations, by value name
        self.weight_q = nn.ModuleDict()  # by group name
        self.bias_q = nn.ModuleDict()
        self.cell_q = nn.ModuleDict()    # LSTM cell states (int16, power-of-two scale), by group key
        self.cell_values: dict[str, str] = {}  # model inputs quantized with a cell encoding (initial c)
        self.recurrent_observers: dict[str, dict] = {}
        self.recurrent_stats: dict[str, dict] = {}  # calibrated internal ranges of recurrent layers
        self._place()
        self.stats: dict[str, dict] = {}

    # -------------------------------------------------------------------------------------------
    # placement
    # -------------------------------------------------------------------------------------------
    def _place(self) -> None:
        t = self.target
        pl, ar = t.placement, t.arithmetic
        consumers: dict[str, list[Op]] = {}
        for op in self.cap.ops:
            for i in op.inputs:
                consumers.setdefault(i, []).append(op)
        used = set()
        chains = [sg.op_list for sg in pl.supergroups]
        for op in self.cap.ops:
            if op.name in used:
                continue
            if op.op_type in RECURRENT:
                R.check_target(t, op)
            elif op.op_type not in ar.integer_ops and op.op_type not in ("Identity",):
                raise UnsupportedError(f"{t.name}: node {op.name!r} is a {op.op_type}, which the target does not run in "
                                       f"integers (integer_ops: {', '.join(ar.integer_ops)})")
            best: list[Op] = []
            for chain in chains:
                if chain[0] != op.op_type:
                    continue
                seq, cur = [], op
                for nxt_type in chain[1:]:
                    users = consumers.get(cur.output, [])
                    if len(users) != 1 or users[0].op_type != nxt_type or cur.output in self.output_names:
                        break
                    seq.append(users[0])
                    cur = users[0]
                else:
                    if len(seq) > len(best) and all(s.op_type in ACTIVATIONS for s in seq):
                        best = seq
            g = Group(op, best, (best[-1] if best else op).output)
            used.update(s.name for s in best)
            self.groups.append(g)
        for v in self.input_names:
            if not pl.model_input.is_input_quantized:
                raise UnsupportedError(f"{t.name}: model_input.is_input_quantized is false; the integer runtime "
                                       "needs quantized model inputs")
            self._act(v)
        for g in self.groups:
            op_type = g.op_type
            quantized = pl.output_quantized((g.acts[-1] if g.acts else g.head).op_type)
            if g.output in self.output_names and pl.model_output.is_output_quantized:
                quantized = quantized or op_type not in MOVEMENT
            if op_type in MOVEMENT and not g.acts:
                src = g.head.inputs[0]
                self.alias[g.output] = self.alias.get(src, src)
                g.out_quantized = False
                continue
            if not quantized:
                raise UnsupportedError(f"{t.name}: the output of {op_type} node {g.name!r} is not quantized by the "
                                       "target's placement, but the integer runtime needs it quantized (add a "
                                       "supergroup that fuses it with its consumer, or quantize its output)")
            self._act(g.output)
            if op_type in RECURRENT:
                R.place(self, g)
                if g.head.attrs["initial"]:
                    h0 = g.head.inputs[1]
                    del self.act_q[_key(h0)]
                    self.alias[h0] = g.output  # the initial hidden state is read at the hidden encoding
                    if len(g.head.inputs) > 2 and op_type == "LSTM":
                        c0 = g.head.inputs[2]
                        del self.act_q[_key(c0)]
                        self.cell_values[c0] = _key(g.name)
            if op_type in MAC_OPS:
                wq = ar.weights_for(op_type)
                gran = PerTensor() if wq.granularity == "per_tensor" else (
                    PerAxis(0) if wq.granularity == "per_channel" else PerBlock(1, wq.block_size))
                rnd = "half_to_even"
                self.weight_q[_key(g.name)] = Quantizer(g.name + ".weight", "weight", wq.qtype, wq.scheme, gran, rnd)
                self.weight_q[_key(g.name)].reduce_range = wq.reduce_range
                self.bias_q[_key(g.name)] = Quantizer(g.name + ".bias", "bias", ar.bias.qtype, "symmetric",
                                                      PerTensor(), rnd)

    def _act(self, value: str) -> None:
        a = self.target.arithmetic.activations
        self.act_q[_key(value)] = Quantizer(value, "activation", a.qtype, a.scheme, PerTensor(),
                                            self.target.arithmetic.rounding.quantize)

    def quantizer_of(self, value: str) -> Quantizer:
        if value in self.cell_values:
            return self.cell_q[self.cell_values[value]]
        v = self.alias.get(value, value)
        return self.act_q[_key(v)]

    # -------------------------------------------------------------------------------------------
    # calibration
    # -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, batches, scheme: str = "minmax", weight_scheme: str = "minmax", progress: bool = True,
                  schemes: dict[str, str] | None = None, **observer_options) -> None:
        """Set every encoding: activations from observers streaming over ``batches`` (tensors, or
        tuples for several inputs) with ``scheme``; weights from the weight tensors (``weight_scheme``);
        biases at ``s_x * s_w`` (int32). ``schemes`` overrides the scheme per tensor name (an
        activation value, or ``<layer>.weight``). Shows progress unless ``progress=False``."""
        from .ranges import SCHEMES, make_observer

        schemes = dict(schemes or {})
        known = {q.tensor_name for q in list(self.act_q.values()) + list(self.weight_q.values())}
        for name, sc in schemes.items():
            if name not in known:
                raise HwsimError(f"calibrate: schemes names {name!r}, which is not a quantized tensor of this model "
                                 f"(e.g. {sorted(known)[:5]})")
            if sc not in SCHEMES:
                raise HwsimError(f"calibrate: scheme {sc!r} for {name!r} is not one of {SCHEMES}")
        self._weight_schemes = {k: v for k, v in schemes.items() if k.endswith(".weight")}
        self.calibration = {"scheme": scheme, "weight_scheme": weight_scheme, "schemes": schemes,
                            **observer_options}  # what set the encodings: recalibrations reuse it
        for q in self.act_q.values():
            q.observer = make_observer(schemes.get(q.tensor_name, scheme), q.qtype, q.scheme, name=q.tensor_name,
                                       **observer_options)
        self.recurrent_observers = {_key(g.name): {"gates": R.AbsMax(), "cell": R.AbsMax()}
                                    for g in self.groups if g.op_type in RECURRENT}
        it = batches
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(batches, desc="calibrate", unit="batch", leave=False)
        n = 0
        for b in it:
            b = b if isinstance(b, (tuple, list)) else (b,)
            try:
                self._run_float(b, observe=True)
            except DataError as e:
                raise DataError(f"calibration batch {n}: {e}") from None
            n += 1
        if n == 0:
            raise DataError("calibration data is empty: pass at least one batch")
        for q in self.act_q.values():
            mn, mx = q.observer.compute()
            q.set_encoding(encoding_from_range(mn, mx, q.qtype, q.scheme, PerTensor()))
            q.observer = None
        self.recurrent_stats = {}
        for k, obs in self.recurrent_observers.items():
            st = {"gate_preact_absmax": obs["gates"].absmax,
                  "gate_preact_saturated_fraction": obs["gates"].beyond / max(obs["gates"].count, 1)}
            if k in self.cell_q:
                enc = R.cell_encoding(obs["cell"].absmax, self.target)
                self.cell_q[k].set_encoding(enc)
                st.update(cell_absmax=obs["cell"].absmax, cell_scale_log2=int(np.log2(float(enc.scale))),
                          cell_saturated=bool(obs["cell"].absmax > 32767 * float(enc.scale)))
            self.recurrent_stats[k] = st
        self.recurrent_observers = {}
        self.set_weight_encodings(weight_scheme)

    @torch.no_grad()
    def set_weight_encodings(self, scheme: str | None = None) -> None:
        """(Re)compute weight encodings from the current weights, and bias encodings from them
        (``scheme``: default the one of the last :meth:`calibrate`, else minmax)."""
        from .ranges import make_observer

        if scheme is None:
            scheme = getattr(self, "calibration", {}).get("weight_scheme", "minmax")

        for g in self.groups:
            k = _key(g.name)
            if g.op_type in RECURRENT:
                R.set_weight_encodings(self, g, scheme)
                continue
            if k not in self.weight_q:
                continue
            wq, w = self.weight_q[k], self.layers[k].weight
            if isinstance(wq.granularity, PerBlock):
                from runtime.encoding import encoding_from_tensor

                enc = encoding_from_tensor(w.detach().cpu().numpy(), wq.qtype, wq.scheme, wq.granularity)
            else:
                axis = 0 if isinstance(wq.granularity, PerAxis) else None
                sc = getattr(self, "_weight_schemes", {}).get(wq.tensor_name, scheme)
                obs = make_observer(sc, wq.qtype, wq.scheme, axis=axis, name=wq.tensor_name)
                obs.update(w.detach())
                mn, mx = obs.compute()
                enc = encoding_from_range(mn, mx, wq.qtype, wq.scheme, wq.granularity)
            if getattr(wq, "reduce_range", False):
                enc = reduced_range(enc)
            wq.set_encoding(enc)
            self._set_bias_encoding(g)

    def _set_bias_encoding(self, g: Group) -> None:
        if g.op_type in RECURRENT:
            R.set_bias_encodings(self, g)
            return
        k = _key(g.name)
        sx = self.quantizer_of(g.head.inputs[0]).encoding.scale
        sw = self.weight_q[k].encoding.scale
        if sw.ndim > 1:  # per block: no single bias scale per channel; use the per-channel max
            sw = sw.max(axis=tuple(range(1, sw.ndim)))
        self.bias_q[k].set_encoding(bias_encoding(sx, sw, self.target.arithmetic.bias.qtype))

    def encodings(self) -> dict[str, Encoding]:
        """Every encoding by tensor name (activations by value, weights/biases by ``<layer>.weight``)."""
        out = {}
        for q in list(self.act_q.values()) + list(self.weight_q.values()) + list(self.bias_q.values()) + \
                list(self.cell_q.values()):
            if q.encoding is not None:
                out[q.tensor_name] = q.encoding
        return out

    # -------------------------------------------------------------------------------------------
    # forward
    # -------------------------------------------------------------------------------------------
    def forward(self, *inputs):
        if self.mode not in MODES:
            raise HwsimError(f"mode must be one of {MODES}, found {self.mode!r}")
        if self.mode == "exact":
            outs = self.run_exact(inputs)
            res = [self.quantizer_of(o).dequantize(outs[o]) for o in self.output_names]
        else:
            vals = self._run_float(inputs, fake=self.mode == "fast")
            res = [vals[o] for o in self.output_names]
        return res[0] if len(res) == 1 else tuple(res)

    def run_float(self, inputs, fake: bool = False) -> dict[str, torch.Tensor]:
        """Every value of the model (fx value name -> tensor) for ``inputs`` (a tuple, one tensor per
        model input): in float (``fake=False``) or with fast mode's fake quantization (``fake=True``)."""
        return self._run_float(inputs, fake=fake)

    def _run_float(self, inputs, fake: bool = False, observe: bool = False) -> dict:
        if len(inputs) != len(self.input_names):
            raise HwsimError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                             f"found {len(inputs)}")
        vals: dict[str, torch.Tensor] = {}

        def out(value, x):
            if observe and _key(value) in self.act_q:
                if not torch.isfinite(x).all():
                    raise DataError(f"calibration: tensor {value!r} has {int((~torch.isfinite(x)).sum())} NaN/Inf values")
                self.act_q[_key(value)].observer.update(x)
            if fake and _key(value) in self.act_q:
                x = self.act_q[_key(value)](x)
            vals[value] = x

        for name, x in zip(self.input_names, inputs):
            # default strides: oneDNN picks its conv kernel by the input's strides (a numpy x[:, None] view
            # has an odd stride on its size-1 axis), which changes last bits and so calibrated scales
            out(name, torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x))
        for g in self.groups:
            if g.op_type in RECURRENT:
                out(g.output, R.forward(self, g, [vals[i] for i in g.head.inputs], fake, observe))
                continue
            y = self._float_op(g, vals, fake)
            for a in g.acts:
                y = _float_act(a, y)
            out(g.output, y)
        return vals

    def _float_op(self, g: Group, vals, fake: bool) -> torch.Tensor:
        import torch.nn.functional as F

        op = g.head
        xs = [vals[i] for i in op.inputs]
        a = op.attrs
        if op.op_type in RECURRENT:
            return R.forward(self, g, xs, fake, observe=False)
        if op.op_type in MAC_OPS:
            m = self.layers[_key(op.name)]
            w, b = m.weight, m.bias
            if fake:
                w = self.weight_q[_key(op.name)](w)
                if b is not None:
                    b = self.bias_q[_key(op.name)](b)
            corr = self._requant_correction(g, xs[0]) if fake and self._fully_quantized(g) else None
            if op.op_type == "Gemm":
                y = F.linear(xs[0], w, b)
                return y if corr is None else self._pre_round(g, y * corr.reshape(1, -1), 1)
            pt, pl, pb, pr = a["pads"]
            x = xs[0]
            if (pt, pl) != (pb, pr):
                x = F.pad(x, (pl, pr, pt, pb))
                pt = pl = 0
            y = F.conv2d(x, w, b, a["strides"], (pt, pl), a["dilations"], a["group"])
            return y if corr is None else self._pre_round(g, y * corr.reshape(1, -1, 1, 1), 1)
        if op.op_type == "Add":
            return xs[0] + xs[1]
        if op.op_type == "Mul":
            return xs[0] * xs[1]
        if op.op_type in ACTIVATIONS:
            return _float_act(op, xs[0])
        if op.op_type == "MaxPool":
            return F.max_pool2d(xs[0], a["kernel"], a["strides"], a["pads"][:2], a["dilations"], bool(a["ceil_mode"]))
        if op.op_type == "AveragePool":
            return F.avg_pool2d(xs[0], a["kernel"], a["strides"], a["pads"][:2], bool(a["ceil_mode"]),
                                bool(a["count_include_pad"]))
        if op.op_type == "GlobalAveragePool":
            return xs[0].mean(dim=(2, 3), keepdim=True)
        if op.op_type == "Flatten":
            return xs[0].flatten(1)
        if op.op_type == "Reshape":
            return xs[0].reshape(a["shape"])
        if op.op_type == "Concat":
            return torch.cat(xs, a["axis"])
        if op.op_type == "Gather":
            return xs[0].select(a["axis"], a["index"])
        raise UnsupportedError(f"node {op.name!r}: {op.op_type} has no float implementation")

    def _fully_quantized(self, g: Group) -> bool:
        """Input, weight and output quantizers of a MAC group all enabled (the requantization the
        hardware performs exists only then)."""
        k = _key(g.name)
        return (self.weight_q[k].enabled and self.quantizer_of(g.output).enabled
                and self.quantizer_of(g.head.inputs[0]).enabled)

    def _requant_correction(self, g: Group, x: torch.Tensor) -> torch.Tensor | None:
        """Per output channel, the ratio of the target's effective requantization multiplier to the
        real one (fixed-point multipliers carry 31 or, in TFLite's 16x8 kernels, 15 bits; float32
        ratios 24), so that fast mode scales accumulators as the hardware does. Cached per encoding."""
        key = _key(g.name)
        wq, yq = self.weight_q[key], self.quantizer_of(g.output)
        xq = self.quantizer_of(g.head.inputs[0])
        if wq.encoding is None or yq.encoding is None or xq.encoding is None:
            return None
        ck = (id(xq.encoding), id(wq.encoding), id(yq.encoding))
        cached = getattr(self, "_corr_cache", {}).get(key)
        if cached is not None and cached[0] == ck:
            return cached[1].to(x.device)
        from runtime.ops.common import Requant

        ws = np.asarray(wq.encoding.scale, np.float32)
        n_out = self.layers[key].weight.shape[0]
        ws = np.repeat(ws, n_out) if ws.ndim == 0 else ws.reshape(n_out, -1)[:, 0]
        ye = yq.encoding
        rq = Requant.prepare(self.target, xq.encoding.scale, ws, ye.scale, int(ye.zero_point), ye.qmin, ye.qmax)
        ideal = np.float64(np.float32(xq.encoding.scale)) * ws.astype(np.float64) / np.float64(np.float32(ye.scale))
        if rq.form == "fixed_point":
            m, e = rq.multipliers.astype(np.float64), rq.shifts.astype(np.float64)
            if rq.rounding == "int64":
                m16 = np.where(rq.multipliers < 0x7FFF0000, (rq.multipliers + 32768) >> 16, 0x7FFF)
                eff = m16.astype(np.float64) * np.exp2(e - 15)
            else:
                eff = m * np.exp2(e - 31)
        else:
            eff = rq.scales.astype(np.float64)
        corr = torch.as_tensor((eff / ideal).astype(np.float32))
        # TFLite's double rounding: SRDHM rounds to 2^-(-e) of an output step (ties up) before
        # RDBPOT's final rounding; fast mode repeats that first rounding (see _pre_round)
        pre = None
        if rq.form == "fixed_point" and rq.rounding == "double":
            pre = torch.as_tensor(np.exp2(np.maximum(-rq.shifts, 0)).astype(np.float64))
        if not hasattr(self, "_corr_cache"):
            self._corr_cache = {}
        self._corr_cache[key] = (ck, corr)
        self._pre_cache = getattr(self, "_pre_cache", {})
        self._pre_cache[key] = (pre, float(np.float32(ye.scale)))
        return corr.to(x.device)

    def _pre_round(self, g: Group, y: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """Fast mode's copy of the first rounding of TFLite's double-rounding requantization:
        ``v = y / s_y`` rounded half up to multiples of ``2^e`` (``e < 0``, per channel), straight-through.
        Then the output quantizer's tie-away rounding plays RDBPOT. Without it, values whose real
        quotient lies just below a tie differ by one step from the integer pipeline."""
        pre, s_y = getattr(self, "_pre_cache", {}).get(_key(g.name), (None, None))
        if pre is None:
            return y
        shape = [1] * y.dim()
        shape[channel_dim] = -1
        k = pre.to(y.device).reshape(shape)
        v = y.detach().to(torch.float64) / s_y
        v1 = torch.floor(v * k + 0.5) / k
        # an exact tie after the first rounding goes away from zero (RDBPOT); nudge it by half a
        # first-rounding step so that the output quantizer's float32 division cannot break it
        a = v1.abs()
        tie = (a - torch.floor(a)) == 0.5
        v1 = torch.where(tie, v1 + torch.sign(v1) * 0.5 / k, v1)
        r = (v1 * s_y).to(y.dtype)
        return y + (r - y).detach()

    # ---- exact ----------------------------------------------------------------------------------
    @torch.no_grad()
    def run_exact(self, inputs, keep: bool = True) -> dict[str, torch.Tensor]:
        """Integer tensors (int64) of every quantized value (and aliases), in exact mode."""
        from .exact_ops import exact_group

        vals: dict[str, torch.Tensor] = {}
        self.stats = {}
        for name, x in zip(self.input_names, inputs):
            vals[name] = self.quantizer_of(name).quantize(x)
        for g in self.groups:
            stats = {"overflow": 0, "saturation": 0}
            if g.op_type in RECURRENT:
                vals[g.output] = R.exact(self, g, vals, stats)
                self.stats[g.name] = stats
                continue
            vals[g.output] = exact_group(self, g, vals, stats)
            self.stats[g.name] = stats
        return vals

    # -------------------------------------------------------------------------------------------
    def export(self, out_dir, name: str = "model", encodings_version: str = "1.0.0") -> dict[str, Path]:
        """Write ``<name>.onnx`` (QDQ) and ``<name>.encodings`` (AIMET JSON) atomically."""
        from .export import export

        return export(self, Path(out_dir), name, encodings_version)


def reduced_range(enc: Encoding) -> Encoding:
    """A symmetric signed encoding narrowed by one bit (ONNX Runtime's ``reduce_range``): the same
    real range on [-2^(b-2), 2^(b-2) - 1], e.g. int8 weights in [-64, 63] at twice the scale."""
    half = 1 << (enc.dtype.bits - 2)
    wide = (1 << (enc.dtype.bits - 1)) - 1
    scale = (np.asarray(enc.scale, np.float64) * wide / (half - 1)).astype(np.float32)
    return Encoding(scale, enc.zero_point, enc.dtype, enc.granularity, -half, half - 1, symmetric=True)


def _key(name: str) -> str:
    return name.replace(".", "_")


def _float_act(op: Op, y: torch.Tensor) -> torch.Tensor:
    if op.op_type == "Relu":
        return torch.relu(y)
    lo, hi = op.attrs.get("min"), op.attrs.get("max")
    return torch.clamp(y, min=lo, max=hi)


def simulate(model, target, example_inputs, mode: str = "fast") -> SimModel:
    """Build the simulation model of ``model`` (a torch.nn.Module, or a path to a float ONNX file)
    on ``target`` (a built-in name, a target file, or a Target)."""
    t = load_target(target) if not isinstance(target, Target) else target
    if isinstance(model, (str, os.PathLike)):
        from .onnx_import import import_onnx

        model = import_onnx(model)
    ex = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    cap = capture(model, tuple(ex))
    sim = SimModel(cap, t)
    if mode not in MODES:
        raise HwsimError(f"mode must be one of {MODES}, found {mode!r}")
    sim.mode = mode
    return sim


__all__ = ["simulate", "SimModel", "Quantizer", "Group"]
