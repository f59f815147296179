"""Targets: accelerators described as validated config files (``targets/*.toml``).

A target says two things (see ARCHITECTURE.md):

1. ``placement``: where quantizers go (the concepts of AIMET's quantsim config, with real booleans):
   defaults for op outputs/inputs and parameters, per-parameter and per-op-type overrides,
   supergroups (fused op sequences inside which nothing is quantized), model input/output rules.
2. ``arithmetic``: how the hardware computes: storage dtypes and schemes of activations, weights and
   bias, granularity, accumulator width and overflow policy, pairwise product saturation,
   requantization form and rounding, elementwise rescale rule, pooling and lookup-table rounding,
   which ops run in integers at all.

The code never special-cases a target by name: everything a kernel needs is a field here.
Files are TOML (read with :mod:`tomllib`, written with ``tomli_w``); JSON with the same structure is
accepted too. An *alias* file (``[alias]`` instead of ``arithmetic``/``placement``) names another
target chosen by the CPU's features, e.g. ``ort-cpu`` -> ``ort-cpu-vnni`` or ``ort-cpu-avx2``.

>>> t = load_target("dsp-int8")
>>> t.arithmetic.weights.dtype, t.arithmetic.requant.rounding, t.arithmetic.accumulator.bits
('int8', 'double', 32)
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import platform
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx.defs

from .config import parse, unparse
from .dtypes import QType, qtype
from .atomic import atomic_write_text
from .errors import TargetError

SCHEMA_VERSION = 1

Scheme = Literal["asymmetric", "symmetric", "strict_symmetric", "unsigned_symmetric"]
Granularity = Literal["per_tensor", "per_channel", "per_block"]
IntDType = Literal["int4", "uint4", "int8", "uint8", "int16", "uint16", "int32", "int64"]
RoundingMode = Literal["half_to_even", "half_away_from_zero", "half_up"]


def _fail(error, path: str, message: str):
    raise error(f"{path}: {message}")


# ------------------------------------------------------------------------------------------------
# arithmetic
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorQuant:
    """How one class of tensors (activations or weights) is stored and quantized.

    ``per_channel`` means one encoding per output channel of each op (its axis follows the op:
    Conv 0, ConvTranspose 1, MatMul last, Gemm by transB); ``per_block`` additionally splits the
    reduction axis into blocks of ``block_size`` inputs.
    """

    dtype: IntDType
    scheme: Scheme
    granularity: Granularity = "per_tensor"
    block_size: int | None = None  # per_block only: blocks of this many inputs along the reduction axis
    # Quantize to one bit less than the dtype holds (ONNX Runtime's ``reduce_range``): symmetric int8
    # weights in [-64, 63]. What x86 without VNNI needs so that u8 x s8 pair sums never saturate int16.
    reduce_range: bool = False

    @property
    def qtype(self) -> QType:
        return qtype(self.dtype)

    def _check(self, path, error):
        t = self.qtype
        if self.scheme == "strict_symmetric" and not t.signed:
            _fail(error, f"{path}.scheme", f"'strict_symmetric' needs a signed dtype, found dtype {self.dtype!r}")
        if self.scheme == "unsigned_symmetric" and not t.signed:
            _fail(error, f"{path}.scheme", f"'unsigned_symmetric' is stored as a signed dtype that may switch to "
                  f"unsigned for non-negative tensors; found unsigned dtype {self.dtype!r} (use 'symmetric')")
        if self.granularity == "per_block":
            if self.block_size is None or self.block_size < 1:
                _fail(error, f"{path}.block_size", f"per_block needs a positive block_size, found {self.block_size!r}")
        elif self.block_size is not None:
            _fail(error, f"{path}.block_size", f"only per_block takes a block_size, found granularity {self.granularity!r}")
        if t.bits > 16:
            _fail(error, f"{path}.dtype", f"activations and weights are 4, 8 or 16 bit, found {self.dtype!r}")
        if self.reduce_range and not (t.signed and self.scheme in ("symmetric", "strict_symmetric")):
            _fail(error, f"{path}.reduce_range", f"reduce_range needs a signed symmetric dtype, found "
                  f"{self.dtype!r} {self.scheme!r}")


@dataclass(frozen=True)
class BiasQuant:
    """Bias storage: integer at scale s_x * s_w (per output channel when weights are)."""

    dtype: Literal["int32", "int64"] = "int32"

    @property
    def qtype(self) -> QType:
        return qtype(self.dtype)


@dataclass(frozen=True)
class Accumulator:
    """The MAC accumulator of Conv/Gemm/MatMul.

    ``overflow`` applies to the exact final sum: ``saturate`` clamps, ``wrap`` wraps two's
    complement, ``error`` stops with the layer and element named.
    ``pair_saturation_bits`` (0 = off): adjacent pairs of raw products along the reduction axis are
    summed and saturated to this signed width before accumulation (x86 ``vpmaddubsw`` in ONNX
    Runtime's u8 x s8 kernels on CPUs without VNNI: 16). ``pair_order`` is the im2col order of a
    convolution's reduction index: ``hwc`` (kernel row, column, channel; channel fastest) or ``chw``.
    """

    bits: Literal[16, 32, 48, 64] = 32
    overflow: Literal["saturate", "wrap", "error"] = "saturate"
    pair_saturation_bits: Literal[0, 16] = 0
    pair_order: Literal["hwc", "chw"] = "hwc"
    pair_saturation_depthwise: bool = False  # depthwise convs (1 in/1 out channel per group) saturate pairs too


@dataclass(frozen=True)
class Requant:
    """How an accumulator at scale s_x*s_w becomes an output at scale s_y.

    ``fixed_point``: the real multiplier s_x*s_w/s_y (formed in ``ratio_precision``) becomes an
    int32 multiplier and shift (TFLite QuantizeMultiplier); ``rounding`` is ``double``
    (SaturatingRoundingDoublingHighMul then RoundingDivideByPOT, TFLite's default build),
    ``single`` (one rounding shift in 64 bits) or ``int64`` (TFLite's int64-accumulator path,
    15-bit multiplier). ``float32``: float32(acc) * float32 ratio, rounded with ``rounding``
    (``half_to_even`` for ONNX Runtime's CPU kernels).
    """

    form: Literal["fixed_point", "float32"]
    rounding: Literal["double", "single", "int64", "half_to_even", "half_away_from_zero"]
    ratio_precision: Literal["float64", "float32"] = "float64"

    def _check(self, path, error):
        allowed = {"fixed_point": ("double", "single", "int64"), "float32": ("half_to_even", "half_away_from_zero")}
        if self.rounding not in allowed[self.form]:
            _fail(error, f"{path}.rounding", f"expected one of {list(allowed[self.form])} for form "
                  f"{self.form!r}, found {self.rounding!r}")


@dataclass(frozen=True)
class Elementwise:
    """How Add/Mul rescale their inputs.

    ``fixed_point``: TFLite's rule: both inputs shifted left by ``left_shift`` bits and rescaled to a
    common scale 2*max(s1, s2) with fixed-point multipliers, summed, and requantized to the output.
    ``float32``: ONNX Runtime's QLinearAdd/QLinearMul: the dequantized-and-rescaled sum in float32,
    rounded half to even.
    """

    rule: Literal["fixed_point", "float32"]
    left_shift: int | None = None
    rounding: Literal["double", "single"] | None = None  # fixed_point: MBQM build of the rescales

    def _check(self, path, error):
        if self.rule == "fixed_point" and self.rounding is None:
            _fail(error, f"{path}.rounding", "rule 'fixed_point' needs rounding 'double' or 'single'")
        if self.rule == "float32" and self.rounding is not None:
            _fail(error, f"{path}.rounding", "rule 'float32' takes no rounding (it rounds half to even)")
        if self.rule == "fixed_point" and (self.left_shift is None or not 0 <= self.left_shift <= 30):
            _fail(error, f"{path}.left_shift", f"rule 'fixed_point' needs left_shift in [0, 30], found {self.left_shift!r}")
        if self.rule == "float32" and self.left_shift is not None:
            _fail(error, f"{path}.left_shift", "rule 'float32' takes no left_shift")


@dataclass(frozen=True)
class RoundingRules:
    """Rounding of float values converted to integers outside the MAC path."""

    quantize: RoundingMode = "half_to_even"  # QuantizeLinear of float model inputs
    average_pool: RoundingMode = "half_away_from_zero"  # integer division in (Global)AveragePool
    lut: RoundingMode = "half_away_from_zero"  # building lookup tables for non-linear ops


@dataclass(frozen=True)
class Cost:
    """Optional cost model for latency estimates."""

    macs_per_cycle: int
    clock_mhz: float
    memory_bandwidth_gbps: float | None = None

    def _check(self, path, error):
        if self.macs_per_cycle < 1:
            _fail(error, f"{path}.macs_per_cycle", f"expected a positive integer, found {self.macs_per_cycle}")
        for name in ("clock_mhz", "memory_bandwidth_gbps"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                _fail(error, f"{path}.{name}", f"expected a finite number > 0, found {v!r}")


@dataclass(frozen=True)
class OpArithmetic:
    """Per-op-type arithmetic overrides (e.g. per-tensor weights for MatMul on a per-channel target)."""

    weights: TensorQuant | None = None


RECURRENT_OPS = ("LSTM", "GRU")


@dataclass(frozen=True)
class Recurrent:
    """How the target runs LSTM and GRU layers in integers (``runtime/RECURRENT_ARITHMETIC.md``).

    The model is TFLite's fully integer LSTM: inputs and hidden state in the activation dtype
    (``8x8_16``: 8-bit; ``16x8_16``: 16-bit, zero point 0, int64 bias and accumulators), weights
    in ``weights`` (symmetric; ``per_tensor`` = one scale per gate, ``per_channel`` = one per gate
    row), gate pre-activations int16 Q``gate_integer_bits``.(15 - bits), gate outputs int16 Q0.15,
    the cell state int16 at a power-of-two scale ``2^p`` with ``cell_scale_log2_min <= p <=
    cell_scale_log2_max``, sigmoid and tanh in gemmlowp's int16 fixed point, the gate FCs
    requantized with ``rounding`` (the MBQM build). ``ops`` empty: the target cannot run recurrent
    layers in integers, and ``unsupported_reason`` says why (the runtime and simulator refuse with it).
    """

    ops: tuple[str, ...] = ()
    unsupported_reason: str = "the target does not describe integer recurrent layers"
    variant: Literal["8x8_16", "16x8_16"] = "8x8_16"
    weights: TensorQuant | None = None  # default: the target's weights
    gate_dtype: Literal["int16"] = "int16"
    gate_integer_bits: int = 3
    cell_dtype: Literal["int16"] = "int16"
    cell_scale_log2_min: int = -15
    cell_scale_log2_max: int = -9
    nonlinearity: Literal["gemmlowp_fixed_point"] = "gemmlowp_fixed_point"
    rounding: Literal["double", "single", "int64"] = "double"
    gru_linear_before_reset: bool = True  # GRU's candidate gate: r * (W_hn h + b_hn), as PyTorch and ONNX lbr=1

    def _check(self, path, error):
        for i, op in enumerate(self.ops):
            if op not in RECURRENT_OPS:
                _fail(error, f"{path}.ops[{i}]", f"expected one of {list(RECURRENT_OPS)}, found {op!r}")
        if self.gate_integer_bits != 3:
            _fail(error, f"{path}.gate_integer_bits", "the integer LSTM's pre-activations are Q3.12 (TFLite without "
                  f"layer norm); found {self.gate_integer_bits}")
        lo, hi = self.cell_scale_log2_min, self.cell_scale_log2_max
        if not -15 <= lo <= hi <= -9:
            _fail(error, f"{path}.cell_scale_log2_min", f"expected -15 <= min <= max <= -9 (tanh of the int16 cell "
                  f"needs 15 + p in 0..6), found [{lo}, {hi}]")
        w = self.weights
        if w is not None:
            if not w.qtype.signed or w.scheme not in ("symmetric", "strict_symmetric") or w.qtype.bits > 8:
                _fail(error, f"{path}.weights", f"recurrent weights are signed symmetric 4- or 8-bit, found "
                      f"{w.dtype!r} {w.scheme!r}")
            if w.granularity == "per_block":
                _fail(error, f"{path}.weights.granularity", "per_tensor (per gate) or per_channel (per gate row)")
        if self.variant == "16x8_16" and self.rounding != "int64":
            _fail(error, f"{path}.rounding", "the 16x8_16 variant accumulates in int64 and needs rounding 'int64'")
        if self.variant == "8x8_16" and self.rounding == "int64":
            _fail(error, f"{path}.rounding", "the 8x8_16 variant rounds with 'double' or 'single'")


LUT_OPS = ("Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "LeakyRelu", "Elu", "Gelu", "Softplus")


@dataclass(frozen=True)
class Arithmetic:
    activations: TensorQuant
    weights: TensorQuant
    bias: BiasQuant
    accumulator: Accumulator
    requant: Requant
    elementwise: Elementwise
    rounding: RoundingRules = RoundingRules()
    integer_ops: tuple[str, ...] = ()
    lut_ops: tuple[str, ...] = ()  # non-linear ops the target computes with a lookup table
    op_type: dict[str, OpArithmetic] = field(default_factory=dict)
    recurrent: Recurrent = Recurrent()

    def _check(self, path, error):
        a, w = self.activations, self.weights
        if a.granularity != "per_tensor":
            _fail(error, f"{path}.activations.granularity",
                  f"activations are quantized per tensor on every supported target, found {a.granularity!r}")
        if a.qtype.bits == 4:
            _fail(error, f"{path}.activations.dtype", "4-bit activations are not supported (weights may be 4-bit)")
        product_bits = a.qtype.bits + w.qtype.bits
        if self.accumulator.bits < product_bits + 1:
            _fail(error, f"{path}.accumulator.bits", f"a {a.dtype} x {w.dtype} product needs at least "
                  f"{product_bits + 1} accumulator bits, found {self.accumulator.bits}")
        if self.accumulator.pair_saturation_bits and product_bits != 16:
            _fail(error, f"{path}.accumulator.pair_saturation_bits",
                  f"pairwise saturation models 8-bit x 8-bit products, found {a.dtype} x {w.dtype}")
        if self.requant.rounding == "int64" and self.accumulator.bits != 64:
            _fail(error, f"{path}.requant.rounding", "'int64' requantization needs a 64-bit accumulator, "
                  f"found accumulator.bits = {self.accumulator.bits}")
        if self.bias.qtype.bits > self.accumulator.bits:
            _fail(error, f"{path}.bias.dtype", f"bias {self.bias.dtype} is wider than the "
                  f"{self.accumulator.bits}-bit accumulator")
        for i, op in enumerate(self.integer_ops):
            if not onnx.defs.has(op):
                _fail(error, f"{path}.integer_ops[{i}]", f"expected an ONNX operator type, found {op!r}")
        for i, op in enumerate(self.lut_ops):
            if op not in LUT_OPS:
                _fail(error, f"{path}.lut_ops[{i}]", f"expected one of {list(LUT_OPS)}, found {op!r}")
            if op not in self.integer_ops:
                _fail(error, f"{path}.lut_ops[{i}]", f"{op!r} is computed by lookup table but is not in integer_ops")
        for op, over in self.op_type.items():
            if not onnx.defs.has(op):
                _fail(error, f"{path}.op_type.{op}", "expected an ONNX operator type")
            if over.weights is not None and self.accumulator.bits < a.qtype.bits + over.weights.qtype.bits + 1:
                _fail(error, f"{path}.op_type.{op}.weights.dtype", "too wide for the accumulator")

    def recurrent_problem(self, op_type: str) -> str | None:
        """Why this target cannot run an ``op_type`` (LSTM/GRU) layer in integers, or None.

        Checked at use rather than at load: a quantsim config may change the activations (e.g. to
        asymmetric 16-bit) without touching the recurrent section."""
        r, a = self.recurrent, self.activations
        if op_type not in r.ops:
            return r.unsupported_reason
        want = "16x8_16" if a.qtype.bits == 16 else "8x8_16"
        if r.variant != want:
            return f"{a.dtype} activations need the {want!r} recurrent variant, the target describes {r.variant!r}"
        if r.variant == "16x8_16" and a.scheme not in ("symmetric", "strict_symmetric"):
            return f"the 16x8_16 recurrent variant needs symmetric 16-bit activations (zero point 0), found {a.scheme!r}"
        return None

    def recurrent_weights(self) -> TensorQuant:
        """The weight quantization of LSTM/GRU weights (``recurrent.weights``, else the target's)."""
        return self.recurrent.weights if self.recurrent.weights is not None else self.weights

    def weights_for(self, op_type: str) -> TensorQuant:
        """The weight quantization of one op type (its override, else the default)."""
        over = self.op_type.get(op_type)
        return over.weights if over is not None and over.weights is not None else self.weights


# ------------------------------------------------------------------------------------------------
# placement (AIMET quantsim-config concepts, real booleans)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpPlacement:
    is_input_quantized: bool | None = None
    is_output_quantized: bool | None = None


@dataclass(frozen=True)
class ParamPlacement:
    is_quantized: bool | None = None


@dataclass(frozen=True)
class OpTypePlacement:
    is_input_quantized: bool | None = None
    is_output_quantized: bool | None = None
    params: dict[str, ParamPlacement] = field(default_factory=dict)


@dataclass(frozen=True)
class Defaults:
    ops: OpPlacement = OpPlacement(is_input_quantized=False, is_output_quantized=True)
    params: ParamPlacement = ParamPlacement(is_quantized=True)


@dataclass(frozen=True)
class Supergroup:
    op_list: tuple[str, ...]

    def _check(self, path, error):
        if len(self.op_list) < 2:
            _fail(error, f"{path}.op_list", f"a supergroup fuses at least two ops, found {list(self.op_list)}")
        for i, op in enumerate(self.op_list):
            if not onnx.defs.has(op):
                _fail(error, f"{path}.op_list[{i}]", f"expected an ONNX operator type, found {op!r}")


@dataclass(frozen=True)
class ModelInput:
    is_input_quantized: bool = True


@dataclass(frozen=True)
class ModelOutput:
    is_output_quantized: bool = True


@dataclass(frozen=True)
class Placement:
    defaults: Defaults = Defaults()
    params: dict[str, ParamPlacement] = field(default_factory=dict)
    op_type: dict[str, OpTypePlacement] = field(default_factory=dict)
    supergroups: tuple[Supergroup, ...] = ()
    model_input: ModelInput = ModelInput()
    model_output: ModelOutput = ModelOutput()

    def _check(self, path, error):
        for name in self.params:
            if name not in ("weight", "bias"):
                _fail(error, f"{path}.params.{name}", "expected a parameter kind 'weight' or 'bias'")
        for op, p in self.op_type.items():
            if not onnx.defs.has(op):
                _fail(error, f"{path}.op_type.{op}", f"expected an ONNX operator type, found {op!r}")
            for name in p.params:
                if name not in ("weight", "bias"):
                    _fail(error, f"{path}.op_type.{op}.params.{name}", "expected 'weight' or 'bias'")

    def output_quantized(self, op_type: str) -> bool:
        o = self.op_type.get(op_type)
        if o is not None and o.is_output_quantized is not None:
            return o.is_output_quantized
        return bool(self.defaults.ops.is_output_quantized)

    def input_quantized(self, op_type: str) -> bool:
        o = self.op_type.get(op_type)
        if o is not None and o.is_input_quantized is not None:
            return o.is_input_quantized
        return bool(self.defaults.ops.is_input_quantized)

    def param_quantized(self, op_type: str, kind: str) -> bool:
        o = self.op_type.get(op_type)
        if o is not None and kind in o.params and o.params[kind].is_quantized is not None:
            return o.params[kind].is_quantized
        if kind in self.params and self.params[kind].is_quantized is not None:
            return self.params[kind].is_quantized
        return bool(self.defaults.params.is_quantized)


# ------------------------------------------------------------------------------------------------
# the target file
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    schema_version: int
    name: str
    description: str
    arithmetic: Arithmetic
    placement: Placement = Placement()
    cost: Cost | None = None
    source: str | None = field(default=None, compare=False)  # where it was loaded from (not serialized)
    resolved_from: str | None = field(default=None, compare=False)  # alias name, when resolved

    def _check(self, path, error):
        if self.schema_version != SCHEMA_VERSION:
            _fail(error, _key(path, "schema_version"), f"expected {SCHEMA_VERSION}, found {self.schema_version}")

    def to_dict(self) -> dict[str, Any]:
        d = unparse(self)
        d.pop("source", None)
        d.pop("resolved_from", None)
        return d

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())


@dataclass(frozen=True)
class AliasRule:
    target: str
    cpu_flags_any: tuple[str, ...] = ()  # matches if the CPU reports any of these flags
    machines: tuple[str, ...] = ()  # matches if platform.machine() is one of these


@dataclass(frozen=True)
class Alias:
    rules: tuple[AliasRule, ...]
    default: str


@dataclass(frozen=True)
class AliasFile:
    schema_version: int
    name: str
    description: str
    alias: Alias

    def _check(self, path, error):
        if self.schema_version != SCHEMA_VERSION:
            _fail(error, _key(path, "schema_version"), f"expected {SCHEMA_VERSION}, found {self.schema_version}")


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def builtin_dir() -> Path:
    """The folder of built-in target files (``targets/`` in the checkout, installed as ``hwsim_targets``)."""
    spec = importlib.util.find_spec("hwsim_targets")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc)
            if p.is_dir() and any(p.glob("*.toml")):
                return p
    here = Path(__file__).resolve().parent.parent / "targets"
    if here.is_dir():
        return here
    raise TargetError("the built-in targets folder was not found: is hwsim installed correctly?")


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.toml"))


MAX_TARGET_FILE_BYTES = 1 << 20  # a target is a page of text; anything this large is not one


def _read_file(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_TARGET_FILE_BYTES:  # refused before reading
            raise TargetError(f"{path}: {size} bytes is too large for a target file (at most "
                              f"{MAX_TARGET_FILE_BYTES} bytes)")
        raw = path.read_bytes()
    except OSError as e:
        raise TargetError(f"{path}: cannot read target file: {e.strerror}") from None
    kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
    try:
        if kind == "JSON":
            data = json.loads(raw.decode("utf-8"))
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise TargetError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise TargetError(f"{path}: not valid {kind}: {e}") from None
    except RecursionError:
        raise TargetError(f"{path}: not a target file: {kind} nested too deeply") from None
    if not isinstance(data, dict):
        raise TargetError(f"{path}: expected a table at the top level, found {type(data).__name__}")
    return data


class _FileError(TargetError):
    """Prefixes messages with the file name."""


def parse_target(data: dict[str, Any], source: str = "<data>") -> Target | AliasFile:
    """Validate plain data as a target (or an alias file); errors name ``source`` and the key path."""

    def error(msg: str) -> TargetError:
        return TargetError(f"{source}: {msg}")

    if "alias" in data:
        return parse(AliasFile, data, "", error)
    obj = parse(Target, data, "", error)
    return dataclasses.replace(obj, source=source)


def cpu_flags() -> set[str]:
    """The CPU feature flags the OS reports (x86 'flags', ARM 'Features'); empty where unknown."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags.update(value.split())
                    break
    except OSError:
        pass
    return flags


def resolve_alias(alias: AliasFile, flags: set[str] | None = None, machine: str | None = None) -> tuple[str, str]:
    """(target name, reason) chosen by the alias rules for this CPU."""
    flags = cpu_flags() if flags is None else flags
    machine = platform.machine() if machine is None else machine
    for rule in alias.alias.rules:
        hit = [f for f in rule.cpu_flags_any if f in flags]
        if rule.cpu_flags_any and hit:
            return rule.target, f"CPU flag {hit[0]!r}"
        if rule.machines and machine in rule.machines and not rule.cpu_flags_any:
            return rule.target, f"machine {machine!r} without the flags of earlier rules"
    return alias.alias.default, "default"


def load_target(spec: str | os.PathLike | Target, *, flags: set[str] | None = None) -> Target:
    """A target by built-in name, by file path, or passed through when already loaded.

    Alias files are resolved for this CPU (``resolved_from`` records the alias name); a chain of
    aliases that comes back to one of its files is refused.
    """
    return _load_target(spec, flags, ())


def _load_target(spec, flags, chain: tuple[Path, ...]) -> Target:
    if isinstance(spec, Target):
        return spec
    text = os.fspath(spec)
    path = Path(text)
    try:
        is_path = path.suffix.lower() in (".toml", ".json") or os.sep in text or path.exists()
        if is_path and not path.is_file():
            raise TargetError(f"{path}: target file not found")
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte
        raise TargetError(f"{text[:200]!r}: not a target name or a readable target file ({e})") from None
    if not is_path:
        path = builtin_dir() / f"{text}.toml"
        if not path.is_file():
            raise TargetError(f"unknown target {text!r}: expected a built-in name ({', '.join(builtin_names())}) "
                              "or the path of a .toml/.json target file")
    obj = parse_target(_read_file(path), str(path))
    if isinstance(obj, AliasFile):
        name, _ = resolve_alias(obj, flags)
        if name == obj.name:
            raise TargetError(f"{path}: alias {obj.name!r} resolves to itself")
        here = path.resolve()
        if here in chain:
            raise TargetError(f"{path}: alias {obj.name!r} is part of a cycle of aliases: "
                              + " -> ".join(str(p) for p in chain + (here,)))
        try:
            target = _load_target(name if os.sep not in name else Path(name), flags, chain + (here,))
        except TargetError as e:
            msg = str(e)
            raise TargetError(msg if msg.startswith(str(path)) else
                              f"{path}: alias {obj.name!r} resolves to {name!r}: {msg}") from None
        return dataclasses.replace(target, resolved_from=obj.name)
    return obj


def load_alias(name: str) -> AliasFile | None:
    """The alias file of a built-in name, or None if it is a plain target."""
    path = builtin_dir() / f"{name}.toml"
    obj = parse_target(_read_file(path), str(path))
    return obj if isinstance(obj, AliasFile) else None


def save_target(target: Target, path: str | os.PathLike) -> Path:
    """Write a target file atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    text = json.dumps(target.to_dict(), indent=2) + "\n" if path.suffix.lower() == ".json" else target.to_toml()
    atomic_write_text(path, text)
    return path
