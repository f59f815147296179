"""The project's one module of hypothesis strategies.

Strategies draw only inputs that are inside the documented domain of the function under test
(e.g. accumulators that cannot overflow int64 in a reference). Sections are grouped by subject.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

# ---------------------------------------------------------------------------------------------
# integers (fixed-point helpers)
# ---------------------------------------------------------------------------------------------
int32s = st.one_of(
    st.integers(INT32_MIN, INT32_MAX),
    st.sampled_from([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX, 1 << 30, -(1 << 30)]),
)

# ---------------------------------------------------------------------------------------------
# encodings and quantize/dequantize
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# kernels (shapes, integer tensors)
# ---------------------------------------------------------------------------------------------
