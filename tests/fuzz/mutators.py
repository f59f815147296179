"""Structured mutations of the project's own valid inputs (hypothesis strategies).

Seeds (built once per process, deterministic):

- models: ONNX Runtime's ``quantize_static`` of tests/onnx_models.tiny_cnn (QDQ per channel, QDQ per
  tensor, QOperator) and of a small graph with pooling, Concat, Resize, Sigmoid, Mul, MatMul and
  Softmax; hwsim's export (``sim.export``) of tests/hwsim/sim_models ResDW (dsp-int8; npu-w4a8 with
  per-block int4 weights) and Branchy (npu-int8-pc); ../shared/data/onnx models when present.
- encodings: the AIMET files those exports write (0.6.1, 1.0.0, 2.0.0) with their float models.
- targets: targets/*.toml; AIMET quantsim configs: tests/data/quantsim_*.json.
- data: an .npz of inputs and an .npy of labels for tiny_cnn.

A mutated input is a :class:`FileCase`: the files to write (bytes, a symlink, or a sparse file that
takes no disk space) and the list of mutations applied, so a failure prints what was done.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import io
import json
import math
import os
import struct
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from . import LOADER_LIMIT, REPO

SHARED_ONNX = REPO.parent / "shared" / "data" / "onnx"
TARGETS = ("dsp-int8", "npu-int8-pc", "npu-w4a8", "htp-a16w8", "ort-cpu-vnni", "ort-cpu-avx2")


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Symlink:
    """A symbolic link to ``target`` (a path relative to the case folder)."""

    target: str


@dataclasses.dataclass(frozen=True)
class Sparse:
    """A file of ``size`` bytes that starts with ``head`` and is a hole after it (no disk used)."""

    size: int
    head: bytes = b""


@dataclasses.dataclass
class FileCase:
    """One mutated input: ``files`` (relative path -> bytes | Symlink | Sparse) written to a fresh
    folder; ``main`` is the file under test; ``params`` holds kind-specific choices (target, ...).
    ``must_refuse`` names a reason why the loader must refuse it (e.g. external data outside the
    model's folder): such a case may not load."""

    kind: str
    seed: str
    mutations: list[str]
    files: dict[str, Any]
    main: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    must_refuse: str = ""
    absolute_secret: tuple[str, ...] = ()  # initializers whose external location becomes <folder>/secret.bin

    def write(self, root: Path) -> Path:
        """Write the files under ``root``; returns the path of the main file."""
        root = Path(root)
        for rel, content in self.files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Symlink):
                os.symlink(os.path.relpath(root / content.target, p.parent), p)
            elif isinstance(content, Sparse):
                with open(p, "wb") as f:
                    f.write(content.head)
                    f.truncate(content.size)
            elif content is None:
                p.mkdir(exist_ok=True)
            else:
                p.write_bytes(content)
        if self.absolute_secret:  # in the model: the main file, or the model an encodings file belongs to
            model = root / self.params.get("model", self.main)
            m = onnx.ModelProto()
            m.ParseFromString(model.read_bytes())
            for t in m.graph.initializer:
                if t.name in self.absolute_secret:
                    for e in t.external_data:
                        if e.key == "location":
                            e.value = str(root / "secret.bin")
            model.write_bytes(m.SerializeToString())
        return root / self.main

    def __repr__(self) -> str:
        sizes = {k: (f"symlink->{v.target}" if isinstance(v, Symlink) else f"sparse {v.size} B"
                     if isinstance(v, Sparse) else "dir" if v is None else f"{len(v)} B") for k, v in self.files.items()}
        extra = f", must_refuse={self.must_refuse!r}" if self.must_refuse else ""
        return (f"FileCase({self.kind}, seed={self.seed!r}, params={self.params!r}, mutations={self.mutations!r}, "
                f"files={sizes}{extra})")


# ---------------------------------------------------------------------------------------------
# seeds
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelSeed:
    name: str
    data: bytes  # serialized ModelProto
    feeds: dict[str, np.ndarray]  # a small valid input
    targets: tuple[str, ...]  # built-in targets to try it on


