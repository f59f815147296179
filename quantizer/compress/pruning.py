"""Channel pruning with reconstruction (He, Zhang, Sun, "Channel Pruning for Accelerating Very Deep
Neural Networks", ICCV 2017; Luo et al., "ThiNet", ICCV 2017; AIMET's channel pruning).

For a layer ``L`` (a Conv2d with groups 1, or a Linear) with weight ``W`` viewed as ``[O, C, g]``
(``g = kh*kw`` for a conv, the features per channel for a Linear after a Flatten), a sampled input
patch ``x [C, g]`` gives the output ``y = sum_c Z_c + b`` with channel contributions
``Z_c = W[:, c, :] x[c, :]``. Pruning keeps a set ``S`` of ``k`` input channels:

1. **Sample**: a forward hook on ``L`` takes at most ``max_positions`` output positions per batch
   (with their input patches), so memory is bounded by ``max_positions * batches * C * g`` values,
   never by the data set.
2. **Select** ``S`` on the reconstruction error ``E(S) = ||sum_{c not in S} Z_c||^2`` summed over
   the samples, through the Gram matrix ``G[a, b] = <Z_a, Z_b>`` (``E(S) = 1^T G_RR 1`` for the
   removed set ``R``):
   - ``"greedy"`` (ThiNet): remove, one at a time, the channel that increases ``E`` least;
   - ``"lasso"`` (He et al.): ``min_beta ||sum_c Z_c - sum_c beta_c Z_c||^2 + alpha |beta|_1``,
     bisection on ``alpha`` until at most ``k`` coefficients are non-zero; the ``k`` largest
     ``|beta_c|`` are kept.
3. **Remove** the channels outside ``S`` from ``L``'s input and from the producing layer's output,
   through the per-channel ops between them (BatchNorm, ReLU/ReLU6/Hardtanh, pooling, Dropout,
   depthwise convs, a Flatten feeding a Linear). Anything that makes this unsafe is refused with the
   edge named: a residual Add, a Concat or Mul, a value with a second consumer (or that is a model
   output), the model input, grouped convs, reshapes with constant sizes, shared modules.
4. **Re-fit** the kept weights (and the bias if ``L`` has one) by ridge least squares on the samples,
   toward the original weights: with ``A = [X_S, 1]`` and ``R = Y - X_S W_S^T - b`` (the error
   before re-fit),

       Delta = argmin ||R - A Delta||^2 + lambda ||Delta||^2,   [W_S, b] += Delta^T,
       lambda = ridge * trace(A^T A) / dim(A)

   so ``||R - A Delta||^2 <= ||R||^2``: the re-fit never increases the sampled error, and with all
   channels kept ``R = 0`` and nothing changes.
"""
from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from runtime.errors import HwsimError

from .cost import eval_mode

METHODS = ("greedy", "lasso")
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                        nn.Dropout, nn.Identity)
_ELEMENTWISE_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.hardtanh, F.max_pool2d, F.avg_pool2d,
                          F.adaptive_avg_pool2d, F.dropout)
_ELEMENTWISE_METHODS = ("relu", "relu_", "contiguous")
_FLATTEN_METHODS = ("flatten", "view", "reshape")
_JOINS = {operator.add: "a residual add", torch.add: "a residual add", torch.cat: "a concat",
          operator.mul: "an elementwise mul", torch.mul: "an elementwise mul"}


# -----------------------------------------------------------------------------------------------
# graph analysis: which modules carry the channels from the producer to the layer
# -----------------------------------------------------------------------------------------------
@dataclass
class PrunePath:
    """The producer of ``layer``'s input channels and the per-channel modules in between.

    ``between`` lists ``(module name, unit)`` nearest to the layer first, ``unit`` being
    ``"channel"`` (before a Flatten) or ``"feature"`` (after it, where a channel is ``block``
    consecutive features)."""

    layer: str
    producer: str
    between: list[tuple[str, str]] = field(default_factory=list)
    flatten: str | None = None
    block: int = 1       # features per channel at the layer's input (1 without a Flatten)
    channels: int = 0    # input channels of the layer


