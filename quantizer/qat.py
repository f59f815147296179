"""Quantization-aware training of a simulation model, with learned (LSQ) or fixed ranges.

The fast simulation model (``sim.mode = "fast"``) is an ``nn.Module`` whose parameters are the
batch-norm-folded layer weights and biases (what is exported), plus, after
:func:`enable_range_learning`, the quantizers' learned scales and zero points (LSQ / LSQ+, see
:class:`hwsim.sim.Quantizer`). Its forward value is the target's fake quantization exactly, so
training sees what the hardware computes; gradients are straight-through.

Lifecycle of learned ranges:

1. ``sim.calibrate(...)``: the initial encodings.
2. :func:`enable_range_learning`: scales (and asymmetric activations' zero points) become parameters.
3. Train, with :func:`qat` or a loop of your own over ``sim.parameters()``.
4. :func:`freeze_ranges`: the learned values become the encodings (float32 scale, int zero point),
   bias encodings are recomputed at ``s_x * s_w``, and exact mode, export and the integer runtime use
   exactly what was trained. (:func:`sync_ranges` does the same but keeps learning on, e.g. to
   evaluate in exact mode between epochs.) Exact mode and export refuse to run on stale encodings.

While learning, biases are fake-quantized at the last synced ``s_x * s_w`` (an int32 grid, whose
step is far below an accumulator LSB of the output); :func:`sync_ranges` / :func:`freeze_ranges`
move them to the learned scales.

>>> import torch, hwsim
>>> torch.manual_seed(0) and None
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> sim = hwsim.simulate(net, "dsp-int8", torch.zeros(1, 4))
>>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
>>> sim.calibrate([x], progress=False)
>>> res = qat(sim, [(x, y)], epochs=2, lr=1e-3, progress=False)
>>> len(res["losses"]), any(q.learning for q in sim.act_q.values())
(2, False)
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from runtime.errors import DataError, HwsimError
from hwsim.graph import RECURRENT

__all__ = ["enable_range_learning", "sync_ranges", "freeze_ranges", "range_parameters", "weight_parameters",
           "qat"]


def _check_calibrated(sim) -> None:
    missing = [q.tensor_name for q in list(sim.act_q.values()) + list(sim.weight_q.values()) if q.encoding is None]
    if missing:
        raise HwsimError(f"QAT needs a calibrated simulation model; {len(missing)} tensors have no encoding "
                         f"(e.g. {missing[0]!r}): call sim.calibrate(...) first")


def enable_range_learning(sim, activations: bool = True, weights: bool = True) -> list[str]:
    """Make the scales of the activation and/or weight quantizers trainable (LSQ), initialized from
    their calibrated encodings; asymmetric activations learn their zero point too (LSQ+). Bias
    scales stay derived (``s_x * s_w``). Returns the names of the tensors now learning."""
    _check_calibrated(sim)
    names = []
    for on, qs in ((activations, sim.act_q), (weights, sim.weight_q)):
        if on:
            for q in qs.values():
                q.learn_range()
                names.append(q.tensor_name)
    return names


def _quantizers(sim):
    return list(sim.act_q.values()) + list(sim.weight_q.values())


def sync_ranges(sim) -> None:
    """Write every learned range into its encoding and recompute the bias encodings from the new
    scales (``sim._set_bias_encoding``), keeping learning on."""
    changed = False
    for q in _quantizers(sim):
        if q.learning:
            q.sync_encoding()
            changed = True
    if changed:
        _refresh_biases(sim)


def freeze_ranges(sim) -> None:
    """End range learning: the learned values become the encodings (float32 scale, int zero point),
    bias encodings are recomputed at ``s_x * s_w``; exact mode, export and the runtime then use
    exactly the trained ranges. A no-op for a model that is not learning."""
    changed = False
    for q in _quantizers(sim):
        if q.learning:
            q.freeze_range()
            changed = True
    if changed:
        _refresh_biases(sim)


def _refresh_biases(sim) -> None:
    for g in sim.groups:
        k = g.name.replace(".", "_")
        if g.op_type in RECURRENT or (k in sim.weight_q and sim.weight_q[k].encoding is not None
                                            and k in sim.bias_q):
            sim._set_bias_encoding(g)


def range_parameters(sim) -> list[torch.nn.Parameter]:
    """The learned scales and zero points (empty unless ranges are learning)."""
    return [p for q in _quantizers(sim) if q.learning for p in q.parameters()]


def weight_parameters(sim) -> list[torch.nn.Parameter]:
    """The folded layers' weights and biases (what export writes)."""
    return list(sim.layers.parameters())


