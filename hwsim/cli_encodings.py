"""``hwsim encodings validate|apply|convert`` and ``hwsim targets import``.

``hwsim encodings validate MODEL.onnx ENC.json --target T [--json]`` checks an AIMET encodings file
against a float model and a target and lists findings (severity, tensor, message):

- **missing**: a tensor the target quantizes (``runtime.placement.expected_encodings``) has no
  encoding (error; for a bias a warning: applying derives it at ``s_x * s_w``), or is kept float;
- **unknown-tensor**: an encoding names no tensor of the model (error);
- **recurrent-internal**: an AIMET recurrent-quantizer name (``<module>.h_l0``, ``.c_l0``, ``.weight_ih_l0``, ...)
  in a model with LSTM/GRU nodes: applied by the QDQ export, not by float + encodings (warning);
- **misplaced**: an activation encoding on a weight/bias initializer, or a parameter encoding on a
  computed tensor (error; 0.6.1/1.0.0 files, which separate the two);
- **unexpected**: an encoding where the target places no quantizer, e.g. inside a supergroup
  (warning);
- **float-op**: an op the target does not run in integers (error);
- **dtype**, **symmetry**, **granularity**, **shape**: bit width, scheme and per-tensor/channel/block
  granularity against ``target.arithmetic`` (activations, ``weights_for(op)``, bias), and
  per-channel counts against the weight (errors; a full-range encoding on a strict-symmetric target
  is a warning);
- **degenerate-scale**: a scale at the :data:`~runtime.encoding.MIN_RANGE` floor
  (``scale * (qmax - qmin) <= 1.01 * MIN_RANGE``): a dead channel or a constant tensor (warning);
- **bias-scale** / **bias-offset**: a bias encoding whose scale is not ``s_x * s_w`` within 1e-3
  relative, or whose zero point is not 0 (errors).

Exit codes as ``hwsim`` (hwsim/cli.py): 0 clean (warnings allowed), 1 errors found, 2 bad usage or
unreadable files (the message names the file), 3 internal error. Handlers catch the project's
errors themselves and return the code, so they behave the same when wired into ``hwsim.cli``.
"""
from __future__ import annotations

import re

import argparse
import json
import sys
import traceback
from dataclasses import dataclass

import numpy as np

from runtime.errors import HwsimError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USER_ERROR = 0, 1, 2

__all__ = ["Finding", "validate_encodings", "add_encodings_parser", "add_targets_import_parser"]


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    code: str
    tensor: str | None
    message: str

    def to_dict(self) -> dict:
        return {"severity": self.severity, "code": self.code, "tensor": self.tensor, "message": self.message}


_SYMMETRIC = ("symmetric", "strict_symmetric", "unsigned_symmetric")


def _centered(e) -> bool:
    """Every zero point is the symmetric one of the encoding's dtype (0 signed, 2^(b-1) unsigned)."""
    zp = np.asarray(e.zero_point)
    return bool(np.all(zp == (0 if e.dtype.signed else 1 << (e.dtype.bits - 1))))


def _check_quant(name: str, kind: str, e, tq, target, strict_expressible: bool) -> list[Finding]:
    """Bit width, scheme and granularity of encoding ``e`` against TensorQuant ``tq``."""
    from runtime.aimet import FlatBlocks
    from runtime.encoding import PerBlock, PerTensor

    out = []
    want = tq.qtype
    if e.dtype.bits != want.bits:
        out.append(Finding("error", "dtype", name, f"{kind} encoding is {e.dtype} ({e.dtype.bits}-bit); target "
                           f"{target.name!r} stores {kind}s as {want} ({want.bits}-bit)"))
    if tq.scheme in _SYMMETRIC:
        unsigned_ok = tq.scheme == "unsigned_symmetric" and not e.dtype.signed and bool(np.all(e.zero_point == 0))
        if not (_centered(e) or unsigned_ok):
            zps = sorted(set(np.asarray(e.zero_point).reshape(-1).tolist()))[:4]
            out.append(Finding("error", "symmetry", name, f"target {target.name!r} quantizes {kind}s {tq.scheme}, but "
                               f"the encoding's zero points {zps} are not the symmetric one of {e.dtype}"))
        elif tq.scheme == "strict_symmetric" and strict_expressible and e.qmin == e.dtype.qmin:
            out.append(Finding("warning", "symmetry", name, f"target {target.name!r} quantizes {kind}s strict "
                               f"symmetric (without {e.dtype.qmin}); the encoding uses the full range of {e.dtype}"))
    flat_block = isinstance(e, FlatBlocks)
    g = None if flat_block else e.granularity
    if kind == "activation":
        if not isinstance(g, PerTensor):
            out.append(Finding("error", "granularity", name, f"activations are quantized per tensor; found "
                               f"{'a per-block' if flat_block else g} encoding"))
        return out
    block = flat_block or isinstance(g, PerBlock)
    bsize = e.block_size if flat_block else (g.block_size if isinstance(g, PerBlock) else None)
    if tq.granularity == "per_tensor" and not isinstance(g, PerTensor):
        out.append(Finding("error", "granularity", name, f"target {target.name!r} quantizes these weights per tensor; "
                           f"found a per-{'block' if block else 'channel'} encoding"))
    elif tq.granularity == "per_channel" and block:
        out.append(Finding("error", "granularity", name, f"target {target.name!r} quantizes these weights per channel; "
                           "found a per-block encoding"))
    elif tq.granularity == "per_block":
        if not block:
            out.append(Finding("warning", "granularity", name, f"target {target.name!r} quantizes these weights in "
                               f"blocks of {tq.block_size}; the encoding is coarser ({g})"))
        elif bsize != tq.block_size:
            out.append(Finding("error", "granularity", name, f"block size {bsize}, target {target.name!r} uses "
                               f"{tq.block_size}"))
    return out


