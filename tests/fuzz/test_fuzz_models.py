"""Fuzzing the model loader: ``runtime.load(model, target)`` on structurally mutated ONNX models.

Property (tests/fuzz/__init__.py): every mutated model either loads, and then runs once on a small
valid input, or is refused with a HwsimError naming the model file; never another exception, a
hang or a large allocation. A model whose external data points outside its folder must be refused.
Also: the declared-size limit (``HWSIM_MAX_TENSOR_BYTES``), external-data confinement, and the
``hwsim run`` command line on corrupted models (exit 2, one line, no traceback unless --debug).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from runtime.errors import HwsimError, ModelError, ResourceError
from tests.fuzz import check, fuzz_settings, run_case, single_thread_numba
from tests.fuzz.mutators import (FileCase, Sparse, Symlink, byte_mutation, feeds_for, model_cases, model_seeds)

KIND = "models"
EXAMPLES = 150


def case_thunk(case: FileCase, root: Path):
    """(thunk, names the refusal must mention): load the mutated model, run it once if it loads."""
    import runtime

    path = case.write(root)
    seed = model_seeds().get(case.seed)

    def thunk():
        prog = runtime.load(path, case.params["target"])
        prog.run(feeds_for(prog, seed.feeds if seed else {}, path))

    return thunk, [str(path)]


@pytest.fixture(scope="module", autouse=True)
def warm_seeds():
    """Build the seeds and run each once on its targets (compiles their kernels outside the limits)."""
    import runtime

    old = single_thread_numba()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for s in model_seeds().values():
            p = Path(d) / f"{s.name}.onnx"
            p.write_bytes(s.data)
            for t in s.targets:
                try:
                    prog = runtime.load(p, t)
                    prog.run(feeds_for(prog, s.feeds, p))
                except HwsimError:
                    pass
    yield
    import numba

    numba.set_num_threads(old)


def test_the_harness_tells_every_outcome_apart():
    """The property can fail: each kind of failure is recognized (and a refusal must name a file)."""
    import time

    from tests.fuzz import Outcome

    def refuse():
        raise ModelError("/x/m.onnx: Conv node 'c': bad")

    def index_error():
        return [][1]

    def oom():
        raise MemoryError("Unable to allocate 8 TiB")

    assert run_case(lambda: None, []).kind == "ok"
    assert run_case(refuse, ["/x/m.onnx"]).kind == "refused"
    assert run_case(refuse, ["/y/other.onnx"]).kind == "unclear"
    crash = run_case(index_error, [])
    assert crash.kind == "crash" and "IndexError" in crash.message and crash.failed
    assert run_case(lambda: None, [], must_refuse="outside").kind == "accepted"
    assert run_case(lambda: time.sleep(10), [], seconds=0.3).kind == "hang"
    assert run_case(oom, []).kind == "over_memory"
    grow = run_case(lambda: b"x" * (96 << 20), [], memory=32 << 20)  # touches 96 MiB
    assert grow.kind == "over_memory" and grow.rss_growth >= 64 << 20
    with pytest.raises(AssertionError, match="crash: IndexError"):
        check(crash, "case")
    check(Outcome("refused"), "case")


@fuzz_settings(EXAMPLES)
@given(case=model_cases())
def test_mutated_models_load_or_are_refused(case, tmp_path_factory):
    root = tmp_path_factory.mktemp("case")
    thunk, names = case_thunk(case, root)
    check(run_case(thunk, names, case.must_refuse), case)


# ---------------------------------------------------------------------------------------------
# the size limit (refused before allocating) and external data
# ---------------------------------------------------------------------------------------------
def _add_model(w: onnx.TensorProto) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"], name="add")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=[w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_declared_size_over_the_limit_is_refused_before_allocating(tmp_path, monkeypatch):
    from runtime.graph import parse_graph

    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**20, 2**20])  # 4 TiB declared, no data
    p = tmp_path / "m.onnx"
    p.write_bytes(_add_model(t).SerializeToString())
    with pytest.raises(ResourceError, match=r"m\.onnx: .*'w' of shape \[1048576, 1048576\].*limit of 2\.0 GiB"):
        parse_graph(p)
    monkeypatch.setenv("HWSIM_MAX_TENSOR_BYTES", "1KiB")  # configurable: a small limit refuses a small model
    w = numpy_helper.from_array(np.ones((1, 512), np.float32), "w")
    p.write_bytes(_add_model(w).SerializeToString())
    with pytest.raises(ResourceError, match=r"limit of 1\.0 KiB"):
        parse_graph(p)
    monkeypatch.setenv("HWSIM_MAX_TENSOR_BYTES", "4KiB")
    assert parse_graph(p, check=False).initializers["w"].shape == (1, 512)
    monkeypatch.setenv("HWSIM_MAX_TENSOR_BYTES", "lots")
    with pytest.raises(HwsimError, match="HWSIM_MAX_TENSOR_BYTES: expected a byte count"):
        parse_graph(p)


def test_huge_sparse_external_file_is_refused_without_reading_it(tmp_path):
    """A 4 GiB external file (all holes) that matches its tensor's shape: refused by size, and the
    resident set does not grow (nothing was read)."""
    from runtime.graph import parse_graph

    size = 4 << 30
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[size // 4])
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "weights.bin"
    (tmp_path / "m.onnx").write_bytes(_add_model(t).SerializeToString())
    with open(tmp_path / "weights.bin", "wb") as f:
        f.truncate(size)
    before = _rss_kib()
    with pytest.raises(ResourceError, match=r"'w'.*4\.0 GiB.*limit of 2\.0 GiB"):
        parse_graph(tmp_path / "m.onnx")
    # the second line of defence on its own: the external-data check refuses by the file's length
    from runtime.graph import _check_external_data

    with pytest.raises(ResourceError, match=r"m\.onnx: initializer 'w': external data of 4\.0 GiB is more than"):
        _check_external_data(onnx.load(str(tmp_path / "m.onnx"), load_external_data=False), tmp_path,
                             str(tmp_path / "m.onnx"), 2 << 30)
    assert _rss_kib() - before < 256 << 10  # KiB: far below the 4 GiB a read would take


def _external_model(root: Path, location: str) -> Path:
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4), "w")
    raw = w.raw_data
    m = _add_model(w)
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", location
    folder = root / "model"
    folder.mkdir(exist_ok=True)
    (root / "secret.bin").write_bytes(raw)  # outside the model's folder, but readable
    (folder / "inside.bin").write_bytes(raw)
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "w.bin").write_bytes(raw)
    p = folder / "m.onnx"
    p.write_bytes(m.SerializeToString())
    return p


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "../../../../../../etc/passwd",
                                      "/etc/passwd", "ABSOLUTE", "link.bin", "sublink/w.bin"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path, location):
    from runtime.graph import parse_graph

    if location == "ABSOLUTE":
        location = str(tmp_path / "secret.bin")
    p = _external_model(tmp_path, location)
    os.symlink("../secret.bin", p.parent / "link.bin")
    os.symlink("..", p.parent / "sublink")  # a folder link that leads out: sublink/w.bin is ../w.bin
    (tmp_path / "w.bin").write_bytes((tmp_path / "secret.bin").read_bytes())
    with pytest.raises(ModelError, match=r"m\.onnx: initializer 'w' has external data .* outside the model's folder"):
        parse_graph(p)


@pytest.mark.parametrize("location,why", [("missing.bin", "does not exist"), ("sub", "does not exist"),
                                          ("a" * 5000, "cannot be resolved|does not exist"),
                                          ("", "names no file")])
def test_external_data_that_cannot_be_read_is_refused(tmp_path, location, why):
    from runtime.graph import parse_graph

    with pytest.raises(ModelError, match=rf"m\.onnx: initializer 'w'.*({why})"):
        parse_graph(_external_model(tmp_path, location))


def test_external_data_inside_the_folder_loads(tmp_path):
    from runtime.graph import parse_graph

    for loc in ("inside.bin", "sub/w.bin", "./sub/../inside.bin"):
        g = parse_graph(_external_model(tmp_path, loc))
        assert g.initializers["w"].tolist() == [[0.0, 1.0, 2.0, 3.0]]


def test_external_data_of_the_wrong_length_is_refused(tmp_path):
    from runtime.graph import parse_graph

    p = _external_model(tmp_path, "inside.bin")
    (p.parent / "inside.bin").write_bytes(b"\0" * 12)
    with pytest.raises(ModelError, match=r"needs 16 bytes, but its external data in 'inside.bin' has 12"):
        parse_graph(p)


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    seed = model_seeds()["ort-qdq-pt"]
    (d / "good.onnx").write_bytes(seed.data)
    np.savez(d / "in.npz", x=seed.feeds["x"])
    return d


def test_cli_run_on_a_corrupted_model_prints_one_line_and_exits_2(qdq_model, capsys):
    from hwsim.cli import main

    bad = qdq_model / "bad.onnx"
    bad.write_bytes((qdq_model / "good.onnx").read_bytes()[:1000])
    args = ["run", str(bad), "--target", "dsp-int8", "--inputs", str(qdq_model / "in.npz")]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("hwsim: error: ") and str(bad) in err
    assert "Traceback" not in err
    assert main(["--debug"] + args) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ModelError" in err
    assert err.rstrip().splitlines()[-1].startswith(f"hwsim: error: {bad}: ")


@fuzz_settings(10)
@given(mutation=st.data())
def test_cli_run_on_mutated_models_never_shows_a_traceback(qdq_model, mutation):
    """Exit 0 (the mutation was harmless) or 2 with one line naming the file; never 3, never a
    traceback."""
    import contextlib
    import io

    from hwsim.cli import main

    data, desc = mutation.draw(byte_mutation(model_seeds()["ort-qdq-pt"].data))
    bad = qdq_model / "mutated.onnx"
    bad.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", str(bad), "--target", "dsp-int8", "--inputs", str(qdq_model / "in.npz")])
    err = err.getvalue()
    assert code in (0, 2), (desc, err)
    assert "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1 and "mutated.onnx" in err, (desc, err)


def test_file_case_writes_links_and_sparse_files(tmp_path):
    """The harness's own case writer: a symlink, a sparse file and the absolute-location fixup."""
    m = _add_model(numpy_helper.from_array(np.ones((1, 4), np.float32), "w"))
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "secret.bin"
    case = FileCase("model", "t", [], {"model/m.onnx": m.SerializeToString(), "model/l.bin": Symlink("secret.bin"),
                                       "secret.bin": b"\0" * 16, "model/big.bin": Sparse(1 << 30, b"ab")},
                    "model/m.onnx", absolute_secret=("w",))
    p = case.write(tmp_path)
    assert (p.parent / "l.bin").resolve() == (tmp_path / "secret.bin").resolve()
    with open(p.parent / "big.bin", "rb") as f:
        assert f.read(2) == b"ab" and os.fstat(f.fileno()).st_size == 1 << 30
        assert os.fstat(f.fileno()).st_blocks * 512 < 1 << 20  # sparse: no disk used
    loc = onnx.load(str(p), load_external_data=False).graph.initializer[0].external_data[0].value
    assert loc == str(tmp_path / "secret.bin")


