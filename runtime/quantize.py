"""Quantize and dequantize a tensor with an :class:`~runtime.encoding.Encoding`, exactly.

Quantize, element by element with the scale ``s`` and zero point ``z`` of its channel/block::

    v = float32(x) / s                  # float32 division, as ONNX QuantizeLinear and TFLite do
    q = clamp(round(v) + z, qmin, qmax)

``x`` is first converted to float32 (float64 inputs are rounded to nearest; values beyond float32's
range become +-inf), ``s`` is the encoding's stored float32 scale, and the quotient is the float32
quotient (one IEEE rounding). ``round`` is the named rounding mode, applied to that float32 value:

- ``half_to_even``: ties to the even integer (ONNX QuantizeLinear, ONNX Runtime, numpy ``rint``);
- ``half_away_from_zero``: ties away from 0 (C ``round``; TFLite/TFLM reference Quantize);
- ``half_up``: ties toward +inf (``floor(v + 0.5)``);
- ``half_down``: ties toward -inf (``ceil(v - 0.5)``).

Saturation: the result is clamped to the encoding's usable range ``[qmin, qmax]`` (narrower than
the dtype for strict symmetric encodings); ``+-inf`` saturate to ``qmax``/``qmin``. NaN is bad
input: :func:`quantize` raises :class:`~runtime.errors.DataError` naming how many NaNs it found.
The result has the dtype's numpy storage type (int4 values in int8 arrays, uint4 in uint8).

Against the peers (measured with onnx 1.23's reference evaluator and ONNX Runtime 1.31.1 CPU, see
``tests/runtime/test_quantize.py``): ``half_to_even`` equals QuantizeLinear bit for bit, ties and
near ties included (ONNX Runtime divides in float32 too; a reciprocal multiplication would differ).
One divergence, for quotients beyond int32: ONNX Runtime's non-vectorized paths (int4/uint4 per
axis and odd-length tails; blocked quantization along a non-last axis for every dtype) behave as
``clamp(wrap32(int32(rint(v)) + z))`` with INT32_MIN for out-of-range conversions: for ``z >= 0``
+inf (any ``v >= 2^31``) gives ``qmin``, for ``z < 0`` -inf gives ``qmax``. We saturate.

Dequantize, as ONNX Runtime's DequantizeLinear computes it::

    y = float32(q - z) * s              # integer subtraction, one conversion, float32 product

For ``|q - z| <= 2^24`` (every dtype up to 16 bits) the conversion is exact, so ``y`` is the exact
product rounded once to float32, which also equals TFLite's ``float(double(s) * (q - z))``. For
int32 beyond 2^24 it still equals ONNX Runtime (same order), except where ``q - z`` overflows int32:
ONNX Runtime wraps, we subtract exactly. (The ONNX reference evaluator computes ``float32(q) - z``,
which differs beyond 2^24.)

Each public function validates its arguments and explains what is wrong; the arithmetic is in the
private ``@jit`` kernels, which see the tensor as ``(outer, n, inner)`` around the quantization axis
and the parameters as ``(outer or 1, blocks, inner or 1)``; channel/block ``j // block`` of axis
position ``j``. Slow numpy references that the kernels must equal bit for bit live in the tests.

>>> from runtime.encoding import Encoding
>>> e = Encoding(scale=1.0, zero_point=0, dtype="int8")
>>> x = np.float32([0.5, 1.5, 2.5, -0.5, -1.5, 300.0])
>>> quantize(x, e, "half_to_even")
array([  0,   2,   2,   0,  -2, 127], dtype=int8)
>>> quantize(x, e, "half_away_from_zero")
array([  1,   2,   3,  -1,  -2, 127], dtype=int8)
>>> quantize(x, e, "half_up")
array([  1,   2,   3,   0,  -1, 127], dtype=int8)
>>> quantize(x, e, "half_down")
array([  0,   1,   2,  -1,  -2, 127], dtype=int8)
>>> dequantize(np.int8([-128, 0, 3]), Encoding(scale=0.5, zero_point=1, dtype="int8"))
array([-64.5,  -0.5,   1. ], dtype=float32)
"""
from __future__ import annotations

import math

import numpy as np

from .encoding import Encoding, PerAxis, PerTensor
from .errors import DataError, EncodingError, HwsimError
from .numba_config import jit

ROUNDINGS = ("half_to_even", "half_away_from_zero", "half_up", "half_down")
_ROUNDING_CODE = {name: i for i, name in enumerate(ROUNDINGS)}

