"""Channel pruning with reconstruction: the defining properties.

- Keeping all channels is the identity (outputs equal to float tolerance on data not sampled), for
  a conv after BN+ReLU, through a depthwise conv, and for a Linear after a Flatten of a 4x4 map.
- The re-fit never increases the reconstruction error on the sampled data (any data, any kept set,
  rank-deficient samples too); the selected count is exact.
- Without re-fit (a huge ridge) the pruned model equals the original with the removed channels
  zeroed at the layer's input: the producer, BN, depthwise conv and the Linear's column blocks are
  cut consistently.
- Greedy and lasso pick the strongest channels when channels do not interact.
- Sampling is bounded: at most ``max_positions`` rows per batch.
- Unsafe edges are refused with the edge named: residual Add, Concat, Mul, a second consumer, the
  model input, a grouped conv, a reshape with constant sizes, a shared module.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim.digits import ResidualNet, SeparableNet
from quantizer.compress.pruning import (LayerSamples, contribution_gram, prune_channels, pruning_path, refit,
                                        reconstruction_error, removal_error, sample_inputs, select_channels)
from runtime.errors import HwsimError
from tests.hwsim.sim_models import Branchy, images, randomize_bn


FEW = settings(max_examples=20, deadline=None)


class FlatNet(nn.Module):
    """conv 3x3 + BN + ReLU -> conv 3x3 stride 2 + ReLU -> flatten (6 x 4 x 4) -> Linear."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.b = nn.Conv2d(5, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        y = F.relu(self.bn(self.a(x)))
        y = F.relu(self.b(y))
        return self.fc(y.view(y.size(0), -1))


