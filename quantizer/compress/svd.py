"""Low-rank factorization of one layer: spatial SVD (a k_h x k_w Conv becomes k_h x 1 then 1 x k_w)
and weight SVD (a Linear or 1x1 Conv becomes two).

Both take the truncated SVD of a matrix view of the weight, ``M ~ U_r S_r V_r^T`` (the best rank-r
approximation in the Frobenius norm, Eckart-Young: ``||M - M_r||_F = sqrt(sum_{k > r} s_k^2)``), and
give ``U_r sqrt(S_r)`` to the first layer and ``sqrt(S_r) V_r^T`` to the second, so that both carry
balanced magnitudes (better for per-tensor quantization than putting S on one side). The first layer
has no bias; the original bias goes on the second, which makes the composition exact at full rank,
also at zero-padded borders (the first layer maps a zero patch to zero).

Ranks come from a kept fraction of the layer's parameters with :func:`rank_for_ratio` (for these
layers also the kept fraction of the layer's MACs, up to the first conv's unstrided width).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from runtime.errors import HwsimError


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _check_conv(conv: nn.Module, what: str) -> None:
    if not isinstance(conv, nn.Conv2d):
        raise HwsimError(f"{what}: expected an nn.Conv2d, found {type(conv).__name__}")
    if conv.groups != 1:
        raise HwsimError(f"{what}: {conv} has groups={conv.groups}; only groups=1 can be factorized (a grouped "
                         "or depthwise conv is already a block-diagonal product; exclude it)")


def _check_rank(rank, full: int, what: str) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= full:
        raise HwsimError(f"{what}: rank must be an integer in [1, {full}] (the full rank of the reshaped "
                         f"weight), found {rank!r}")
    return rank


def spatial_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The kernel ``W [C_out, C_in, kh, kw]`` as ``M [(C_in*kh), (C_out*kw)]``,
    ``M[(c, i), (o, j)] = W[o, c, i, j]``: the layout whose rank-r factors are a ``kh x 1`` conv
    (``C_in -> r``) followed by a ``1 x kw`` conv (``r -> C_out``).

    >>> w = torch.arange(2 * 3 * 2 * 2.).reshape(2, 3, 2, 2)
    >>> m = spatial_matrix(w)
    >>> tuple(m.shape), bool(m[1 * 2 + 0, 1 * 2 + 1] == w[1, 1, 0, 1])
    ((6, 4), True)
    """
    o, c, kh, kw = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(c * kh, o * kw)


