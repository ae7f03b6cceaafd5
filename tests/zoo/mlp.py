"""A Linear-heavy MLP (768-256-128-4, 230 K parameters) for the int4-weights scheme, which is
about Linear weights: on the outlier model's data (tests/zoo/outlier.py, 3 x 16 x 16).

Self-contained (imports torch only), so this file is also a user's model file
(`--model tests/zoo/mlp.py:make_mlp --weights ...`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

MODEL = Path(__file__).resolve()


def make_mlp() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(768, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                             nn.Linear(128, 4)).eval()


def write_trained(path: Path, x, y, steps: int) -> Path:
    """Train make_mlp() a little (full-batch Adam on x, y) and save its state_dict to `path`."""
    model = make_mlp()
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    torch.save(model.eval().state_dict(), path)
    return path
