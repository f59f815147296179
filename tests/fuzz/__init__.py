"""The fuzzing harness of issue 9: every untrusted input, mutated, loads or is refused clearly.

A *case* is one mutated input (a model, an encodings file, a target or quantsim config, a data file)
written to a fresh folder; the test module of its kind turns it into a thunk that calls the loader
(and, where the loader succeeds, uses the result once). :func:`run_case` runs the thunk under a time
limit and a memory watch and classifies what happened:

============  =========================================================================
outcome       meaning
============  =========================================================================
ok            the loader accepted the input (and the loaded object worked)
refused       a :class:`runtime.errors.HwsimError` whose message names an input file
unclear       a HwsimError whose message names none of the input files
crash         any other exception (the loader let an internal error through)
accepted      loaded an input it must refuse (e.g. external data outside the model's folder)
known         a crash or unclear message whose signature is in :data:`KNOWN_CRASHES` (a bug in
              a file this suite does not own, pinned by an ``xfail(strict=True)`` regression test)
hang          the case ran past the time limit
over_memory   MemoryError, or the resident set grew by more than the memory limit
============  =========================================================================

Limits (environment variables, read when a case runs):

- ``HWSIM_FUZZ_TIME_LIMIT``: seconds per case (default 30: a mutated model may need a Numba kernel
  compiled for a new signature, which takes seconds on a loaded machine). Python code is
  interrupted by ``SIGALRM`` (the limit is extended while Numba compiles a kernel: that is not the
  case hanging); a case stuck in C code past four times the limit makes ``faulthandler`` dump every
  thread's stack and end the process, so a hang can never pass silently.
- ``HWSIM_FUZZ_MEMORY_LIMIT``: bytes the resident set may grow during one case (default 1 GiB;
  measured with Linux's peak-RSS reset, ``/proc/self/clear_refs``).
- The loaders' own limit on declared tensor sizes, ``HWSIM_MAX_TENSOR_BYTES``
  (:func:`runtime.graph.max_tensor_bytes`), is set to :data:`LOADER_LIMIT` (256 MiB) while a case
  runs, so that a mutation declaring a huge tensor is refused long before the memory watch.

The fast profile (:func:`fuzz_settings`) keeps ``pytest tests/fuzz`` under a minute; the long one
is ``python benchmarks/fuzz.py --examples N``, which runs the same cases.
"""
from __future__ import annotations

import dataclasses
import faulthandler
import fnmatch
import os
import re
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

from hypothesis import HealthCheck, settings

from runtime.errors import HwsimError

REPO = Path(__file__).resolve().parents[2]
PROJECT_DIRS = ("runtime", "hwsim", "quantizer")
LOADER_LIMIT = 256 << 20
OUTCOMES = ("ok", "refused", "unclear", "crash", "accepted", "known", "hang", "over_memory")
FAILURES = ("unclear", "crash", "accepted", "hang", "over_memory")


def fuzz_settings(max_examples: int) -> settings:
    """The fast profile for one property: ``max_examples``, no deadline (the time limit is the
    harness's), derandomized so that ``make test`` sees the same inputs every run
    (``HWSIM_FUZZ_RANDOM=1`` explores new ones; the long profile, benchmarks/fuzz.py, always does)."""
    explore = os.environ.get("HWSIM_FUZZ_RANDOM", "") not in ("", "0")
    return settings(settings.default, max_examples=max_examples, deadline=None,
                    derandomize=not explore, database=settings.default.database if explore else None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example],
                    print_blob=True)


# ---------------------------------------------------------------------------------------------
# known crashes in files this suite does not own (reported to the lead, see the regression tests)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KnownCrash:
    """A crash (or unclear message) signature: the exception type and the innermost project frame
    ``file:function`` that raised it."""

    exc_type: str
    where: str  # e.g. "runtime/ops/mac.py:plan_conv"; fnmatch patterns ("runtime/program.py:*") allowed
    reason: str
    regression_test: str  # the xfail(strict=True) test that flips when the bug is fixed


_MODELS = "tests/fuzz/test_fuzz_models.py::"
KNOWN_CRASHES: tuple[KnownCrash, ...] = (  # empty: every crash the fuzzer found is fixed; add new ones here
)


def crash_signature(exc: BaseException) -> tuple[str, str]:
    """(exception type, innermost ``file:function`` under runtime/, hwsim/ or quantizer/)."""
    where = "?"
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        try:
            rel = Path(frame.f_code.co_filename).resolve().relative_to(REPO)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] in PROJECT_DIRS:
            where = f"{rel.as_posix()}:{frame.f_code.co_name}"
    return type(exc).__name__, where


def known_crash(exc: BaseException) -> KnownCrash | None:
    t, where = crash_signature(exc)
    for k in KNOWN_CRASHES:
        if k.exc_type == t and fnmatch.fnmatchcase(where, k.where):
            return k
    return None


# ---------------------------------------------------------------------------------------------
# limits
# ---------------------------------------------------------------------------------------------
class CaseTimeout(BaseException):
    """Raised by SIGALRM in a case past its time limit (a BaseException, so that no loader's
    ``except Exception`` turns it into a refusal)."""


def time_limit() -> float:
    return float(os.environ.get("HWSIM_FUZZ_TIME_LIMIT", "30"))


def memory_limit() -> int:
    return int(float(os.environ.get("HWSIM_FUZZ_MEMORY_LIMIT", str(1 << 30))))


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