def _images(n: int, seed: int, shape=(1, 8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(np.float32)


def ops_model() -> onnx.ModelProto:
    """A float graph with the planner's other ops: Conv+Relu, MaxPool, AveragePool, Concat, Resize,
    Sigmoid, Mul, GlobalAveragePool, Flatten, MatMul, Add and Softmax (seeded weights)."""
    rng = np.random.default_rng(3)
    inits = {"w": rng.normal(0, .3, (4, 1, 3, 3)), "b": rng.normal(0, .1, 4), "scales": np.array([1, 1, 2, 2]),
             "wm": rng.normal(0, .3, (8, 6)), "bm": rng.normal(0, .1, 6)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]), n("Relu", ["c"], ["r"], name="relu"),
             n("MaxPool", ["r"], ["mp"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
             n("AveragePool", ["r"], ["ap"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2]),
             n("Concat", ["mp", "ap"], ["cat"], name="concat", axis=1),
             n("Resize", ["cat", "", "scales"], ["up"], name="resize", mode="nearest"),
             n("Sigmoid", ["up"], ["sg"], name="sigmoid"), n("Mul", ["sg", "up"], ["m"], name="mul"),
             n("GlobalAveragePool", ["m"], ["g"], name="gap"), n("Flatten", ["g"], ["f"], name="flatten"),
             n("MatMul", ["f", "wm"], ["mm"], name="matmul"), n("Add", ["mm", "bm"], ["z"], name="add"),
             n("Softmax", ["z"], ["y"], name="softmax", axis=-1)]
    g = helper.make_graph(nodes, "ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 6])],
                          initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@functools.lru_cache(maxsize=None)
def ort_seeds() -> dict[str, ModelSeed]:
    """ONNX Runtime's quantize_static of the test models (no torch needed)."""
    import logging

    from tests.onnx_models import quantize_with_ort, tiny_cnn

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's pre-processing advice
    calib = _images(8, 0)
    feeds = {"x": _images(2, 1)}
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for name, model, fmt, pc, targets in (
                ("ort-qdq-pc", tiny_cnn(), "qdq", True, ("npu-int8-pc", "ort-cpu-vnni", "ort-cpu-avx2", "npu-w4a8")),
                ("ort-qdq-pt", tiny_cnn(), "qdq", False, ("dsp-int8", "ort-cpu-vnni", "htp-a16w8")),
                ("ort-qop", tiny_cnn(), "qop", False, ("ort-cpu-vnni", "dsp-int8", "ort-cpu-avx2")),
                ("ort-ops", ops_model(), "qdq", False, ("ort-cpu-vnni", "ort-cpu-avx2", "dsp-int8"))):
            p = quantize_with_ort(model, calib, Path(d) / f"{name}.onnx", fmt, pc)
            out[name] = ModelSeed(name, Path(p).read_bytes(), feeds, targets)
    return out


@dataclasses.dataclass(frozen=True)
class SimExport:
    name: str
    target: Any  # a built-in name or a Target
    qdq: bytes
    float_model: bytes
    encodings: dict[str, dict]  # version -> parsed AIMET JSON (entries naming no tensor of the float model dropped)
    feeds: dict[str, np.ndarray]
    dangling: tuple[str, ...] = ()  # what the export named that its float model lacks (a bug: see test_fuzz_encodings)


def _tensor_names_of(model: bytes) -> set[str]:
    m = onnx.ModelProto()
    m.ParseFromString(model)
    return set(_tensor_names(m))


def _drop_entries(doc: dict, names: set[str]) -> dict:
    """An AIMET encodings document without the entries whose tensor is not in ``names``."""
    doc = copy.deepcopy(doc)
    for section in ("activation_encodings", "param_encodings", "encodings"):
        entries = doc.get(section)
        if isinstance(entries, dict):
            doc[section] = {k: v for k, v in entries.items() if k in names}
        elif isinstance(entries, list):
            doc[section] = [e for e in entries if e.get("name") in names]
    return doc


def _entry_names(doc: dict) -> set[str]:
    out = set()
    for section in ("activation_encodings", "param_encodings", "encodings"):
        entries = doc.get(section, [])
        out.update(entries if isinstance(entries, dict) else (e.get("name") for e in entries))
    return out


def _w4a8_per_block():
    from runtime.target import load_target

    t = load_target("npu-w4a8")
    w = dataclasses.replace(t.arithmetic.weights, granularity="per_block", block_size=4)
    return dataclasses.replace(t, name="npu-w4a8-per-block", arithmetic=dataclasses.replace(t.arithmetic, weights=w))


@functools.lru_cache(maxsize=None)
def sim_exports() -> tuple[SimExport, ...]:
    """hwsim exports of the shared test models (the files ``hwsim quantize`` writes)."""
    import torch

    import hwsim
    from tests.hwsim.sim_models import Branchy, ResDW, images, randomize_bn

    out = []
    with tempfile.TemporaryDirectory() as d:
        for name, factory, target in (("sim-resdw-dsp", lambda: ResDW(c=8, classes=5), "dsp-int8"),
                                      ("sim-resdw-w4-block", lambda: ResDW(c=8, classes=5), _w4a8_per_block()),
                                      ("sim-branchy-pc", lambda: Branchy(), "npu-int8-pc")):
            torch.manual_seed(0)
            model = randomize_bn(factory(), seed=1)
            x = images(16, 2)
            sim = hwsim.simulate(model, target, x[:1])
            sim.calibrate([x[:8], x[8:]], progress=False)
            encs, dangling = {}, set()
            for version in ("1.0.0", "2.0.0", "0.6.1"):
                try:
                    paths = sim.export(Path(d) / name / version, "m", encodings_version=version)
                except Exception:  # 0.6.1 has no per-block encodings
                    continue
                qdq, flt = paths["onnx"].read_bytes(), paths["float_onnx"].read_bytes()
                doc = json.loads(paths["encodings"].read_text())
                known = _tensor_names_of(flt)
                dangling |= _entry_names(doc) - known
                encs[version] = _drop_entries(doc, known)
            out.append(SimExport(name, target, qdq, flt, encs, {sim.input_names[0]: x[:2].numpy()},
                                 tuple(sorted(dangling))))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def model_seeds() -> dict[str, ModelSeed]:
    seeds = dict(ort_seeds())
    for s in sim_exports():
        targets = (s.target,) if isinstance(s.target, str) else ("npu-w4a8",)
        seeds[s.name] = ModelSeed(s.name, s.qdq, s.feeds, targets + ("ort-cpu-vnni",))
    if (SHARED_ONNX / "mnist-8" / "model.onnx").is_file():  # float: refused, but parsed and checked
        seeds["zoo-mnist-8"] = ModelSeed("zoo-mnist-8", (SHARED_ONNX / "mnist-8" / "model.onnx").read_bytes(),
                                         {"Input3": _images(1, 4, (1, 28, 28)) * 255}, ("dsp-int8",))
    shuffle = SHARED_ONNX / "shufflenet-v2-12-int8" / "shufflenet-v2-12-int8.onnx"
    if shuffle.is_file():
        seeds["zoo-shufflenet-int8"] = ModelSeed("zoo-shufflenet-int8", shuffle.read_bytes(),
                                                 {"input": _images(1, 5, (3, 224, 224))}, ("ort-cpu-vnni",))
    return seeds


# ---------------------------------------------------------------------------------------------
# model mutations (on the ModelProto)
# ---------------------------------------------------------------------------------------------
ODD_INTS = [-(2**63), -(2**31), -100, -5, -1, 0, 1, 2, 3, 4, 7, 8, 100, 2**31 - 1, 2**31, 2**40, 2**62]
ODD_FLOATS = [0.0, -0.0, -1.0, 1e-45, 1e-38, 1e-30, 0.5, 1e30, 1e38, float("nan"), float("inf"), float("-inf")]
OP_TYPES = ["Frobnicate", "", "Relu", "Conv", "QuantizeLinear", "DequantizeLinear", "Add", "Mul", "MatMul", "Gemm",
            "Resize", "If", "Loop", "Softmax", "Gather", "Reshape", "ConvTranspose", "QLinearConv", "MaxPool",
            "Concat", "Sigmoid", "Einsum", "Identity", "Transpose", "AveragePool", "Flatten", "Clip", "Split"]
DOMAINS = ["com.microsoft", "com.evil", "ai.onnx.ml", "ai.onnx", "", "ai.onnx.preview.training"]
ELEM_TYPES = [TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8, TensorProto.INT16, TensorProto.UINT16,
              TensorProto.INT32, TensorProto.INT64, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16,
              TensorProto.STRING, TensorProto.BOOL, TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT8E4M3FN,
              TensorProto.COMPLEX64, TensorProto.UINT32, TensorProto.UINT64, 0, 99]
EXTERNAL_VARIANTS = ("inside", "inside_subdir", "traversal", "deep_traversal", "absolute_system", "absolute_secret",
                     "symlink_out", "missing", "directory", "nul", "long_name", "offset_beyond", "length_wrong",
                     "huge_sparse", "huge_declared")
OUTSIDE = {"traversal", "deep_traversal", "absolute_system", "absolute_secret", "symlink_out"}


def _scale_zp_names(m: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Initializers used as scales and as zero points (by position in Q/DQ/QLinear ops, and by name)."""
    inits = {t.name for t in m.graph.initializer}
    scales, zps = set(), set()
    for n in m.graph.node:
        ins = list(n.input)
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            pos_s, pos_z = (1,), (2,)
        elif n.op_type in ("QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul"):
            pos_s, pos_z = (1, 4, 6), (2, 5, 7)
        elif n.op_type == "QGemm":
            pos_s, pos_z = (1, 4, 7), (2, 5, 8)
        else:
            pos_s, pos_z = (), ()
        scales.update(ins[i] for i in pos_s if i < len(ins) and ins[i] in inits)
        zps.update(ins[i] for i in pos_z if i < len(ins) and ins[i] in inits)
    for name in inits:
        low = name.lower()
        if low.endswith("scale"):
            scales.add(name)
        elif "zero_point" in low or low.endswith("_zp"):
            zps.add(name)
    return sorted(scales), sorted(zps)


def _tensor_names(m: onnx.ModelProto) -> list[str]:
    names = {v.name for v in m.graph.input} | {t.name for t in m.graph.initializer}
    for n in m.graph.node:
        names.update(o for o in n.output if o)
    return sorted(names)


def _replace_init(m: onnx.ModelProto, name: str, t: onnx.TensorProto) -> None:
    for i, old in enumerate(m.graph.initializer):
        if old.name == name:
            m.graph.initializer[i].CopyFrom(t)
            return


def _array(t: onnx.TensorProto) -> np.ndarray | None:
    """The tensor's values, or None when an earlier mutation made them unreadable (or external)."""
    if t.data_location == TensorProto.EXTERNAL:
        return None
    try:
        return numpy_helper.to_array(t)
    except Exception:  # a mutated shape or type: the next mutation of it is a no-op
        return None


def _as_raw(t: onnx.TensorProto) -> onnx.TensorProto:
    """The same tensor with its data in ``raw_data`` (unchanged when that is not possible)."""
    if t.HasField("raw_data"):
        return t
    arr = _array(t)
    if arr is None or arr.dtype.kind not in "biuf" or arr.dtype.name in ("int4", "uint4"):
        return t
    return numpy_helper.from_array(arr, t.name)


def _attr(name: str, kind: str, v) -> onnx.AttributeProto:
    if kind == "tensor":
        return helper.make_attribute(name, numpy_helper.from_array(np.asarray(v, np.float32)))
    return helper.make_attribute(name, v)


# Each model mutation: (draw, model, extra files, flags) -> description; it changes the model in place
# (and may add files, or set flags["must_refuse"]). Registered by name in MODEL_MUTATIONS.
def _m_opset(draw, m, files, flags) -> str:
    choice = draw(st.sampled_from(["version", "remove", "add_domain", "duplicate"]))
    if choice == "remove":
        del m.opset_import[:]
        return "opset: all opset imports removed"
    if choice == "add_domain":
        m.opset_import.append(helper.make_opsetid(draw(st.sampled_from(DOMAINS)), draw(st.sampled_from(ODD_INTS))))
        return f"opset: added {m.opset_import[-1].domain!r} version {m.opset_import[-1].version}"
    if choice == "duplicate" and m.opset_import:
        m.opset_import.append(m.opset_import[0])
        return "opset: the first opset import duplicated"
    v = draw(st.sampled_from([0, 1, 7, 9, 10, 12, 13, 17, 19, 21, 22, 23, 99, 2**31 - 1]))
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = v
    return f"opset: default domain version {v}"


def _m_ir_version(draw, m, files, flags) -> str:
    m.ir_version = draw(st.sampled_from([0, 1, 3, 4, 6, 8, 9, 10, 11, 99]))
    return f"ir_version {m.ir_version}"


def _pick_node(draw, m, need=None):
    """(index, node) of a node (satisfying ``need``), or (None, None)."""
    idx = [i for i, n in enumerate(m.graph.node) if need is None or need(n)]
    if not idx:
        return None, None
    i = draw(st.sampled_from(idx))
    return i, m.graph.node[i]


def _m_node(draw, m, files, flags) -> str:
    """A node's op type or domain changed, or the node removed or duplicated."""
    i, n = _pick_node(draw, m)
    if n is None:
        return "no nodes"
    what = draw(st.sampled_from(["op_type", "domain", "drop", "duplicate"]))
    desc = f"node {i} ({n.op_type} {n.name!r})"
    if what == "op_type":
        n.op_type = draw(st.sampled_from(OP_TYPES))
        return f"{desc}: op_type {n.op_type!r}"
    if what == "domain":
        n.domain = draw(st.sampled_from(DOMAINS))
        if draw(st.booleans()) and n.domain not in [o.domain for o in m.opset_import]:
            m.opset_import.append(helper.make_opsetid(n.domain, 1))
        return f"{desc}: domain {n.domain!r}"
    if what == "drop":
        del m.graph.node[i]
        return f"{desc} removed"
    m.graph.node.append(n)
    return f"{desc} duplicated"


def _m_edge(draw, m, files, flags) -> str:
    """A node input rewired to another tensor, to a dangling name, omitted, or to a later output (a cycle)."""
    i, n = _pick_node(draw, m, lambda n: len(n.input) > 0)
    if n is None:
        return "no node inputs"
    j = draw(st.integers(0, len(n.input) - 1))
    what = draw(st.sampled_from(["rewire", "dangling", "omit", "cycle"]))
    if what == "rewire":
        t = draw(st.sampled_from(_tensor_names(m)))
    elif what == "dangling":
        t = "ghost"
    elif what == "omit":
        t = ""
    else:
        later = [o for k in range(i, len(m.graph.node)) for o in m.graph.node[k].output if o]
        t = draw(st.sampled_from(later)) if later else "ghost"
    n.input[j] = t
    return f"node {i} ({n.op_type} {n.name!r}): input {j} -> {t!r} ({what})"


def _m_graph_io(draw, m, files, flags) -> str:
    """A graph input/output removed, a bogus output, or a conflicting value_info."""
    g = m.graph
    what = draw(st.sampled_from(["drop_input", "drop_output", "bogus_output", "value_info"]))
    if what == "drop_input" and g.input:
        name = g.input[0].name
        del g.input[0]
        return f"graph input {name!r} removed"
    if what == "drop_output" and g.output:
        name = g.output[0].name
        del g.output[0]
        return f"graph output {name!r} removed"
    t = draw(st.sampled_from(["ghost"] + _tensor_names(m)))
    if what == "bogus_output":
        g.output.append(helper.make_tensor_value_info(t, draw(st.sampled_from(ELEM_TYPES[:8])), None))
        return f"graph output {t!r} added"
    g.value_info.append(helper.make_tensor_value_info(t, draw(st.sampled_from(ELEM_TYPES)),
                                                      draw(st.lists(st.sampled_from([0, 1, 3, 2**40]), max_size=4))))
    return f"value_info of {t!r} with a conflicting type/shape"


def _m_io_type(draw, m, files, flags) -> str:
    """A graph input's or output's element type or shape changed (zero, huge, negative, symbolic dims)."""
    vis = list(m.graph.input) + list(m.graph.output)
    if not vis:
        return "no graph inputs/outputs"
    vi = draw(st.sampled_from(vis))
    if draw(st.booleans()):
        vi.type.tensor_type.elem_type = draw(st.sampled_from(ELEM_TYPES))
        return f"graph value {vi.name!r}: elem_type {vi.type.tensor_type.elem_type}"
    dims = draw(st.lists(st.one_of(st.sampled_from([0, 1, 2, 8, 2**31, 2**40, -3]), st.just("N")), max_size=5))
    vi.type.tensor_type.ClearField("shape")
    vi.type.tensor_type.shape.SetInParent()
    for d in dims:
        dim = vi.type.tensor_type.shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d
    return f"graph value {vi.name!r}: shape {dims}"


def _m_attribute(draw, m, files, flags) -> str:
    """An attribute set to an odd value of its type, retyped, removed, or a new one added."""
    what = draw(st.sampled_from(["value", "value", "retype", "drop", "add"]))
    i, n = _pick_node(draw, m, (lambda n: len(n.attribute) > 0) if what != "add" else None)
    if n is None:
        return "no node with attributes"
    desc = f"node {i} ({n.op_type} {n.name!r})"
    if what == "add":
        name = draw(st.sampled_from(["axis", "block_size", "group", "output_dtype", "saturate", "bogus", "transB",
                                     "kernel_shape", "pads", "strides", "perm", "mode"]))
        if any(a.name == name for a in n.attribute):
            return f"{desc}: attribute {name!r} already present"
        v = draw(st.one_of(st.sampled_from(ODD_INTS), st.lists(st.sampled_from([-1, 0, 1, 2, 3, 2**40]), max_size=5)))
        kind = onnx.AttributeProto.INTS if isinstance(v, list) else onnx.AttributeProto.INT
        n.attribute.append(helper.make_attribute(name, v, attr_type=kind))
        return f"{desc}: attribute {name!r} = {v!r} added"
    j = draw(st.integers(0, len(n.attribute) - 1))
    a = n.attribute[j]
    if what == "drop":
        del n.attribute[j]
        return f"{desc}: attribute {a.name!r} removed"
    if what == "retype":
        kind = draw(st.sampled_from(["int", "float", "string", "ints", "tensor"]))
        n.attribute[j].CopyFrom(_attr(a.name, kind, {"int": 3, "float": 0.5, "string": "x", "ints": [1, 2],
                                                     "tensor": [1.0, 2.0]}[kind]))
        return f"{desc}: attribute {a.name!r} retyped as {kind}"
    if a.type == onnx.AttributeProto.INT:
        v = draw(st.sampled_from(ODD_INTS))
    elif a.type == onnx.AttributeProto.INTS:
        v = draw(st.lists(st.sampled_from(ODD_INTS), max_size=6))
    elif a.type == onnx.AttributeProto.FLOAT:
        v = draw(st.sampled_from(ODD_FLOATS))
    elif a.type == onnx.AttributeProto.FLOATS:
        v = draw(st.lists(st.sampled_from(ODD_FLOATS), max_size=4))
    else:
        v = draw(st.sampled_from(["", "bogus", "NOTSET", "SAME_UPPER", "linear", "\u00ff\u0000"]))
    # a string for a string attribute; for tensor/graph/... attributes a string is a type change
    n.attribute[j].CopyFrom(helper.make_attribute(a.name, v, attr_type=a.type if a.type in (
        onnx.AttributeProto.INT, onnx.AttributeProto.INTS, onnx.AttributeProto.FLOAT, onnx.AttributeProto.FLOATS,
        onnx.AttributeProto.STRING) else None))
    return f"{desc}: attribute {a.name!r} = {v!r}"


def _m_axis(draw, m, files, flags) -> str:
    """The axis of a Q/DQ (per-channel axis) or of another op with one, out of range or odd."""
    i, n = _pick_node(draw, m, lambda n: n.op_type in ("QuantizeLinear", "DequantizeLinear", "Concat", "Softmax",
                                                       "Flatten", "Gather", "Split"))
    if n is None:
        return "no node with an axis"
    v = draw(st.sampled_from([-10, -5, -1, 0, 1, 2, 3, 4, 100, 2**40]))
    keep = [a for a in n.attribute if a.name != "axis"]
    del n.attribute[:]
    n.attribute.extend(keep + [helper.make_attribute("axis", v)])
    return f"node {i} ({n.op_type} {n.name!r}): axis {v}"


def _pick_init(draw, m, names=None):
    inits = [t for t in m.graph.initializer if names is None or t.name in names]
    return draw(st.sampled_from(inits)) if inits else None


def _m_init_layout(draw, m, files, flags) -> str:
    """An initializer's dims (zero, huge, negative, wrong rank), data type, or raw byte length changed."""
    t = _pick_init(draw, m)
    if t is None:
        return "no initializers"
    what = draw(st.sampled_from(["dims", "dtype", "raw_length"]))
    if what == "dims":
        dims = draw(st.sampled_from([[], [0], [2**31], [2**28, 4], [2**40], [-1], [1] * 9,
                                     list(t.dims) + [2], list(t.dims)[:-1], [d * 2 for d in t.dims]]))
        t.ClearField("dims")
        t.dims.extend(dims)
        return f"initializer {t.name!r}: dims {dims}"
    raw = _as_raw(t)
    if raw is not t:
        t.CopyFrom(raw)
    if what == "dtype":
        t.data_type = draw(st.sampled_from(ELEM_TYPES))
        return f"initializer {t.name!r}: data_type {t.data_type}"
    if not t.HasField("raw_data"):
        return f"initializer {t.name!r}: not raw"
    k = draw(st.sampled_from([-4, -1, 1, 3, 8]))
    t.raw_data = t.raw_data[:k] if k < 0 else t.raw_data + bytes(k)
    return f"initializer {t.name!r}: raw_data {len(t.raw_data) - k} -> {len(t.raw_data)} bytes"


def _m_scale(draw, m, files, flags) -> str:
    """One element of a scale set to zero, a negative, NaN, +-inf, a denormal or a huge value."""
    scales, _ = _scale_zp_names(m)
    t = _pick_init(draw, m, scales)
    arr = _array(t) if t is not None else None
    if arr is None or arr.dtype.kind not in "biuf":
        return "no readable scale"
    with np.errstate(all="ignore"):
        arr = arr.astype(np.float32)
    v = np.float32(draw(st.sampled_from(ODD_FLOATS)))
    if arr.size:
        arr.reshape(-1)[draw(st.integers(0, arr.size - 1))] = v
    _replace_init(m, t.name, numpy_helper.from_array(arr, t.name))
    return f"scale {t.name!r}: an element set to {float(v)!r}"


def _m_zero_point(draw, m, files, flags) -> str:
    """A zero point re-stored in another integer (or float) type, with a value outside the original one."""
    _, zps = _scale_zp_names(m)
    t = _pick_init(draw, m, zps)
    if t is None or any(d < 0 for d in t.dims) or math.prod(t.dims) > 1 << 16:
        return "no zero point of a sane size"
    dt = draw(st.sampled_from([np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.float32]))
    v = draw(st.sampled_from([0, 1, -1, 127, 128, 255, 256, 300, -129, -1000, 32768, 65535, 2**31 - 1, -(2**31)]))
    with np.errstate(all="ignore"):
        arr = np.full(tuple(t.dims), v, dtype=np.int64).astype(dt)
    _replace_init(m, t.name, numpy_helper.from_array(arr, t.name))
    return f"zero point {t.name!r}: {np.dtype(dt).name} {int(v)}"


def _m_qparam_shape(draw, m, files, flags) -> str:
    """A scale or zero point with one element too many, a second dimension, no elements, or a scalar."""
    scales, zps = _scale_zp_names(m)
    t = _pick_init(draw, m, scales + zps)
    arr = _array(t) if t is not None else None
    if arr is None or arr.dtype.kind not in "biuf":
        return "no readable quantization parameter"
    if arr.dtype.name in ("int4", "uint4"):
        arr = arr.astype(np.int8)
    flat = arr.reshape(-1)
    how = draw(st.sampled_from(["extra", "2d", "empty", "scalar"]))
    if how == "extra":
        new = np.concatenate([flat, flat[:1] if flat.size else np.zeros(1, arr.dtype)])
    elif how == "2d":
        new = np.stack([flat, flat])
    elif how == "empty":
        new = flat[:0]
    else:
        new = flat[:1].reshape(()) if flat.size else np.zeros((), arr.dtype)
    _replace_init(m, t.name, numpy_helper.from_array(np.ascontiguousarray(new), t.name))
    return f"{t.name!r}: shape {arr.shape} -> {new.shape}"


def _m_external(draw, m, files, flags) -> str:
    t = _pick_init(draw, m)
    if t is None:
        return "no initializers"
    return _external(draw, m, t, files, flags)


MODEL_MUTATIONS = {  # name -> (mutation, weight)
    "opset": (_m_opset, 1), "ir_version": (_m_ir_version, 1), "node": (_m_node, 2), "edge": (_m_edge, 3),
    "graph_io": (_m_graph_io, 1), "io_type": (_m_io_type, 1), "attribute": (_m_attribute, 3), "axis": (_m_axis, 1),
    "init_layout": (_m_init_layout, 2), "scale": (_m_scale, 1), "zero_point": (_m_zero_point, 1),
    "qparam_shape": (_m_qparam_shape, 1), "external_data": (_m_external, 1),
}
_WEIGHTED = [name for name, (_, w) in sorted(MODEL_MUTATIONS.items()) for _ in range(w)]


@st.composite
def _model_mutation(draw, m: onnx.ModelProto, files: dict, flags: dict) -> str:
    """Apply one structural mutation (a :data:`MODEL_MUTATIONS` entry, by weight) to ``m`` in place."""
    return MODEL_MUTATIONS[draw(st.sampled_from(_WEIGHTED))][0](draw, m, files, flags)


def _external(draw, m: onnx.ModelProto, t: onnx.TensorProto, files: dict, flags: dict) -> str:
    """Move initializer ``t``'s data to an external file, in one of :data:`EXTERNAL_VARIANTS`."""
    raw = _as_raw(t)
    if not raw.HasField("raw_data") or not raw.raw_data:
        return f"initializer {t.name!r}: no raw data to move out"
    data = raw.raw_data
    if raw is not t:
        t.CopyFrom(raw)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    variant = draw(st.sampled_from(EXTERNAL_VARIANTS))
    loc, extra = "weights.bin", {}
    if variant == "inside":
        files["model/weights.bin"] = data
    elif variant == "inside_subdir":
        loc = "sub/w.bin"
        files["model/sub/w.bin"] = data
    elif variant == "traversal":
        loc = "../secret.bin"
    elif variant == "deep_traversal":
        loc = "../../../../../../../../etc/passwd"
    elif variant == "absolute_system":
        loc = "/etc/passwd"
    elif variant == "absolute_secret":
        loc = "secret.bin"  # made absolute when written: FileCase.absolute_secret
        flags.setdefault("absolute_secret", []).append(t.name)
    elif variant == "symlink_out":
        loc = "link.bin"
        files["model/link.bin"] = Symlink("secret.bin")
    elif variant == "missing":
        loc = "missing.bin"
    elif variant == "directory":
        loc = "sub"
        files["model/sub"] = None
    elif variant == "nul":
        loc = "w\x00.bin"
    elif variant == "long_name":
        loc = "a" * 5000
    elif variant == "offset_beyond":
        files["model/weights.bin"] = data
        extra = {"offset": str(10**9)}
    elif variant == "length_wrong":
        files["model/weights.bin"] = data
        extra = {"length": str(len(data) + draw(st.sampled_from([-4, 8, 10**12])))}
    elif variant == "huge_sparse":  # a 1 GiB file of zeros whose tensor declares exactly that size
        size = 4 * LOADER_LIMIT
        files["model/weights.bin"] = Sparse(size)
        t.ClearField("dims")
        t.dims.extend([size // 4])
        t.data_type = TensorProto.FLOAT
    else:  # huge_declared: dims far beyond the file
        files["model/weights.bin"] = data
        t.ClearField("dims")
        t.dims.extend([2**28, 4])
    if variant in OUTSIDE:
        files["secret.bin"] = data  # outside the model's folder: reading it would succeed if allowed
        flags["must_refuse"] = f"external data {variant}"
    del t.external_data[:]
    for k, v in {"location": loc, **extra}.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    return f"initializer {t.name!r}: external data {variant} ({loc[:40]!r})"


@st.composite
def byte_mutation(draw, data: bytes) -> tuple[bytes, str]:
    """Truncate, overwrite, insert or repeat bytes of a serialized file."""
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "repeat", "garbage"]))
    n = len(data)
    if kind == "truncate":
        k = draw(st.integers(0, max(0, n - 1)))
        return data[:k], f"bytes: truncated to {k} of {n}"
    if kind == "garbage":
        g = draw(st.binary(max_size=64))
        return g, f"bytes: replaced by {len(g)} random bytes"
    pos = draw(st.integers(0, n))
    if kind == "flip":
        b = draw(st.binary(min_size=1, max_size=8))
        return data[:pos] + b + data[pos + len(b):], f"bytes: {len(b)} overwritten at {pos}"
    if kind == "insert":
        b = draw(st.binary(min_size=1, max_size=16))
        return data[:pos] + b + data[pos:], f"bytes: {len(b)} inserted at {pos}"
    k = draw(st.integers(1, 64))
    return data[:pos] + data[pos:pos + k] * 3 + data[pos + k:], f"bytes: {k} bytes at {pos} repeated"


@st.composite
def mutate_model(draw, seed_bytes: bytes, max_mutations: int = 3, byte_level: bool = True):
    """(model bytes, extra files, mutations, flags) from a serialized seed model."""
    m = onnx.ModelProto()
    m.ParseFromString(seed_bytes)
    files: dict[str, Any] = {}
    flags: dict[str, Any] = {}
    muts = [draw(_model_mutation(m, files, flags)) for _ in range(draw(st.integers(1, max_mutations)))]
    data = m.SerializeToString()
    if byte_level and not flags and draw(st.integers(0, 6)) == 0:  # (not on a reference that must be refused)
        data, d = draw(byte_mutation(data))
        muts.append(d)
    return data, files, muts, flags


@st.composite
def model_cases(draw, seeds: dict[str, ModelSeed] | None = None):
    """A mutated model (``model/model.onnx`` plus external files) and a target to load it for."""
    seeds = seeds if seeds is not None else model_seeds()
    names = sorted(seeds)
    # the zoo's 2.4 MB ShuffleNet is slow to mutate and plan: rarely
    weights = [1 if n.startswith("zoo-shuffle") else 6 for n in names]
    name = draw(st.sampled_from([n for n, w in zip(names, weights) for _ in range(w)]))
    seed = seeds[name]
    data, files, muts, flags = draw(mutate_model(seed.data))
    target = draw(st.sampled_from(seed.targets if draw(st.integers(0, 3)) else TARGETS))
    files = {"model/model.onnx": data, **files}
    return FileCase("model", name, muts, files, "model/model.onnx", {"target": target},
                    must_refuse=flags.get("must_refuse", ""), absolute_secret=tuple(flags.get("absolute_secret", ())))


def feeds_for(prog, seed_feeds: dict[str, np.ndarray], model_path: Path, max_elements: int = 1 << 16) -> dict:
    """A small valid input for a loaded program: the seed's arrays where names match, else arrays shaped
    by the model's declared input shapes (unknown or odd dimensions become 1..8), in the program's
    input dtypes."""
    declared: dict[str, list] = {}
    try:
        m = onnx.load(str(model_path), load_external_data=False)
        for v in m.graph.input:
            if v.type.tensor_type.HasField("shape"):
                declared[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    except Exception:  # the loader accepted it; a failure here is the harness's, not the loader's
        pass
    rng = np.random.default_rng(7)
    feeds = {}
    for spec in prog.inputs:
        if spec.name in seed_feeds:
            x = seed_feeds[spec.name]
        else:
            shape = [d if 1 <= d <= 8 else 1 for d in declared.get(spec.name, [1])]
            while math.prod(shape) > max_elements:
                shape[shape.index(max(shape))] //= 2
            x = rng.uniform(-1, 1, shape)
        dt = np.dtype(spec.dtype)
        if dt.kind in "iu":
            info = np.iinfo(dt)
            x = np.clip(np.round(x * 10), info.min, info.max)
        feeds[spec.name] = np.asarray(x).astype(dt)
    return feeds


# ---------------------------------------------------------------------------------------------
# JSON-like trees (encodings, targets, quantsim configs)
# ---------------------------------------------------------------------------------------------
JUNK = [None, True, False, 0, -1, 1, 3, 2**31, 2**63, -(2**63) - 1, 10**30, 0.5, -0.0, 1e308, float("nan"),
        float("inf"), float("-inf"), "", "True", "False", "int8", "x" * 300, "../../etc/passwd", [], [1], ["a"], [[]],
        {}, {"a": 1}]
ODD_NUMBERS = [0, -1, 1, -0.0, 1e-45, 1e-39, 1e38, 1e39, float("nan"), float("inf"), float("-inf"), 2**31, 2**63,
               -(2**63) - 1, 10**40, 0.5, 1.5, 3, 7, 255, 256, -128, -129, 65536]
EXTRA_VALUES: dict[str, list] = {
    "bits": [0, 4, 8, 16, 24, 32, 48, 64, 128],
    "bw": [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, -8, 2**40],
    "bitwidth": [0, 1, 3, 4, 8, 16, 32, 33, 64, -8],
    "dtype": ["int4", "uint4", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "float32", "INT",
              "FLOAT", "int", "float", "bfloat16"],
    "output_dtype": ["int4", "uint4", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "float32"],
    "granularity": ["per_tensor", "per_channel", "per_block", "per_axis"],
    "scheme": ["asymmetric", "symmetric", "strict_symmetric", "unsigned_symmetric", "affine"],
    "block_size": [0, -1, 1, 3, 4, 32, 2**31, 2**62],
    "left_shift": [-1, 0, 20, 30, 31, 64],
    "rounding": ["double", "single", "int64", "half_to_even", "half_away_from_zero", "half_up", "half_down"],
    "overflow": ["saturate", "wrap", "error", "ignore"],
    "form": ["fixed_point", "float32", "float16"],
    "rule": ["fixed_point", "float32"],
    "enc_type": ["PER_TENSOR", "PER_CHANNEL", "PER_BLOCK", "LPBQ", "VECTOR"],
    "offset": [[0], [-128], [-127], [127], [-256], [300], [0, 0], [-(2**31)], [2**40]],
    "y_zero_point": [0, -1, 128, 255, 256, -129, [0, 0], 2**40],
    "scale": [[0.0], [-1.0], [float("nan")], [float("inf")], [1e-45], [1e39], [0.1, 0.2], []],
    "y_scale": [0.0, -1.0, float("nan"), 1e-45, 1e39, [0.1, 0.2], [[0.1]], {"x": [1], "x_scale": 0.1}],
    "axis": [-10, -5, -1, 0, 1, 2, 3, 4, 100, 2**40],
    "is_sym": [True, False, "True", 1, None],
    "is_symmetric": ["True", "False", True, "true", 1],
    "version": ["0.5.0", "0.6.1", "1.0.0", "2.0.0", "2.1.0", "3.0.0", 1, None],
    "schema_version": [0, 1, 2, -1, "1", 1.0],
    "pair_saturation_bits": [0, 8, 16, 32],
    "macs_per_cycle": [0, -1, 1, 2**63],
    "clock_mhz": [0.0, -1.0, float("nan"), float("inf"), 1e308],
    "memory_bandwidth_gbps": [0.0, -1.0, float("nan"), float("inf")],
    "op_list": [[], ["Conv"], ["Conv", "Frobnicate"], ["Conv", "Relu"], [1, 2]],
    "integer_ops": [[], ["Frobnicate"], ["Conv", "Conv"]],
    "lut_ops": [["Softmax"], ["Sigmoid"], ["Frobnicate"]],
}
TREE_OPS = ("delete", "wrong_type", "splice", "add_key", "list_dup", "list_drop", "list_extend", "rename", "number",
            "tweak", "tweak")  # tweak: a plausible value (scaled number): files that load, with odd encodings


def _paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for k in list(tree):
            yield from _paths(tree[k], prefix + (k,))
    elif isinstance(tree, list):
        for i in range(len(tree)):
            yield from _paths(tree[i], prefix + (i,))


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree, path, value):
    if not path:
        return value
    _get(tree, path[:-1])[path[-1]] = value
    return tree


def _key_of(path) -> str | None:
    for k in reversed(path):
        if isinstance(k, str):
            return k
    return None


def value_pool(trees) -> dict[str, list]:
    """Key name -> distinct values found under that key in ``trees``, plus :data:`EXTRA_VALUES`."""
    pool: dict[str, dict[str, Any]] = {}
    for tree in trees:
        for p in _paths(tree):
            if p and isinstance(p[-1], str):
                v = _get(tree, p)
                pool.setdefault(p[-1], {})[json.dumps(v, sort_keys=True, default=str)[:200]] = v
    out = {k: list(v.values()) for k, v in pool.items()}
    for k, vs in EXTRA_VALUES.items():
        out.setdefault(k, []).extend(vs)
    return out


PLAUSIBLE_TREE_OPS = ("tweak", "splice")  # edits that often leave a loadable file: odd but valid values


@st.composite
def mutate_tree(draw, tree, pool: dict[str, list], max_mutations: int = 3, ops=TREE_OPS):
    """(mutated deep copy of a JSON-like ``tree``, descriptions): deleted, retyped, spliced (a value
    another file has under the same key: impossible combinations), unknown keys, list lengths,
    renamed tensors, special numbers, plausible tweaks (``ops`` chooses among them)."""
    tree = copy.deepcopy(tree)
    descs = []
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = list(_paths(tree))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(ops))
        node = _get(tree, path)
        key = _key_of(path)
        where = "/".join(map(str, path)) or "<top>"
        if op == "delete" and path:
            parent = _get(tree, path[:-1])
            del parent[path[-1]]
            descs.append(f"{where}: deleted")
        elif op == "splice" and key in pool:
            v = copy.deepcopy(draw(st.sampled_from(pool[key])))
            tree = _set(tree, path, v)
            descs.append(f"{where}: = {v!r:.60}")
        elif op == "add_key" and isinstance(node, dict):
            k = draw(st.sampled_from(["bogus", "Bits", "extra", "name", "scale", "dtype", "granularity", "axis"]
                                     + sorted(pool)[:40]))
            node[k] = copy.deepcopy(draw(st.sampled_from(JUNK + pool.get(k, [])[:8])))
            descs.append(f"{where}: key {k!r} added")
        elif op in ("list_dup", "list_drop", "list_extend") and isinstance(node, list):
            if op == "list_dup" and node:
                node.append(copy.deepcopy(node[draw(st.integers(0, len(node) - 1))]))
            elif op == "list_drop" and node:
                del node[draw(st.integers(0, len(node) - 1))]
            else:
                node.extend([copy.deepcopy(node[-1]) if node else 0] * draw(st.sampled_from([1, 2, 100])))
            descs.append(f"{where}: {op} -> {len(node)} items")
        elif op == "rename" and isinstance(node, str):
            v = draw(st.sampled_from(["ghost", "", node + "_x", node.upper(), "x" * 1000, "a/b", "\u00e9\u0000"]))
            tree = _set(tree, path, v)
            descs.append(f"{where}: {node!r:.30} -> {v!r:.30}")
        elif op == "tweak" and isinstance(node, (int, float)) and not isinstance(node, bool):
            f = draw(st.sampled_from([2.0**-20, 2.0**-8, 0.5, 2.0, 2.0**8, 2.0**20]))
            v = type(node)(node * f) if isinstance(node, float) else int(node * f) if abs(node) > 1 else node + 1
            tree = _set(tree, path, v)
            descs.append(f"{where}: {node!r} -> {v!r}")
        elif op == "number" and isinstance(node, (int, float)) and not isinstance(node, bool):
            v = draw(st.sampled_from(ODD_NUMBERS))
            tree = _set(tree, path, v)
            descs.append(f"{where}: {node!r} -> {v!r}")
        else:
            v = copy.deepcopy(draw(st.sampled_from(JUNK)))
            tree = _set(tree, path, v)
            descs.append(f"{where}: = {v!r:.40} (wrong type)")
    return tree, descs


@st.composite
def text_mutation(draw, text: bytes) -> tuple[Any, str]:
    """Byte-level mutations of a text file: truncation, junk, invalid UTF-8, deep nesting, a file
    past the loader's size limit (sparse)."""
    kind = draw(st.sampled_from(["bytes", "invalid_utf8", "nesting", "huge", "empty"]))
    if kind == "bytes":
        data, d = draw(byte_mutation(text))
        return data, d
    if kind == "invalid_utf8":
        pos = draw(st.integers(0, len(text)))
        return text[:pos] + b"\xff\xfe\x00" + text[pos:], f"invalid UTF-8 at {pos}"
    if kind == "nesting":
        depth = draw(st.sampled_from([1000, 100_000]))
        opener = draw(st.sampled_from([b"[", b"{\"a\":", b"a = [", b"x = {a = "]))
        return opener * depth, f"{depth} nested {opener!r}"
    if kind == "huge":
        return Sparse(LOADER_LIMIT + 1 + draw(st.integers(0, 1 << 20)), text), "padded past the size limit (sparse)"
    return b"", "empty file"


def dump_json(tree) -> bytes:
    return json.dumps(tree, indent=1, allow_nan=True).encode()


# ---------------------------------------------------------------------------------------------
# encodings
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def encodings_pool() -> dict[str, list]:
    return value_pool([e for s in sim_exports() for e in s.encodings.values()])


@st.composite
def encodings_cases(draw):
    """A mutated AIMET encodings file (every version hwsim writes) with the float model it belongs
    to (mutated too, now and then), and the target to load them for."""
    exports = sim_exports()
    s = draw(st.sampled_from(exports))
    version = draw(st.sampled_from(sorted(s.encodings)))
    files: dict[str, Any] = {}
    muts: list[str] = []
    flags: dict[str, Any] = {}
    tree = s.encodings[version]
    if draw(st.integers(0, 5)):
        ops = draw(st.sampled_from([TREE_OPS, TREE_OPS, PLAUSIBLE_TREE_OPS]))
        tree, muts = draw(mutate_tree(tree, encodings_pool(), max_mutations=3 if ops is TREE_OPS else 1, ops=ops))
        data: Any = dump_json(tree)
    else:
        data, d = draw(text_mutation(dump_json(tree)))
        muts = [d]
    model = s.float_model
    if draw(st.integers(0, 4)) == 0:
        model, files, more, flags = draw(mutate_model(model, max_mutations=1, byte_level=False))
        muts += [f"float model: {d}" for d in more]
    target = s.target if isinstance(s.target, str) and draw(st.integers(0, 3)) else draw(st.sampled_from(TARGETS))
    files = {"model/m.encodings": data, "model/m_float.onnx": model, **files}
    return FileCase("encodings", f"{s.name}@{version}", muts, files, "model/m.encodings",
                    {"target": target, "model": "model/m_float.onnx"}, must_refuse=flags.get("must_refuse", ""),
                    absolute_secret=tuple(flags.get("absolute_secret", ())))


# ---------------------------------------------------------------------------------------------
# targets and quantsim configs
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def target_seeds() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((REPO / "targets").glob("*.toml"))}


@functools.lru_cache(maxsize=None)
def quantsim_seeds() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((REPO / "tests" / "data").glob("quantsim_*.json"))}


