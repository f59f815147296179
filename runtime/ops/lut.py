"""Non-linear ops computed by lookup table: Sigmoid, Tanh, HardSwish, HardSigmoid, LeakyRelu, ...

Plan time builds one table entry per input integer (256 for 8-bit, 65536 for 16-bit inputs):
``x = float32(s_in) * float32(q - z_in)`` (float32), ``f`` evaluated in float64 and rounded to
float32, then ``q_out = clamp(round(f / s_out) + z_out)`` with the division in float32 and the
target's ``rounding.lut`` mode. Run time is a pure table lookup. Ops not in the target's
``lut_ops`` are refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..encoding import Encoding
from ..numba_config import jit
from ..plan import Planner, Val, planner_op
from ..program import LayerStats, Step
from ..quantize import quantize


def _functions(node):
    alpha = node.attr("alpha")
    beta = node.attr("beta")
    return {
        "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
        "Tanh": np.tanh,
        "HardSigmoid": lambda x: np.clip((0.2 if alpha is None else alpha) * x + (0.5 if beta is None else beta), 0, 1),
        "HardSwish": lambda x: x * np.clip(x / 6.0 + 0.5, 0, 1),
        "LeakyRelu": lambda x: np.where(x >= 0, x, (0.01 if alpha is None else alpha) * x),
        "Elu": lambda x: np.where(x >= 0, x, (1.0 if alpha is None else alpha) * np.expm1(np.minimum(x, 0))),
        "Softplus": lambda x: np.logaddexp(0.0, x),
        "Gelu": lambda x: 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))),
    }


def build_table(fn, x_enc: Encoding, y_enc: Encoding, rounding: str) -> np.ndarray:
    q = np.arange(x_enc.dtype.qmin, x_enc.dtype.qmax + 1, dtype=np.int64)
    x = np.float32(x_enc.scale) * (q - int(x_enc.zero_point)).astype(np.float32)
    f = np.asarray(fn(x.astype(np.float64)), np.float64).astype(np.float32)
    return quantize(f, y_enc, rounding).astype(np.int64)


@jit
def _lookup(x, table, offset, out):
    for i in range(x.size):
        out[i] = table[np.int64(x[i]) - offset]


@dataclass
class LutStep(Step):
    table: np.ndarray = None
    offset: int = 0
    out_dtype: np.dtype = None

    def compute(self, x, stats: LayerStats):
        out = np.empty(x.shape, self.out_dtype)
        _lookup(np.ascontiguousarray(x).reshape(-1), self.table.astype(self.out_dtype), self.offset, out.reshape(-1))
        return (out,)


def lut_step(p: Planner, node, op: str, x: Val, x_enc: Encoding, out: str, y: Encoding) -> LutStep:
    if op not in p.target.arithmetic.lut_ops:
        raise p.refuse(node, f"target {p.target.name!r} does not compute {op} in integers (not in its lut_ops)")
    if not (x_enc.is_per_tensor and y.is_per_tensor):
        raise p.refuse(node, "lookup-table ops need per-tensor encodings")
    if x_enc.dtype.bits > 16:
        raise p.refuse(node, f"a lookup table over {x_enc.dtype} inputs is too large")
    table = build_table(_functions(node)[op], x_enc, y, p.target.arithmetic.rounding.lut)
    return LutStep(node.name, op, (x.name,), (out,), table=table, offset=x_enc.dtype.qmin,
                   out_dtype=y.dtype.numpy_dtype)


@planner_op("Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Softplus", "Gelu")
def plan_lut(p: Planner, node):
    x = p.int_input(node, 0, "input")
    out, y, acts = p.fused_output(node)
    if acts:
        raise p.refuse(node, "a Relu/Clip after a lookup-table op is not fused; quantize in between")
    p.emit(lut_step(p, node, node.op_type, x, x.enc, out, y))
    p.set(out, Val("int", out, y))


@planner_op("QLinearSigmoid", "QLinearLeakyRelu", domain="com.microsoft")
def plan_qlinear_lut(p: Planner, node):
    from .mac import _enc

    x = p.raw_int(node, 0, "X")
    xe, y = _enc(p, node, 1, 2, "X"), _enc(p, node, 3, 4, "Y")
    out = node.outputs[0]
    p.emit(lut_step(p, node, node.op_type.replace("QLinear", ""), x, xe, out, y))
    p.set(out, Val("int", out, y))