# ---------------------------------------------------------------------------------------------
# regression tests: minimal examples of the crashes the fuzzer found (all fixed: plan-time shape
# inference, constants read by steps, plan errors naming file and node). A new crash in a file that
# cannot be fixed at once goes here as xfail(strict=True) with its entry in KNOWN_CRASHES.
# ---------------------------------------------------------------------------------------------
def _assert_clear(model: onnx.ModelProto, target: str, feeds: dict, root: Path) -> None:
    """Loading (and running) ``model`` succeeds or is refused with a HwsimError naming the file."""
    import runtime

    p = root / "m.onnx"
    p.write_bytes(model.SerializeToString())

    def thunk():
        runtime.load(p, target).run(feeds)

    out = run_case(thunk, [str(p)])
    assert out.kind in ("ok", "refused"), out.explain()


def _seed(name: str) -> onnx.ModelProto:
    from tests.fuzz.mutators import ort_seeds

    m = onnx.ModelProto()
    m.ParseFromString(ort_seeds()[name].data)
    return m


def _node(m: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in m.graph.node if n.name == name)


def _set_attr(n: onnx.NodeProto, name: str, value) -> None:
    keep = [a for a in n.attribute if a.name != name]
    del n.attribute[:]
    n.attribute.extend(keep + [helper.make_attribute(name, value)])


