"""Where a target quantizes an ONNX graph: which tensors carry an encoding, and as what.

:func:`expected_encodings` maps tensor names to ``"activation"``, ``"weight"`` or ``"bias"``
following the target's placement (AIMET quantsim-config concepts, ``runtime.target.Placement``):

- **Op outputs**: quantized when ``placement.output_quantized(op_type)`` (the op-type override, else
  ``defaults.ops.is_output_quantized``), unless the op is inside a supergroup and not its last op.
  Data-movement ops configured ``is_output_quantized = false`` (Reshape, MaxPool, ...) keep their
  input's encoding: their outputs are not expected.
- **Op inputs**: quantized when ``placement.input_quantized(op_type)``.
- **Parameters**: the weight (input 1) and bias (input 2) initializers of Conv, ConvTranspose and
  Gemm and the constant B of MatMul, when ``placement.param_quantized(op_type, kind)`` (op-type
  override, else ``params.{weight,bias}``, else ``defaults.params``). In a ``MatMul, Add`` supergroup
  the Add's constant operand is the MatMul's bias.
- **Static activations**: other float initializers read by a quantized op (e.g. the constant of an
  Add) are activations, as AIMET's ONNX quantsim treats them; non-data inputs (Clip bounds, Resize
  scales, Pad values) and the constants of ops fused into a supergroup (a folded BatchNormalization's
  statistics) are not.
- **Model inputs**: quantized when ``model_input.is_input_quantized`` or a consumer's op type
  quantizes its inputs. **Model outputs**: ``model_output.is_output_quantized = true`` forces a
  quantizer on every graph output; ``false`` leaves the op's own rule in charge (AIMET accepts
  only ``true`` here and otherwise applies the op rules).
- Only float tensors are quantized (shape inference gives the types; unknown types count as float).

**Supergroup matching** (like AIMET's connected-graph pattern matcher): nodes are visited in
topological order; at each node not yet in a group, the *longest* ``op_list`` that matches a chain
starting at that node is taken, where each link of the chain is a single-consumer edge (the
producer's only output, read by exactly one node, and not a graph output). A node joins at most
one group; greedy, no backtracking. Inside a matched chain only the last op's output is quantized;
the later ops are fused into the first (e.g. a BatchNormalization after a Conv is folded), so they
need not be integer ops themselves.

**Ops the target does not run in integers** (not in ``arithmetic.integer_ops`` and not fused):
``float_ops="raise"`` refuses with the node named; ``float_ops="float"`` marks their float outputs
``"float"`` (the target computes them in float: no encoding expected) and expects nothing for them.

>>> from onnx import helper, TensorProto
>>> from runtime.target import load_target
>>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
>>> expected_encodings(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), load_target("dsp-int8"))
{'x': 'activation', 'y': 'activation'}
"""
from __future__ import annotations

import os

import onnx

from .errors import ModelError, UnsupportedError
from .graph import Graph, Node, load_model_proto, parse_graph
from .target import Target, load_target

__all__ = ["expected_encodings", "match_supergroups", "param_role", "weight_axes", "MOVEMENT_OPS", "WEIGHT_OPS"]

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MOVEMENT_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "MaxPool", "Slice",
                "Gather", "Split")  # ops that move integers without changing them (the runtime's data movement)
NON_DATA_INPUTS = {"Clip": (1, 2), "Resize": (1, 2, 3), "Upsample": (1,), "Pad": (1, 2, 3)}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def param_role(op_type: str, index: int) -> str | None:
    """``"weight"``/``"bias"`` for the parameter inputs of Conv, ConvTranspose, Gemm and MatMul.

    >>> param_role("Conv", 1), param_role("Gemm", 2), param_role("MatMul", 0), param_role("Add", 1)
    ('weight', 'bias', None, None)
    """
    if op_type in ("Conv", "ConvTranspose", "Gemm"):
        return {1: "weight", 2: "bias"}.get(index)
    if op_type == "MatMul":
        return "weight" if index == 1 else None
    return None


def weight_axes(op_type: str, attrs: dict, ndim: int) -> tuple[int, int]:
    """(channel axis, block axis) of a weight: the output-channel axis that per-channel encodings
    follow, and the input-channel (reduction) axis that per-block encodings split.

    Conv (0, 1); ConvTranspose (1, 0); Gemm with transB=1 (0, 1), else (1, 0); MatMul (last, second last).

    >>> weight_axes("Gemm", {"transB": 1}, 2), weight_axes("MatMul", {}, 3), weight_axes("ConvTranspose", {}, 4)
    ((0, 1), (2, 1), (1, 0))
    """
    if op_type == "Conv":
        return 0, 1
    if op_type == "ConvTranspose":
        return 1, 0
    if op_type == "Gemm":
        return (0, 1) if int(attrs.get("transB", 0)) else (1, 0)
    if op_type == "MatMul":
        return ndim - 1, ndim - 2
    raise ModelError(f"{op_type} has no weight axes (expected one of {list(WEIGHT_OPS)})")