@functools.lru_cache(maxsize=None)
def target_pool() -> dict[str, list]:
    return value_pool([tomllib.loads(b.decode()) for b in target_seeds().values()])


@functools.lru_cache(maxsize=None)
def quantsim_pool() -> dict[str, list]:
    return value_pool([json.loads(b.decode()) for b in quantsim_seeds().values()])


def _target_text(tree) -> tuple[bytes, str]:
    """TOML when ``tomli_w`` can write the tree (no None values), else JSON (also a target format)."""
    import tomli_w

    try:
        return tomli_w.dumps(tree).encode(), ".toml"
    except (TypeError, ValueError, AttributeError):  # None, NaN keys, a top level that is not a table
        return dump_json(tree), ".json"


@st.composite
def target_cases(draw):
    """A mutated target file (TOML, or JSON where TOML cannot hold the mutation)."""
    seeds = target_seeds()
    name = draw(st.sampled_from(sorted(seeds)))
    text, suffix = seeds[name], ".toml"
    if draw(st.integers(0, 5)):
        ops = draw(st.sampled_from([TREE_OPS, TREE_OPS, PLAUSIBLE_TREE_OPS]))
        tree, muts = draw(mutate_tree(tomllib.loads(text.decode()), target_pool(), ops=ops))
        data, suffix = _target_text(tree)
    else:
        data, d = draw(text_mutation(text))
        muts = [d]
    main = f"t{suffix}"
    return FileCase("target", name, muts, {main: data}, main, {"run": draw(st.integers(0, 2)) == 0})


