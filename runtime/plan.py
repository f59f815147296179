"""The plan step: an ONNX graph (QDQ or QOperator form) plus a target become an integer program.

How values are tracked while planning (one entry per ONNX tensor name):

- ``float``: a float graph input; only a QuantizeLinear may read it.
- ``int``: an integer tensor of the program (optionally with its encoding).
- ``dq``: the output of a DequantizeLinear: float in ONNX, but the program keeps the integer tensor
  and its encoding (a *view*); float ops reading it become integer ops.
- ``const``: an initializer or constant (float or integer); ``qconst`` is a DequantizeLinear of an
  integer constant (weights, bias) with its encoding.

A float op (Conv, Gemm, MatMul, Add, ...) whose inputs are views is fused with the Relu/Clip and
QuantizeLinear that follow it into one integer op; data-movement ops run on the integer tensors as
they are; anything else is refused with the op type, node name and reason. Nothing runs in float.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from .encoding import Encoding, PerAxis, PerBlock, PerTensor
from .dtypes import qtype_for
from .errors import HwsimError, ModelError, UnsupportedError
from .graph import Graph, Node, parse_graph
from .program import Program, Step, TensorSpec
from .target import Target, load_target

_ONNX_INT = {
    onnx.TensorProto.UINT8: (8, False), onnx.TensorProto.INT8: (8, True),
    onnx.TensorProto.UINT16: (16, False), onnx.TensorProto.INT16: (16, True),
    onnx.TensorProto.INT32: (32, True),
}
if hasattr(onnx.TensorProto, "INT4"):
    _ONNX_INT[onnx.TensorProto.INT4] = (4, True)
    _ONNX_INT[onnx.TensorProto.UINT4] = (4, False)


@dataclass
class Val:
    kind: str  # "float" | "int" | "dq" | "const" | "qconst"
    name: str  # program tensor holding the data (for int/dq)
    enc: Encoding | None = None
    const: np.ndarray | None = None


PlanFn = Callable[["Planner", Node], None]
_OPS: dict[tuple[str, str], PlanFn] = {}


def planner_op(*op_types: str, domain: str = ""):
    """Register the plan function of one or more op types (explicit registry, keyed by op name)."""

    def deco(fn: PlanFn) -> PlanFn:
        for op in op_types:
            _OPS[(domain, op)] = fn
        return fn

    return deco


def registered_ops() -> list[str]:
    return sorted(f"{d + '.' if d else ''}{o}" for d, o in _OPS)


class Planner:
    def __init__(self, graph: Graph, target: Target):
        self.graph = graph
        self.target = target
        self.vals: dict[str, Val] = {}
        self.steps: list[Step] = []
        self.consumers = graph.consumers()
        self.fused: set[str] = set()  # node names absorbed by an earlier fusion
        self.encodings: dict[str, Encoding] = {}

    # -- errors ----------------------------------------------------------------------------------
    def refuse(self, node: Node, why: str) -> UnsupportedError:
        return UnsupportedError(f"{self.graph.source}: {node.op_type} node {node.name!r}: {why}")

    def bad(self, node: Node, why: str) -> ModelError:
        return ModelError(f"{self.graph.source}: {node.op_type} node {node.name!r}: {why}")

    # -- values ----------------------------------------------------------------------------------
    def val(self, node: Node, name: str) -> Val:
        v = self.vals.get(name)
        if v is None:
            raise self.bad(node, f"input {name!r} is not available (internal planning order error)")
        return v

    def const(self, node: Node, i: int, what: str, default=None) -> np.ndarray | None:
        name = node.input(i)
        if name is None:
            if default is not None:
                return np.asarray(default)
            return None
        v = self.val(node, name)
        if v.kind != "const":
            raise self.refuse(node, f"{what} ({name!r}) must be a constant initializer; the integer runtime "
                              "computes encodings and parameters once, at plan time")
        return v.const

    def int_input(self, node: Node, i: int, what: str = "input") -> Val:
        """An integer input with its encoding: a DequantizeLinear view, or a quantized constant."""
        name = node.input(i)
        if name is None:
            raise self.bad(node, f"missing {what}")
        v = self.val(node, name)
        if v.kind in ("dq", "qconst"):
            return v
        if v.kind == "float":
            raise self.refuse(node, f"{what} {name!r} is a float tensor without a DequantizeLinear in front: "
                              "the target runs this op only on quantized tensors")
        if v.kind == "const":
            raise self.refuse(node, f"{what} {name!r} is a float constant; quantize it (QuantizeLinear/"
                              "DequantizeLinear) so that its integer values are part of the model")
        raise self.refuse(node, f"{what} {name!r} is an integer tensor without an encoding")

    def raw_int(self, node: Node, i: int, what: str = "input") -> Val:
        """An integer tensor or integer constant as such (QOperator form)."""
        name = node.input(i)
        if name is None:
            raise self.bad(node, f"missing {what}")
        v = self.val(node, name)
        if v.kind == "int":
            return v
        if v.kind == "const" and np.issubdtype(v.const.dtype, np.integer):
            return v
        raise self.refuse(node, f"{what} {name!r} must be an integer tensor, found a {v.kind} value")

    def encoding_from(self, node: Node, scale: np.ndarray, zp: np.ndarray | None, zp_elem: int | None,
                      axis: int | None, block_size: int = 0, ndim: int | None = None) -> Encoding:
        """An Encoding from ONNX QuantizeLinear/DequantizeLinear parameters."""
        scale = np.asarray(scale)
        if scale.dtype != np.float32:
            if not np.issubdtype(scale.dtype, np.floating):
                raise self.bad(node, f"scale must be float, found {scale.dtype}")
            scale = scale.astype(np.float32)
        if zp is None:
            bits, signed = _ONNX_INT.get(zp_elem, (8, False))
            zp_arr = np.zeros(scale.shape, np.int64)
        else:
            zp = np.asarray(zp)
            kind = zp.dtype
            bits, signed = {"uint8": (8, False), "int8": (8, True), "uint16": (16, False), "int16": (16, True),
                            "int32": (32, True), "int4": (4, True), "uint4": (4, False)}.get(kind.name, (None, None))
            if zp_elem in _ONNX_INT:
                bits, signed = _ONNX_INT[zp_elem]
            if bits is None:
                raise self.refuse(node, f"zero point dtype {kind} is not an integer type the runtime supports")
            if zp.shape != scale.shape:
                if zp.size != scale.size:
                    raise self.bad(node, f"scale shape {scale.shape} and zero point shape {zp.shape} differ")
                zp = zp.reshape(scale.shape)
            zp_arr = zp.astype(np.int64)
        dtype = qtype_for(bits, signed)
        if scale.ndim == 0 or (scale.size == 1 and block_size == 0 and scale.ndim <= 1):
            gran = PerTensor()
            scale = scale.reshape(())
            zp_arr = zp_arr.reshape(())
        elif block_size:
            gran = PerBlock(axis if axis is not None else 1, int(block_size))
        else:
            a = 1 if axis is None else int(axis)
            if ndim is not None:
                if not -ndim <= a < ndim:
                    raise self.bad(node, f"axis {a} is out of range for a {ndim}-D tensor")
                a %= ndim
            gran = PerAxis(a)
        try:
            return Encoding(scale=scale, zero_point=zp_arr, dtype=dtype, granularity=gran)
        except Exception as e:
            raise self.bad(node, f"invalid encoding: {e}") from None

    def set(self, name: str, v: Val) -> None:
        self.vals[name] = v
        if v.kind in ("int", "dq") and v.enc is not None:
            self.encodings[v.name] = v.enc

    def emit(self, step: Step) -> None:
        self.steps.append(step)

    # -- fusion ----------------------------------------------------------------------------------
    def fused_output(self, node: Node) -> tuple[str, Encoding, list[Node]]:
        """Follow ``node``'s output through Relu/Clip to its QuantizeLinear.

        Returns (output tensor name, output encoding, the activation nodes passed). The activation
        nodes and the QuantizeLinear are marked fused; the caller turns the activations into clamps.
        """
        acts: list[Node] = []
        out = node.outputs[0]
        while True:
            users = self.consumers.get(out, [])
            graph_out = any(o.name == out for o in self.graph.outputs)
            if len(users) != 1 or graph_out:
                where = "a graph output" if graph_out else f"{len(users)} consumers"
                raise self.refuse(node, f"its float output {out!r} goes to {where}; the target runs it in "
                                  "integers only when a single QuantizeLinear (optionally after Relu/Clip) "
                                  "quantizes its output")
            (u,) = users
            if u.op_type in ("Relu", "Clip") and u.domain == "":
                acts.append(u)
                out = u.outputs[0]
                continue
            if u.op_type != "QuantizeLinear":
                raise self.refuse(node, f"its output feeds {u.op_type} node {u.name!r} in float; expected a "
                                  "QuantizeLinear (optionally after Relu/Clip)")
            q = u
            break
        scale = self.const(q, 1, "QuantizeLinear scale")
        zp = self.const(q, 2, "QuantizeLinear zero point")
        enc = self.encoding_from(q, scale, zp, q.attr("output_dtype"), q.attr("axis"), q.attr("block_size", 0))
        if not enc.is_per_tensor:
            raise self.refuse(q, "activations must be quantized per tensor")
        for n in acts + [q]:
            self.fused.add(n.name)
        return q.outputs[0], enc, acts

    MOVEMENT = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")

    def downstream_encoding(self, node: Node) -> Encoding | None:
        """The encoding of the QuantizeLinear reached from ``node``'s output through a chain of
        single-consumer data-movement ops (which commute with requantization), or None."""
        out = node.outputs[0]
        while True:
            users = self.consumers.get(out, [])
            if len(users) != 1 or any(o.name == out for o in self.graph.outputs):
                return None
            (u,) = users
            if u.op_type == "QuantizeLinear":
                enc = self.encoding_from(u, self.const(u, 1, "scale"), self.const(u, 2, "zero point"),
                                         u.attr("output_dtype"), u.attr("axis"), u.attr("block_size", 0))
                return enc if enc.is_per_tensor else None
            if u.op_type not in self.MOVEMENT or u.domain:
                return None
            out = u.outputs[0]

    def saturation_bounds(self, acts: list[Node], enc: Encoding) -> tuple[int, int]:
        """:func:`saturation_bounds_for` the fused Relu/Clip nodes ``acts``."""
        return saturation_bounds_for(self._activation_limits(acts), enc, self.target.arithmetic.rounding.quantize)

    def _activation_limits(self, acts: list[Node]):
        """(float min or None, float max or None) of each Relu/Clip node."""
        for a in acts:
            if a.op_type == "Relu":
                yield 0.0, None
                continue
            fmin = a.attr("min") if a.attr("min") is not None else None
            fmax = a.attr("max") if a.attr("max") is not None else None
            if a.input(1) is not None:
                fmin = float(self.const(a, 1, "Clip min"))
            if a.input(2) is not None:
                fmax = float(self.const(a, 2, "Clip max"))
            yield fmin, fmax

    def activation_bounds(self, acts: list[Node], enc: Encoding) -> tuple[int, int]:
        """:func:`activation_bounds_for` the fused Relu/Clip nodes ``acts``."""
        return activation_bounds_for(self._activation_limits(acts), enc, self.target.arithmetic.rounding.quantize)


def activation_bounds_for(limits, enc: Encoding, rounding: str) -> tuple[int, int]:
    """Integer clamp bounds on ``enc``'s grid of fused activations given as float ``(min or None,
    max or None)`` pairs (Relu: ``(0, None)``), quantized with the target's ``rounding``. The runtime's
    planner and hwsim's exact mode both use it."""
    from .quantize import quantize

    lo, hi = int(enc.qmin), int(enc.qmax)
    for fmin, fmax in limits:
        if fmin is not None:
            lo = max(lo, int(quantize(np.float32(fmin), enc, rounding)))
        if fmax is not None:
            hi = min(hi, int(quantize(np.float32(fmax), enc, rounding)))
    return lo, hi


