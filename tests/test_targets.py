"""Targets are validated data: every built-in loads, round-trips, and bad files fail clearly."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from hwsim.cli import main as cli_main
from runtime.errors import TargetError
from runtime.target import (AliasFile, builtin_dir, builtin_names, load_alias, load_target, parse_target,
                            resolve_alias, save_target)

REQUIRED = {"dsp-int8", "npu-int8-pc", "npu-w4a8", "htp-a16w8", "ort-cpu-vnni", "ort-cpu-avx2", "ort-cpu"}


def test_required_targets_present():
    assert REQUIRED <= set(builtin_names())


@pytest.mark.parametrize("name", sorted(builtin_names()))
def test_target_round_trips(name, tmp_path):
    t = load_target(name)
    again = parse_target(tomllib.loads(t.to_toml()), "reloaded")
    assert again == t
    assert again.to_dict() == t.to_dict()
    for suffix in (".toml", ".json"):
        path = save_target(t, tmp_path / f"copy{suffix}")
        assert load_target(path) == t
        assert load_target(path).to_dict() == t.to_dict()


def _base() -> dict:
    return load_target("npu-int8-pc").to_dict()


def _write(tmp_path: Path, data: dict, name="t.toml") -> Path:
    import tomli_w

    p = tmp_path / name
    p.write_text(tomli_w.dumps(data) if name.endswith(".toml") else json.dumps(data))
    return p


def _set(d: dict, path: str, value):
    keys = path.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


BAD = [
    # (key path, value, words the message must contain)
    ("arithmetic.weights.dtpye", "int8", ["arithmetic.weights.dtpye", "unknown key", "dtype"]),
    ("arithmetic.accumulator.bits", "32", ["arithmetic.accumulator.bits", "expected one of", "'32' (str)"]),
    ("placement.model_input.is_input_quantized", "True", ["placement.model_input.is_input_quantized", "boolean", "'True' (str)"]),
    ("arithmetic.activations.granularity", "per_channel", ["arithmetic.activations.granularity", "per tensor", "per_channel"]),
    ("arithmetic.accumulator.bits", 16, ["arithmetic.accumulator.bits", "at least 17", "found 16"]),
    ("arithmetic.requant.rounding", "half_to_even", ["arithmetic.requant.rounding", "fixed_point", "half_to_even"]),
    ("arithmetic.requant.rounding", "int64", ["arithmetic.requant.rounding", "64-bit accumulator"]),
    ("arithmetic.weights.scheme", "strict-symmetric", ["arithmetic.weights.scheme", "strict_symmetric"]),
    ("arithmetic.weights.granularity", "per_block", ["arithmetic.weights.block_size", "positive block_size"]),
    ("arithmetic.weights.block_size", 32, ["arithmetic.weights.block_size", "only per_block"]),
    ("arithmetic.activations.dtype", "uint4", ["arithmetic.activations.dtype", "4-bit activations"]),
    ("arithmetic.activations.scheme", "strict_symmetric", []),  # int8 strict symmetric activations are fine
    ("arithmetic.elementwise.left_shift", 40, ["arithmetic.elementwise.left_shift", "[0, 30]", "40"]),
    ("arithmetic.integer_ops", ["Conv", "Convolution"], ["arithmetic.integer_ops[1]", "ONNX operator", "Convolution"]),
    ("arithmetic.lut_ops", ["Sigmoid", "Relu"], ["arithmetic.lut_ops[1]", "Relu"]),
    ("arithmetic.accumulator.pair_saturation_bits", 8, ["pair_saturation_bits", "[0, 16]", "8"]),
    ("placement.supergroups", [{"op_list": ["Conv"]}], ["placement.supergroups[0].op_list", "at least two"]),
    ("placement.supergroups", [{"op_list": ["Conv", "ReLU"]}], ["placement.supergroups[0].op_list[1]", "ReLU"]),
    ("placement.op_type.Conv.params.kernel", {"is_quantized": True}, ["placement.op_type.Conv.params.kernel", "'weight' or 'bias'"]),
    ("arithmetic.recurrent.ops", ["LSTM", "RNN"], ["arithmetic.recurrent.ops[1]", "LSTM", "RNN"]),
    ("arithmetic.recurrent.cell_scale_log2_max", -5, ["arithmetic.recurrent.cell_scale_log2_min", "-9", "-5"]),
    ("arithmetic.recurrent.gate_integer_bits", 4, ["arithmetic.recurrent.gate_integer_bits", "Q3.12"]),
    ("arithmetic.recurrent.weights", {"dtype": "uint8", "scheme": "asymmetric"}, ["arithmetic.recurrent.weights",
                                                                               "signed symmetric"]),
    ("arithmetic.recurrent.rounding", "int64", ["arithmetic.recurrent.rounding", "8x8_16"]),
    ("schema_version", 2, ["schema_version", "expected 1", "found 2"]),
    ("name", 5, ["name", "expected a string", "5 (int)"]),
]


@pytest.mark.parametrize("key,value,words", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_bad_target_file_names_file_and_key(tmp_path, key, value, words, suffix):
    data = _base()
    _set(data, key, value)
    path = _write(tmp_path, data, "t" + suffix)
    if not words:
        assert load_target(path).arithmetic is not None
        return
    with pytest.raises(TargetError) as e:
        load_target(path)
    msg = str(e.value)
    assert msg.startswith(str(path)), msg
    for w in words:
        assert w in msg, (w, msg)


def test_missing_key_and_syntax_errors(tmp_path):
    data = _base()
    del data["arithmetic"]["requant"]
    with pytest.raises(TargetError, match=r"t\.toml: arithmetic\.requant: required key is missing"):
        load_target(_write(tmp_path, data))
    bad = tmp_path / "syntax.toml"
    bad.write_text("name = \n")
    with pytest.raises(TargetError, match=r"syntax\.toml: not valid TOML"):
        load_target(bad)
    with pytest.raises(TargetError, match=r"nope\.toml: target file not found"):
        load_target(tmp_path / "nope.toml")
    with pytest.raises(TargetError, match=r"unknown target 'npu-int9'.*dsp-int8"):
        load_target("npu-int9")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TargetError, match="not a UTF-8"):
        load_target(binary)


@pytest.mark.parametrize("flags,machine,expected", [
    ({"avx2", "avx512_vnni"}, "x86_64", "ort-cpu-vnni"),
    ({"avx2", "avx_vnni"}, "x86_64", "ort-cpu-vnni"),
    ({"avx2", "amx_int8"}, "x86_64", "ort-cpu-vnni"),
    ({"avx2", "avx512bw"}, "x86_64", "ort-cpu-avx2"),
    ({"avx2"}, "x86_64", "ort-cpu-avx2"),
    ({"asimd", "asimddp"}, "aarch64", "ort-cpu-vnni"),
])
def test_ort_cpu_alias_resolution(flags, machine, expected):
    alias = load_alias("ort-cpu")
    assert isinstance(alias, AliasFile)
    name, reason = resolve_alias(alias, flags, machine)
    assert name == expected and reason


def test_ort_cpu_alias_loads_this_machines_form():
    t = load_target("ort-cpu")
    assert t.resolved_from == "ort-cpu"
    assert t.name in ("ort-cpu-vnni", "ort-cpu-avx2")
    assert load_target("ort-cpu", flags={"avx512_vnni"}).name == "ort-cpu-vnni"


def test_cli_targets_json_lists_required(capsys):
    assert cli_main(["targets", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in out["targets"]}
    assert REQUIRED <= names
    ort = next(r for r in out["targets"] if r["name"] == "ort-cpu")
    assert ort["alias_of"] in ("ort-cpu-vnni", "ort-cpu-avx2")


def test_cli_targets_show_and_user_file(capsys, tmp_path):
    assert cli_main(["targets", "show", "npu-w4a8", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["arithmetic"]["weights"]["dtype"] == "int4"
    path = save_target(load_target("npu-w4a8"), tmp_path / "mine.toml")
    assert cli_main(["targets", "show", str(path)]) == 0
    assert 'name = "npu-w4a8"' in capsys.readouterr().out


def test_cli_bad_target_exits_2_without_traceback(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[arithmetic]\n")
    assert cli_main(["targets", "show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "Traceback" not in err


def test_runtime_imports_without_torch():
    code = "import runtime, runtime.target, runtime.fixedpoint, runtime.quantize, runtime.encoding, sys; " \
           "assert 'torch' not in sys.modules, 'runtime imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_wheel_ships_targets(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(repo)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("hwsim-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for n in REQUIRED:
        assert f"hwsim_targets/{n}.toml" in names, names
    assert "runtime/target.py" in names and "hwsim/cli.py" in names
    assert "runtime/ops/mac.py" in names and "runtime/kernels/mac.py" in names
    assert "hwsim/checkpoints/digits-separable.pt" in names and "hwsim/checkpoints/digits-residual.pt" in names


def test_recurrent_support_is_described_per_target():
    """Each built-in target says whether (and how) it runs LSTM/GRU in integers; ort-cpu says why not."""
    for name in ("dsp-int8", "npu-int8-pc", "npu-w4a8", "htp-a16w8"):
        a = load_target(name).arithmetic
        assert a.recurrent_problem("LSTM") is None and a.recurrent_problem("GRU") is None, name
    assert load_target("htp-a16w8").arithmetic.recurrent.variant == "16x8_16"
    assert load_target("npu-w4a8").arithmetic.recurrent_weights().dtype == "int4"
    for name in ("ort-cpu-avx2", "ort-cpu-vnni"):
        assert "float" in load_target(name).arithmetic.recurrent_problem("LSTM")
