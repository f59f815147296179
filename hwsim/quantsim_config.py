"""Import an AIMET quantsim config (JSON) as an hwsim target.

An AIMET quantsim config says *where* quantizers go; it says little about *how* the hardware
computes. :func:`import_quantsim_config` therefore takes the placement from the config and the
arithmetic from a base target (``--arithmetic``), adjusted by the config's symmetry and per-channel
flags. AIMET writes booleans as the strings ``"True"``/``"False"``; real booleans are accepted too,
anything else is an error naming the key path. Keys hwsim does not map are *reported* (returned as
warnings, printed by the command line), never silently dropped; a key AIMET itself does not know
is reported the same way. Duplicate keys (JSON keeps the last) are reported too.

Placement (``runtime.target.Placement``), key by key:

- ``defaults.ops.is_output_quantized`` / ``is_input_quantized`` -> ``placement.defaults.ops``
  (absent: output true, input false, AIMET's defaults).
- ``defaults.params.is_quantized`` -> ``placement.defaults.params`` (absent: true).
- ``params.weight|bias.is_quantized`` -> ``placement.params``.
- ``op_type.<Op>.is_input_quantized|is_output_quantized`` and ``op_type.<Op>.params.weight|bias
  .is_quantized`` -> ``placement.op_type.<Op>``. Op types that are not ONNX operators (AIMET lists
  e.g. ``ChannelShuffle``) are reported and skipped.
- ``supergroups[].op_list`` -> ``placement.supergroups`` (lists naming a non-ONNX op are skipped).
- ``model_input.is_input_quantized`` / ``model_output.is_output_quantized`` -> the same fields
  (absent: false; AIMET only acts on true).

Arithmetic (a copy of the base target's), for weights and activations separately:

- symmetric = ``defaults.params.is_symmetric`` (overridden by ``params.weight.is_symmetric``) for
  weights, ``defaults.ops.is_symmetric`` for activations; absent: the base scheme is symmetric.
- strict = ``defaults.strict_symmetric``, unsigned = ``defaults.unsigned_symmetric``; absent: as the
  base scheme.
- scheme = ``asymmetric`` if not symmetric, else ``strict_symmetric`` if strict (unsigned is then
  ignored, reported), else ``unsigned_symmetric`` if unsigned, else ``symmetric``. Symmetric schemes
  are stored in the *signed* type of the base width (AIMET's symmetric grid is centred on zero,
  offset -2^(bw-1)); asymmetric keeps the base dtype. The base's ``reduce_range`` (7-bit weights)
  is kept for signed symmetric schemes and dropped, reported, otherwise.
- ``defaults.per_channel_quantization``: true -> weights ``per_channel`` (a ``per_block`` base is
  kept), false -> ``per_tensor``; absent: the base granularity.
- ``op_type.<Op>.per_channel_quantization`` and ``op_type.<Op>.params.weight.is_symmetric`` for
  ops with weights (Conv, ConvTranspose, Gemm, MatMul) -> ``arithmetic.op_type.<Op>.weights`` when
  they differ from the default weights; for other ops they are reported (no weights to quantize).
- Not mapped, reported: ``defaults.hw_version`` (noted in the description),
  ``supported_kernels``, ``encoding_constraints``, per-op activation ``is_symmetric``, parameters
  other than weight and bias (e.g. ``running_mean``), bias ``is_symmetric``.

>>> t, warnings = import_quantsim_config({"defaults": {"ops": {"is_output_quantized": "True"},
...     "params": {"is_quantized": "True", "is_symmetric": "True"}, "per_channel_quantization": "True"},
...     "params": {"bias": {"is_quantized": "False"}}, "op_type": {}, "supergroups": [{"op_list": ["Conv", "Relu"]}],
...     "model_input": {"is_input_quantized": "True"}, "model_output": {}}, "dsp-int8", name="imported")
>>> t.arithmetic.weights.granularity, t.placement.params["bias"].is_quantized, warnings
('per_channel', False, [])
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx.defs

from runtime.errors import ResourceError, TargetError
from runtime.graph import max_tensor_bytes
from runtime.target import Target, load_target, parse_target

__all__ = ["import_quantsim_config", "read_quantsim_config", "QuantsimConfig"]

_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_TOP = ("defaults", "params", "op_type", "supergroups", "model_input", "model_output")
_DEFAULTS = ("ops", "params", "strict_symmetric", "unsigned_symmetric", "per_channel_quantization", "hw_version",
             "supported_kernels")
_OP_FLAGS = ("is_input_quantized", "is_output_quantized", "is_symmetric")
_PARAM_FLAGS = ("is_quantized", "is_symmetric")
_OP_TYPE_KEYS = ("is_input_quantized", "is_output_quantized", "is_symmetric", "per_channel_quantization", "params",
                 "encoding_constraints", "supported_kernels")


@dataclass
class QuantsimConfig:
    """A parsed quantsim config: plain data with real booleans, and the warnings found so far."""

    data: dict[str, Any]
    source: str
    warnings: list[str] = field(default_factory=list)


def _load(path_or_dict) -> tuple[dict, str, list[str]]:
    if isinstance(path_or_dict, dict):
        return path_or_dict, "<quantsim config>", []
    path = Path(path_or_dict)
    try:
        size, limit = path.stat().st_size, max_tensor_bytes()
        if size > limit:
            raise ResourceError(f"{path}: the quantsim config has {size} bytes, more than the limit of {limit} "
                                "(HWSIM_MAX_TENSOR_BYTES)")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TargetError(f"{path}: quantsim config not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TargetError(f"{path}: cannot read quantsim config: {e}") from None
    dups: list[str] = []

    def pairs(items):
        seen: dict[str, Any] = {}
        for k, v in items:
            if k in seen:
                dups.append(k)
            seen[k] = v
        return seen

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise TargetError(f"{path}: not valid JSON: {e}") from None
    except RecursionError:
        raise TargetError(f"{path}: not a quantsim config: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise TargetError(f"{path}: expected a JSON object at the top level, found {type(data).__name__}")
    return data, str(path), [f"duplicate key {k!r}: JSON keeps the last one" for k in dups]


def read_quantsim_config(path_or_dict: str | os.PathLike | dict) -> QuantsimConfig:
    """Parse a quantsim config: booleans become real booleans, structure is checked, unknown keys
    are collected as warnings."""
    raw, source, warnings = _load(path_or_dict)
    cfg = QuantsimConfig({}, source, warnings)

    def err(path: str, msg: str) -> TargetError:
        return TargetError(f"{source}: {path}: {msg}")

    def table(v, path) -> dict:
        if not isinstance(v, dict):
            raise err(path, f"expected an object, found {v!r}")
        return v

    def boolean(v, path) -> bool:
        if isinstance(v, bool):
            return v
        if v in ("True", "False"):
            return v == "True"
        raise err(path, f"expected \"True\"/\"False\" (or true/false), found {v!r}")

    def flags(d, path, known) -> dict:
        out = {}
        for k, v in table(d, path).items():
            if k in known:
                out[k] = boolean(v, f"{path}.{k}")
            else:
                cfg.warnings.append(f"{path}.{k}: unknown key, ignored")
        return out

    def params(d, path) -> dict:
        return {name: flags(p, f"{path}.{name}", _PARAM_FLAGS) for name, p in table(d, path).items()}

    top = table(raw, "<top>")
    for k in top:
        if k not in _TOP:
            cfg.warnings.append(f"{k}: unknown top-level key, ignored")
    out = cfg.data
    d = table(top.get("defaults", {}), "defaults")
    dd: dict[str, Any] = {}
    for k, v in d.items():
        p = f"defaults.{k}"
        if k == "ops":
            dd[k] = flags(v, p, _OP_FLAGS)
        elif k == "params":
            dd[k] = flags(v, p, _PARAM_FLAGS)
        elif k in ("strict_symmetric", "unsigned_symmetric", "per_channel_quantization"):
            dd[k] = boolean(v, p)
        elif k == "hw_version":
            if not isinstance(v, str):
                raise err(p, f"expected a string, found {v!r}")
            dd[k] = v
        elif k == "supported_kernels":
            cfg.warnings.append(f"{p}: not mapped (the dtypes come from the --arithmetic target)")
        else:
            cfg.warnings.append(f"{p}: unknown key, ignored")
    out["defaults"] = dd
    out["params"] = params(top.get("params", {}), "params")
    ops: dict[str, dict] = {}
    for op, spec in table(top.get("op_type", {}), "op_type").items():
        p = f"op_type.{op}"
        o: dict[str, Any] = {}
        for k, v in table(spec, p).items():
            if k in ("is_input_quantized", "is_output_quantized", "is_symmetric", "per_channel_quantization"):
                o[k] = boolean(v, f"{p}.{k}")
            elif k == "params":
                o[k] = params(v, f"{p}.params")
            elif k in ("encoding_constraints", "supported_kernels"):
                o[k] = v
            else:
                cfg.warnings.append(f"{p}.{k}: unknown key, ignored")
        ops[op] = o
    out["op_type"] = ops
    groups = top.get("supergroups", [])
    if not isinstance(groups, list):
        raise err("supergroups", f"expected a list, found {groups!r}")
    out["supergroups"] = []
    for i, sg in enumerate(groups):
        p = f"supergroups[{i}]"
        sg = table(sg, p)
        ol = sg.get("op_list")
        if not isinstance(ol, list) or not all(isinstance(x, str) for x in ol):
            raise err(f"{p}.op_list", f"expected a list of op types, found {ol!r}")
        for k in sg:
            if k != "op_list":
                cfg.warnings.append(f"{p}.{k}: unknown key, ignored")
        out["supergroups"].append(list(ol))
    out["model_input"] = flags(top.get("model_input", {}), "model_input", ("is_input_quantized",))
    out["model_output"] = flags(top.get("model_output", {}), "model_output", ("is_output_quantized",))
    return cfg


def _signed(dtype: str) -> str:
    return dtype[1:] if dtype.startswith("u") else dtype


def _scheme(base: dict, sym: bool | None, strict: bool | None, unsigned: bool | None, where: str,
            warnings: list[str]) -> dict:
    """A TensorQuant dict with the scheme rule of the module docstring applied."""
    base_scheme = base["scheme"]
    sym = base_scheme != "asymmetric" if sym is None else sym
    strict = base_scheme == "strict_symmetric" if strict is None else strict
    unsigned = base_scheme == "unsigned_symmetric" if unsigned is None else unsigned
    out = dict(base)
    if not sym:
        out["scheme"] = "asymmetric"
        return _drop_reduce_range(out, where, warnings)
    if strict and unsigned:
        warnings.append(f"{where}: strict_symmetric and unsigned_symmetric are both true; strict_symmetric is used")
    out["scheme"] = "strict_symmetric" if strict else "unsigned_symmetric" if unsigned else "symmetric"
    out["dtype"] = _signed(base["dtype"])
    return _drop_reduce_range(out, where, warnings)


def _drop_reduce_range(out: dict, where: str, warnings: list[str]) -> dict:
    """The base's ``reduce_range`` (7-bit weights) applies to signed symmetric schemes only."""
    if out.get("reduce_range") and out["scheme"] not in ("symmetric", "strict_symmetric"):
        out.pop("reduce_range")
        warnings.append(f"{where}: the base target's reduce_range is dropped (it needs a signed symmetric scheme, "
                        f"the config gives {out['scheme']})")
    return out


