"""Cost model: MACs, parameters and bytes per Conv2d/Linear layer, measured on a real forward pass,
and an optional roofline latency.

Per sample (the example's batch size divides out), for a layer called with output ``Y``:

    MACs   = (numel(Y) / N) * (C_in / groups) * kh * kw        (Conv2d)
    MACs   = (numel(Y) / N) * in_features                       (Linear)
    params = numel(weight) + numel(bias)
    bytes  = params * weight_bits / 8 + (numel(X) + numel(Y)) / N * act_bits / 8

and, where the hardware's compute is described (``macs_per_cycle`` and ``clock_hz``, and/or
``bandwidth_bytes_per_s``), the roofline latency of each layer

    latency = max(MACs / (macs_per_cycle * clock_hz), bytes / bandwidth_bytes_per_s)

(a term whose numbers are not given is left out; with none given the latency is ``None``). A layer
called several times (a shared module) sums its calls.

>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(64, 2))
>>> costs = layer_costs(net, torch.zeros(2, 1, 4, 4), macs_per_cycle=16, clock_hz=1e6)
>>> costs["0"].macs, costs["2"].macs, total_cost(costs).params   # 4*16*9, 2*64, 40 + 130
(576, 128, 170)
>>> costs["0"].latency_s                                         # 576 / (16 * 1e6)
3.6e-05
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from runtime.errors import HwsimError

COST_KINDS = ("macs", "params", "bytes", "latency")


@contextmanager
def eval_mode(model: nn.Module):
    """Run ``model`` in eval mode, then give every submodule back its own training flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, t in flags:
            m.training = t


@dataclass(frozen=True)
class LayerCost:
    """Cost of one layer (or a total) per sample; see the module docstring for the formulas."""

    name: str
    kind: str          # "Conv2d", "Linear", or "total"
    macs: int
    params: int
    weight_bytes: float
    act_bytes: float
    latency_s: float | None = None

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.act_bytes

    def get(self, cost: str) -> float:
        """The value of ``cost`` (one of :data:`COST_KINDS`)."""
        if cost not in COST_KINDS:
            raise HwsimError(f"cost must be one of {COST_KINDS}, found {cost!r}")
        if cost == "latency":
            if self.latency_s is None:
                raise HwsimError("cost 'latency' needs macs_per_cycle and clock_hz and/or bandwidth_bytes_per_s")
            return self.latency_s
        return float(getattr(self, cost))


def _latency(macs, nbytes, macs_per_cycle, clock_hz, bandwidth):
    terms = []
    if macs_per_cycle is not None or clock_hz is not None:
        if not (macs_per_cycle and clock_hz and macs_per_cycle > 0 and clock_hz > 0):
            raise HwsimError(f"layer_costs: compute latency needs both macs_per_cycle > 0 and clock_hz > 0, found "
                             f"macs_per_cycle={macs_per_cycle!r}, clock_hz={clock_hz!r}")
        terms.append(macs / (macs_per_cycle * clock_hz))
    if bandwidth is not None:
        if not bandwidth > 0:
            raise HwsimError(f"layer_costs: bandwidth_bytes_per_s must be > 0, found {bandwidth!r}")
        terms.append(nbytes / bandwidth)
    return max(terms) if terms else None


@torch.no_grad()
def layer_costs(model: nn.Module, example_input, macs_per_cycle: float | None = None, clock_hz: float | None = None,
                bandwidth_bytes_per_s: float | None = None, weight_bits: int = 8,
                act_bits: int = 8) -> dict[str, LayerCost]:
    """``{module name: LayerCost}`` of every Conv2d/Linear that runs in ``model(example_input)``
    (a tensor, or a tuple of inputs), in call order. The model is run once in eval mode and left in
    the modes it was in."""
    ex = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not ex or not isinstance(ex[0], torch.Tensor) or ex[0].dim() == 0:
        raise HwsimError("layer_costs: example_input must be a batched tensor (or a tuple of them)")
    n = ex[0].shape[0]
    acc: dict[str, list] = {}

    def hook(name):
        def fn(mod, inputs, output):
            if isinstance(mod, nn.Conv2d):
                kh, kw = mod.kernel_size
                macs = output.numel() // n * (mod.in_channels // mod.groups) * kh * kw
            else:
                macs = output.numel() // n * mod.in_features
            a = acc.setdefault(name, [type(mod).__name__, 0, 0])
            a[1] += macs
            a[2] += (inputs[0].numel() + output.numel()) / n
        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with eval_mode(model):
            model(*ex)
    finally:
        for h in handles:
            h.remove()
    mods = dict(model.named_modules())
    out = {}
    for name, (kind, macs, acts) in acc.items():
        m = mods[name]
        params = m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        wb, ab = params * weight_bits / 8, acts * act_bits / 8
        out[name] = LayerCost(name, kind, int(macs), int(params), wb, ab,
                              _latency(macs, wb + ab, macs_per_cycle, clock_hz, bandwidth_bytes_per_s))
    return out


def total_cost(costs: dict[str, LayerCost]) -> LayerCost:
    """The sum over layers (latencies add: layers run one after another)."""
    lat = [c.latency_s for c in costs.values()]
    return LayerCost("total", "total", sum(c.macs for c in costs.values()), sum(c.params for c in costs.values()),
                     sum(c.weight_bytes for c in costs.values()), sum(c.act_bytes for c in costs.values()),
                     sum(lat) if lat and None not in lat else None)


def model_cost(model: nn.Module, example_input, cost: str = "macs", **hardware) -> float:
    """The model's total ``cost`` (one of :data:`COST_KINDS`) per sample; ``hardware`` are the
    keyword arguments of :func:`layer_costs` (needed for ``"latency"``)."""
    if cost not in COST_KINDS:
        raise HwsimError(f"cost must be one of {COST_KINDS}, found {cost!r}")
    return total_cost(layer_costs(model, example_input, **hardware)).get(cost)
