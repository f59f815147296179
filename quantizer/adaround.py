"""AdaRound: learn whether each weight rounds down or up (Nagel et al. 2020, "Up or Down? Adaptive
Rounding for Post-Training Quantization").

For every Conv/Gemm of a calibrated simulation model, in topological order, the rounding of each
weight ``w`` on its (unchanged) grid ``s, z, [qmin, qmax]`` (per tensor, per channel or per block,
any bit width) is chosen by minimizing, over a continuous variable ``V`` per weight,

    h(V)     = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)        zeta = 1.1, gamma = -0.1
    W~       = s * (clamp(floor(w / s) + h(V) + z, qmin, qmax) - z)
    loss     = mean_rows sum_channels (f(W~ x_q + b_q) - f(W x + b))^2
               + reg_weight * sum(1 - |2 h(V) - 1|^beta)

with Adam, where ``f`` is the layer's fused activation (Relu/Clip of its supergroup, identity
otherwise; applied to both sides as in the paper's eq. 25, so that errors the activation clips away
cost nothing), ``x_q`` the layer's input in the fast simulation with every upstream layer already
rounded and ``x, W, b`` the float model's input, weights and bias ("asymmetric reconstruction", as
AIMET does), and ``b_q`` the bias on its int32 grid. ``V`` starts where ``h(V)`` equals the fractional
part of ``w / s`` (``W~ = W``). The regularizer is off for the first ``warm_start`` fraction of the
iterations, then ``beta`` decays linearly from ``beta_range[0]`` to ``beta_range[1]``, pushing every
``h`` to 0 or 1. The final integer weight is

    q = clamp(floor(w / s) + [h(V) >= 0.5] + z, qmin, qmax)

(``w / s`` in float32, as the quantizer divides), i.e. floor or ceil of ``w / s`` plus ``z``, clipped; a
weight already on the grid keeps its value. ``q`` is imposed by setting the float weight to
``wq.dequantize(q)`` with the encoding unchanged, so fast, exact, export and the integer runtime all
use ``q``. The bias and every encoding stay as they were. With ``keep_better`` (default) a layer whose
hard AdaRound rounding reconstructs the cached data worse than nearest rounding keeps nearest
rounding (``fallback`` in the result): the unnormalized objective lets the regularizer decide alone
on layers whose reconstruction error is tiny next to ``reg_weight`` (e.g. 8-bit per-channel
depthwise layers, error ~1e-6).

Defaults and their reasons. AIMET's defaults are 10 000 iterations at Adam lr 1e-3 (about 21 s per
layer here); ``V`` moves at most about ``lr`` per step, so at a tenth of the iterations the step is ten
times larger: 1000 iterations at lr 1e-2 reconstruct the digits CNNs' layers better than 3000 at
1e-3 (measured: error / nearest error 0.24-0.56 vs 0.30-0.57 on the residual CNN at W4A8). Each step
uses ``batch_rows`` cached rows (default: ``2^23 / (C_out * K_in / groups)`` multiply-accumulates per
step, between 64 and 1024 rows; AIMET steps on 32 samples). The optimization runs on ``threads``
intra-op threads (default 1; torch's setting is restored afterwards): its kernels are small, and on a
busy 2-core machine a second thread made the steps up to 20 times slower.

Data and memory. The first ``num_samples`` model inputs of ``batches`` are kept (the calibration set,
as AIMET caches it). Per layer, the float and the fast simulation run over them in chunks of
``chunk`` samples; from each sample's output positions a random subset is kept: the input patch of
each kept position (the conv's receptive field, gathered directly, never a full im2col) from the
fast simulation, and the float target output there. The number of cached rows is bounded by

    rows <= row_bound = min(max_rows, cache_mb * 2^20 / (4 * (K_in + C_out)))

(``K_in = C_in * kh * kw`` float32 values per patch), so a layer's cache never exceeds ``cache_mb``
whatever the data set or the image size. A Gemm has one row per sample.

Cost (2-core CPU, default settings): about 0.5-0.8 s of CPU per layer of the digits demo CNNs
(16-32 channels), 2-3 s for a 64-channel 3x3 conv on 14x14 maps; it grows with the weight count
(a 12544x10 Gemm: 5 s). The result dict reports wall and
CPU seconds and cache size per layer, and the process's peak RSS.

>>> float(rectified_sigmoid(torch.tensor(0.0)))
0.5
>>> [round(float(v), 3) for v in rectified_sigmoid(inverse_rectified_sigmoid(torch.tensor([0.25, 0.5])))]
[0.25, 0.5]
"""
from __future__ import annotations

