"""QuantizeLinear, DequantizeLinear and requantization between encodings."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..encoding import Encoding
from ..kernels.quantize import quantize_per_tensor, requantize_tensor
from ..plan import Planner, Val, planner_op
from ..program import LayerStats, Step, TensorSpec
from ..quantize import dequantize, quantize
from .common import saturation_bounds


@dataclass
class QuantizeStep(Step):
    encoding: Encoding = None
    rounding: str = "half_to_even"

    def compute(self, x, stats: LayerStats):
        enc = self.encoding
        if enc.is_per_tensor and x.dtype == np.float32:  # one parallel pass into the storage type
            q, bad = quantize_per_tensor(x, enc.scale, int(enc.zero_point), enc.qmin, enc.qmax, self.rounding,
                                         enc.dtype.numpy_dtype)
        else:
            bad = int(np.count_nonzero(~np.isfinite(x)))
            q = None if bad else quantize(x, enc, self.rounding)
        if bad:
            from ..errors import DataError

            raise DataError(f"input {self.inputs[0]!r} has {bad} NaN/Inf values")
        return (q,)


@dataclass
class DequantizeStep(Step):
    encoding: Encoding = None

    def compute(self, q, stats: LayerStats):
        return (dequantize(q, self.encoding),)


@dataclass
class RequantizeStep(Step):
    """Integer tensor at encoding A -> encoding B (per-tensor), with an optional clamp.

    fixed_point targets: MBQM(x - zp_a, QM(s_a / s_b)) + zp_b (TFLite Requantize);
    float32 targets: float32 dequantize then quantize (ONNX Runtime runs DQ -> Q in float32).
    One pass (:func:`runtime.kernels.quantize.requantize_tensor`); saturation counts the values
    beyond B's range that the clamp [lo, hi] of a fused activation does not explain
    (:func:`runtime.ops.common.saturation_bounds`).
    """

    src: Encoding = None
    dst: Encoding = None
    form: str = "fixed_point"
    multiplier: int = 0
    shift: int = 0
    rounding: str = "double"
    quantize_rounding: str = "half_to_even"
    lo: int = 0
    hi: int = 0
    count: tuple[int, int] | None = None  # saturation-count bounds (None: runtime.ops.common.saturation_bounds)

    def compute(self, x, stats: LayerStats):
        x = np.asarray(x)
        out = np.empty(x.shape, self.dst.dtype.numpy_dtype)
        self.into(x, out.reshape(1, -1), 0, stats)
        return (out,)

    def into(self, x: np.ndarray, out2: np.ndarray, col: int, stats: LayerStats) -> None:
        """Requantize ``x`` into the columns ``col:`` of the 2-D C-contiguous ``out2`` (x viewed as
        ``out2.shape[0]`` rows), adding the saturation count to ``stats``."""
        c_lo, c_hi = self.count or saturation_bounds(self.dst.qmin, self.dst.qmax, self.lo, self.hi)
        fixed = self.form == "fixed_point"
        stats.saturation += requantize_tensor(
            x, self.form, int(self.src.zero_point), np.float32(self.src.scale), self.multiplier,
            np.float32(self.dst.scale), self.shift, int(self.dst.zero_point),
            self.rounding if fixed else self.quantize_rounding, self.lo, self.hi, c_lo, c_hi, out2, col)


def requantize_step(p: Planner, name: str, src_name: str, src: Encoding, dst: Encoding, out: str,
                    lo: int | None = None, hi: int | None = None, count: tuple[int, int] | None = None) -> RequantizeStep:
    from ..fixedpoint import quantize_multiplier

    t = p.target.arithmetic
    if not (src.is_per_tensor and dst.is_per_tensor):
        raise p.refuse(_fake(name), "requantization between per-channel encodings is not supported")
    real = float(np.float64(src.scale) / np.float64(dst.scale))
    m, e = quantize_multiplier(real) if t.requant.form == "fixed_point" else (0, 0)
    rounding = t.requant.rounding if t.requant.form == "fixed_point" else "double"
    if rounding == "int64":
        rounding = "double"
    return RequantizeStep(name, "Requantize", (src_name,), (out,), src=src, dst=dst, form=t.requant.form,
                          multiplier=int(m), shift=int(e), rounding=rounding,
                          quantize_rounding=t.rounding.quantize,
                          lo=int(dst.qmin) if lo is None else lo, hi=int(dst.qmax) if hi is None else hi, count=count)


def _fake(name):
    from ..graph import Node

    return Node("Requantize", name, (), (), {})


def _q_params(p: Planner, node, ndim=None) -> Encoding:
    scale = p.const(node, 1, "scale")
    zp = p.const(node, 2, "zero point")
    return p.encoding_from(node, scale, zp, node.attr("output_dtype"), node.attr("axis"),
                           node.attr("block_size", 0), ndim)


@planner_op("QuantizeLinear")
def plan_quantize(p: Planner, node):
    x = p.val(node, node.inputs[0])
    out = node.outputs[0]
    if x.kind == "const":
        enc = _q_params(p, node, np.ndim(x.const))
        q = quantize(np.asarray(x.const, np.float32), enc, "half_to_even")  # ONNX QuantizeLinear semantics
        p.set(out, Val("const", out, const=q.astype(enc.dtype.numpy_dtype)))
        p.vals[out].enc = enc
        return
    enc = _q_params(p, node)
    if not enc.is_per_tensor and x.kind != "float":
        raise p.refuse(node, "activations must be quantized per tensor")
    if x.kind == "float":
        p.emit(QuantizeStep(node.name, "QuantizeLinear", (x.name,), (out,), encoding=enc,
                            rounding=p.target.arithmetic.rounding.quantize))
        p.set(out, Val("int", out, enc))
    elif x.kind == "dq":
        if x.enc == enc:
            p.set(out, Val("int", x.name, enc))
        else:
            p.emit(requantize_step(p, node.name, x.name, x.enc, enc, out))
            p.set(out, Val("int", out, enc))
    else:
        raise p.refuse(node, f"its input {node.inputs[0]!r} is a {x.kind} value; QuantizeLinear quantizes float "
                       "model inputs, constants, or dequantized integer tensors")


@planner_op("DequantizeLinear")
def plan_dequantize(p: Planner, node):
    x = p.val(node, node.inputs[0])
    out = node.outputs[0]
    if x.kind == "const":
        if x.const.dtype.name in ("int4", "uint4"):  # 4-bit values live in 8-bit arrays inside the runtime
            x = Val("const", x.name, const=x.const.astype(np.int8 if x.const.dtype.name == "int4" else np.uint8))
        if not np.issubdtype(x.const.dtype, np.integer):
            raise p.bad(node, f"input {node.inputs[0]!r} must be an integer tensor, found {x.const.dtype}")
        enc = _q_params(p, node, x.const.ndim)
        _check_range(p, node, x.const, enc)
        p.set(out, Val("qconst", out, enc, const=x.const))
    elif x.kind == "int":
        enc = _q_params(p, node)
        if x.enc is not None and x.enc != enc:
            raise p.refuse(node, f"dequantizes {node.inputs[0]!r} with an encoding different from the one it "
                           "was quantized with")
        p.set(out, Val("dq", x.name, enc))
    else:
        raise p.refuse(node, f"its input {node.inputs[0]!r} is a {x.kind} value, not an integer tensor")


def _check_range(p, node, q, enc: Encoding):
    lo, hi = enc.dtype.qmin, enc.dtype.qmax
    if q.size and (q.min() < lo or q.max() > hi):
        raise p.bad(node, f"integer values of {node.inputs[0]!r} lie outside {enc.dtype} [{lo}, {hi}]")


def finish_outputs(p: Planner) -> list[TensorSpec]:
    """Dequantize graph outputs that are views; integer outputs pass through."""
    specs = []
    for o in p.graph.outputs:
        v = p.vals.get(o.name)
        if v is None:
            raise p.bad(_fake(o.name), f"graph output {o.name!r} was not computed")
        if v.kind == "dq":
            p.emit(DequantizeStep(f"dequantize:{o.name}", "DequantizeLinear", (v.name,), (o.name,), encoding=v.enc))
            specs.append(TensorSpec(o.name, np.dtype(np.float32), v.enc))
        elif v.kind == "int":
            if v.name != o.name:
                p.emit(_Alias(f"output:{o.name}", "Identity", (v.name,), (o.name,)))
            specs.append(TensorSpec(o.name, o.numpy_dtype, v.enc))
        elif v.kind == "float":
            specs.append(TensorSpec(o.name, o.numpy_dtype))
        else:
            raise p.refuse(_fake(o.name), f"graph output {o.name!r} is a constant ({v.kind}); nothing to run")
    return specs


@dataclass
class _Alias(Step):
    def compute(self, x, stats: LayerStats):
        return (x,)
