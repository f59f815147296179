"""Softmax (QDQ form: DequantizeLinear -> Softmax -> QuantizeLinear) and com.microsoft QLinearSoftmax.

The target's requantization form chooses the recipe (runtime/kernels/softmax.py has the formulas):

- ``fixed_point`` targets (TFLite as the model): TFLite's integer softmax on 8-bit inputs, exp by
  gemmlowp's fixed-point ``exp_on_negative_values``, a fixed-point reciprocal of the row sum. The
  output encoding is the one TFLite requires: scale 1/256 and zero point 0 (uint8) or -128 (int8);
  any other output encoding is refused (TFLite's Prepare rejects it too).
- ``float32`` targets (ONNX Runtime as the model): ONNX Runtime fuses DQ -> Softmax -> Q with the same
  8-bit type on both sides into com.microsoft QLinearSoftmax (QDQ selector "1DQ", any output scale),
  whose kernel normalizes a 256-entry float32 exp table; reproduced bit for bit (see
  runtime/ORT_CPU_ARITHMETIC.md, "QLinearSoftmax"). Other type combinations run in float in ONNX
  Runtime and are refused.

Axis semantics follow the op's opset: before 13 the input is coerced to 2-D at ``axis`` (default 1)
and each row of ``prod(shape[axis:])`` values is one softmax; from 13 on the softmax runs along
``axis`` (default -1) alone. QLinearSoftmax carries the opset of the Softmax it replaced in its
``opset`` attribute.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..encoding import Encoding
from ..errors import HwsimError
from ..kernels.softmax import (TFLITE_OUTPUT_SCALE, ort_output_multiplier, ort_softmax_table, softmax_fixed_point,
                               softmax_float32_table, tflite_softmax_params)
from ..plan import Planner, Val, planner_op
from ..program import LayerStats, Step

OPSET13 = 13


@dataclass
class SoftmaxStep(Step):
    form: str = "fixed_point"
    axis: int = -1
    coerce_2d: bool = False  # opset < 13: rows of prod(shape[axis:]) values
    # fixed_point
    multiplier: int = 0
    left_shift: int = 0
    diff_min: int = 0
    rounding: str = "double"
    # float32
    x_scale: np.float32 = np.float32(1.0)
    y_mult: np.float32 = np.float32(256.0)
    zero_point: int = 0
    tables: dict = field(default_factory=dict)  # row length -> exp table (built once per length)
    out_dtype: np.dtype = None

    def _rows(self, x2):
        if self.form == "fixed_point":
            return softmax_fixed_point(x2, self.multiplier, self.left_shift, self.diff_min, self.out_dtype,
                                       self.rounding)
        d = x2.shape[-1]
        table = self.tables.get(d)
        if table is None:
            table = self.tables[d] = ort_softmax_table(self.x_scale, d)
        return softmax_float32_table(x2, table, self.y_mult, self.zero_point, self.out_dtype)

    def compute(self, x, stats: LayerStats):
        if x.ndim == 0 or x.size == 0:
            return (x.astype(self.out_dtype),)
        a = self.axis
        if not -x.ndim <= a < x.ndim:
            raise HwsimError(f"softmax axis {a} is out of range for a {x.ndim}-D input of shape {x.shape}")
        a %= x.ndim
        if self.coerce_2d:
            y = self._rows(x.reshape(int(np.prod(x.shape[:a], dtype=np.int64)), -1))
            return (y.reshape(x.shape),)
        y = self._rows(np.moveaxis(x, a, -1))
        return (np.ascontiguousarray(np.moveaxis(y, -1, a)),)


def _axis_rule(opset: int, axis) -> tuple[int, bool]:
    if axis is None:
        axis = 1 if opset < OPSET13 else -1
    return int(axis), opset < OPSET13


def softmax_step(p: Planner, node, x: Val, x_enc: Encoding, out: str, y: Encoding, opset: int) -> SoftmaxStep:
    t = p.target.arithmetic
    if "Softmax" not in t.integer_ops:
        raise p.refuse(node, f"target {p.target.name!r} does not compute Softmax in integers (not in its integer_ops)")
    if not (x_enc.is_per_tensor and y.is_per_tensor):
        raise p.refuse(node, "Softmax needs per-tensor encodings on its input and output")
    if x_enc.dtype.bits != 8 or y.dtype.bits != 8:
        raise p.refuse(node, f"integer Softmax is implemented for 8-bit tensors, found input {x_enc.dtype} and output "
                       f"{y.dtype} (TFLite's int16 softmax with its 513-entry tables is not implemented)")
    axis, coerce = _axis_rule(opset, node.attr("axis"))
    name = node.name
    if t.requant.form == "fixed_point":
        zp_needed = y.dtype.qmin
        if np.float32(y.scale) != TFLITE_OUTPUT_SCALE or int(y.zero_point) != zp_needed:
            raise p.refuse(node, f"TFLite's integer Softmax writes probabilities at scale 1/256 = 0.00390625 with zero "
                           f"point {zp_needed} for {y.dtype}; found output scale {float(y.scale)!r} and zero point "
                           f"{int(y.zero_point)}. Quantize the Softmax output with exactly that encoding")
        rounding = t.requant.rounding if t.requant.rounding in ("double", "single") else "double"
        try:
            m, ls, dmin = tflite_softmax_params(x_enc.scale, 1.0, rounding)
        except HwsimError as e:
            raise p.refuse(node, str(e)) from None
        return SoftmaxStep(name, node.op_type, (x.name,), (out,), form="fixed_point", axis=axis, coerce_2d=coerce,
                           multiplier=m, left_shift=ls, diff_min=dmin, rounding=rounding,
                           out_dtype=y.dtype.numpy_dtype)
    if x_enc.dtype != y.dtype:
        raise p.refuse(node, f"input {x_enc.dtype} and output {y.dtype} differ: ONNX Runtime fuses DQ -> Softmax -> Q "
                       "into QLinearSoftmax only for one 8-bit type on both sides and runs other cases in float")
    try:
        y_mult = ort_output_multiplier(y.scale)
        step = SoftmaxStep(name, node.op_type, (x.name,), (out,), form="float32", axis=axis, coerce_2d=coerce,
                           x_scale=np.float32(x_enc.scale), y_mult=y_mult, zero_point=int(y.zero_point),
                           out_dtype=y.dtype.numpy_dtype)
        d = _static_row_length(p, node.inputs[0], axis, coerce) or _static_row_length(p, x.name, axis, coerce)
        if d is not None:
            step.tables[d] = ort_softmax_table(x_enc.scale, d)
    except HwsimError as e:
        raise p.refuse(node, str(e)) from None
    return step


def _static_row_length(p: Planner, name: str, axis: int, coerce: bool) -> int | None:
    """The softmax row length when the graph declares the input's shape (then the table is built at plan time)."""
    vi = p.graph.value_info.get(name)
    if vi is None or vi.shape is None or not vi.shape:
        return None
    shape = vi.shape
    if not -len(shape) <= axis < len(shape):
        return None
    a = axis % len(shape)
    dims = shape[a:] if coerce else (shape[a],)
    if not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64))


