"""Cross-layer equalization (+ high-bias absorption) and bias correction: the defining properties.

- CLE leaves the float function unchanged (ReLU chains, depthwise chains, Linear chains, and ReLU6
  chains under the exact ``scale_bound`` rule) to 1e-5 relative, and equalizes ranges (r1_i = r2_i
  for every pair once the sweep has converged).
- CLE recovers per-tensor (dsp-int8) output SQNR on a model with badly imbalanced channels.
- High-bias absorption keeps the float function (ReLU, pre-activations above beta - 3 gamma, no
  padding in the next layer) and shrinks the first layer's biases.
- Empirical bias correction removes the mean output shift it measures (to the bias grid);
  analytical correction reduces it on data drawn to match the batch-norm statistics.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import hwsim
from quantizer.bias_correction import (clipped_normal_mean, correct_bias_analytical, correct_bias_empirical,
                                       layer_output_means)
from quantizer.cle import bn_statistics, equalize, find_chains
from runtime.errors import HwsimError
from runtime.target import load_target

FEW = settings(max_examples=6, deadline=None)


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 4 + 0.05)  # imbalanced folds
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.2)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def _int4_weights(name: str = "dsp-int8"):
    t = load_target(name)
    ar = t.arithmetic
    return dataclasses.replace(t, arithmetic=dataclasses.replace(ar, weights=dataclasses.replace(ar.weights,
                                                                                                 dtype="int4")))


def _float_out(sim, x):
    sim.mode = "float"
    with torch.no_grad():
        return sim(x).double()


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _ranges_equalized(sim, report, rtol=1e-3):
    for p in report:
        w1 = sim.layers[p["first"].replace(".", "_")].weight.detach()
        w2m = sim.layers[p["second"].replace(".", "_")]
        w2 = w2m.weight.detach()
        r1 = w1.abs().flatten(1).amax(1)
        dw = isinstance(w2m, nn.Conv2d) and w2m.groups > 1
        r2 = w2.abs().flatten(1).amax(1) if dw else w2.abs().transpose(0, 1).flatten(1).amax(1)
        torch.testing.assert_close(r1, r2, rtol=rtol, atol=1e-7)


class ConvChain(nn.Module):
    """conv 3x3 + BN + ReLU -> conv 1x1 + BN + ReLU -> conv 3x3 (a three-layer chain)."""

    def __init__(self, c=6):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(2, c, 3, padding=1), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)
        self.c3 = nn.Conv2d(c, 3, 3)

    def forward(self, x):
        return self.c3(torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))))


class DwChain(nn.Module):
    """conv 1x1 + BN + ReLU -> depthwise 3x3 + BN + ReLU -> MaxPool -> conv 1x1."""

    def __init__(self, c=8):
        super().__init__()
        self.pw1, self.b1 = nn.Conv2d(3, c, 1), nn.BatchNorm2d(c)
        self.dw, self.b2 = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c)
        self.pool = nn.MaxPool2d(2)
        self.pw2 = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        y = torch.relu(self.b1(self.pw1(x)))
        return self.pw2(self.pool(torch.relu(self.b2(self.dw(y)))))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.f1, self.f2, self.f3 = nn.Linear(10, 12), nn.Linear(12, 9), nn.Linear(9, 4)

    def forward(self, x):
        return self.f3(torch.relu(self.f2(torch.relu(self.f1(x)))))


@FEW
@given(st.sampled_from(["conv", "dw", "mlp"]), st.integers(0, 2**16))
def test_cle_keeps_float_function_and_equalizes_ranges(kind, seed):
    model, shape = {"conv": (ConvChain(), (2, 2, 7, 7)), "dw": (DwChain(), (2, 3, 6, 6)),
                    "mlp": (Mlp(), (5, 10))}[kind]
    _randomize(model, seed)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    sim = hwsim.simulate(model, "npu-int8-pc", x[:1])
    before = _float_out(sim, x)
    report = equalize(sim, absorb_high_bias=False, progress=False)
    assert len(report) == 2 and [len(c) for c in find_chains(sim)] == [2]
    assert any(p["scale_max"] / p["scale_min"] > 1.01 for p in report)  # something was really scaled
    assert _rel(_float_out(sim, x), before) < 1e-5
    _ranges_equalized(sim, report)


def test_cle_stops_at_branches_and_model_outputs():
    from tests.hwsim.sim_models import ResDW, randomize_bn

    model = randomize_bn(ResDW())
    sim = hwsim.simulate(model, "dsp-int8", torch.zeros(1, 1, 8, 8))
    # c1's output feeds the depthwise conv and the residual Add: not a chain; dw -> ReLU6 -> pw is
    chains = [[(a.name, b.name) for a, _, b in c] for c in find_chains(sim)]
    assert chains == [[("dw", "pw")]]


class Relu6Net(nn.Module):
    """conv 1x1 -> ReLU6 -> conv 1x1 -> ReLU6 -> conv 1x1, on inputs in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(2, 6, 1), nn.Conv2d(6, 6, 1), nn.Conv2d(6, 3, 1)

    def forward(self, x):
        return self.c3(nn.functional.relu6(self.c2(nn.functional.relu6(self.c1(x)))))


