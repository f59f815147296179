"""The canonical encoding of a quantized tensor: ``real = scale * (q - zero_point)``.

One name, one meaning, one sign: ``zero_point`` is the integer that represents 0.0, so
``q = round(x / scale) + zero_point`` everywhere in the code (AIMET's negated ``offset`` exists only
at the file-format boundary). An :class:`Encoding` holds

- ``scale``: float32, shape ``()`` per tensor, ``(C,)`` per axis, or the ONNX blocked-scale shape
  per block; always finite and > 0. Quantize and dequantize use this *stored float32* value.
- ``zero_point``: int64, the same shape as ``scale``, inside ``[qmin, qmax]``.
- ``dtype``: the integer storage :class:`~runtime.dtypes.QType`.
- ``granularity``: :class:`PerTensor`, :class:`PerAxis` or :class:`PerBlock`.
- ``qmin``/``qmax``: the usable integer range; the dtype's range except for strict (narrow)
  symmetric encodings, e.g. int8 strict symmetric is [-127, 127].
- ``symmetric``: provenance only (which scheme produced it); quantize/dequantize never read it.

Granularity, with ``axis`` as ONNX's QuantizeLinear uses it:

- ``PerAxis(axis)``: one (scale, zero point) per index along ``axis``, the kept (channel) axis.
- ``PerBlock(axis, block_size)``: ONNX 21 blocked quantization. Runs of ``block_size`` consecutive
  elements along ``axis`` share a (scale, zero point); every other axis is kept element by element.
  The scale has the tensor's rank, ``ceil(n / block_size)`` entries along ``axis`` (the last block
  may be shorter) and the tensor's extent on every other axis. ``axis`` is therefore the *blocked*
  axis, exactly as ONNX's ``axis`` attribute: with three or more dimensions there is no single
  kept axis to name. A [C_out, C_in] weight blocked along its inputs is ``PerBlock(1, 32)`` with a
  [C_out, ceil(C_in / 32)] scale.

Computing an encoding from a float range (:func:`encoding_from_range`), schemes:

- ``asymmetric``: the range is widened to include 0; ``scale = (max - min) / (qmax - qmin)``;
  ``zero_point = qmin - round_half_to_even(min / scale)`` with the stored float32 scale, clamped to
  [qmin, qmax]. Zero is then exactly representable (``q = zero_point``). This is the nudging of
  TFLite and AIMET: the zero point is rounded and the represented range ``[scale * (qmin - zp),
  scale * (qmax - zp)]`` is the requested one shifted by less than half a step.
- ``symmetric``: ``scale = max(|min|, |max|) / qpos`` with ``qpos = 2^(bits-1) - 1`` (127 for 8
  bits, AIMET's ``delta = max_abs / floor((2^bw - 1) / 2)``), the full dtype range: for int8 the
  value -128 is usable but only the positive side sets the scale. Signed storage: zero point 0.
  Unsigned storage: zero point at the midpoint ``2^(bits-1)`` (128 for uint8, as AIMET and ONNX
  Runtime's ``compute_scale_zp`` do), i.e. the int8 grid shifted by 128.
- ``strict_symmetric``: as symmetric with the narrow range ``[zp - qpos, zp + qpos]`` (int8
  [-127, 127], uint8 [1, 255]).
- ``unsigned_symmetric`` (AIMET): if every ``min >= 0``, the storage becomes the unsigned type of the
  same width with zero point 0 and ``scale = max / (2^bits - 1)``; otherwise as ``symmetric``.

For comparison, ONNX Runtime's ``quantize_static`` (``quant_utils.compute_scale_zp``, read in
onnxruntime 1.31.1) computes symmetric int8/int16 over [-127, 127]/[-32767, 32767], i.e. our
``strict_symmetric``; for other dtypes it spreads ``2 * max_abs`` over the full range (uint8:
``scale = max_abs / 127.5``, zero point ``round(127.5) = 128``), which none of our schemes
reproduces. Encodings read from a model keep the model's own scales, so this only matters when
computing ranges the way ONNX Runtime would.

Tiny ranges are widened to :data:`MIN_RANGE` (1e-5): ``max - min`` for asymmetric, ``2 * max_abs``
for the symmetric schemes, ``max`` for the unsigned grid. Why: a constant tensor (range 0, e.g. all
zeros) must still get a valid encoding (scale > 0, zero exact), and every scale must stay a *normal*
float32, as must the products and ratios of two scales that later steps form (bias scale
``s_x * s_w``, requantization ``s_x * s_w / s_y``). The smallest scale this allows is
``1e-5 / (2^32 - 1) ~ 2.3e-15``; a product of two of them is ~5e-30, still far above float32's
smallest normal 1.2e-38. A widened tensor loses nothing that matters: its absolute error stays
below ``MIN_RANGE / (2 * steps)``.

Scales are computed in float64 and stored as float32 (round to nearest).

>>> e = encoding_from_range(-1.0, 1.0, "int8", "symmetric")
>>> float(e.scale) == float(np.float32(1 / 127)), int(e.zero_point), (e.qmin, e.qmax)
(True, 0, (-128, 127))
>>> e = encoding_from_range(-1.0, 1.0, "int8", "strict_symmetric"); (e.qmin, e.qmax)
(-127, 127)
>>> e = encoding_from_range(0.0, 2.0, "int8", "unsigned_symmetric"); str(e.dtype), int(e.zero_point)
('uint8', 0)
>>> e = encoding_from_range(-1.0, 3.0, "uint8", "asymmetric"); float(e.scale) == float(np.float32(4 / 255))
True
>>> int(e.zero_point)   # 0 - round(-1 / (4/255)) = round(63.75) = 64
64
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from .dtypes import INT32, QTYPES, QType, qtype, qtype_for
from .errors import EncodingError, HwsimError

__all__ = [
    "PerTensor", "PerAxis", "PerBlock", "Granularity", "Encoding", "SCHEMES", "MIN_RANGE",
    "ENCODING_FORMAT_VERSION", "encoding_from_range", "encoding_from_tensor", "bias_encoding",
    "granularity_from_dict",
]

SCHEMES = ("asymmetric", "symmetric", "strict_symmetric", "unsigned_symmetric")
MIN_RANGE = 1e-5  # smallest float range an encoding from a range covers (see module docstring)
ENCODING_FORMAT_VERSION = 1  # version of Encoding.to_dict's format
_RANGE_BITS = (4, 8, 16, 32)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


# ---------------------------------------------------------------------------------------------
# granularity
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PerTensor:
    """One scale and zero point for the whole tensor."""

    def to_dict(self) -> dict:
        return {"kind": "per_tensor"}


@dataclass(frozen=True)
class PerAxis:
    """One scale and zero point per index along ``axis`` (the kept channel axis; negative counts
    from the end and is resolved against the tensor's rank when quantizing)."""

    axis: int

    def __post_init__(self):
        if not _is_int(self.axis):
            raise EncodingError(f"PerAxis.axis must be an int, found {self.axis!r}")
        object.__setattr__(self, "axis", int(self.axis))

    def to_dict(self) -> dict:
        return {"kind": "per_axis", "axis": self.axis}


@dataclass(frozen=True)
class PerBlock:
    """ONNX 21 blocked quantization: runs of ``block_size`` consecutive elements along ``axis`` (the
    blocked axis, ONNX's ``axis`` attribute) share a scale and zero point; see the module docstring."""

    axis: int
    block_size: int

    def __post_init__(self):
        if not _is_int(self.axis):
            raise EncodingError(f"PerBlock.axis must be an int, found {self.axis!r}")
        if not _is_int(self.block_size) or self.block_size < 1:
            raise EncodingError(f"PerBlock.block_size must be a positive int, found {self.block_size!r}")
        object.__setattr__(self, "axis", int(self.axis))
        object.__setattr__(self, "block_size", int(self.block_size))

    def to_dict(self) -> dict:
        return {"kind": "per_block", "axis": self.axis, "block_size": self.block_size}


Granularity = Union[PerTensor, PerAxis, PerBlock]
_GRANULARITY_KEYS = {"per_tensor": set(), "per_axis": {"axis"}, "per_block": {"axis", "block_size"}}


def granularity_from_dict(d: Any) -> Granularity:
    """Inverse of ``Granularity.to_dict`` (unknown or missing keys are errors).

    >>> granularity_from_dict({"kind": "per_block", "axis": 1, "block_size": 32})
    PerBlock(axis=1, block_size=32)
    """
    if not isinstance(d, dict) or d.get("kind") not in _GRANULARITY_KEYS:
        raise EncodingError(f"granularity must be a dict with 'kind' one of {sorted(_GRANULARITY_KEYS)}, found {d!r}")
    want = _GRANULARITY_KEYS[d["kind"]]
    got = set(d) - {"kind"}
    if got != want:
        raise EncodingError(f"granularity {d['kind']!r} takes keys {sorted(want)}, found {sorted(got)}")
    if d["kind"] == "per_tensor":
        return PerTensor()
    if d["kind"] == "per_axis":
        return PerAxis(d["axis"])
    return PerBlock(d["axis"], d["block_size"])


def _resolve_axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise EncodingError(f"{what}: axis {axis} is out of range for a {ndim}-D tensor "
                            f"(expected {-ndim} <= axis < {ndim})")
    return axis % ndim


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Encoding:
    """``real = scale * (q - zero_point)`` with ``q`` in ``[qmin, qmax]`` (see the module docstring).

    Construction validates and normalizes: ``scale`` becomes a read-only float32 array, ``zero_point``
    a read-only int64 array of the same shape (a scalar zero point is broadcast), ``dtype`` a QType,
    ``qmin``/``qmax`` default to the dtype's range. Equality and hashing compare arrays by value.

    >>> e = Encoding(scale=0.5, zero_point=3, dtype="uint8")
    >>> e == Encoding(np.float32([0.5]), np.int64([3]), qtype("uint8"), PerTensor())
    True
    >>> e.scale.dtype, e.zero_point.shape, (e.qmin, e.qmax), e.is_per_tensor
    (dtype('float32'), (), (0, 255), True)
    >>> Encoding(scale=0.0, zero_point=0, dtype="int8")
    Traceback (most recent call last):
    ...
    runtime.errors.EncodingError: scale must be finite and > 0; found 0.0
    """

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: QType
    granularity: Granularity = field(default_factory=PerTensor)
    qmin: int | None = None
    qmax: int | None = None
    symmetric: bool = False

    def __post_init__(self):
        setf = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        try:
            dtype = qtype(self.dtype)
        except HwsimError as e:
            raise EncodingError(str(e)) from None
        setf("dtype", dtype)
        gran = self.granularity
        if not isinstance(gran, (PerTensor, PerAxis, PerBlock)):
            raise EncodingError(f"granularity must be PerTensor(), PerAxis(axis) or PerBlock(axis, block_size), "
                                f"found {gran!r}")
        if not isinstance(self.symmetric, (bool, np.bool_)):
            raise EncodingError(f"symmetric must be a bool, found {self.symmetric!r}")
        setf("symmetric", bool(self.symmetric))

        scale = self._as_scale(self.scale)
        if isinstance(gran, PerTensor):
            if scale.size != 1:
                raise EncodingError(f"a per-tensor encoding needs one scale; found scale shape {scale.shape}")
            scale = scale.reshape(())
        elif isinstance(gran, PerAxis):
            if scale.ndim != 1 or scale.size < 1:
                raise EncodingError(f"a per-axis encoding (axis {gran.axis}) needs a 1-D scale with one entry per "
                                    f"channel; found scale shape {scale.shape}")
        else:
            if scale.ndim < 1 or scale.size < 1:
                raise EncodingError(f"a per-block encoding needs a scale with the tensor's rank (the ONNX blocked "
                                    f"layout); found scale shape {scale.shape}")
            gran = PerBlock(_resolve_axis(gran.axis, scale.ndim, "per-block encoding"), gran.block_size)
            setf("granularity", gran)
        bad = ~(np.isfinite(scale) & (scale > 0))
        if bad.any():
            idx = np.argwhere(bad)[0]
            where = "" if scale.ndim == 0 else f" at index {tuple(int(i) for i in idx)} (scale shape {scale.shape})"
            raise EncodingError(f"scale must be finite and > 0; found {float(scale[tuple(idx)])!r}{where}")

        zp = self._as_zero_point(self.zero_point)
        if zp.shape != scale.shape:
            if zp.size == 1:
                zp = np.full(scale.shape, zp.reshape(()), dtype=np.int64)
            else:
                raise EncodingError(f"zero point shape {zp.shape} differs from scale shape {scale.shape}")

        qmin = dtype.qmin if self.qmin is None else self.qmin
        qmax = dtype.qmax if self.qmax is None else self.qmax
        if not (_is_int(qmin) and _is_int(qmax)):
            raise EncodingError(f"qmin and qmax must be ints, found {qmin!r}, {qmax!r}")
        qmin, qmax = int(qmin), int(qmax)
        if not dtype.qmin <= qmin <= qmax <= dtype.qmax:
            raise EncodingError(f"usable range [qmin, qmax] = [{qmin}, {qmax}] must satisfy qmin <= qmax inside "
                                f"{dtype} [{dtype.qmin}, {dtype.qmax}]")
        out = (zp < qmin) | (zp > qmax)
        if out.any():
            idx = tuple(int(i) for i in np.argwhere(out)[0])
            where = "" if zp.ndim == 0 else f" at index {idx}"
            raise EncodingError(f"zero point {int(zp[idx])}{where} is outside the usable range [{qmin}, {qmax}] "
                                f"of this {dtype} encoding")
        if dtype.bits > 32 and zp.any():
            raise EncodingError(f"{dtype} encodings (biases) must have zero point 0, found {int(zp[zp != 0][0])}")
        if self.symmetric:
            allowed = (0,) if dtype.signed else (0, 1 << (dtype.bits - 1))
            if not (np.all(zp == allowed[0]) or np.all(zp == allowed[-1])):
                raise EncodingError(f"a symmetric {dtype} encoding has zero point {' or '.join(map(str, allowed))} "
                                    f"for every channel; found {np.unique(zp).tolist()[:4]}")
        scale.setflags(write=False)
        zp.setflags(write=False)
        setf("scale", scale)
        setf("zero_point", zp)
        setf("qmin", qmin)
        setf("qmax", qmax)

    @staticmethod
    def _as_scale(v) -> np.ndarray:
        a = np.asarray(v)
        if a.dtype.kind not in "fiu":
            raise EncodingError(f"scale must be a float array, found dtype {a.dtype}")
        with np.errstate(over="ignore"):
            return np.array(a, dtype=np.float32, copy=True)

    @staticmethod
    def _as_zero_point(v) -> np.ndarray:
        a = np.asarray(v)
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise EncodingError(f"zero point must hold integers, found {a.ravel()[:4].tolist()}")
        elif a.dtype.kind not in "iu" or a.dtype == np.uint64:
            raise EncodingError(f"zero point must be an integer array (fitting int64), found dtype {a.dtype}")
        return np.array(a, dtype=np.int64, copy=True)

    # -- equality ---------------------------------------------------------------------------------
    def _key(self):
        return (self.dtype, self.granularity, self.qmin, self.qmax, self.symmetric, self.scale.shape,
                self.scale.tobytes(), self.zero_point.tobytes())

    def __eq__(self, other):
        if not isinstance(other, Encoding):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        def arr(a):
            return repr(a.item()) if a.ndim == 0 else np.array2string(a, threshold=8, separator=", ")
        return (f"Encoding({self.dtype} {self.granularity}, scale={arr(self.scale)}, "
                f"zero_point={arr(self.zero_point)}, range=[{self.qmin}, {self.qmax}], symmetric={self.symmetric})")

    # -- properties -------------------------------------------------------------------------------
    @property
    def is_per_tensor(self) -> bool:
        return isinstance(self.granularity, PerTensor)

    @property
    def num_channels(self) -> int:
        """Number of (scale, zero point) pairs: 1 per tensor, C per axis, the block count per block."""
        return int(self.scale.size)

    def check_tensor_shape(self, shape: tuple[int, ...], what: str = "tensor") -> None:
        """Raise EncodingError unless a tensor of ``shape`` can be quantized with this encoding."""
        shape = tuple(int(d) for d in shape)
        g = self.granularity
        if isinstance(g, PerTensor):
            return
        if isinstance(g, PerAxis):
            a = _resolve_axis(g.axis, len(shape), f"{what} of shape {shape}")
            if shape[a] != self.scale.shape[0]:
                raise EncodingError(f"{what} of shape {shape} has {shape[a]} channels along axis {g.axis}, but the "
                                    f"per-axis encoding has {self.scale.shape[0]} scales")
            return
        if len(shape) != self.scale.ndim:
            raise EncodingError(f"{what} of shape {shape} has rank {len(shape)}, but the per-block scale has shape "
                                f"{self.scale.shape} (rank {self.scale.ndim})")
        expected = tuple(-(-d // g.block_size) if i == g.axis else d for i, d in enumerate(shape))
        if expected != self.scale.shape:
            raise EncodingError(f"{what} of shape {shape} blocked by {g.block_size} along axis {g.axis} needs a scale "
                                f"of shape {expected}; the encoding's scale has shape {self.scale.shape}")

    def broadcast_shape(self, tensor_ndim: int) -> tuple[int, ...]:
        """Shape to reshape ``scale``/``zero_point`` to so that they broadcast against a tensor of rank
        ``tensor_ndim`` (per tensor and per axis; per-block parameters must be repeated along the
        blocked axis: use :meth:`broadcast_params`).

        >>> Encoding(np.float32([1, 2, 3]), 0, "int8", PerAxis(-1)).broadcast_shape(3)
        (1, 1, 3)
        """
        g = self.granularity
        if isinstance(g, PerTensor):
            return (1,) * tensor_ndim
        if isinstance(g, PerAxis):
            a = _resolve_axis(g.axis, tensor_ndim, "broadcast_shape")
            return tuple(self.scale.shape[0] if i == a else 1 for i in range(tensor_ndim))
        raise EncodingError("per-block scales do not broadcast by reshaping; use broadcast_params(shape), which "
                            "repeats them along the blocked axis")

    def broadcast_params(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(scale float32, zero_point int64) arrays that broadcast against a tensor of ``shape``.

        >>> e = Encoding(np.float32([[1, 2]]), 0, "int4", PerBlock(1, 2))
        >>> e.broadcast_params((1, 3))[0]
        array([[1., 1., 2.]], dtype=float32)
        """
        shape = tuple(int(d) for d in shape)
        self.check_tensor_shape(shape)
        g = self.granularity
        if isinstance(g, PerBlock):  # element i of the blocked axis reads block i // block_size
            block_of = np.arange(shape[g.axis]) // g.block_size
            return np.take(self.scale, block_of, axis=g.axis), np.take(self.zero_point, block_of, axis=g.axis)
        b = self.broadcast_shape(len(shape))
        return self.scale.reshape(b), self.zero_point.reshape(b)

    # -- serialization ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-safe canonical form (our own format, not AIMET's; that conversion lives at the file
        boundary). float32 scales are written as the exactly equal Python floats, so the round trip
        is exact.

        >>> e = Encoding(np.float32([0.1, 0.2]), [0, 3], "uint8", PerAxis(0))
        >>> d = e.to_dict(); d["granularity"], d["zero_point"]
        ({'kind': 'per_axis', 'axis': 0}, [0, 3])
        >>> Encoding.from_dict(d) == e
        True
        """
        return {
            "version": ENCODING_FORMAT_VERSION,
            "dtype": self.dtype.name,
            "granularity": self.granularity.to_dict(),
            "scale": self.scale.astype(np.float64).tolist(),
            "zero_point": self.zero_point.tolist(),
            "qmin": self.qmin,
            "qmax": self.qmax,
            "symmetric": self.symmetric,
        }

    @classmethod
    def from_dict(cls, d: Any) -> "Encoding":
        """Inverse of :meth:`to_dict`; unknown or missing keys, a wrong version and non-bool
        ``symmetric`` are errors."""
        keys = {"version", "dtype", "granularity", "scale", "zero_point", "qmin", "qmax", "symmetric"}
        if not isinstance(d, dict):
            raise EncodingError(f"an encoding must be a dict, found {type(d).__name__}")
        if set(d) != keys:
            missing, unknown = sorted(keys - set(d)), sorted(set(d) - keys)
            raise EncodingError(f"encoding dict: missing keys {missing}, unknown keys {unknown}")
        if d["version"] != ENCODING_FORMAT_VERSION or not _is_int(d["version"]):
            raise EncodingError(f"encoding dict: version must be {ENCODING_FORMAT_VERSION}, found {d['version']!r}")
        if not isinstance(d["symmetric"], bool):
            raise EncodingError(f"encoding dict: 'symmetric' must be true or false, found {d['symmetric']!r}")
        if not isinstance(d["dtype"], str) or d["dtype"] not in QTYPES:
            raise EncodingError(f"encoding dict: 'dtype' must be one of {sorted(QTYPES)}, found {d['dtype']!r}")
        arrays = {}
        for k, kinds in (("scale", "fiu"), ("zero_point", "iu")):
            if _has_bool_or_str(d[k]):
                raise EncodingError(f"encoding dict: {k!r} must hold numbers, found {d[k]!r}")
            try:
                a = np.asarray(d[k])
            except ValueError:
                raise EncodingError(f"encoding dict: {k!r} is not a rectangular nested list") from None
            if a.dtype.kind not in kinds:
                raise EncodingError(f"encoding dict: {k!r} must hold {'integers' if k == 'zero_point' else 'numbers'}, "
                                    f"found dtype {a.dtype}")
            arrays[k] = a
        return cls(scale=arrays["scale"].astype(np.float64), zero_point=arrays["zero_point"], dtype=d["dtype"],
                   granularity=granularity_from_dict(d["granularity"]), qmin=d["qmin"], qmax=d["qmax"],
                   symmetric=d["symmetric"])


def _has_bool_or_str(v) -> bool:
    if isinstance(v, (list, tuple)):
        return any(_has_bool_or_str(x) for x in v)
    return isinstance(v, (bool, str)) or v is None


# ---------------------------------------------------------------------------------------------
# encodings from float ranges
# ---------------------------------------------------------------------------------------------
def _range_arrays(min_val, max_val) -> tuple[np.ndarray, np.ndarray]:
    try:
        mn = np.asarray(min_val, dtype=np.float64)
        mx = np.asarray(max_val, dtype=np.float64)
        mn, mx = np.broadcast_arrays(mn, mx)
    except (TypeError, ValueError) as e:
        raise EncodingError(f"min and max must be numbers or arrays of one shape: {e}") from None
    if mn.size == 0:
        raise EncodingError("min and max are empty arrays")
    for name, a in (("min", mn), ("max", mx)):
        if not np.all(np.isfinite(a)):
            raise EncodingError(f"{name} must be finite, found {a[~np.isfinite(a)].ravel()[:4].tolist()}")
    if np.any(mn > mx):
        i = tuple(int(j) for j in np.argwhere(mn > mx)[0])
        raise EncodingError(f"min must be <= max, found min {float(mn[i])!r} > max {float(mx[i])!r}"
                            + (f" at index {i}" if mn.ndim else ""))
    return mn.copy(), mx.copy()


def encoding_from_range(min_val, max_val, dtype: str | QType, scheme: str,
                        granularity: Granularity = PerTensor()) -> Encoding:
    """The encoding of ``scheme`` that covers ``[min_val, max_val]`` (scalars, or arrays shaped like
    the granularity's scale: ``(C,)`` per axis, the ONNX blocked shape per block). Formulas, the
    zero-point nudging and the :data:`MIN_RANGE` floor: see the module docstring.

    A .5 tie in the zero point rounds to even: over [-127.5, 127.5] uint8 has scale 1 and
    ``0 - round(-127.5) = 128``; over [-126.5, 128.5], ``0 - round(-126.5) = 126``. (Over [-1, 1] the
    float32 scale 2/255 makes ``-1 / scale = -127.4999925``, zero point 127: no tie.)

    >>> [(float(e.scale), int(e.zero_point)) for e in (encoding_from_range(-127.5, 127.5, "uint8", "asymmetric"),
    ...                                               encoding_from_range(-126.5, 128.5, "uint8", "asymmetric"),
    ...                                               encoding_from_range(-1.0, 1.0, "uint8", "asymmetric"))]
    [(1.0, 128), (1.0, 126), (0.007843137718737125, 127)]
    >>> e = encoding_from_range(0.0, 0.0, "int8", "asymmetric")   # constant zero: widened to MIN_RANGE
    >>> round(float(e.scale) * 255, 12), int(e.zero_point)
    (1e-05, -128)
    """
    t = qtype(dtype) if not isinstance(dtype, QType) else dtype
    if t.bits not in _RANGE_BITS:
        raise EncodingError(f"encodings from a range are 4, 8, 16 or 32 bit; found {t} ({t.bits} bits)")
    if scheme not in SCHEMES:
        raise EncodingError(f"unknown scheme {scheme!r}; expected one of {list(SCHEMES)}")
    mn, mx = _range_arrays(min_val, max_val)
    if isinstance(granularity, PerTensor) and mn.size != 1:
        raise EncodingError(f"a per-tensor encoding takes one min and max; found arrays of shape {mn.shape}")
    if isinstance(granularity, PerAxis) and mn.ndim != 1:
        raise EncodingError(f"a per-axis encoding takes 1-D min/max (one per channel); found shape {mn.shape}")
    if isinstance(granularity, PerBlock) and mn.ndim < 1:
        raise EncodingError("a per-block encoding takes min/max arrays in the ONNX blocked-scale shape; found scalars")
    if isinstance(granularity, PerTensor):
        mn, mx = mn.reshape(()), mx.reshape(())

    if scheme == "asymmetric":
        return _asymmetric(mn, mx, t, granularity)
    if scheme == "unsigned_symmetric" and np.all(mn >= 0):
        u = qtype_for(t.bits, False)
        mx = np.maximum(mx, MIN_RANGE)
        scale = _to_scale(mx / u.qmax, mn, mx)
        return Encoding(scale, np.zeros(scale.shape, np.int64), u, granularity, u.qmin, u.qmax, symmetric=True)
    strict = scheme == "strict_symmetric"
    qpos = (1 << (t.bits - 1)) - 1
    zp = 0 if t.signed else 1 << (t.bits - 1)
    max_abs = np.maximum(np.maximum(np.abs(mn), np.abs(mx)), MIN_RANGE / 2)
    scale = _to_scale(max_abs / qpos, mn, mx)
    qmin, qmax = (zp - qpos, zp + qpos) if strict else (t.qmin, t.qmax)
    return Encoding(scale, np.full(scale.shape, zp, np.int64), t, granularity, qmin, qmax, symmetric=True)


def _to_scale(scale64: np.ndarray, mn, mx) -> np.ndarray:
    with np.errstate(over="ignore"):
        s = scale64.astype(np.float32)
    if not np.all(np.isfinite(s)):
        i = np.argwhere(~np.isfinite(s))[0]
        raise EncodingError(f"range [{float(mn[tuple(i)])!r}, {float(mx[tuple(i)])!r}] is too wide: its scale "
                            "overflows float32")
    return s


def _asymmetric(mn, mx, t: QType, granularity) -> Encoding:
    mn = np.minimum(mn, 0.0)
    mx = np.maximum(mx, 0.0)
    mx = np.where(mx - mn < MIN_RANGE, mn + MIN_RANGE, mx)
    steps = float(t.qmax - t.qmin)
    scale = _to_scale((mx - mn) / steps, mn, mx)
    zp = t.qmin - np.rint(mn / scale.astype(np.float64))
    zp = np.clip(zp, t.qmin, t.qmax).astype(np.int64)
    return Encoding(scale, zp, t, granularity, t.qmin, t.qmax, symmetric=False)


def encoding_from_tensor(x, dtype: str | QType, scheme: str, granularity: Granularity = PerTensor()) -> Encoding:
    """:func:`encoding_from_range` over the min and max of ``x`` per tensor, per channel along the
    axis, or per block (the last block may be shorter).

    >>> x = np.float32([[0.0, 1.0, -2.0], [4.0, 4.0, 8.0]])
    >>> encoding_from_tensor(x, "int8", "symmetric", PerAxis(0)).scale * 127
    array([2., 8.], dtype=float32)
    >>> encoding_from_tensor(x, "int8", "symmetric", PerBlock(1, 2)).scale * 127
    array([[1., 2.],
           [4., 8.]], dtype=float32)
    """
    from .errors import DataError

    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise EncodingError(f"tensor must be numeric, found dtype {x.dtype}")
    if x.size == 0:
        raise EncodingError(f"cannot compute an encoding from an empty tensor of shape {x.shape}")
    x = x.astype(np.float64)
    nan = int(np.count_nonzero(~np.isfinite(x)))
    if nan:
        raise DataError(f"tensor of shape {x.shape} has {nan} NaN/Inf values; cannot compute a range")
    g = granularity
    if isinstance(g, PerTensor):
        return encoding_from_range(x.min(), x.max(), dtype, scheme, g)
    a = _resolve_axis(g.axis, x.ndim, f"tensor of shape {x.shape}")
    if isinstance(g, PerAxis):
        other = tuple(i for i in range(x.ndim) if i != a)
        return encoding_from_range(x.min(axis=other), x.max(axis=other), dtype, scheme, g)
    starts = np.arange(0, x.shape[a], g.block_size)
    return encoding_from_range(np.minimum.reduceat(x, starts, axis=a), np.maximum.reduceat(x, starts, axis=a),
                               dtype, scheme, PerBlock(a, g.block_size))


# ---------------------------------------------------------------------------------------------
# bias
# ---------------------------------------------------------------------------------------------
def bias_encoding(input_scale, weight_scales, dtype: str | QType = INT32) -> Encoding:
    """Bias encoding: ``scale = float32(s_x) * float32(s_w)`` multiplied in float32, zero point 0,
    per axis 0 (the bias's only axis) when the weights are per channel.

    This is how ONNX Runtime's ``quantize_static`` forms the bias scale
    (``onnxruntime/quantization/base_quantizer.py``, ``quantize_bias_static_impl``:
    ``bias_scale = input_scale * weight_scale * beta`` on the float32 scale initializers, beta = 1).
    The float32 product of two float32 values is the exact product rounded once, so it also equals
    ``float32(float64(s_x) * float64(s_w))`` (the float64 product of two float32 values is exact).

    >>> e = bias_encoding(np.float32(0.5), np.float32([0.25, 0.1]))
    >>> e.granularity, e.scale.tolist() == [0.125, float(np.float32(0.5) * np.float32(0.1))], str(e.dtype)
    (PerAxis(axis=0), True, 'int32')
    """
    t = qtype(dtype) if not isinstance(dtype, QType) else dtype
    if not t.signed or t.bits < 32:
        raise EncodingError(f"bias encodings are int32 or int64, found {t}")
    s_x = input_scale.scale if isinstance(input_scale, Encoding) else input_scale
    s_w = weight_scales.scale if isinstance(weight_scales, Encoding) else weight_scales
    s_x = np.asarray(s_x, dtype=np.float32)
    s_w = np.asarray(s_w, dtype=np.float32)
    if s_x.size != 1:
        raise EncodingError(f"the input scale must be per tensor (one value), found shape {s_x.shape}")
    if s_w.ndim > 1:
        raise EncodingError(f"weight scales must be a scalar or 1-D (per output channel), found shape {s_w.shape}; "
                            "per-block weights have no single bias scale per channel")
    with np.errstate(under="ignore", over="ignore"):
        scale = s_x.reshape(()) * s_w
    tiny = np.finfo(np.float32).tiny
    if np.any(scale < tiny):
        raise EncodingError(f"bias scale s_x * s_w underflows float32 normals (smallest product "
                            f"{float(np.min(s_x.reshape(()).astype(np.float64) * s_w))!r}); the input or weight "
                            "scales are too small")
    gran = PerTensor() if s_w.ndim == 0 else PerAxis(0)
    return Encoding(scale, np.zeros(scale.shape, np.int64), t, gran, symmetric=True)
