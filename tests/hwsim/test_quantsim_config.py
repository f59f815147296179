"""AIMET quantsim configs imported as targets (hwsim/quantsim_config.py).

tests/data/quantsim_default.json is written in the style of AIMET's default_config.json,
tests/data/quantsim_htp.json in the style of its htp_quantsim_config_v75.json (both small, written
for these tests)."""
from __future__ import annotations

from pathlib import Path

import pytest

from hwsim.quantsim_config import import_quantsim_config, read_quantsim_config
from runtime.errors import TargetError
from runtime.target import load_target, save_target

DATA = Path(__file__).resolve().parents[1] / "data"


def _cfg(**over):
    d = {"defaults": {"ops": {"is_output_quantized": "True"}, "params": {"is_quantized": "True"}},
         "params": {}, "op_type": {}, "supergroups": [], "model_input": {}, "model_output": {}}
    d.update(over)
    return d


def test_default_style_config_on_dsp_int8():
    t, warnings = import_quantsim_config(DATA / "quantsim_default.json", "dsp-int8")
    assert warnings == []
    assert t.name == "quantsim_default" and "quantsim_default.json" in t.description and "dsp-int8" in t.description
    p = t.placement
    assert p.params["bias"].is_quantized is False and p.defaults.params.is_quantized is True
    assert p.defaults.ops.is_output_quantized is True and p.defaults.ops.is_input_quantized is False
    assert p.output_quantized("Dropout") is False and p.output_quantized("Reshape") is True  # the config's rules
    assert [s.op_list for s in p.supergroups] == [("Conv", "Relu"), ("Conv", "Clip"), ("Add", "Relu"), ("Gemm", "Relu")]
    assert p.model_input.is_input_quantized is True and p.model_output.is_output_quantized is False
    base = load_target("dsp-int8").arithmetic
    a = t.arithmetic
    assert (a.weights.dtype, a.weights.scheme, a.weights.granularity) == ("int8", "symmetric", "per_tensor")
    assert a.activations == base.activations and a.requant == base.requant and a.integer_ops == base.integer_ops


def test_htp_style_config_reports_what_it_does_not_map():
    t, warnings = import_quantsim_config(DATA / "quantsim_htp.json", "npu-int8-pc", name="htp-like")
    text = "\n".join(warnings)
    for needle in ("duplicate key 'Gather'", "op_type.ChannelShuffle", "params.running_mean",
                   "Softmax.encoding_constraints", "LayerNormalization.params.weight.is_symmetric",
                   "Gather.per_channel_quantization", "hw_version 'V75'"):
        assert needle in text, needle
    assert t.name == "htp-like" and "hw_version V75" in t.description
    a = t.arithmetic
    # strict_symmetric "False" turns the base's strict weights into plain symmetric, per channel
    assert (a.weights.scheme, a.weights.granularity) == ("symmetric", "per_channel")
    assert a.weights_for("Gemm").granularity == "per_tensor" and a.weights_for("Conv").granularity == "per_channel"
    assert "ChannelShuffle" not in t.placement.op_type and t.placement.output_quantized("MaxPool") is False
    assert t.placement.model_output.is_output_quantized is True
    assert ("Conv", "BatchNormalization", "Relu") in [s.op_list for s in t.placement.supergroups]


def test_written_target_loads_and_round_trips(tmp_path):
    t, _ = import_quantsim_config(DATA / "quantsim_htp.json", "htp-a16w8")
    for suffix in (".toml", ".json"):
        path = save_target(t, tmp_path / f"imported{suffix}")
        back = load_target(path)
        assert back == t and back.to_dict() == t.to_dict()


def test_booleans_strings_or_real_and_nothing_else():
    t1, _ = import_quantsim_config(_cfg(defaults={"ops": {}, "params": {}, "per_channel_quantization": "True"}),
                                   "dsp-int8")
    t2, _ = import_quantsim_config(_cfg(defaults={"ops": {}, "params": {}, "per_channel_quantization": True}),
                                   "dsp-int8")
    assert t1.arithmetic.weights == t2.arithmetic.weights and t1.arithmetic.weights.granularity == "per_channel"
    with pytest.raises(TargetError, match=r"defaults.per_channel_quantization: expected \"True\"/\"False\".*'yes'"):
        import_quantsim_config(_cfg(defaults={"per_channel_quantization": "yes"}), "dsp-int8")
    with pytest.raises(TargetError, match=r"op_type.Conv.is_output_quantized: expected"):
        import_quantsim_config(_cfg(op_type={"Conv": {"is_output_quantized": 1}}), "dsp-int8")


