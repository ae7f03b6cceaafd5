"""Data loading details that a whole build would hide (the bad-input cases are in tests/cli)."""
from __future__ import annotations

from edgepack.config import DataConfig
from edgepack.inputs.data import load_data


def test_labels_txt_is_one_label_per_line_spaces_included(tmp_path, tiny_data):
    import numpy as np

    x, y = tiny_data(80, classes=4)
    np.savez(tmp_path / "calibration.npz", x=x[:40], y=y[:40])
    np.savez(tmp_path / "evaluation.npz", x=x[40:], y=y[40:])
    (tmp_path / "labels.txt").write_text("sea lion\ncat\ngreat white shark\ndog\n")
    data = load_data(tmp_path, DataConfig(), calibration_samples=16)
    assert data.labels == ["sea lion", "cat", "great white shark", "dog"]
