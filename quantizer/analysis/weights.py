"""Weight ranges per output channel before and after batch-norm folding and after cross-layer
equalization, and the relative-range view that shows which layers per-tensor quantization hurts.

For a Conv/Gemm weight ``W`` (output channels on axis 0), channel ``i`` has::

    min_i = min W[i],   max_i = max W[i],   range_i = max_i - min_i
    relative_range_i = range_i / max_j range_j          (AIMET's view: 1 for the widest channel)
    spread = max_j range_j / min_{j: range_j > 0} range_j

A per-tensor encoding spends its ``2^b - 1`` steps on the widest channel, so channel ``i`` is
resolved with only about ``relative_range_i * (2^b - 1)`` of them: a layer with a large ``spread``
(a small ``min_relative_range``) is the one per-tensor quantization hurts, and the one per-channel
quantization or CLE helps. The numbers that say how much: ``per_tensor_sqnr_db`` and
``per_channel_sqnr_db``, the weight's SQNR ``10 log10(sum W^2 / sum (W - fq(W))^2)`` after fake
quantization with the target's weight dtype and scheme (half to even), per tensor and per channel.

Stages (:data:`STAGES`): ``unfolded`` (the model's own weights, before any batch norm is folded into
them), ``folded`` (the simulation's float weights: BN folded, as the target sees them), ``cle``
(those weights after :func:`quantizer.cle.equalize` on a copy of the simulation).

>>> ranges = channel_ranges(np.float32([[-1, 1], [0, 0.5], [0, 0]]))
>>> ranges["relative_range"].tolist(), ranges["spread"]
([1.0, 0.25, 0.0], 4.0)
"""
from __future__ import annotations

import copy
import os

import numpy as np

from runtime.errors import HwsimError

from .report import figure_png, pyplot

STAGES = ("unfolded", "folded", "cle")
MAC_OPS = ("Conv", "Gemm")


def _key(name: str) -> str:
    return name.replace(".", "_")


def channel_ranges(w) -> dict:
    """Per output channel (axis 0) ``min``, ``max``, ``relative_range`` (float64 arrays) and the
    layer's ``spread`` and ``min_relative_range`` (floats; see the module docstring). An all-zero
    weight has spread 1 and relative ranges 0."""
    w = np.asarray(w, np.float64)
    if w.ndim < 1 or w.shape[0] == 0 or w.size == 0:
        raise HwsimError(f"channel_ranges: expected a weight with output channels on axis 0, found shape {w.shape}")
    flat = w.reshape(w.shape[0], -1)
    mn, mx = flat.min(axis=1), flat.max(axis=1)
    rng = mx - mn
    top = float(rng.max())
    rel = rng / top if top > 0 else np.zeros_like(rng)
    live = rng[rng > 0]
    with np.errstate(over="ignore"):  # a subnormal channel range: infinite spread (JSON null)
        spread = float(top / live.min()) if live.size else 1.0
    return {"min": mn, "max": mx, "relative_range": rel, "spread": spread,
            "min_relative_range": float(rel.min())}


def weight_sqnr_db(w, qtype, scheme: str, per_channel: bool) -> float | None:
    """SQNR (dB) of ``w`` fake-quantized with ``qtype``/``scheme`` per tensor or per channel (axis 0),
    rounding half to even; None when the quantized weight is exact (infinite SQNR)."""
    from runtime.encoding import PerAxis, PerTensor, encoding_from_tensor
    from runtime.quantize import fake_quantize

    w = np.asarray(w, np.float32)
    g = PerAxis(0) if per_channel else PerTensor()
    fq = fake_quantize(w, encoding_from_tensor(w, qtype, scheme, g), "half_to_even").astype(np.float64)
    noise = float(((w.astype(np.float64) - fq) ** 2).sum())
    if noise == 0:
        return None
    return float(10 * np.log10(max(float((w.astype(np.float64) ** 2).sum()), 1e-30) / noise))


def _stats(w: np.ndarray, wq) -> dict:
    d = channel_ranges(w)
    d["per_tensor_sqnr_db"] = weight_sqnr_db(w, wq.qtype, wq.scheme, per_channel=False)
    d["per_channel_sqnr_db"] = weight_sqnr_db(w, wq.qtype, wq.scheme, per_channel=True)
    return d


def mac_layers(sim) -> list:
    """The Conv/Gemm groups of ``sim`` that carry a weight quantizer, in graph order."""
    return [g for g in sim.groups if g.op_type in MAC_OPS and _key(g.name) in sim.weight_q]


def _module_paths(sim) -> dict[int, str]:
    return {id(m): name for name, m in sim.cap.modules.items()}


