"""Numba settings in one place. Every kernel in the project is compiled with these flags."""
from numba import njit

JIT_OPTIONS = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")


def jit(*args, **kwargs):
    """``numba.njit`` with the project's flags (cache=True: compiled code is reused across runs).

    Honours ``NUMBA_DISABLE_JIT=1`` (then kernels run as plain Python, for debugging and tests).
    """
    opts = {**JIT_OPTIONS, **kwargs}
    if args and callable(args[0]):
        return njit(**opts)(args[0])
    return njit(*args, **opts)