def saturation_bounds_for(limits, enc: Encoding, rounding: str) -> tuple[int, int]:
    """The range outside which a requantized value counts as saturated, given fused activations as
    float ``(min or None, max or None)`` pairs: the dtype's [qmin, qmax], except on a side where an
    activation bounds the value at or inside the range -- its own bound on the integer grid (target
    rounding, before the dtype's clamp) is >= qmin (low side) or <= qmax (high side). There the
    activation alone would clamp every value the dtype clamps, so nothing is counted (the side's
    bound becomes -/+ ``runtime.ops.common.NO_COUNT``). Example: Relu on uint8 with zero point 0:
    negative sums are the Relu's business, only values above 255 count."""
    from .dtypes import INT32
    from .ops.common import NO_COUNT
    from .quantize import quantize

    wide = Encoding(scale=enc.scale, zero_point=enc.zero_point, dtype=INT32, granularity=enc.granularity)
    c_lo, c_hi = int(enc.qmin), int(enc.qmax)
    for fmin, fmax in limits:
        if fmin is not None and int(quantize(np.float32(fmin), wide, rounding)) >= enc.qmin:
            c_lo = -NO_COUNT
        if fmax is not None and int(quantize(np.float32(fmax), wide, rounding)) <= enc.qmax:
            c_hi = NO_COUNT
    return c_lo, c_hi


