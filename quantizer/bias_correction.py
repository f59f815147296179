"""Bias correction (Nagel et al., "Data-Free Quantization", ICCV 2019, section 4.2): quantizing the
weights of a layer shifts the mean of its output, ``E[y~] - E[y] = (W~ - W) E[x]``, and that biased
error passes through every later layer. Both corrections remove the shift per output channel by
adjusting the layer's bias (``b -= E[y~] - E[y]``), layer by layer in topological order.

- :func:`correct_bias_empirical`: the shift measured on calibration batches, pre-activation: the
  float model (its original biases, float inputs) against the fast simulation (quantized weights,
  bias and inputs, with the layers before it already corrected).
- :func:`correct_bias_analytical`: data free. ``E[x]`` of a layer's input comes from the batch norm
  folded into the layer before it: the pre-activation is N(beta, gamma^2) per channel, and after a
  Relu/Clip ``[a, b]`` its mean is the clipped normal mean

      E[clip(z, a, b)] = a Phi(alpha) + b (1 - Phi(beta')) + mu (Phi(beta') - Phi(alpha))
                         + sigma (phi(alpha) - phi(beta')),   alpha = (a - mu)/sigma, beta' = (b - mu)/sigma

  (for a Relu, ``mu Phi(mu/sigma) + sigma phi(mu/sigma)``). Average pooling and Flatten keep the
  mean; a layer whose input mean cannot be derived (no batch norm before it, an Add, a MaxPool) is
  left alone. Zero padding at the borders is ignored, as in the paper.

>>> import torch
>>> z = torch.tensor([0.0], dtype=torch.float64)
>>> round(float(clipped_normal_mean(z, z + 1, 0.0, None)), 4)   # E[relu(N(0, 1))] = 1/sqrt(2 pi)
0.3989
"""
from __future__ import annotations

import math

import numpy as np
import torch

from runtime.errors import DataError, HwsimError

from .cle import bn_statistics

MAC_OPS = ("Conv", "Gemm")


def _key(name: str) -> str:
    return name.replace(".", "_")


def _mac_groups(sim):
    return [g for g in sim.groups if g.op_type in MAC_OPS and _key(g.name) in sim.weight_q]


def _as_tuple(b):
    return tuple(b) if isinstance(b, (tuple, list)) else (b,)


