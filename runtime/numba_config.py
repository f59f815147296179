"""Numba settings in one place. Every kernel in the project is compiled with these flags.

Threads. Numba's OpenMP workers would by default spin between parallel regions; on a machine whose
cores are shared (2 cores, other processes) spinning workers starve the BLAS threads and every other
process, and each region then waits for a worker the scheduler has not run (measured: ShuffleNet
batch 1 with 2 threads 1.2 s instead of 60 ms). ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it)
makes them sleep; it must be in the environment before the OpenMP runtime loads, i.e. before the
first parallel kernel runs, hence here. A parallel region still costs a wake-up (~10-20 us, far more
when the cores are busy), which small steps do not repay: :func:`threads_for` runs them on the
calling thread alone.
"""
import functools
import os
from contextlib import contextmanager

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
from numba import njit  # noqa: E402

JIT_OPTIONS = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")
PARALLEL_MIN_ELEMENTS = 1 << 19  # a step whose inputs hold fewer elements runs its kernels on one thread


def jit(*args, **kwargs):
    """``numba.njit`` with the project's flags (cache=True: compiled code is reused across runs).

    Honours ``NUMBA_DISABLE_JIT=1`` (then kernels run as plain Python, for debugging and tests).
    """
    opts = {**JIT_OPTIONS, **kwargs}
    if args and callable(args[0]):
        return njit(**opts)(args[0])
    return njit(*args, **opts)


@functools.lru_cache(maxsize=None)
def _blas_pools() -> tuple:
    """threadpoolctl's controllers of the BLAS libraries numpy loaded (none without threadpoolctl,
    which the runtime does not require)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return ()
    return tuple(c for c in ThreadpoolController().lib_controllers if c.user_api == "blas")


@contextmanager
def threads_for(n_elements: int):
    """One thread for Numba's parallel kernels and numpy's BLAS while inside, when ``n_elements``
    (a step's input size) is below PARALLEL_MIN_ELEMENTS; otherwise the thread counts the caller
    set. Numba's setting is per calling thread; the BLAS pool's is per process (a program run from
    two Python threads at once may briefly see one BLAS thread). Restored on exit.

    Measured on the 2-core host with other processes running, ShuffleNet batch 1: 121 ms with one
    Numba and one BLAS thread, 143 ms with 2 Numba threads, 296 ms with 2 BLAS threads, 791 ms with
    both at 2 (small regions waiting for a worker the scheduler has not run)."""
    if n_elements >= PARALLEL_MIN_ELEMENTS:
        yield
        return
    old = numba.get_num_threads()
    blas = [(c, c.get_num_threads()) for c in _blas_pools()]
    if old > 1:
        numba.set_num_threads(1)
    for c, n in blas:
        if n > 1:
            c.set_num_threads(1)
    try:
        yield
    finally:
        if old > 1:
            numba.set_num_threads(old)
        for c, n in blas:
            if n > 1:
                c.set_num_threads(n)
