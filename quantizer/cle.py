"""Cross-layer equalization with high-bias absorption (Nagel et al., "Data-Free Quantization Through
Weight Equalization and Bias Correction", ICCV 2019, section 4.1 and appendix).

A *link* is a pair of layers ``A -> act -> B`` (Conv/Conv, Conv/depthwise, depthwise/Conv,
Linear/Linear) where every value between them has exactly one consumer, is not a model output, and
the ops between are only Relu, Clip with a lower bound of 0 (ReLU6) or MaxPool. Consecutive links form
a *chain*. Scaling output channel ``i`` of A by ``1/s_i`` and input channel ``i`` of B by ``s_i``
leaves the float function unchanged when ``act`` is positively homogeneous (``relu(x/s) = relu(x)/s``):

    W1[i] /= s_i,  b1[i] /= s_i,  W2[:, i] *= s_i,   s_i = sqrt(r1_i / r2_i) = sqrt(r1_i * r2_i) / r2_i

with ``r1_i = max|W1[i]|`` and ``r2_i = max|W2[:, i]|``: afterwards both ranges are
``sqrt(r1_i * r2_i)``. Chains of three or more layers are swept pair by pair until no scale moves
by more than ``tol`` (the paper's iteration).

>>> import torch, hwsim
>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(2, 1, 1))
>>> with torch.no_grad():
...     _ = net[0].weight.copy_(torch.tensor([4.0, 1.0]).reshape(2, 1, 1, 1))
...     _ = net[2].weight.copy_(torch.tensor([1.0, 4.0]).reshape(1, 2, 1, 1))
>>> sim = hwsim.simulate(net, "dsp-int8", torch.zeros(1, 1, 2, 2))
>>> [round(r["scale_max"], 3) for r in equalize(sim)]   # s = sqrt(4/1), sqrt(1/4)
[2.0]
>>> sim.layers["_0"].weight.flatten().tolist(), sim.layers["_2"].weight.flatten().tolist()
([2.0, 2.0], [2.0, 2.0])

**ReLU6** (``Clip(0, M)``) is not positively homogeneous: ``clip(x/s, 0, M) != clip(x, 0, M)/s``
once ``x`` reaches ``M``, and the per-channel bound ``M/s_i`` that would keep it exact cannot be
expressed by a target's per-tensor clamp. ``relu6`` chooses:

- ``"scale_bound"`` (default, exact): an upper bound ``U_i`` of A's pre-activation channel ``i`` is
  proved by interval arithmetic from A's input range (the bound of the Clip/Relu before A, or the
  model input quantizer's range). A channel with ``U_i > M`` may hit the clamp and keeps ``s_i = 1``;
  a channel with ``U_i <= M`` never does, and its scale is limited to ``s_i >= U_i / M`` so that it
  still never does. The float function is then unchanged for every input inside the model input's
  quantization range (outside it the quantized model clamps anyway).
- ``"relu"``: the paper's and AIMET's choice: the Clip is replaced by a Relu (changes the float
  function where the bound was hit), then equalized without a limit.
- ``"skip"``: links across a bounded Clip are not equalized.

**High-bias absorption** (``absorb_high_bias=True``): with A's pre-activation channel ``i``
distributed as N(beta_i, gamma_i^2) (its folded batch norm), ``c_i = max(0, beta_i - 3|gamma_i|)``
is moved from A's bias into B's: ``b1[i] -= c_i``, ``b2 += W2[:, i] * c_i`` (summed over the kernel).
It is exact where the pre-activation stays at or above ``c_i`` (99.87 % of the normal) and B has no
zero padding (at padded borders the moved constant is over-counted); across a Clip it is only done on
channels proved never to reach the bound. The batch-norm statistics of equalized layers are tracked
(:func:`bn_statistics`) so that analytical bias correction sees the equalized model.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from runtime.errors import HwsimError

RELU6_MODES = ("scale_bound", "relu", "skip")
PASS_THROUGH = ("Relu", "Clip", "MaxPool")


def _key(name: str) -> str:
    return name.replace(".", "_")


# -----------------------------------------------------------------------------------------------
# batch-norm statistics of the folded layers
# -----------------------------------------------------------------------------------------------
def bn_statistics(sim) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{layer op name: (mean, std)}`` of each BN-folded layer's pre-activation output per channel,
    ``mean = beta`` and ``std = |gamma|`` of the batch norm folded into it (the paper's assumption
    that a BN output is N(beta, gamma^2)). Kept on the sim and updated by :func:`equalize`."""
    stats = getattr(sim, "_bn_output_stats", None)
    if stats is not None:
        return stats
    by_module = {id(op.module): op.name for op in sim.cap.ops if op.module is not None}
    stats = {}
    for layer, bn_name in sim.cap.folded:
        bn = sim.cap.modules.get(bn_name)
        op_name = by_module.get(id(sim.cap.modules.get(layer)))
        if bn is None or op_name is None:
            continue
        n = bn.num_features
        gamma = bn.weight.detach().double().numpy() if bn.affine else np.ones(n)
        beta = bn.bias.detach().double().numpy() if bn.affine else np.zeros(n)
        stats[op_name] = (beta.copy(), np.abs(gamma))
    sim._bn_output_stats = stats
    return stats