@st.composite
def quantsim_cases(draw):
    """A mutated AIMET quantsim config and the base target whose arithmetic it is imported on."""
    seeds = quantsim_seeds()
    name = draw(st.sampled_from(sorted(seeds)))
    if draw(st.integers(0, 5)):
        tree, muts = draw(mutate_tree(json.loads(seeds[name].decode()), quantsim_pool()))
        data: Any = dump_json(tree)
    else:
        data, d = draw(text_mutation(seeds[name]))
        muts = [d]
    base = draw(st.sampled_from(TARGETS))
    return FileCase("quantsim", name, muts, {"q.json": data}, "q.json", {"base": base})


# ---------------------------------------------------------------------------------------------
# data files
# ---------------------------------------------------------------------------------------------
def _npy_bytes(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _npz_bytes(arrays: dict[str, bytes], compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for k, b in arrays.items():
            z.writestr(k if k.endswith("/") else f"{k}.npy", b)
    return buf.getvalue()


def huge_header_npy(shape: tuple[int, ...], descr: str = "<f4", body: bytes = b"\0" * 64) -> bytes:
    """An .npy whose header declares ``shape`` but whose body is only ``body``."""
    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body


@st.composite
def _array_mutation(draw, arr: np.ndarray) -> tuple[Any, str]:
    """(array, or raw .npy bytes, description): dtype, shape, value and format changes."""
    kind = draw(st.sampled_from(["dtype", "shape", "values", "empty", "pickle", "structured", "big_endian",
                                 "fortran", "huge_header", "scalar", "strings"]))
    if kind == "dtype":
        dt = draw(st.sampled_from(["float16", "float64", "int8", "uint8", "int16", "int32", "int64", "uint64", "bool",
                                   "complex64", "datetime64[s]", "timedelta64[s]", "U3", "S3", "V4"]))
        with np.errstate(all="ignore"):
            try:
                return arr.astype(dt), f"dtype {dt}"
            except (TypeError, ValueError):
                return np.zeros(arr.shape, dt), f"dtype {dt} (zeros)"
    if kind == "shape":
        shape = draw(st.sampled_from([(arr.size,), (2, 1, 9, 9), (2, 3, 8, 8), (1, 1, 8), (2, 1, 8, 8, 1), (2, 64),
                                      (1, 2, 1, 8, 8), (2, 1, 4, 4), (2, 1, 1, 1)]))
        n = math.prod(shape)
        return np.resize(arr, shape).astype(arr.dtype), f"shape {shape} ({n} elements)"
    if kind == "values" and arr.dtype.kind in "biuf":
        v = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e38, -1e38, 1e-45, 0.0, 255.0, -1.0, 2**31, 10.0**300]))
        out = arr.astype(np.float64 if abs(v) > 3e38 else arr.dtype if arr.dtype.kind == "f" else np.float32).copy()
        idx = draw(st.integers(0, max(0, out.size - 1)))
        if out.size:
            out.reshape(-1)[idx] = v
        return out, f"value {v!r} at {idx}"
    if kind == "empty":
        shape = draw(st.sampled_from([(0,), (0, 1, 8, 8), (2, 0, 8, 8), (0, 0)]))
        return np.zeros(shape, arr.dtype), f"empty {shape}"
    if kind == "pickle":
        obj = np.empty(arr.shape[:1] or (1,), dtype=object)
        obj[...] = [{"x": 1}] * obj.size
        return _npy_bytes(obj, allow_pickle=True), "object array (pickle)"
    if kind == "structured":
        return np.zeros(arr.shape[:1] or (1,), [("a", "<f4"), ("b", "<i4")]), "structured dtype"
    if kind == "big_endian":
        return arr.astype(arr.dtype.newbyteorder(">")), "big-endian"
    if kind == "fortran":
        return np.asfortranarray(arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr), "Fortran order"
    if kind == "huge_header":
        shape = draw(st.sampled_from([(2**40,), (2, 1, 2**20, 2**20), (2**62, 2), (LOADER_LIMIT,), (-1, 8)]))
        return huge_header_npy(shape, arr.dtype.str), f"header declares shape {shape}"
    if kind == "scalar":
        return np.asarray(arr.reshape(-1)[0] if arr.size else 0), "0-d array"
    return np.array(["a", "b"]), "strings"


