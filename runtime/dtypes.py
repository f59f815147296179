"""Integer storage types of quantized tensors: bit width, signedness and range.

One name, one meaning: ``int8`` is the two's-complement 8-bit type with range [-128, 127];
``narrow`` ranges (e.g. strict-symmetric int8 [-127, 127]) are a property of an encoding's scheme,
not of the storage type.

>>> INT4.qmin, INT4.qmax, UINT4.qmax, INT16.qmin
(-8, 7, 15, -32768)
>>> qtype("uint8").numpy_dtype
dtype('uint8')
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import HwsimError


@dataclass(frozen=True)
class QType:
    """An integer storage type: ``bits`` wide, signed or unsigned."""

    name: str
    bits: int
    signed: bool

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def numpy_dtype(self) -> np.dtype:
        """Smallest numpy dtype that holds the range (int4 values live in int8 arrays)."""
        width = 8 if self.bits <= 8 else 16 if self.bits <= 16 else 32 if self.bits <= 32 else 64
        return np.dtype(f"{'' if self.signed else 'u'}int{width}")

    def __str__(self) -> str:
        return self.name


INT4 = QType("int4", 4, True)
UINT4 = QType("uint4", 4, False)
INT8 = QType("int8", 8, True)
UINT8 = QType("uint8", 8, False)
INT16 = QType("int16", 16, True)
UINT16 = QType("uint16", 16, False)
INT32 = QType("int32", 32, True)
UINT32 = QType("uint32", 32, False)
INT64 = QType("int64", 64, True)

QTYPES: dict[str, QType] = {t.name: t for t in (INT4, UINT4, INT8, UINT8, INT16, UINT16, INT32, UINT32, INT64)}


def qtype(name: str | QType) -> QType:
    """Look up a storage type by name (``"int8"``, ``"uint4"``, ...)."""
    if isinstance(name, QType):
        return name
    try:
        return QTYPES[name]
    except (KeyError, TypeError):
        raise HwsimError(f"unknown integer dtype {name!r}; expected one of {sorted(QTYPES)}") from None


def qtype_for(bits: int, signed: bool) -> QType:
    """The storage type with this bit width and signedness."""
    for t in QTYPES.values():
        if t.bits == bits and t.signed == signed:
            return t
    raise HwsimError(f"no integer dtype with {bits} bits (signed={signed}); supported widths: 4, 8, 16, 32")
