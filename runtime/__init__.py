"""Integer-only reference runtime for quantized ONNX models.

Depends on numpy, numba and onnx only: importing it never imports torch.
"""
from .dtypes import QType, qtype
from .errors import HwsimError

__all__ = ["QType", "qtype", "HwsimError"]
