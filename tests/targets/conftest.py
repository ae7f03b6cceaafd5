"""Fixtures for the target adapters: a small trained residual CNN, its data, its ONNX
export, and a runner for .tflite files that answers in float (dequantized)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CLASSES = 4
SHAPE = (3, 16, 16)


def make_blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable RGB data: class c is a bright square in quadrant c, in channel c % 3, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.normal(0, 0.4, (n, *SHAPE)).astype(np.float32)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, c % 3, r * 8:(r + 1) * 8, col * 8:(col + 1) * 8] += 1.5
    return x, y.astype(np.int64)


def make_cnn():
    import torch
    from torch import nn

    class ResidualCNN(nn.Module):
        """conv-bn-relu, a residual block of two conv-bn, pool, linear."""

        def __init__(self, width: int = 16):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            self.block = nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
            self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, CLASSES))

        def forward(self, x):
            x = self.stem(x)
            x = torch.relu(x + self.block(x))
            return self.head(self.down(x))

    return ResidualCNN()


def fit(model, x: np.ndarray, y: np.ndarray, *, steps: int, batch: int) -> None:
    """Adam on cross-entropy, cycling through x in batches; leaves the model in eval mode."""
    import torch

    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    per_epoch = max(len(x) // batch, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # small tensors: more threads only spin, badly so on a busy CI box
    try:
        for step in range(steps):
            rows = slice((step % per_epoch) * batch, (step % per_epoch + 1) * batch)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[rows]), yt[rows]).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


@pytest.fixture(scope="session")
def cnn():
    """(model in eval mode, calibration x, evaluation x, evaluation y), trained to ~100 %."""
    import torch

    torch.manual_seed(0)
    model = make_cnn()
    x, y = make_blobs(512, seed=1)
    fit(model, x, y, steps=80, batch=64)
    x_eval, y_eval = make_blobs(64, seed=2)
    return model, x[:128], x_eval, y_eval


@pytest.fixture(scope="session")
def torch_logits(cnn) -> np.ndarray:
    import torch

    model, _, x_eval, _ = cnn
    with torch.no_grad():
        return model(torch.from_numpy(x_eval)).numpy()


@pytest.fixture(scope="session")
def onnx_model(cnn, tmp_path_factory):
    from edgepack.targets._onnx import export_onnx

    model, _, x_eval, _ = cnn
    return export_onnx(model, x_eval, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="session")
def blobs():
    """make_blobs(n, seed) -> (x, y), for tests that need data of their own."""
    return make_blobs


@pytest.fixture(scope="session")
def run_tflite():
    """run_tflite(path, x_nchw) -> float outputs (see _run_tflite)."""
    return _run_tflite


def _run_tflite(path: Path, x_nchw: np.ndarray, layout: str = "NHWC") -> np.ndarray:
    """Run a .tflite one sample at a time; quantize the input and dequantize the output as
    its tensors say, so that every model answers in float."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    x = x_nchw.transpose(0, 2, 3, 1) if layout == "NHWC" else x_nchw
    results = []
    for sample in x:
        sample = sample[None]
        scale, zero_point = inp["quantization"]
        if scale:
            info = np.iinfo(inp["dtype"])
            sample = np.clip(np.round(sample / scale + zero_point), info.min, info.max)
        interpreter.set_tensor(inp["index"], sample.astype(inp["dtype"]))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).astype(np.float32)
        scale, zero_point = out["quantization"]
        if scale:
            y = (y - zero_point) * scale
        results.append(y[0])
    return np.stack(results)


# -- a plain CNN on a small learnable problem (openvino-cpu, executorch-arm) ----------------------------------------------------------

def make_quadrants(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """3x16x16 images: each class is a bright quadrant, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.normal(0, 0.6, (n, 3, 16, 16)).astype(np.float32)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, :, r * 8:(r + 1) * 8, col * 8:(col + 1) * 8] += 1.0
    return x, y.astype(np.int64)


def small_cnn():
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(32, CLASSES)

        def forward(self, x):
            return self.fc(self.features(x))

    return SmallCNN()


@pytest.fixture(scope="session")
def problem():
    import torch

    torch.manual_seed(0)
    model = small_cnn()
    x, y = make_quadrants(256, seed=0)
    fit(model, x, y, steps=30, batch=256)
    ex, ey = make_quadrants(128, seed=1)
    return {"model": model, "calibration": x[:128], "x": ex, "y": ey}