def test_unknown_keys_are_reported_not_dropped():
    cfg = _cfg(colour="blue", defaults={"ops": {"is_output_quantized": "True", "bogus": "True"}, "params": {},
                                        "wat": 1},
               op_type={"Conv": {"is_output_quantized": "True", "speed": "fast"}},
               supergroups=[{"op_list": ["Conv", "Relu"], "note": "x"}, {"op_list": ["Conv", "Mystery"]}])
    t, warnings = import_quantsim_config(cfg, "dsp-int8")
    text = "\n".join(warnings)
    for needle in ("colour: unknown top-level key", "defaults.ops.bogus", "defaults.wat", "op_type.Conv.speed",
                   "supergroups[0].note", "supergroups[1]: ['Mystery']"):
        assert needle in text, needle
    assert [s.op_list for s in t.placement.supergroups] == [("Conv", "Relu")]
    assert set(read_quantsim_config(cfg).warnings) <= set(warnings)


def test_symmetry_flags_adjust_schemes():
    t, w = import_quantsim_config(_cfg(defaults={"ops": {"is_symmetric": "True"}, "params": {"is_symmetric": "True"},
                                                 "strict_symmetric": "True"}), "dsp-int8")
    assert (t.arithmetic.weights.scheme, t.arithmetic.activations.scheme) == ("strict_symmetric", "strict_symmetric")
    assert t.arithmetic.activations.dtype == "int8"  # symmetric schemes are stored signed
    t, _ = import_quantsim_config(_cfg(defaults={"ops": {"is_symmetric": "True"}, "params": {},
                                                 "unsigned_symmetric": "True"}), "dsp-int8")
    assert t.arithmetic.activations.scheme == "unsigned_symmetric" and t.arithmetic.activations.dtype == "int8"
    t, w = import_quantsim_config(_cfg(defaults={"ops": {}, "params": {"is_symmetric": "True"},
                                                 "strict_symmetric": "True", "unsigned_symmetric": "True"}), "dsp-int8")
    assert t.arithmetic.weights.scheme == "strict_symmetric" and any("strict_symmetric is used" in x for x in w)
    t, _ = import_quantsim_config(_cfg(defaults={"ops": {"is_symmetric": "False"}, "params": {"is_symmetric": "False"}}),
                                  "htp-a16w8")
    assert (t.arithmetic.activations.scheme, t.arithmetic.activations.dtype) == ("asymmetric", "int16")
    assert t.arithmetic.weights.scheme == "asymmetric"


def test_op_weight_overrides_and_reduce_range(tmp_path):
    cfg = _cfg(op_type={"MatMul": {"params": {"weight": {"is_symmetric": "False"}}},
                        "Conv": {"per_channel_quantization": "False"}})
    t, _ = import_quantsim_config(cfg, "npu-int8-pc")
    assert t.arithmetic.weights_for("MatMul").scheme == "asymmetric"
    assert t.arithmetic.weights_for("Conv").granularity == "per_tensor"
    assert t.arithmetic.weights_for("Gemm") == t.arithmetic.weights
    base = load_target("ort-cpu-avx2").arithmetic.weights
    if base.reduce_range:  # the base's 7-bit weights survive symmetric schemes, not asymmetric ones
        t, w = import_quantsim_config(_cfg(defaults={"ops": {}, "params": {"is_symmetric": "False"}}), "ort-cpu-avx2")
        assert not t.arithmetic.weights.reduce_range and any("reduce_range is dropped" in x for x in w)
        t, w = import_quantsim_config(_cfg(), "ort-cpu-avx2")
        assert t.arithmetic.weights.reduce_range and w == []


def test_per_block_base_is_kept_by_per_channel_true():
    from runtime.target import parse_target

    d = load_target("npu-w4a8").to_dict()
    d["name"] = "w4-blocks"
    d["arithmetic"]["weights"].update(granularity="per_block", block_size=32)
    base = parse_target(d)
    t, _ = import_quantsim_config(_cfg(defaults={"ops": {}, "params": {}, "per_channel_quantization": "True"}), base)
    assert (t.arithmetic.weights.granularity, t.arithmetic.weights.block_size) == ("per_block", 32)
    t, _ = import_quantsim_config(_cfg(defaults={"ops": {}, "params": {}, "per_channel_quantization": "False"}), base)
    assert (t.arithmetic.weights.granularity, t.arithmetic.weights.block_size) == ("per_tensor", None)


def test_unreadable_configs_named(tmp_path):
    with pytest.raises(TargetError, match="missing.json: quantsim config not found"):
        import_quantsim_config(tmp_path / "missing.json", "dsp-int8")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(TargetError, match="bad.json: not valid JSON"):
        import_quantsim_config(bad, "dsp-int8")
    with pytest.raises(TargetError, match="supergroups: expected a list"):
        import_quantsim_config(_cfg(supergroups={"op_list": []}), "dsp-int8")