def _granularity(w: dict, per_channel: bool | None) -> dict:
    out = dict(w)
    if per_channel is None:
        return out
    if per_channel:
        if out.get("granularity") != "per_block":
            out["granularity"] = "per_channel"
            out.pop("block_size", None)
    else:
        out["granularity"] = "per_tensor"
        out.pop("block_size", None)
    return out


def _name_from(source: str) -> str:
    stem = Path(source).stem if not source.startswith("<") else "imported"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem) or "imported"


def import_quantsim_config(config: str | os.PathLike | dict, arithmetic: str | os.PathLike | Target, *,
                           name: str | None = None) -> tuple[Target, list[str]]:
    """(target, warnings): the placement of AIMET quantsim ``config`` on the arithmetic of base
    target ``arithmetic``, adjusted as the module docstring says. The target is validated like any
    target file (``runtime.target.parse_target``)."""
    cfg = read_quantsim_config(config)
    warnings = cfg.warnings
    base = load_target(arithmetic)
    d = cfg.data
    defaults = d["defaults"]
    dops, dparams = defaults.get("ops", {}), defaults.get("params", {})
    strict, unsigned = defaults.get("strict_symmetric"), defaults.get("unsigned_symmetric")

    # ---- placement
    placement: dict[str, Any] = {
        "defaults": {"ops": {"is_input_quantized": dops.get("is_input_quantized", False),
                             "is_output_quantized": dops.get("is_output_quantized", True)},
                     "params": {"is_quantized": dparams.get("is_quantized", True)}},
        "params": {},
        "op_type": {},
        "supergroups": [],
        "model_input": {"is_input_quantized": d["model_input"].get("is_input_quantized", False)},
        "model_output": {"is_output_quantized": d["model_output"].get("is_output_quantized", False)},
    }
    for pname, p in d["params"].items():
        if pname not in ("weight", "bias"):
            warnings.append(f"params.{pname}: hwsim places weight and bias parameters only; ignored")
            continue
        if "is_quantized" in p:
            placement["params"][pname] = {"is_quantized": p["is_quantized"]}
        if pname == "bias" and "is_symmetric" in p:
            warnings.append("params.bias.is_symmetric: not mapped (biases are int32 with zero point 0)")

    # ---- arithmetic
    arith = base.to_dict()["arithmetic"]
    base_weights = dict(arith["weights"])
    w_sym = d["params"].get("weight", {}).get("is_symmetric", dparams.get("is_symmetric"))
    weights = _scheme(arith["weights"], w_sym, strict, unsigned, "defaults (weights)", warnings)
    weights = _granularity(weights, defaults.get("per_channel_quantization"))
    arith["weights"] = weights
    arith["activations"] = _scheme(arith["activations"], dops.get("is_symmetric"), strict, unsigned,
                                   "defaults (activations)", warnings)
    op_arith = dict(arith.get("op_type", {}))

    for op, o in d["op_type"].items():
        p = f"op_type.{op}"
        if not onnx.defs.has(op):
            warnings.append(f"{p}: {op!r} is not an ONNX operator type; skipped")
            continue
        entry: dict[str, Any] = {}
        for k in ("is_input_quantized", "is_output_quantized"):
            if k in o:
                entry[k] = o[k]
        if "is_symmetric" in o:
            warnings.append(f"{p}.is_symmetric: per-op activation symmetry is not mapped (activations follow "
                            "defaults.ops.is_symmetric)")
        for k in ("encoding_constraints", "supported_kernels"):
            if k in o:
                warnings.append(f"{p}.{k}: not mapped")
        op_params = {}
        w_override = None
        for pname, pf in o.get("params", {}).items():
            if pname not in ("weight", "bias"):
                warnings.append(f"{p}.params.{pname}: hwsim places weight and bias parameters only; ignored")
                continue
            if "is_quantized" in pf:
                op_params[pname] = {"is_quantized": pf["is_quantized"]}
            if "is_symmetric" in pf:
                if pname == "weight" and op in _WEIGHT_OPS:
                    w_override = pf["is_symmetric"]
                else:
                    warnings.append(f"{p}.params.{pname}.is_symmetric: not mapped ({op} has no integer "
                                    f"{'weights' if pname == 'weight' else 'bias scheme'} in hwsim)")
        if op_params:
            entry["params"] = op_params
        if op in _WEIGHT_OPS and ("per_channel_quantization" in o or w_override is not None):
            ow = weights
            if w_override is not None:
                ow = _scheme(base_weights, w_override, strict, unsigned, f"{p}.params.weight", warnings)
                ow = _granularity(ow, defaults.get("per_channel_quantization"))
            ow = _granularity(ow, o.get("per_channel_quantization"))
            if ow != weights:
                op_arith[op] = {"weights": ow}
        elif "per_channel_quantization" in o:
            warnings.append(f"{p}.per_channel_quantization: not mapped ({op} has no weights in hwsim's integer ops)")
        if entry:
            placement["op_type"][op] = entry
    if op_arith:
        arith["op_type"] = op_arith

    for i, ol in enumerate(d["supergroups"]):
        bad = [op for op in ol if not onnx.defs.has(op)]
        if bad:
            warnings.append(f"supergroups[{i}]: {bad} not ONNX operator types; group {ol} skipped")
        elif len(ol) < 2:
            warnings.append(f"supergroups[{i}]: a supergroup fuses at least two ops, found {ol}; skipped")
        else:
            placement["supergroups"].append({"op_list": list(ol)})

    hw = defaults.get("hw_version")
    if hw is not None:
        warnings.append(f"defaults.hw_version {hw!r}: not mapped (noted in the description)")
    target_name = name or _name_from(cfg.source)
    desc = (f"Imported from AIMET quantsim config {Path(cfg.source).name if not cfg.source.startswith('<') else cfg.source}"
            + (f" (hw_version {hw})" if hw else "") + f" on the arithmetic of {base.name}")
    data = {"schema_version": base.schema_version, "name": target_name, "description": desc,
            "arithmetic": arith, "placement": placement}
    if base.cost is not None:
        data["cost"] = base.to_dict()["cost"]
    target = parse_target(data, cfg.source)
    return target, warnings