def _chain(nodes, inits=(), inputs=(("x", [1, 1, 4, 4]),)) -> onnx.ModelProto:
    """A QDQ model: each input ``n`` quantized to uint8 (scale 1/64, zero point 128) and dequantized
    as ``n_dq``; ``nodes`` read those and write ``o``, quantized and dequantized to the output ``y``."""
    q = [numpy_helper.from_array(np.float32(1 / 64), "s"), numpy_helper.from_array(np.uint8(128), "z")]
    head = []
    for name, _ in inputs:
        head += [helper.make_node("QuantizeLinear", [name, "s", "z"], [f"{name}_q"], name=f"{name}_Q"),
                 helper.make_node("DequantizeLinear", [f"{name}_q", "s", "z"], [f"{name}_dq"], name=f"{name}_DQ")]
    tail = [helper.make_node("QuantizeLinear", ["o", "s", "z"], ["o_q"], name="o_Q"),
            helper.make_node("DequantizeLinear", ["o_q", "s", "z"], ["y"], name="o_DQ")]
    g = helper.make_graph(head + list(nodes) + tail, "chain",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], initializer=q + list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _x(*shape) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)


def test_known_qlinear_op_reading_an_initializer_as_its_input(tmp_path):
    m = _seed("ort-qop")
    _node(m, "gap_quant").input[0] = "c1_zero_point"
    _assert_clear(m, "ort-cpu-vnni", {"x": _x(2, 1, 8, 8)}, tmp_path)