def _degenerate(name: str, e) -> Finding | None:
    from runtime.encoding import MIN_RANGE

    s = np.asarray(e.scale, np.float64).reshape(-1)
    dead = np.flatnonzero(s * (e.qmax - e.qmin) <= 1.01 * MIN_RANGE)
    if dead.size == 0:
        return None
    if s.size == 1:
        return Finding("warning", "degenerate-scale", name, f"scale {float(s[0]):.3g} is at the MIN_RANGE floor "
                       f"({MIN_RANGE:g}): a constant tensor?")
    idx = dead[:8].tolist()
    return Finding("warning", "degenerate-scale", name, f"{dead.size} of {s.size} channels have a scale at the "
                   f"MIN_RANGE floor ({MIN_RANGE:g}), dead channels: {idx}{' ...' if dead.size > 8 else ''}")


_RECURRENT_NAME = re.compile(r"\.((weight|bias)_(ih|hh)|input|h|c|initial_h|initial_c)_l\d+(_reverse)?$")


def validate_encodings(model, encodings, target) -> list[Finding]:
    """Findings of AIMET ``encodings`` (path, dict or EncodingsFile) for float ``model`` on ``target``
    (see the module docstring). Unreadable inputs raise :class:`~runtime.errors.HwsimError`."""
    from runtime.aimet import EncodingsFile, FlatBlocks, read_encodings
    from runtime.apply_encodings import _resolve_param, _trace_activation
    from runtime.encoding import Encoding, PerBlock
    from runtime.graph import load_model_proto, parse_graph
    from runtime.placement import expected_encodings, match_supergroups, param_role
    from runtime.target import RECURRENT_OPS, load_target

    target = load_target(target)
    proto, source = load_model_proto(model)
    enc = encodings if isinstance(encodings, EncodingsFile) else read_encodings(encodings)
    graph = parse_graph(proto)
    nodes = {n.name: n for n in graph.nodes}
    consts = set(graph.initializers) | {o for n in graph.nodes if n.op_type == "Constant" for o in n.outputs}
    split_file = not enc.unsplit
    enc = enc.split(consts)
    expected = expected_encodings(proto, target, float_ops="float")
    producers = graph.producer()
    consumers = graph.consumers()
    known = consts | {v.name for v in graph.inputs} | set(producers)
    every = enc.all()
    out: list[Finding] = []

    for name, kind in expected.items():
        if kind == "float":
            p = producers.get(name)
            if p is not None and p.op_type in RECURRENT_OPS and target.arithmetic.recurrent_problem(p.op_type) is None:
                out.append(Finding("warning", "recurrent-internal", name, f"output of {p.op_type} node {p.name!r}: the "
                                   "target runs it in integers from the QDQ model hwsim exports, not from float + "
                                   "encodings"))
                continue
            what = f"{p.op_type} node {p.name!r}" if p is not None else "its producer"
            out.append(Finding("error", "float-op", name, f"produced by {what}, which target {target.name!r} does not "
                               "run in integers (not in arithmetic.integer_ops)"))
    recurrent = [n for n in graph.nodes if n.op_type in RECURRENT_OPS]
    for name in list(every) + list(enc.floats):
        if name not in known:
            if recurrent and _RECURRENT_NAME.search(name):
                out.append(Finding("warning", "recurrent-internal", name, "an AIMET recurrent-quantizer name (no tensor "
                                   f"of {source}); the QDQ model hwsim exports applies it, float + encodings does not"))
                continue
            out.append(Finding("error", "unknown-tensor", name, f"the encoding names no tensor of {source}"))
    if split_file:
        for name in enc.activations:
            if expected.get(name) in ("weight", "bias"):
                out.append(Finding("error", "misplaced", name, f"an activation encoding on the {expected[name]} "
                                   "initializer; it belongs in param_encodings"))
        for name in enc.params:
            if name in known and name not in consts:
                out.append(Finding("error", "misplaced", name, "a parameter encoding on a computed tensor (an "
                                   "activation); it belongs in activation_encodings"))
    for name, kind in expected.items():
        if kind == "float" or name in every:
            continue
        if name in enc.floats:
            out.append(Finding("error", "missing", name, f"kept float by the file (AIMET dtype float, "
                               f"{enc.floats[name][1]} bit), but target {target.name!r} quantizes this {kind}"))
        elif kind == "bias":
            out.append(Finding("warning", "missing", name, "no bias encoding: applying the file derives an int32 bias "
                               "at s_x * s_w"))
        else:
            out.append(Finding("error", "missing", name, f"target {target.name!r} quantizes this {kind}, but the file "
                               "has no encoding for it"))
    inner = {}
    for chain in match_supergroups(graph, target.placement.supergroups):
        for n in chain[:-1]:
            inner[n.name] = [c.op_type for c in chain]
    for name in every:
        if name not in known or name in expected:
            continue
        p = producers.get(name)
        if p is not None and p.name in inner:
            why = f"it is inside supergroup {inner[p.name]} (only the last op's output is quantized)"
        elif p is not None:
            why = f"target {target.name!r} does not quantize {p.op_type} outputs (data movement keeps its input's encoding)"
        else:
            why = f"target {target.name!r} places no quantizer on it"
        out.append(Finding("warning", "unexpected", name, f"an encoding where the target expects none: {why}"))

    a = target.arithmetic
    resolved: dict[str, Encoding] = {}
    acts = {k: e for k, e in enc.activations.items() if k not in consts}
    for name, e in every.items():
        if name not in known:
            continue
        kind = expected.get(name)
        uses = [(nodes[n.name], i) for n in consumers.get(name, []) for i, t in enumerate(n.inputs) if t == name]
        if kind is None:
            kind = "activation" if name not in consts else next(
                (r for r in (param_role(n.op_type, i) for n, i in uses) if r), "activation")
        if kind == "float":
            continue
        if name in graph.initializers or isinstance(e, FlatBlocks):
            try:
                if name not in graph.initializers:
                    raise HwsimError(f"a per-block encoding on {name!r}, which is not an initializer")
                e = _resolve_param(name, e, tuple(graph.initializers[name].shape), _onnx_uses(proto, name),
                                   enc.axes_known, source)
                resolved[name] = e
            except HwsimError as err:
                out.append(Finding("error", "shape", name, str(err)))
                continue
        if kind == "activation":
            out.extend(_check_quant(name, kind, e, a.activations, target, not enc.axes_known))
        elif kind == "weight":
            op = next((n.op_type for n, i in uses if param_role(n.op_type, i) == "weight"), None)
            tq = a.weights_for(op) if op else a.weights
            out.extend(_check_quant(name, kind, e, tq, target, not enc.axes_known))
            if getattr(tq, "reduce_range", False) and name in graph.initializers and not isinstance(e, FlatBlocks):
                from runtime.quantize import quantize

                q = quantize(np.asarray(graph.initializers[name], np.float32), e, "half_to_even").astype(np.int64)
                _, z = e.broadcast_params(q.shape)
                lim = 1 << (e.dtype.bits - 2)
                big = int(np.abs(q - z).max()) if q.size else 0
                if big > lim:
                    out.append(Finding("warning", "dtype", name, f"target {target.name!r} quantizes weights with "
                                       f"reduce_range (|q - zero_point| <= {lim}); these reach {big}"))
        elif kind == "bias":
            if isinstance(e, FlatBlocks) or e.dtype.bits < 32 or not e.dtype.signed:
                out.append(Finding("error", "dtype", name, f"bias encodings are int32 (target bias {a.bias.dtype}); "
                                   f"found {getattr(e, 'dtype', '?')}"))
            elif e.dtype.bits > a.bias.qtype.bits:
                out.append(Finding("error", "dtype", name, f"bias {e.dtype} is wider than the target's {a.bias.dtype}"))
            if not isinstance(e, FlatBlocks) and np.any(np.asarray(e.zero_point) != 0):
                out.append(Finding("error", "bias-offset", name, "a bias encoding has zero point 0 (AIMET offset "
                                   f"-2^31); found {sorted(set(np.asarray(e.zero_point).reshape(-1).tolist()))[:4]}"))
        if not isinstance(e, FlatBlocks):
            f = _degenerate(name, e)
            if f is not None and kind != "bias":
                out.append(f)

    # bias scale = s_x * s_w
    act_producers = {o: n for n in proto.graph.node for o in n.output if o}
    for n in graph.nodes:
        if n.op_type not in ("Conv", "Gemm") or n.input(2) is None:
            continue
        b, w, x = n.input(2), n.input(1), n.input(0)
        eb, ew = resolved.get(b, every.get(b)), resolved.get(w)
        ex = _trace_activation(x, acts, act_producers)
        if eb is None or ew is None or ex is None or isinstance(eb, FlatBlocks) or isinstance(ew.granularity, PerBlock):
            continue
        want = (np.float32(ex.scale) * np.asarray(ew.scale, np.float32)).astype(np.float64).reshape(-1)
        got = np.asarray(eb.scale, np.float64).reshape(-1)
        if got.size not in (1, want.size) and want.size != 1:
            out.append(Finding("error", "bias-scale", b, f"{got.size} bias scales for {want.size} weight channels"))
            continue
        rel = np.abs(got - want) / want
        if np.any(rel > 1e-3):
            i = int(np.argmax(rel))
            out.append(Finding("error", "bias-scale", b, f"bias scale must be s_x * s_w ({n.op_type} node {n.name!r}); "
                               f"channel {i}: {float(got[min(i, got.size - 1)]):.6g} vs {float(want[min(i, want.size - 1)]):.6g} "
                               f"(relative error {float(rel.max()):.2g} > 1e-3)"))
    order = {"error": 0, "warning": 1}
    return sorted(out, key=lambda f: order[f.severity])


