"""Analysis: where a model hurts when it is quantized for a target, and a report that shows it.

- :mod:`.weights`: per-channel weight ranges before/after BN folding and after CLE, relative ranges.
- :mod:`.sensitivity`: per-layer sensitivity, activation histograms, per-layer output error.
- :mod:`.report`: one self-contained HTML file plus ``report.json`` and PNGs.
- :func:`analyze`: all of it, and the simulation-vs-integer comparison of :mod:`hwsim.compare`, as
  report sections (``write_report(out_dir, analyze(sim, x, labels))``; ``hwsim analyze`` does that).

``quantizer.analysis.sensitivity`` names the function (re-exported here); the module's other names
come with ``from quantizer.analysis.sensitivity import ...``.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from .report import Section, Table, jsonable, plot_stem, write_report
from .sensitivity import (activation_histograms, all_quantizers, layer_output_mse, plot_histograms, plot_output_mse,
                          plot_sensitivity, quantized_layers, quantizers_enabled, sensitivity)
from .weights import STAGES, channel_ranges, plot_layer_ranges, plot_relative_ranges, weight_ranges

__all__ = ["analyze", "weight_ranges", "channel_ranges", "sensitivity", "activation_histograms", "layer_output_mse",
           "quantized_layers", "quantizers_enabled", "write_report", "Section", "Table", "jsonable", "STAGES"]


def _num(v, spec: str = ".4g", none: str = "n/a") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, spec)


def format_score(v, metric: str) -> str:
    if metric == "accuracy":
        return _num(v, ".2%")
    return _num(v, ".4g", none="inf" if metric == "output_sqnr_db" else "n/a")


def sensitivity_section(res: dict) -> Section:
    m = res["metric"]
    text = (f"Score: {m}" + (f" on {res['samples']} samples" if res["samples"] else "") + " in fast simulation. "
            f"Float {format_score(res['float'], m)}, all quantized {format_score(res['quantized'], m)}, weights only "
            f"{format_score(res['weights_only'], m)}, activations only {format_score(res['activations_only'], m)}.\n\n"
            "'only' quantizes that layer alone (its weights, bias and output) with everything else in float; "
            "'all but' quantizes everything except that layer. A layer whose 'only' score drops far below float, "
            "or whose 'all but' score recovers most of the loss, is the one to look at.")
    rows = [[r["name"], r["op_type"], format_score(r["only"], m), format_score(r["all_but"], m), ", ".join(r["tensors"])]
            for r in res["layers"]]
    return Section("sensitivity", "Per-layer quantization sensitivity", res, text,
                   [Table(["layer", "op", "only this quantized", "all but this quantized", "tensors"], rows)],
                   {"sensitivity": plot_sensitivity(res)})


def weights_section(ranges: dict) -> Section:
    stages = list(ranges)
    layers = list(next(iter(ranges.values()))) if ranges else []
    cols = ["layer", "op", "channels"] + [f"spread ({s})" for s in stages] + [f"min relative range ({s})" for s in stages]
    cols += [f"weight SQNR per tensor ({s})" for s in stages] + [f"per channel ({s})" for s in stages]
    rows = []
    for n in layers:
        first = ranges[stages[0]][n]
        row = [n, first["op_type"], first["channels"]]
        row += [_num(ranges[s][n]["spread"]) for s in stages]
        row += [_num(ranges[s][n]["min_relative_range"]) for s in stages]
        row += [_num(ranges[s][n]["per_tensor_sqnr_db"], ".1f", "inf") for s in stages]
        row += [_num(ranges[s][n]["per_channel_sqnr_db"], ".1f", "inf") for s in stages]
        rows.append(row)
    plots = {"weight_relative_ranges": plot_relative_ranges(ranges)}
    for n in layers:
        stem = plot_stem("weights", n)
        while stem in plots:  # two layer names that differ only in characters a file name cannot hold
            stem += "_"
        plots[stem] = plot_layer_ranges(ranges, n)
    text = ("Per output channel min and max of every Conv/Gemm weight at each stage (" + ", ".join(stages) + "). "
            "Spread is the widest channel range over the narrowest; a per-tensor encoding resolves a channel with "
            "about relative_range x (2^b - 1) steps, so layers with a large spread (a low per-tensor weight SQNR) are "
            "those per-tensor quantization hurts.")
    return Section("weight_ranges", "Weight ranges", ranges, text, [Table(cols, rows)], plots)


def activations_section(hists: dict) -> Section:
    rows = [[n, h["layer"], _num(h["min"]), _num(h["max"]), _num(h["encoding_min"]), _num(h["encoding_max"]),
             _num(h["below"], ".3%"), _num(h["above"], ".3%")] for n, h in hists.items()]
    plots = {f"activation_histograms_{i + 1}": png for i, png in enumerate(plot_histograms(hists))}
    text = ("Histograms of every quantized activation on the calibration data (float model), with the encoding's "
            "range marked in red; 'below'/'above' are the shares of values the encoding clips.")
    return Section("activations", "Activation histograms", hists, text,
                   [Table(["tensor", "layer", "min", "max", "encoding min", "encoding max", "below", "above"], rows)],
                   plots)


def output_mse_section(rows_in: list[dict]) -> Section:
    rows = [[r["name"], r["op_type"], r["tensor"], _num(r["mse"]), _num(r["sqnr_db"], ".1f", "inf")] for r in rows_in]
    return Section("output_mse", "Per-layer output error against float", rows_in,
                   "Mean squared error and SQNR of each quantized layer output in fast simulation (all quantizers on) "
                   "against the float model.",
                   [Table(["layer", "op", "tensor", "MSE", "SQNR dB"], rows)], {"output_mse": plot_output_mse(rows_in)})


def compare_section(rep: dict) -> Section:
    from hwsim.compare import plot

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "sim_vs_integer.png"
        plot(rep, p)
        png = p.read_bytes()
    rows = []
    for r in rep["layers"]:
        h = r["lsb_hist"]
        within = (h["-1"] + h["0"] + h["1"]) / max(sum(h.values()), 1)
        rows.append([r["name"], r["op_type"], _num(r["sqnr_fast_db"], ".1f", "inf"),
                     _num(r["sqnr_integer_db"], ".1f", "inf"), f"{within:.2%}", r["overflow"], r["saturation"]])
    acc = rep.get("accuracy")
    text = (f"exact simulation == integer runtime on {rep['exact_vs_integer']['identical_fraction']:.4%} of layer "
            f"output elements; fast simulation within 1 LSB on {rep['fast_vs_integer']['within_1lsb_fraction']:.4%} "
            "of Conv/Gemm outputs.")
    if acc:
        text += " Accuracy: " + ", ".join(f"{k} {v:.2%}" for k, v in acc.items()) + "."
    return Section("sim_vs_integer", "Simulation vs integer runtime", rep, text,
                   [Table(["layer", "op", "SQNR fast dB", "SQNR integer dB", "|fast - int| <= 1 LSB", "overflow",
                           "saturation"], rows)], {"sim_vs_integer": png})


def analyze(sim, x, labels=None, calib=None, *, eval_fn=None, compare: bool = True, bins: int = 64,
            batch_size: int = 256, cle_options: dict | None = None, progress: bool = True) -> list[Section]:
    """Every analysis of a calibrated simulation ``sim``, as report sections (in this order):
    sensitivity on ``x`` (accuracy with ``labels``, output SQNR without; or ``eval_fn``), weight
    ranges (:data:`STAGES`), activation histograms on ``calib`` (default ``x``), per-layer output
    error on ``x``, and (``compare=True``) :func:`hwsim.compare.compare` on ``x``. Each section's
    ``data`` is exactly what the Python function returned."""
    calib = x if calib is None else calib
    sens = sensitivity(sim, None if eval_fn is not None else x, labels if eval_fn is None else None,
                       eval_fn=eval_fn, batch_size=batch_size, progress=progress)
    sections = [sensitivity_section(sens),
                weights_section(weight_ranges(sim, cle_options=cle_options, progress=progress)),
                activations_section(activation_histograms(sim, calib, bins, batch_size, progress)),
                output_mse_section(layer_output_mse(sim, x, batch_size, progress))]
    if compare:
        from hwsim.compare import compare as run_compare

        with quantizers_enabled(sim, all_quantizers(sim)):
            rep = run_compare(sim, np.ascontiguousarray(np.asarray(x), np.float32),
                              None if labels is None else np.asarray(labels), batch_size=batch_size, progress=progress)
        sections.append(compare_section(rep))
    return sections