def _unfolded(sim, model, layer_module) -> np.ndarray:
    """The weight before BN folding: the model's own when ``model`` is given, else the folded weight
    with the folded batch norm's factor ``gamma / sqrt(var + eps)`` divided out (exact up to float
    rounding while the simulation's weights are as captured)."""
    path = _module_paths(sim).get(id(layer_module))
    if model is not None and path is not None:
        try:
            return model.get_submodule(path).weight.detach().cpu().numpy().astype(np.float64)
        except AttributeError:
            pass
    w = layer_module.weight.detach().cpu().double().numpy()
    bn_of = dict(sim.cap.folded)
    if path is None or path not in bn_of:
        return w
    bn = sim.cap.modules[bn_of[path]]
    std = np.sqrt(bn.running_var.detach().cpu().double().numpy() + bn.eps)
    gamma = bn.weight.detach().cpu().double().numpy() if bn.affine else np.ones_like(std)
    factor = (gamma / std).reshape(-1, *([1] * (w.ndim - 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(factor != 0, w / np.where(factor != 0, factor, 1.0), np.nan)


def weight_ranges(model_or_sim, example_inputs=None, target=None, *, stages=STAGES, cle_options: dict | None = None,
                  progress: bool = True) -> dict:
    """``{stage: {layer: stats}}`` for every Conv/Gemm layer, ``stats`` as :func:`channel_ranges`
    plus ``op_type``, ``channels``, ``per_tensor_sqnr_db`` and ``per_channel_sqnr_db`` (the target's
    weight dtype and scheme).

    ``model_or_sim``: a :class:`hwsim.sim.SimModel` (used as it is; its current float weights are the
    ``folded`` stage), or a float ``torch.nn.Module`` / ONNX path, simulated on ``target`` with
    ``example_inputs``. The ``cle`` stage equalizes a deep copy (``cle_options`` go to
    :func:`quantizer.cle.equalize`; on a calibrated simulation the ReLU6 bound rule knows the input
    range); the given model is never changed.
    """
    from hwsim.sim import SimModel, simulate

    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise HwsimError(f"weight_ranges: unknown stages {bad}; expected some of {STAGES}")
    model = None
    if isinstance(model_or_sim, SimModel):
        sim = model_or_sim
    else:
        if example_inputs is None or target is None:
            raise HwsimError("weight_ranges: a float model needs example_inputs and a target (or pass a simulation "
                             "model from hwsim.simulate)")
        model = model_or_sim
        if isinstance(model, (str, os.PathLike)):
            from hwsim.onnx_import import import_onnx

            model = import_onnx(model)
        sim = simulate(model, target, example_inputs)
    groups = mac_layers(sim)
    out: dict = {}
    for stage in stages:
        work = sim
        if stage == "cle":
            from quantizer.cle import equalize

            work = copy.deepcopy(sim)
            equalize(work, progress=progress, **(cle_options or {}))
        layers = {}
        for g in groups:
            k = _key(g.name)
            m = work.layers[k]
            w = _unfolded(work, model, m) if stage == "unfolded" else m.weight.detach().cpu().double().numpy()
            layers[g.name] = {"op_type": g.op_type, "channels": int(w.shape[0]), **_stats(w, work.weight_q[k])}
        out[stage] = layers
    return out


# -----------------------------------------------------------------------------------------------
# plots
# -----------------------------------------------------------------------------------------------
def plot_layer_ranges(ranges: dict, layer: str) -> bytes:
    """PNG: one panel per stage, each output channel's [min, max] as a vertical bar."""
    plt = pyplot()
    stages = [s for s in ranges if layer in ranges[s]]
    if not stages:
        raise HwsimError(f"plot_layer_ranges: no stage has a layer named {layer!r}")
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.0), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        r = ranges[stage][layer]
        c = np.arange(len(r["min"]))
        ax.vlines(c, r["min"], r["max"], lw=3, color="tab:blue")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_title(f"{stage}: spread {r['spread']:.3g}", fontsize=9)
        ax.set_xlabel("output channel", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("weight min .. max", fontsize=8)
    fig.suptitle(f"{layer} ({ranges[stages[0]][layer]['op_type']})", fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


def plot_relative_ranges(ranges: dict) -> bytes:
    """PNG: per layer and stage, the spread (log scale) and the per-tensor weight SQNR (per-channel
    SQNR as markers): the layers that per-tensor quantization hurts stand out on both."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    plt = pyplot()
    stages = list(ranges)
    layers = list(next(iter(ranges.values()))) if ranges else []
    y = np.arange(len(layers))
    h = 0.8 / max(len(stages), 1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 0.4 * len(layers) * max(1, len(stages) / 2) + 2), sharey=True)
    sq = [v for s in stages for n in layers for k in ("per_tensor_sqnr_db", "per_channel_sqnr_db")
          for v in [ranges[s][n][k]] if v is not None]
    cap = max(sq) + 5.0 if sq else 60.0  # an exact quantized weight (SQNR None) drawn at the right end
    for i, stage in enumerate(stages):
        off = (i - (len(stages) - 1) / 2) * h
        a1.barh(y + off, [ranges[stage][n]["spread"] for n in layers], height=h, label=stage)
        pt = [ranges[stage][n]["per_tensor_sqnr_db"] for n in layers]
        pc = [ranges[stage][n]["per_channel_sqnr_db"] for n in layers]
        a2.barh(y + off, [cap if v is None else v for v in pt], height=h, label=f"{stage} per tensor")
        a2.plot([cap if v is None else v for v in pc], y + off, "k|", ms=8,
                label="per channel" if i == len(stages) - 1 else None)
    a1.set_xscale("log")
    a1.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    a1.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    a1.xaxis.set_minor_formatter(NullFormatter())
    a1.set_yticks(y, layers, fontsize=8)
    a1.invert_yaxis()
    a1.set_xlabel("spread: widest / narrowest channel range (log)")
    a2.set_xlabel("weight SQNR (dB) at the target's weight dtype; exact drawn at the right end")
    for ax in (a1, a2):
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    fig.tight_layout()
    return figure_png(fig)