def _onnx_uses(proto, name):
    return [(n, i) for n in proto.graph.node for i, t in enumerate(n.input) if t == name]


# ------------------------------------------------------------------------------------------------
# command-line handlers
# ------------------------------------------------------------------------------------------------
def _user_error(args, e: Exception) -> int:
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(f"hwsim: error: {e}", file=sys.stderr)
    return EXIT_USER_ERROR


def cmd_encodings_validate(args) -> int:
    try:
        findings = validate_encodings(args.model, args.encodings, args.target)
    except HwsimError as e:
        return _user_error(args, e)
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    if args.json:
        print(json.dumps({"model": str(args.model), "encodings": str(args.encodings), "target": args.target,
                          "errors": errors, "warnings": warnings, "findings": [f.to_dict() for f in findings]}, indent=2))
    else:
        for f in findings:
            print(f"{f.severity:<8} {f.code:<17} {f.tensor or '-'}: {f.message}")
        print(f"{args.encodings}: {errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)} "
              f"for {args.model} on target {args.target}")
    return EXIT_CHECK_FAILED if errors else EXIT_OK


def cmd_encodings_apply(args) -> int:
    from runtime.apply_encodings import apply_encodings
    from runtime.atomic import atomic_write_bytes

    try:
        m = apply_encodings(args.model, args.encodings, opset=args.opset, derive_bias=not args.no_derive_bias,
                            propagate=not args.no_propagate)
        atomic_write_bytes(args.out, m.SerializeToString())
    except HwsimError as e:
        return _user_error(args, e)
    q = sum(n.op_type == "QuantizeLinear" for n in m.graph.node)
    dq = sum(n.op_type == "DequantizeLinear" for n in m.graph.node)
    print(f"wrote {args.out}: {q} QuantizeLinear, {dq} DequantizeLinear, opset "
          f"{next(o.version for o in m.opset_import if o.domain in ('', 'ai.onnx'))}")
    return EXIT_OK


