"""The simulator's exact mode equals the integer runtime on the exported model, bit for bit, on every
built-in target; the exported QDQ model equals ONNX Runtime on the host's ort-cpu form; fast mode
stays within the stated LSB bounds of exact mode."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import hwsim
import runtime
import runtime.errors
from hwsim.export import build
from runtime.target import load_target

from .sim_models import Branchy, ResDW, randomize_bn

TARGETS = ["dsp-int8", "npu-int8-pc", "npu-w4a8", "htp-a16w8", "ort-cpu-avx2", "ort-cpu-vnni"]
HOST_FORM = load_target("ort-cpu").name


def _calibrated(model, target, x, scheme="minmax"):
    sim = hwsim.simulate(model, target, x[:1])
    sim.calibrate([x[: len(x) // 2], x[len(x) // 2:]], scheme=scheme, progress=False)
    return sim


def _runtime(sim, tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(build(sim).SerializeToString())
    return p, runtime.load(p, sim.target)


def _check_exact_equals_runtime(sim, x, tmp_path):
    vals = sim.run_exact((x,))
    path, prog = _runtime(sim, tmp_path)
    res = prog.run_with_details({sim.input_names[0]: x.numpy()}, keep_tensors=True)
    # every quantized intermediate tensor, layer by layer
    n = 0
    for g in sim.groups:
        if not g.out_quantized:
            continue
        name = g.output + "_q"
        if name in res.tensors:
            assert np.array_equal(vals[g.output].numpy(), res.tensors[name].astype(np.int64)), g.name
            n += 1
    assert n >= 3
    out = sim.output_names[0]
    sim.mode = "exact"
    y = sim(x).numpy()
    assert np.array_equal(y, res.outputs[out])
    # overflow/saturation statistics agree with the runtime's
    for g in sim.groups:
        if g.name in res.stats and g.out_quantized:
            assert sim.stats[g.name]["overflow"] == res.stats[g.name].overflow, g.name
            assert sim.stats[g.name]["saturation"] == res.stats[g.name].saturation, g.name
    return path, res


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("arch", ["resdw", "branchy"])
def test_exact_equals_integer_runtime(arch, target, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(ResDW()) if arch == "resdw" else Branchy().eval()
    x = torch.rand(16, 1, 8, 8)
    sim = _calibrated(model, target, x)
    _check_exact_equals_runtime(sim, x, tmp_path)


@settings(max_examples=12)
@given(c=st.integers(1, 12), k=st.sampled_from([1, 3, 5]), stride=st.integers(1, 2),
       target=st.sampled_from(TARGETS), scale=st.floats(0.01, 50.0), shift=st.floats(-1.0, 1.0),
       seed=st.integers(0, 2**16))
def test_exact_equals_runtime_random_nets(tmp_path_factory, c, k, stride, target, scale, shift, seed):
    torch.manual_seed(seed)
    model = randomize_bn(ResDW(c=c, k=k, stride=stride), seed)
    x = (torch.rand(6, 1, 10, 10) + shift) * scale
    sim = _calibrated(model, target, x)
    try:
        build(sim)
    except runtime.errors.EncodingError as e:  # int64 bias of a dead channel: ONNX QDQ cannot hold it
        assert "32 bits" in str(e) and load_target(target).arithmetic.bias.dtype == "int64"
        assume(False)
    _check_exact_equals_runtime(sim, x, tmp_path_factory.mktemp("m"))


@pytest.mark.ort
@pytest.mark.parametrize("arch", ["resdw", "branchy"])
def test_exported_qdq_equals_onnxruntime_on_host_form(arch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    model = randomize_bn(ResDW(c=16)) if arch == "resdw" else Branchy().eval()
    x = torch.rand(16, 1, 8, 8)
    sim = _calibrated(model, HOST_FORM, x)
    path, res = _check_exact_equals_runtime(sim, x, tmp_path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sim.input_names[0]: x.numpy()})
    if HOST_FORM != "ort-cpu-avx2" and not np.array_equal(y, res.outputs[sim.output_names[0]]):
        pytest.xfail(f"{HOST_FORM} not yet measured against ONNX Runtime on such a CPU")
    assert np.array_equal(y, res.outputs[sim.output_names[0]])


@pytest.mark.parametrize("target", ["dsp-int8", "npu-int8-pc", "ort-cpu-vnni", "htp-a16w8"])
def test_fast_mode_within_one_lsb_of_exact(target):
    """Fast (float) simulation vs the integer truth: conv outputs differ by at most 1 LSB on >= 99.9 %
    of elements (the float sum is rounded once where the integer pipeline rounds in its own way)."""
    torch.manual_seed(2)
    model = randomize_bn(ResDW(c=16))
    x = torch.rand(32, 1, 8, 8)
    sim = _calibrated(model, target, x)
    sim.mode = "fast"
    fast_vals = sim.run_float((x,), fake=True)
    ex = sim.run_exact((x,))
    for g in sim.groups:
        if g.op_type not in ("Conv", "Gemm"):
            continue
        q = sim.quantizer_of(g.output)
        lsb = (q.quantize(fast_vals[g.output]) - ex[g.output]).abs()
        assert (lsb <= 1).float().mean() >= 0.999, (g.name, lsb.max())


def test_fast_mode_gradients_flow_to_weights():
    model = randomize_bn(ResDW())
    x = torch.rand(4, 1, 8, 8)
    sim = _calibrated(model, "npu-int8-pc", x)
    sim.mode = "fast"
    sim(x).sum().backward()
    grads = [p.grad for p in sim.layers.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_batch_norm_folded_including_after_depthwise():
    model = randomize_bn(ResDW())
    x = torch.rand(4, 1, 8, 8)
    sim = hwsim.simulate(model, "dsp-int8", x[:1])
    assert sorted(b for _, b in sim.cap.folded) == ["b1", "b2"]
    sim.mode = "float"
    torch.testing.assert_close(sim(x), model(x), rtol=1e-5, atol=1e-5)


def test_supergroups_follow_the_target():
    model = randomize_bn(ResDW())
    sim = hwsim.simulate(model, "dsp-int8", torch.zeros(1, 1, 8, 8))
    fused = {g.name: [a.op_type for a in g.acts] for g in sim.groups}
    assert fused["c1"] == ["Relu"] and fused["dw"] == ["Clip"] and fused["add"] == ["Relu"]
    assert "pool" in sim.alias and "flatten" in sim.alias  # movement ops keep their input's encoding


def test_uncalibrated_and_bad_inputs_are_refused():
    model = randomize_bn(ResDW())
    sim = hwsim.simulate(model, "dsp-int8", torch.zeros(1, 1, 8, 8))
    with pytest.raises(runtime.HwsimError, match="calibrate"):
        sim.mode = "exact"
        sim(torch.zeros(1, 1, 8, 8))
    bad = torch.rand(2, 1, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(runtime.HwsimError, match=r"calibration batch 1: .*tensor 'x'.* NaN"):
        sim.calibrate([torch.rand(2, 1, 8, 8), bad], progress=False)
    with pytest.raises(runtime.HwsimError, match="empty"):
        sim.calibrate([], progress=False)


def test_unsupported_module_is_refused_with_its_name():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.GELU())
    with pytest.raises(runtime.HwsimError, match="GELU"):
        hwsim.simulate(model, "dsp-int8", torch.zeros(1, 1, 5, 5))


@pytest.mark.shared_data
@pytest.mark.parametrize("target", ["dsp-int8", "npu-w4a8", "ort-cpu-avx2"])
def test_imported_onnx_model_zoo_mnist8_exact_equals_runtime(shared_data, target, tmp_path):
    """The model-zoo float mnist-8 imported natively (torch.fx from ONNX nodes), simulated and exported:
    its inputs and outputs keep their ONNX names, and exact mode equals the integer runtime."""
    import gzip

    def idx(path):
        b = gzip.open(path).read()
        nd = b[3]
        dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
        return np.frombuffer(b, np.uint8, offset=4 + 4 * nd).reshape(dims)

    x = torch.from_numpy(idx(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz")[:64].astype(np.float32)[:, None])
    sim = hwsim.simulate(shared_data / "onnx" / "mnist-8" / "model.onnx", target, x[:1])
    assert sim.input_names == ["Input3"] and sim.output_names == ["Plus214_Output_0"]
    sim.calibrate([x[:32], x[32:]], progress=False)
    _check_exact_equals_runtime(sim, x, tmp_path)


def test_calibration_schemes_per_tensor_and_their_effect():
    torch.manual_seed(3)
    model = randomize_bn(ResDW())
    x = torch.randn(32, 1, 8, 8)
    x[0, 0, 0, 0] = 40.0  # one outlier in the input
    sim = hwsim.simulate(model, "dsp-int8", x[:1])
    sim.calibrate([x], progress=False)
    s_minmax = float(sim.quantizer_of("x").encoding.scale)
    sim.calibrate([x], progress=False, schemes={"x": "percentile", "c1.weight": "mse"}, percentile=99.9)
    s_pct = float(sim.quantizer_of("x").encoding.scale)
    assert s_pct < s_minmax / 4  # the outlier is clipped away
    sim.calibrate([x], progress=False, scheme="tf_enhanced")
    with pytest.raises(runtime.HwsimError, match="not a quantized tensor"):
        sim.calibrate([x], progress=False, schemes={"nope": "mse"})


@pytest.mark.parametrize("target", ["dsp-int8", "npu-int8-pc", "npu-w4a8", "ort-cpu-avx2"])
@pytest.mark.parametrize("version", ["0.6.1", "1.0.0", "2.0.0"])
def test_export_float_model_plus_encodings_runs_like_the_qdq_model(target, version, tmp_path):
    """What an AIMET user gets (float ONNX + encodings JSON) runs on the integer runtime exactly as our QDQ
    export does, in every encodings version; `hwsim encodings validate` finds no error in it."""
    from hwsim.cli import main

    torch.manual_seed(4)
    model = randomize_bn(ResDW())
    x = torch.rand(8, 1, 8, 8)
    sim = _calibrated(model, target, x)
    files = sim.export(tmp_path, "m", encodings_version=version)
    feeds = {"x": x.numpy()}
    qdq = runtime.load(files["onnx"], target).run(feeds)
    via_enc = runtime.load(files["float_onnx"], target, encodings=files["encodings"]).run(feeds)
    assert np.array_equal(qdq["fc"], via_enc["fc"])
    sim.mode = "exact"
    assert np.array_equal(sim(x).numpy(), qdq["fc"])
    assert main(["encodings", "validate", str(files["float_onnx"]), str(files["encodings"]), "--target", target]) == 0
