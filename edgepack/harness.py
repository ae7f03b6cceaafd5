"""Runs an artifact on a device through the device runner and scores its outputs.

Shared by the stages that need a real runtime's answer (quantize for the host
accuracy, validate for every device): the runner is the only thing that loads the
converted file, on the host exactly as on a board.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import Artifact
from .torchmodel import accuracy, agreement


def run_artifact(target: Any, artifact: Artifact, device: Any, x_nchw: np.ndarray, workdir: Path, *,
                 warmup: int = 0, runs: int = 1, threads: int | None = 1, timeout_s: float | None = None) -> Any:
    from .devices import run_on_device

    workdir.mkdir(parents=True, exist_ok=True)
    inputs = workdir / "inputs.npz"
    np.savez(inputs, x=target.to_model_layout(x_nchw.astype(np.float32), artifact))
    return run_on_device(device, artifact.path, inputs, warmup=warmup, runs=runs, threads=threads,
                         workdir=workdir, timeout_s=timeout_s)


def score(outputs: np.ndarray, y: np.ndarray, teacher_outputs: np.ndarray | None) -> dict[str, float]:
    out = {"accuracy": accuracy(outputs, y)}
    if teacher_outputs is not None:
        out.update(agreement(outputs, teacher_outputs))
    return out
