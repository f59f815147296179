"""A float ONNX model plus encodings (an AIMET encodings file) become a QDQ ONNX model.

The result passes ``onnx.checker``, runs in ONNX Runtime as it is, and is what :func:`runtime.load`
plans into an integer program. What :func:`apply_encodings` does:

- **Activation encoding** on tensor ``t`` (a graph input or a node output):
  ``t -> QuantizeLinear -> DequantizeLinear -> (every former consumer of t)``. A graph output keeps
  its name: the producer's output is renamed ``t_float`` and the DequantizeLinear produces ``t``.
  Activation encodings are per tensor (the runtime's contract); one naming an initializer (a
  *static activation*, e.g. the constant of an Add) is applied like a parameter.
- **Parameter encoding** on initializer ``w``: ``w`` becomes an integer initializer
  ``q = clamp(round_half_to_even(float32(w) / scale) + zero_point, qmin, qmax)`` (ONNX QuantizeLinear
  semantics, :func:`runtime.quantize.quantize`) followed by a DequantizeLinear whose output keeps the
  name ``w``. The per-channel axis comes from the op reading the weight when the file does not store
  it (AIMET 0.6.1/1.0.0): Conv 0, ConvTranspose 1, Gemm ``transB=1`` 0 else 1, MatMul last;
  biases 0. Per-block encodings get ``block_size`` and the block axis (the input channels).
- **Bias derivation** (``derive_bias=True``): a Conv or Gemm whose input and weight have encodings
  but whose float bias has none gets an int32 bias at ``scale = float32(s_x) * float32(s_w)``
  (:func:`runtime.encoding.bias_encoding`), zero point 0, the form ONNX Runtime fuses into
  QLinearConv/QGemm. ``s_x`` is found through data-movement ops (Flatten, MaxPool, ...).
- **Propagation** (``propagate=True``): the output of a data-movement op (Reshape, Flatten,
  Transpose, Squeeze, Unsqueeze, Identity, Dropout, MaxPool, Slice, Gather, Split) that has no
  encoding of its own gets its input's, as a QuantizeLinear/DequantizeLinear pair. This is exact
  (``QuantizeLinear(DequantizeLinear(q)) = q`` for the same 4 to 16-bit encoding: the dequantized
  value is a float32 grid point) and lets ONNX Runtime fuse the integer op that follows (its QDQ
  fusions need a DequantizeLinear directly in front); a target whose placement leaves such outputs
  unquantized keeps the input's encoding there anyway, so nothing changes for :func:`runtime.load`.
- **Constants**: a ``Constant`` node whose output an encoding names becomes an initializer first.
- **Storage**: :func:`load_with_encodings` first re-expresses 0.6.1/1.0.0 encodings (always unsigned
  when asymmetric) in the target's signedness (:func:`match_target_storage`); the grid is the same.
- **Opset**: QuantizeLinear/DequantizeLinear need opset 10, per-axis 13, int16/uint16/int4/uint4
  and per-block 21. Without ``opset`` the default-domain opset is raised to what the encodings need
  (``onnx.version_converter``, which refuses when an op has no adapter between the versions; the
  converted model must pass the checker) and the IR version to match.

>>> from onnx import helper, TensorProto
>>> from runtime.encoding import encoding_from_range
>>> from runtime.aimet import EncodingsFile
>>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
>>> m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
>>> e = encoding_from_range(-1.0, 1.0, "uint8", "asymmetric")
>>> q = apply_encodings(m, EncodingsFile(activations={"x": e, "y": e}, params={}))
>>> [(n.op_type, list(n.input), list(n.output)) for n in q.graph.node][:3]
[('QuantizeLinear', ['x', 'x_scale', 'x_zero_point'], ['x_quantized']), ('DequantizeLinear', ['x_quantized', 'x_scale', 'x_zero_point'], ['x_dequantized']), ('Relu', ['x_dequantized'], ['y_float'])]
"""
from __future__ import annotations

import difflib
import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .aimet import EncodingsFile, FlatBlocks, read_encodings, with_axis, with_storage
from .encoding import Encoding, PerAxis, PerBlock, bias_encoding
from .errors import EncodingError, HwsimError, ModelError, UnsupportedError
from .graph import load_model_proto
from .placement import MOVEMENT_OPS, param_role, weight_axes
from .quantize import quantize