@FEW
@given(st.integers(0, 2**16))
def test_cle_relu6_scale_bound_is_exact(seed):
    g = torch.Generator().manual_seed(seed)
    model = Relu6Net().eval()
    with torch.no_grad():
        # c1: channels 0-2 small (never reach 6 on [0, 1] inputs), 3-5 large (may reach it)
        model.c1.weight.copy_(torch.randn(6, 2, 1, 1, generator=g) * torch.tensor([.3, .1, 2, 8, 9, 7]).reshape(6, 1, 1, 1))
        model.c1.bias.fill_(0.1)
        model.c2.weight.copy_(torch.randn(6, 6, 1, 1, generator=g))
    x = torch.rand(64, 2, 3, 3, generator=g)
    sim = hwsim.simulate(model, "dsp-int8", x[:1])
    sim.calibrate([x], progress=False)  # the input range [0, 1] bounds c1's pre-activation
    before = _float_out(sim, x)
    w1 = sim.layers["c1"].weight.detach().clone()
    report = equalize(sim, progress=False)
    assert _rel(_float_out(sim, x), before) < 1e-5
    first = report[0]
    u = (w1.clamp(min=0).flatten(1).sum(1) + 0.1)      # the bound the rule proves on c1's output
    may_hit = u > 6
    assert first["fixed"] == int(may_hit.sum()) and first["fixed"] < 6
    ratio = sim.layers["c1"].weight.detach().flatten(1).norm(dim=1) / w1.flatten(1).norm(dim=1)
    torch.testing.assert_close(ratio[may_hit], torch.ones(int(may_hit.sum())))   # s_i = 1 where it may clip
    assert (ratio[~may_hit] - 1).abs().max() > 1e-3                               # the others were equalized
    # the equalized output channels still never reach the bound: the clamp is exact
    sim.mode = "float"
    vals = sim.run_float((x,))
    pre = sim._float_op(sim.groups[0], vals, False)
    assert (pre.transpose(0, 1).flatten(1).amax(1)[~may_hit] <= 6).all()


def test_cle_relu6_modes():
    model = Relu6Net().eval()
    x = torch.rand(8, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    sim = hwsim.simulate(model, "dsp-int8", x[:1])
    assert equalize(sim, relu6="skip", progress=False) == []
    rep = equalize(sim, relu6="relu", progress=False)
    assert len(rep) == 2 and all(p["acts"] == ["Relu"] and p["fixed"] == 0 for p in rep)
    assert [a.op_type for g in sim.groups for a in g.acts] == ["Relu", "Relu"]
    with pytest.raises(HwsimError, match="relu6 must be one of"):
        equalize(sim, relu6="clamp")


def _imbalanced(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[0].weight[:4] *= 100
        model[0].bias[:4] *= 100
        model[2].weight[:, :4] /= 100
    return model


def _sqnr(y, ref) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (y - ref).pow(2).mean()))


def test_cle_recovers_per_tensor_sqnr_on_imbalanced_channels():
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    results = {}
    for use_cle in (False, True):
        sim = hwsim.simulate(_imbalanced(), "dsp-int8", x[:1])
        ref = _float_out(sim, x)
        if use_cle:
            equalize(sim, progress=False)
            assert _rel(_float_out(sim, x), ref) < 1e-5
        sim.calibrate([x], progress=False)
        sim.mode = "fast"
        with torch.no_grad():
            results[use_cle] = _sqnr(sim(x).double(), ref)
    assert results[True] > results[False] + 10, results


class HighBias(nn.Module):
    """conv 1x1 + BN + ReLU -> conv 1x1 + BN + ReLU -> conv 1x1 (no padding: absorption is exact)."""

    def __init__(self, c=8):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, c, 1), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)
        self.c3 = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        return self.c3(torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))))


def test_high_bias_absorption_keeps_function_and_shrinks_bias():
    g = torch.Generator().manual_seed(3)
    model = _randomize(HighBias(), 3)
    x = torch.rand(16, 1, 5, 5, generator=g)  # uniform: c1's normalized output stays in [-1.8, 1.8]
    with torch.no_grad():
        w, b = model.c1.weight.flatten(), model.c1.bias
        model.b1.running_mean.copy_(w * 0.5 + b)            # the BN statistics are the data's
        model.b1.running_var.copy_(w * w / 12)
        model.b1.bias.copy_(torch.linspace(-1, 4, 8))       # beta - 3 gamma > 0 on the last channels
        model.b1.weight.copy_(torch.full((8,), 0.5))
    sims = {}
    for absorb in (False, True):
        sim = hwsim.simulate(model, "dsp-int8", x[:1])
        ref = _float_out(sim, x)
        rep = equalize(sim, absorb_high_bias=absorb, progress=False)
        assert _rel(_float_out(sim, x), ref) < 1e-5
        sims[absorb] = (sim, rep)
    (plain, _), (absorbed, rep) = sims[False], sims[True]
    assert rep[0]["absorbed"] > 0
    b_plain, b_abs = plain.layers["c1"].bias.detach(), absorbed.layers["c1"].bias.detach()
    assert (b_abs <= b_plain + 1e-6).all() and b_abs.max() < b_plain.max() - 1e-3
    mean, _ = bn_statistics(absorbed)["c1"]
    assert (mean < bn_statistics(plain)["c1"][0] + 1e-9).all()   # the tracked statistics follow