class _CompileWatch:
    """Counts Numba compilations in progress (``numba:compile`` events): compiling a kernel for a new
    signature is not the case hanging, and on a loaded machine it can take longer than a case may."""

    def __init__(self):
        self.active = 0
        self.installed = False

    def install(self) -> None:
        if self.installed:
            return
        try:
            from numba.core import event
        except ImportError:
            return
        watch = self

        class Listener(event.Listener):
            def on_start(self, ev):
                watch.active += 1

            def on_end(self, ev):
                watch.active -= 1

        event.register("numba:compile", Listener())
        self.installed = True


COMPILES = _CompileWatch()
MAX_COMPILE_GRACE = 20  # time limits a case may be extended by while Numba compiles


def _watchdog(seconds: float) -> float:
    return 4 * seconds + 30


@contextmanager
def _alarm(seconds: float):
    """SIGALRM after ``seconds`` (main thread only; elsewhere no limit but the watchdog), extended
    while Numba compiles, and a faulthandler watchdog that ends the process after twice as long."""
    main = threading.current_thread() is threading.main_thread()
    COMPILES.install()
    grace = [0]

    def on_alarm(signum, frame):
        if COMPILES.active and grace[0] < MAX_COMPILE_GRACE:
            grace[0] += 1
            signal.setitimer(signal.ITIMER_REAL, seconds)
            faulthandler.dump_traceback_later(_watchdog(seconds), exit=True, file=sys.__stderr__)
            return
        raise CaseTimeout(f"over the {seconds:g} s time limit")

    if main:
        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(_watchdog(seconds), exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------------------------
# running one case
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    kind: str  # one of OUTCOMES
    message: str = ""  # the error's message (or the crash's one-line summary)
    detail: str = ""  # a traceback for crash/known/hang
    seconds: float = 0.0
    rss_growth: int = 0  # bytes

    @property
    def failed(self) -> bool:
        return self.kind in FAILURES

    def explain(self) -> str:
        return f"{self.kind}: {self.message}\n{self.detail}".rstrip()


def names_an_input(message: str, names: Iterable[str]) -> bool:
    """True if ``message`` mentions one of ``names`` (file paths: the full path or the base name)."""
    for n in names:
        if n and (n in message or Path(n).name in message):
            return True
    return False


def run_case(thunk: Callable[[], object], input_names: list[str], must_refuse: str = "",
             seconds: float | None = None, memory: int | None = None) -> Outcome:
    """Run ``thunk`` under the limits (``seconds``/``memory`` override the environment's) and
    classify the outcome (see the module docstring); with ``must_refuse`` (the reason), success is
    the failure ``accepted``."""
    limit = time_limit() if seconds is None else seconds
    mem_limit = memory_limit() if memory is None else memory
    rss0 = (_status_kib("VmRSS") or 0) << 10
    watched = _reset_peak_rss()
    t0 = time.perf_counter()
    try:
        with _env("HWSIM_MAX_TENSOR_BYTES", str(LOADER_LIMIT)), _alarm(limit):
            thunk()
        out = Outcome("accepted", f"loaded an input it must refuse: {must_refuse}") if must_refuse else Outcome("ok")
    except CaseTimeout as e:
        out = Outcome("hang", str(e), "".join(traceback.format_exception(e)[-12:]))
    except MemoryError as e:
        t, where = crash_signature(e)
        out = Outcome("known" if known_crash(e) else "over_memory", f"{t} at {where}: {e}",
                      "".join(traceback.format_exception(e)))
    except HwsimError as e:
        msg = str(e)
        if names_an_input(msg, input_names):
            out = Outcome("refused", f"{type(e).__name__}: {msg}")
        else:
            t, where = crash_signature(e)
            out = Outcome("known" if known_crash(e) else "unclear", f"{t} at {where}: {msg}"[:2000],
                          "".join(traceback.format_exception(e)))
    except Exception as e:  # noqa: BLE001  (the point: anything else is a crash)
        k = known_crash(e)
        t, where = crash_signature(e)
        out = Outcome("known" if k else "crash", f"{t} at {where}: {e}"[:2000], "".join(traceback.format_exception(e)))
    out.seconds = time.perf_counter() - t0
    if watched:
        out.rss_growth = max(0, ((_status_kib("VmHWM") or 0) << 10) - rss0)
        if out.rss_growth > mem_limit and out.kind != "over_memory":
            out = dataclasses.replace(out, kind="over_memory", message=f"resident set grew by "
                                      f"{out.rss_growth / 2**20:.0f} MiB (limit {mem_limit / 2**20:.0f} MiB); "
                                      f"outcome was {out.kind}: {out.message}")
    return out


def check(outcome: Outcome, case) -> None:
    """The fuzz property: fail the test with the case and the outcome unless it was acceptable."""
    if outcome.failed:
        raise AssertionError(f"{outcome.explain()}\n\ncase: {case!r}")


_NUM = re.compile(r"(?<![A-Za-z_])[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|\.\d+|nan|inf)(?![A-Za-z_])", re.I)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_PATH = re.compile(r"(?:/[^\s:'\"]+)+")


def normalize_message(message: str) -> str:
    """A refusal message with paths, quoted names and numbers replaced, so that messages that differ
    only in those count as one kind of error.

    >>> print(normalize_message("/tmp/x/m.onnx: Conv node 'c1': axis 5 is out of range for a 4-D tensor"))
    <path>: Conv node <q>: axis <n> is out of range for a <n>-D tensor
    """
    m = _PATH.sub("<path>", message)
    m = _QUOTED.sub("<q>", m)
    return _NUM.sub("<n>", m)[:300]


def single_thread_numba():
    """Run Numba's parallel kernels on one thread in the fuzz process (the cases are tiny; waking a
    pool of threads on a loaded machine costs more than the work). Returns the previous count."""
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(1)
    return old