__all__ = ["apply_encodings", "load_with_encodings", "match_target_storage"]

_ONNX_TYPE = {
    "int8": onnx.TensorProto.INT8, "uint8": onnx.TensorProto.UINT8, "int16": onnx.TensorProto.INT16,
    "uint16": onnx.TensorProto.UINT16, "int32": onnx.TensorProto.INT32, "int4": onnx.TensorProto.INT4,
    "uint4": onnx.TensorProto.UINT4,
}
_ACTIVATION_DTYPES = ("int8", "uint8", "int16", "uint16", "int4", "uint4")  # what QuantizeLinear can produce
_OPSET_21_DTYPES = ("int16", "uint16", "int4", "uint4")
_BIAS_OPS = ("Conv", "Gemm")


def _attrs(node: onnx.NodeProto) -> dict:
    try:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}
    except Exception as e:  # an attribute without a value
        raise ModelError(f"{node.op_type} node {node.name!r}: an attribute cannot be read: {e}") from None


def _init_array(t: onnx.TensorProto, source: str) -> np.ndarray:
    """An initializer's values, or a ModelError naming it when its data does not fit its shape/type."""
    try:
        return numpy_helper.to_array(t)
    except Exception as e:
        raise ModelError(f"{source}: initializer {t.name!r} cannot be read (data does not match its declared "
                         f"shape {list(t.dims)} and type?): {e}") from None


def _default_opset(m: onnx.ModelProto) -> int:
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def _needed_opset(enc: EncodingsFile) -> tuple[int, str]:
    """The smallest default-domain opset that expresses every encoding, and why."""
    need, why = 10, "QuantizeLinear/DequantizeLinear"
    for name, e in enc.all().items():
        block = isinstance(e, FlatBlocks) or isinstance(e.granularity, PerBlock)
        if e.dtype.name in _OPSET_21_DTYPES or block:
            return 21, f"{'per-block' if block else e.dtype.name} encoding of {name!r}"
        if isinstance(e.granularity, PerAxis) and need < 13:
            need, why = 13, f"per-channel encoding of {name!r}"
    return need, why


def _convert_opset(m: onnx.ModelProto, target: int, why: str, source: str) -> onnx.ModelProto:
    current = _default_opset(m)
    try:
        from onnx import version_converter

        out = version_converter.convert_version(m, target)
        out.ir_version = max(m.ir_version, helper.find_min_ir_version_for(list(out.opset_import)))
        onnx.checker.check_model(out)
    except Exception as e:  # the converter raises plain RuntimeErrors/ValidationErrors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{source}: the {why} needs opset {target}, but the model (opset {current}) cannot be moved "
                         f"to opset {target} without changing op semantics: {first}") from None
    return out


def _unique(used: set[str], base: str) -> str:
    name, i = base, 1
    while name in used:
        name, i = f"{base}_{i}", i + 1
    used.add(name)
    return name


def _tensor(name: str, values: np.ndarray, dtype_name: str) -> onnx.TensorProto:
    values = np.asarray(values)
    if dtype_name in ("int4", "uint4"):
        return helper.make_tensor(name, _ONNX_TYPE[dtype_name], list(values.shape), values.astype(np.int64).ravel().tolist())
    np_dtype = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
                "int32": np.int32}[dtype_name]
    return numpy_helper.from_array(values.astype(np_dtype), name)


def _close(name: str, known) -> str:
    near = difflib.get_close_matches(name, list(known), n=3)
    return f" (similar names: {', '.join(map(repr, near))})" if near else ""


