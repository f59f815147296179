"""AIMET encodings files: read versions 0.6.1, 1.0.0, 2.0.0 (and 2.1.0), write 0.6.1, 1.0.0, 2.0.0.

AIMET (Qualcomm's quantization toolkit) exports a JSON file of *encodings* next to a float model;
QNN and our runtime consume it. The file formats (AIMET's ``encoding_spec.rst``, facts only):

- **0.6.1**: ``{"version": "0.6.1", "activation_encodings": {tensor: [entry, ...]},
  "param_encodings": {...}, "excluded_layers": [...], "quantizer_args": {...}}``; an entry is
  ``{"bitwidth", "dtype": "int", "is_symmetric": "True"|"False" (strings), "max", "min", "offset",
  "scale"}``, one per channel (a list of one entry is per tensor). ``{"bitwidth", "dtype": "float"}``
  keeps the tensor in float.
- **1.0.0** (our default): the two sections are lists of ``{"name", "dtype": "INT"|"FLOAT",
  "enc_type": "PER_TENSOR"|"PER_CHANNEL"|"PER_BLOCK"|"LPBQ", "bw", "is_sym" (bool),
  "scale": [...], "offset": [...], "block_size"?}``; LPBQ adds ``"compressed_bw"`` and
  ``"per_block_int_scale"`` (block scale = per-channel ``scale`` x integer block scale).
- **2.0.0**: ``{"version": "2.0.0", "encodings": [{"name", "output_dtype": "int8"|"uint8"|...,
  "y_scale", "y_zero_point"?, "axis"?, "block_size"?}]}``: the inputs of ONNX QuantizeLinear, with
  signed zero points and explicit axes; LPBQ as ``per_block_int_scale`` x ``per_channel_float_scale``.
  2.1.0 adds a *meta* ``y_scale`` ``{"x", "x_scale", "x_zero_point"?, "axis"?}`` (effective scale
  ``(x - x_zero_point) * x_scale``), read here for integer ``x``.

The sign convention at the boundary (the only place where AIMET's ``offset`` exists, STYLE.md 10):
AIMET always thinks on the unsigned grid ``[0, 2^bw - 1]`` with ``real = scale * (q_u + offset)``, so
``offset = -zero_point_on_the_unsigned_grid``. Mapping an entry of 0.6.1/1.0.0 (bit width ``b``):

============================  ========================================================
AIMET                         canonical :class:`~runtime.encoding.Encoding`
============================  ========================================================
is_sym, offset -2^(b-1)       int{b}, zero point 0, full range, symmetric
is_sym, offset -(2^(b-1)-1)   int{b}, zero point 0, range [-(2^(b-1)-1), 2^(b-1)-1] (strict)
is_sym, offset 0              uint{b}, zero point 0, symmetric (AIMET's unsigned symmetric)
is_sym, offsets 0 and -2^b-1  uint{b}, zero point -offset per channel, not symmetric (mixed
                              unsigned-symmetric channels)
not is_sym, offset o          uint{b}, zero point -o (must lie in [0, 2^b - 1])
============================  ========================================================

Any other symmetric offset is an error. What 0.6.1/1.0.0 cannot say: the signedness of an
asymmetric encoding (it reads back unsigned; :func:`with_storage` re-expresses the same grid in the
signed type, ``zero_point - 2^(b-1)``), the channel axis (per-channel entries read back as
``PerAxis(0)``; the op decides the real axis, :func:`with_axis`), and, for per-block entries, the
tensor's shape (they read back as :class:`FlatBlocks`, made into an Encoding by
:meth:`FlatBlocks.to_encoding` once the weight's shape and axes are known). 2.0.0 stores neither a
symmetry flag nor a narrow range: an entry reads back symmetric iff it is signed with zero point 0,
with its dtype's full range. Bit widths other than 4, 8, 16 and 32 (AIMET allows 2..32) are refused:
hwsim stores 4, 8, 16 and 32-bit integers. ``min``/``max`` of 0.6.1 are written as
``scale * (qmin - zp)``/``scale * (qmax - zp)`` and read only for their type: scale and offset are
authoritative.

>>> from runtime.encoding import encoding_from_range
>>> e = encoding_from_range(-1.0, 3.0, "uint8", "asymmetric")
>>> f = EncodingsFile(activations={"x": e}, params={})
>>> d = to_dict(f, "1.0.0"); d["activation_encodings"][0]["offset"], d["activation_encodings"][0]["is_sym"]
([-64], False)
>>> read_encodings(d).activations["x"] == e
True
>>> to_dict(f, "0.6.1")["activation_encodings"]["x"][0]["is_symmetric"]
'False'
>>> to_dict(f, "2.0.0")["encodings"][0]["y_zero_point"]
64
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_text
from .dtypes import QTYPES, QType, qtype, qtype_for
from .encoding import Encoding, PerAxis, PerBlock, PerTensor
from .errors import EncodingError, HwsimError

__all__ = [
    "VERSIONS", "DEFAULT_VERSION", "EncodingsFile", "FlatBlocks", "read_encodings", "write_encodings",
    "to_dict", "with_axis", "with_storage",
]

VERSIONS = ("0.6.1", "1.0.0", "2.0.0")  # written; read also: 0.5.0 (0.6.1 without quantizer_args), 2.1.0
DEFAULT_VERSION = "1.0.0"
_READ_VERSIONS = ("0.5.0", "0.6.1", "1.0.0", "2.0.0", "2.1.0")
_BITS = (4, 8, 16, 32)
_V2_DTYPES = ("int4", "uint4", "int8", "uint8", "int16", "uint16", "int32")


# ---------------------------------------------------------------------------------------------
# data model
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FlatBlocks:
    """A per-block encoding as AIMET 1.0.0 stores it: flattened scales and zero points, no shape.

    AIMET's layout: an array of the weight's rank with ``C`` (output channels) on the channel axis,
    ``n_blocks`` on the block (input channel) axis and 1 elsewhere, flattened in C order. The ONNX
    blocked layout (the weight's shape with ``ceil(n / block_size)`` on the blocked axis) flattened in
    C order is accepted too; for 2-D weights the two coincide.
    """

    scale: np.ndarray  # 1-D float32
    zero_point: np.ndarray  # 1-D int64
    dtype: QType
    block_size: int
    qmin: int
    qmax: int
    symmetric: bool

    def to_encoding(self, shape: tuple[int, ...], channel_axis: int, block_axis: int, what: str = "tensor") -> Encoding:
        """The :class:`~runtime.encoding.Encoding` (``PerBlock(block_axis, block_size)``, ONNX layout)
        of a tensor of ``shape`` whose channels lie along ``channel_axis``.

        >>> fb = FlatBlocks(np.float32([1, 2, 3, 4, 5, 6]), np.zeros(6, np.int64), qtype("int4"), 2, -8, 7, True)
        >>> fb.to_encoding((3, 4), 0, 1).scale        # [C=3, n_blocks=2]
        array([[1., 2.],
               [3., 4.],
               [5., 6.]], dtype=float32)
        >>> fb.to_encoding((4, 3), 1, 0).scale        # MatMul weight [K=4, N=3]: blocks outer
        array([[1., 2., 3.],
               [4., 5., 6.]], dtype=float32)
        """
        shape = tuple(int(d) for d in shape)
        nd = len(shape)
        ch, blk = channel_axis % nd, block_axis % nd
        if ch == blk:
            raise EncodingError(f"{what}: channel axis and block axis are both {ch}")
        nb = -(-shape[blk] // self.block_size)
        onnx_shape = tuple(nb if i == blk else d for i, d in enumerate(shape))
        aimet_shape = tuple(shape[ch] if i == ch else nb if i == blk else 1 for i in range(nd))
        n = self.scale.size
        if n == math.prod(aimet_shape):
            s = np.broadcast_to(self.scale.reshape(aimet_shape), onnx_shape)
            z = np.broadcast_to(self.zero_point.reshape(aimet_shape), onnx_shape)
        elif n == math.prod(onnx_shape):
            s, z = self.scale.reshape(onnx_shape), self.zero_point.reshape(onnx_shape)
        else:
            raise EncodingError(f"{what} of shape {shape}: the per-block encoding has {n} scales, expected "
                                f"{math.prod(aimet_shape)} ({shape[ch]} channels x {nb} blocks of {self.block_size}) "
                                f"or {math.prod(onnx_shape)} (ONNX blocked layout {onnx_shape})")
        return Encoding(np.ascontiguousarray(s), np.ascontiguousarray(z), self.dtype, PerBlock(blk, self.block_size),
                        self.qmin, self.qmax, self.symmetric)

    def __eq__(self, other):
        if not isinstance(other, FlatBlocks):
            return NotImplemented
        return (self.dtype, self.block_size, self.qmin, self.qmax, self.symmetric) == \
            (other.dtype, other.block_size, other.qmin, other.qmax, other.symmetric) \
            and np.array_equal(self.scale, other.scale) and np.array_equal(self.zero_point, other.zero_point)

    __hash__ = None


@dataclass
class EncodingsFile:
    """The content of an AIMET encodings file in canonical form.

    ``activations``/``params``: tensor name -> Encoding (params may hold :class:`FlatBlocks`).
    ``floats``: tensors AIMET keeps in float (``dtype`` float), name -> (section, bit width).
    ``unsplit``: 2.0.0 entries, which do not say activation or parameter: :meth:`split` sorts them
    by the model's initializers. ``axes_known``: False for 0.6.1/1.0.0, whose per-channel entries
    carry a placeholder ``PerAxis(0)``.
    """

    activations: dict[str, Encoding]
    params: dict[str, Any]
    excluded: list[str] = field(default_factory=list)
    version: str = DEFAULT_VERSION
    quantizer_args: dict[str, Any] = field(default_factory=dict)
    floats: dict[str, tuple[str, int]] = field(default_factory=dict)
    unsplit: dict[str, Encoding] = field(default_factory=dict)
    axes_known: bool = True
    source: str = "<encodings>"

    def all(self) -> dict[str, Any]:
        """Every encoding by tensor name (activations, params and unsplit 2.0.0 entries)."""
        return {**self.activations, **self.params, **self.unsplit}

    def split(self, param_names) -> "EncodingsFile":
        """Move unsplit (2.0.0) entries naming a tensor in ``param_names`` (the model's initializers
        and constants) to ``params`` and the rest to ``activations``."""
        if not self.unsplit:
            return self
        names = set(param_names)
        acts, params = dict(self.activations), dict(self.params)
        for k, e in self.unsplit.items():
            (params if k in names else acts)[k] = e
        return replace(self, activations=acts, params=params, unsplit={})


def with_axis(enc: Encoding, axis: int) -> Encoding:
    """The same per-axis encoding along ``axis`` (per-tensor and per-block encodings pass through).

    >>> with_axis(Encoding([0.1, 0.2], 0, "int8", PerAxis(0), symmetric=True), 1).granularity
    PerAxis(axis=1)
    """
    if not isinstance(enc.granularity, PerAxis):
        return enc
    return Encoding(enc.scale, enc.zero_point, enc.dtype, PerAxis(axis), enc.qmin, enc.qmax, enc.symmetric)


def with_storage(enc: Encoding, dtype: str | QType) -> Encoding:
    """The same quantization grid stored in ``dtype``, the other signedness of the same width:
    every integer shifts by ``dtype.qmin - enc.dtype.qmin`` (uint8 -> int8: -128), so
    ``scale * (q - zero_point)`` is unchanged. ``symmetric`` is kept when the shifted zero point is
    still a symmetric one.

    >>> e = Encoding(0.5, 131, "uint8")
    >>> s = with_storage(e, "int8"); int(s.zero_point), (s.qmin, s.qmax)
    (3, (-128, 127))
    >>> with_storage(s, "uint8") == e
    True
    """
    t = qtype(dtype)
    if t == enc.dtype:
        return enc
    if t.bits != enc.dtype.bits:
        raise EncodingError(f"cannot store a {enc.dtype} encoding as {t}: the widths differ")
    shift = t.qmin - enc.dtype.qmin
    zp = enc.zero_point + shift
    sym = enc.symmetric and bool(np.all(zp == (0 if t.signed else 1 << (t.bits - 1))))
    return Encoding(enc.scale, zp, t, enc.granularity, enc.qmin + shift, enc.qmax + shift, sym)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
class _Ctx:
    """Names the file, section and tensor in every error."""

    def __init__(self, source: str):
        self.source = source

    def error(self, where: str, msg: str) -> EncodingError:
        return EncodingError(f"{self.source}: {where}: {msg}")


def _describe(v) -> str:
    t = repr(v)
    return (t[:57] + "...") if len(t) > 60 else t


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_value(ctx, where, key, v) -> int:
    """An integer; integral floats (e.g. ``-114.0`` in older files) are accepted."""
    if _is_int(v):
        return v
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v)
    raise ctx.error(where, f"field {key!r}: expected an integer, found {_describe(v)}")


def _bool_value(ctx, where, key, v, strings: bool) -> bool:
    if isinstance(v, bool):
        return v
    if strings and v in ("True", "False"):
        return v == "True"
    want = "\"True\"/\"False\" (or true/false)" if strings else "true or false"
    raise ctx.error(where, f"field {key!r}: expected {want}, found {_describe(v)}")


def _check_keys(ctx, where, d, required, optional=()):
    if not isinstance(d, dict):
        raise ctx.error(where, f"expected an object (dict), found {_describe(d)}")
    missing = [k for k in required if k not in d]
    if missing:
        raise ctx.error(where, f"missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    unknown = sorted(set(d) - set(required) - set(optional))
    if unknown:
        raise ctx.error(where, f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                        f"expected {sorted(set(required) | set(optional))}")


def _scales(ctx, where, key, values) -> np.ndarray:
    """A non-empty flat list of finite, positive numbers as float32 (checked before and after the
    float32 conversion: a tiny float64 may round to 0)."""
    if not isinstance(values, list) or not values:
        raise ctx.error(where, f"field {key!r}: expected a non-empty list of numbers, found {_describe(values)}")
    for i, v in enumerate(values):
        if not _is_num(v) or not math.isfinite(v) or v <= 0:
            raise ctx.error(where, f"field {key!r}[{i}]: scale must be a finite number > 0, found {_describe(v)}")
    with np.errstate(over="ignore", under="ignore"):
        s = np.asarray(values, dtype=np.float64).astype(np.float32)
    bad = ~(np.isfinite(s) & (s > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ctx.error(where, f"field {key!r}[{i}]: scale {values[i]!r} is not a positive normal float32")
    return s


def _bits(ctx, where, key, v) -> int:
    b = _int_value(ctx, where, key, v)
    if b not in _BITS:
        hint = " (AIMET allows 2..32)" if 2 <= b <= 32 else ""
        raise ctx.error(where, f"field {key!r}: bit width {b} is not supported{hint}; hwsim stores 4, 8, 16 or "
                        "32-bit integers")
    return b


def _from_offsets(ctx, where, bits: int, is_sym: bool, scale: np.ndarray, offsets: list[int]) -> Encoding:
    """The canonical encoding of AIMET (bit width, is_sym, scales, offsets); see the module table."""
    for k, v in enumerate(offsets):
        if abs(v) > 1 << 62:  # before the int64 array: any Python int may come in
            raise ctx.error(where, f"field 'offset'[{k}]: offset {v} is far outside a {bits}-bit grid "
                            f"(expected {-((1 << bits) - 1)} <= offset <= 0)")
    o = np.asarray(offsets, dtype=np.int64)
    half = 1 << (bits - 1)
    gran = PerTensor() if scale.size == 1 and o.size == 1 else PerAxis(0)
    if gran == PerTensor():
        scale, o = scale.reshape(()), o.reshape(())
    if is_sym:
        if np.all(o == -half):
            t = qtype_for(bits, True)
            return Encoding(scale, 0, t, gran, t.qmin, t.qmax, symmetric=True)
        if np.all(o == -(half - 1)):
            t = qtype_for(bits, True)
            return Encoding(scale, 0, t, gran, -(half - 1), half - 1, symmetric=True)
        if np.all(o == 0):
            t = qtype_for(bits, False)
            return Encoding(scale, 0, t, gran, t.qmin, t.qmax, symmetric=True)
        if np.all((o == 0) | (o == -half)):
            t = qtype_for(bits, False)
            return Encoding(scale, -o, t, gran, t.qmin, t.qmax, symmetric=False)
        bad = sorted(set(o.reshape(-1).tolist()) - {0, -half, -(half - 1)})[:4]
        raise ctx.error(where, f"field 'offset': a symmetric {bits}-bit encoding has offset {-half} (signed), "
                        f"{-(half - 1)} (strict) or 0 (unsigned); found {bad}")
    t = qtype_for(bits, False)
    zp = -o
    out = (zp < t.qmin) | (zp > t.qmax)
    if out.any():
        i = int(np.argmax(out.reshape(-1)))
        raise ctx.error(where, f"field 'offset'[{i}]: offset {int(o.reshape(-1)[i])} puts the zero point outside the "
                        f"unsigned {bits}-bit grid [0, {t.qmax}] (expected -{t.qmax} <= offset <= 0)")
    return Encoding(scale, zp, t, gran, t.qmin, t.qmax, symmetric=False)


def _legacy_entries(ctx, section, name, entries):
    """0.6.1: a list of per-channel entries -> Encoding, or ("float", bits)."""
    where = f"{section} {name!r}"
    if not isinstance(entries, list) or not entries:
        raise ctx.error(where, f"expected a non-empty list of encodings (one per channel), found {_describe(entries)}")
    first = entries[0]
    if isinstance(first, dict) and first.get("dtype") == "float":
        if len(entries) != 1:
            raise ctx.error(where, "a float (dtype 'float') encoding has one entry, found %d" % len(entries))
        _check_keys(ctx, where, first, ("bitwidth", "dtype"))
        return ("float", _int_value(ctx, where, "bitwidth", first["bitwidth"]))
    bits_all, sym_all, scales, offsets = [], [], [], []
    for i, d in enumerate(entries):
        w = f"{where}[{i}]"
        _check_keys(ctx, w, d, ("bitwidth", "is_symmetric", "max", "min", "offset", "scale"), ("dtype",))
        if "dtype" in d and d["dtype"] != "int":
            raise ctx.error(w, f"field 'dtype': expected \"int\" or \"float\", found {_describe(d['dtype'])}")
        for k in ("min", "max"):
            if not _is_num(d[k]):
                raise ctx.error(w, f"field {k!r}: expected a number, found {_describe(d[k])}")
        bits_all.append(_bits(ctx, w, "bitwidth", d["bitwidth"]))
        sym_all.append(_bool_value(ctx, w, "is_symmetric", d["is_symmetric"], strings=True))
        scales.append(d["scale"])
        offsets.append(_int_value(ctx, w, "offset", d["offset"]))
    if len(set(bits_all)) > 1 or len(set(sym_all)) > 1:
        raise ctx.error(where, f"per-channel entries disagree: bitwidth {sorted(set(bits_all))}, "
                        f"is_symmetric {sorted(set(sym_all))}")
    return _from_offsets(ctx, where, bits_all[0], sym_all[0], _scales(ctx, where, "scale", scales), offsets)


def _v1_entry(ctx, section, i, d):
    """1.0.0 entry -> (name, Encoding | FlatBlocks | ("float", bits))."""
    where = f"{section}[{i}]"
    if not isinstance(d, dict):
        raise ctx.error(where, f"expected an object (dict), found {_describe(d)}")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise ctx.error(where, f"field 'name': expected a tensor name, found {_describe(name)}")
    where = f"{section} {name!r}"
    dtype = d.get("dtype")
    if dtype == "FLOAT":
        _check_keys(ctx, where, d, ("name", "dtype", "bw"), ("enc_type",))
        return name, ("float", _int_value(ctx, where, "bw", d["bw"]))
    if dtype != "INT":
        raise ctx.error(where, f"field 'dtype': expected \"INT\" or \"FLOAT\", found {_describe(dtype)}")
    kind = d.get("enc_type")
    base = ("name", "dtype", "enc_type", "bw", "is_sym", "scale", "offset")
    if kind in ("PER_TENSOR", "PER_CHANNEL"):
        _check_keys(ctx, where, d, base, ("zero_point_shift",))
    elif kind == "PER_BLOCK":
        _check_keys(ctx, where, d, base + ("block_size",), ("zero_point_shift",))
    elif kind == "LPBQ":
        _check_keys(ctx, where, d, base + ("block_size", "compressed_bw", "per_block_int_scale"), ("zero_point_shift",))
    else:
        raise ctx.error(where, f"field 'enc_type': expected PER_TENSOR, PER_CHANNEL, PER_BLOCK or LPBQ, found "
                        f"{_describe(kind)}")
    if any(v != 0 for v in (d.get("zero_point_shift") or [])):
        raise ctx.error(where, "field 'zero_point_shift': fractional zero points (int2 grids) are not supported")
    is_sym = _bool_value(ctx, where, "is_sym", d["is_sym"], strings=False)
    bits = _int_value(ctx, where, "bw", d["bw"])
    if kind != "LPBQ":
        bits = _bits(ctx, where, "bw", bits)
    scale = _scales(ctx, where, "scale", d["scale"])
    if not isinstance(d["offset"], list):
        raise ctx.error(where, f"field 'offset': expected a list of integers, found {_describe(d['offset'])}")
    offsets = [_int_value(ctx, f"{where} offset[{k}]", "offset", v) for k, v in enumerate(d["offset"])]
    if len(offsets) != scale.size:
        raise ctx.error(where, f"fields 'scale' and 'offset' have different lengths ({scale.size} and {len(offsets)})")
    if kind == "PER_TENSOR" and scale.size != 1:
        raise ctx.error(where, f"field 'scale': a PER_TENSOR encoding has 1 scale, found {scale.size}")
    if kind == "PER_TENSOR" or kind == "PER_CHANNEL":
        enc = _from_offsets(ctx, where, bits, is_sym, scale, offsets)
        if kind == "PER_CHANNEL" and enc.is_per_tensor:  # one output channel
            enc = Encoding(enc.scale.reshape(1), enc.zero_point.reshape(1), enc.dtype, PerAxis(0), enc.qmin, enc.qmax,
                           enc.symmetric)
        return name, enc
    block = _int_value(ctx, where, "block_size", d["block_size"])
    if block < 1:
        raise ctx.error(where, f"field 'block_size': expected a positive integer, found {block}")
    if kind == "PER_BLOCK":
        e = _from_offsets(ctx, where, bits, is_sym, scale, offsets)
        flat = FlatBlocks(e.scale.reshape(-1), e.zero_point.reshape(-1), e.dtype, block, e.qmin, e.qmax, e.symmetric)
        return name, flat
    # LPBQ: integer storage of compressed_bw bits, block scale = per-channel scale x integer block scale
    cbits = _bits(ctx, where, "compressed_bw", d["compressed_bw"])
    if not is_sym or any(o != -(1 << (bits - 1)) for o in offsets):
        raise ctx.error(where, f"an LPBQ encoding is symmetric with offset {-(1 << (bits - 1))} (bw {bits}); found "
                        f"is_sym {is_sym}, offsets {sorted(set(offsets))[:4]}")
    ints = d["per_block_int_scale"]
    if not isinstance(ints, list) or not ints or not all(_is_int(v) and v > 0 for v in ints):
        raise ctx.error(where, "field 'per_block_int_scale': expected a non-empty list of positive integers")
    if len(ints) % scale.size:
        raise ctx.error(where, f"field 'per_block_int_scale': {len(ints)} values are not a whole number of blocks "
                        f"for {scale.size} channels")
    nb = len(ints) // scale.size
    eff = (np.asarray(ints, np.float32).reshape(scale.size, nb) * scale.reshape(-1, 1)).astype(np.float32).reshape(-1)
    t = qtype_for(cbits, True)
    return name, FlatBlocks(eff, np.zeros(eff.size, np.int64), t, block, t.qmin, t.qmax, True)


def _nested(ctx, where, key, v, kind: str) -> np.ndarray:
    """A number or rectangular nested list of numbers (``kind`` 'float' or 'int')."""
    def bad(x):
        if isinstance(x, list):
            return any(bad(y) for y in x)
        return not _is_num(x)
    if bad(v) or (isinstance(v, list) and not v):
        raise ctx.error(where, f"field {key!r}: expected a number or a nested list of numbers, found {_describe(v)}")
    try:
        a = np.asarray(v, dtype=np.float64)
    except ValueError:
        raise ctx.error(where, f"field {key!r}: the nested lists are not rectangular") from None
    if kind == "int":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ctx.error(where, f"field {key!r}: expected integers, found {a.reshape(-1)[:4].tolist()}")
        if np.any(np.abs(a) > 2.0**53):  # beyond float64's integers (and any dtype hwsim stores)
            raise ctx.error(where, f"field {key!r}: integers out of range, found {a.reshape(-1)[:4].tolist()}")
        return a.astype(np.int64)
    if not np.all(np.isfinite(a) & (a > 0)):
        i = int(np.argmax(~(np.isfinite(a) & (a > 0)).reshape(-1)))
        raise ctx.error(where, f"field {key!r}: scale must be finite and > 0, found {a.reshape(-1)[i]!r} at flat index {i}")
    with np.errstate(over="ignore", under="ignore"):
        s = a.astype(np.float32)
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ctx.error(where, f"field {key!r}: a scale is not a positive normal float32")
    return s


def _meta_scale(ctx, where, m) -> np.ndarray:
    """2.1.0 meta encoding: the effective scale ``float32(x - x_zero_point) * x_scale``."""
    _check_keys(ctx, where, m, ("x", "x_scale"), ("x_zero_point", "input_dtype", "axis", "block_size"))
    if "input_dtype" in m and str(m["input_dtype"]).startswith("float"):
        raise ctx.error(where, f"field 'y_scale': float-quantized scales ({m['input_dtype']}) are not supported")
    if "block_size" in m:
        raise ctx.error(where, "field 'y_scale': a blocked meta scale is not supported")
    x = _nested(ctx, where, "y_scale.x", m["x"], "int")
    xs = _nested(ctx, where, "y_scale.x_scale", m["x_scale"], "float")
    xz = _nested(ctx, where, "y_scale.x_zero_point", m.get("x_zero_point", 0), "int")
    try:
        if xs.ndim == 1 and xs.size > 1:
            if "axis" not in m:
                raise ctx.error(where, "field 'y_scale': a per-channel x_scale needs 'axis'")
            a = _int_value(ctx, where, "y_scale.axis", m["axis"])
            if not -x.ndim <= a < x.ndim:
                raise ctx.error(where, f"field 'y_scale.axis': {a} is out of range for the {x.ndim}-D 'x'")
            shape = [1] * x.ndim
            shape[a] = xs.size
            xs = xs.reshape(shape)
            xz = xz.reshape(shape) if xz.ndim else xz
        s = ((x - xz).astype(np.float32) * xs).astype(np.float32)
    except ValueError:  # shapes that do not reshape or broadcast
        raise ctx.error(where, f"field 'y_scale': the shapes of x {x.shape}, x_scale {xs.shape} and x_zero_point "
                        f"{xz.shape} do not fit together") from None
    if not np.all(s > 0):
        raise ctx.error(where, "field 'y_scale': the effective scale (x - x_zero_point) * x_scale must be > 0")
    return s


def _v2_entry(ctx, section, i, d):
    """2.0.0 / 2.1.0 entry -> (name, Encoding)."""
    where = f"{section}[{i}]"
    if not isinstance(d, dict):
        raise ctx.error(where, f"expected an object (dict), found {_describe(d)}")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise ctx.error(where, f"field 'name': expected a tensor name, found {_describe(name)}")
    where = f"{section} {name!r}"
    lpbq = "per_block_int_scale" in d
    if lpbq:
        _check_keys(ctx, where, d, ("name", "output_dtype", "per_block_int_scale", "per_channel_float_scale",
                                    "block_size"), ("y_zero_point", "axis"))
    else:
        _check_keys(ctx, where, d, ("name", "output_dtype", "y_scale"), ("y_zero_point", "axis", "block_size"))
    dt = d["output_dtype"]
    if dt not in _V2_DTYPES:
        raise ctx.error(where, f"field 'output_dtype': {_describe(dt)} is not supported; expected one of "
                        f"{list(_V2_DTYPES)}")
    t = QTYPES[dt]
    if lpbq:
        ints = _nested(ctx, where, "per_block_int_scale", d["per_block_int_scale"], "int")
        pc = _nested(ctx, where, "per_channel_float_scale", d["per_channel_float_scale"], "float")
        if np.any(ints <= 0):
            raise ctx.error(where, "field 'per_block_int_scale': expected positive integers")
        try:
            scale = (ints.astype(np.float32) * pc).astype(np.float32)
        except ValueError:
            raise ctx.error(where, f"fields 'per_block_int_scale' {ints.shape} and 'per_channel_float_scale' "
                            f"{pc.shape} do not broadcast") from None
    elif isinstance(d["y_scale"], dict):
        scale = _meta_scale(ctx, where, d["y_scale"])
    else:
        scale = _nested(ctx, where, "y_scale", d["y_scale"], "float")
    zp = _nested(ctx, where, "y_zero_point", d.get("y_zero_point", 0), "int")
    axis = _int_value(ctx, where, "axis", d["axis"]) if "axis" in d else None
    if "block_size" in d:
        block = _int_value(ctx, where, "block_size", d["block_size"])
        if block < 1 or axis is None or scale.ndim < 1:
            raise ctx.error(where, "a per-block encoding needs 'axis', a positive 'block_size' and a nested 'y_scale'")
        gran = PerBlock(axis, block)
    elif scale.ndim == 0 or (scale.size == 1 and axis is None):
        gran, scale = PerTensor(), scale.reshape(())
        zp = zp.reshape(()) if zp.size == 1 else zp
    else:
        if axis is None:
            raise ctx.error(where, f"field 'axis': {scale.size} scales need the channel axis")
        if scale.ndim != 1:
            raise ctx.error(where, f"field 'y_scale': a per-channel scale is a flat list, found shape {scale.shape}")
        gran = PerAxis(axis)
    if zp.shape != scale.shape and zp.size != 1:
        raise ctx.error(where, f"fields 'y_scale' {scale.shape} and 'y_zero_point' {zp.shape} differ in shape")
    sym = t.signed and bool(np.all(zp == 0))
    try:
        return name, Encoding(scale, zp, t, gran, symmetric=sym)
    except EncodingError as e:
        raise ctx.error(where, str(e)) from None


def _load_json(path_or_dict) -> tuple[dict, str]:
    if isinstance(path_or_dict, dict):
        return path_or_dict, "<encodings dict>"
    from .errors import ResourceError
    from .graph import max_tensor_bytes

    path = Path(path_or_dict)
    try:
        size = path.stat().st_size
        limit = max_tensor_bytes()
        if size > limit:  # refused before reading: JSON takes several times the file's size in memory
            raise ResourceError(f"{path}: the encodings file has {size} bytes, more than the limit of {limit} "
                                "(HWSIM_MAX_TENSOR_BYTES)")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EncodingError(f"{path}: encodings file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EncodingError(f"{path}: cannot read encodings file: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise EncodingError(f"{path}: not valid JSON: {e}") from None
    except RecursionError:
        raise EncodingError(f"{path}: not an encodings file: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise EncodingError(f"{path}: expected a JSON object at the top level, found {type(data).__name__}")
    return data, str(path)


def read_encodings(path_or_dict: str | os.PathLike | dict) -> EncodingsFile:
    """Read an AIMET encodings file (a path, or its parsed JSON), detecting the version from its
    ``version`` field. Errors (:class:`~runtime.errors.EncodingError`) name the file, the section,
    the tensor and the field.

    >>> f = read_encodings({"version": "0.6.1", "activation_encodings": {}, "param_encodings": {"w": [
    ...     {"bitwidth": 8, "dtype": "int", "is_symmetric": "True", "max": 0.127, "min": -0.128,
    ...      "offset": -128, "scale": 0.001}]}})
    >>> e = f.params["w"]; str(e.dtype), int(e.zero_point), e.symmetric
    ('int8', 0, True)
    """
    data, source = _load_json(path_or_dict)
    ctx = _Ctx(source)
    version = data.get("version")
    if version not in _READ_VERSIONS:
        raise ctx.error("field 'version'", f"expected one of {list(_READ_VERSIONS)}, found {_describe(version)}")
    if version in ("2.0.0", "2.1.0"):
        return _read_v2(ctx, data, version)
    legacy = version in ("0.5.0", "0.6.1")
    _check_keys(ctx, "top level", data, ("version", "activation_encodings", "param_encodings"),
                ("excluded_layers", "quantizer_args"))
    excluded = data.get("excluded_layers", [])
    if not isinstance(excluded, list) or not all(isinstance(x, str) for x in excluded):
        raise ctx.error("field 'excluded_layers'", f"expected a list of layer names, found {_describe(excluded)}")
    qargs = data.get("quantizer_args", {})
    if not isinstance(qargs, dict):
        raise ctx.error("field 'quantizer_args'", f"expected an object, found {_describe(qargs)}")
    out = EncodingsFile({}, {}, list(excluded), version, dict(qargs), axes_known=False, source=source)
    for section, target in (("activation_encodings", out.activations), ("param_encodings", out.params)):
        entries = data[section]
        kind = "activation" if section.startswith("activation") else "param"
        if legacy:
            if not isinstance(entries, dict):
                raise ctx.error(f"field {section!r}", f"expected an object of tensor name -> list (version {version}), "
                                f"found {_describe(entries)}")
            items = [(name, _legacy_entries(ctx, section, name, v)) for name, v in entries.items()]
        else:
            if not isinstance(entries, list):
                raise ctx.error(f"field {section!r}", f"expected a list of encodings (version {version}), found "
                                f"{_describe(entries)}")
            items = [_v1_entry(ctx, section, i, d) for i, d in enumerate(entries)]
        for name, e in items:
            if name in out.activations or name in out.params or name in out.floats:
                raise ctx.error(f"{section} {name!r}", "the tensor has more than one encoding in the file")
            if isinstance(e, tuple):
                out.floats[name] = (kind, e[1])
            else:
                target[name] = e
    return out


def _read_v2(ctx, data, version) -> EncodingsFile:
    _check_keys(ctx, "top level", data, ("version",),
                ("encodings", "activation_encodings", "param_encodings", "excluded_layers", "quantizer_args"))
    excluded, qargs = data.get("excluded_layers", []), data.get("quantizer_args", {})
    if not isinstance(excluded, list) or not all(isinstance(x, str) for x in excluded):
        raise ctx.error("field 'excluded_layers'", f"expected a list of layer names, found {_describe(excluded)}")
    if not isinstance(qargs, dict):
        raise ctx.error("field 'quantizer_args'", f"expected an object, found {_describe(qargs)}")
    out = EncodingsFile({}, {}, list(excluded), version, dict(qargs), axes_known=True, source=ctx.source)
    sections = [s for s in ("encodings", "activation_encodings", "param_encodings") if s in data]
    if not sections:
        raise ctx.error("top level", "missing field 'encodings'")
    seen = set()
    for section in sections:
        entries = data[section]
        if not isinstance(entries, list):
            raise ctx.error(f"field {section!r}", f"expected a list of encodings, found {_describe(entries)}")
        dest = {"encodings": out.unsplit, "activation_encodings": out.activations, "param_encodings": out.params}[section]
        for i, d in enumerate(entries):
            name, e = _v2_entry(ctx, section, i, d)
            if name in seen:
                raise ctx.error(f"{section} {name!r}", "the tensor has more than one encoding in the file")
            seen.add(name)
            dest[name] = e
    return out


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _f(x) -> float:
    return float(np.float32(x))


def _aimet_fields(name: str, enc: Encoding) -> tuple[int, bool, list[float], list[int]]:
    """(bit width, is_sym, scales, offsets) of an encoding on AIMET's unsigned grid; the inverse of
    the module table. Raises for what AIMET's 0.6.1/1.0.0 formats cannot express."""
    t = enc.dtype
    b = t.bits
    if b not in _BITS:
        raise EncodingError(f"tensor {name!r}: AIMET's formats hold 4 to 32-bit encodings, found {t}")
    shift = -t.qmin  # to the unsigned grid
    zu = enc.zero_point.reshape(-1) + shift
    lo, hi = enc.qmin + shift, enc.qmax + shift
    full, half = (1 << b) - 1, 1 << (b - 1)
    scales = [float(s) for s in enc.scale.reshape(-1)]
    if enc.symmetric:
        if lo == 0 and hi == full and np.all(zu == half):
            return b, True, scales, [-half] * zu.size
        if lo == 1 and hi == full and np.all(zu == half):
            return b, True, scales, [-(half - 1)] * zu.size  # strict: AIMET's grid [0, 2^b - 2], zero at 2^(b-1)-1
        if lo == 0 and hi == full and np.all(zu == 0):
            return b, True, scales, [0] * zu.size
    if lo != 0 or hi != full:
        raise EncodingError(f"tensor {name!r}: AIMET's formats cannot express the usable range [{enc.qmin}, "
                            f"{enc.qmax}] of this {t} encoding (only the full range, or strict symmetric)")
    return b, False, scales, [-int(z) for z in zu]


def _v1_dict(name, enc) -> dict:
    if isinstance(enc, tuple):  # float
        return {"name": name, "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": enc[1]}
    if isinstance(enc, FlatBlocks):
        enc = Encoding(enc.scale, enc.zero_point, enc.dtype, PerBlock(0, enc.block_size), enc.qmin, enc.qmax,
                       enc.symmetric)
    b, sym, scales, offsets = _aimet_fields(name, enc)
    g = enc.granularity
    kind = "PER_TENSOR" if isinstance(g, PerTensor) else "PER_CHANNEL" if isinstance(g, PerAxis) else "PER_BLOCK"
    d = {"name": name, "dtype": "INT", "enc_type": kind, "bw": b, "is_sym": sym, "scale": scales, "offset": offsets}
    if isinstance(g, PerBlock):
        d["block_size"] = g.block_size
    return d


def _legacy_list(name, enc) -> list[dict]:
    if isinstance(enc, tuple):
        return [{"bitwidth": enc[1], "dtype": "float"}]
    if isinstance(enc, FlatBlocks) or not isinstance(enc.granularity, (PerTensor, PerAxis)):
        raise EncodingError(f"tensor {name!r}: version 0.6.1 has no per-block encodings; write 1.0.0 or 2.0.0")
    if isinstance(enc.granularity, PerAxis) and enc.scale.size == 1:
        raise EncodingError(f"tensor {name!r}: version 0.6.1 cannot tell a one-channel per-channel encoding from a "
                            "per-tensor one; write 1.0.0 or 2.0.0")
    b, sym, scales, offsets = _aimet_fields(name, enc)
    steps = (1 << b) - (2 if offsets and offsets[0] == -((1 << (b - 1)) - 1) and sym else 1)
    return [{"bitwidth": b, "dtype": "int", "is_symmetric": str(sym), "max": float(np.float64(s) * (steps + o)),
             "min": float(np.float64(s) * o), "offset": o, "scale": s} for s, o in zip(scales, offsets)]


def _v2_dict(name, enc) -> dict:
    if isinstance(enc, FlatBlocks):
        raise EncodingError(f"tensor {name!r}: a per-block encoding read from version 1.0.0 needs its weight's shape "
                            "before it can be written as 2.0.0 (FlatBlocks.to_encoding)")
    if enc.dtype.name not in _V2_DTYPES:
        raise EncodingError(f"tensor {name!r}: version 2.0.0 has no output_dtype {enc.dtype}")
    g = enc.granularity
    if isinstance(g, PerTensor):
        d = {"name": name, "output_dtype": enc.dtype.name, "y_scale": _f(enc.scale),
             "y_zero_point": int(enc.zero_point)}
    else:
        d = {"name": name, "output_dtype": enc.dtype.name, "y_scale": enc.scale.astype(np.float64).tolist(),
             "y_zero_point": enc.zero_point.tolist(), "axis": g.axis}
        if isinstance(g, PerBlock):
            d["block_size"] = g.block_size
    return d


def _qargs(args: dict, strings: bool) -> dict:
    """quantizer_args as the version writes them: 0.6.1 has "True"/"False" strings, later real bools."""
    out = {}
    for k, v in args.items():
        if strings and isinstance(v, bool):
            v = str(v)
        elif not strings and v in ("True", "False") and k in ("is_symmetric", "per_channel_quantization"):
            v = v == "True"
        out[k] = v
    return out


def to_dict(file: EncodingsFile, version: str = DEFAULT_VERSION) -> dict:
    """The JSON-ready dict of ``file`` in AIMET format ``version`` (0.6.1, 1.0.0 or 2.0.0).

    2.0.0 has one ``encodings`` list and no float entries (a float tensor simply has no encoding);
    0.6.1/1.0.0 need activations and params told apart, so 2.0.0 entries that were never
    :meth:`~EncodingsFile.split` are an error there.
    """
    if version not in VERSIONS:
        raise EncodingError(f"cannot write encodings version {version!r}; expected one of {list(VERSIONS)}")
    if version == "2.0.0":
        entries = [_v2_dict(k, e) for k, e in file.all().items()]
        return {"version": "2.0.0", "encodings": entries}
    if file.unsplit:
        raise EncodingError(f"{file.source}: version {version} separates activation and parameter encodings; the "
                            "2.0.0 entries " + ", ".join(map(repr, list(file.unsplit)[:4])) +
                            " must first be split by a model (EncodingsFile.split)")
    floats = {k: v for k, v in file.floats.items()}
    acts = {**file.activations, **{k: v for k, v in floats.items() if v[0] == "activation"}}
    params = {**file.params, **{k: v for k, v in floats.items() if v[0] == "param"}}
    if version == "0.6.1":
        d = {"version": "0.6.1",
             "activation_encodings": {k: _legacy_list(k, e) for k, e in acts.items()},
             "param_encodings": {k: _legacy_list(k, e) for k, e in params.items()},
             "excluded_layers": list(file.excluded),
             "quantizer_args": _qargs(file.quantizer_args, strings=True)}
        return d
    d = {"version": "1.0.0",
         "activation_encodings": [_v1_dict(k, e) for k, e in acts.items()],
         "param_encodings": [_v1_dict(k, e) for k, e in params.items()],
         "excluded_layers": list(file.excluded)}
    if file.quantizer_args:
        d["quantizer_args"] = _qargs(file.quantizer_args, strings=False)
    return d


def write_encodings(path: str | os.PathLike, file: EncodingsFile, version: str = DEFAULT_VERSION) -> Path:
    """Write ``file`` as AIMET encodings ``version`` atomically (runtime/atomic.py).

    float32 scales are written as the exactly equal decimal, so reading the file back gives the
    same float32 values.
    """
    try:
        text = json.dumps(to_dict(file, version), indent=2) + "\n"
    except HwsimError as e:
        raise EncodingError(f"{path}: {e}") from None
    return atomic_write_text(path, text)
