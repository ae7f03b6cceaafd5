"""The embedded default: the digits teacher architecture, its data splits and shipped weights."""
from __future__ import annotations

import numpy as np
import torch

from edgepack.inputs.default_model import WEIGHTS_PATH, load_default_teacher, make_teacher
from edgepack.inputs.digits import IMAGE_SIZE, LABELS, digits_split_indices, digits_splits


def test_teacher_shape_and_size():
    model = make_teacher().eval()
    assert sum(p.numel() for p in model.parameters()) >= 1_000_000
    with torch.no_grad():
        out = model(torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE))
    assert out.shape == (2, 10)
    names = {n for n, _ in model.named_children()}
    assert {"stem", "layer1", "layer2", "layer3", "fc"} <= names


def test_split_indices_disjoint_and_sized():
    idx = digits_split_indices(0)
    train, cal, ev = idx["train"], idx["calibration"], idx["evaluation"]
    assert (len(train), len(cal), len(ev)) == (1347, 256, 450)
    assert len(np.unique(train)) == 1347 and len(np.unique(ev)) == 450 and len(np.unique(cal)) == 256
    assert not set(ev) & set(train)
    assert not set(ev) & set(cal)
    assert set(cal) <= set(train)
    assert sorted(set(train) | set(ev)) == list(range(1797))


def test_splits_deterministic_and_typed():
    a, b = digits_splits(0), digits_splits(0)
    sizes = {"train": 1347, "calibration": 256, "evaluation": 450}
    for name, n in sizes.items():
        xa, ya = a[name]
        xb, yb = b[name]
        assert xa.shape == (n, 1, IMAGE_SIZE, IMAGE_SIZE) and xa.dtype == np.float32
        assert ya.shape == (n,) and ya.dtype == np.int64
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert set(a["evaluation"][1].tolist()) == set(range(len(LABELS)))
    other = digits_split_indices(1)["evaluation"]
    assert not np.array_equal(other, digits_split_indices(0)["evaluation"])


def test_shipped_weights_accuracy():
    assert WEIGHTS_PATH.exists()
    model = load_default_teacher()
    assert not model.training
    x, y = digits_splits(0)["evaluation"]
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    assert (pred == y).mean() >= 0.98