def test_known_reshape_with_a_2d_shape(tmp_path):
    shape = numpy_helper.from_array(np.array([[1, 16]], np.int64), "shape")
    m = _chain([helper.make_node("Reshape", ["x_dq", "shape"], ["o"], name="reshape")], [shape])
    _assert_clear(m, "dsp-int8", {"x": _x(1, 1, 4, 4)}, tmp_path)


def test_known_transpose_perm_of_the_wrong_length(tmp_path):
    m = _chain([helper.make_node("Transpose", ["x_dq"], ["o"], name="transpose", perm=[0])])
    _assert_clear(m, "dsp-int8", {"x": _x(1, 1, 4, 4)}, tmp_path)


def test_known_reshape_to_a_size_that_does_not_fit(tmp_path):
    shape = numpy_helper.from_array(np.array([5], np.int64), "shape")
    m = _chain([helper.make_node("Reshape", ["x_dq", "shape"], ["o"], name="reshape")], [shape])
    _assert_clear(m, "dsp-int8", {"x": _x(1, 1, 4, 4)}, tmp_path)


@pytest.mark.parametrize("target", ["dsp-int8", "ort-cpu-vnni"])  # fixed-point and float32 elementwise rules
def test_known_add_of_shapes_that_do_not_broadcast(tmp_path, target):
    m = _chain([helper.make_node("Add", ["x_dq", "u_dq"], ["o"], name="add")],
               inputs=(("x", [1, 1, 4, 4]), ("u", [1, 1, 3, 3])))
    _assert_clear(m, target, {"x": _x(1, 1, 4, 4), "u": _x(1, 1, 3, 3)}, tmp_path)


def test_known_concat_of_shapes_that_do_not_fit(tmp_path):
    m = _chain([helper.make_node("Concat", ["x_dq", "u_dq"], ["o"], name="concat", axis=1)],
               inputs=(("x", [1, 1, 4, 4]), ("u", [1, 1, 3, 3])))
    _assert_clear(m, "dsp-int8", {"x": _x(1, 1, 4, 4), "u": _x(1, 1, 3, 3)}, tmp_path)


def test_known_concat_axis_out_of_range(tmp_path):
    m = _seed("ort-ops")
    _set_attr(_node(m, "concat"), "axis", 4)
    _assert_clear(m, "ort-cpu-vnni", {"x": _x(2, 1, 8, 8)}, tmp_path)


@pytest.mark.parametrize("seed,node,index,target", [
    ("ort-ops", "wm_DequantizeLinear", 0, "ort-cpu-vnni"),  # MatMul weight: runtime/ops/mac.py _plan_matmul_like
    ("ort-qop", "dw_quant", 3, "ort-cpu-vnni"),  # QLinearConv weight: runtime/ops/mac.py plan_qlinear_conv
])
def test_known_scalar_weight(tmp_path, seed, node, index, target):
    m = _seed(seed)
    _node(m, node).input[index] = "z_zero_point" if seed == "ort-ops" else "x_zero_point"
    _assert_clear(m, target, {"x": _x(2, 1, 8, 8)}, tmp_path)


@pytest.mark.parametrize("attr,value", [("strides", [1, 1, 1, 1]), ("pads", [0, 2**62, 0, 0]),
                                        ("strides", [2**31, 2**31])])
def test_known_conv_attributes_of_the_wrong_length_or_range(tmp_path, attr, value):
    m = _seed("ort-qdq-pt")
    _set_attr(_node(m, "conv1"), attr, value)
    _assert_clear(m, "dsp-int8", {"x": _x(2, 1, 8, 8)}, tmp_path)


def test_known_average_pool_pads_of_the_wrong_length(tmp_path):
    m = _seed("ort-ops")
    _set_attr(_node(m, "avgpool"), "pads", [0, 0])
    _assert_clear(m, "ort-cpu-vnni", {"x": _x(2, 1, 8, 8)}, tmp_path)


def _group_3(m):
    _set_attr(_node(m, "dw_quant"), "group", 3)


def _maxpool_of_a_scalar(m):
    _node(m, "maxpool").input[0] = "r_zero_point"  # folded at plan time: the kernel refuses the 0-d input


@pytest.mark.parametrize("seed,mutate", [("ort-qop", _group_3), ("ort-ops", _maxpool_of_a_scalar)])
def test_known_plan_time_errors_name_the_file(tmp_path, seed, mutate):
    m = _seed(seed)
    mutate(m)
    _assert_clear(m, "ort-cpu-vnni", {"x": _x(2, 1, 8, 8)}, tmp_path)
