"""Conv, Gemm and MatMul (QDQ form) and QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger.

Integer contract (ARCHITECTURE.md): acc = bias_q + sum (x_q - z_x)(w_q - z_w) in the target's
accumulator; y_q = clamp(z_y + requant(acc, s_x*s_w/s_y), lo, hi), lo/hi carrying fused Relu/Clip.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..encoding import Encoding
from ..kernels import simd
from ..kernels.mac import ConvWeights, apply_accumulator, conv_accumulate, conv_requantize, explicit_pads, matmul_acc
from ..plan import Planner, Val, planner_op
from ..program import LayerStats, Step
from .common import Requant, broadcast_channels


@dataclass
class MacConfig:
    acc_bits: int
    overflow: str
    pair_saturation: bool
    pair_order: str


def mac_config(p: Planner, x_dtype, w_dtype, depthwise: bool = False) -> MacConfig:
    """Pair saturation applies to u8 x s8 products only (the only vpmaddubsw operand order), and not
    to depthwise convolutions when the target says they run in an exact kernel."""
    a = p.target.arithmetic.accumulator
    pair = bool(a.pair_saturation_bits) and x_dtype.bits == 8 and w_dtype.bits == 8 \
        and not x_dtype.signed and w_dtype.signed and not (depthwise and not a.pair_saturation_depthwise)
    return MacConfig(a.bits, a.overflow, pair, a.pair_order)


@dataclass
class ConvStep(Step):
    w: np.ndarray = None
    x_zp: int = 0
    w_zp: np.ndarray = None
    bias: np.ndarray | None = None
    strides: tuple = ()
    pads: tuple | None = None
    auto_pad: str = "NOTSET"
    kernel: tuple = ()
    dilations: tuple = ()
    group: int = 1
    mac: MacConfig = None
    requant: Requant | None = None  # None: the int32 accumulator is the output (ConvInteger)
    out_dtype: np.dtype = None

    weights: ConvWeights = None  # the weight side, prepared at plan time (from w, w_zp, group)

    def __post_init__(self):
        if self.weights is None:
            self.weights = ConvWeights(self.w, self.w_zp, self.group, self.mac.pair_order)

    def prepare(self, x_dtype, x_zp: int) -> None:
        """Plan time: build the weight operands that runs on inputs of ``x_dtype`` will use."""
        if x_dtype.bits <= 16:
            self.weights.prepare(x_dtype.qmin, x_dtype.qmax, x_zp, self.mac.pair_saturation)

    def compute(self, x, stats: LayerStats):
        pads = self.pads
        if pads is None:
            pads = explicit_pads(self.auto_pad, x.shape[2:], self.kernel, self.strides, self.dilations)
        rq = self.requant
        if rq is not None and rq.fast is not None and self.mac.acc_bits >= 32:  # conv + epilogue fused
            fused = conv_requantize(x, self.x_zp, self.weights, self.bias, self.strides, pads, self.dilations,
                                    self.mac.pair_saturation, rq.fast, self.out_dtype)
            if fused is not None:
                stats.saturation += fused[1]
                return (fused[0],)
        acc = conv_accumulate(x, self.x_zp, self.weights, self.bias, self.strides, pads, self.dilations,
                              pair_saturation=self.mac.pair_saturation)
        return (_epilogue(acc, 1, self.mac, rq, self.out_dtype, stats),)


@dataclass
class MatMulStep(Step):
    b: np.ndarray | None = None  # constant right operand (None: second input)
    a_zp: int = 0
    b_zp: np.ndarray = None
    bias: np.ndarray | None = None
    trans_a: bool = False
    trans_b: bool = False
    mac: MacConfig = None
    requant: Requant | None = None
    out_dtype: np.dtype = None

    b_packed: object = None  # a constant 2-D B packed for the AVX2 GEMM (runtime/kernels/simd.py), on first use

    def compute(self, a, b=None, stats: LayerStats = None):
        b = self.b if self.b is not None else b
        if self.trans_a:
            a = np.swapaxes(a, -1, -2)
        if self.trans_b:
            b = np.swapaxes(b, -1, -2)
        packed = None
        if self.b is not None and b.ndim == 2 and simd.available():
            if self.b_packed is None:
                self.b_packed = simd.pack_b(np.ascontiguousarray(b.T))
            packed = self.b_packed
        acc = matmul_acc(a, self.a_zp, b, self.b_zp, self.bias, pair_saturation=self.mac.pair_saturation,
                         b_packed=packed)
        return (_epilogue(acc, acc.ndim - 1, self.mac, self.requant, self.out_dtype, stats),)


def _epilogue(acc, axis: int, mac: MacConfig, requant: Requant | None, out_dtype, stats: LayerStats):
    """The accumulator policy and, when the op has one, the requantization, in one pass."""
    if requant is None:  # ConvInteger / MatMulInteger: the int32 accumulator is the output
        acc, overflow = apply_accumulator(acc, mac.acc_bits, mac.overflow)
        stats.overflow += int(overflow)
        return acc.astype(out_dtype)
    return requant.apply(acc, axis, stats, out_dtype, mac.acc_bits, mac.overflow)


def _channel_params(p: Planner, node, w_enc: Encoding, n_out: int, channel_axis: int):
    """Per-output-channel weight scales and zero points (broadcast from per-tensor)."""
    if w_enc.is_per_tensor:
        s = np.repeat(np.float32(w_enc.scale), n_out)
        z = np.repeat(np.int64(w_enc.zero_point), n_out)
        return s, z
    if type(w_enc.granularity).__name__ != "PerAxis" or w_enc.granularity.axis != channel_axis:
        raise p.refuse(node, f"weights must be per tensor or per output channel (axis {channel_axis}), found "
                       f"{w_enc.granularity}")
    return (broadcast_channels(w_enc.scale, n_out, "weight scale").astype(np.float32),
            broadcast_channels(w_enc.zero_point, n_out, "weight zero point").astype(np.int64))


def _bias(p: Planner, node, idx: int, s_x, s_w: np.ndarray, n_out: int) -> np.ndarray | None:
    name = node.input(idx)
    if name is None:
        return None
    v = p.val(node, name)
    if v.kind == "qconst":
        b = v.const.astype(np.int64).reshape(-1)
        if b.size != n_out:
            raise p.bad(node, f"bias {name!r} has {b.size} values, expected {n_out}")
        expected = np.float32(s_x) * s_w
        if not np.allclose(np.broadcast_to(np.float32(v.enc.scale), expected.shape), expected, rtol=1e-3, atol=0):
            raise p.refuse(node, f"bias {name!r} scale differs from input scale x weight scale; the integer "
                           "contract adds the bias at scale s_x*s_w")
        return b
    if v.kind == "const":
        if np.issubdtype(v.const.dtype, np.integer):  # QOperator form: int32 at s_x*s_w
            return v.const.astype(np.int64).reshape(-1)
        # float bias: quantized at plan time at s_x*s_w (float32 product), rounded half to even
        scale = (np.float32(s_x) * s_w).astype(np.float32)
        b = np.rint(v.const.astype(np.float32).reshape(-1) / scale).astype(np.int64)
        return np.clip(b, -(1 << 31), (1 << 31) - 1)
    raise p.refuse(node, f"bias {name!r} must be a constant")


def _depthwise(node, w_shape) -> bool:
    """One input and one output channel per group."""
    group = int(node.attr("group", 1))
    return w_shape[1] == 1 and w_shape[0] == group


def _conv_attrs(p: Planner, node, w_shape):
    k = tuple(node.attr("kernel_shape") or w_shape[2:])
    nd = len(k)
    if nd not in (1, 2):
        raise p.refuse(node, f"only 1-D and 2-D convolutions are supported, found {nd}-D")
    strides = tuple(node.attr("strides") or (1,) * nd)
    dil = tuple(node.attr("dilations") or (1,) * nd)
    auto_pad = node.attr("auto_pad", "NOTSET")
    pads = tuple(node.attr("pads") or (0,) * (2 * nd)) if auto_pad in ("NOTSET", "VALID") else None
    if auto_pad == "VALID":
        pads = (0,) * (2 * nd)
    return dict(strides=strides, pads=pads, auto_pad=auto_pad, kernel=k, dilations=dil, group=int(node.attr("group", 1)))


# ---------------------------------------------------------------------------------------------
# QDQ form
# ---------------------------------------------------------------------------------------------
@planner_op("Conv")
def plan_conv(p: Planner, node):
    x = p.int_input(node, 0, "input")
    w = p.int_input(node, 1, "weight")
    if w.kind != "qconst":
        raise p.refuse(node, "weights must be a quantized constant")
    n_out = w.const.shape[0]
    s_w, z_w = _channel_params(p, node, w.enc, n_out, 0)
    bias = _bias(p, node, 2, x.enc.scale, s_w, n_out)
    out, y_enc, acts = p.fused_output(node)
    lo, hi = p.activation_bounds(acts, y_enc)
    c_lo, c_hi = p.saturation_bounds(acts, y_enc)
    rq = Requant.prepare(p.target, x.enc.scale, s_w, y_enc.scale, int(y_enc.zero_point), c_lo, c_hi, lo, hi)
    step = ConvStep(node.name, "Conv", (x.name,), (out,), w=w.const.astype(np.int64), x_zp=int(x.enc.zero_point),
                    w_zp=z_w, bias=bias, mac=mac_config(p, x.enc.dtype, w.enc.dtype, _depthwise(node, w.const.shape)),
                    requant=rq, out_dtype=y_enc.dtype.numpy_dtype, **_conv_attrs(p, node, w.const.shape))
    step.prepare(x.enc.dtype, int(x.enc.zero_point))
    p.emit(step)
    p.set(out, Val("int", out, y_enc))


def _plan_matmul_like(p: Planner, node, trans_a=False, trans_b=False, bias_idx=None, alpha=1.0):
    a = p.int_input(node, 0, "A")
    b = p.int_input(node, 1, "B")
    if not a.enc.is_per_tensor:
        raise p.refuse(node, "input A must be quantized per tensor")
    out, y_enc, acts = p.fused_output(node)
    lo, hi = p.activation_bounds(acts, y_enc)
    c_lo, c_hi = p.saturation_bounds(acts, y_enc)
    if b.kind == "qconst":
        bq = b.const
        n_out = bq.shape[0] if trans_b else bq.shape[-1]
        axis = 0 if trans_b else bq.ndim - 1
        s_w, z_w = _channel_params(p, node, b.enc, n_out, axis)
        b_const = bq.astype(np.int64)
    else:
        if not b.enc.is_per_tensor:
            raise p.refuse(node, "a non-constant input B must be quantized per tensor")
        n_out = None
        s_w, z_w = np.float32(b.enc.scale).reshape(1), np.int64(b.enc.zero_point).reshape(1)
        b_const = None
    bias = _bias(p, node, bias_idx, a.enc.scale, s_w, n_out) if bias_idx is not None and n_out is not None else None
    rq = Requant.prepare(p.target, a.enc.scale, s_w, y_enc.scale, int(y_enc.zero_point), c_lo, c_hi, lo, hi,
                         extra=alpha)
    inputs = (a.name,) if b_const is not None else (a.name, b.name)
    p.emit(MatMulStep(node.name, node.op_type, inputs, (out,), b=b_const, a_zp=int(a.enc.zero_point), b_zp=z_w,
                      bias=bias, trans_a=trans_a, trans_b=trans_b, mac=mac_config(p, a.enc.dtype, b.enc.dtype),
                      requant=rq, out_dtype=y_enc.dtype.numpy_dtype))
    p.set(out, Val("int", out, y_enc))


@planner_op("MatMul")
def plan_matmul(p: Planner, node):
    _plan_matmul_like(p, node)


@planner_op("Gemm")
def plan_gemm(p: Planner, node):
    beta = float(node.attr("beta", 1.0))
    alpha = float(node.attr("alpha", 1.0))
    if node.input(2) is not None and beta != 1.0:
        raise p.refuse(node, f"beta = {beta}: only beta = 1 is supported with a bias")
    if alpha <= 0:
        raise p.refuse(node, f"alpha = {alpha}: only positive alpha is supported")
    _plan_matmul_like(p, node, bool(node.attr("transA", 0)), bool(node.attr("transB", 0)), 2, alpha)


# ---------------------------------------------------------------------------------------------
# QOperator form
# ---------------------------------------------------------------------------------------------
def _enc(p: Planner, node, s_idx: int, z_idx: int, what: str, axis=None, ndim=None) -> Encoding:
    scale = p.const(node, s_idx, f"{what} scale")
    zp = p.const(node, z_idx, f"{what} zero point") if node.input(z_idx) is not None else None
    zp_elem = None
    if zp is None:
        v = p.vals.get(node.inputs[s_idx - 1]) if s_idx > 0 else None
        if v is not None and v.const is not None:
            zp_elem = {np.dtype(np.uint8): 2, np.dtype(np.int8): 3}.get(v.const.dtype)
    return p.encoding_from(node, scale, zp, zp_elem, axis if np.size(scale) > 1 else None, 0, ndim)


@planner_op("QLinearConv")
def plan_qlinear_conv(p: Planner, node):
    x = p.raw_int(node, 0, "x")
    w = p.val(node, node.inputs[3])
    if w.kind != "const":
        raise p.refuse(node, "weights must be a constant")
    x_enc = _enc(p, node, 1, 2, "x")
    w_enc = _enc(p, node, 4, 5, "w", axis=0, ndim=w.const.ndim)
    y_enc = _enc(p, node, 6, 7, "y")
    n_out = w.const.shape[0]
    s_w, z_w = _channel_params(p, node, w_enc, n_out, 0)
    bias = _bias(p, node, 8, x_enc.scale, s_w, n_out)
    rq = Requant.prepare(p.target, x_enc.scale, s_w, y_enc.scale, int(y_enc.zero_point), y_enc.qmin, y_enc.qmax)
    out = node.outputs[0]
    step = ConvStep(node.name, "QLinearConv", (x.name,), (out,), w=w.const.astype(np.int64),
                    x_zp=int(x_enc.zero_point), w_zp=z_w, bias=bias,
                    mac=mac_config(p, x_enc.dtype, w_enc.dtype, _depthwise(node, w.const.shape)), requant=rq,
                    out_dtype=y_enc.dtype.numpy_dtype, **_conv_attrs(p, node, w.const.shape))
    step.prepare(x_enc.dtype, int(x_enc.zero_point))
    p.emit(step)
    p.set(out, Val("int", out, y_enc))


@planner_op("QLinearMatMul")
def plan_qlinear_matmul(p: Planner, node):
    a = p.raw_int(node, 0, "a")
    b = p.val(node, node.inputs[3])
    a_enc = _enc(p, node, 1, 2, "a")
    y_enc = _enc(p, node, 6, 7, "y")
    if not a_enc.is_per_tensor:
        raise p.refuse(node, "a must be quantized per tensor")
    if b.kind == "const":
        b_enc = _enc(p, node, 4, 5, "b", axis=b.const.ndim - 1, ndim=b.const.ndim)
        n_out = b.const.shape[-1]
        s_w, z_w = _channel_params(p, node, b_enc, n_out, b.const.ndim - 1)
        b_const = b.const.astype(np.int64)
        inputs = (a.name,)
    else:
        b = p.raw_int(node, 3, "b")
        b_enc = _enc(p, node, 4, 5, "b")
        s_w, z_w = np.float32(b_enc.scale).reshape(1), np.int64(b_enc.zero_point).reshape(1)
        b_const = None
        inputs = (a.name, b.name)
    rq = Requant.prepare(p.target, a_enc.scale, s_w, y_enc.scale, int(y_enc.zero_point), y_enc.qmin, y_enc.qmax)
    out = node.outputs[0]
    p.emit(MatMulStep(node.name, "QLinearMatMul", inputs, (out,), b=b_const, a_zp=int(a_enc.zero_point), b_zp=z_w,
                      mac=mac_config(p, a_enc.dtype, b_enc.dtype), requant=rq, out_dtype=y_enc.dtype.numpy_dtype))
    p.set(out, Val("int", out, y_enc))


def _zp_vec(p: Planner, node, idx: int, n: int | None):
    if node.input(idx) is None:
        return np.zeros(1 if n is None else n, np.int64)
    z = p.const(node, idx, "zero point").astype(np.int64).reshape(-1)
    return z if n is None or z.size == n else broadcast_channels(z, n, "zero point")


def _qdtype_of(arr_dtype):
    from ..dtypes import qtype_for

    dt = np.dtype(arr_dtype)
    return qtype_for(dt.itemsize * 8, np.issubdtype(dt, np.signedinteger))


@planner_op("ConvInteger")
def plan_conv_integer(p: Planner, node):
    x = p.raw_int(node, 0, "x")
    w = p.val(node, node.inputs[1])
    if w.kind != "const":
        raise p.refuse(node, "weights must be a constant")
    n_out = w.const.shape[0]
    x_zp = _zp_vec(p, node, 2, None)
    if x_zp.size != 1:
        raise p.refuse(node, "x_zero_point must be a scalar")
    x_dtype = np.dtype(p.graph.value_info[x.name].numpy_dtype) if x.name in p.graph.value_info else np.dtype(np.uint8)
    out = node.outputs[0]
    step = ConvStep(node.name, "ConvInteger", (x.name,), (out,), w=w.const.astype(np.int64), x_zp=int(x_zp[0]),
                    w_zp=_zp_vec(p, node, 3, n_out), bias=None,
                    mac=mac_config(p, _qdtype_of(x_dtype), _qdtype_of(w.const.dtype), _depthwise(node, w.const.shape)),
                    requant=None,
                    out_dtype=np.dtype(np.int32), **_conv_attrs(p, node, w.const.shape))
    step.prepare(_qdtype_of(x_dtype), int(x_zp[0]))
    p.emit(step)
    p.set(out, Val("int", out))


@planner_op("MatMulInteger")
def plan_matmul_integer(p: Planner, node):
    a = p.raw_int(node, 0, "A")
    b = p.val(node, node.inputs[1])
    a_zp = _zp_vec(p, node, 2, None)
    if a_zp.size != 1:
        raise p.refuse(node, "a_zero_point must be a scalar (per-row zero points are not supported)")
    a_dtype = p.graph.value_info[a.name].numpy_dtype if a.name in p.graph.value_info else np.dtype(np.uint8)
    if b.kind == "const":
        b_const, inputs, b_dtype = b.const.astype(np.int64), (a.name,), b.const.dtype
        n = b.const.shape[-1]
    else:
        b = p.raw_int(node, 1, "B")
        b_const, inputs = None, (a.name, b.name)
        b_dtype = p.graph.value_info[b.name].numpy_dtype if b.name in p.graph.value_info else np.dtype(np.int8)
        n = None
    b_zp = _zp_vec(p, node, 3, n)
    out = node.outputs[0]
    p.emit(MatMulStep(node.name, "MatMulInteger", inputs, (out,), b=b_const, a_zp=int(a_zp[0]), b_zp=b_zp,
                      mac=mac_config(p, _qdtype_of(a_dtype), _qdtype_of(b_dtype)), requant=None,
                      out_dtype=np.dtype(np.int32)))
    p.set(out, Val("int", out))


@planner_op("QGemm", domain="com.microsoft")
def plan_qgemm(p: Planner, node):
    """com.microsoft QGemm (A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp): ONNX Runtime's fused
    Gemm; requantization scale f32(f32(f32(alpha*sa)*sb)/sy) (runtime/ORT_CPU_ARITHMETIC.md §2)."""
    a = p.raw_int(node, 0, "A")
    b = p.val(node, node.inputs[3])
    if b.kind != "const":
        raise p.refuse(node, "B must be a constant")
    if node.input(7) is None:
        raise p.refuse(node, "QGemm without y_scale (float output) is not an integer op")
    trans_a, trans_b = bool(node.attr("transA", 0)), bool(node.attr("transB", 0))
    alpha = float(node.attr("alpha", 1.0))
    a_enc = _enc(p, node, 1, 2, "A")
    axis = 0 if trans_b else 1
    b_enc = _enc(p, node, 4, 5, "B", axis=axis, ndim=2)
    y_enc = _enc(p, node, 7, 8, "y")
    n_out = b.const.shape[0] if trans_b else b.const.shape[1]
    s_w, z_w = _channel_params(p, node, b_enc, n_out, axis)
    bias = _bias(p, node, 6, a_enc.scale, s_w, n_out)
    s_a = np.float32(np.float32(alpha) * np.float32(a_enc.scale))
    rq = Requant.prepare(p.target, s_a, s_w, y_enc.scale, int(y_enc.zero_point), y_enc.qmin, y_enc.qmax)
    out = node.outputs[0]
    p.emit(MatMulStep(node.name, "QGemm", (a.name,), (out,), b=b.const.astype(np.int64), a_zp=int(a_enc.zero_point),
                      b_zp=z_w, bias=bias, trans_a=trans_a, trans_b=trans_b, mac=mac_config(p, a_enc.dtype, b_enc.dtype),
                      requant=rq, out_dtype=y_enc.dtype.numpy_dtype))
    p.set(out, Val("int", out, y_enc))