class FlatBN(nn.Module):
    """conv 3x3 + ReLU -> flatten (3 x 8 x 8) -> BatchNorm1d over the 192 features -> Linear."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm1d(3 * 64)
        self.fc = nn.Linear(3 * 64, 4)
        g = torch.Generator().manual_seed(7)
        self.bn.running_mean.copy_(torch.rand(192, generator=g) - 0.5)
        self.bn.running_var.copy_(torch.rand(192, generator=g) + 0.5)
        self.bn.weight.data.copy_(torch.rand(192, generator=g) + 0.5)

    def forward(self, x):
        return self.fc(self.bn(torch.flatten(F.relu(self.a(x)), 1)))


def _model(cls, seed=0):
    torch.manual_seed(seed)
    return randomize_bn(cls(), seed=seed)


SAMPLES = [images(16, 1), images(16, 2)]
HELD_OUT = images(24, 3)
CASES = [(FlatNet, "b", "a", 5), (FlatNet, "fc", "b", 6), (FlatBN, "fc", "a", 3), (SeparableNet, "pw1", "stem", 16),
         (SeparableNet, "pw2", "pw1", 32), (SeparableNet, "fc", "pw2", 32), (ResidualNet, "c2", "c1", 16),
         (ResidualNet, "fc", "down", 32)]


@pytest.mark.parametrize("cls,layer,producer,channels", CASES)
def test_keeping_all_channels_is_the_identity(cls, layer, producer, channels):
    model = _model(cls)
    path = pruning_path(model, layer)
    assert (path.producer, path.channels) == (producer, channels)
    pruned = prune_channels(model, layer, channels, SAMPLES, max_positions=64)
    with torch.no_grad():
        torch.testing.assert_close(pruned(HELD_OUT), model(HELD_OUT), rtol=1e-5, atol=1e-5)
    assert pruned is not model and model.get_submodule(layer).weight.shape == pruned.get_submodule(layer).weight.shape


def _zeroed(model, layer, removed):
    """The model's output with the channels ``removed`` zeroed at ``layer``'s input (for a Linear, a
    channel is a block of consecutive features)."""
    mod, channels = model.get_submodule(layer), pruning_path(model, layer).channels

    def pre(m, args):
        x = args[0].clone()
        x.reshape(len(x), channels, -1)[:, removed] = 0
        return (x,)

    h = mod.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            return model(HELD_OUT)
    finally:
        h.remove()


def _kept_rows(orig: torch.Tensor, new: torch.Tensor) -> list[int]:
    """Which rows of ``orig`` the producer kept (rows are copied unchanged)."""
    return [int(torch.nonzero((orig == row).all(dim=1))[0]) for row in new]


@pytest.mark.parametrize("cls,layer,producer,channels", CASES)
@pytest.mark.parametrize("method", ["greedy", "lasso"])
def test_without_refit_the_cut_equals_zeroing_the_removed_channels(cls, layer, producer, channels, method):
    model = _model(cls, seed=1)
    keep = max(1, channels // 3)
    pruned = prune_channels(model, layer, keep, SAMPLES, method=method, ridge=1e12, max_positions=32)
    p_old, p_new = model.get_submodule(producer).weight.detach(), pruned.get_submodule(producer).weight.detach()
    assert p_new.shape[0] == keep
    kept = _kept_rows(p_old.flatten(1), p_new.flatten(1))
    assert kept == sorted(kept)
    removed = [c for c in range(channels) if c not in kept]
    with torch.no_grad():
        torch.testing.assert_close(pruned(HELD_OUT), _zeroed(model, layer, removed), rtol=1e-4, atol=1e-4)


@FEW
@given(st.integers(1, 6), st.integers(1, 4), st.integers(1, 5), st.integers(1, 40), st.integers(0, 10_000),
       st.booleans(), st.sampled_from(["greedy", "lasso"]), st.data())
def test_refit_never_increases_the_sampled_error(c, g, o, p, seed, bias, method, data):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(p, c, g, generator=gen, dtype=torch.float64)
    if c > 1 and data.draw(st.booleans(), label="dead channel"):
        x[:, 0] = 0.0  # a channel that is always zero (ReLU-dead): rank-deficient samples
    w = torch.randn(o, c, g, generator=gen, dtype=torch.float64)
    b = torch.randn(o, generator=gen, dtype=torch.float64) if bias else None
    s = LayerSamples(x, w, b)
    keep = data.draw(st.integers(1, c), label="keep")
    idx = select_channels(contribution_gram(x, w), keep, method)
    assert len(idx) == keep and len(set(idx.tolist())) == keep and list(idx) == sorted(idx)
    before = reconstruction_error(s, idx)
    assert before == pytest.approx(removal_error(contribution_gram(x, w), idx), rel=1e-9, abs=1e-9)
    w_s, b_s = refit(s, idx)
    after = reconstruction_error(s, idx, w_s, b_s)
    assert after <= before * (1 + 1e-9) + 1e-9
    if keep == c:
        torch.testing.assert_close(w_s, w, rtol=1e-9, atol=1e-9)


@FEW
@given(st.lists(st.floats(0.01, 100.0), min_size=2, max_size=12, unique=True), st.data())
def test_independent_channels_keep_the_strongest(energies, data):
    keep = data.draw(st.integers(1, len(energies)))
    g = np.diag(energies)
    best = sorted(np.argsort(energies)[::-1][:keep].tolist())
    assert select_channels(g, keep, "greedy").tolist() == best
    assert select_channels(g, keep, "lasso").tolist() == best


@pytest.mark.parametrize("keep,expected", [(3, 3), (0.5, 8), (0.01, 1), (1.0, 16)])
def test_selected_count_is_exact(keep, expected):
    model = _model(SeparableNet)
    pruned = prune_channels(model, "pw1", keep, SAMPLES[:1], max_positions=32)
    assert pruned.stem.out_channels == pruned.stem.weight.shape[0] == expected
    assert pruned.stem_bn.num_features == pruned.stem_bn.running_mean.shape[0] == expected
    assert pruned.dw1.weight.shape[0] == pruned.dw1.groups == expected
    assert pruned.dw1_bn.weight.shape[0] == expected and pruned.pw1.weight.shape[1] == expected
    with torch.no_grad():
        assert pruned(HELD_OUT).shape == (24, 10)


def test_linear_after_flatten_keeps_whole_column_blocks():
    model = _model(FlatNet)
    pruned = prune_channels(model, "fc", 2, SAMPLES, max_positions=16)
    assert pruned.b.out_channels == 2 and pruned.fc.in_features == 2 * 16
    assert pruning_path(model, "fc", (SAMPLES[0][:1],)).block == 16


def test_sampling_is_bounded_per_batch():
    model = _model(FlatNet)
    s = sample_inputs(model, "b", [images(4, 5)] * 3, max_positions=10)
    assert tuple(s.x.shape) == (30, 5, 9) and tuple(s.w.shape) == (6, 5, 9)
    # every sample row is a real patch: its output equals the conv's output at some position
    with torch.no_grad():
        h = F.relu(model.bn(model.a(images(4, 5))))
        full = model.b(h).permute(0, 2, 3, 1).reshape(-1, 6).double()
    y = s.y
    for row in y[:10]:
        assert torch.isclose(full, row, atol=1e-5).all(dim=1).any()
    s2 = sample_inputs(model, "fc", images(7, 5), block=16, max_positions=100)
    assert tuple(s2.x.shape) == (7, 6, 16)


def test_pruning_leaves_the_model_and_its_mode_alone():
    model = _model(SeparableNet).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_channels(model, "pw2", 4, SAMPLES[:1], max_positions=16)
    assert model.training and pruned.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class Joins(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3), nn.Conv2d(4, 2, 1)
        self.p, self.q, self.r = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = self.c(F.relu(torch.cat([self.a(x), self.b(x)], 1)))
        return y + self.r(self.p(x) * self.q(x))


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 1)
        self.g = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.d = nn.Conv2d(4, 4, 1)
        self.e = nn.Conv2d(4, 2, 1)
        self.fc = nn.Linear(2 * 8 * 8, 2)

    def forward(self, x):
        y = self.bn(self.a(x))
        y = self.bn(self.b(y))          # bn is shared: a parametrized module called twice
        z = self.c(y) * y               # mul
        z = self.d(self.g(z))           # grouped (not depthwise) conv between
        z = self.e(z)
        return self.fc(z.view(-1, 128))  # constant view size


@pytest.mark.parametrize("cls,layer,match", [
    (ResidualNet, "c1", r"'relu' also feeds \['add'\]"),
    (ResidualNet, "down", r"'add' is a residual add"),
    (ResidualNet, "stem", r"model input"),
    (Branchy, "m", r"'avg' also feeds \['mul'\]"),
    (Joins, "c", r"'cat' is a concat"),
    (Joins, "r", r"'mul' is an elementwise mul"),
    (Shared, "b", r"module 'bn' is called 2 times"),
    (Shared, "g", r"groups=2"),
    (Shared, "d", r"'g' is a grouped conv"),
    (Shared, "c", r"'bn_1' also feeds \['mul'\]"),
    (Shared, "fc", r"constant sizes"),
    (SeparableNet, "dw1", r"groups=16"),
    (SeparableNet, "stem_bn", r"expected the name of an nn.Conv2d"),
])
def test_unsafe_edges_are_refused_by_name(cls, layer, match):
    model = cls()
    with pytest.raises(HwsimError, match=match):
        pruning_path(model, layer)
    with pytest.raises(HwsimError, match=match):
        prune_channels(model, layer, 1, [torch.zeros(1, 1, 8, 8)])


def test_bad_arguments_are_refused():
    model = _model(FlatNet)
    with pytest.raises(HwsimError, match=r"keep=9 channels is outside \[1, 5\]"):
        prune_channels(model, "b", 9, SAMPLES)
    with pytest.raises(HwsimError, match="keep must be"):
        prune_channels(model, "b", 1.5, SAMPLES)
    with pytest.raises(HwsimError, match="method"):
        prune_channels(model, "b", 2, SAMPLES, method="random")
    with pytest.raises(HwsimError, match="max_positions"):
        prune_channels(model, "b", 2, SAMPLES, max_positions=0)
    with pytest.raises(HwsimError, match="samples are empty"):
        prune_channels(model, "b", 2, [])
    with pytest.raises(HwsimError, match="one-shot iterator"):
        prune_channels(model, "b", 2, iter(SAMPLES))