# -----------------------------------------------------------------------------------------------
# finding chains
# -----------------------------------------------------------------------------------------------
def _kind(op) -> str | None:
    """'conv' (groups 1), 'dw' (depthwise, multiplier 1), 'fc', or None (not equalizable)."""
    if op.op_type == "Gemm":
        return "fc"
    if op.op_type != "Conv":
        return None
    w = op.module.weight
    g = op.attrs["group"]
    if g == 1:
        return "conv"
    if g == w.shape[0] and w.shape[1] == 1:
        return "dw"
    return None


def _clamp_of(acts) -> tuple[float, float] | None:
    """The combined clamp (lo, hi) of the pass-through ops, or None when one is not homogeneous."""
    lo, hi = -math.inf, math.inf
    for a in acts:
        if a.op_type == "Relu":
            lo = max(lo, 0.0)
        elif a.op_type == "Clip":
            amin, amax = a.attrs.get("min"), a.attrs.get("max")
            if amin is not None and amin != 0.0:
                return None
            if amin is not None:
                lo = max(lo, 0.0)
            if amax is not None:
                if amax <= 0:
                    return None
                hi = min(hi, float(amax))
    return lo, hi


def find_chains(sim) -> list[list[tuple]]:
    """Chains of links ``[(A, acts, B), (B, acts, C), ...]`` (Op objects) in graph order."""
    ops = sim.cap.ops
    consumers: dict[str, list] = {}
    for op in ops:
        for i in op.inputs:
            consumers.setdefault(i, []).append(op)
    outputs = set(sim.output_names)
    nxt = {}
    for a in ops:
        ka = _kind(a)
        if ka is None:
            continue
        v, acts = a.output, []
        while v not in outputs and len(consumers.get(v, [])) == 1:
            c = consumers[v][0]
            if c.op_type in PASS_THROUGH:
                acts.append(c)
                v = c.output
                continue
            kb = _kind(c) if c.module is not None else None
            n_out = a.module.weight.shape[0]
            if kb is None or (ka == "fc") != (kb == "fc") or c.inputs[0] != v:
                break
            n_in = c.module.weight.shape[0] if kb == "dw" else c.module.weight.shape[1]
            if n_in == n_out and _clamp_of(acts) is not None:
                nxt[a.name] = (a, acts, c)
            break
    targets = {link[2].name for link in nxt.values()}
    chains = []
    for op in ops:
        if op.name in nxt and op.name not in targets:
            chain, cur = [], op.name
            while cur in nxt:
                chain.append(nxt[cur])
                cur = nxt[cur][2].name
            chains.append(chain)
    return chains


# -----------------------------------------------------------------------------------------------
# interval bounds (for the exact ReLU6 rule)
# -----------------------------------------------------------------------------------------------
def _mac_bounds(kind, w, b, lo, hi, padded):
    """Per-output-channel (lo, hi) of ``b + W x`` for x in the per-input-channel box [lo, hi]."""
    if padded:  # zero padding feeds 0 into every kernel position at the borders
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    w = w.reshape(w.shape[0], w.shape[1], -1)                     # [O, I/g, K]
    if kind == "dw":
        lo_b, hi_b = lo.reshape(-1, 1, 1), hi.reshape(-1, 1, 1)   # channel o sees input o
    else:
        lo_b, hi_b = lo.reshape(1, -1, 1), hi.reshape(1, -1, 1)
    with np.errstate(invalid="ignore"):
        pos, neg = np.maximum(w, 0.0), np.minimum(w, 0.0)
        up = np.where(pos > 0, pos * hi_b, 0.0) + np.where(neg < 0, neg * lo_b, 0.0)
        dn = np.where(pos > 0, pos * lo_b, 0.0) + np.where(neg < 0, neg * hi_b, 0.0)
    return b + dn.sum(axis=(1, 2)), b + up.sum(axis=(1, 2))


