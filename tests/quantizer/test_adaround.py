"""AdaRound (quantizer/adaround.py): every result is a valid rounding of its weight on the unchanged
grid, never worse than nearest rounding on its own reconstruction objective, within its memory bound;
the hand-written gradient equals autograd's; on the digits residual CNN at W4A8 (npu-w4a8, int4
per-channel) the fast-sim and integer-runtime accuracy are at least nearest rounding's, and the exact
simulation still equals the integer runtime bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

import hwsim
import runtime
from hwsim.export import build
from hwsim.sim import _key
from quantizer.adaround import (_Layer, _Rounding, adaround, beta_at, inverse_rectified_sigmoid,
                                rectified_sigmoid, round_regularizer)
from runtime.errors import DataError, HwsimError

from ..hwsim.sim_models import images, small_calibrated_sim, ResDW, randomize_bn

SMALL_TARGETS = ["dsp-int8", "npu-int8-pc", "npu-w4a8"]  # per-tensor int8, per-channel int8, per-channel int4


def _small_sim(target: str):
    sim, x = small_calibrated_sim(target, 64)
    return sim, x


def _mac_groups(sim):
    return [g for g in sim.groups if g.op_type in ("Conv", "Gemm")]


# ------------------------------------------------------------------------------------------------
# the pieces
# ------------------------------------------------------------------------------------------------
@given(st.floats(0.001, 0.999))
def test_rectified_sigmoid_inverse_and_range(h):
    v = inverse_rectified_sigmoid(torch.tensor(h, dtype=torch.float64))
    assert abs(float(rectified_sigmoid(v)) - h) < 1e-9
    big = torch.tensor([-50.0, -3.0, 3.0, 50.0])
    assert rectified_sigmoid(big).tolist() == [0.0, 0.0, 1.0, 1.0]  # the stretch reaches 0 and 1 exactly


@given(st.floats(1.0, 20.0), st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=8))
def test_regularizer_zero_only_on_binary(beta, bits):
    assert float(round_regularizer(torch.tensor(bits), beta)) == 0.0
    assert float(round_regularizer(torch.tensor(bits + [0.5]), beta)) == 1.0


def test_beta_schedule_warm_start_then_linear_decay():
    betas = [beta_at(t, 100, (20.0, 2.0), 0.2) for t in range(100)]
    assert betas[:20] == [None] * 20
    assert betas[20] == 20.0 and abs(betas[-1] - (2.0 + 18.0 / 80)) < 1e-12
    assert all(a > b for a, b in zip(betas[20:], betas[21:]))


@pytest.mark.parametrize("target", ["npu-int8-pc", "dsp-int8"])
def test_hand_written_gradient_equals_autograd(target):
    """Conv+Relu, depthwise+Clip(0, 6), conv without activation, Gemm; warm start (no regularizer)
    and two exponents: dL/dV by hand equals autograd's on the plainly written objective."""
    sim, _ = _small_sim(target)
    g = torch.Generator().manual_seed(3)
    for grp, beta in ((grp, beta) for grp in _mac_groups(sim) for beta in (None, 2.0, 13.5)):
        layer = _Layer(sim, grp)
        rnd = _Rounding(layer, layer.module.weight.detach(), layer.module.bias)
        V = rnd.V + 0.5 * torch.randn(rnd.V.shape, generator=g)
        xb = torch.randn((layer.G, 40, layer.K), generator=g)
        yb = torch.randn((layer.G, 40, layer.O), generator=g).relu()
        grad = rnd.grad(V, xb, yb, beta, 0.05)
        Va = V.clone().requires_grad_(True)
        ref = rnd.loss(Va, xb, yb, beta, 0.05)
        ref.backward()
        assert torch.allclose(grad, Va.grad, rtol=1e-4, atol=1e-6), (grp.name, beta)
        assert grad.abs().max() > 0


