"""A model that int8 breaks: a MobileNet-style depthwise network with one outlier channel.

Self-contained (imports torch and numpy only), so this file is also a user's model file
(`--model tests/zoo/outlier.py:make_model --weights ...`).

    stem  Conv3x3(3->16)-BN-ReLU                          16 x 16 x 16
    dw1   depthwise Conv3x3(16)-BN-ReLU                   the outlier layer
    pw1   Conv1x1(16->32)-BN-ReLU                         reads dw1's output
    dw2   depthwise Conv3x3(32, stride 2)-BN-ReLU          32 x 8 x 8
    pw2   Conv1x1(32->32)-BN-ReLU
    pool, fc Linear(32->4)

`make_trained()` trains it briefly on `make_data` (four classes: a brighter square in one
quadrant, in noise; 100 % on held-out data) and then gives the first depthwise layer's
channel 0 a weight range OUTLIER times the median of the other channels' (the BatchNorm
after it scaled to match), dividing the pointwise weights that read that channel by the same
factor. ReLU is positively homogeneous, so the float model computes the same function (to
float rounding, ~1e-6): only the range of dw1's output changes, one channel now OUTLIER x
wider than the rest. Per-tensor int8 activations (every target's) then round the other
channels to zero, and accuracy falls to chance (measured: LiteRT 25 %, OpenVINO 33 %,
ExecuTorch 25 %): the case cross-layer equalization and SmoothQuant exist for (Nagel et al.
2019 met it in MobileNetV2), and the one where keeping that layer (and the one reading it) in
float, or in int16 activations, restores it. At 100x the median the model loses nothing
(its classes stay two quantization levels apart), at 300x 6 pp.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

CLASSES = 4
SHAPE = (3, 16, 16)
OUTLIER = 1000.0         # the outlier channel's range, x the median of the other channels'
OUTLIER_CHANNEL = 0
OUTLIER_LAYER = "dw1.0"
BRIGHT = 0.6


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class DepthwiseNet(nn.Module):
    def __init__(self, classes: int = CLASSES, width: int = 16):
        super().__init__()
        self.stem = _conv_bn(3, width, 3)
        self.dw1 = _conv_bn(width, width, 3, groups=width)
        self.pw1 = _conv_bn(width, 2 * width, 1)
        self.dw2 = _conv_bn(2 * width, 2 * width, 3, stride=2, groups=2 * width)
        self.pw2 = _conv_bn(2 * width, 2 * width, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.pw2(self.dw2(self.pw1(self.dw1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return DepthwiseNet().eval()


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class c: a brighter 8x8 square in quadrant c, in channel c % 3, in noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.normal(0, 0.5, (n, *SHAPE)).astype(np.float32)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, c % 3, r * 8:(r + 1) * 8, col * 8:(col + 1) * 8] += BRIGHT
    return x, y.astype(np.int64)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 4, batch: int = 32, seed: int = 0) -> None:
    """Adam on cross-entropy, one thread, seeded; leaves the model in eval mode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    try:
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=gen)
            for b in range(len(xt) // batch):
                idx = order[b * batch:(b + 1) * batch]
                opt.zero_grad()
                nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


def inject_outlier(model: DepthwiseNet, factor: float = OUTLIER, channel: int = OUTLIER_CHANNEL) -> None:
    """Scale dw1's `channel` by s (conv weights and BatchNorm, exactly) and pw1's weights that
    read it by 1/s, s chosen so that the channel's range is `factor` x the others' median."""
    conv, bn = model.dw1[0], model.dw1[1]
    with torch.no_grad():
        probe = torch.from_numpy(make_data(256, seed=99)[0])
        ranges = model.dw1(model.stem(probe)).amax(dim=(0, 2, 3))
        others = ranges[[c for c in range(len(ranges)) if c != channel]]
        s = float(factor * others.median() / ranges[channel].clamp_min(1e-6))
        var = bn.running_var[channel].clone()
        conv.weight[channel] *= s
        bn.running_mean[channel] *= s
        bn.running_var[channel] = var * s * s
        # BN(s x) = gamma' (s x - s mu) / sqrt(s^2 var + eps) + beta' is s BN(x) exactly when:
        bn.weight[channel] *= torch.sqrt(var * s * s + bn.eps) / torch.sqrt(var + bn.eps)
        bn.bias[channel] *= s
        model.pw1[0].weight[:, channel] /= s


def make_trained(factor: float = OUTLIER, seed: int = 0) -> tuple[DepthwiseNet, dict[str, tuple[np.ndarray, ...]]]:
    """The trained model with its outlier, and {"train", "data"} (x, y) splits from disjoint seeds:
    512 training samples, 512 for calibration and evaluation."""
    model = make_model()
    x, y = make_data(512, seed=2 * seed + 1)
    train(model, x, y, seed=seed)
    inject_outlier(model, factor)
    return model, {"train": (x, y), "data": make_data(512, seed=2 * seed + 2)}


def write_files(root: Path, factor: float = OUTLIER, n_train: int = 256,
                trained: tuple[DepthwiseNet, dict] | None = None) -> dict[str, Path]:
    """weights.pt, data.npz and train.npz under `root`, as a user hands them to edgepack
    (`trained`: make_trained's result, when the caller has it already)."""
    root.mkdir(parents=True, exist_ok=True)
    model, splits = trained or make_trained(factor)
    torch.save(model.state_dict(), root / "weights.pt")
    np.savez(root / "data.npz", x=splits["data"][0], y=splits["data"][1])
    x, y = splits["train"]
    np.savez(root / "train.npz", x=x[:n_train], y=y[:n_train])
    return {"model": Path(__file__).resolve(), "weights": root / "weights.pt", "data": root / "data.npz",
            "train": root / "train.npz"}