def cmd_encodings_convert(args) -> int:
    from dataclasses import replace

    from runtime.aimet import FlatBlocks, read_encodings, write_encodings

    try:
        enc = read_encodings(args.encodings)
        if args.model:
            from runtime.apply_encodings import _resolve_param
            from runtime.graph import load_model_proto
            from onnx import numpy_helper

            proto, source = load_model_proto(args.model)
            inits = {t.name: t for t in proto.graph.initializer}
            enc = enc.split(inits)
            params = {}
            for k, e in enc.params.items():
                if isinstance(e, FlatBlocks) or (not enc.axes_known and k in inits):
                    e = _resolve_param(k, e, numpy_helper.to_array(inits[k]).shape, _onnx_uses(proto, k),
                                       enc.axes_known, source)
                params[k] = e
            enc = replace(enc, params=params)
        write_encodings(args.out, enc, args.to)
    except HwsimError as e:
        return _user_error(args, e)
    print(f"wrote {args.out}: version {args.to}, {len(enc.all())} encodings")
    return EXIT_OK


def cmd_targets_import(args) -> int:
    from hwsim.quantsim_config import import_quantsim_config
    from runtime.target import load_target, save_target

    try:
        target, warnings = import_quantsim_config(args.config, args.arithmetic, name=args.name)
        if not str(args.out).lower().endswith((".toml", ".json")):
            raise HwsimError(f"{args.out}: the output must be a .toml or .json target file")
        save_target(target, args.out)
        load_target(args.out)  # what `hwsim targets check` does
    except HwsimError as e:
        return _user_error(args, e)
    if args.json:
        print(json.dumps({"written": str(args.out), "name": target.name, "arithmetic_of": args.arithmetic,
                          "warnings": warnings}, indent=2))
    else:
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(f"wrote {args.out}: target {target.name!r} ({len(warnings)} warning{'s' * (len(warnings) != 1)})")
    return EXIT_CHECK_FAILED if args.strict and warnings else EXIT_OK