def match_supergroups(graph: Graph, supergroups) -> list[list[Node]]:
    """The supergroup chains of ``graph`` (see the module docstring for the matching rule)."""
    patterns = sorted((tuple(s.op_list) for s in supergroups), key=len, reverse=True)
    consumers = graph.consumers()
    outputs = {o.name for o in graph.outputs}
    claimed: set[str] = set()
    groups = []
    for node in graph.nodes:
        if node.name in claimed:
            continue
        for pat in patterns:
            if node.op_type != pat[0] or node.domain:
                continue
            chain, cur = [node], node
            for op in pat[1:]:
                outs = [o for o in cur.outputs if o]
                users = consumers.get(outs[0], []) if len(outs) == 1 else []
                if len(outs) != 1 or outs[0] in outputs or len(users) != 1 or users[0].op_type != op \
                        or users[0].domain or users[0].name in claimed:
                    chain = None
                    break
                cur = users[0]
                chain.append(cur)
            if chain is not None:
                groups.append(chain)
                claimed.update(n.name for n in chain)
                break
    return groups


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best effort: unknown types count as float
        inferred = model
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)
             if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def expected_encodings(model: onnx.ModelProto | str | os.PathLike, target: Target | str, *,
                       float_ops: str = "raise") -> dict[str, str]:
    """Tensor name -> ``"activation"`` | ``"weight"`` | ``"bias"`` (and ``"float"`` with
    ``float_ops="float"``) for every tensor ``target`` quantizes in ``model``; see the module
    docstring for the rules."""
    if float_ops not in ("raise", "float"):
        raise ValueError(f"float_ops must be 'raise' or 'float', found {float_ops!r}")
    target = load_target(target)
    proto, source = load_model_proto(model)
    graph = parse_graph(proto)
    types = _elem_types(proto)
    pl = target.placement
    integer = set(target.arithmetic.integer_ops)

    def is_float(name: str) -> bool:
        t = types.get(name)
        return t is None or t in _FLOAT_TYPES

    consts = set(graph.initializers) | {o for n in graph.nodes if n.op_type == "Constant" for o in n.outputs}
    graph_outputs = {o.name for o in graph.outputs}
    groups = match_supergroups(graph, pl.supergroups)
    head_of: dict[str, Node] = {}
    inner: set[str] = set()  # nodes whose output stays inside a group
    for chain in groups:
        for n in chain[1:]:
            head_of[n.name] = chain[0]
        inner.update(n.name for n in chain[:-1])

    out: dict[str, str] = {}
    floats: dict[str, None] = {}  # ordered
    consumers = graph.consumers()
    for vi in graph.inputs:
        if not is_float(vi.name):
            continue
        users = consumers.get(vi.name, [])
        if pl.model_input.is_input_quantized or any(pl.input_quantized(u.op_type) for u in users):
            if users or vi.name in graph_outputs:
                out[vi.name] = "activation"
    for node in graph.nodes:
        if node.op_type == "Constant":
            continue
        head = head_of.get(node.name)
        if node.op_type not in integer and head is None:
            if float_ops == "raise":
                raise UnsupportedError(f"{source}: {node.op_type} node {node.name!r}: target {target.name!r} does not "
                                       f"run {node.op_type} in integers (not in arithmetic.integer_ops)")
            floats.update(dict.fromkeys(o for o in node.outputs if o and is_float(o)))
            continue
        if node.name not in inner:
            for o in node.outputs:
                if o and is_float(o) and (pl.output_quantized(node.op_type)
                                          or (o in graph_outputs and pl.model_output.is_output_quantized)):
                    out[o] = "activation"
        for i, t in enumerate(node.inputs):
            if not t or not is_float(t):
                continue
            if t in consts:
                role = param_role(node.op_type, i)
                owner = node.op_type
                if role is None and head is not None and head.op_type == "MatMul" and node.op_type == "Add":
                    role, owner = "bias", "MatMul"  # MatMul + Add(constant): the Add is the MatMul's bias
                if role is not None:
                    if pl.param_quantized(owner, role):
                        out.setdefault(t, role)
                elif head is None and i not in NON_DATA_INPUTS.get(node.op_type, ()):
                    out.setdefault(t, "activation")
            elif pl.input_quantized(node.op_type) and head is None:
                out[t] = "activation"
    for f in floats:
        out.setdefault(f, "float")
    return out