def load(model, target) -> Program:
    """Plan a quantized ONNX model (path or ModelProto) for a target (name, file or Target)."""
    from . import ops  # noqa: F401  (registers the plan functions)

    target = load_target(target)
    graph = model if isinstance(model, Graph) else parse_graph(model)
    p = Planner(graph, target)
    inputs: list[TensorSpec] = []
    for vi in graph.inputs:
        dt = vi.numpy_dtype
        if dt.name in ("int4", "uint4"):  # 4-bit values live in 8-bit arrays inside the runtime
            dt = np.dtype(np.int8 if dt.name == "int4" else np.uint8)
        kind = "float" if np.issubdtype(dt, np.floating) else "int"
        p.set(vi.name, Val(kind, vi.name))
        inputs.append(TensorSpec(vi.name, dt))
    for name, arr in graph.initializers.items():
        p.set(name, Val("const", name, const=arr))
    for node in graph.nodes:
        if node.name in p.fused:
            continue
        fn = _OPS.get((node.domain, node.op_type))
        if fn is None:
            raise p.refuse(node, f"op type {(node.domain + '.') if node.domain else ''}{node.op_type} is not "
                           f"supported by the integer runtime (supported: {', '.join(registered_ops())})")
        try:
            fn(p, node)
        except HwsimError as e:  # kernels' plan-time checks know neither the file nor the node
            if graph.source in str(e):
                raise
            raise type(e)(f"{graph.source}: node {node.name!r} ({node.op_type}): {e}") from None
    from .ops.quantize_ops import finish_outputs

    outputs = finish_outputs(p)
    # integer constants that steps read as tensors (QOperator ops may take an initializer as data)
    read = {i for s in p.steps for i in s.inputs}
    constants = {n: (a.astype(np.int8) if a.dtype.name == "int4" else a) for n, a in graph.initializers.items()
                 if n in read and np.issubdtype(np.asarray(a).dtype, np.integer)}
    return Program(graph.source, target, p.steps, inputs, outputs, constants=constants, encodings=p.encodings)
