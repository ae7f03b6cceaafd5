"""Runs an artifact on a device through the device runner and scores its outputs.

Shared by the stages that need a real runtime's answer (quantize for the host
metric, validate for every device): the runner is the only thing that loads the
converted file, on the host exactly as on a board. The task's metric runs here, on
the host, on the outputs the device returned: never on the device.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .arrays import Arrays, as_arrays, save_named
from .artifacts import Artifact


def run_artifact(target: Any, artifact: Artifact, device: Any, inputs: Arrays | np.ndarray, workdir: Path, *,
                 warmup: int = 0, runs: int = 1, threads: int | None = 1, timeout_s: float | None = None,
                 output_names: list[str] | None = None, profile: int = 0) -> Any:
    """`inputs` in the torch layout, named as the model's inputs; returns the DeviceRun."""
    from .devices import run_on_device

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "inputs.npz"
    save_named(path, target.to_model_layout(as_arrays(inputs), artifact))
    names = output_names or artifact.meta.get("output_names")
    run = run_on_device(device, artifact.path, path, warmup=warmup, runs=runs, threads=threads,
                        workdir=workdir, timeout_s=timeout_s, output_names=names, profile=profile)
    # Metrics compare with torch: outputs back in its layout (an NHWC map from onnx2tf, say);
    # raw_outputs stay as the file gives them, for the bundle's reference outputs.
    run.raw_outputs = run.outputs
    run.outputs = target.from_model_layout(run.outputs, artifact)
    return run
