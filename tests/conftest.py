"""Shared fixtures: a tiny real model file, its weights and a learnable data set."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

TINY_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self, classes: int = 4):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(16, classes)

        def forward(self, x):
            return self.fc(self.features(x))

    def make_model():
        return Tiny()

    def make_other():
        return Tiny(classes=7)

    def make_gelu():
        """The same weights with exact GELU (ONNX Erf), which TFLite builtins cannot run below opset 20."""
        model = Tiny()
        model.features[2] = nn.GELU()
        return model
''')


def make_tiny_data(n: int = 160, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A learnable data set: each class is a bright square in its own quadrant, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, 0, r * 4:(r + 1) * 4, col * 4:(col + 1) * 4] += 2.0
    return x, y.astype(np.int64)


@pytest.fixture(scope="session")
def tiny_data():
    """make_tiny_data(n, classes, seed) -> (x, y): more samples of the tiny problem."""
    return make_tiny_data


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A model file, trained weights and an .npz, on disk as a user would give them."""
    import importlib.util

    import torch

    root = tmp_path_factory.mktemp("tiny")
    model_py = root / "tiny_net.py"
    model_py.write_text(TINY_MODEL)
    x, y = make_tiny_data()
    np.savez(root / "data.npz", x=x, y=y)
    spec = importlib.util.spec_from_file_location("tiny_net_fixture", model_py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = mod.make_model()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    torch.save(model.state_dict(), root / "weights.pt")
    return {"root": root, "model": model_py, "weights": root / "weights.pt", "data": root / "data.npz"}


@pytest.fixture(scope="session")
def outlier_trained():
    """(model, splits): tests/zoo/outlier.py trained (~5 s) with its 1000x channel, once per session."""
    from tests.zoo import outlier

    return outlier.make_trained()


@pytest.fixture(scope="session")
def qemu_root() -> Path:
    """The aarch64 emulator's root, built once and cached ($EDGEPACK_QEMU_ROOT, else
    ~/.cache/edgepack/qemu-aarch64). Without qemu-user-static the emulator tests fail
    rather than skip: CI installs it (scripts/install-system-deps.sh)."""
    import shutil

    from edgepack.devices import load_device
    from edgepack.devices.qemu_setup import setup_qemu_root

    if not shutil.which("qemu-aarch64-static"):
        pytest.fail("qemu-aarch64-static is not installed: apt-get install qemu-user-static")
    device = load_device("qemu-aarch64")
    return setup_qemu_root(device.root_path(), runtimes=device.runtimes)
