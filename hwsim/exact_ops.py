"""Exact mode, op by op: each fused group computed in the target's integer arithmetic (torch).

The plan-time parameters are those the integer runtime derives (``Requant.prepare``,
``binary_params``, TFLite's Mean multiplier fold); the arithmetic is :mod:`hwsim.exact`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from runtime.encoding import Encoding
from runtime.errors import UnsupportedError
from runtime.fixedpoint import quantize_multiplier
from runtime.ops.common import Requant
from runtime.plan import activation_bounds_for, saturation_bounds_for

from . import exact as X


def _limits(acts):
    """Float (min or None, max or None) of each fused Relu/Clip op."""
    return [(0.0, None) if a.op_type == "Relu" else (a.attrs.get("min"), a.attrs.get("max")) for a in acts]


def clamp_bounds(target, acts, enc: Encoding) -> tuple[int, int]:
    """Integer clamp bounds of fused Relu/Clip on the output grid (the runtime planner's rule)."""
    return activation_bounds_for(_limits(acts), enc, target.arithmetic.rounding.quantize)


def count_bounds(target, acts, enc: Encoding) -> tuple[int, int]:
    """Saturation-count bounds given the fused Relu/Clip (the runtime planner's rule)."""
    return saturation_bounds_for(_limits(acts), enc, target.arithmetic.rounding.quantize)


def _saturated(y: torch.Tensor, count) -> int:
    return int(((y < count[0]) | (y > count[1])).sum())


def _i64(a, device) -> torch.Tensor:
    return torch.as_tensor(np.array(a, np.int64), device=device)


def weight_integers(sim, g) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(integer weights, per-output-channel weight zero points, integer bias or None)."""
    key = g.name.replace(".", "_")
    m = sim.layers[key]
    wq, bq = sim.weight_q[key], sim.bias_q[key]
    w = wq.quantize(m.weight.detach())
    enc = wq.encoding
    n_out = w.shape[0]
    zw = torch.as_tensor(np.broadcast_to(np.asarray(enc.zero_point, np.int64).reshape(-1)[:1] if enc.is_per_tensor
                                         else np.asarray(enc.zero_point, np.int64).reshape(n_out, -1)[:, 0],
                                         (n_out,)).copy(), device=w.device)
    b = bq.quantize(m.bias.detach()) if m.bias is not None else None
    return w, zw, b


def _weight_scales(enc: Encoding, n_out: int) -> np.ndarray:
    s = np.asarray(enc.scale, np.float32)
    if s.ndim == 0:
        return np.repeat(s, n_out)
    return s.reshape(n_out, -1)[:, 0]


def exact_group(sim, g, vals, stats) -> torch.Tensor:
    t = sim.target
    ar = t.arithmetic
    op = g.head
    if not g.out_quantized:  # data movement on the integer tensor as it is
        return _movement(op, vals)
    x_encs = [sim.quantizer_of(i).encoding for i in op.inputs]
    y_enc = sim.quantizer_of(g.output).encoding
    lo, hi = clamp_bounds(t, g.acts, y_enc)
    count = count_bounds(t, g.acts, y_enc)
    xs = [vals[i] for i in op.inputs]
    if op.op_type in ("Conv", "Gemm"):
        w, zw, b = weight_integers(sim, g)
        wenc = sim.weight_q[g.name.replace(".", "_")].encoding
        if not (wenc.is_per_tensor or type(wenc.granularity).__name__ == "PerAxis"):
            raise UnsupportedError(f"{op.name}: per-block weights are not supported by the integer runtime's Conv/Gemm")
        n_out = w.shape[0]
        s_w = _weight_scales(wenc, n_out)
        rq = Requant.prepare(t, x_encs[0].scale, s_w, y_enc.scale, int(y_enc.zero_point), count[0], count[1], lo, hi)
        a = ar.accumulator
        xd, wd = x_encs[0].dtype, wenc.dtype
        depthwise = op.op_type == "Conv" and w.shape[1] == 1 and w.shape[0] == op.attrs["group"]
        pair = bool(a.pair_saturation_bits) and xd.bits == 8 and wd.bits == 8 and not xd.signed and wd.signed \
            and not (depthwise and not a.pair_saturation_depthwise)
        zx = int(x_encs[0].zero_point)
        if op.op_type == "Gemm":
            acc = X.gemm_acc(xs[0], zx, w, zw, b, pair)
            axis = 1
        else:
            at = op.attrs
            acc = X.conv_acc(xs[0], zx, w, zw, b, at["strides"], at["pads"], at["dilations"], at["group"], pair,
                             a.pair_order)
            axis = 1
        acc, over = X.accumulator(acc, a.bits, a.overflow, op.name)
        stats["overflow"] += over
        y, sat = X.requantize(acc, rq, axis)
        stats["saturation"] += sat
        return y
    if op.op_type in ("Add", "Mul"):
        from runtime.ops.elementwise import binary_params

        rule, params, single = binary_params(t, op.op_type, x_encs[0], x_encs[1], y_enc)
        z1, z2, zo = int(x_encs[0].zero_point), int(x_encs[1].zero_point), int(y_enc.zero_point)
        rnd = "single" if single else "double"
        if rule == "fixed_point":
            if op.op_type == "Add":
                y = X.add_fixed_point(xs[0], xs[1], z1, z2, *params, zo, rnd)
            else:
                y = X.mul_fixed_point(xs[0], xs[1], z1, z2, *params, zo, rnd)
        else:
            if op.op_type == "Add":
                y = X.add_float32(xs[0], xs[1], z1, z2, params[0], params[1], zo)
            else:
                y = X.mul_float32(xs[0], xs[1], z1, z2, params[0], zo)
        stats["saturation"] += _saturated(y, count)
        return torch.clamp(y, lo, hi)
    if op.op_type in ("Relu", "Clip"):
        lo, hi = clamp_bounds(t, [op] + g.acts, y_enc)
        return requantize(t, xs[0], x_encs[0], y_enc, lo, hi, stats, count_bounds(t, [op] + g.acts, y_enc))
    if op.op_type == "Concat":
        parts = [x if (e == y_enc and lo == y_enc.qmin and hi == y_enc.qmax) else
                 requantize(t, x, e, y_enc, lo, hi, stats, count) for x, e in zip(xs, x_encs)]
        return torch.cat(parts, op.attrs["axis"])
    if op.op_type == "GlobalAveragePool":
        return _global_avg(t, xs[0], x_encs[0], y_enc, lo, hi, stats, count)
    if op.op_type == "AveragePool":
        return _avg_pool(t, op, xs[0], x_encs[0], y_enc, lo, hi, stats, count)
    if op.op_type in ("MaxPool", "Flatten", "Reshape"):  # quantized movement output: move, then requantize
        y = _movement(op, {op.inputs[0]: xs[0]})
        if x_encs[0] == y_enc and (lo, hi) == (y_enc.qmin, y_enc.qmax):
            return y
        return requantize(t, y, x_encs[0], y_enc, lo, hi, stats, count)
    raise UnsupportedError(f"node {op.name!r}: {op.op_type} has no exact (integer) implementation")


def _movement(op, vals) -> torch.Tensor:
    x = vals[op.inputs[0]]
    a = op.attrs
    if op.op_type == "MaxPool":
        y = F.max_pool2d(x.to(torch.float64), a["kernel"], a["strides"], a["pads"][:2], a["dilations"],
                         bool(a["ceil_mode"]))
        return y.to(torch.int64)
    if op.op_type == "Flatten":
        return x.flatten(1)
    if op.op_type == "Reshape":
        return x.reshape(a["shape"])
    if op.op_type == "Identity":
        return x
    if op.op_type == "Gather":
        return x.select(a["axis"], a["index"])
    raise UnsupportedError(f"node {op.name!r}: {op.op_type} is not a data-movement op")


def requantize(target, x, src: Encoding, dst: Encoding, lo, hi, stats, count=None) -> torch.Tensor:
    """runtime.ops.quantize_ops.RequantizeStep in torch (``count``: saturation-count bounds, default
    runtime.ops.common.saturation_bounds of the clamp)."""
    from runtime.ops.common import saturation_bounds

    if count is None:
        count = saturation_bounds(dst.qmin, dst.qmax, lo, hi)
    dev = x.device
    if target.arithmetic.requant.form == "fixed_point":
        m, e = quantize_multiplier(float(np.float64(src.scale) / np.float64(dst.scale)))
        rnd = target.arithmetic.requant.rounding
        rnd = "double" if rnd == "int64" else rnd
        y = X.mbqm(x - int(src.zero_point), _i64(m, dev), _i64(e, dev), rnd) + int(dst.zero_point)
        y = torch.clamp(y, X.INT32_MIN, X.INT32_MAX)
    else:
        f = X.dequantize(x, torch.tensor(np.float32(src.scale), device=dev), _i64(src.zero_point, dev))
        y = X.quantize(f, torch.tensor(np.float32(dst.scale), device=dev), _i64(dst.zero_point, dev),
                       X.INT32_MIN, X.INT32_MAX, target.arithmetic.rounding.quantize)
    stats["saturation"] += _saturated(y, count)
    return torch.clamp(y, lo, hi)


def _global_avg(target, x, xe: Encoding, ye: Encoding, lo, hi, stats, count) -> torch.Tensor:
    n = int(np.prod(x.shape[2:]))
    s = x.sum(dim=(2, 3), keepdim=True)
    if target.arithmetic.requant.form == "float32":  # ONNX Runtime QLinearGlobalAveragePool
        acc = s - int(xe.zero_point) * n
        scale = np.float32(np.float32(xe.scale) / np.float32(np.float32(ye.scale) * np.float32(n)))
        r = X.requant_f32(acc, torch.tensor(scale, device=x.device))
        y = torch.clamp(r, X.INT32_MIN - int(ye.zero_point), X.INT32_MAX - int(ye.zero_point)) + int(ye.zero_point)
    else:  # TFLite Mean: 1/n folded into the multiplier
        from runtime.ops.pool import _fold_count

        m, e = quantize_multiplier(float(np.float64(np.float32(xe.scale)) / np.float64(np.float32(ye.scale))))
        m, e = _fold_count(m, e, n)
        rnd = target.arithmetic.elementwise.rounding or "double"
        y = X.mbqm(s - int(xe.zero_point) * n, _i64(m, x.device), _i64(e, x.device), rnd) + int(ye.zero_point)
    stats["saturation"] += _saturated(y, count)
    return torch.clamp(y, lo, hi)


def _avg_pool(target, op, x, xe: Encoding, ye: Encoding, lo, hi, stats, count) -> torch.Tensor:
    a = op.attrs
    kh, kw = a["kernel"]
    sh, sw = a["strides"]
    pt, pl, pb, pr = a["pads"]
    n, c, h, w = x.shape

    def out_size(size, k, s, p0, p1):
        o = (-(-(size + p0 + p1 - k) // s) if a["ceil_mode"] else (size + p0 + p1 - k) // s) + 1
        if a["ceil_mode"] and (o - 1) * s >= size + p0:
            o -= 1
        return o

    oh, ow = out_size(h, kh, sh, pt, pb), out_size(w, kw, sw, pl, pr)
    eh = max(0, (oh - 1) * sh + kh - (h + pt + pb))  # ceil-mode overhang: never counted
    ew = max(0, (ow - 1) * sw + kw - (w + pl + pr))
    zx = int(xe.zero_point)
    if target.arithmetic.requant.form == "float32":  # ONNX Runtime's float path, float32 sum in tap order
        f = (x - zx).to(torch.float32) * float(np.float32(xe.scale))
        fp = F.pad(f, (pl, pr + ew, pt, pb + eh))
        ones = F.pad(torch.ones_like(f), (pl, pr + ew, pt, pb + eh))
        acc = torch.zeros((n, c, oh, ow), dtype=torch.float32, device=x.device)
        cnt = torch.zeros((n, c, oh, ow), dtype=torch.float32, device=x.device)
        for i in range(kh):
            for j in range(kw):
                sl = (slice(None), slice(None), slice(i, i + (oh - 1) * sh + 1, sh), slice(j, j + (ow - 1) * sw + 1, sw))
                acc = acc + fp[sl]
                cnt = cnt + ones[sl]
        if a["count_include_pad"]:  # as ONNX Runtime: the full window
            cnt = torch.full_like(cnt, float(kh * kw))
        avg = acc / cnt
        y = X.quantize(avg, torch.tensor(np.float32(ye.scale), device=x.device), _i64(ye.zero_point, x.device),
                       ye.qmin, ye.qmax, "half_to_even")
        return torch.clamp(y, lo, hi)
    xc = (x - zx).to(torch.float64)
    xp = F.pad(xc, (pl, pr + ew, pt, pb + eh))
    ones = F.pad(torch.ones_like(xc), (pl, pr + ew, pt, pb + eh))
    decl = F.pad(F.pad(torch.ones_like(xc), (pl, pr, pt, pb), value=1.0), (0, ew, 0, eh))
    s = F.avg_pool2d(xp, (kh, kw), (sh, sw), 0, divisor_override=1).round().to(torch.int64)
    cnt = F.avg_pool2d(decl if a["count_include_pad"] else ones, (kh, kw), (sh, sw), 0,
                       divisor_override=1).round().to(torch.int64)
    v = zx + X.round_div(s, torch.clamp(cnt, min=1), target.arithmetic.rounding.average_pool)
    v = torch.where(cnt > 0, v, torch.full_like(v, zx))
    if xe == ye and (lo, hi) == (ye.qmin, ye.qmax):
        return v
    return requantize(target, v, xe, ye, lo, hi, stats, count)