def _resolve_param(name: str, e, shape: tuple[int, ...], uses, axes_known: bool, source: str) -> Encoding:
    """The encoding of initializer ``name`` fitted to its shape and the op reading it."""
    what = f"{source}: initializer {name!r}"
    roles = {param_role(n.op_type, i) for n, i in uses}
    try:
        weight_axis_set = {weight_axes(n.op_type, _attrs(n), len(shape)) for n, i in uses
                           if param_role(n.op_type, i) == "weight"}
    except (HwsimError, TypeError, ValueError) as e:  # e.g. a transB that is not an integer
        raise ModelError(f"{what}: the op reading it does not tell its axes: {e}") from None
    try:
        if isinstance(e, FlatBlocks):
            if len(weight_axis_set) != 1:
                raise EncodingError(f"{what}: a per-block encoding needs the weight's op (Conv, ConvTranspose, Gemm, "
                                    f"MatMul) to tell its axes; found {len(weight_axis_set)} weight uses")
            ch, blk = next(iter(weight_axis_set))
            e = e.to_encoding(shape, ch, blk, what)
        elif isinstance(e.granularity, PerAxis) and not axes_known:
            if roles == {"bias"}:
                axis = 0
            elif len(weight_axis_set) == 1 and roles == {"weight"}:
                axis = next(iter(weight_axis_set))[0]
            else:
                raise EncodingError(f"{what}: the file does not store the channel axis of this per-channel encoding "
                                    f"and its uses ({', '.join(sorted(n.op_type for n, _ in uses)) or 'none'}) do not "
                                    "settle it (expected one Conv/ConvTranspose/Gemm/MatMul weight, or a bias)")
            e = with_axis(e, axis)
        elif isinstance(e.granularity, PerBlock) and e.scale.ndim == len(shape):
            g = e.granularity  # AIMET may store a conv's blocks as [O, n_blocks, 1, 1]: repeat over the kernel
            target = tuple(s if (i == g.axis or s != 1) else d for i, (s, d) in enumerate(zip(e.scale.shape, shape)))
            if target != e.scale.shape:
                e = Encoding(np.broadcast_to(e.scale, target).copy(), np.broadcast_to(e.zero_point, target).copy(),
                             e.dtype, g, e.qmin, e.qmax, e.symmetric)
        e.check_tensor_shape(shape, f"{what} of shape {shape}")
    except EncodingError as err:
        msg = str(err)
        raise EncodingError(msg if msg.startswith(source) else f"{what}: {msg}") from None
    if e.dtype.name not in _ONNX_TYPE:
        raise EncodingError(f"{what}: a {e.dtype} encoding cannot be stored for DequantizeLinear (expected one of "
                            f"{sorted(_ONNX_TYPE)})")
    return e


def _trace_activation(name: str, acts: dict, producers: dict):
    """The activation encoding of ``name``, looking back through data-movement ops."""
    seen = set()
    while name not in acts:
        p = producers.get(name)
        if p is None or p.op_type not in MOVEMENT_OPS or p.domain not in ("", "ai.onnx") or name in seen:
            return None
        seen.add(name)
        name = p.input[0]
    return acts[name]


