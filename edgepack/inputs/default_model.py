"""The embedded default model: a small ResNet for the 1x32x32 digits (see `digits.py`).

    stem    Conv3x3(1->48, stride 2)-BN-ReLU                 48 x 16 x 16
    layer1  2 x BasicBlock(48)                               48 x 16 x 16
    layer2  BasicBlock(48->96, stride 2, 1x1 projection)     96 x  8 x  8
            + BasicBlock(96)
    layer3  BasicBlock(96->160, stride 2, 1x1 projection)   160 x  4 x  4
            + BasicBlock(160)
    pool    AdaptiveAvgPool2d(1) + flatten                  160
    fc      Linear(160 -> num_classes)

About 1.23 M parameters and 54 M multiply-accumulates per image. Plain torch, no
in-place ops, nn.ReLU modules throughout, so torch.export / ONNX export and structured
pruning see a clean graph. The weights shipped in `assets/digits_teacher.pt` are made by
`scripts/train_default_teacher.py`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

WEIGHTS_PATH = Path(__file__).parent / "assets" / "digits_teacher.pt"
WIDTHS = (48, 96, 160)


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm, padding 'same' for odd kernels."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU, conv-BN, + shortcut, ReLU.

    The shortcut is the identity, or a 1x1 conv-BN projection when the stride or
    the channel count changes.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = conv_bn(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, int, int] = WIDTHS):
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w1, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w1),
            nn.ReLU(),
        )
        self.layer1 = nn.Sequential(BasicBlock(w1, w1), BasicBlock(w1, w1))
        self.layer2 = nn.Sequential(BasicBlock(w1, w2, stride=2), BasicBlock(w2, w2))
        self.layer3 = nn.Sequential(BasicBlock(w2, w3, stride=2), BasicBlock(w3, w3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each block: every block starts as the identity.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


def make_teacher(num_classes: int = 10) -> nn.Module:
    """The default teacher architecture, randomly initialized (train mode)."""
    return DigitsResNet(num_classes=num_classes)


def load_default_teacher() -> nn.Module:
    """The default teacher with the shipped weights, in eval mode."""
    model = make_teacher()
    state = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 32, 32)) -> int:
    """Multiply-accumulates of one forward pass (Conv2d and Linear layers)."""
    total = 0

    def hook(mod: nn.Module, inp, out) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            total += out.numel() // out.shape[0] * k
        elif isinstance(mod, nn.Linear):
            total += out.numel() // out.shape[0] * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            model(torch.zeros(input_shape))
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return total
