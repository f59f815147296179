"""Data and models shared by the benchmarks: MNIST / Fashion-MNIST from ../shared/data (idx files),
and CNNs trained here with a fixed seed, cached in benchmarks/.cache (small state dicts)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CACHE = Path(__file__).resolve().parent / ".cache"
# fixed training budgets of the issue-6/7 models (2-core CPU: the MobileNetV2-style net is 3x slower per step)
TRAINING = {"fmnist-resnet": dict(epochs=3, n=60000), "fmnist-mobilenetv2": dict(epochs=2, n=30000)}


def idx(path):
    b = gzip.open(path).read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(b, np.uint8, offset=4 + 4 * nd).reshape(dims)


def load(name):
    d = DATA / name
    x = lambda f: (idx(d / f).astype(np.float32) / 255.0)[:, None]  # noqa: E731
    return (x("train-images-idx3-ubyte.gz"), idx(d / "train-labels-idx1-ubyte.gz").astype(np.int64),
            x("t10k-images-idx3-ubyte.gz"), idx(d / "t10k-labels-idx1-ubyte.gz").astype(np.int64))


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 16, 5, padding=2), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 5, padding=2), nn.BatchNorm2d(32)
        self.fc1, self.fc2 = nn.Linear(32 * 7 * 7, 64), nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class SeparableFMNIST(nn.Module):
    def __init__(self, w=16):
        super().__init__()
        layers, cin = [], 1
        self.stem, self.stem_bn = nn.Conv2d(1, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w)
        self.blocks = nn.ModuleList()
        for cout, s in ((2 * w, 1), (4 * w, 2), (4 * w, 1)):
            cin = self.blocks[-1][3].out_channels if self.blocks else w
            self.blocks.append(nn.ModuleList([nn.Conv2d(cin, cin, 3, s, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                                              nn.ReLU6(), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                              nn.ReLU6()]))
        del layers
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4 * w, 10)

    def forward(self, x):
        x = F.relu6(self.stem_bn(self.stem(x)))
        for dw, bn1, r1, pw, bn2, r2 in self.blocks:
            x = r2(bn2(pw(r1(bn1(dw(x))))))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResidualFMNIST(nn.Module):
    def __init__(self, w=16):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.a1, self.a1_bn = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.a2, self.a2_bn = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.b1, self.b1_bn = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.b2, self.b2_bn = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.proj, self.proj_bn = nn.Conv2d(w, 2 * w, 1, stride=2, bias=False), nn.BatchNorm2d(2 * w)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(2 * w, 10)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.relu(x + self.a2_bn(self.a2(F.relu(self.a1_bn(self.a1(x))))))
        y = self.b2_bn(self.b2(F.relu(self.b1_bn(self.b1(x)))))
        x = F.relu(self.proj_bn(self.proj(x)) + y)
        return self.fc(torch.flatten(self.pool(x), 1))


def trained(name, cls, x, y, epochs=2, n=20000, lr=2e-3, clip=None):
    """``cls()`` trained on ``x[:n], y[:n]`` (Adam, one-cycle above 2 epochs, batch 128, seed 0;
    ``clip``: gradient-norm clipping), cached as ``benchmarks/.cache/<name>.pt``."""
    path = CACHE / f"{name}.pt"
    model = cls()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * ((min(n, len(x)) + 127) // 128)) if epochs > 2 else None
    xt, yt = torch.from_numpy(x[:n]), torch.from_numpy(y[:n])
    model.train()
    for ep in range(epochs):
        print(f"training {name}: epoch {ep + 1}/{epochs}", flush=True)
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            b = perm[i:i + 128]
            opt.zero_grad()
            F.cross_entropy(model(xt[b]), yt[b]).backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if sched is not None:
                sched.step()
    CACHE.mkdir(exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand (BN, ReLU6) -> 3x3 depthwise (BN, ReLU6) -> 1x1 project (BN,
    linear), with the identity shortcut when the stride is 1 and the widths match."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
        layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.body(x) if self.use_res else self.body(x)


class MobileNetV2FMNIST(nn.Module):
    """A MobileNetV2-style network for 28x28 inputs: stem, 7 inverted residual blocks (t, c, n, s) =
    (1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 48, 2, 1), a 1x1 conv to 128, global pooling, FC."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        blocks, cin = [], 16
        for t, c, n, s in ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 48, 2, 1)):
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(cin, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6())
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(128, classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convs with BN, ReLU after the sum, 1x1 projection (BN) when the
    stride or the width changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(y + (x if self.proj is None else self.proj(x)))


class ResNetFMNIST(nn.Module):
    """A ResNet-style network (ResNet-8 layout) for 28x28 inputs: stem 16, stages of basic blocks at
    widths 16, 32 (stride 2), 64 (stride 2), global pooling, FC."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layers = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))
