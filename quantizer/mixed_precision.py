"""Mixed-precision weights: per-layer weight bit widths that meet a model-size goal with the least loss.

The greedy machinery of :mod:`quantizer.compress.greedy`, with bit widths as the options. The
reference is the simulation with every Conv/Gemm weight at ``base_bits`` (8); each layer's options
are the narrower widths (default: the target's own weight width, e.g. 4 on ``npu-w4a8``). The table
holds, per (layer, bits), the held-out score of the model with only that layer narrowed and the
weight size in bits ``sum_l numel(W_l) * bits_l``; :func:`~quantizer.compress.greedy.greedy_select`
picks the highest score threshold whose size is at most ``size_target`` of the all-``base_bits``
size. Weight sizes add up exactly, so the estimate is the true size.

A layer's width is its weight quantizer's storage type (same scheme and granularity as the target's
weights, symmetric signed); encodings are recomputed from the float weights, biases follow at
``s_x * s_w``, and export writes each weight's own dtype (int4 initializers need opset 21, which the
exporter selects), so the integer runtime executes exactly the mixed model.
"""
from __future__ import annotations

import copy

from runtime.dtypes import qtype_for
from runtime.errors import HwsimError

__all__ = ["weight_layers", "weight_size_bits", "with_weight_bits", "select_weight_bits"]


def weight_layers(sim) -> list[str]:
    """Names of the layers (groups) whose weights are quantized, in model order."""
    return [g.name for g in sim.groups if g.name.replace(".", "_") in sim.weight_q]


def weight_size_bits(sim) -> float:
    """``sum_l numel(W_l) * bits_l`` over the quantized weights."""
    total = 0
    for name in weight_layers(sim):
        k = name.replace(".", "_")
        total += sim.layers[k].weight.numel() * sim.weight_q[k].qtype.bits
    return float(total)


def with_weight_bits(sim, bits: dict, copy_sim: bool = True):
    """A copy of the calibrated ``sim`` (or ``sim`` itself) with ``{layer: bits}`` weight widths and
    recomputed weight/bias encodings."""
    out = copy.deepcopy(sim) if copy_sim else sim
    names = set(weight_layers(out))
    for layer, b in bits.items():
        if layer not in names:
            raise HwsimError(f"with_weight_bits: {layer!r} is not a layer with quantized weights "
                             f"(choose from {sorted(names)})")
        q = out.weight_q[layer.replace(".", "_")]
        if q.learning:
            raise HwsimError(f"with_weight_bits: layer {layer!r} is learning its range; freeze_ranges(sim) first")
        q.qtype = qtype_for(int(b), q.qtype.signed)
    out.set_weight_encodings()
    return out


def select_weight_bits(sim, eval_fn, size_target: float = 0.6, bits=None, base_bits: int = 8, exclude=(),
                       cache_path=None, cache_key: str = "", progress: bool = True) -> dict:
    """Per-layer weight widths for the calibrated ``sim`` whose weight size is at most ``size_target``
    of the all-``base_bits`` model, with the least loss of ``eval_fn(sim)`` (higher is better, e.g.
    :func:`quantizer.ptq.accuracy_score` on held-out data; must return a number).

    ``bits``: the narrower widths to try (default: the target's weight width). ``exclude``: layers kept
    at ``base_bits``. ``cache_path`` / ``cache_key``: the score table's JSON cache (as
    :func:`~quantizer.compress.greedy.build_table`; the key must name the evaluation data).

    Returns ``{"bits": {layer: width}`` (every layer), ``"sim"`` (the chosen model, calibrated),
    ``"size_fraction"``, ``"size_bits"``, ``"base_size_bits"``, ``"baseline_score"``,
    ``"predicted_score"``, ``"threshold"``, ``"table"`` (per layer and width: score and size)}``.
    """
    from .compress.greedy import build_table, greedy_select, predicted_score

    if bits is None:
        bits = (sim.target.arithmetic.weights.qtype.bits,)
    bits = sorted({int(b) for b in bits if int(b) < base_bits})
    if not bits:
        raise HwsimError(f"select_weight_bits: no width narrower than base_bits={base_bits} to choose from")
    layers = [n for n in weight_layers(sim) if n not in set(exclude)]
    base = with_weight_bits(sim, {n: base_bits for n in weight_layers(sim)})
    options = {n: list(bits) for n in layers}

    def score(m):
        v = eval_fn(m)
        return float(v[0] if isinstance(v, tuple) else v)

    table = build_table(base, options, lambda m, layer, b: with_weight_bits(m, {layer: b}), score, weight_size_bits,
                        cache_path=cache_path, cache_key=f"weight-bits|{base_bits}|{cache_key}", progress=progress)
    choice, threshold, size = greedy_select(table, size_target)
    chosen = with_weight_bits(base, {layer: int(b) for layer, b in choice.items()})
    return {"bits": {n: chosen.weight_q[n.replace(".", "_")].qtype.bits for n in weight_layers(chosen)},
            "sim": chosen, "size_bits": weight_size_bits(chosen), "base_size_bits": table.baseline_cost,
            "size_fraction": weight_size_bits(chosen) / table.baseline_cost, "baseline_score": table.baseline_score,
            "predicted_score": predicted_score(table, choice), "threshold": threshold,
            "table": {layer: {str(b): {"score": table.score(layer, b), "size_bits": table.cost(layer, b)} for b in opts}
                      for layer, opts in table.options.items()}}