def qat(sim, train_batches, epochs: int = 1, lr: float = 1e-4, learn_ranges: bool = True,
        loss_fn=F.cross_entropy, progress: bool = True, eval_fn=None, range_lr: float | None = None) -> dict:
    """Fine-tune the fast simulation model with Adam: ``loss_fn(sim(x), y)`` over ``train_batches``
    (a re-iterable of ``(x, y)`` pairs, e.g. a list or a DataLoader) for ``epochs`` passes.

    Trains the folded weights and biases and, with ``learn_ranges``, the quantizers' scales and zero
    points (LSQ, initialized from the current encodings; learning rate ``range_lr``, default ``lr``),
    then freezes the ranges (:func:`freeze_ranges`). With ``learn_ranges=False`` the calibrated
    encodings stay as they are (weights outside the range are clamped, as in the forward pass).
    ``eval_fn(sim)``, if given, runs after each epoch with the ranges synced (exact mode and export
    work inside it); its results are returned. The model is left in fast mode.

    Returns ``{"losses": [mean loss per epoch], "step_losses": [...], "evals": [...], "seconds": t,
    "steps": n, "learned": [tensor names]}``.
    """
    _check_calibrated(sim)
    if epochs < 1:
        raise HwsimError(f"qat: epochs must be >= 1, found {epochs}")
    if epochs > 1 and iter(train_batches) is train_batches:
        raise DataError("qat: train_batches is a one-shot iterator, but epochs > 1 needs to iterate it again; pass a "
                        "list or a DataLoader")
    t0 = time.perf_counter()
    learned = enable_range_learning(sim) if learn_ranges else []
    groups = [{"params": weight_parameters(sim), "lr": lr}]
    if learn_ranges:
        groups.append({"params": range_parameters(sim), "lr": lr if range_lr is None else range_lr})
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    opt = torch.optim.Adam(groups)
    sim.mode = "fast"
    sim.train()
    res = {"losses": [], "step_losses": [], "evals": [], "learned": learned}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = len(train_batches) * epochs if hasattr(train_batches, "__len__") else None
        bar = tqdm(total=total, desc="qat", unit="batch", leave=False)
    try:
        for epoch in range(epochs):
            total, n = 0.0, 0
            for batch in train_batches:
                if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                    raise DataError(f"qat: each training batch must be an (inputs, targets) pair, found "
                                    f"{type(batch).__name__}")
                x, y = batch
                opt.zero_grad(set_to_none=True)
                out = sim(*x) if isinstance(x, (tuple, list)) else sim(x)
                loss = loss_fn(out, y)
                if not torch.isfinite(loss):
                    raise DataError(f"qat: the loss became {float(loss)} at epoch {epoch}, step {n}; lower lr")
                loss.backward()
                opt.step()
                total += float(loss.detach())
                n += 1
                res["step_losses"].append(float(loss.detach()))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{total / n:.4f}")
            if n == 0:
                raise DataError("qat: train_batches is empty")
            res["losses"].append(total / n)
            if eval_fn is not None:
                sync_ranges(sim)
                sim.eval()
                with torch.no_grad():
                    res["evals"].append(eval_fn(sim))
                sim.train()
                sim.mode = "fast"
    finally:
        if bar is not None:
            bar.close()
        sim.eval()
    freeze_ranges(sim)
    sim.mode = "fast"
    res["steps"] = len(res["step_losses"])
    res["seconds"] = time.perf_counter() - t0
    return res