def _trace(model: nn.Module, what: str) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types for untraceable Python
        raise HwsimError(f"{what}: torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {e}); "
                         "channel pruning needs a traceable model") from e


def _depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _shape_query(node: fx.Node) -> bool:
    """``x.dim()`` or ``x.size(0)``: uses of a value that do not depend on its channel count."""
    if node.op != "call_method":
        return False
    if node.target == "dim":
        return True
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return node.target == "size" and dim == 0


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def pruning_path(model: nn.Module, layer_name: str, example_inputs: tuple | None = None) -> PrunePath:
    """Find the producer of ``layer_name``'s input channels and check that removing channels there is
    safe (module docstring, step 3); raise :class:`HwsimError` naming the edge otherwise.
    ``example_inputs`` (one batch) give the Flatten block size; without them it is left at 1."""
    what = f"prune_channels({layer_name!r})"
    gm = _trace(model, what)
    mods = dict(gm.named_modules())
    layer = mods.get(layer_name)
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        found = "no such module" if layer is None else type(layer).__name__
        raise HwsimError(f"{what}: expected the name of an nn.Conv2d or nn.Linear in the model, found {found}")
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise HwsimError(f"{what}: the layer has groups={layer.groups}; only groups=1 layers have prunable input "
                         "channels (a depthwise conv's channels are pruned through the layer after it)")
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == layer_name]
    if len(nodes) != 1:
        raise HwsimError(f"{what}: the module is called {len(nodes)} times in the traced graph; a pruned layer "
                         "must be called exactly once")
    if example_inputs is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad(), eval_mode(gm):
            ShapeProp(gm).propagate(*example_inputs)

    def shape(n):
        tm = n.meta.get("tensor_meta")
        return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None

    path = PrunePath(layer_name, "", channels=layer.in_channels if isinstance(layer, nn.Conv2d) else 0)
    unit = "feature" if isinstance(layer, nn.Linear) else "channel"
    prev, cur = nodes[0], nodes[0].args[0]
    while True:
        edge = f"edge {getattr(cur, 'name', cur)!r} -> {prev.name!r}"
        if not isinstance(cur, fx.Node):
            raise HwsimError(f"{what}: {edge}: the input is not a traced tensor")
        users = [u for u in cur.users if not _shape_query(u)]
        if len(users) != 1:
            others = sorted(u.name for u in users if u is not prev)
            raise HwsimError(f"{what}: {edge}: the value {cur.name!r} also feeds {others}; removing its channels "
                             "would change those consumers (prune where the producer has a single consumer)")
        if cur.op == "placeholder":
            raise HwsimError(f"{what}: {edge}: the channels come from the model input {cur.target!r}, which cannot "
                             "be pruned")
        if cur.op == "call_module":
            m = mods[cur.target]
            shared = calls.get(cur.target, 0) > 1 and any(True for _ in m.parameters(recurse=False))
            if shared:
                raise HwsimError(f"{what}: {edge}: module {cur.target!r} is called {calls[cur.target]} times; a shared "
                                 "module with parameters cannot lose channels for one call only")
            if (isinstance(m, nn.Conv2d) and m.groups == 1) or isinstance(m, nn.Linear):
                if unit == "feature" and isinstance(m, nn.Conv2d):
                    raise HwsimError(f"{what}: {edge}: a Conv2d output reaches a Linear without a Flatten")
                if unit == "channel" and isinstance(m, nn.Linear) and path.flatten is not None:
                    raise HwsimError(f"{what}: {edge}: a Linear output is reshaped before the layer")
                path.producer = cur.target
                break
            if _depthwise(m) and unit == "channel":
                path.between.append((cur.target, unit))
            elif isinstance(m, nn.Conv2d):
                raise HwsimError(f"{what}: {edge}: {cur.target!r} is a grouped conv (groups={m.groups}, "
                                 f"{m.in_channels} -> {m.out_channels}); only depthwise convs with one output per "
                                 "channel pass pruned channels through")
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                path.between.append((cur.target, unit))
            elif isinstance(m, _ELEMENTWISE_MODULES):
                pass
            elif isinstance(m, nn.Flatten):
                unit = _flatten_step(what, edge, path, cur, unit, shape)
            else:
                raise HwsimError(f"{what}: {edge}: module {cur.target!r} ({type(m).__name__}) is not a per-channel op "
                                 "that pruned channels may pass through")
        elif cur.op == "call_function":
            f = cur.target
            if f in _JOINS:
                raise HwsimError(f"{what}: {edge}: {cur.name!r} is {_JOINS[f]}; its inputs would need matching "
                                 "prunes on every branch, which is not done")
            if f is torch.flatten:
                unit = _flatten_step(what, edge, path, cur, unit, shape)
            elif f not in _ELEMENTWISE_FUNCTIONS:
                raise HwsimError(f"{what}: {edge}: function {_target_name(cur)!r} is not a per-channel op that pruned "
                                 "channels may pass through")
        elif cur.op == "call_method":
            if cur.target in _FLATTEN_METHODS:
                if cur.target != "flatten" and any(not isinstance(a, fx.Node) and a != -1 for a in cur.args[1:]):
                    raise HwsimError(f"{what}: {edge}: {cur.target} with constant sizes {cur.args[1:]} would break "
                                     "once channels are removed (write x.flatten(1) or x.view(x.size(0), -1))")
                unit = _flatten_step(what, edge, path, cur, unit, shape)
            elif cur.target not in _ELEMENTWISE_METHODS:
                raise HwsimError(f"{what}: {edge}: method {cur.target!r} is not a per-channel op that pruned channels "
                                 "may pass through")
        else:
            raise HwsimError(f"{what}: {edge}: {cur.op} {cur.target!r} cannot pass pruned channels")
        prev, cur = cur, cur.args[0]
    producer = mods[path.producer]
    c = producer.out_channels if isinstance(producer, nn.Conv2d) else producer.out_features
    if path.channels and path.channels != c:
        raise HwsimError(f"{what}: the producer {path.producer!r} has {c} output channels, the layer {path.channels} "
                         "input channels")
    path.channels = c
    if isinstance(layer, nn.Linear):
        if layer.in_features % c:
            raise HwsimError(f"{what}: {layer.in_features} input features are not a whole number of blocks of the "
                             f"producer {path.producer!r}'s {c} channels")
        path.block = layer.in_features // c
        if path.block > 1 and path.flatten is None:
            raise HwsimError(f"{what}: {layer.in_features} input features from {c} channels without a Flatten")
    return path


