"""Fuzzing target files (``runtime.target.load_target``) and AIMET quantsim configs
(``hwsim.quantsim_config.import_quantsim_config``).

Property: a mutated file is accepted, or refused with a HwsimError naming the file; never another
exception, a hang or a large allocation. An accepted target also round-trips (``parse_target`` of
its ``to_dict`` is equal, so nothing invalid hides in it) and, now and then, plans and runs a
quantized model; an imported quantsim config gives a valid target that saves and loads back equal.
Mutations: every field with a wrong type, unknown keys, values spliced from other targets
(impossible combinations such as a 16-bit accumulator for int8 x int8, per-channel or 4-bit
activations, int64 requantization on a 32-bit accumulator), special numbers, invalid text.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given

from runtime.errors import TargetError
from tests.fuzz import check, fuzz_settings, run_case, single_thread_numba
from tests.fuzz.mutators import FileCase, feeds_for, ort_seeds, quantsim_cases, target_cases

KIND = "targets"
EXAMPLES = 120
QUANTSIM_EXAMPLES = 80


def case_thunk(case: FileCase, root: Path):
    import runtime
    from runtime.target import load_target, parse_target

    path = case.write(root)

    def thunk():
        t = load_target(path)
        if parse_target(t.to_dict(), str(path)) != t:
            raise AssertionError(f"{path}: the accepted target does not round-trip through to_dict")
        if case.params.get("run"):
            seed = ort_seeds()["ort-qdq-pt"]
            model = root / "seed.onnx"
            model.write_bytes(seed.data)
            prog = runtime.load(model, t)
            prog.run(feeds_for(prog, seed.feeds, model))

    return thunk, [str(path)]


def quantsim_thunk(case: FileCase, root: Path):
    from hwsim.quantsim_config import import_quantsim_config
    from runtime.target import load_target, parse_target, save_target

    path = case.write(root)

    def thunk():
        t, warnings = import_quantsim_config(path, case.params["base"])
        if not all(isinstance(w, str) for w in warnings):
            raise AssertionError(f"warnings must be strings, found {warnings!r}")
        if parse_target(t.to_dict(), str(path)) != t:
            raise AssertionError(f"{path}: the imported target does not round-trip through to_dict")
        out = save_target(t, root / "imported.toml")
        if load_target(out) != t:
            raise AssertionError(f"{path}: the imported target does not load back equal from {out}")

    return thunk, [str(path)]


@pytest.fixture(scope="module", autouse=True)
def one_thread(tmp_path_factory):
    """One Numba thread, and the seed model's kernels compiled before the time limits apply."""
    import numba

    import runtime

    old = single_thread_numba()
    seed = ort_seeds()["ort-qdq-pt"]
    p = tmp_path_factory.mktemp("warm") / "seed.onnx"
    p.write_bytes(seed.data)
    runtime.load(p, "dsp-int8").run(seed.feeds)
    yield
    numba.set_num_threads(old)


@fuzz_settings(EXAMPLES)
@given(case=target_cases())
def test_mutated_targets_load_or_are_refused(case, tmp_path_factory):
    thunk, names = case_thunk(case, tmp_path_factory.mktemp("case"))
    check(run_case(thunk, names, case.must_refuse), case)


@fuzz_settings(QUANTSIM_EXAMPLES)
@given(case=quantsim_cases())
def test_mutated_quantsim_configs_import_or_are_refused(case, tmp_path_factory):
    thunk, names = quantsim_thunk(case, tmp_path_factory.mktemp("case"))
    check(run_case(thunk, names, case.must_refuse), case)


@pytest.mark.parametrize("section,change,where", [
    ("accumulator", {"bits": 16}, "arithmetic.accumulator.bits"),
    ("activations", {"granularity": "per_channel"}, "arithmetic.activations.granularity"),
    ("activations", {"dtype": "int4"}, "arithmetic.activations.dtype"),
    ("requant", {"rounding": "int64"}, "arithmetic.requant.rounding"),
    ("bias", {"dtype": "int64"}, "arithmetic.bias.dtype"),
    ("weights", {"block_size": 32}, "arithmetic.weights.block_size"),
])
def test_impossible_combinations_are_named(tmp_path, section, change, where):
    import tomllib

    import tomli_w

    from runtime.target import builtin_dir, load_target

    d = tomllib.loads((builtin_dir() / "dsp-int8.toml").read_text())
    d["arithmetic"][section].update(change)
    p = tmp_path / "t.toml"
    p.write_text(tomli_w.dumps(d))
    with pytest.raises(TargetError, match=r"t\.toml: " + re.escape(where) + ": "):
        load_target(p)


@pytest.mark.parametrize("value", ["nan", "inf", "-1.0", "0.0"])
def test_cost_must_be_finite_and_positive(tmp_path, value):
    from runtime.target import builtin_dir, load_target

    text = (builtin_dir() / "dsp-int8.toml").read_text().replace("clock_mhz = 800.0", f"clock_mhz = {value}")
    p = tmp_path / "t.toml"
    p.write_text(text)
    with pytest.raises(TargetError, match=r"t\.toml: cost\.clock_mhz: expected a finite number > 0"):
        load_target(p)


def test_alias_cycles_and_huge_files_are_refused(tmp_path):
    from runtime.target import load_target

    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    for me, other in ((a, b), (b, a)):
        me.write_text(f'schema_version = 1\nname = "{me.stem}"\ndescription = "cycle"\n'
                      f'[alias]\ndefault = "{other}"\nrules = []\n')
    with pytest.raises(TargetError, match=r"a\.toml: alias 'a' is part of a cycle of aliases"):
        load_target(a)
    huge = tmp_path / "huge.toml"
    with open(huge, "wb") as f:
        f.write(b"schema_version = 1\n")
        f.truncate(3 << 30)
    with pytest.raises(TargetError, match=r"huge\.toml: 3221225472 bytes is too large for a target file"):
        load_target(huge)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    with pytest.raises(TargetError, match=r"deep\.json: not a target file: JSON nested too deeply"):
        load_target(deep)
