"""Fuzzing the encodings reader: ``runtime.aimet.read_encodings`` and ``runtime.load(float model,
target, encodings)`` on mutated AIMET files of every version hwsim writes (0.6.1, 1.0.0, 2.0.0).

Property: the file is read and the float model plus encodings load and run once, or a HwsimError
names the encodings file or the model; never another exception, a hang or a large allocation.
Mutations: wrong types, missing and unknown fields, unknown or duplicated tensor names, bit widths
out of range, per-channel lists of the wrong length, inconsistent symmetry and offsets, special
numbers, truncated or invalid text, deep nesting, files past the size limit.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given

from runtime.errors import EncodingError, ResourceError
from tests.fuzz import check, fuzz_settings, run_case, single_thread_numba
from tests.fuzz.mutators import FileCase, encodings_cases, feeds_for, sim_exports

KIND = "encodings"
EXAMPLES = 120


def _export(case: FileCase):
    name = case.seed.split("@")[0]
    return next(s for s in sim_exports() if s.name == name)


def case_thunk(case: FileCase, root: Path):
    import runtime
    from runtime.aimet import read_encodings

    path = case.write(root)
    model = root / case.params["model"]
    feeds = _export(case).feeds

    def thunk():
        read_encodings(path)
        prog = runtime.load(model, case.params["target"], path)
        prog.run(feeds_for(prog, feeds, model))

    return thunk, [str(path), str(model)]


def _load_seeds(root: Path) -> int:
    """Load and run every unmutated seed whose target is a built-in one; returns how many."""
    import runtime

    loaded = 0
    for s in sim_exports():
        for version, doc in s.encodings.items():
            d = root / f"{s.name}-{version}"
            d.mkdir()
            (d / "m.encodings").write_text(json.dumps(doc))
            (d / "m_float.onnx").write_bytes(s.float_model)
            if isinstance(s.target, str):  # the per-block export: its target is not a built-in one
                prog = runtime.load(d / "m_float.onnx", s.target, d / "m.encodings")
                assert prog.run(s.feeds)
                loaded += 1
    return loaded


@pytest.fixture(scope="module", autouse=True)
def one_thread(tmp_path_factory):
    """One Numba thread, and the seeds' kernels compiled before the time limits apply."""
    import numba

    old = single_thread_numba()
    _load_seeds(tmp_path_factory.mktemp("warm"))
    yield
    numba.set_num_threads(old)


def test_seeds_are_valid(tmp_path):
    """The unmutated seeds load (else the fuzzing would only ever test refusals)."""
    assert _load_seeds(tmp_path) >= 6


def test_known_exported_encodings_name_only_tensors_of_the_exported_float_model():
    assert {s.name: s.dangling for s in sim_exports()} == {s.name: () for s in sim_exports()}


@fuzz_settings(EXAMPLES)
@given(case=encodings_cases())
def test_mutated_encodings_load_or_are_refused(case, tmp_path_factory):
    thunk, names = case_thunk(case, tmp_path_factory.mktemp("case"))
    check(run_case(thunk, names, case.must_refuse), case)


def test_huge_and_deeply_nested_files_are_refused(tmp_path, monkeypatch):
    from runtime.aimet import read_encodings

    p = tmp_path / "huge.encodings"
    with open(p, "wb") as f:
        f.write(b'{"version": "1.0.0", "activation_encodings": [')
        f.truncate(3 << 30)  # 3 GiB of holes: reading it would take 3 GiB
    with pytest.raises(ResourceError, match=r"huge\.encodings: the encodings file has 3221225472 bytes"):
        read_encodings(p)
    monkeypatch.setenv("HWSIM_MAX_TENSOR_BYTES", "1K")
    p.write_text(json.dumps({"version": "1.0.0", "activation_encodings": [], "param_encodings": [],
                             "excluded_layers": ["x" * 2000]}))
    with pytest.raises(ResourceError, match="more than the limit of 1024"):
        read_encodings(p)
    monkeypatch.delenv("HWSIM_MAX_TENSOR_BYTES")
    p.write_text("[" * 100_000)
    with pytest.raises(EncodingError, match=r"huge\.encodings: not an encodings file: JSON nested too deeply"):
        read_encodings(p)
