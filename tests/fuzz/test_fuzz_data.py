"""Fuzzing data files (``hwsim.data.read_inputs`` / ``read_labels``), and the no-code-from-inputs rule.

Property: a mutated .npz/.npy is read (and its inputs then run through a quantized model) or refused
with a HwsimError naming the file; never another exception, a hang or a large allocation.
Mutations: wrong, extra and missing keys, shapes, dtypes (complex, strings, datetimes, structured,
big-endian, Fortran order), NaN/Inf, empty arrays, object arrays (pickles), headers declaring huge
shapes, members that are not arrays, corrupted bytes.

Security: no pickle is ever loaded from a user's file (a pickle that would create a file when
unpickled is refused and creates nothing), and a static scan of runtime/, hwsim/ and quantizer/
finds every ``np.load`` with ``allow_pickle=False``, every ``torch.load`` with ``weights_only=True``,
and no ``pickle``/``marshal`` loads, ``eval`` or ``exec``.
"""
from __future__ import annotations

import ast
import functools
import io
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given

from runtime.errors import DataError, ResourceError
from tests.fuzz import REPO, check, fuzz_settings, run_case, single_thread_numba
from tests.fuzz.mutators import FileCase, data_cases, huge_header_npy, ort_seeds

KIND = "data"
EXAMPLES = 120


@functools.lru_cache(maxsize=None)
def _program():
    """tiny_cnn's quantized model on dsp-int8 (its file stays for the process: errors name it)."""
    import atexit
    import shutil
    import tempfile

    import runtime

    seed = ort_seeds()["ort-qdq-pt"]
    d = tempfile.mkdtemp(prefix="hwsim-fuzz-")
    atexit.register(shutil.rmtree, d, True)
    p = Path(d) / "tiny_cnn_qdq.onnx"
    p.write_bytes(seed.data)
    return runtime.load(p, "dsp-int8")


def case_thunk(case: FileCase, root: Path):
    from hwsim.data import read_inputs, read_labels

    path = case.write(root)

    def thunk():
        if case.params["which"] == "labels":
            y = read_labels(path, case.params["n"])
            if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != case.params["n"]:
                raise AssertionError(f"read_labels accepted {y.dtype} {y.shape}")
            return
        feeds = read_inputs(path, ["x"])
        _program().run(feeds)

    return thunk, [str(path), _program().source]  # a run refusing the data names the model and node


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One Numba thread, and the model's kernels compiled before the time limits apply."""
    import numba

    old = single_thread_numba()
    _program().run(ort_seeds()["ort-qdq-pt"].feeds)
    yield
    numba.set_num_threads(old)


@fuzz_settings(EXAMPLES)
@given(case=data_cases())
def test_mutated_data_files_are_read_or_refused(case, tmp_path_factory):
    thunk, names = case_thunk(case, tmp_path_factory.mktemp("case"))
    check(run_case(thunk, names, case.must_refuse), case)


def test_declared_shapes_are_checked_before_reading(tmp_path, monkeypatch):
    from hwsim.data import read_inputs, read_labels

    p = tmp_path / "big.npy"
    p.write_bytes(huge_header_npy((2**40,)))  # 4 TiB declared in a 200-byte file
    with pytest.raises(ResourceError, match=r"big\.npy: shape \(1099511627776,\) of float32 declares 4398046511104 bytes"):
        read_inputs(p, ["x"])
    p.write_bytes(huge_header_npy((1000,)))
    with pytest.raises(DataError, match=r"big\.npy: shape \(1000,\) of float32 needs 4000 bytes, but the file holds 64"):
        read_inputs(p, ["x"])
    z = tmp_path / "big.npz"
    import zipfile

    with zipfile.ZipFile(z, "w") as f:
        f.writestr("x.npy", huge_header_npy((2**30, 2**20), "<i8"))
    with pytest.raises(ResourceError, match=r"big\.npz: member 'x\.npy': shape"):
        read_inputs(z, ["x"])
    monkeypatch.setenv("HWSIM_MAX_TENSOR_BYTES", "100")  # the limit is the loaders' one
    np.save(tmp_path / "y.npy", np.arange(100))
    with pytest.raises(ResourceError, match="more than the limit of 100"):
        read_labels(tmp_path / "y.npy", 100)


class _Evil:
    """Unpickling this creates the file ``marker``: proof that code from the input ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_refused_without_running_them(tmp_path):
    from hwsim.data import read_inputs, read_labels

    marker = tmp_path / "pwned"
    obj = np.empty(1, dtype=object)
    obj[0] = _Evil(str(marker))
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    (tmp_path / "x.npy").write_bytes(buf.getvalue())
    np.savez(tmp_path / "x.npz", x=obj, allow_pickle=True)
    import pickle

    (tmp_path / "raw.npy").write_bytes(pickle.dumps(_Evil(str(marker))))
    for name in ("x.npy", "x.npz", "raw.npy"):
        with pytest.raises(DataError, match=re.escape(name) + ".*(Python objects|pickled)"):
            read_inputs(tmp_path / name, ["x"])
    with pytest.raises(DataError, match="pickled"):
        read_labels(tmp_path / "x.npy")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# static scan: nothing executes code from an input
# ---------------------------------------------------------------------------------------------
def _calls(tree: ast.AST):
    """(dotted name of the called function, call node) for every call, e.g. ``np.lib.format.read_array``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def _kw(node: ast.Call, key: str):
    for k in node.keywords:
        if k.arg == key and isinstance(k.value, ast.Constant):
            return k.value.value
    return None


def unsafe_loads(roots=("runtime", "hwsim", "quantizer")) -> list[str]:
    """Every place in the project's code that could execute code from a file it reads."""
    bad = []
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for name, node in _calls(ast.parse(path.read_text(), rel)):
                where = f"{rel}:{node.lineno}"
                if (name in ("np.load", "numpy.load") or name.endswith("format.read_array")) \
                        and _kw(node, "allow_pickle") is not False:
                    bad.append(f"{where}: {name} without allow_pickle=False")
                elif name == "torch.load" and _kw(node, "weights_only") is not True:
                    bad.append(f"{where}: torch.load without weights_only=True")
                elif name in ("pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "dill.load",
                              "cloudpickle.load", "joblib.load", "yaml.load", "yaml.unsafe_load"):
                    bad.append(f"{where}: {name}")
                elif name in ("eval", "exec", "builtins.eval", "builtins.exec"):
                    bad.append(f"{where}: {name}()")
    return bad


def test_no_code_is_executed_from_inputs():
    assert unsafe_loads() == []


def test_the_scan_finds_violations(tmp_path, monkeypatch):
    """The scan can fail: it flags each unsafe form in a planted file."""
    import tests.fuzz.test_fuzz_data as me

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "bad.py").write_text(
        "import numpy as np, torch, pickle\n"
        "np.load('a')\nnp.load('a', allow_pickle=True)\nnp.load('a', allow_pickle=False)\n"
        "torch.load('w')\ntorch.load('w', weights_only=True)\npickle.loads(b'')\neval('1')\nexec('x=1')\n"
        "model.eval()\nnp.lib.format.read_array(f)\n")
    monkeypatch.setattr(me, "REPO", tmp_path)
    found = unsafe_loads(("pkg",))
    assert [f.split(": ", 1)[1] for f in found] == [
        "np.load without allow_pickle=False", "np.load without allow_pickle=False",
        "torch.load without weights_only=True", "pickle.loads", "eval()", "exec()",
        "np.lib.format.read_array without allow_pickle=False"]
