"""The zoo on disk, as a user would hand it to edgepack: a model file, trained weights,
calibration/evaluation data and training data per model, made once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    """zoo(name) -> {"model", "weights" (None: untrained), "data", "train", "metric" (or None)}."""
    import torch

    from . import data, train

    made: dict[str, dict] = {}

    def case(name: str) -> dict:
        if name not in made:
            root = tmp_path_factory.mktemp(f"zoo-{name}")
            splits = data.make_splits(name)
            files = {"model": f"{ZOO / 'models.py'}:make_{name}", "weights": None,
                     "data": data.write_npz(root / "data.npz", splits["data"]),
                     "train": data.write_npz(root / "train.npz", splits["train"]),
                     "metric": f"{ZOO / 'metrics.py'}:box_iou" if name == "detector" else None}
            if name != "text_encoder":           # the encoder is checked against itself: agreement
                torch.save(train.train(name, splits, seconds_budget=600), root / "weights.pt")
                files["weights"] = root / "weights.pt"
            made[name] = files
        return made[name]

    return case


def build_args(files: dict, target: str, out: Path, *extra: str) -> list[str]:
    """`edgepack build` for one zoo model: no training stages unless `extra` turns them on."""
    args = ["build", "-t", target, "--model", files["model"], "--data", str(files["data"]),
            "--train-data", str(files["train"]), "--out", str(out),
            "--set", "distill.enabled=false", "--set", "prune.enabled=false",
            "--set", "validate.runs=5", "--set", "validate.warmup_runs=1",
            # 96 evaluation samples: one sample is 1.04 pp; the budget allows two
            "--set", "validate.max_accuracy_drop_pp=2.5", *extra]
    if files["weights"] is not None:
        args += ["--weights", str(files["weights"])]
    if files["metric"] is not None:
        args += ["--metric", files["metric"]]
    return args
