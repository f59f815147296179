"""``hwsim analyze MODEL --target T --data DATA [--labels L] [--calib C] [--checkpoint CK] --out DIR [--json]``.

MODEL as in ``hwsim quantize`` (a float ONNX file, or ``package.module:ModelClass`` with
``--checkpoint``). The model is simulated on the target and calibrated on ``--calib`` (default: the
evaluation data), then :func:`quantizer.analysis.analyze` computes per-layer sensitivity on DATA
(accuracy with ``--labels``, output SQNR against float without), weight ranges (before/after BN
folding, after CLE), activation histograms on the calibration data, per-layer output error, and the
simulation-vs-integer comparison; DIR receives ``report.html`` (self-contained), ``report.json``
and every plot as a PNG. Prints the HTML path and a short summary, or with ``--json`` the report's
JSON plus the written files.

Exit codes as ``hwsim``: 0 success, 2 bad input (the message names the file, tensor or field).
Handlers catch the project's errors themselves and return the code, so they behave the same when
called through a parser of their own.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from runtime.errors import HwsimError

EXIT_OK, EXIT_USER_ERROR = 0, 2
SCHEMES = ["minmax", "percentile", "mse", "tf_enhanced"]


def add_analyze_parser(subparsers) -> argparse.ArgumentParser:
    """``hwsim analyze`` on the top-level sub-command group."""
    a = subparsers.add_parser("analyze", help="sensitivity, weight ranges, activation histograms and sim vs integer: "
                                              "an HTML report")
    a.add_argument("model", help="float ONNX file, or package.module:ModelClass (with --checkpoint)")
    a.add_argument("--target", required=True, help="built-in target name or target file")
    a.add_argument("--data", required=True, help="evaluation data (.npz keyed by input name, or one array)")
    a.add_argument("--labels", help=".npy of integer labels (accuracy; without: output SQNR against float)")
    a.add_argument("--calib", help="calibration data (default: the evaluation data)")
    a.add_argument("--checkpoint", help="state dict for a torch model class")
    a.add_argument("--out", required=True, help="folder for report.html, report.json and the PNG plots")
    a.add_argument("--scheme", default="minmax", choices=SCHEMES, help="activation range setting")
    a.add_argument("--weight-scheme", default="minmax", choices=SCHEMES)
    a.add_argument("--bins", type=int, default=64, help="activation histogram bins")
    a.add_argument("--batch-size", type=int, default=256)
    a.add_argument("--no-compare", action="store_true", help="skip the simulation-vs-integer comparison")
    a.add_argument("--json", action="store_true", help="print the report's JSON instead of a summary")
    a.set_defaults(func=cmd_analyze)
    return a


def cmd_analyze(args) -> int:
    try:
        return _analyze(args)
    except HwsimError as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"hwsim: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


def _analyze(args) -> int:
    import numpy as np
    import torch

    from hwsim.cli import _sim_from_args
    from hwsim.data import read_inputs, read_labels
    from quantizer.analysis import analyze, write_report
    from quantizer.analysis.report import report_json

    if args.batch_size < 1 or args.bins < 1:
        raise HwsimError(f"--batch-size and --bins must be >= 1, found {args.batch_size} and {args.bins}")
    sim, x = _sim_from_args(args, args.data)
    calib = x
    if args.calib:
        calib = np.ascontiguousarray(read_inputs(args.calib, sim.input_names)[sim.input_names[0]], np.float32)
        if len(calib) == 0:
            raise HwsimError(f"{args.calib}: the calibration data set is empty")
    labels = read_labels(args.labels, len(x)) if args.labels else None
    bs = args.batch_size
    quiet = args.json
    sim.calibrate([torch.from_numpy(calib[i:i + bs]) for i in range(0, len(calib), bs)], scheme=args.scheme,
                  weight_scheme=args.weight_scheme, progress=not quiet)
    sections = analyze(sim, x, labels, calib, compare=not args.no_compare, bins=args.bins, batch_size=bs,
                       progress=not quiet)
    title = f"hwsim analysis: {args.model} on {sim.target.name}"
    meta = {"model": args.model, "target": sim.target.name, "samples": int(len(x)),
            "calibration_samples": int(len(calib)), "scheme": args.scheme, "weight_scheme": args.weight_scheme}
    paths = write_report(args.out, sections, title, meta)
    files = {"html": str(paths["html"]), "json": str(paths["json"]), "plots": [str(p) for p in paths["plots"]]}
    if quiet:
        print(json.dumps({**report_json(sections, title, meta), "files": files}, indent=1))
        return EXIT_OK
    print(f"report: {paths['html']}")
    for line in summary_lines(sections):
        print(line)
    print(f"numbers: {paths['json']}; {len(paths['plots'])} plots in {args.out}")
    return EXIT_OK


def summary_lines(sections) -> list[str]:
    """A few lines a person reads first: scores, the most sensitive layers, the widest weight spreads."""
    from quantizer.analysis import format_score

    by = {s.key: s.data for s in sections}
    out = []
    sens = by.get("sensitivity")
    if sens:
        m = sens["metric"]
        out.append(f"{m}: float {format_score(sens['float'], m)}, quantized {format_score(sens['quantized'], m)}, weights only "
                   f"{format_score(sens['weights_only'], m)}, activations only {format_score(sens['activations_only'], m)}")
        finite = [r for r in sens["layers"] if r["only"] is not None]
        worst = sorted(finite, key=lambda r: r["only"])[:3]
        if worst:
            out.append("most sensitive alone: " + ", ".join(f"{r['name']} ({format_score(r['only'], m)})" for r in worst))
    wr = by.get("weight_ranges")
    if wr and "folded" in wr and wr["folded"]:
        top = sorted(wr["folded"].items(), key=lambda kv: -kv[1]["spread"])[:3]
        line = "widest weight spread (folded): " + ", ".join(f"{n} {d['spread']:.3g}" for n, d in top)
        if "cle" in wr:
            line += "; after CLE: " + ", ".join(f"{n} {wr['cle'][n]['spread']:.3g}" for n, _ in top)
        out.append(line)
    cmp = by.get("sim_vs_integer")
    if cmp:
        out.append(f"exact sim == integer runtime on {cmp['exact_vs_integer']['identical_fraction']:.4%} of elements")
    return out