def apply_encodings(model: onnx.ModelProto | str | os.PathLike, encodings: EncodingsFile | str | os.PathLike | dict, *,
                    opset: int | None = None, derive_bias: bool = True, propagate: bool = True) -> onnx.ModelProto:
    """The QDQ ONNX model of float ``model`` with ``encodings`` applied (see the module docstring).

    Errors name the file and tensor: an encoding naming no tensor of the model, a parameter encoding
    on a computed tensor, a per-channel count that does not match the weight, a dtype that
    QuantizeLinear/DequantizeLinear cannot hold (32-bit activations; 64-bit or uint32 anything),
    an opset too low for the encodings.
    """
    proto, source = load_model_proto(model)
    enc = encodings if isinstance(encodings, EncodingsFile) else read_encodings(encodings)
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # refuse a broken float model before rewriting it
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{source}: the ONNX checker rejects the float model: {first}") from None
    for node in proto.graph.node:
        if node.op_type in ("LSTM", "GRU") and node.domain in ("", "ai.onnx"):
            raise UnsupportedError(f"{source}: {node.op_type} node {node.name!r}: encodings are not applied to "
                                   "recurrent layers (their weights, gates and cell state need the layer's own Q/DQ "
                                   "form, runtime/RECURRENT_ARITHMETIC.md); load the QDQ model hwsim exports "
                                   "(<name>.onnx) instead")
    m = onnx.ModelProto()
    m.CopyFrom(proto)

    need, why = _needed_opset(enc)
    current = _default_opset(m)
    target_opset = max(current, need) if opset is None else int(opset)
    if target_opset < need:
        raise EncodingError(f"{enc.source}: the {why} needs opset {need}; opset {target_opset} was requested")
    if target_opset < current:
        raise ModelError(f"{source}: the model is opset {current}; lowering it to {target_opset} is not supported")
    if target_opset > current:
        m = _convert_opset(m, target_opset, why, source)

    g = m.graph
    named = set(enc.all()) | set(enc.floats)
    for node in list(g.node):  # constants named by an encoding become initializers, so they can be quantized
        if node.op_type == "Constant" and node.output[0] in named:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                t = onnx.TensorProto()
                t.CopyFrom(value)
                t.name = node.output[0]
                g.initializer.append(t)
                g.node.remove(node)
    inits = {t.name: t for t in g.initializer}
    enc = enc.split(inits)
    nodes = list(g.node)
    producers = {o: n for n in nodes for o in n.output if o}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i, t in enumerate(n.input):
            if t:
                consumers.setdefault(t, []).append((n, i))
    graph_inputs = [v.name for v in g.input if v.name not in inits]
    graph_outputs = {v.name for v in g.output}
    known = set(inits) | set(graph_inputs) | set(producers)

    for name in named:
        if name not in known:
            raise EncodingError(f"{enc.source}: the encoding of {name!r} names no tensor of {source} (graph inputs, node "
                                f"outputs, initializers){_close(name, known)}")
    for name in enc.params:
        if name not in inits:
            by = producers.get(name)
            where = f"the output of {by.op_type} node {by.name!r}" if by is not None else "a graph input"
            raise EncodingError(f"{enc.source}: parameter encoding of {name!r}: the tensor is {where}, not an "
                                "initializer; move it to the activation encodings")

    params = dict(enc.params)
    acts: dict[str, Encoding] = {}
    for name, e in enc.activations.items():
        if not e.is_per_tensor:
            raise EncodingError(f"{enc.source}: activation encoding of {name!r}: activations are quantized per tensor, "
                                f"found {e.granularity}")
        (params if name in inits else acts)[name] = e
    for name, e in acts.items():
        if e.dtype.name not in _ACTIVATION_DTYPES:
            raise EncodingError(f"{enc.source}: activation encoding of {name!r}: QuantizeLinear cannot produce {e.dtype} "
                                f"(expected one of {list(_ACTIVATION_DTYPES)}; 32-bit encodings are for biases)")

    resolved: dict[str, Encoding] = {}
    for name, e in params.items():
        arr = _init_array(inits[name], source)
        if arr.dtype.kind != "f":
            raise EncodingError(f"{enc.source}: encoding of {name!r}: the initializer is {arr.dtype}, not float; only "
                                "float tensors are quantized")
        resolved[name] = _resolve_param(name, e, arr.shape, consumers.get(name, []), enc.axes_known, source)

    if propagate:
        for n in nodes:
            if n.op_type in MOVEMENT_OPS and n.domain in ("", "ai.onnx") and n.input and n.input[0] in acts:
                outs = n.output[:1] if n.op_type in ("Dropout", "MaxPool") else n.output
                for o in outs:
                    if o and o not in acts and o not in enc.floats:
                        acts[o] = acts[n.input[0]]

    if derive_bias:
        for n in nodes:
            if n.op_type not in _BIAS_OPS or len(n.input) < 3 or not n.input[2]:
                continue
            b, w, x = n.input[2], n.input[1], n.input[0]
            if b in resolved or b in enc.floats or b not in inits or w not in resolved:
                continue
            ex, ew = _trace_activation(x, acts, producers), resolved[w]
            bias = _init_array(inits[b], source)
            if ex is None or isinstance(ew.granularity, PerBlock) or bias.dtype.kind != "f" or bias.ndim != 1:
                continue
            if isinstance(ew.granularity, PerAxis) and bias.shape[0] != ew.scale.size:
                continue
            resolved[b] = bias_encoding(ex, ew)

    used = known | {n.name for n in nodes if n.name} | set(inits)
    head: list[onnx.NodeProto] = []
    after: dict[str, list[onnx.NodeProto]] = {}
    new_inits: list[onnx.TensorProto] = []

    def params_for(base: str, e: Encoding) -> tuple[str, str]:
        s_name, z_name = _unique(used, f"{base}_scale"), _unique(used, f"{base}_zero_point")
        new_inits.append(_tensor(s_name, e.scale, "float32"))
        new_inits.append(_tensor(z_name, e.zero_point, e.dtype.name))
        return s_name, z_name

    def axis_attrs(e: Encoding) -> dict:
        gr = e.granularity
        if isinstance(gr, PerAxis):
            return {"axis": gr.axis}
        if isinstance(gr, PerBlock):
            return {"axis": gr.axis, "block_size": gr.block_size}
        return {}

    for name, e in resolved.items():
        arr = _init_array(inits[name], source).astype(np.float32)
        q = quantize(arr, e, "half_to_even")
        q_name = _unique(used, f"{name}_quantized")
        new_inits.append(_tensor(q_name, q, e.dtype.name))
        s_name, z_name = params_for(name, e)
        head.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [name],
                                     name=_unique(used, f"{name}_DequantizeLinear"), **axis_attrs(e)))

    in_rename: dict[str, str] = {}
    out_rename: dict[str, str] = {}
    for name, e in acts.items():
        if name in graph_outputs and name not in graph_inputs:
            src, dst = _unique(used, f"{name}_float"), name
            out_rename[name] = src
        else:
            src, dst = name, _unique(used, f"{name}_dequantized")
            in_rename[name] = dst
        q_name = _unique(used, f"{name}_quantized")
        s_name, z_name = params_for(name, e)
        pair = [helper.make_node("QuantizeLinear", [src, s_name, z_name], [q_name], name=_unique(used, f"{name}_QuantizeLinear")),
                helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dst],
                                 name=_unique(used, f"{name}_DequantizeLinear"))]
        if name in producers:
            after[name] = pair
        else:
            head.extend(pair)

    ordered: list[onnx.NodeProto] = list(head)
    for n in nodes:
        produced = list(n.output)
        for i, t in enumerate(n.input):
            if t in in_rename:
                n.input[i] = in_rename[t]
        for i, t in enumerate(n.output):
            if t in out_rename:
                n.output[i] = out_rename[t]
        ordered.append(n)
        for o in produced:
            ordered.extend(after.get(o, []))
    g.ClearField("node")
    g.node.extend(ordered)
    keep = [t for t in g.initializer if t.name not in resolved]
    g.ClearField("initializer")
    g.initializer.extend(keep + new_inits)
    dropped = [v for v in g.input if v.name in resolved]
    for v in dropped:
        g.input.remove(v)
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{source}: the QDQ model built from {enc.source} fails the ONNX checker: {first}") from None
    return m


