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
# hwsim demo
# ------------------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from hwsim.demo import run_demo

    return run_demo(json_output=args.json)


# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwsim", description=__doc__.split("\n\n")[0])
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("targets", help="list, show or check accelerator targets")
    t.add_argument("action", nargs="?", choices=["list", "show", "check"], default="list")
    t.add_argument("name", nargs="?", help="built-in target name or path of a target file")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    t.set_defaults(func=cmd_targets)

    r = sub.add_parser("run", help="run a quantized ONNX model on the integer runtime")
    r.add_argument("model", help="quantized ONNX model (QDQ or QOperator)")
    r.add_argument("--target", required=True, help="built-in target name or target file")
    r.add_argument("--inputs", required=True, help=".npz keyed by input names (or one array)")
    r.add_argument("--out", help=".npz to write: outputs, plus NAME__int / NAME__float views")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

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