# ------------------------------------------------------------------------------------------------
# the algorithm on a small model: valid rounding, not worse than nearest, memory bound
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", SMALL_TARGETS)
def test_valid_rounding_unchanged_encodings_not_worse_than_nearest(target):
    sim, x = _small_sim(target)
    before = sim.encodings()
    w0 = {grp.name: sim.layers[_key(grp.name)].weight.detach().clone() for grp in _mac_groups(sim)}
    # default iterations; keep_better=False: the optimization's own result is what is measured
    res = adaround(sim, [x[:32], x[32:]], num_samples=64, keep_better=False, progress=False)
    assert set(res["layers"]) == set(w0) and len(w0) == 4
    assert sim.encodings() == before  # AdaRound keeps the grid it optimized against
    strictly_better = 0
    for name, r in res["layers"].items():
        wq = sim.weight_q[_key(name)]
        enc = wq.encoding
        q = r["q"]
        s, z = wq._params(w0[name])
        v = w0[name] / s  # float32, as the quantizer divides
        lo, hi = torch.floor(v) + z, torch.ceil(v) + z
        lo, hi = lo.clamp(enc.qmin, enc.qmax), hi.clamp(enc.qmin, enc.qmax)
        assert ((q == lo) | (q == hi)).all(), name
        assert int(q.min()) >= enc.qmin and int(q.max()) <= enc.qmax, name
        # imposed: the float weight is the dequantized integer weight, a fixed point of quantization
        w = sim.layers[_key(name)].weight.detach()
        assert torch.equal(w, wq.dequantize(q)), name
        assert torch.equal(wq.quantize(w), q), name
        assert torch.equal(r["q_nearest"], wq.quantize(w0[name])), name
        assert not r["fallback"]
        assert r["recon_adaround"] <= r["recon_nearest"], (name, r["recon_adaround"], r["recon_nearest"])
        strictly_better += r["recon_adaround"] < r["recon_nearest"]
        assert r["rows"] <= r["row_bound"]
    assert strictly_better >= 3  # it actually changes roundings for the better, not only ties


def test_first_layer_objective_on_all_positions_not_worse():
    """Independently of the sampled cache: on every output position of fresh images, the first
    conv's objective ||relu(conv(x_q, W~) + b_q) - relu(conv(x, W) + b)||^2 with AdaRound's weights is
    below nearest rounding's."""
    sim, x = _small_sim("npu-w4a8")
    grp = _mac_groups(sim)[0]
    m, wq, bq = sim.layers[_key(grp.name)], sim.weight_q[_key(grp.name)], sim.bias_q[_key(grp.name)]
    w_float, b_float = m.weight.detach().clone(), m.bias.detach().clone()
    w_near = wq.dequantize(wq.quantize(w_float))
    adaround(sim, [x], iterations=400, layers=[grp.name], max_rows=512, progress=False)
    w_ada = m.weight.detach()
    xt = images(128, 9)
    xq = sim.quantizer_of(sim.input_names[0])(xt)
    pad = grp.head.attrs["pads"][0]
    target = F.relu(F.conv2d(xt, w_float, b_float, padding=pad))

    def objective(w):
        out = F.relu(F.conv2d(xq, w, bq(b_float), padding=pad))
        return float((out - target).pow(2).sum(1).mean())

    assert objective(w_ada) < objective(w_near)


def test_keep_better_falls_back_to_nearest():
    """A deliberately bad optimization (huge steps, huge regularizer) is never kept when it
    reconstructs worse than nearest rounding."""
    sim, x = _small_sim("npu-w4a8")
    w0 = {grp.name: sim.layers[_key(grp.name)].weight.detach().clone() for grp in _mac_groups(sim)}
    res = adaround(sim, [x], iterations=30, lr=3.0, reg_weight=1e4, warm_start=0.0, progress=False)
    fell = [n for n, r in res["layers"].items() if r["fallback"]]
    assert fell  # the bad settings do lose to nearest somewhere
    for name, r in res["layers"].items():
        wq = sim.weight_q[_key(name)]
        if r["fallback"]:
            assert r["recon_adaround"] > r["recon_nearest"]
            assert torch.equal(r["q"], wq.quantize(w0[name])) and r["changed"] == 0.0
        assert torch.equal(wq.quantize(sim.layers[_key(name)].weight.detach()), r["q"])