def add_encodings_parser(subparsers) -> argparse.ArgumentParser:
    """``hwsim encodings validate|apply|convert`` on the top-level sub-command group."""
    e = subparsers.add_parser("encodings", help="check, apply or convert AIMET encodings files")
    sub = e.add_subparsers(dest="encodings_command", required=True)
    v = sub.add_parser("validate", help="check an encodings file against a float model and a target")
    v.add_argument("model", help="float ONNX model")
    v.add_argument("encodings", help="AIMET encodings JSON (0.6.1, 1.0.0 or 2.0.0)")
    v.add_argument("--target", required=True, help="built-in target name or target file")
    v.add_argument("--json", action="store_true", help="machine-readable findings")
    v.set_defaults(func=cmd_encodings_validate)
    a = sub.add_parser("apply", help="write the QDQ ONNX model of a float model and its encodings")
    a.add_argument("model", help="float ONNX model")
    a.add_argument("encodings", help="AIMET encodings JSON")
    a.add_argument("--out", required=True, help="QDQ ONNX model to write")
    a.add_argument("--opset", type=int, help="default-domain opset of the result (default: what the encodings need)")
    a.add_argument("--no-derive-bias", action="store_true", help="keep float biases that have no encoding")
    a.add_argument("--no-propagate", action="store_true", help="no QDQ pairs after data-movement ops")
    a.set_defaults(func=cmd_encodings_apply)
    c = sub.add_parser("convert", help="rewrite an encodings file in another AIMET version")
    c.add_argument("encodings", help="AIMET encodings JSON")
    c.add_argument("--to", required=True, choices=["0.6.1", "1.0.0", "2.0.0"], help="version to write")
    c.add_argument("--out", required=True, help="encodings JSON to write")
    c.add_argument("--model", help="float ONNX model: sorts 2.0.0 entries into activations/params and fixes axes")
    c.set_defaults(func=cmd_encodings_convert)
    return e


def add_targets_import_parser(targets_subparsers) -> argparse.ArgumentParser:
    """``hwsim targets import CONFIG.json --arithmetic NAME --out FILE`` on the ``targets`` sub-commands."""
    t = targets_subparsers.add_parser("import", help="make a target from an AIMET quantsim config")
    t.add_argument("config", help="AIMET quantsim config JSON")
    t.add_argument("--arithmetic", required=True, help="target whose arithmetic the new target uses")
    t.add_argument("--out", required=True, help="target file to write (.toml or .json)")
    t.add_argument("--name", help="name of the new target (default: the config file's name)")
    t.add_argument("--json", action="store_true", help="machine-readable summary")
    t.add_argument("--strict", action="store_true", help="exit 1 when some config keys were not mapped")
    t.set_defaults(func=cmd_targets_import)
    return t
