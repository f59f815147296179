"""Integer-only reference runtime for quantized ONNX models.

Depends on numpy, numba and onnx only: importing it never imports torch.

>>> import runtime
>>> callable(runtime.load)
True
"""
from .dtypes import QType, qtype
from .errors import HwsimError


def load(model, target, encodings=None):
    """Plan a quantized ONNX model (QDQ or QOperator; a path or a ModelProto) for a target
    (built-in name, target file path, or loaded Target) and return an executable ``Program``.

    With ``encodings`` (an AIMET encodings file path, its parsed JSON, or an EncodingsFile), ``model``
    is a float model and the encodings are applied first (:mod:`runtime.apply_encodings`): what an
    AIMET user has after ``sim.export``."""
    if encodings is not None:
        from .apply_encodings import load_with_encodings

        return load_with_encodings(model, encodings, target)
    from .plan import load as _load

    return _load(model, target)


__all__ = ["QType", "qtype", "HwsimError", "load"]