@pytest.mark.parametrize("max_rows, cache_mb", [(100, 64.0), (16384, 0.01), (5, 64.0)])
def test_memory_bound(max_rows, cache_mb):
    sim, x = _small_sim("npu-int8-pc")
    res = adaround(sim, [x], iterations=5, num_samples=64, max_rows=max_rows, cache_mb=cache_mb, progress=False)
    for grp in _mac_groups(sim):
        r = res["layers"][grp.name]
        layer = _Layer(sim, grp)
        per_row = 4 * (layer.G * layer.K + layer.c_out)
        bound = max(1, min(max_rows, int(cache_mb * 2 ** 20 // per_row)))
        assert r["row_bound"] == bound
        assert 1 <= r["rows"] <= bound, grp.name
        assert r["cache_mb"] <= max(cache_mb, per_row / 2 ** 20) + 1e-12
        if grp.op_type == "Conv":  # enough positions to fill the bound when it is below the data
            assert r["rows"] == min(bound, 64 * layer.out_positions(x)[0] * layer.out_positions(x)[1])
    assert res["max_cache_mb"] == max(r["cache_mb"] for r in res["layers"].values())
    assert res["peak_rss_mb"] > 0 and res["num_samples"] == 64


def test_errors_name_what_is_wrong():
    model = randomize_bn(ResDW(c=4, classes=3), seed=1)
    x = images(8, 4)
    sim = hwsim.simulate(model, "npu-int8-pc", x[:1])
    with pytest.raises(HwsimError, match="calibrate"):
        adaround(sim, [x], iterations=1, progress=False)
    sim.calibrate([x], progress=False)
    with pytest.raises(HwsimError, match="not Conv/Gemm layers"):
        adaround(sim, [x], layers=["nope"], progress=False)
    with pytest.raises(DataError, match="empty"):
        adaround(sim, [], progress=False)
    with pytest.raises(HwsimError, match="warm_start"):
        adaround(sim, [x], warm_start=1.5, progress=False)


# ------------------------------------------------------------------------------------------------
# the digits residual CNN at W4A8: accuracy vs nearest, exact == integer runtime
# ------------------------------------------------------------------------------------------------
def test_digits_residual_w4a8_not_worse_than_nearest_and_exact_equals_runtime(tmp_path):
    from hwsim.digits import load_digits_split, pretrained

    x_train, y_train, x_test, y_test = load_digits_split()
    model = pretrained("residual", x_train, y_train)
    cal = [torch.from_numpy(x_train[i:i + 64]) for i in range(0, 256, 64)]
    xt = torch.from_numpy(x_test)

    def accuracies(sim):
        with torch.no_grad():
            sim.mode = "fast"
            fast = float((sim(xt).argmax(1).numpy() == y_test).mean())
            exact_int = sim.run_exact((xt,))[sim.output_names[0]]
        p = tmp_path / "m.onnx"
        p.write_bytes(build(sim).SerializeToString())
        res = runtime.load(p, sim.target).run_with_details({sim.input_names[0]: x_test}, keep_tensors=True)
        out = sim.output_names[0]
        assert np.array_equal(exact_int.numpy(), res.tensors[out + "_q"].astype(np.int64))  # bit for bit
        integer = float((res.outputs[out].argmax(1) == y_test).mean())
        return fast, integer

    sim = hwsim.simulate(model, "npu-w4a8", xt[:1])
    sim.calibrate(cal, progress=False)
    near_fast, near_int = accuracies(sim)
    res = adaround(sim, cal, progress=False)
    ada_fast, ada_int = accuracies(sim)
    print(f"\ndigits residual npu-w4a8: nearest fast {near_fast:.2%} integer {near_int:.2%}; AdaRound fast "
          f"{ada_fast:.2%} integer {ada_int:.2%}; {res['seconds_per_layer']:.2f} s/layer, "
          f"peak RSS {res['peak_rss_mb']:.0f} MB")
    assert ada_fast >= near_fast and ada_int >= near_int
    assert all(r["recon_adaround"] <= r["recon_nearest"] for r in res["layers"].values())