@st.composite
def data_cases(draw):
    """A mutated input (.npz/.npy) or labels (.npy) file for tiny_cnn's quantized model (input
    ``x`` [2, 1, 8, 8] float32; two integer labels)."""
    which = draw(st.sampled_from(["inputs", "inputs", "labels"]))
    muts: list[str] = []
    if which == "labels":
        arr = np.array([3, 7], np.int64)
        if draw(st.integers(0, 5)):
            arr, d = draw(_array_mutation(arr))
            muts.append(d)
        data = arr if isinstance(arr, bytes) else _npy_bytes(arr)
        if draw(st.integers(0, 6)) == 0:
            data, d = draw(byte_mutation(data))
            muts.append(d)
        return FileCase("data", "labels", muts, {"y.npy": data}, "y.npy", {"which": "labels", "n": 2})
    arrays: dict[str, Any] = {"x": _images(2, 11)}
    for _ in range(draw(st.integers(1, 2))):
        op = draw(st.sampled_from(["array", "array", "rename", "extra", "drop", "npy", "dir_member", "not_npy"]))
        key = draw(st.sampled_from(sorted(arrays))) if arrays else None
        if op == "array" and key is not None and not isinstance(arrays[key], bytes):
            arrays[key], d = draw(_array_mutation(arrays[key]))
            muts.append(f"{key}: {d}")
        elif op == "rename" and key is not None:
            new = draw(st.sampled_from(["X", "input", "arr_0", "", "x/../y", "x.npy"]))
            arrays[new] = arrays.pop(key)
            muts.append(f"key {key!r} -> {new!r}")
        elif op == "extra":
            arrays[draw(st.sampled_from(["y", "arr_1", "z"]))] = np.zeros(3, np.float32)
            muts.append("extra array")
        elif op == "drop" and key is not None:
            del arrays[key]
            muts.append(f"key {key!r} dropped")
        elif op == "dir_member":
            arrays["sub/"] = b""
            muts.append("a directory member")
        elif op == "not_npy":
            arrays["x"] = b"not an npy file"
            muts.append("member x is not .npy")
        else:
            muts.append("written as .npy")
            one = next(iter(arrays.values()), np.zeros(0))
            data = one if isinstance(one, bytes) else _npy_bytes(one)
            return FileCase("data", "inputs", muts, {"in.npy": data}, "in.npy", {"which": "inputs"})
    members = {k: (v if isinstance(v, bytes) else _npy_bytes(v)) for k, v in arrays.items()}
    data = _npz_bytes(members, compress=draw(st.booleans()))
    if draw(st.integers(0, 6)) == 0:
        data, d = draw(byte_mutation(data))
        muts.append(d)
    return FileCase("data", "inputs", muts, {"in.npz": data}, "in.npz", {"which": "inputs"})