@planner_op("Softmax")
def plan_softmax(p: Planner, node):
    x = p.int_input(node, 0, "input")
    out, y, acts = p.fused_output(node)
    if acts:
        raise p.refuse(node, f"{acts[0].op_type} node {acts[0].name!r} after Softmax is not fused; quantize in between")
    opset = int(p.graph.opsets.get("", OPSET13))
    p.emit(softmax_step(p, node, x, x.enc, out, y, opset))
    p.set(out, Val("int", out, y))


@planner_op("QLinearSoftmax", domain="com.microsoft")
def plan_qlinear_softmax(p: Planner, node):
    from .mac import _enc

    x = p.raw_int(node, 0, "X")
    if x.kind == "const":
        raise p.refuse(node, "a constant input is not supported; fold the Softmax of a constant offline")
    opset = node.attr("opset")
    if opset is None:
        raise p.bad(node, "the required attribute 'opset' (the opset of the Softmax it replaces) is missing")
    xe = _enc(p, node, 1, 2, "X")
    try:
        if node.input(2) is None and x.enc is not None:  # no zero point: the input's own 8-bit type
            xe = Encoding(scale=xe.scale, zero_point=0, dtype=x.enc.dtype)
        if node.input(4) is not None:
            y = _enc(p, node, 3, 4, "Y")
        else:  # ONNX Runtime: zero point 0 of the input's type
            y = Encoding(scale=np.asarray(p.const(node, 3, "Y scale")).reshape(()), zero_point=0, dtype=xe.dtype)
    except HwsimError as e:
        raise p.bad(node, f"invalid encoding: {e}") from None
    out = node.outputs[0]
    p.emit(softmax_step(p, node, x, xe, out, y, int(opset)))
    p.set(out, Val("int", out, y))
