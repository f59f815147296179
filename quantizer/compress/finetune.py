"""A short built-in fine-tuning loop for a compressed float model (any ``nn.Module``: a user's own
loop works just as well).

Adam on ``loss_fn(model(x), y)`` (cross-entropy by default) over ``(x, y)`` batches for ``epochs``
passes; batches move to the device of the model's parameters. ``data`` is a re-iterable of batches
(a list, a DataLoader) or a function returning a fresh iterable per epoch; a one-shot iterator is
accepted for a single epoch only.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from runtime.errors import HwsimError


def _epoch_batches(data, epoch: int, epochs: int):
    if callable(data):
        return data()
    if iter(data) is data and epochs > 1:
        raise HwsimError("finetune: data is a one-shot iterator but epochs > 1; pass a list, a DataLoader or a "
                         "function returning the batches")
    return data


def finetune(model: nn.Module, data, epochs: int = 1, lr: float = 1e-3, progress: bool = True,
             loss_fn=F.cross_entropy, weight_decay: float = 0.0, history: list | None = None) -> nn.Module:
    """Train ``model`` in place for ``epochs`` passes over ``data`` (module docstring) and return it in
    eval mode. The mean training loss of each epoch is appended to ``history`` when given."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise HwsimError(f"finetune: epochs must be a positive integer, found {epochs!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise HwsimError("finetune: the model has no trainable parameters")
    device = params[0].device
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    model.train()
    for epoch in range(epochs):
        it = _epoch_batches(data, epoch, epochs)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"finetune {epoch + 1}/{epochs}", unit="batch", leave=False)
        n, total = 0, 0.0
        for batch in it:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise HwsimError(f"finetune: expected (x, y) batches, found {type(batch).__name__}")
            x, y = (t.to(device) if isinstance(t, torch.Tensor) else t for t in batch)
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            n += 1
            total += float(loss.detach())
            if progress:
                it.set_postfix(loss=float(loss.detach()))
        if n == 0:
            raise HwsimError("finetune: the data has no batches")
        if history is not None:
            history.append(total / n)
    return model.eval()