__all__ = ["quantize", "dequantize", "fake_quantize", "ROUNDINGS"]


# ---------------------------------------------------------------------------------------------
# private kernels
# ---------------------------------------------------------------------------------------------
@jit
def _round_half(v, mode):
    """Round a finite float64 ``v`` to an integer-valued float64; ties by ``mode`` (0 even, 1 away
    from zero, 2 up, 3 down). ``v - floor(v)`` is exact whenever it can be 0.5 (then |v| >= 0.5 and
    v has a float32's 24 significant bits), so ties are detected exactly."""
    f = np.floor(v)
    d = v - f
    if d > 0.5:
        return f + 1.0
    if d < 0.5:
        return f
    if mode == 0:
        return f + 1.0 if np.floor(f * 0.5) * 2.0 != f else f
    if mode == 1:
        return f + 1.0 if f >= 0.0 else f
    if mode == 2:
        return f + 1.0
    return f


@jit
def _quantize_kernel(x, scale, zero_point, lo, hi, block, qmin, qmax, mode, out):
    """x float32 (outer, n, inner); scale float32, zero_point int64, lo/hi float64 (outer|1, m, inner|1).

    ``lo = qmin - z`` and ``hi = qmax - z`` as float64 (exact for every dtype up to 32 bits; the int64
    dtype has z = 0 and ``hi`` rounds to 2^63, beyond which no float64 exists below it). Comparing
    the quotient with them before rounding equals clamping after rounding (rounding is monotonic
    and fixes integers) and keeps +-inf and huge quotients away from the int64 conversion."""
    n_outer, n, n_inner = x.shape
    so = scale.shape[0] > 1
    si = scale.shape[2] > 1
    for o in range(n_outer):
        po = o if so else 0
        for j in range(n):
            pj = j // block
            for i in range(n_inner):
                pi = i if si else 0
                v = np.float64(x[o, j, i] / scale[po, pj, pi])  # float32 / float32 -> float32
                if v <= lo[po, pj, pi]:
                    out[o, j, i] = qmin
                elif v >= hi[po, pj, pi]:
                    out[o, j, i] = qmax
                else:
                    out[o, j, i] = np.int64(_round_half(v, mode)) + zero_point[po, pj, pi]


@jit
def _dequantize_kernel(q, scale, zero_point, block, out):
    """q int64 (outer, n, inner); out float32: float32(q - z) * s in float32."""
    n_outer, n, n_inner = q.shape
    so = scale.shape[0] > 1
    si = scale.shape[2] > 1
    for o in range(n_outer):
        po = o if so else 0
        for j in range(n):
            pj = j // block
            for i in range(n_inner):
                pi = i if si else 0
                out[o, j, i] = np.float32(q[o, j, i] - zero_point[po, pj, pi]) * scale[po, pj, pi]


# ---------------------------------------------------------------------------------------------
# layout: tensor and parameters as 3-D views around the quantization axis
# ---------------------------------------------------------------------------------------------
def _layout(shape: tuple[int, ...], enc: Encoding, what: str):
    """(3-D tensor shape, scale3, zp3, block) for a tensor of ``shape`` quantized with ``enc``."""
    enc.check_tensor_shape(shape, what)
    g = enc.granularity
    size = math.prod(shape)
    if isinstance(g, PerTensor):
        return (1, size, 1), enc.scale.reshape(1, 1, 1), enc.zero_point.reshape(1, 1, 1), max(size, 1)
    a = g.axis % len(shape)
    outer, n, inner = math.prod(shape[:a]), shape[a], math.prod(shape[a + 1:])
    if isinstance(g, PerAxis):
        return (outer, n, inner), enc.scale.reshape(1, n, 1), enc.zero_point.reshape(1, n, 1), 1
    m = enc.scale.shape[a]
    return (outer, n, inner), enc.scale.reshape(outer, m, inner), enc.zero_point.reshape(outer, m, inner), g.block_size


def _check_encoding(encoding) -> Encoding:
    if not isinstance(encoding, Encoding):
        raise EncodingError(f"expected an Encoding, found {type(encoding).__name__}")
    return encoding


def _rounding_code(rounding) -> int:
    try:
        return _ROUNDING_CODE[rounding]
    except (KeyError, TypeError):
        raise HwsimError(f"unknown rounding {rounding!r}; expected one of {list(ROUNDINGS)}") from None


