"""Torch-side helpers shared by stages: save/load a module artifact, count, evaluate."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import Artifact, atomic_write_bytes


def save_module(module: Any, path: Path, **meta: Any) -> Artifact:
    """Pickle the whole module: pruned/derived architectures cannot be rebuilt from a factory."""
    import torch

    buf = io.BytesIO()
    torch.save(module, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Artifact.from_file("torch", path, **meta)


def load_module(artifact: Artifact) -> Any:
    import torch

    # Our own cache file, written by save_module. Unpickling runs whatever the file names, so
    # the cache folder (under --out) is a trust boundary: the README says not to share it.
    module = torch.load(artifact.path, map_location="cpu", weights_only=False)
    module.eval()
    return module


def count_params_macs(module: Any, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Parameters and multiply-accumulates for one sample (Torch-Pruning's counter)."""
    import torch
    import torch_pruning as tp

    example = torch.zeros((1, *input_shape))
    was_training = module.training
    module.eval()
    macs, params = tp.utils.count_ops_and_params(module, example)
    module.train(was_training)
    return int(params), int(macs)


def fp32_size_bytes(module: Any) -> int:
    return int(sum(t.numel() * t.element_size() for t in module.state_dict().values()))


def predict(module: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import torch

    module.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(module(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))).float().numpy())
    return np.concatenate(outs).astype(np.float32)


def accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    return float((outputs.argmax(axis=1) == y).mean() * 100.0)


def agreement(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Top-1 agreement (%) and mean per-sample cosine similarity of two output sets."""
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"top1_agreement": float((a.argmax(1) == b.argmax(1)).mean() * 100.0),
            "cosine_similarity": float(cos.mean())}