def _channel_mean(y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum over every axis but the channel axis 1, and the count summed."""
    dims = [d for d in range(y.dim()) if d != 1]
    return y.double().sum(dim=dims), y.numel() // y.shape[1]


def _check_calibrated(sim, what: str) -> None:
    missing = [q.tensor_name for q in list(sim.act_q.values()) + list(sim.weight_q.values()) if q.encoding is None]
    if missing:
        raise HwsimError(f"{what}: tensors {missing[:4]} have no encoding yet: call sim.calibrate(...) first")


@torch.no_grad()
def layer_output_means(sim, batches, fake: bool) -> dict[str, np.ndarray]:
    """Per output channel, the mean over ``batches`` of every Conv/Gemm layer's pre-activation output
    (before its fused Relu/Clip): of the float model (``fake=False``) or of the fast simulation
    (``fake=True``: quantized inputs, weights and bias), in one pass with bounded memory."""
    groups = _mac_groups(sim)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    n = 0
    for b in batches:
        vals = sim.run_float(_as_tuple(b), fake=fake)
        for g in groups:
            s, c = _channel_mean(sim._float_op(g, vals, fake))
            sums[g.name] = sums.get(g.name, 0) + s
            counts[g.name] = counts.get(g.name, 0) + c
        n += 1
    if n == 0:
        raise DataError("bias correction: the calibration data is empty; pass at least one batch")
    return {k: (sums[k] / counts[k]).numpy() for k in sums}


def _fast_until(sim, inputs, stop) -> dict:
    """The fast simulation's values (fake-quantized) of every group before ``stop``."""
    from hwsim.sim import _float_act

    vals = {}

    def out(value, x):
        k = _key(value)
        vals[value] = sim.act_q[k](x) if k in sim.act_q else x

    for name, x in zip(sim.input_names, inputs):
        out(name, x)
    for g in sim.groups:
        if g is stop:
            break
        y = sim._float_op(g, vals, True)
        for a in g.acts:
            y = _float_act(a, y)
        out(g.output, y)
    return vals


def _add_to_bias(sim, g, delta: torch.Tensor) -> None:
    m = sim.layers[_key(g.name)]
    if m.bias is None:
        m.bias = torch.nn.Parameter(torch.zeros(m.weight.shape[0], dtype=m.weight.dtype, device=m.weight.device))
    m.bias.add_(delta.to(m.bias.dtype).to(m.bias.device))
    sim._set_bias_encoding(g)


@torch.no_grad()
def correct_bias_empirical(sim, batches, progress: bool = True) -> list[dict]:
    """Empirical bias correction of every Conv/Gemm layer of the calibrated ``sim``, in place.

    ``b += E[y_float] - E[y_quant]`` per output channel, where ``E[y_float]`` is the original float
    model's pre-activation mean and ``E[y_quant]`` the fast simulation's, with the layers before it
    already corrected. ``batches`` is iterated once per layer (a generator is read into a list).
    Returns per layer ``{"layer", "shift"}`` (the largest absolute channel shift it removed; measure
    what remains with :func:`layer_output_means`)."""
    _check_calibrated(sim, "correct_bias_empirical")
    batches = [_as_tuple(b) for b in batches]
    ref = layer_output_means(sim, batches, fake=False)
    groups = _mac_groups(sim)
    it = groups
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(groups, desc="bias correction", unit="layer", leave=False)
    report = []
    for g in it:
        total, count = 0, 0
        for b in batches:
            vals = _fast_until(sim, b, g)
            s, c = _channel_mean(sim._float_op(g, vals, True))
            total, count = total + s, count + c
        shift = torch.as_tensor(ref[g.name]) - total / count
        _add_to_bias(sim, g, shift)
        report.append(dict(layer=g.name, shift=float(shift.abs().max())))
    return report


# -----------------------------------------------------------------------------------------------
# analytical
# -----------------------------------------------------------------------------------------------
def clipped_normal_mean(mu: torch.Tensor, sigma: torch.Tensor, lo: float | None, hi: float | None) -> torch.Tensor:
    """E[clip(z, lo, hi)] for z ~ N(mu, sigma^2) per element (``None``: no bound on that side)."""
    mu, sigma = torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(sigma, dtype=torch.float64)
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    pdf = lambda t: torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf_lo, pdf_lo, cdf_hi, pdf_hi = (torch.zeros_like(mu), torch.zeros_like(mu), torch.ones_like(mu),
                                      torch.zeros_like(mu))
    res = torch.zeros_like(mu)
    if lo is not None:
        a = (lo - mu) / safe
        cdf_lo, pdf_lo = torch.special.ndtr(a), pdf(a)
        res = res + lo * cdf_lo
    if hi is not None:
        b = (hi - mu) / safe
        cdf_hi, pdf_hi = torch.special.ndtr(b), pdf(b)
        res = res + hi * (1 - cdf_hi)
    res = res + mu * (cdf_hi - cdf_lo) + safe * (pdf_lo - pdf_hi)
    det = mu.clone()
    if lo is not None:
        det = det.clamp(min=lo)
    if hi is not None:
        det = det.clamp(max=hi)
    return torch.where(sigma > 0, res, det)


def _input_mean(sim, op, stats) -> torch.Tensor | None:
    """E[x] of ``op``'s input per channel/feature from the batch-norm statistics, or None."""
    producer = {o.output: o for o in sim.cap.ops}
    value, lo, hi, repeat = op.inputs[0], None, None, 1
    while True:
        p = producer.get(value)
        if p is None:
            return None
        if p.op_type == "Flatten":
            shape = sim.cap.shapes.get(p.inputs[0], ())
            if len(shape) < 2:
                return None
            repeat *= int(np.prod(shape[2:], dtype=np.int64))
        elif p.op_type in ("GlobalAveragePool", "AveragePool"):
            pass
        elif p.op_type in ("Relu", "Clip"):
            if lo is not None or hi is not None:
                return None  # two clamps in a row: rare, not modelled
            lo, hi = (0.0, None) if p.op_type == "Relu" else (p.attrs.get("min"), p.attrs.get("max"))
        elif p.op_type in MAC_OPS:
            if p.name not in stats:
                return None
            mean, std = stats[p.name]
            ex = clipped_normal_mean(torch.as_tensor(mean), torch.as_tensor(std), lo, hi)
            return ex.repeat_interleave(repeat)
        else:
            return None
        value = p.inputs[0]


@torch.no_grad()
def correct_bias_analytical(sim, bn_stats: dict | None = None) -> list[dict]:
    """Data-free bias correction of the calibrated ``sim``, in place: ``b -= (W_q - W) E[x]`` per
    output channel, ``E[x]`` from ``bn_stats`` (``{layer: (mean, std)}`` of each layer's
    pre-activation; default :func:`quantizer.cle.bn_statistics`, which follows equalization).
    Returns per corrected layer ``{"layer", "shift"}`` (largest absolute channel correction)."""
    _check_calibrated(sim, "correct_bias_analytical")
    stats = bn_stats if bn_stats is not None else bn_statistics(sim)
    report = []
    for g in _mac_groups(sim):
        op = g.head
        ex = _input_mean(sim, op, stats)
        m = sim.layers[_key(g.name)]
        w = m.weight.detach()
        if ex is None:
            continue
        dw = (sim.weight_q[_key(g.name)](w) - w).double()
        if op.op_type == "Gemm":
            if ex.numel() != dw.shape[1]:
                continue
            delta = dw @ ex
        else:
            groups = op.attrs["group"]
            per = dw.flatten(2).sum(2)                                  # [O, I/g]
            if ex.numel() != per.shape[1] * groups:
                continue
            ex_g = ex.reshape(groups, -1)                               # [g, I/g]
            owner = torch.arange(per.shape[0]) // (per.shape[0] // groups)
            delta = (per * ex_g[owner]).sum(1)
        _add_to_bias(sim, g, -delta)
        report.append(dict(layer=g.name, shift=float(delta.abs().max())))
    return report


__all__ = ["correct_bias_empirical", "correct_bias_analytical", "layer_output_means", "clipped_normal_mean"]
