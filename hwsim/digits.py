"""The embedded default: scikit-learn's bundled digits (8x8 images, no download) and the two demo
CNNs, trained here with a fixed seed in a few seconds (cached next to the user's data).

- :class:`SeparableNet`: depthwise-separable blocks (depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN +
  ReLU6), the MobileNet pattern.
- :class:`ResidualNet`: a ResNet-style basic block (two 3x3 convs with BN, an identity shortcut and
  a residual Add + ReLU), average pooling and a classifier.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def load_digits_split(n_train: int = 1200):
    """(x_train, y_train, x_test, y_test): float32 NCHW images in [0, 1], int64 labels, a fixed split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], y[idx]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


class SeparableNet(nn.Module):
    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.dw1 = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.dw1_bn = nn.BatchNorm2d(width)
        self.pw1 = nn.Conv2d(width, 2 * width, 1, bias=False)
        self.pw1_bn = nn.BatchNorm2d(2 * width)
        self.dw2 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, groups=2 * width, bias=False)
        self.dw2_bn = nn.BatchNorm2d(2 * width)
        self.pw2 = nn.Conv2d(2 * width, 2 * width, 1, bias=False)
        self.pw2_bn = nn.BatchNorm2d(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = F.relu6(self.stem_bn(self.stem(x)))
        x = F.relu6(self.dw1_bn(self.dw1(x)))
        x = F.relu6(self.pw1_bn(self.pw1(x)))
        x = F.relu6(self.dw2_bn(self.dw2(x)))
        x = F.relu6(self.pw2_bn(self.pw2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResidualNet(nn.Module):
    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.c1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.c1_bn = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.c2_bn = nn.BatchNorm2d(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.down_bn = nn.BatchNorm2d(2 * width)
        self.pool = nn.AvgPool2d(4)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        y = F.relu(self.c1_bn(self.c1(x)))
        y = self.c2_bn(self.c2(y))
        x = F.relu(x + y)
        x = F.relu(self.down_bn(self.down(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


MODELS = {"separable": SeparableNet, "residual": ResidualNet}


def cache_dir() -> Path:
    base = os.environ.get("HWSIM_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                          os.path.expanduser("~/.cache"), "hwsim")
    return Path(base)


def train(name: str, x: np.ndarray, y: np.ndarray, epochs: int = 15, seed: int = 0) -> nn.Module:
    """Train a demo CNN with a fixed seed (Adam, cosine schedule, batch 64): a few seconds on a CPU."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()
        sched.step()
    return model.eval()


SHIPPED = Path(__file__).parent / "checkpoints"


def pretrained(name: str, x_train: np.ndarray, y_train: np.ndarray) -> nn.Module:
    """The demo CNN ``name``: the checkpoint the project ships (``hwsim/checkpoints``, made by
    :func:`train` with seed 0), else one trained here once and cached (``$HWSIM_CACHE`` or
    ``~/.cache/hwsim``)."""
    model = MODELS[name]()
    for path in (SHIPPED / f"digits-{name}.pt", cache_dir() / f"digits-{name}-v1.pt"):
        if not path.is_file():
            continue
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval()
        except Exception:  # a stale or corrupt file is retrained, never trusted
            continue
    path = cache_dir() / f"digits-{name}-v1.pt"
    model = train(name, x_train, y_train)
    import io

    from runtime.atomic import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass  # read-only home: train again next time
    return model
