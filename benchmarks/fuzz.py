"""Issue 9's long fuzzing profile: the properties of tests/fuzz with many more generated inputs.

Each kind (models, encodings, targets, quantsim configs, data files) runs its test module's case
strategy and thunk under the same harness (tests/fuzz/__init__.py: time limit, memory watch,
``HWSIM_MAX_TENSOR_BYTES`` lowered to 256 MiB). ``--examples`` is the total, split over the kinds
by their weights (models 35%, encodings 25%, targets 15%, quantsim 10%, data 15%). Reported per
kind: inputs tried, succeeded, refused with a clear error, crashes, unclear messages, accepted
inputs that must be refused, hangs, over-memory, known crashes (bugs reported in files the suite
does not own), distinct error messages (numbers, quotes and paths normalized out), and the time
taken. For every distinct failure the example is saved to ``benchmarks/.cache/fuzz/`` (its files
and ``case.txt``); new failures (not known ones) are shrunk by hypothesis when it finds them again
within ``--shrink-budget`` examples.

    python benchmarks/fuzz.py --examples 10000 [--kinds models,data] [--seed 0] [--json]

Exit status: 0 when nothing failed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed as hseed, settings  # noqa: E402

from tests.fuzz import FAILURES, OUTCOMES, normalize_message, run_case, single_thread_numba  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache" / "fuzz"
WEIGHTS = {"models": 0.35, "encodings": 0.25, "targets": 0.15, "quantsim": 0.10, "data": 0.15}


def kinds():
    """Kind -> (case strategy, thunk factory), from the test modules."""
    from tests.fuzz import mutators, test_fuzz_data, test_fuzz_encodings, test_fuzz_models, test_fuzz_targets

    return {
        "models": (mutators.model_cases, test_fuzz_models.case_thunk),
        "encodings": (mutators.encodings_cases, test_fuzz_encodings.case_thunk),
        "targets": (mutators.target_cases, test_fuzz_targets.case_thunk),
        "quantsim": (mutators.quantsim_cases, test_fuzz_targets.quantsim_thunk),
        "data": (mutators.data_cases, test_fuzz_data.case_thunk),
    }


def _signature(out) -> str:
    """One line per distinct failure: the kind, the raising ``file:function`` for crashes, and the
    normalized message."""
    first = out.message.split("\n", 1)[0]
    head, sep, rest = first.partition(": ")
    if out.kind in ("crash", "unclear", "known") and " at " in head:
        return f"{out.kind}: {head}: {normalize_message(rest)[:120]}"
    return f"{out.kind}: {normalize_message(first)[:160]}"


def _save(kind: str, index: int, case, out, shrunk: bool) -> Path:
    d = CACHE / f"{kind}-{index}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    case.write(d / "files")
    (d / "case.txt").write_text(f"{'minimal (shrunk by hypothesis)' if shrunk else 'first found (not shrunk)'}\n"
                                f"{case!r}\n\n{out.explain()}\n")
    return d


def _settings(n: int, rng_seed: int | None, shrink: bool = False):
    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
    s = settings(max_examples=n, deadline=None, database=None, phases=phases, print_blob=False,
                 suppress_health_check=list(HealthCheck))
    return (lambda f: hseed(rng_seed)(s(f))) if rng_seed is not None else s


def fuzz_kind(kind: str, strategy, thunk_of, n: int, rng_seed: int | None, shrink_budget: int) -> dict:
    counts = collections.Counter()
    messages = collections.Counter()
    failures: dict[str, tuple] = {}  # signature -> (case, outcome)
    t0 = time.perf_counter()

    def one(case):
        with tempfile.TemporaryDirectory() as d:
            thunk, names = thunk_of(case, Path(d))
            return run_case(thunk, names, case.must_refuse)

    @_settings(n, rng_seed)
    @given(case=strategy())
    def count(case):
        out = one(case)
        counts[out.kind] += 1
        if out.kind == "refused":
            messages[normalize_message(out.message)] += 1
        if out.failed or out.kind == "known":
            failures.setdefault(_signature(out), (case, out))

    count()
    saved = []
    for i, (sig, (case, out)) in enumerate(sorted(failures.items())):
        minimal = [None]
        if shrink_budget and out.kind != "known":  # known bugs have minimal regression tests already
            @_settings(shrink_budget, rng_seed, shrink=True)
            @given(case=strategy())
            def again(case):
                o = one(case)
                if (o.failed or o.kind == "known") and _signature(o) == sig:
                    minimal[0] = (case, o)
                    raise AssertionError(sig)

            try:
                again()
            except AssertionError:
                pass
        found = minimal[0] is not None
        c, o = minimal[0] if found else (case, out)
        saved.append({"signature": sig, "saved": str(_save(kind, i, c, o, found).relative_to(ROOT)),
                      "shrunk": found})
    return {"kind": kind, "tried": sum(counts.values()), **{k: counts.get(k, 0) for k in OUTCOMES},
            "distinct_messages": len(messages), "seconds": round(time.perf_counter() - t0, 1), "failures": saved,
            "top_messages": messages.most_common(8)}


def atomic_kills(n: int, exports: int, rng_seed: int | None) -> dict:
    """SIGKILL ``n`` raw atomic writers and ``exports`` ``sim.export`` writers at random moments
    (tests/fuzz/test_atomic_kill.py); count partial outputs (0 expected) and kills that landed
    inside a write (a temporary file was left)."""
    import random

    from tests.fuzz.test_atomic_kill import kill_export_writers, kill_raw_writer

    rng = random.Random(rng_seed)
    t0 = time.perf_counter()
    partial = mid_write = 0
    with tempfile.TemporaryDirectory() as d:
        for k in range(n):
            complete, left = kill_raw_writer(Path(d) / f"raw{k}", rng.uniform(0.0, 0.3))
            partial += not complete
            mid_write += bool(left)
        bad_exports = 0
        for k in range(0, exports, 3):
            try:
                kill_export_writers([Path(d) / f"export{k + j}" for j in range(min(3, exports - k))], rng)
            except AssertionError:
                bad_exports += 1
    return {"kills": n + exports, "partial": partial + bad_exports, "mid_write": mid_write,
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=2000, help="total generated inputs over all kinds")
    ap.add_argument("--kinds", default=",".join(WEIGHTS), help="comma-separated subset of " + ",".join(WEIGHTS))
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    ap.add_argument("--shrink-budget", type=int, default=300,
                    help="examples to find each distinct failure again and shrink it (0: save as found)")
    ap.add_argument("--kills", type=int, default=None,
                    help="atomic writers to SIGKILL at random moments (default: examples / 500, at least 8; "
                         "a sixth of them sim.export writers)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    chosen = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(chosen) - set(WEIGHTS))
    if unknown:
        ap.error(f"unknown kinds {unknown}; expected some of {list(WEIGHTS)}")
    total_w = sum(WEIGHTS[k] for k in chosen)
    single_thread_numba()
    warnings.simplefilter("ignore", RuntimeWarning)  # numpy's overflow notes on mutated scales
    table = kinds()
    t0 = time.perf_counter()
    rows = []
    for k in chosen:
        n = max(1, round(args.examples * WEIGHTS[k] / total_w))
        strategy, thunk_of = table[k]
        rows.append(fuzz_kind(k, strategy, thunk_of, n, args.seed, args.shrink_budget))
        if not args.json:
            r = rows[-1]
            print(f"{k:<10} tried {r['tried']:>6}  ok {r['ok']:>5}  refused {r['refused']:>5}  crash {r['crash']:>3}  "
                  f"unclear {r['unclear']:>3}  accepted {r['accepted']:>3}  hang {r['hang']:>3}  "
                  f"over-memory {r['over_memory']:>3}  known {r['known']:>3}  distinct messages "
                  f"{r['distinct_messages']:>4}  {r['seconds']:>7.1f} s", flush=True)
    kills = max(8, args.examples // 500) if args.kills is None else args.kills
    atomic = atomic_kills(kills - kills // 6, kills // 6, args.seed) if kills else None
    seconds = time.perf_counter() - t0
    totals = {k: sum(r[k] for r in rows) for k in ("tried",) + OUTCOMES + ("distinct_messages",)}
    failed = sum(totals[k] for k in FAILURES) + (atomic["partial"] if atomic else 0)
    if args.json:
        print(json.dumps({"kinds": rows, "totals": totals, "atomic": atomic, "seconds": round(seconds, 1)}, indent=2))
    else:
        if atomic:
            print(f"{'atomic':<10} writers killed {atomic['kills']:>4}  partial outputs {atomic['partial']}  "
                  f"(kills inside a write: {atomic['mid_write']})  {atomic['seconds']:>7.1f} s")
        print(f"{'total':<10} tried {totals['tried']:>6}  ok {totals['ok']:>5}  refused {totals['refused']:>5}  "
              f"crash {totals['crash']:>3}  unclear {totals['unclear']:>3}  accepted {totals['accepted']:>3}  "
              f"hang {totals['hang']:>3}  over-memory {totals['over_memory']:>3}  known {totals['known']:>3}  "
              f"distinct messages {totals['distinct_messages']:>4}  {seconds:>7.1f} s")
        for r in rows:
            for f in r["failures"]:
                print(f"  {r['kind']}: {f['signature']}\n    -> {f['saved']} ({'shrunk' if f['shrunk'] else 'as found'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
