"""Plan functions of the integer runtime, one module per family of ops, registered by op name."""
from . import elementwise, lut, mac, movement, pool, quantize_ops  # noqa: F401
