"""Torch-side helpers shared by stages: save/load a module artifact, count, evaluate."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any


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


def count_params_macs(module: Any, example: Any) -> tuple[int, int]:
    """Parameters and multiply-accumulates for one sample (Torch-Pruning's counter).
    `example`: one sample of every input (Arrays), or a per-sample shape (one float input)."""
    import torch
    import torch_pruning as tp

    from .arrays import head, to_torch

    if isinstance(example, dict):
        args = to_torch(head(example, 1))
    else:
        args = (torch.zeros((1, *example)),)
    was_training = module.training
    module.eval()
    macs, params = tp.utils.count_ops_and_params(module, args if len(args) > 1 else args[0])
    module.train(was_training)
    return int(params), int(macs)


def fp32_size_bytes(module: Any) -> int:
    return int(sum(t.numel() * t.element_size() for t in module.state_dict().values()))