def _writable(a: np.ndarray, dtype) -> np.ndarray:
    """A C-contiguous, writable array of ``dtype`` (one compiled kernel signature for every input)."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.writeable else a.copy()


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def quantize(x, encoding: Encoding, rounding: str) -> np.ndarray:
    """``q = clamp(round(float32(x) / scale) + zero_point, qmin, qmax)`` in the dtype's storage type.

    Division in float32, ``rounding`` one of :data:`ROUNDINGS` (a field of the target, so it has no
    default), per tensor, per axis (any axis, negative allowed) or per block; see the module
    docstring. NaN raises :class:`~runtime.errors.DataError`; +-inf saturate.

    Ties at .5, per-axis along the last axis with scales 1 and 0.5 and zero points 0 and 10:

    >>> from runtime.encoding import Encoding, PerAxis
    >>> e = Encoding(np.float32([1.0, 0.5]), [0, 10], "uint8", PerAxis(-1))
    >>> quantize(np.float32([[0.5, 0.25], [-2.5, 1e9]]), e, "half_to_even")  # 0.25/0.5 = 0.5 -> 0, +10
    array([[  0,  10],
           [  0, 255]], dtype=uint8)
    >>> quantize(np.float32([np.nan, 1.0]), e, "half_to_even")
    Traceback (most recent call last):
    ...
    runtime.errors.DataError: cannot quantize: the input has 1 NaN value(s) (of 2); NaN has no integer representation
    """
    enc = _check_encoding(encoding)
    mode = _rounding_code(rounding)
    xa = np.asarray(x)
    if xa.dtype.kind not in "fiu":
        raise HwsimError(f"cannot quantize an array of dtype {xa.dtype}; expected float (or integer) values")
    with np.errstate(over="ignore"):
        x32 = xa.astype(np.float32)
    nan = int(np.count_nonzero(np.isnan(x32)))
    if nan:
        raise DataError(f"cannot quantize: the input has {nan} NaN value(s) (of {x32.size}); NaN has no integer "
                        "representation")
    shape3, s3, z3, block = _layout(x32.shape, enc, "input")
    lo = (enc.qmin - z3).astype(np.float64)
    hi = (enc.qmax - z3).astype(np.float64)
    out = np.empty(shape3, dtype=np.int64)
    with np.errstate(over="ignore"):  # NUMBA_DISABLE_JIT: x / s may overflow to inf (then saturates)
        _quantize_kernel(_writable(x32.reshape(shape3), np.float32), _writable(s3, np.float32),
                         _writable(z3, np.int64), _writable(lo, np.float64), _writable(hi, np.float64),
                         block, enc.qmin, enc.qmax, mode, out)
    return out.reshape(x32.shape).astype(enc.dtype.numpy_dtype)


def dequantize(q, encoding: Encoding) -> np.ndarray:
    """``y = float32(q - zero_point) * scale``, float32 (the ONNX Runtime DequantizeLinear order).

    ``q`` is any integer array; values outside ``[qmin, qmax]`` are dequantized by the same affine
    map (checking the range is the caller's business).

    >>> from runtime.encoding import Encoding
    >>> e = Encoding(scale=1.0, zero_point=0, dtype="int32")
    >>> dequantize(np.int32([2**24 + 1, 2**24 + 3]), e).astype(np.int64)  # float32 holds 24 bits: ties to even
    array([16777216, 16777220])
    """
    enc = _check_encoding(encoding)
    qa = np.asarray(q)
    if qa.dtype.kind not in "iu" or qa.dtype == np.uint64:
        raise HwsimError(f"cannot dequantize an array of dtype {qa.dtype}; expected integers (at most int64)")
    shape3, s3, z3, block = _layout(qa.shape, enc, "quantized input")
    out = np.empty(shape3, dtype=np.float32)
    _dequantize_kernel(_writable(qa.reshape(shape3), np.int64), _writable(s3, np.float32),
                       _writable(z3, np.int64), block, out)
    return out.reshape(qa.shape)


def fake_quantize(x, encoding: Encoding, rounding: str) -> np.ndarray:
    """``dequantize(quantize(x, encoding, rounding), encoding)``: the float32 value ``x`` stands for.

    >>> from runtime.encoding import Encoding
    >>> fake_quantize(np.float32([0.3, 0.75, 5.0]), Encoding(scale=0.5, zero_point=0, dtype="int4"), "half_to_even")
    array([0.5, 1. , 3.5], dtype=float32)
    """
    return dequantize(quantize(x, encoding, rounding), encoding)