import math
import resource
import time

import torch

from runtime.errors import DataError, HwsimError

ZETA, GAMMA = 1.1, -0.1
STEP_MACS = 1 << 23  # multiply-accumulates per Adam step that choose the automatic batch_rows


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` (exactly 0 or 1 for large |V|)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = h`` for ``0 < h < 1``: ``-log((zeta - gamma) / (h - gamma) - 1)``."""
    return -torch.log((ZETA - GAMMA) / (h - GAMMA) - 1.0)


def round_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """``sum(1 - |2h - 1|^beta)``: 0 when every ``h`` is 0 or 1, largest at ``h = 0.5``.

    >>> float(round_regularizer(torch.tensor([0.0, 1.0, 0.5]), 2.0))
    1.0
    """
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


def beta_at(t: int, iterations: int, beta_range=(20.0, 2.0), warm_start: float = 0.2) -> float | None:
    """The regularizer's exponent at iteration ``t``: ``None`` during the warm start (no
    regularization), then linear from ``beta_range[0]`` to ``beta_range[1]`` (AIMET's linear decay).

    >>> [beta_at(t, 10) for t in (0, 1, 2, 6, 9)]
    [None, None, 20.0, 11.0, 4.25]
    """
    start = warm_start * iterations
    if t < start:
        return None
    rel = (t - start) / max(iterations - start, 1)
    b0, b1 = beta_range
    return b1 + (b0 - b1) * max(0.0, 1.0 - rel)


# ------------------------------------------------------------------------------------------------
# one layer: geometry, data cache, objective
# ------------------------------------------------------------------------------------------------
class _Layer:
    """A Conv/Gemm group seen as ``G`` independent matrix products ``(rows, K) x (K, O)``."""

    def __init__(self, sim, group):
        from hwsim.sim import _key

        self.group, self.op = group, group.head
        self.key = _key(group.name)
        self.module = sim.layers[self.key]
        self.wq, self.bq = sim.weight_q[self.key], sim.bias_q[self.key]
        w = self.module.weight
        self.shape = tuple(w.shape)
        self.conv = self.op.op_type == "Conv"
        self.G = int(self.op.attrs["group"]) if self.conv else 1
        self.O = self.shape[0] // self.G
        self.K = int(w[0].numel())
        self.c_out = self.shape[0]

    def to_gok(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.G, self.O, self.K)

    def act(self, y: torch.Tensor) -> torch.Tensor:
        from hwsim.sim import _float_act

        for a in self.group.acts:
            y = _float_act(a, y)
        return y

    def bias_gco(self, b: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if b is None:
            return torch.zeros((self.G, 1, self.O), dtype=like.dtype, device=like.device)
        return b.detach().reshape(self.G, 1, self.O).to(like.dtype)

    def rows(self, x: torch.Tensor, pick: torch.Tensor | None) -> torch.Tensor:
        """The layer's input rows ``(G, n, K)``: Gemm inputs as they are; for a conv the patches at
        the output positions ``pick`` (``(n, 3)``: sample, out_row, out_col), gathered directly as
        rows of the padded input in NHWC layout (memory: the n patches only, never a full im2col)."""
        if not self.conv:
            return x.reshape(-1, self.K).unsqueeze(0)
        import torch.nn.functional as F

        a = self.op.attrs
        pt, pl, pb, pr = a["pads"]
        xp = F.pad(x, (pl, pr, pt, pb))
        B, C, Hp, Wp = xp.shape
        kh, kw = self.shape[2], self.shape[3]
        (sh, sw), (dh, dw) = a["strides"], a["dilations"]
        dev = x.device
        b, oh, ow = pick[:, 0], pick[:, 1], pick[:, 2]
        hi = oh[:, None, None] * sh + (torch.arange(kh, device=dev) * dh)[None, :, None]
        wi = ow[:, None, None] * sw + (torch.arange(kw, device=dev) * dw)[None, None, :]
        idx = (b[:, None, None] * Hp + hi) * Wp + wi                        # (n, kh, kw)
        p = xp.permute(0, 2, 3, 1).reshape(B * Hp * Wp, C).index_select(0, idx.reshape(-1))
        p = p.reshape(len(b), kh * kw, C).transpose(1, 2)                   # (n, C, kh*kw)
        return p.reshape(len(b), self.G, self.K).transpose(0, 1).contiguous()

    def out_positions(self, x: torch.Tensor) -> tuple[int, int]:
        a = self.op.attrs
        pt, pl, pb, pr = a["pads"]
        kh, kw = self.shape[2], self.shape[3]
        (sh, sw), (dh, dw) = a["strides"], a["dilations"]
        return ((x.shape[2] + pt + pb - dh * (kh - 1) - 1) // sh + 1,
                (x.shape[3] + pl + pr - dw * (kw - 1) - 1) // sw + 1)

    def row_bound(self, max_rows: int, cache_mb: float) -> int:
        per_row = 4 * (self.G * self.K + self.c_out)
        return max(1, min(int(max_rows), int(cache_mb * 2 ** 20 // per_row)))


def _forward(layer: _Layer, x: torch.Tensor, w_gok: torch.Tensor, b_gco: torch.Tensor) -> torch.Tensor:
    """``f(W x + b)`` on rows: ``(G, n, K) x (G, O, K) -> (G, n, O)``."""
    return layer.act(torch.baddbmm(b_gco, x, w_gok.transpose(1, 2)))


def _recon(layer, X, Y, w_gok, b_gco, chunk: int = 8192) -> float:
    """``mean_rows sum_channels (f(W x + b) - y)^2`` over all cached rows, in chunks."""
    tot, n = 0.0, X.shape[1]
    with torch.no_grad():
        for i in range(0, n, chunk):
            d = _forward(layer, X[:, i:i + chunk], w_gok, b_gco) - Y[:, i:i + chunk]
            tot += float(d.double().pow(2).sum())
    return tot / n


class _Swap:
    """Temporarily give some layers other weights (the float model's, for the float pass)."""

    def __init__(self, sim, weights: dict[str, torch.Tensor]):
        self.sim, self.weights, self.saved = sim, weights, {}

    def __enter__(self):
        for k, w in self.weights.items():
            p = self.sim.layers[k].weight
            self.saved[k] = p.detach().clone()
            p.data.copy_(w)

    def __exit__(self, *exc):
        for k, w in self.saved.items():
            self.sim.layers[k].weight.data.copy_(w)


def _take_samples(batches, n: int, n_inputs: int) -> list[torch.Tensor]:
    parts: list[list[torch.Tensor]] = [[] for _ in range(n_inputs)]
    have = 0
    for b in batches:
        b = b if isinstance(b, (tuple, list)) else (b,)
        if len(b) != n_inputs:
            raise DataError(f"adaround: a batch has {len(b)} tensors, the model takes {n_inputs} inputs")
        b = [torch.as_tensor(t, dtype=torch.float32) for t in b]
        k = min(n - have, b[0].shape[0])
        for p, t in zip(parts, b):
            p.append(t[:k])
        have += k
        if have >= n:
            break
    if have == 0:
        raise DataError("adaround: the calibration data is empty: pass at least one batch")
    return [torch.cat(p) for p in parts]


@torch.no_grad()
def _collect(sim, layer: _Layer, inputs, float_weights, bound: int, chunk: int, gen: torch.Generator):
    """(X (G, n, K) quantized-input rows, Y (G, n, O) float targets), n <= bound: a conv takes
    ``bound // N`` random output positions of each of the N samples (one more for the first
    ``bound % N``; every position when there are fewer), a Gemm the first ``bound`` samples."""
    xs, ys, have = [], [], 0
    src = layer.op.inputs[0]
    w_f = layer.to_gok(float_weights[layer.key])
    n_all = inputs[0].shape[0]
    for i in range(0, n_all, chunk):
        if have >= bound:
            break
        ins = tuple(t[i:i + chunk] for t in inputs)
        with _Swap(sim, float_weights):
            x_f = sim.run_float(ins, fake=False)[src]
        x_q = sim.run_float(ins, fake=True)[src]
        pick = None
        if layer.conv:
            oh, ow = layer.out_positions(x_f)
            n = x_f.shape[0]
            want = bound // n_all + (torch.arange(i, i + n) < bound % n_all).to(torch.int64)
            want = want.clamp(max=oh * ow)
            per = int(want.max())
            pos = torch.rand((n, oh * ow), generator=gen).argsort(1)[:, :per]
            keep = (torch.arange(per)[None] < want[:, None]).reshape(-1)
            sample = torch.arange(n).repeat_interleave(per)
            pick = torch.stack([sample, (pos // ow).reshape(-1), (pos % ow).reshape(-1)], 1)[keep]
            pick = pick[:bound - have].to(x_f.device)
        else:
            x_f, x_q = x_f[:bound - have], x_q[:bound - have]
        r_f = layer.rows(x_f, pick)
        xs.append(layer.rows(x_q, pick))
        ys.append(_forward(layer, r_f, w_f, layer.bias_gco(layer.module.bias, r_f)))
        have += xs[-1].shape[1]
    X, Y = torch.cat(xs, 1), torch.cat(ys, 1)
    perm = torch.randperm(X.shape[1], generator=gen)   # once, so that windows are random subsets
    return X[:, perm].contiguous(), Y[:, perm].contiguous()


# ------------------------------------------------------------------------------------------------
# the algorithm
# ------------------------------------------------------------------------------------------------
def adaround(sim, batches, *, iterations: int = 1000, reg_weight: float = 0.01, beta_range=(20.0, 2.0),
             warm_start: float = 0.2, num_samples: int = 256, lr: float = 1e-2, batch_rows: int | None = None,
             max_rows: int = 16384, cache_mb: float = 64.0, chunk: int = 32, layers=None,
             keep_better: bool = True, threads: int | None = 1, seed: int = 0, progress: bool = True) -> dict:
    """Optimize the rounding of every Conv/Gemm weight of the calibrated ``sim`` in place (see the
    module docstring for the objective, the defaults, the data cache and its memory bound).

    ``batches``: calibration data (tensors, or tuples for several inputs); the first ``num_samples``
    samples are used. ``layers``: names of the groups to round (default: every Conv/Gemm, in
    topological order). ``seed`` fixes the sampled positions and minibatches.

    Returns ``{"layers": {name: {...}}, "seconds", "seconds_per_layer", "peak_rss_mb",
    "max_cache_mb", "num_samples"}``; per layer: ``q`` and ``q_nearest`` (int64 weights),
    ``recon_nearest`` / ``recon_adaround`` (the reconstruction term of nearest and of AdaRound's hard
    rounding on all cached rows), ``fallback``, ``changed`` (fraction of weights rounded differently
    from nearest), ``rows`` / ``row_bound`` / ``batch_rows`` / ``cache_mb``, ``collect_seconds``,
    ``seconds`` (wall, collection + optimization), ``cpu_seconds``, ``iterations``.
    """
    from hwsim.sim import MAC_OPS, _key

    if iterations < 0 or num_samples < 1 or (batch_rows is not None and batch_rows < 1) or max_rows < 1 \
            or cache_mb <= 0 or lr <= 0:
        raise HwsimError(f"adaround: expected iterations >= 0, num_samples, batch_rows, max_rows >= 1, cache_mb > 0 "
                         f"and lr > 0; found {iterations}, {num_samples}, {batch_rows}, {max_rows}, {cache_mb}, {lr}")
    if not 0.0 <= warm_start <= 1.0:
        raise HwsimError(f"adaround: warm_start is a fraction of the iterations in [0, 1], found {warm_start}")
    groups = [g for g in sim.groups if g.op_type in MAC_OPS and _key(g.name) in sim.weight_q]
    if layers is not None:
        names = {g.name for g in groups}
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise HwsimError(f"adaround: layers {unknown} are not Conv/Gemm layers of this model "
                             f"(choose from {sorted(names)})")
        groups = [g for g in groups if g.name in set(layers)]
    for g in groups:
        k = _key(g.name)
        if sim.weight_q[k].encoding is None or sim.quantizer_of(g.head.inputs[0]).encoding is None:
            raise HwsimError(f"adaround: layer {g.name!r} has no encodings yet: call sim.calibrate(...) first")

    t_all = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    inputs = _take_samples(batches, num_samples, len(sim.input_names))
    float_weights = {_key(g.name): sim.layers[_key(g.name)].weight.detach().clone() for g in groups}
    out = {"layers": {}, "num_samples": int(inputs[0].shape[0])}
    it = groups
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(groups, desc="adaround", unit="layer", leave=False)
    for g in it:
        t0, c0 = time.perf_counter(), time.process_time()
        layer = _Layer(sim, g)
        bound = layer.row_bound(max_rows, cache_mb)
        rows_per_step = batch_rows or min(1024, max(64, STEP_MACS // (layer.G * layer.K * layer.O)))
        saved_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            X, Y = _collect(sim, layer, inputs, float_weights, bound, chunk, gen)
            t1 = time.perf_counter()
            res = _optimize(layer, X, Y, float_weights[layer.key], iterations=iterations, reg_weight=reg_weight,
                            beta_range=beta_range, warm_start=warm_start, lr=lr, batch_rows=rows_per_step,
                            keep_better=keep_better, gen=gen)
        finally:
            torch.set_num_threads(saved_threads)
        with torch.no_grad():
            layer.module.weight.data.copy_(layer.wq.dequantize(res["q"]).to(layer.module.weight.dtype))
        res.update(rows=int(X.shape[1]), row_bound=bound, batch_rows=min(rows_per_step, int(X.shape[1])),
                   cache_mb=(X.numel() * X.element_size() + Y.numel() * Y.element_size()) / 2 ** 20,
                   collect_seconds=t1 - t0, seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
        out["layers"][g.name] = res
        del X, Y
        if progress:
            it.set_postfix(layer=g.name, s=f"{res['seconds']:.1f}")
    n = max(len(out["layers"]), 1)
    out["seconds"] = time.perf_counter() - t_all
    out["seconds_per_layer"] = sum(r["seconds"] for r in out["layers"].values()) / n
    out["max_cache_mb"] = max((r["cache_mb"] for r in out["layers"].values()), default=0.0)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return out


def _act_mask(layer: _Layer, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(f(pre), f'(pre))`` for the layer's fused Relu/Clip chain (derivative 1 strictly inside the
    range, 0 where clipped; ``None`` without an activation)."""
    y, mask = pre, None
    for a in layer.group.acts:
        lo, hi = (0.0, None) if a.op_type == "Relu" else (a.attrs.get("min"), a.attrs.get("max"))
        for bound, cmp in ((lo, torch.gt), (hi, torch.lt)):
            if bound is not None:
                m = cmp(y, bound)
                mask = m if mask is None else mask.logical_and_(m)
        y = torch.clamp(y, min=lo, max=hi)
    return y, mask


class _Rounding:
    """The continuous rounding variables of one layer, in the ``(G, O, K)`` layout, with the
    objective's gradient written out (no autograd: a step is a couple of dozen small kernels).

    A weight is *free* when its two roundings differ after clipping: ``w/s`` not an integer and
    ``lo <= floor(w/s)``, ``floor(w/s) + 1 <= hi`` (``lo, hi = qmin - z, qmax - z``); any other weight
    has one possible value, ``clamp(floor(w/s), lo, hi)``. For a free weight the clamp of
    ``floor(w/s) + h`` is the identity, so ``W~ = s * base + s * free * h(V)`` with
    ``base = clamp(floor(w/s), lo, hi)``, and (``n`` rows in the minibatch, ``f'`` the activation's
    derivative, ``r = sigmoid(V) (zeta - gamma) + gamma``):

        dL/dW~ = 2/n * (f' * (f(W~ x + b) - y))^T x
        dL/dh  = s * free * dL/dW~ - 2 * reg_weight * beta * |2h - 1|^(beta - 1) * sign(2h - 1)
        dh/dV  = (zeta - gamma) * sigmoid(V) * (1 - sigmoid(V)) * [0 < r < 1]
    """

    def __init__(self, layer: _Layer, w_float: torch.Tensor, bias: torch.Tensor | None):
        wq, enc = layer.wq, layer.wq.encoding
        self.layer = layer
        with torch.no_grad():
            w = w_float.to(torch.float32)
            s, z = wq._params(w)
            s = s.detach().to(torch.float32).expand_as(w)
            z = z.expand_as(w)
            v = w / s                                   # float32, as the quantizer divides
            fl = torch.floor(v)
            frac = v - fl
            lo = (enc.qmin - z).to(torch.float32)
            hi = (enc.qmax - z).to(torch.float32)
            free = ((frac > 0) & (fl >= lo) & (fl + 1 <= hi)).to(torch.float32)
            self.z = z
            s, fl, frac, free, base = (layer.to_gok(t) for t in (s, fl, frac, free, torch.clamp(fl, lo, hi)))
            self.base, self.free = base, free
            self.w_base, self.s_free = s * base, s * free
            self.q_near = wq.quantize(w)
            bq = layer.bq(bias) if bias is not None else None
            self.b = layer.bias_gco(bq, s)
        self.V = inverse_rectified_sigmoid(frac.clamp(1e-4, 1 - 1e-4))

    def soft_weight(self, V: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.w_base, self.s_free, rectified_sigmoid(V))

    def loss(self, V: torch.Tensor, xb, yb, beta: float | None, reg_weight: float) -> torch.Tensor:
        """The objective, written plainly (the reference the tests hold :meth:`grad` to)."""
        rec = (_forward(self.layer, xb, self.soft_weight(V), self.b) - yb).pow(2).sum((0, 2)).mean()
        if beta is None or not reg_weight:
            return rec
        return rec + reg_weight * round_regularizer(rectified_sigmoid(V) * self.free, beta)

    def grad(self, V: torch.Tensor, xb, yb, beta: float | None, reg_weight: float) -> torch.Tensor:
        """``d loss / dV`` of :meth:`loss`, by hand (see the class docstring)."""
        n = xb.shape[1]
        sg = torch.sigmoid(V)
        r = sg * (ZETA - GAMMA) + GAMMA
        h = r.clamp(0.0, 1.0)
        pre = torch.baddbmm(self.b, xb, torch.addcmul(self.w_base, self.s_free, h).transpose(1, 2))
        y, mask = _act_mask(self.layer, pre)
        d = y.sub_(yb) if mask is None else y.sub_(yb).mul_(mask)
        g = torch.bmm(d.transpose(1, 2), xb).mul_(self.s_free).mul_(2.0 / n)
        if beta is not None and reg_weight:
            t = h.mul(2.0).sub_(1.0)
            g.add_(t.abs().pow_(beta - 1.0).mul_(t.sign_()).mul_(self.free), alpha=-2.0 * beta * reg_weight)
        return g.mul_(sg.mul(1.0 - sg)).mul_((r > 0.0) & (r < 1.0)).mul_(ZETA - GAMMA)

    def hard(self, V: torch.Tensor) -> torch.Tensor:
        """``q = clamp(floor(w/s) + [h(V) >= 0.5], lo, hi) + z`` in the weight's shape (int64)."""
        up = (rectified_sigmoid(V) >= 0.5).to(torch.float32) * self.free
        return (self.base + up).reshape(self.layer.shape).to(torch.int64) + self.z


def _optimize(layer: _Layer, X, Y, w_float, *, iterations, reg_weight, beta_range, warm_start, lr, batch_rows,
              keep_better, gen) -> dict:
    """Adam (beta1 0.9, beta2 0.999, eps 1e-8, as torch's) on V over minibatches of ``batch_rows``
    rows: contiguous windows at random offsets of the cache, whose rows were shuffled once."""
    rnd = _Rounding(layer, w_float, layer.module.bias)
    V = rnd.V.clone()
    m, v2 = torch.zeros_like(V), torch.zeros_like(V)
    b1, b2, eps = 0.9, 0.999, 1e-8
    n = X.shape[1]
    bsz = min(batch_rows, n)
    offsets = torch.randint(n - bsz + 1, (max(iterations, 1),), generator=gen).tolist()
    with torch.no_grad():
        for t in range(iterations):
            o = offsets[t]
            g = rnd.grad(V, X[:, o:o + bsz], Y[:, o:o + bsz], beta_at(t, iterations, beta_range, warm_start),
                         reg_weight)
            m.lerp_(g, 1.0 - b1)
            v2.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            k = t + 1
            denom = v2.sqrt().div_(math.sqrt(1.0 - b2 ** k)).add_(eps)
            V.addcdiv_(m, denom, value=-lr / (1.0 - b1 ** k))
        q = rnd.hard(V)
        w_near = layer.to_gok(layer.wq.dequantize(rnd.q_near))
        w_ada = layer.to_gok(layer.wq.dequantize(q))
        r_near = _recon(layer, X, Y, w_near, rnd.b)
        r_ada = _recon(layer, X, Y, w_ada, rnd.b)
    fallback = bool(keep_better and r_ada > r_near)
    if fallback:
        q = rnd.q_near
    changed = float((q != rnd.q_near).to(torch.float32).mean())
    return {"q": q, "q_nearest": rnd.q_near, "recon_nearest": r_near, "recon_adaround": r_ada,
            "fallback": fallback, "changed": changed, "iterations": iterations}


__all__ = ["adaround", "rectified_sigmoid", "inverse_rectified_sigmoid", "round_regularizer", "beta_at"]
