"""Export a calibrated simulation model: QDQ ONNX, the float ONNX it came from, and AIMET encodings.

Files written (each atomically: a failed export leaves none of them half-written):

- ``<name>.onnx``: the QDQ model. Every quantized activation ``t`` is ``t -> QuantizeLinear ->
  DequantizeLinear``; weights are integer initializers behind a DequantizeLinear (``axis`` for per
  channel, ``block_size`` for per block), biases int32 at ``s_x*s_w``. ONNX Runtime runs it as it is;
  ``runtime.load(path, target)`` plans it into the same integer program the exact mode computes.
  Data-movement ops repeat their input's encoding after them (so ONNX Runtime's QDQ fusions see
  ``DQ -> op -> Q`` around every op, as its own ``quantize_static`` writes them).
- ``<name>_float.onnx``: the float model (batch norms folded) whose tensor names the encodings use.
- ``<name>.encodings``: AIMET's encodings JSON (1.0.0 by default) keyed by those tensor names
  (activations by tensor, parameters by ``<layer>.weight`` / ``<layer>.bias``).
A graph output keeps its name in both models (in the QDQ model it is the last DequantizeLinear).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.atomic import atomic_write_bytes
from runtime.encoding import Encoding, PerAxis, PerBlock
from .graph import RECURRENT

_ONNX_TYPE = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8, "uint16": TensorProto.UINT16,
              "int16": TensorProto.INT16, "int32": TensorProto.INT32, "int4": TensorProto.INT4,
              "uint4": TensorProto.UINT4}


class _Builder:
    def __init__(self, sim, qdq: bool):
        self.sim, self.with_qdq = sim, qdq
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: dict[str, str] = {}  # sim value -> tensor that consumers read
        self.opset = 13

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def int_init(self, name: str, q: np.ndarray, enc: Encoding) -> str:
        dt = str(enc.dtype)
        if dt in ("int4", "uint4"):
            self.opset = 21
            t = helper.make_tensor(name, _ONNX_TYPE[dt], q.shape, q.reshape(-1).astype(np.int64).tolist())
            self.inits.append(t)
            return name
        return self.init(name, q.astype(enc.dtype.numpy_dtype))

    def qparams(self, base: str, enc: Encoding) -> tuple[str, str, dict]:
        dt = str(enc.dtype)
        if dt in ("int4", "uint4", "int16", "uint16"):
            self.opset = 21
        s = self.init(base + "_scale", np.asarray(enc.scale, np.float32))
        zp = np.asarray(enc.zero_point, np.int64)
        if dt in ("int4", "uint4"):
            self.inits.append(helper.make_tensor(base + "_zero_point", _ONNX_TYPE[dt], zp.shape,
                                                 zp.reshape(-1).tolist()))
            z = base + "_zero_point"
        else:
            z = self.init(base + "_zero_point", zp.astype(enc.dtype.numpy_dtype))
        attrs = {}
        if isinstance(enc.granularity, PerAxis):
            attrs["axis"] = enc.granularity.axis
        elif isinstance(enc.granularity, PerBlock):
            attrs["axis"] = enc.granularity.axis
            attrs["block_size"] = enc.granularity.block_size
            self.opset = 21
        return s, z, attrs

    def node(self, op_type, inputs, outputs, name, **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))

    def qdq(self, value: str, float_name: str, enc: Encoding, final_name: str | None = None) -> None:
        """Quantize/dequantize ``float_name``; consumers of ``value`` read the result."""
        if not self.with_qdq:
            self.names[value] = float_name
            return
        s, z, attrs = self.qparams(value, enc)
        q = value + "_q"
        dq = final_name or value + "_dq"
        self.node("QuantizeLinear", [float_name, s, z], [q], value + "_quantize", **attrs)
        self.node("DequantizeLinear", [q, s, z], [dq], value + "_dequantize", **attrs)
        self.names[value] = dq


def _float_name(value: str, outputs: list[str], qdq: bool) -> str:
    return value + "_prequant" if (qdq and value in outputs) else value


def build(sim, qdq: bool = True) -> onnx.ModelProto:
    for q in list(sim.act_q.values()) + list(sim.weight_q.values()):
        if hasattr(q, "check_in_sync"):
            q.check_in_sync()  # learned ranges newer than their encodings are refused (freeze or sync first)
    b = _Builder(sim, qdq)
    outs = sim.output_names
    graph_inputs = []
    states = {i for g in sim.groups if g.op_type in RECURRENT for i in g.head.inputs[1:]}
    for name, shape in zip(sim.input_names, (sim.cap.shapes.get(n, ()) for n in sim.input_names)):
        dims = ["N"] + list(shape[1:])
        if name in states:  # initial states [D, N, H]: the batch is axis 1
            dims = [shape[0], "N"] + list(shape[2:])
        graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        b.qdq(name, name, sim.quantizer_of(name).encoding)
    for g in sim.groups:
        op = g.head
        ins = [b.names[i] for i in op.inputs]
        key = g.name.replace(".", "_")
        head_out = op.output if g.acts else _float_name(g.output, outs, qdq)
        a = op.attrs
        if op.op_type in RECURRENT:
            from .recurrent import export_node

            export_node(b, sim, g, ins[0], ins[1:], head_out, qdq)
        elif op.op_type in ("Conv", "Gemm"):
            m = sim.layers[key]
            wq, bq = sim.weight_q[key], sim.bias_q[key]
            wname, bname = g.name + ".weight", g.name + ".bias"
            if qdq:
                wint = wq.quantize(m.weight.detach()).cpu().numpy()
                wi = b.int_init(wname + "_int", wint, wq.encoding)
                s, z, attrs = b.qparams(wname, wq.encoding)
                b.node("DequantizeLinear", [wi, s, z], [wname], wname + "_dequantize", **attrs)
                if m.bias is not None:
                    bint = bq.quantize(m.bias.detach()).cpu().numpy()
                    benc = _bias32(bq.encoding, bint, bname)
                    bi = b.init(bname + "_int", bint.astype(np.int32))
                    s, z, attrs = b.qparams(bname, benc)
                    b.node("DequantizeLinear", [bi, s, z], [bname], bname + "_dequantize", **attrs)
            else:
                b.init(wname, m.weight.detach().cpu().numpy().astype(np.float32))
                if m.bias is not None:
                    b.init(bname, m.bias.detach().cpu().numpy().astype(np.float32))
            inputs = ins + [wname] + ([bname] if m.bias is not None else [])
            if op.op_type == "Gemm":
                b.node("Gemm", inputs, [head_out], op.name, transB=1)
            else:
                b.node("Conv", inputs, [head_out], op.name, kernel_shape=list(a["kernel"]), strides=list(a["strides"]),
                       pads=[a["pads"][0], a["pads"][1], a["pads"][2], a["pads"][3]], dilations=list(a["dilations"]),
                       group=int(a["group"]))
        elif op.op_type in ("Add", "Mul", "GlobalAveragePool"):
            b.node(op.op_type, ins, [head_out], op.name)
        elif op.op_type in ("Relu", "Clip"):
            _act(b, op, ins[0], head_out)
        elif op.op_type == "MaxPool":
            b.node("MaxPool", ins, [head_out], op.name, kernel_shape=list(a["kernel"]), strides=list(a["strides"]),
                   pads=list(a["pads"]), dilations=list(a["dilations"]), ceil_mode=int(a["ceil_mode"]))
        elif op.op_type == "AveragePool":
            b.node("AveragePool", ins, [head_out], op.name, kernel_shape=list(a["kernel"]), strides=list(a["strides"]),
                   pads=list(a["pads"]), ceil_mode=int(a["ceil_mode"]), count_include_pad=int(a["count_include_pad"]))
        elif op.op_type == "Flatten":
            b.node("Flatten", ins, [head_out], op.name, axis=1)
        elif op.op_type == "Reshape":
            shp = b.init(op.name + ".shape", np.asarray(a["shape"], np.int64))
            b.node("Reshape", ins + [shp], [head_out], op.name)
        elif op.op_type == "Concat":
            b.node("Concat", ins, [head_out], op.name, axis=int(a["axis"]))
        elif op.op_type == "Gather":
            idx = b.init(op.name + ".indices", np.asarray(a["index"], np.int64))
            b.node("Gather", ins + [idx], [head_out], op.name, axis=int(a["axis"]))
        else:
            raise NotImplementedError(op.op_type)
        prev = head_out
        for i, act in enumerate(g.acts):
            o = act.output if i < len(g.acts) - 1 else _float_name(g.output, outs, qdq)
            _act(b, act, prev, o)
            prev = o
        final = g.output if g.output in outs else None
        enc = sim.quantizer_of(g.output).encoding
        b.qdq(g.output, prev, enc, final)
    graph_outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N"] + list(sim.cap.shapes.get(o, (0,))[1:]))
                     for o in outs]
    graph = helper.make_graph(b.nodes, "hwsim_export", graph_inputs, graph_outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", b.opset)],
                              producer_name="hwsim", producer_version=_version())
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model


def _aimet_expressible(enc: Encoding) -> Encoding:
    """AIMET's files hold full-range or strict-symmetric grids of 4 to 32 bits: a reduced-range (7-bit in
    int8) weight encoding is written with its dtype's full range; scale and zero point are unchanged, and
    the integers in the QDQ model stay inside the reduced range. An int64 bias is written as int32."""
    t = enc.dtype
    if str(t) == "int64":  # 16x8 targets' int64 biases: written as int32, as the QDQ model holds them (_bias32)
        return Encoding(enc.scale, enc.zero_point, "int32", enc.granularity, symmetric=True)
    if enc.symmetric and (enc.qmin, enc.qmax) not in ((t.qmin, t.qmax), (t.qmin + 1, t.qmax)):
        return Encoding(enc.scale, enc.zero_point, t, enc.granularity, symmetric=True)
    return enc


def _bias32(enc: Encoding, values: np.ndarray, name: str) -> Encoding:
    """ONNX DequantizeLinear holds at most int32: an int64 bias (16x8 targets) is written as int32
    when every value fits, and refused otherwise."""
    if str(enc.dtype) == "int32":
        return enc
    if values.size and (values.min() < -(1 << 31) or values.max() > (1 << 31) - 1):
        from runtime.errors import EncodingError

        raise EncodingError(f"bias {name!r}: values up to {int(np.abs(values).max())} need more than 32 bits, which "
                            "ONNX DequantizeLinear cannot hold; the model cannot be exported as QDQ for this target")
    return Encoding(enc.scale, enc.zero_point, "int32", enc.granularity, symmetric=True)


def _act(b: _Builder, op, x: str, out: str) -> None:
    if op.op_type == "Relu":
        b.node("Relu", [x], [out], op.name)
        return
    lo, hi = op.attrs.get("min"), op.attrs.get("max")
    ins = [x, b.init(op.name + ".min", np.float32(lo)) if lo is not None else "",
           b.init(op.name + ".max", np.float32(hi)) if hi is not None else ""]
    while ins and ins[-1] == "":
        ins.pop()
    b.node("Clip", ins, [out], op.name)


def _version() -> str:
    from . import __version__

    return __version__


def export(sim, out_dir: Path, name: str, encodings_version: str = "1.0.0") -> dict[str, Path]:
    from runtime.aimet import EncodingsFile, to_dict

    missing = [q.tensor_name for q in list(sim.act_q.values()) + list(sim.weight_q.values()) if q.encoding is None]
    if missing:
        from runtime.errors import HwsimError

        raise HwsimError(f"cannot export: {len(missing)} tensors have no encoding (first: {missing[0]!r}); "
                         "call sim.calibrate(...) first")
    out_dir.mkdir(parents=True, exist_ok=True)
    qdq = build(sim, qdq=True)
    flt = build(sim, qdq=False)
    acts, params = {}, {}
    for q in sim.act_q.values():
        acts[q.tensor_name] = q.encoding
    for alias, src in sim.alias.items():
        acts[alias] = sim.quantizer_of(src).encoding
    for v in sim.cell_values:
        acts[v] = sim.quantizer_of(v).encoding
    recurrent_keys = set()
    for g in sim.groups:
        if g.op_type in RECURRENT:
            from .recurrent import encodings as rnn_encodings

            ra, rp = rnn_encodings(sim, g)
            acts.update(ra)
            params.update({n: _aimet_expressible(e) for n, e in rp.items()})
            k = g.name.replace(".", "_")
            recurrent_keys.update({f"{k}__w_ih", f"{k}__w_hh", f"{k}__b_ih", f"{k}__b_hh"})
    for key, q in list(sim.weight_q.items()) + list(sim.bias_q.items()):
        if key in recurrent_keys:
            continue
        if q.kind == "bias" and sim.layers[key].bias is None:
            continue  # a layer without bias has no bias tensor in the exported models: no encoding either
        if q.encoding is not None:
            params[q.tensor_name] = _aimet_expressible(q.encoding)
    import json

    enc_doc = to_dict(EncodingsFile(activations=acts, params=params), encodings_version)
    paths = {"onnx": out_dir / f"{name}.onnx", "float_onnx": out_dir / f"{name}_float.onnx",
             "encodings": out_dir / f"{name}.encodings"}
    blobs = {"onnx": qdq.SerializeToString(), "float_onnx": flt.SerializeToString(),
             "encodings": json.dumps(enc_doc, indent=2).encode()}
    for k, p in paths.items():
        atomic_write_bytes(p, blobs[k])
    return paths