def match_target_storage(enc: EncodingsFile, model, target) -> EncodingsFile:
    """Re-express encodings in the target's storage signedness where the file cannot say it.

    AIMET 0.6.1/1.0.0 store every asymmetric encoding on the unsigned grid; a target with signed
    activations (or weights) of the same width gets the same grid as signed integers
    (:func:`runtime.aimet.with_storage`: ``zero_point - 2^(bits-1)``). 2.0.0 files state their dtype
    and are left as they are.
    """
    from dataclasses import replace

    from .target import load_target

    target = load_target(target)
    if enc.axes_known:  # 2.0.0: the dtype is explicit
        return enc
    proto, _ = load_model_proto(model)
    users: dict[str, str] = {}
    for n in proto.graph.node:
        for i, t in enumerate(n.input):
            if param_role(n.op_type, i) == "weight":
                users.setdefault(t, n.op_type)

    def fit(e, tq):
        if isinstance(e, Encoding) and e.dtype.bits == tq.qtype.bits and e.dtype.signed != tq.qtype.signed:
            return with_storage(e, tq.qtype)
        return e

    acts = {k: fit(e, target.arithmetic.activations) for k, e in enc.activations.items()}
    params = {k: fit(e, target.arithmetic.weights_for(users[k])) if k in users else e for k, e in enc.params.items()}
    return replace(enc, activations=acts, params=params)


def load_with_encodings(model, encodings, target, **kwargs):
    """``runtime.load(apply_encodings(model, encodings), target)``, with the encodings first stored the
    way the target stores them (:func:`match_target_storage`). Keyword arguments go to
    :func:`apply_encodings`."""
    from .graph import parse_graph
    from .plan import load
    from .target import load_target

    target = load_target(target)
    enc = encodings if isinstance(encodings, EncodingsFile) else read_encodings(encodings)
    enc = match_target_storage(enc, model, target)
    # the QDQ model exists only in memory: errors about it name the two files it came from
    source = f"{model if isinstance(model, (str, os.PathLike)) else '<in-memory model>'} with {enc.source}"
    return load(parse_graph(apply_encodings(model, enc, **kwargs), source=source), target)
