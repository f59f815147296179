"""Spatial and weight SVD: the defining properties.

- At full rank the factorized layer reproduces the layer's output (stride, padding, dilation, bias,
  'same'/'valid' padding, non-square kernels) to float tolerance.
- The rank-r factorization is the best rank-r approximation of the reshaped kernel: the kernel rebuilt
  from the two layers equals numpy's truncated SVD of ``M[(c, i), (o, j)] = W[o, c, i, j]`` (where the
  r-th singular value is separated from the next), and its Frobenius error is
  ``sqrt(sum of the dropped singular values squared)`` (Eckart-Young).
- ``rank_for_ratio`` keeps at most the asked fraction of the weights, and is the largest such rank.
- Errors name the layer and what was expected.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from quantizer.compress.svd import full_rank, rank_for_ratio, spatial_matrix, spatial_svd, weight_svd
from runtime.errors import HwsimError


FEW = settings(max_examples=25, deadline=None)


def _seeded_conv(seed, c_in, c_out, kernel, **kw) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, kernel, **kw).double()


def _x(seed, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@st.composite
def conv_cases(draw):
    c_in, c_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    if draw(st.booleans()) and stride == (1, 1):
        padding = draw(st.sampled_from(["same", "valid"]))
    return dict(c_in=c_in, c_out=c_out, kernel=(kh, kw), stride=stride, dilation=dilation, padding=padding,
                bias=draw(st.booleans()), seed=draw(st.integers(0, 1000)))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@FEW
@given(conv_cases())
def test_spatial_svd_full_rank_reproduces_the_conv(case):
    seed = case.pop("seed")
    c_in, c_out, kernel = case.pop("c_in"), case.pop("c_out"), case.pop("kernel")
    conv = _seeded_conv(seed, c_in, c_out, kernel, **case)
    seq = spatial_svd(conv, full_rank(conv, "spatial_svd"))
    assert seq[0].bias is None and (seq[1].bias is not None) == case["bias"]
    assert seq[0].kernel_size == (kernel[0], 1) and seq[1].kernel_size == (1, kernel[1])
    x = _x(seed + 1, (2, c_in, 7, 6))
    with torch.no_grad():
        torch.testing.assert_close(seq(x), conv(x), rtol=1e-9, atol=1e-9)


def _rebuilt_kernel(seq: nn.Sequential) -> np.ndarray:
    w1 = seq[0].weight.detach().numpy()[:, :, :, 0]   # [r, c, i]
    w2 = seq[1].weight.detach().numpy()[:, :, 0, :]   # [o, r, j]
    return np.einsum("orj,rci->ocij", w2, w1)


@FEW
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3), st.integers(0, 1000), st.data())
def test_spatial_svd_is_the_best_rank_r_approximation(c_in, c_out, kh, kw, seed, data):
    conv = _seeded_conv(seed, c_in, c_out, (kh, kw))
    w = conv.weight.detach().numpy()
    # the reshaped kernel, built element by element (independent of the code under test)
    m = np.empty((c_in * kh, c_out * kw))
    for o in range(c_out):
        for c in range(c_in):
            for i in range(kh):
                for j in range(kw):
                    m[c * kh + i, o * kw + j] = w[o, c, i, j]
    np.testing.assert_array_equal(spatial_matrix(conv.weight.detach()).numpy(), m)
    full = min(m.shape)
    r = data.draw(st.integers(1, full), label="rank")
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    best = (u[:, :r] * s[:r]) @ vt[:r]
    rebuilt = _rebuilt_kernel(spatial_svd(conv, r))
    m_hat = rebuilt.transpose(1, 2, 0, 3).reshape(c_in * kh, c_out * kw)
    err = np.linalg.norm(m - m_hat)
    assert err == pytest.approx(np.sqrt(np.sum(s[r:] ** 2)), rel=1e-7, abs=1e-10)
    if r == full or s[r - 1] - s[r] > 1e-6 * s[0]:  # the best rank-r approximation is unique
        np.testing.assert_allclose(m_hat, best, rtol=1e-7, atol=1e-9)


@FEW
@given(st.integers(1, 6), st.integers(1, 6), st.booleans(), st.integers(0, 1000), st.data())
def test_weight_svd_linear_full_rank_and_eckart_young(n_in, n_out, bias, seed, data):
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias).double()
    x = _x(seed, (3, n_in))
    with torch.no_grad():
        torch.testing.assert_close(weight_svd(lin, min(n_in, n_out))(x), lin(x), rtol=1e-9, atol=1e-9)
    r = data.draw(st.integers(1, min(n_in, n_out)), label="rank")
    seq = weight_svd(lin, r)
    assert isinstance(seq[0], nn.Linear) and seq[0].bias is None and (seq[1].bias is not None) == bias
    w_hat = (seq[1].weight @ seq[0].weight).detach().numpy()
    s = np.linalg.svd(lin.weight.detach().numpy(), compute_uv=False)
    assert np.linalg.norm(lin.weight.detach().numpy() - w_hat) == pytest.approx(np.sqrt(np.sum(s[r:] ** 2)),
                                                                                rel=1e-7, abs=1e-10)


@pytest.mark.parametrize("kw", [dict(stride=2, padding=1), dict(padding="same"), dict(stride=(1, 2))])
def test_weight_svd_1x1_conv_full_rank_reproduces_the_conv(kw):
    conv = _seeded_conv(3, 5, 4, 1, **kw)
    seq = weight_svd(conv, 4)
    assert seq[1].stride == (1, 1) and seq[1].padding == (0, 0)
    x = _x(4, (2, 5, 6, 6))
    with torch.no_grad():
        torch.testing.assert_close(seq(x), conv(x), rtol=1e-9, atol=1e-9)


def test_factors_balance_the_singular_values():
    """Both layers carry sqrt(S): the first's rows and the second's columns have equal norms."""
    conv = _seeded_conv(5, 4, 6, 3)
    seq = spatial_svd(conv, 5)
    n1 = seq[0].weight.detach().flatten(1).norm(dim=1)
    n2 = seq[1].weight.detach().transpose(0, 1).flatten(1).norm(dim=1)
    torch.testing.assert_close(n1, n2, rtol=1e-9, atol=1e-12)


def test_dtype_device_and_mode_follow_the_layer():
    conv = nn.Conv2d(3, 4, 3).to(torch.float64).eval()
    seq = spatial_svd(conv, 2)
    assert all(m.weight.dtype == torch.float64 and m.weight.device == conv.weight.device for m in seq)
    assert not seq.training
    lin = nn.Linear(3, 3).float()
    assert weight_svd(lin, 1)[0].weight.dtype == torch.float32


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 32), st.integers(1, 32), st.sampled_from([(1, 1), (3, 3), (5, 3)]),
       st.floats(0.01, 1.0), st.sampled_from(["spatial_svd", "weight_svd"]))
def test_rank_for_ratio_is_the_largest_rank_within_the_ratio(c_in, c_out, k, ratio, scheme):
    if scheme == "weight_svd":
        k = (1, 1)
    layer = nn.Conv2d(c_in, c_out, k)
    per_rank = c_in * k[0] + c_out * k[1] if scheme == "spatial_svd" else c_in + c_out
    r = rank_for_ratio(layer, ratio, scheme)
    full = full_rank(layer, scheme)
    assert 1 <= r <= full
    budget = ratio * layer.weight.numel()
    if r > 1:
        assert r * per_rank <= budget + 1e-6
    if r < full:
        assert (r + 1) * per_rank > budget - 1e-6


def test_refusals_name_the_problem():
    with pytest.raises(HwsimError, match="groups=4"):
        spatial_svd(nn.Conv2d(4, 4, 3, groups=4), 1)
    with pytest.raises(HwsimError, match=r"rank must be an integer in \[1, 6\]"):
        spatial_svd(nn.Conv2d(2, 3, 3), 7)
    with pytest.raises(HwsimError, match="rank must be"):
        spatial_svd(nn.Conv2d(2, 3, 3), 0)
    with pytest.raises(HwsimError, match="expected an nn.Conv2d"):
        spatial_svd(nn.Linear(3, 3), 1)
    with pytest.raises(HwsimError, match="kernel"):
        weight_svd(nn.Conv2d(3, 3, 3), 1)
    with pytest.raises(HwsimError, match="expected an nn.Linear or a 1x1"):
        weight_svd(nn.BatchNorm2d(3), 1)
    with pytest.raises(HwsimError, match="ratio must be in"):
        rank_for_ratio(nn.Linear(3, 3), 1.5, "weight_svd")
    with pytest.raises(HwsimError, match="scheme"):
        rank_for_ratio(nn.Linear(3, 3), 0.5, "pruning")
