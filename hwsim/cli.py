"""The ``hwsim`` command line.

Exit codes: 0 success; 1 a check ran and found problems; 2 bad input or usage (the message names
the file, field or tensor); 3 an internal error (a bug: please report it with ``--debug`` output).
No traceback reaches the user unless ``--debug`` is given.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from runtime.errors import HwsimError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USER_ERROR, EXIT_INTERNAL = 0, 1, 2, 3


# ------------------------------------------------------------------------------------------------
# hwsim targets
# ------------------------------------------------------------------------------------------------
def _target_summary(name: str) -> dict:
    from runtime.target import load_alias, load_target, resolve_alias

    alias = load_alias(name)
    t = load_target(name)
    a = t.arithmetic
    row = {
        "name": name,
        "description": t.description if alias is None else alias.description,
        "activations": f"{a.activations.dtype} {a.activations.scheme}",
        "weights": f"{a.weights.dtype} {a.weights.scheme} {a.weights.granularity}"
        + (f" (block {a.weights.block_size})" if a.weights.block_size else ""),
        "bias": a.bias.dtype,
        "accumulator": f"int{a.accumulator.bits} {a.accumulator.overflow}"
        + (f", pairs saturated to int{a.accumulator.pair_saturation_bits}" if a.accumulator.pair_saturation_bits else ""),
        "requant": f"{a.requant.form} ({a.requant.rounding})",
    }
    if alias is not None:
        resolved, reason = resolve_alias(alias)
        row["alias_of"] = resolved
        row["alias_reason"] = reason
    return row


def cmd_targets(args) -> int:
    from runtime.target import builtin_dir, builtin_names, load_target

    if args.action == "show":
        if not args.name:
            raise HwsimError("hwsim targets show: expected a target name or file path")
        t = load_target(args.name)
        if args.json:
            d = t.to_dict()
            if t.resolved_from:
                d = {"resolved_from": t.resolved_from, **d}
            print(json.dumps(d, indent=2))
        else:
            if t.resolved_from:
                print(f"# {t.resolved_from} resolves to {t.name} on this machine")
            print(t.to_toml(), end="")
        return EXIT_OK
    if args.action == "check":
        if not args.name:
            raise HwsimError("hwsim targets check: expected a target file path")
        t = load_target(args.name)
        print(f"{args.name}: valid target {t.name!r}")
        return EXIT_OK
    rows = [_target_summary(n) for n in builtin_names()]
    if args.json:
        print(json.dumps({"folder": str(builtin_dir()), "targets": rows}, indent=2))
        return EXIT_OK
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        if "alias_of" in r:
            print(f"{r['name']:<{width}}  -> {r['alias_of']} on this machine ({r['alias_reason']})")
        else:
            print(f"{r['name']:<{width}}  act {r['activations']}; w {r['weights']}; bias {r['bias']}; "
                  f"acc {r['accumulator']}; requant {r['requant']}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# hwsim run
# ------------------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    import io

    import numpy as np

    import runtime
    from hwsim.data import read_inputs
    from runtime.atomic import atomic_write_bytes
    from runtime.quantize import dequantize

    prog = runtime.load(args.model, args.target)
    feeds = read_inputs(args.inputs, [s.name for s in prog.inputs])
    res = prog.run_with_details(feeds, keep_tensors=True)
    arrays = {}
    summary = {"model": str(args.model), "target": prog.target.name, "outputs": {}, "layers": {},
               "seconds": round(res.seconds, 6)}
    for spec in prog.outputs:
        y = res.outputs[spec.name]
        arrays[spec.name] = y
        if spec.encoding is not None:
            if np.issubdtype(y.dtype, np.floating):  # dequantized view: also keep the integers
                step = next(s for s in prog.steps if spec.name in s.outputs)
                arrays[spec.name + "__int"] = res.tensors[step.inputs[0]]
            else:
                arrays[spec.name + "__float"] = dequantize(y, spec.encoding)
        summary["outputs"][spec.name] = {"shape": list(y.shape), "dtype": str(y.dtype)}
    for name, st in res.stats.items():
        summary["layers"][name] = {"op_type": st.op_type, "overflow": st.overflow, "saturation": st.saturation,
                                   "seconds": round(st.seconds, 6)}
    if args.out:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(args.out, buf.getvalue())
        summary["written"] = str(args.out)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for n, o in summary["outputs"].items():
            print(f"{n}: {o['dtype']} {o['shape']}")
        ov = sum(l["overflow"] for l in summary["layers"].values())
        sat = sum(l["saturation"] for l in summary["layers"].values())
        print(f"{len(prog.steps)} integer steps on {prog.target.name}, {res.seconds * 1e3:.2f} ms; "
              f"accumulator overflows {ov}, saturated outputs {sat}" + (f"; wrote {args.out}" if args.out else ""))
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# hwsim quantize / compare
# ------------------------------------------------------------------------------------------------
def _load_model(spec: str, checkpoint: str | None):
    """MODEL: a float ONNX file, or ``package.module:Factory`` (a torch.nn.Module class or function
    importable from the current environment) with an optional ``--checkpoint`` state dict."""
    from pathlib import Path

    if spec.endswith(".onnx") or Path(spec).is_file():
        if not Path(spec).is_file():
            raise HwsimError(f"{spec}: model file not found")
        return spec
    if ":" not in spec:
        raise HwsimError(f"{spec}: expected a float .onnx file or 'package.module:ModelClass'")
    import importlib

    import torch

    mod, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise HwsimError(f"{spec}: cannot import the model class: {e}") from None
    model = factory()
    if checkpoint:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except Exception as e:
            raise HwsimError(f"{checkpoint}: cannot load the checkpoint into {spec}: {e}") from None
    return model.eval()


def _sim_from_args(args, data_path):
    import numpy as np
    import torch

    from hwsim.data import read_inputs
    from hwsim.sim import simulate

    model = _load_model(args.model, getattr(args, "checkpoint", None))
    if isinstance(model, str):
        from hwsim.onnx_import import import_onnx

        model = import_onnx(model)
        names = list(model.input_names)
    else:
        names = None
    if names is None:
        import torch.fx as fx

        names = [n.target for n in fx.symbolic_trace(model).graph.nodes if n.op == "placeholder"]
    if len(names) != 1:
        raise HwsimError(f"{args.model}: models with {len(names)} inputs are not supported by this command yet")
    feeds = read_inputs(data_path, names)
    x = np.ascontiguousarray(feeds[names[0]], np.float32)
    if len(x) == 0:
        raise HwsimError(f"{data_path}: the data set is empty")
    sim = simulate(model, args.target, torch.from_numpy(x[:1]))
    return sim, x


def _held_out(args, sim, x):
    """The held-out evaluation of ``--ptq``: (--eval-data, --eval-labels) when given, else the last
    quarter of the calibration data (scored by output SQNR against float; it is then not calibrated on)."""
    import numpy as np

    from hwsim.data import read_inputs, read_labels
    from quantizer.ptq import accuracy_score, sqnr_score

    if getattr(args, "eval_data", None):
        xv = np.ascontiguousarray(next(iter(read_inputs(args.eval_data, sim.input_names).values())), np.float32)
        if args.eval_labels:
            return x, accuracy_score(xv, read_labels(args.eval_labels, len(xv)), batch_size=args.batch_size)
        return x, sqnr_score(xv, batch_size=args.batch_size)
    if getattr(args, "eval_labels", None):
        raise HwsimError("--eval-labels needs --eval-data")
    if len(x) < 8:
        raise HwsimError(f"{args.calib}: {len(x)} samples are too few to hold a quarter out for --ptq; pass --eval-data")
    cut = len(x) - len(x) // 4
    return x[:cut], sqnr_score(x[cut:], batch_size=args.batch_size)


def _ptq_options(args) -> dict:
    opts = {}
    if getattr(args, "adaround_iterations", None) is not None:
        opts["adaround"] = {"iterations": args.adaround_iterations}
    return opts


def _print_ptq(report) -> None:
    from quantizer.ptq import format_report

    print(f"PTQ ({report['mode']}: {', '.join(report['steps']) or 'nearest rounding only'}):")
    print(format_report(report))


def cmd_quantize(args) -> int:
    import torch

    from quantizer.ptq import parse_steps, run_ptq

    sim, x = _sim_from_args(args, args.calib)
    steps = parse_steps(args.ptq)
    score = None
    if steps:
        x, score = _held_out(args, sim, x)
    bs = args.batch_size
    calib = [torch.from_numpy(x[i:i + bs]) for i in range(0, len(x), bs)]
    sim.calibrate(calib, scheme=args.scheme, weight_scheme=args.weight_scheme, progress=not args.json)
    report = None
    if steps:
        report = run_ptq(sim, calib, args.ptq, score, options=_ptq_options(args), progress=not args.json)
    paths = sim.export(args.out, args.name, encodings_version=args.encodings_version)
    summary = {"target": sim.target.name, "calibration_samples": int(len(x)), "scheme": args.scheme,
               "files": {k: str(v) for k, v in paths.items()}, "quantized_tensors": len(sim.encodings())}
    if report is not None:
        summary["ptq"] = report
    if args.json:
        print(json.dumps(summary, indent=2, default=_json_default))
    else:
        if report is not None:
            _print_ptq(report)
        print(f"quantized {args.model} for {sim.target.name} ({len(x)} calibration samples, {args.scheme}); wrote:")
        for k, v in paths.items():
            print(f"  {v}")
    return EXIT_OK


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def cmd_qat(args) -> int:
    import numpy as np
    import torch

    import runtime
    from hwsim.data import read_inputs, read_labels
    from hwsim.export import build
    from quantizer.ptq import accuracy_score, parse_steps, run_ptq
    from quantizer.qat import qat

    sim, x = _sim_from_args(args, args.data)
    y = read_labels(args.labels, len(x))
    if args.eval_data:
        xv = np.ascontiguousarray(next(iter(read_inputs(args.eval_data, sim.input_names).values())), np.float32)
        if not args.eval_labels:
            raise HwsimError("hwsim qat: --eval-data needs --eval-labels (QAT is judged by accuracy)")
        yv = read_labels(args.eval_labels, len(xv))
    else:
        xv, yv = x, y
    bs = args.batch_size
    calib = [torch.from_numpy(x[i:i + bs]) for i in range(0, min(len(x), args.calib_samples), bs)]
    sim.calibrate(calib, scheme=args.scheme, progress=not args.json)
    score = accuracy_score(xv, yv, batch_size=256)
    report = {"target": sim.target.name, "train_samples": int(len(x)), "eval_samples": int(len(xv))}
    if parse_steps(args.ptq):
        report["ptq"] = run_ptq(sim, calib, args.ptq, score, options=_ptq_options(args), progress=not args.json)

    def integer_accuracy():
        prog = runtime.load(build(sim), sim.target)
        out = np.concatenate([prog.run({sim.input_names[0]: xv[i:i + 256]})[sim.output_names[0]]
                              for i in range(0, len(xv), 256)])
        return float(np.mean(np.argmax(out, 1) == yv))

    report["before"] = {"fast": score(sim)[0], "integer": integer_accuracy()}
    gen = torch.Generator().manual_seed(args.seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    class Shuffled:  # re-iterable, a new order each epoch
        def __len__(self):
            return (len(xt) + bs - 1) // bs

        def __iter__(self):
            perm = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(xt), bs):
                j = perm[i:i + bs]
                yield xt[j], yt[j]

    res = qat(sim, Shuffled(), epochs=args.epochs, lr=args.lr, learn_ranges=not args.fixed_ranges,
              progress=not args.json)
    report["qat"] = {"epochs": args.epochs, "lr": args.lr, "learned_ranges": not args.fixed_ranges,
                     "losses": res["losses"], "seconds": res["seconds"]}
    report["after"] = {"fast": score(sim)[0], "integer": integer_accuracy()}
    paths = sim.export(args.out, args.name, encodings_version=args.encodings_version)
    report["files"] = {k: str(v) for k, v in paths.items()}
    if args.json:
        print(json.dumps(report, indent=2, default=_json_default))
        return EXIT_OK
    if "ptq" in report:
        _print_ptq(report["ptq"])
    b, a = report["before"], report["after"]
    print(f"QAT on {sim.target.name}: {args.epochs} epoch(s) over {len(x)} samples in {res['seconds']:.1f} s; "
          f"loss {' -> '.join(f'{v:.4f}' for v in res['losses'])}")
    print(f"accuracy on {len(xv)} evaluation samples: fast-sim {b['fast']:.2%} -> {a['fast']:.2%}, "
          f"integer runtime {b['integer']:.2%} -> {a['integer']:.2%}")
    print("wrote:")
    for v in paths.values():
        print(f"  {v}")
    return EXIT_OK


def cmd_compare(args) -> int:
    import torch

    from hwsim.compare import compare, plot
    from hwsim.data import read_inputs, read_labels

    sim, x = _sim_from_args(args, args.data)
    calib = x
    if args.calib:
        calib = next(iter(read_inputs(args.calib, sim.input_names).values())).astype("float32")
    bs = args.batch_size
    sim.calibrate([torch.from_numpy(calib[i:i + bs]) for i in range(0, len(calib), bs)], scheme=args.scheme,
                  progress=not args.json)
    labels = read_labels(args.labels, len(x)) if args.labels else None
    report = compare(sim, x, labels, batch_size=bs, progress=not args.json)
    if args.plot:
        plot(report, args.plot)
        report["plot"] = str(args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"{args.model} on {report['target']}, {report['samples']} samples")
    if "accuracy" in report:
        print("accuracy: " + ", ".join(f"{k} {v:.2%}" for k, v in report["accuracy"].items()))
    print(f"top-1 agreement with the integer runtime: fast {report['fast_vs_integer']['top1_agreement']:.2%}, "
          f"exact {report['exact_vs_integer']['top1_agreement']:.2%}, float {report['float_vs_integer']['top1_agreement']:.2%}")
    print(f"exact-sim == integer on {report['exact_vs_integer']['identical_fraction']:.4%} of layer output elements; "
          f"fast-sim within 1 LSB on {report['fast_vs_integer']['within_1lsb_fraction']:.4%} of Conv/Gemm outputs")
    print(f"\n  {'layer':<28} {'op':<16} {'SQNR fast':>9} {'SQNR int':>9} {'|d|<=1':>8} {'ovf':>5} {'sat':>8}")
    for r in report["layers"]:
        h = r["lsb_hist"]
        within = (h["-1"] + h["0"] + h["1"]) / max(sum(h.values()), 1)
        f = lambda v: "inf" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"  {r['name'][:28]:<28} {r['op_type'][:16]:<16} {f(r['sqnr_fast_db']):>9} {f(r['sqnr_integer_db']):>9} "
              f"{within:>8.2%} {r['overflow']:>5} {r['saturation']:>8}")
    if args.plot:
        print(f"\nplot: {args.plot}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# hwsim demo
# ------------------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from hwsim.demo import run_demo

    return run_demo(json_output=args.json)


# ------------------------------------------------------------------------------------------------
def _add_ptq_arguments(p, default: str = "none") -> None:
    p.add_argument("--ptq", default=default, metavar="STEPS",
                   help="post-training steps: 'auto' (each of ranges, cle, bias-correction, adaround kept only where "
                        "the held-out score improves), 'none', or a list like 'cle,bias-correction,adaround'")
    p.add_argument("--eval-data", help="held-out data that scores --ptq steps (default: a quarter of the "
                                       "calibration data, scored by output SQNR against float)")
    p.add_argument("--eval-labels", help=".npy labels of --eval-data (score by top-1 accuracy, then SQNR)")
    p.add_argument("--adaround-iterations", type=int, help="AdaRound iterations per layer (default 1000)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwsim", description=__doc__.split("\n\n")[0])
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("targets", help="list, show, check or import accelerator targets")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    t.set_defaults(func=cmd_targets, action="list", name=None)
    ts = t.add_subparsers(dest="targets_command")
    for action, what in (("list", "list the built-in targets"), ("show", "print one target"),
                         ("check", "validate a target file")):
        a = ts.add_parser(action, help=what)
        if action != "list":
            a.add_argument("name", nargs="?", help="built-in target name or path of a target file")
        a.add_argument("--json", action="store_true", help="machine-readable output")
        a.set_defaults(func=cmd_targets, action=action)
    from hwsim.cli_encodings import add_encodings_parser, add_targets_import_parser

    add_targets_import_parser(ts)
    add_encodings_parser(sub)

    r = sub.add_parser("run", help="run a quantized ONNX model on the integer runtime")
    r.add_argument("model", help="quantized ONNX model (QDQ or QOperator)")
    r.add_argument("--target", required=True, help="built-in target name or target file")
    r.add_argument("--inputs", required=True, help=".npz keyed by input names (or one array)")
    r.add_argument("--out", help=".npz to write: outputs, plus NAME__int / NAME__float views")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

    q = sub.add_parser("quantize", help="simulate, calibrate and export a float model for a target")
    q.add_argument("model", help="float ONNX file, or package.module:ModelClass (with --checkpoint)")
    q.add_argument("--target", required=True, help="built-in target name or target file")
    q.add_argument("--calib", required=True, help="calibration data: .npz keyed by input name (or one array)")
    q.add_argument("--out", required=True, help="output folder for <name>.onnx (QDQ), <name>_float.onnx, <name>.encodings")
    q.add_argument("--name", default="model")
    q.add_argument("--checkpoint", help="state dict for a torch model class")
    q.add_argument("--scheme", default="minmax", choices=["minmax", "percentile", "mse", "tf_enhanced"],
                   help="activation range setting")
    q.add_argument("--weight-scheme", default="minmax", choices=["minmax", "percentile", "mse", "tf_enhanced"])
    q.add_argument("--encodings-version", default="1.0.0", choices=["0.6.1", "1.0.0", "2.0.0"])
    q.add_argument("--batch-size", type=int, default=64)
    _add_ptq_arguments(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quantize)

    a = sub.add_parser("qat", help="quantization-aware fine-tuning on labelled data, then export")
    a.add_argument("model", help="float ONNX file, or package.module:ModelClass (with --checkpoint)")
    a.add_argument("--target", required=True)
    a.add_argument("--data", required=True, help="training data (.npz keyed by input name, or one array)")
    a.add_argument("--labels", required=True, help=".npy of integer training labels")
    a.add_argument("--out", required=True, help="output folder (as hwsim quantize)")
    a.add_argument("--name", default="model")
    a.add_argument("--checkpoint")
    a.add_argument("--epochs", type=int, default=1)
    a.add_argument("--lr", type=float, default=1e-4)
    a.add_argument("--fixed-ranges", action="store_true", help="keep the calibrated ranges (default: learn them, LSQ)")
    a.add_argument("--calib-samples", type=int, default=1024, help="training samples used for calibration")
    a.add_argument("--scheme", default="minmax", choices=["minmax", "percentile", "mse", "tf_enhanced"])
    a.add_argument("--encodings-version", default="1.0.0", choices=["0.6.1", "1.0.0", "2.0.0"])
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--seed", type=int, default=0)
    _add_ptq_arguments(a, default="none")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_qat)

    c = sub.add_parser("compare", help="float vs fast-sim vs exact-sim vs integer runtime, per layer")
    c.add_argument("model", help="float ONNX file, or package.module:ModelClass (with --checkpoint)")
    c.add_argument("--target", required=True)
    c.add_argument("--data", required=True, help="evaluation data (.npz keyed by input name, or one array)")
    c.add_argument("--labels", help=".npy of integer labels (accuracy)")
    c.add_argument("--calib", help="calibration data (default: the evaluation data)")
    c.add_argument("--checkpoint")
    c.add_argument("--scheme", default="minmax", choices=["minmax", "percentile", "mse", "tf_enhanced"])
    c.add_argument("--batch-size", type=int, default=256)
    c.add_argument("--plot", help="write a PNG: per-layer SQNR and LSB-difference histograms")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compare)

    from hwsim.cli_compress import add_compress_parser

    add_compress_parser(sub)
    from hwsim.cli_analyze import add_analyze_parser

    add_analyze_parser(sub)

    d = sub.add_parser("demo", help="the main job on an embedded default, for every built-in target")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HwsimError as e:
        if args.debug:
            traceback.print_exc()
        print(f"hwsim: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("hwsim: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: say so plainly
        if args.debug:
            traceback.print_exc()
        print(f"hwsim: internal error: {type(e).__name__}: {e} (rerun with --debug and report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