def test_empirical_bias_correction_removes_measured_shift():
    model = _randomize(ConvChain(), 5)
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(16, 2, 7, 7, generator=g) for _ in range(3)]
    sim = hwsim.simulate(model, _int4_weights(), batches[0][:1])
    sim.calibrate(batches, progress=False)
    ref = layer_output_means(sim, batches, fake=False)
    before = layer_output_means(sim, batches, fake=True)
    rep = correct_bias_empirical(sim, batches, progress=False)
    after = layer_output_means(sim, batches, fake=True)
    assert [r["layer"] for r in rep] == ["c1", "c2", "c3"]
    shift_before = max(np.abs(ref[k] - before[k]).max() for k in ref)
    for k in ref:
        bias_step = float(sim.bias_q[k].encoding.scale.max())
        assert np.abs(ref[k] - after[k]).max() <= bias_step + 1e-5 * np.abs(ref[k]).max() + 1e-6
    assert shift_before > 10 * max(np.abs(ref[k] - after[k]).max() for k in ref)


def test_bias_correction_needs_calibration():
    sim = hwsim.simulate(ConvChain().eval(), "dsp-int8", torch.zeros(1, 2, 7, 7))
    with pytest.raises(HwsimError, match="call sim.calibrate"):
        correct_bias_empirical(sim, [torch.zeros(1, 2, 7, 7)], progress=False)
    with pytest.raises(HwsimError, match="call sim.calibrate"):
        correct_bias_analytical(sim)


class Gaussian(nn.Module):
    """conv 1x1 + BN + ReLU -> conv 1x1 + BN + ReLU6 -> GAP -> Linear; fed N(0, 1) pixels, so c1's
    output is exactly normal and the BN statistics can be set to the data's."""

    def __init__(self, c=16):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, 4)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = nn.functional.relu6(self.b2(self.c2(y)))
        return self.fc(torch.flatten(self.pool(y), 1))


def test_analytical_bias_correction_reduces_shift_on_matching_data():
    model = _randomize(Gaussian(), 7)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        w = model.c1.weight.flatten(1)
        model.b1.running_mean.copy_(model.c1.bias)          # E[c1(x)] for x ~ N(0, 1)
        model.b1.running_var.copy_((w * w).sum(1))           # Var[c1(x)]
        model.b1.bias.copy_(torch.linspace(-0.5, 1.0, 16))
    batches = [torch.randn(32, 16, 4, 4, generator=g) for _ in range(3)]
    sim = hwsim.simulate(model, _int4_weights(), batches[0][:1])
    sim.calibrate(batches, progress=False)
    ref = layer_output_means(sim, batches, fake=False)
    before = layer_output_means(sim, batches, fake=True)
    rep = correct_bias_analytical(sim)
    after = layer_output_means(sim, batches, fake=True)
    assert [r["layer"] for r in rep] == ["c2", "fc"]     # c1's input has no batch norm before it
    err_before, err_after = np.abs(ref["c2"] - before["c2"]).mean(), np.abs(ref["c2"] - after["c2"]).mean()
    assert err_after < 0.5 * err_before, (err_before, err_after)


@given(st.floats(-3, 3), st.floats(0.05, 3), st.sampled_from([(0.0, None), (0.0, 6.0), (None, 1.0), (-1.0, 0.5)]))
def test_clipped_normal_mean_matches_quadrature(mu, sigma, bounds):
    lo, hi = bounds
    z = np.linspace(mu - 12 * sigma, mu + 12 * sigma, 20001)
    pdf = np.exp(-0.5 * ((z - mu) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    expect = np.trapezoid(np.clip(z, lo, hi) * pdf, z)
    got = float(clipped_normal_mean(torch.tensor([mu]), torch.tensor([sigma]), lo, hi)[0])
    assert abs(got - expect) < 1e-6 * (1 + abs(expect))


def test_equalize_then_calibrate_with_batches_refreshes_encodings():
    model = _imbalanced()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    sim = hwsim.simulate(model, "dsp-int8", x[:1])
    sim.calibrate([x], progress=False)
    old = copy.deepcopy(sim.weight_q["_0"].encoding)
    equalize(sim, [x], progress=False)
    assert sim.weight_q["_0"].encoding != old
    sim.mode = "fast"
    with torch.no_grad():
        assert torch.isfinite(sim(x)).all()
