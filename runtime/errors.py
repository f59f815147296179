"""The project's own exception types. Every error a user can cause is one of these, with a
message that names the file, node, tensor or field, what was expected and what was found."""


class HwsimError(Exception):
    """Base class of all errors hwsim reports to a user."""


class TargetError(HwsimError):
    """A target file is malformed or inconsistent."""


class EncodingError(HwsimError):
    """An encoding (scale, zero point, dtype, granularity) is invalid or inconsistent."""


class ModelError(HwsimError):
    """An ONNX model is malformed or uses something the runtime cannot run in integers."""


class UnsupportedError(ModelError):
    """A model asks for an op or arithmetic that the chosen target does not run in integers."""


class OverflowPolicyError(HwsimError):
    """An accumulator overflowed under the target's ``error`` overflow policy."""


class DataError(HwsimError):
    """An input or calibration data file is malformed (keys, shapes, dtypes, NaN/Inf)."""


class ResourceError(HwsimError):
    """An input declares more data than the configured limit (``HWSIM_MAX_TENSOR_BYTES``, see
    :func:`runtime.graph.max_tensor_bytes`); it is refused before anything that size is allocated."""
