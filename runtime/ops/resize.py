"""Resize (mode "nearest", opsets 10-19) and Upsample (opsets 7/9, "nearest"): data movement.

The output is a gather of input pixels, so it keeps the input's integer values and encoding; a
QuantizeLinear after it with a different encoding becomes a requantization (plan_quantize), exactly as
for the other movement ops. Only 4-D NCHW tensors resized on H and W are accepted (scales 1 on N, C).

Index maps (one per resized axis, computed once per input H, W at plan time when the graph declares
them, else on the first run) follow ONNX Runtime's ``UpsampleBase`` (``upsamplebase.h``,
``upsample.cc`` ``UpsampleNearestSetupInputMappings``), in float32 like it:

- scales: ``out = int64(f32(scale * in))``; sizes: ``out = sizes``, ``scale = f32(out) / f32(in)``;
  opset 18+: ``axes`` and ``keep_aspect_ratio_policy`` (``not_larger``/``not_smaller`` take the
  min/max scale over the resized axes and ``out = round_half_away(f32(scale * in))``).
- an axis whose scale is exactly 1 maps i -> i (no coordinate transformation);
- original coordinate ``o`` of output index ``i`` (float32):
  half_pixel ``(i + 0.5) / s - 0.5``; asymmetric ``i / s``; pytorch_half_pixel ``out > 1 ?
  (i + 0.5) / s - 0.5 : 0``; tf_half_pixel_for_nn ``(i + 0.5) / s``; align_corners ``out == 1 ? 0 :
  i * (in - 1) / (out - 1)``; half_pixel_symmetric (opset 19) as ONNX Runtime forms it;
- nearest pixel: round_prefer_floor (ties toward -inf for positive ``o``, otherwise C ``round``),
  round_prefer_ceil (C ``round``), floor, ceil; opsets before 11 (Resize-10, Upsample): ``ceil(o)``
  when downsampling (``s < 1``), else ``trunc(o)``; then clamped to ``[0, in - 1]``.

tf_crop_and_resize (extrapolation with a float value) and the linear/cubic modes are refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import HwsimError
from ..plan import Planner, Val, planner_op
from ..program import LayerStats, Step

COORDINATE_MODES = ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                    "half_pixel_symmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")
_HALF = np.float32(0.5)


def original_coordinates(out_len: int, in_len: int, scale: np.float32, mode: str) -> np.ndarray:
    """float32 source coordinates of output indices ``0..out_len-1`` (ONNX Runtime's formulas).

    >>> original_coordinates(4, 2, np.float32(2.0), "half_pixel").tolist()
    [-0.25, 0.25, 0.75, 1.25]
    >>> original_coordinates(3, 5, np.float32(0.6), "align_corners").tolist()
    [0.0, 2.0, 4.0]
    """
    s = np.float32(scale)
    i = np.arange(out_len, dtype=np.float32)
    f_out, f_in = np.float32(out_len), np.float32(in_len)
    if mode == "asymmetric":
        return i / s
    if mode == "half_pixel":
        return (i + _HALF) / s - _HALF
    if mode == "pytorch_half_pixel":
        return (i + _HALF) / s - _HALF if out_len > 1 else np.zeros(out_len, np.float32)
    if mode == "tf_half_pixel_for_nn":
        return (i + _HALF) / s
    if mode == "align_corners":
        if out_len == 1:
            return np.zeros(1, np.float32)
        return i * (f_in - np.float32(1)) / (f_out - np.float32(1))
    if mode == "half_pixel_symmetric":
        adjustment = f_out / np.float32(s * f_in)
        offset = np.float32((f_in / np.float32(2)) * (np.float32(1) - adjustment))
        return (np.float64(offset) + (i.astype(np.float64) + 0.5) / np.float64(s) - 0.5).astype(np.float32)
    raise HwsimError(f"coordinate_transformation_mode {mode!r} is not supported; expected one of {COORDINATE_MODES}")


def _c_round(o: np.ndarray) -> np.ndarray:
    """C ``round``: half away from zero (exact: float32 -> float64, |o| + 0.5 is exact)."""
    o = o.astype(np.float64)
    return np.sign(o) * np.floor(np.abs(o) + 0.5)


def nearest_pixels(o: np.ndarray, mode: str, downsampling: bool) -> np.ndarray:
    """Integer source pixel of each float32 coordinate (before clamping), ONNX Runtime's rules.

    >>> nearest_pixels(np.float32([0.5, 1.5, 2.5, -0.5, 1.2]), "round_prefer_floor", False).tolist()
    [0, 1, 2, -1, 1]
    >>> nearest_pixels(np.float32([0.5, 1.5, -0.5]), "round_prefer_ceil", False).tolist()
    [1, 2, -1]
    """
    o = np.asarray(o, np.float32)
    o64 = o.astype(np.float64)
    if mode == "round_prefer_floor":
        tie = o == (np.trunc(o64) + 0.5).astype(np.float32)
        r = np.where(tie, np.floor(o64), _c_round(o))
    elif mode == "round_prefer_ceil":
        r = _c_round(o)
    elif mode == "floor":
        r = np.floor(o64)
    elif mode == "ceil":
        r = np.ceil(o64)
    elif mode == "simple":
        r = np.ceil(o64) if downsampling else np.trunc(o64)
    else:
        raise HwsimError(f"nearest_mode {mode!r} is not supported; expected one of {NEAREST_MODES[:4]}")
    return r.astype(np.int64)


def index_map(in_len: int, out_len: int, scale: np.float32, coord_mode: str, nearest_mode: str) -> np.ndarray:
    """Source index (clamped to ``[0, in_len - 1]``) of every output index along one axis.

    >>> index_map(2, 4, np.float32(2.0), "half_pixel", "round_prefer_floor").tolist()
    [0, 0, 1, 1]
    >>> index_map(4, 2, np.float32(0.5), "asymmetric", "simple").tolist()
    [0, 2]
    """
    if np.float32(scale) == np.float32(1.0):
        return np.minimum(np.arange(out_len, dtype=np.int64), in_len - 1)
    o = original_coordinates(out_len, in_len, scale, coord_mode)
    idx = nearest_pixels(o, nearest_mode, bool(np.float32(scale) < np.float32(1.0)))
    return np.clip(idx, 0, in_len - 1)


@dataclass
class ResizeSpec:
    """Plan-time description of one Resize/Upsample: how H and W are resized."""

    scales: tuple | None  # (s_h, s_w) float32, or None when sizes are given
    sizes: tuple | None  # (out_h, out_w)
    policy: str
    coord_mode: str
    nearest_mode: str
    nc: tuple = (None, None)  # sizes given for N and C: they must equal the input's (no resizing there)

    def maps(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        if self.sizes is not None:
            outs = list(self.sizes)
            scales = [np.float32(np.float32(o) / np.float32(i)) for o, i in zip(outs, (h, w))]
            if self.policy != "stretch":
                pick = min if self.policy == "not_larger" else max
                s = pick(scales)
                scales = [s, s]
                outs = [int(_c_round(np.float32([np.float32(s * np.float32(i))]))[0]) for i in (h, w)]
        else:
            scales = [np.float32(s) for s in self.scales]
            outs = [int(np.float32(s * np.float32(i))) for s, i in zip(scales, (h, w))]
        return tuple(index_map(i, o, s, self.coord_mode, self.nearest_mode) for i, o, s in zip((h, w), outs, scales))


@dataclass
class ResizeStep(Step):
    spec: ResizeSpec = None
    maps: dict = field(default_factory=dict)  # (H, W) -> (row map, column map), computed once per input size

    def compute(self, x, stats: LayerStats):
        if x.ndim != 4:
            raise HwsimError(f"Resize expects a 4-D NCHW input, found shape {x.shape}")
        for a, n in enumerate(self.spec.nc):
            if n is not None and x.shape[a] != n:
                raise HwsimError(f"Resize sizes ask for {n} along axis {a} of an input of shape {x.shape}; only H and "
                                 "W may be resized")
        key = (int(x.shape[2]), int(x.shape[3]))
        m = self.maps.get(key)
        if m is None:
            m = self.maps[key] = self.spec.maps(*key)
        rows, cols = m
        return (np.ascontiguousarray(x[:, :, rows[:, None], cols[None, :]]),)


def _node_opset(p: Planner, node) -> int:
    return int(p.graph.opsets.get("", 11))


def _hw_values(p: Planner, node, values: np.ndarray, what: str, axes, rank: int = 4) -> dict:
    """{axis: value} of a scales or sizes input for a 4-D input (``axes``: opset 18+ attribute)."""
    v = np.asarray(values).reshape(-1)
    if axes is not None:
        axes = [int(a) % rank for a in axes]
        if len(axes) != v.size:
            raise p.bad(node, f"{what} has {v.size} entries for {len(axes)} axes {axes}")
        full = {a: x for a, x in zip(axes, v)}
    else:
        if v.size != rank:
            raise p.refuse(node, f"{what} has {v.size} entries; the integer Resize supports 4-D NCHW inputs only")
        full = dict(enumerate(v))
    return full


def _spec(p: Planner, node) -> ResizeSpec:
    opset = _node_opset(p, node)
    mode = node.attr("mode", "nearest")
    if mode != "nearest":
        raise p.refuse(node, f"mode {mode!r} interpolates between pixels; only mode 'nearest' is data movement "
                       "and runs in integers")
    upsample = node.op_type == "Upsample"
    if upsample or opset < 11:
        coord_mode, nearest_mode = "asymmetric", "simple"
    else:
        coord_mode = node.attr("coordinate_transformation_mode", "half_pixel")
        nearest_mode = node.attr("nearest_mode", "round_prefer_floor")
    if coord_mode == "tf_crop_and_resize":
        raise p.refuse(node, "coordinate_transformation_mode 'tf_crop_and_resize' extrapolates with a float value; "
                       "not supported on integer tensors")
    if coord_mode not in COORDINATE_MODES:
        raise p.bad(node, f"unknown coordinate_transformation_mode {coord_mode!r}")
    if not (upsample or opset < 11) and nearest_mode not in NEAREST_MODES[:4]:
        raise p.bad(node, f"unknown nearest_mode {nearest_mode!r}; expected one of {list(NEAREST_MODES[:4])}")
    if int(node.attr("antialias", 0)):
        raise p.refuse(node, "antialias=1 applies to linear/cubic modes only (ONNX Runtime rejects it with nearest)")
    policy = node.attr("keep_aspect_ratio_policy", "stretch") if opset >= 18 else "stretch"
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise p.bad(node, f"unknown keep_aspect_ratio_policy {policy!r}")
    axes = node.attr("axes") if opset >= 18 else None

    scales = sizes = None
    if upsample and node.input(1) is None:  # Upsample-7: scales attribute
        scales = node.attr("scales")
        if scales is None:
            raise p.bad(node, "Upsample needs scales")
    elif upsample or opset < 11:
        scales = p.const(node, 1, "scales")
    else:
        sc = p.const(node, 2, "scales") if node.input(2) is not None else None
        sz = p.const(node, 3, "sizes") if node.input(3) is not None else None
        if sc is not None and sc.size > 0:
            scales = sc
        elif sz is not None and sz.size > 0:
            sizes = sz
        else:
            raise p.bad(node, "Resize needs non-empty scales or sizes")
        if scales is not None and sz is not None and sz.size > 0:
            raise p.bad(node, "Resize takes scales or sizes, not both")
    if scales is not None:
        full = _hw_values(p, node, np.asarray(scales, np.float32), "scales", axes)
        for a in (0, 1):
            if a in full and np.float32(full[a]) != np.float32(1.0):
                raise p.refuse(node, f"scale {float(full[a])} on axis {a}: only H and W (axes 2, 3) of an NCHW "
                               "tensor may be resized")
        hw = tuple(np.float32(full.get(a, 1.0)) for a in (2, 3))
        if min(hw) <= 0 or not all(np.isfinite(hw)):
            raise p.bad(node, f"scales must be finite and > 0, found {[float(s) for s in hw]}")
        return ResizeSpec(hw, None, "stretch", coord_mode, nearest_mode)  # the policy applies to sizes only
    full = _hw_values(p, node, np.asarray(sizes, np.int64), "sizes", axes)
    if 2 not in full or 3 not in full:
        raise p.refuse(node, "sizes must give the output H and W")
    if policy != "stretch" and (axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]):
        raise p.refuse(node, f"keep_aspect_ratio_policy {policy!r} over all axes may resize N and C; give axes [2, 3]")
    hw = (int(full[2]), int(full[3]))
    if min(hw) < 1:
        raise p.bad(node, f"sizes must be positive, found {list(hw)}")
    nc = (int(full[0]) if 0 in full else None, int(full[1]) if 1 in full else None)
    return ResizeSpec(None, hw, policy, coord_mode, nearest_mode, nc)


def _input_shape(p: Planner, name: str):
    vi = p.graph.value_info.get(name)
    if vi is None or vi.shape is None or len(vi.shape) != 4 or not all(isinstance(d, int) for d in vi.shape):
        return None
    return vi.shape


@planner_op("Resize", "Upsample")
def plan_resize(p: Planner, node):
    x = p.val(node, node.inputs[0])
    spec = _spec(p, node)
    out = node.outputs[0]
    if x.kind == "float":
        raise p.refuse(node, f"input {node.inputs[0]!r} is a float tensor; Resize runs on quantized tensors "
                       "(insert QuantizeLinear/DequantizeLinear)")
    if x.enc is not None and not x.enc.is_per_tensor and getattr(x.enc.granularity, "axis", None) not in (0, 1):
        raise p.refuse(node, "the input's encoding varies along a resized axis")
    step = ResizeStep(node.name, node.op_type, (x.name,), (out,), spec=spec)
    if x.kind in ("const", "qconst"):
        if np.ndim(x.const) != 4:
            raise p.refuse(node, f"Resize supports 4-D NCHW inputs only, found a {np.ndim(x.const)}-D constant")
        (y,) = step.compute(np.asarray(x.const), stats=LayerStats(node.op_type))
        p.set(out, Val(x.kind, out, x.enc, const=y))
        return
    shape = _input_shape(p, node.inputs[0]) or _input_shape(p, x.name)  # a DQ view: its integer tensor's shape
    vi = p.graph.value_info.get(node.inputs[0])
    if vi is not None and vi.shape is not None and len(vi.shape) != 4:
        raise p.refuse(node, f"Resize supports 4-D NCHW inputs only, found a {len(vi.shape)}-D input")
    if shape is not None:
        try:
            step.maps[(shape[2], shape[3])] = spec.maps(shape[2], shape[3])
        except HwsimError as e:
            raise p.bad(node, str(e)) from None
    p.emit(step)
    p.set(out, Val(x.kind, out, x.enc))