def _factors(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A = U_r sqrt(S_r)`` ``[rows, r]`` and ``B = V_r sqrt(S_r)`` ``[cols, r]``,
    ``A B^T`` the best rank-r approximation of ``m`` (computed in float64)."""
    u, s, vh = torch.linalg.svd(m.to(torch.float64), full_matrices=False)
    root = torch.sqrt(s[:rank])
    return u[:, :rank] * root, vh[:rank].T * root


def _same_padding(conv: nn.Conv2d):
    return conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)


def spatial_svd(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """Factor ``conv`` (``C_in -> C_out``, kernel ``kh x kw``, groups 1) into
    ``Sequential(Conv kh x 1 (C_in -> r), Conv 1 x kw (r -> C_out))``.

    With ``M = spatial_matrix(W) ~ U_r S_r V_r^T``:

        W1[k, c, i, 0] = (U_r sqrt(S_r))[(c, i), k]        W2[o, k, 0, j] = (V_r sqrt(S_r))[(o, j), k]
        sum_k W2[o, k, 0, j] W1[k, c, i, 0] = M_r[(c, i), (o, j)]

    The first conv takes the height part of stride, padding and dilation, the second the width part
    (a string padding, ``'same'`` or ``'valid'``, is per axis and goes to both); the bias goes on the
    second. At ``rank = min(C_in*kh, C_out*kw)`` the output equals the original's (float rounding).

    >>> conv = torch.nn.Conv2d(2, 3, (3, 2), padding=(1, 0))
    >>> seq = spatial_svd(conv, 6)                 # full rank: min(2 * 3, 3 * 2)
    >>> [tuple(m.weight.shape) for m in seq]
    [(6, 2, 3, 1), (3, 6, 1, 2)]
    >>> x = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(seq(x), conv(x), atol=1e-5))
    True
    """
    _check_conv(conv, "spatial_svd")
    w = conv.weight.detach()
    o, c, kh, kw = w.shape
    rank = _check_rank(rank, min(c * kh, o * kw), f"spatial_svd of {conv}")
    a, b = _factors(spatial_matrix(w), rank)
    (sh, sw), (dh, dw) = _pair(conv.stride), _pair(conv.dilation)
    pad = _same_padding(conv)
    pad1, pad2 = (pad, pad) if isinstance(pad, str) else ((pad[0], 0), (0, pad[1]))
    kw_args = dict(device=w.device, dtype=w.dtype, padding_mode=conv.padding_mode)
    first = nn.Conv2d(c, rank, (kh, 1), stride=(sh, 1), padding=pad1, dilation=(dh, 1), bias=False, **kw_args)
    second = nn.Conv2d(rank, o, (1, kw), stride=(1, sw), padding=pad2, dilation=(1, dw),
                       bias=conv.bias is not None, **kw_args)
    with torch.no_grad():
        first.weight.copy_(a.T.reshape(rank, c, kh, 1))
        second.weight.copy_(b.reshape(o, kw, rank).permute(0, 2, 1).unsqueeze(2))
        if conv.bias is not None:
            second.bias.copy_(conv.bias.detach())
    return nn.Sequential(first, second).train(conv.training)


def weight_svd(layer: nn.Linear | nn.Conv2d, rank: int) -> nn.Sequential:
    """Factor a Linear (``W [out, in]``) or a 1x1 Conv (``W [out, in, 1, 1]``, groups 1) into two
    layers of the same kind through ``rank`` channels: ``W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``.

    The first layer (``in -> r``, weight ``sqrt(S_r) V_r^T``) keeps the conv's stride, padding and
    dilation and has no bias; the second (``r -> out``, weight ``U_r sqrt(S_r)``) is a plain 1x1 conv
    (or Linear) with the original bias.

    >>> lin = torch.nn.Linear(4, 3)
    >>> seq = weight_svd(lin, 2)
    >>> [tuple(m.weight.shape) for m in seq]
    [(2, 4), (3, 2)]
    >>> bool(torch.allclose(weight_svd(lin, 3)(torch.ones(1, 4)), lin(torch.ones(1, 4)), atol=1e-6))
    True
    """
    if isinstance(layer, nn.Conv2d):
        _check_conv(layer, "weight_svd")
        if _pair(layer.kernel_size) != (1, 1):
            raise HwsimError(f"weight_svd: {layer} has kernel {_pair(layer.kernel_size)}; weight SVD takes a "
                             "Linear or a 1x1 conv (use spatial_svd for larger kernels)")
    elif not isinstance(layer, nn.Linear):
        raise HwsimError(f"weight_svd: expected an nn.Linear or a 1x1 nn.Conv2d, found {type(layer).__name__}")
    w = layer.weight.detach()
    o, i = w.shape[0], w.shape[1]
    rank = _check_rank(rank, min(o, i), f"weight_svd of {layer}")
    a, b = _factors(w.reshape(o, i), rank)  # W ~ a b^T: a [o, r], b [i, r]
    kw_args = dict(device=w.device, dtype=w.dtype)
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(i, rank, bias=False, **kw_args), nn.Linear(rank, o, bias=has_bias, **kw_args)
    else:
        first = nn.Conv2d(i, rank, 1, stride=layer.stride, padding=_same_padding(layer), dilation=layer.dilation,
                          bias=False, padding_mode=layer.padding_mode, **kw_args)
        second = nn.Conv2d(rank, o, 1, bias=has_bias, **kw_args)
    with torch.no_grad():
        first.weight.copy_(b.T.reshape(first.weight.shape))
        second.weight.copy_(a.reshape(second.weight.shape))
        if has_bias:
            second.bias.copy_(layer.bias.detach())
    return nn.Sequential(first, second).train(layer.training)


def full_rank(layer: nn.Module, scheme: str) -> int:
    """The rank at which ``scheme`` (``"spatial_svd"`` or ``"weight_svd"``) reproduces ``layer``."""
    w = layer.weight
    if scheme == "spatial_svd":
        o, c, kh, kw = w.shape
        return min(c * kh, o * kw)
    if scheme == "weight_svd":
        return min(w.shape[0], w.shape[1])
    raise HwsimError(f"full_rank: scheme must be 'spatial_svd' or 'weight_svd', found {scheme!r}")


def rank_for_ratio(layer: nn.Module, ratio: float, scheme: str) -> int:
    """The rank whose factorization keeps at most ``ratio`` of ``layer``'s weights (at least 1, at most
    the full rank):

        r = clamp(floor(ratio * P / p_r), 1, full_rank),   P = C_out C_in kh kw,
        p_r = C_in kh + C_out kw (spatial SVD),  C_in + C_out (weight SVD)

    For a stride-1 layer this is also the kept fraction of its MACs. A 3x3 conv 16 -> 16 has P = 2304
    and p_r = 96: ratio 0.5 gives rank 12 (of a full rank 48).

    >>> rank_for_ratio(torch.nn.Conv2d(16, 16, 3), 0.5, "spatial_svd")
    12
    >>> rank_for_ratio(torch.nn.Linear(10, 10), 0.55, "weight_svd")   # floor(0.55 * 100 / 20)
    2
    """
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
        raise HwsimError(f"rank_for_ratio: ratio must be in (0, 1] (the kept fraction), found {ratio!r}")
    w = layer.weight
    full = full_rank(layer, scheme)
    if scheme == "spatial_svd":
        o, c, kh, kw = w.shape
        per_rank = c * kh + o * kw
    else:
        per_rank = w.shape[0] + w.shape[1]
    return int(min(full, max(1, math.floor(ratio * w.numel() / per_rank + 1e-9))))
