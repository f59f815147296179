"""Integer-only reference runtime for quantized ONNX models.

Depends on numpy, numba and onnx only: importing it never imports torch.

>>> import runtime
>>> callable(runtime.load)
True
"""
from .dtypes import QType, qtype
from .errors import HwsimError


def load(model, target):
    """Plan a quantized ONNX model (QDQ or QOperator; a path or a ModelProto) for a target
    (built-in name, target file path, or loaded Target) and return an executable ``Program``."""
    from .plan import load as _load

    return _load(model, target)


__all__ = ["QType", "qtype", "HwsimError", "load"]