def _flatten_step(what, edge, path, node, unit, shape) -> str:
    if unit != "feature" or path.flatten is not None:
        raise HwsimError(f"{what}: {edge}: a reshape {node.name!r} is only allowed once, right before a Linear")
    src, out = shape(node.args[0]), shape(node)
    if src is not None and out is not None and not (len(out) == 2 and out[0] == src[0] and len(src) >= 2):
        raise HwsimError(f"{what}: {edge}: {node.name!r} reshapes {src} to {out}; only a flatten to [N, features] "
                         "keeps channels in contiguous blocks")
    path.flatten = node.name
    return "channel"


# -----------------------------------------------------------------------------------------------
# sampling
# -----------------------------------------------------------------------------------------------
def _conv_pads(m: nn.Conv2d) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) zero padding of a Conv2d (torch puts the odd extra of 'same' last)."""
    k = m.kernel_size
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return 0, 0, 0, 0
        tot = [m.dilation[i] * (k[i] - 1) for i in range(2)]
        return tot[0] // 2, tot[1] // 2, tot[0] - tot[0] // 2, tot[1] - tot[1] // 2
    p = m.padding
    return p[0], p[1], p[0], p[1]


def _conv_patches(m: nn.Conv2d, x: torch.Tensor, out_hw, idx: torch.Tensor) -> torch.Tensor:
    """The input patches ``[P, C, kh*kw]`` of the flat output positions ``idx`` (over N*Ho*Wo)."""
    top, left, bottom, right = _conv_pads(m)
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    xp = F.pad(x, (left, right, top, bottom), mode=mode)
    ho, wo = out_hw
    n, rem = idx // (ho * wo), idx % (ho * wo)
    oh, ow = rem // wo, rem % wo
    (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
    rows = oh[:, None] * sh + torch.arange(kh, device=x.device) * dh
    cols = ow[:, None] * sw + torch.arange(kw, device=x.device) * dw
    patch = xp[n[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [P, kh, kw, C]
    return patch.permute(0, 3, 1, 2).reshape(len(idx), x.shape[1], kh * kw)


@dataclass
class LayerSamples:
    """Sampled inputs ``x [P, C, g]`` of a layer and its weight view ``w [O, C, g]``, bias ``b [O]``
    (or None); the sampled float outputs are ``y = einsum('pcg,ocg->po', x, w) + b``."""

    x: torch.Tensor
    w: torch.Tensor
    b: torch.Tensor | None

    @property
    def y(self) -> torch.Tensor:
        y = torch.einsum("pcg,ocg->po", self.x.double(), self.w.double())
        return y if self.b is None else y + self.b.double()


def _batches(samples):
    if isinstance(samples, torch.Tensor):
        return [samples]
    if iter(samples) is samples:
        raise HwsimError("the samples are a one-shot iterator (a generator?); pass a tensor, a list of batches or a "
                         "DataLoader: they are read more than once")
    return samples


@torch.no_grad()
def sample_inputs(model: nn.Module, layer_name: str, samples, block: int = 1, max_positions: int = 512,
                  seed: int = 0) -> LayerSamples:
    """Run ``model`` (eval mode) on ``samples`` (a tensor, or an iterable of batches: tensors, or tuples
    of the model's inputs) and keep, per batch, at most ``max_positions`` output positions of
    ``layer_name`` (uniformly drawn with a fixed ``seed``) with their input patches; ``block`` is the
    number of input features per channel of a Linear."""
    if isinstance(max_positions, bool) or not isinstance(max_positions, int) or max_positions < 1:
        raise HwsimError(f"max_positions must be a positive integer, found {max_positions!r}")
    mods = dict(model.named_modules())
    layer = mods.get(layer_name)
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise HwsimError(f"sample_inputs: {layer_name!r} is not an nn.Conv2d or nn.Linear of the model")
    gen = torch.Generator().manual_seed(seed)
    kept: list[torch.Tensor] = []

    def hook(mod, inputs, output):
        x = inputs[0]
        if isinstance(mod, nn.Conv2d):
            total = output.shape[0] * output.shape[2] * output.shape[3]
            idx = torch.randperm(total, generator=gen)[:max_positions].sort().values.to(x.device)
            kept.append(_conv_patches(mod, x, output.shape[2:], idx))
        else:
            if x.dim() != 2:
                raise HwsimError(f"sample_inputs: Linear {layer_name!r} got a {x.dim()}-D input; only [N, features]")
            idx = torch.randperm(x.shape[0], generator=gen)[:max_positions].sort().values.to(x.device)
            kept.append(x[idx].reshape(len(idx), -1, block))

    handle = layer.register_forward_hook(hook)
    try:
        with eval_mode(model):
            for b in _batches(samples):
                model(*(b if isinstance(b, (tuple, list)) else (b,)))
    finally:
        handle.remove()
    if not kept:
        raise HwsimError(f"prune_channels({layer_name!r}): the samples are empty (or never reach the layer)")
    w = layer.weight.detach()
    w = w.reshape(w.shape[0], -1, block) if isinstance(layer, nn.Linear) else w.reshape(*w.shape[:2], -1)
    b = layer.bias.detach() if layer.bias is not None else None
    return LayerSamples(torch.cat(kept), w, b)


# -----------------------------------------------------------------------------------------------
# selection and re-fit (pure functions of the samples)
# -----------------------------------------------------------------------------------------------
def contribution_gram(x: torch.Tensor, w: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``G[a, b] = sum_p <Z_a[p], Z_b[p]>`` with ``Z_c[p] = w[:, c, :] @ x[p, c, :]`` (float64),
    accumulated over chunks of ``chunk`` samples (memory ``chunk * C * O``)."""
    c = x.shape[1]
    g = torch.zeros(c, c, dtype=torch.float64, device=x.device)
    wd = w.double()
    for i in range(0, x.shape[0], chunk):
        z = torch.einsum("pcg,ocg->cpo", x[i:i + chunk].double(), wd).reshape(c, -1)
        g += z @ z.T
    return g


def removal_error(gram: torch.Tensor | np.ndarray, keep_idx) -> float:
    """``E(S) = 1^T G_RR 1``: the summed squared output error of dropping the channels outside
    ``keep_idx`` without re-fit."""
    g = np.asarray(gram.cpu() if isinstance(gram, torch.Tensor) else gram, dtype=np.float64)
    mask = np.ones(len(g), bool)
    mask[np.asarray(list(keep_idx), dtype=np.int64)] = False
    return float(g[np.ix_(mask, mask)].sum())


def _greedy(g: np.ndarray, keep: int) -> np.ndarray:
    c = len(g)
    removed = np.zeros(c, bool)
    grow = np.diag(g).copy()  # E(R + {c}) - E(R) = G_cc + 2 sum_{r in R} G_cr
    for _ in range(c - keep):
        cand = np.where(removed, np.inf, grow)
        j = int(np.argmin(cand))
        removed[j] = True
        grow += 2 * g[:, j]
    return np.flatnonzero(~removed)


def _lasso_cd(g: np.ndarray, q: np.ndarray, alpha: float, beta: np.ndarray, sweeps: int = 100) -> np.ndarray:
    """Coordinate descent on ``beta^T G beta - 2 q^T beta + alpha |beta|_1`` from ``beta``."""
    beta = beta.copy()
    diag = np.diag(g).tolist()
    gb = g @ beta  # kept equal to G beta
    tol = 1e-9 * math.sqrt(max(max(diag), 1e-300))
    for _ in range(sweeps):
        delta = 0.0
        for c, d in enumerate(diag):
            if d <= 0:
                new = 0.0
            else:
                r = q[c] - gb[c] + d * beta[c]
                new = math.copysign(max(abs(r) - alpha / 2, 0.0), r) / d
            step = new - beta[c]
            if step != 0.0:
                gb += g[:, c] * step
                beta[c] = new
                delta = max(delta, abs(step) * math.sqrt(max(d, 0.0)))
        if delta <= tol:
            break
    return beta


def _lasso(g: np.ndarray, keep: int) -> np.ndarray:
    c = len(g)
    if keep == c:
        return np.arange(c)
    q = g.sum(1)  # <Y, Z_c> with Y = sum_d Z_d
    hi, lo = 2 * np.abs(q).max() + 1e-300, 0.0  # alpha >= 2 max|q| gives beta = 0
    beta_hi = np.zeros(c)
    beta_lo = _lasso_cd(g, q, lo, np.ones(c))
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        b = _lasso_cd(g, q, mid, beta_lo)
        n = np.count_nonzero(b)
        if n <= keep:
            hi, beta_hi = mid, b
            if n == keep:
                break
        else:
            lo, beta_lo = mid, b
    order = np.lexsort((-np.diag(g), -np.abs(beta_lo), -np.abs(beta_hi)))
    return np.sort(order[:keep])


def select_channels(gram: torch.Tensor | np.ndarray, keep: int, method: str = "greedy") -> np.ndarray:
    """The sorted indices of the ``keep`` input channels to keep, by ``method`` (module docstring)
    from the contribution Gram matrix :func:`contribution_gram`.

    >>> g = np.diag([4.0, 1.0, 9.0])            # independent channels of energy 4, 1, 9
    >>> select_channels(g, 2).tolist(), select_channels(g, 2, "lasso").tolist()
    ([0, 2], [0, 2])
    """
    g = np.asarray(gram.cpu() if isinstance(gram, torch.Tensor) else gram, dtype=np.float64)
    c = len(g)
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or not 1 <= keep <= c:
        raise HwsimError(f"select_channels: keep must be an integer in [1, {c}], found {keep!r}")
    if method not in METHODS:
        raise HwsimError(f"select_channels: method must be one of {METHODS}, found {method!r}")
    return _greedy(g, int(keep)) if method == "greedy" else _lasso(g, int(keep))


def refit(s: LayerSamples, keep_idx, ridge: float = 1e-6, fit_bias: bool = True):
    """Ridge least-squares re-fit of the kept weights ``w[:, S, :]`` (and the bias, when present and
    ``fit_bias``) toward their current values (module docstring, step 4). Returns ``(w_S, b)`` in the
    weight's dtype, ``w_S [O, k, g]``."""
    idx = torch.as_tensor(np.asarray(keep_idx, dtype=np.int64), device=s.x.device)
    xs = s.x[:, idx, :].reshape(len(s.x), -1).double()
    ws = s.w[:, idx, :].reshape(s.w.shape[0], -1).double()
    bias = s.b is not None and fit_bias
    r = s.y - xs @ ws.T - (s.b.double() if s.b is not None else 0.0)
    a = torch.cat([xs, torch.ones(len(xs), 1, dtype=xs.dtype, device=xs.device)], 1) if bias else xs
    ata = a.T @ a
    lam = ridge * max(float(torch.diagonal(ata).mean()), 1e-30)
    delta = torch.linalg.solve(ata + lam * torch.eye(len(ata), dtype=ata.dtype, device=ata.device), a.T @ r)
    new_w = (ws + delta[:ws.shape[1]].T).reshape(s.w.shape[0], len(idx), -1).to(s.w.dtype)
    new_b = None
    if s.b is not None:
        new_b = (s.b.double() + delta[-1]).to(s.b.dtype) if bias else s.b.clone()
    return new_w, new_b


def reconstruction_error(s: LayerSamples, keep_idx, w_s: torch.Tensor | None = None, b=None) -> float:
    """``sum_p ||y_p - (w_S x_p[S] + b)||^2`` on the samples, with the kept weights ``w_s`` (default:
    the original ``w[:, S, :]``, i.e. before re-fit) and bias ``b`` (default: the original)."""
    idx = torch.as_tensor(np.asarray(keep_idx, dtype=np.int64), device=s.x.device)
    w_s = s.w[:, idx, :] if w_s is None else w_s
    b = s.b if b is None else b
    pred = torch.einsum("pcg,ocg->po", s.x[:, idx, :].double(), w_s.double())
    if b is not None:
        pred = pred + b.double()
    return float(((s.y - pred) ** 2).sum())


# -----------------------------------------------------------------------------------------------
# the whole step
# -----------------------------------------------------------------------------------------------
def _keep_count(keep, c: int, what: str) -> int:
    if isinstance(keep, bool):
        raise HwsimError(f"{what}: keep must be an int count or a float fraction, found {keep!r}")
    if isinstance(keep, (int, np.integer)):
        if not 1 <= keep <= c:
            raise HwsimError(f"{what}: keep={keep} channels is outside [1, {c}]")
        return int(keep)
    if isinstance(keep, float) and 0.0 < keep <= 1.0:
        return int(min(c, max(1, math.floor(keep * c + 0.5))))
    raise HwsimError(f"{what}: keep must be an int in [1, {c}] or a float fraction in (0, 1], found {keep!r}")


def _slice_param(mod: nn.Module, name: str, idx: torch.Tensor, dim: int = 0) -> None:
    t = getattr(mod, name, None)
    if t is None:
        return
    new = t.detach().index_select(dim, idx).clone()
    if isinstance(t, nn.Parameter):
        setattr(mod, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        setattr(mod, name, new)


def _set_weight(mod: nn.Module, w: torch.Tensor, b: torch.Tensor | None) -> None:
    mod.weight = nn.Parameter(w.contiguous(), requires_grad=mod.weight.requires_grad)
    if b is not None:
        mod.bias = nn.Parameter(b.contiguous(), requires_grad=mod.bias.requires_grad)


def _first_batch(samples) -> tuple:
    for b in _batches(samples):
        b = tuple(b) if isinstance(b, (tuple, list)) else (b,)
        return tuple(t[:1] for t in b)
    raise HwsimError("prune_channels: the samples are empty")


@torch.no_grad()
def prune_channels(model: nn.Module, layer_name: str, keep, samples, method: str = "greedy",
                   max_positions: int = 512, ridge: float = 1e-6, seed: int = 0) -> nn.Module:
    """A copy of ``model`` in which the Conv2d/Linear ``layer_name`` keeps ``keep`` input channels (an
    int count, or a float fraction rounded to the nearest count, at least 1), chosen by ``method``
    (``"greedy"`` or ``"lasso"``) on inputs sampled from ``samples`` (a tensor or an iterable of
    batches; at most ``max_positions`` positions per batch), with the producing layer's output channels
    removed and the kept weights re-fit (module docstring). ``model`` is not modified.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    >>> x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> small = prune_channels(net, "2", 0.5, x)
    >>> small[0].out_channels, small[2].in_channels
    (4, 4)
    """
    what = f"prune_channels({layer_name!r})"
    if method not in METHODS:
        raise HwsimError(f"{what}: method must be one of {METHODS}, found {method!r}")
    work = copy.deepcopy(model)
    path = pruning_path(work, layer_name, _first_batch(samples))
    k = _keep_count(keep, path.channels, what)
    mods = dict(work.named_modules())
    layer = mods[layer_name]
    s = sample_inputs(work, layer_name, samples, block=path.block, max_positions=max_positions, seed=seed)
    keep_idx = select_channels(contribution_gram(s.x, s.w), k, method)
    new_w, new_b = refit(s, keep_idx, ridge=ridge)
    dev = layer.weight.device
    idx = torch.as_tensor(keep_idx, dtype=torch.long, device=dev)
    feat = (idx[:, None] * path.block + torch.arange(path.block, device=dev)).reshape(-1)
    if isinstance(layer, nn.Conv2d):
        _set_weight(layer, new_w.reshape(new_w.shape[0], k, *layer.kernel_size), new_b)
        layer.in_channels = k
    else:
        _set_weight(layer, new_w.reshape(new_w.shape[0], -1), new_b)
        layer.in_features = k * path.block
    for name, unit in path.between:
        m = mods[name]
        sel = idx if unit == "channel" else feat
        if isinstance(m, nn.Conv2d):  # depthwise
            _slice_param(m, "weight", sel)
            _slice_param(m, "bias", sel)
            m.in_channels = m.out_channels = m.groups = k
        else:  # batch norm
            for p in ("weight", "bias", "running_mean", "running_var"):
                _slice_param(m, p, sel)
            m.num_features = len(sel)
    prod = mods[path.producer]
    _slice_param(prod, "weight", idx)
    _slice_param(prod, "bias", idx)
    if isinstance(prod, nn.Conv2d):
        prod.out_channels = k
    else:
        prod.out_features = k
    return work
