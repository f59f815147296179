"""Small torch models that exercise every op the simulator lowers (shared by the hwsim tests)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResDW(nn.Module):
    """Conv+BN+ReLU, depthwise+BN+ReLU6, 1x1 conv, residual Add+ReLU, MaxPool, GAP, Linear."""

    def __init__(self, c=8, classes=10, k=3, stride=1):
        super().__init__()
        self.c1 = nn.Conv2d(1, c, k, stride=stride, padding=k // 2)
        self.b1 = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.b2 = nn.BatchNorm2d(c)
        self.pw = nn.Conv2d(c, c, 1)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        z = F.relu6(self.b2(self.dw(y)))
        z = torch.relu(self.pw(z) + y)
        z = self.gap(self.pool(z)).flatten(1)
        return self.fc(z)


class Branchy(nn.Module):
    """Two branches concatenated, AvgPool with padding, an elementwise Mul, a view, a standalone ReLU."""

    def __init__(self, c=6, classes=5):
        super().__init__()
        self.a = nn.Conv2d(1, c, 3, padding=1)
        self.b = nn.Conv2d(1, c, 5, padding=2, bias=False)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.m = nn.Conv2d(2 * c, 2 * c, 1)
        self.fc = nn.Linear(2 * c * 4 * 4, classes)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), self.b(x)], 1)
        y = self.avg(y)
        y = F.relu(self.m(y) * y)
        return self.fc(y.view(y.size(0), -1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return model.eval()


def images(n: int, seed: int, size: int = 8) -> torch.Tensor:
    """n single-channel size x size images in [0, 1), reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, size, size), generator=g)


def small_calibrated_sim(target: str, n: int = 64):
    """A ResDW(c=8, 5 classes) simulated on ``target`` and calibrated on n images (two halves)."""
    import hwsim

    torch.manual_seed(0)
    model = randomize_bn(ResDW(c=8, classes=5), seed=1)
    x = images(n, 2)
    sim = hwsim.simulate(model, target, x[:1])
    sim.calibrate([x[: n // 2], x[n // 2:]], progress=False)
    return sim, x