def _source_bounds(sim, value: str, n: int):
    """A sound per-channel range of ``value`` from the op producing it (Relu/Clip bound, MaxPool
    pass-through, or the model input's quantization range); (-inf, inf) when nothing is known."""
    producer = {op.output: op for op in sim.cap.ops}
    lo, hi = -math.inf, math.inf
    while True:
        op = producer.get(value)
        if op is None:
            if value in sim.input_names:
                enc = sim.quantizer_of(value).encoding
                if enc is not None:
                    s, z = float(enc.scale), float(enc.zero_point)
                    lo, hi = max(lo, s * (enc.qmin - z)), min(hi, s * (enc.qmax - z))
            break
        if op.op_type == "Relu":
            lo = max(lo, 0.0)
        elif op.op_type == "Clip":
            if op.attrs.get("min") is not None:
                lo = max(lo, float(op.attrs["min"]))
            if op.attrs.get("max") is not None:
                hi = min(hi, float(op.attrs["max"]))
        elif op.op_type != "MaxPool":
            break
        value = op.inputs[0]
    return np.full(n, lo), np.full(n, hi)


# -----------------------------------------------------------------------------------------------
# equalization
# -----------------------------------------------------------------------------------------------
class _Chain:
    """A chain's float64 weights and biases, edited in place and written back once."""

    def __init__(self, sim, chain):
        self.sim = sim
        self.ops = [chain[0][0]] + [link[2] for link in chain]
        self.links = [link[1] for link in chain]
        self.kinds = [_kind(op) for op in self.ops]
        self.w, self.b = [], []
        for op in self.ops:
            m = op.module
            self.w.append(m.weight.detach().double().clone())
            self.b.append(m.bias.detach().double().clone() if m.bias is not None
                          else torch.zeros(m.weight.shape[0], dtype=torch.float64))

    def in_ranges(self, k: int) -> np.ndarray:
        """r2: per input channel range of layer k."""
        w = self.w[k].abs()
        if self.kinds[k] == "dw":
            return w.flatten(1).amax(1).numpy()
        return w.transpose(0, 1).flatten(1).amax(1).numpy()

    def out_ranges(self, k: int) -> np.ndarray:
        return self.w[k].abs().flatten(1).amax(1).numpy()

    def pre_bounds(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(lo, hi) of every layer's pre-activation per channel, with the current weights."""
        op0 = self.ops[0]
        n_in = self.w[0].shape[0] if self.kinds[0] == "dw" else self.w[0].shape[1]
        lo, hi = _source_bounds(self.sim, op0.inputs[0], n_in)
        res = []
        for k, op in enumerate(self.ops):
            padded = op.op_type == "Conv" and any(op.attrs["pads"])
            plo, phi = _mac_bounds(self.kinds[k], self.w[k].numpy(), self.b[k].numpy(), lo, hi, padded)
            res.append((plo, phi))
            if k < len(self.links):
                clo, chi = _clamp_of(self.links[k])
                lo, hi = np.clip(plo, clo, chi), np.clip(phi, clo, chi)
        return res

    def scale(self, k: int, s: np.ndarray) -> None:
        """Output channels of layer k divided by s, input channels of layer k+1 multiplied by s."""
        st = torch.as_tensor(s, dtype=torch.float64)
        shape = [-1] + [1] * (self.w[k].dim() - 1)
        self.w[k] /= st.reshape(shape)
        self.b[k] /= st
        if self.kinds[k + 1] == "dw":
            self.w[k + 1] *= st.reshape(shape)
        else:
            self.w[k + 1] *= st.reshape([1, -1] + [1] * (self.w[k + 1].dim() - 2))

    def absorb(self, k: int, c: np.ndarray) -> None:
        ct = torch.as_tensor(c, dtype=torch.float64)
        self.b[k] -= ct
        w2 = self.w[k + 1]
        if self.kinds[k + 1] == "dw":
            self.b[k + 1] += w2.flatten(1).sum(1) * ct
        else:
            self.b[k + 1] += w2.flatten(2).sum(2) @ ct

    @torch.no_grad()
    def write_back(self) -> None:
        for op, w, b in zip(self.ops, self.w, self.b):
            m = op.module
            m.weight.copy_(w.to(m.weight.dtype))
            if m.bias is None:
                m.bias = torch.nn.Parameter(b.to(m.weight.dtype))
            else:
                m.bias.copy_(b.to(m.bias.dtype))


def _bounded(acts) -> bool:
    return math.isfinite(_clamp_of(acts)[1])


def _limits(ch: _Chain, k: int, relu6: str):
    """Per channel lower limit of s (0 = none) and a mask of channels that must keep s = 1."""
    n = ch.w[k].shape[0]
    lim, fixed = np.zeros(n), np.zeros(n, bool)
    hi = _clamp_of(ch.links[k])[1]
    if relu6 != "scale_bound" or not math.isfinite(hi):
        return lim, fixed
    u = ch.pre_bounds()[k][1]
    fixed = u > hi
    lim = np.where(fixed, 0.0, np.maximum(u, 0.0) / hi)
    return lim, fixed


def equalize(sim, batches=None, *, relu6: str = "scale_bound", absorb_high_bias: bool = True,
             tol: float = 1e-6, max_iter: int = 200, progress: bool = True) -> list[dict]:
    """Cross-layer equalization (and high-bias absorption) of ``sim``'s folded float layers, in place.

    Afterwards the weight (and bias) encodings are recomputed from the new weights when the sim has
    been calibrated; activation ranges of the equalized tensors change, so pass ``batches`` to
    recalibrate (``sim.calibrate(batches)``), or calibrate afterwards.

    Returns one dict per equalized pair: ``first``, ``second`` (layer names), ``acts`` (op types
    between), ``scale_min``/``scale_max`` (of the product of all sweeps' scales), ``fixed`` (channels
    kept at scale 1 because they may hit a ReLU6 bound), ``limited`` (channels whose scale was limited
    to keep the bound exact), ``absorbed`` (channels with a high bias absorbed), ``iterations``.
    """
    if relu6 not in RELU6_MODES:
        raise HwsimError(f"equalize: relu6 must be one of {RELU6_MODES}, found {relu6!r}")
    stats = bn_statistics(sim)
    chains = find_chains(sim)
    if relu6 == "relu":
        for chain in chains:
            for _, acts, _ in chain:
                for a in acts:
                    if a.op_type == "Clip" and a.attrs.get("max") is not None:
                        a.op_type, a.attrs = "Relu", {}
    elif relu6 == "skip":  # cut every chain at bounded links
        cut = []
        for chain in chains:
            part = []
            for link in chain:
                if _bounded(link[1]):
                    if part:
                        cut.append(part)
                    part = []
                else:
                    part.append(link)
            if part:
                cut.append(part)
        chains = cut
    it = chains
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(chains, desc="equalize", unit="chain", leave=False)
    report = []
    for chain in it:
        report += _equalize_chain(sim, chain, relu6, absorb_high_bias, stats, tol, max_iter)
    if batches is not None:
        sim.calibrate(batches, progress=progress)
    elif all(q.encoding is not None for q in sim.act_q.values()) and len(sim.act_q):
        sim.set_weight_encodings()
    return report


def _equalize_chain(sim, chain, relu6, absorb, stats, tol, max_iter) -> list[dict]:
    ch = _Chain(sim, chain)
    n_pairs = len(ch.links)
    total = [np.ones(ch.w[k].shape[0]) for k in range(n_pairs)]
    fixed_n, limited_n = [0] * n_pairs, [0] * n_pairs
    iters = 0
    for iters in range(1, max_iter + 1):
        moved = 0.0
        for k in range(n_pairs):
            r1, r2 = ch.out_ranges(k), ch.in_ranges(k + 1)
            ok = (r1 > 0) & (r2 > 0)
            s = np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)
            lim, fixed = _limits(ch, k, relu6)
            limited = ~fixed & (s < lim)
            s = np.where(fixed, 1.0, np.maximum(s, lim))
            fixed_n[k], limited_n[k] = int(fixed.sum()), int(limited.sum())
            ch.scale(k, s)
            total[k] *= s
            name = chain[k][0].name
            if name in stats:
                mean, std = stats[name]
                stats[name] = (mean / s, std / s)
            moved = max(moved, float(np.abs(np.log(s)).max()))
        if moved < tol:
            break
    absorbed = [0] * n_pairs
    if absorb:
        for k in range(n_pairs):
            name = chain[k][0].name
            lo_clamp = _clamp_of(ch.links[k])[0]
            if name not in stats or lo_clamp != 0.0:
                continue
            mean, std = stats[name]
            c = np.maximum(0.0, mean - 3.0 * std)
            _, fixed = _limits(ch, k, relu6)  # channels that may reach a ReLU6 bound keep their bias
            c = np.where(fixed, 0.0, c)
            ch.absorb(k, c)
            stats[name] = (mean - c, std)
            absorbed[k] = int((c > 0).sum())
    ch.write_back()
    out = []
    for k in range(n_pairs):
        out.append(dict(first=chain[k][0].name, second=chain[k][2].name,
                        acts=[a.op_type for a in chain[k][1]], scale_min=float(total[k].min()),
                        scale_max=float(total[k].max()), fixed=fixed_n[k], limited=limited_n[k],
                        absorbed=absorbed[k], iterations=iters))
    return out


__all__ = ["equalize", "find_chains", "bn_statistics", "RELU6_MODES"]
