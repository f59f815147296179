"""Plan functions of the integer runtime, one module per family of ops, registered by op name."""
from . import elementwise, lut, mac, movement, pool, quantize_ops  # noqa: F401
from . import resize, softmax  # noqa: F401  (Resize/Upsample nearest, Softmax/QLinearSoftmax)
from . import recurrent  # noqa: F401  (LSTM, GRU)
