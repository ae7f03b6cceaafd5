"""Data as users have it: named inputs with their own dtypes, optional or shaped targets,
few samples, subsets drawn at random (stratified), and leaks between splits refused."""
from __future__ import annotations

import numpy as np
import pytest

from edgepack.config import DataConfig
from edgepack.errors import UsageError
from edgepack.inputs.data import MIN_CALIBRATION, Split, draw, load_data


def _text(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 64, (n, 16)).astype(np.int64)
    mask = (np.arange(16)[None] < rng.integers(6, 17, n)[:, None]).astype(np.int64)
    return {"x.input_ids": ids * mask, "x.attention_mask": mask}


def test_named_inputs_keep_their_dtypes_and_order(tmp_path):
    path = tmp_path / "text.npz"
    np.savez(path, **_text(120))
    ds = load_data(path, DataConfig(), calibration_samples=256)
    assert list(ds.evaluation.x) == ["input_ids", "attention_mask"]
    assert all(v.dtype == np.int64 for v in ds.calibration.x.values())
    assert ds.evaluation.y is None and ds.labels == []
    assert len(ds.calibration) + len(ds.evaluation) == 120
    # fewer calibration samples than asked for: all of them, said in a note
    assert any("fewer than quantize.calibration_samples = 256" in n for n in ds.notes)


def test_only_dotted_names_are_inputs(tmp_path):
    # x_<name> is not the convention: scikit-learn's x_train / x_test are not two inputs
    arrays = {k.replace("x.", "x_"): v for k, v in _text(80).items()}
    np.savez(tmp_path / "t.npz", **arrays)
    with pytest.raises(UsageError, match="missing array"):
        load_data(tmp_path / "t.npz", DataConfig(), calibration_samples=32)


@pytest.mark.parametrize("y, kind", [
    (np.zeros((100, 8, 8), np.int64), "dense class ids"),
    (np.zeros((100, 3), np.float32), "regression values"),
])
def test_targets_of_any_shape(tmp_path, y, kind):
    x = np.random.default_rng(0).normal(size=(100, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_data(tmp_path / "d.npz", DataConfig(), calibration_samples=32)
    assert ds.evaluation.y.shape[1:] == y.shape[1:], kind


def test_named_targets(tmp_path):
    x = np.random.default_rng(0).normal(size=(100, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, **{"y.boxes": np.zeros((100, 4), np.float32),
                                         "y.anchor": np.zeros(100, np.int64)})
    ds = load_data(tmp_path / "d.npz", DataConfig(), calibration_samples=32)
    assert set(ds.evaluation.y) == {"boxes", "anchor"} and len(ds.evaluation.y["boxes"]) == len(ds.evaluation)


def test_below_the_calibration_floor_exits_2(tmp_path):
    x = np.random.default_rng(0).normal(size=(2 * MIN_CALIBRATION - 10, 4)).astype(np.float32)
    np.savez(tmp_path / "small.npz", x=x)
    with pytest.raises(UsageError, match=f"quantization needs at least {MIN_CALIBRATION}"):
        load_data(tmp_path / "small.npz", DataConfig(), calibration_samples=256)


def test_split_is_stratified_by_class(tmp_path):
    # Sorted by class, as an image folder is read: every class must reach both parts.
    y = np.repeat(np.arange(4), 30)
    x = np.random.default_rng(0).normal(size=(120, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "sorted.npz", x=x, y=y)
    ds = load_data(tmp_path / "sorted.npz", DataConfig(), calibration_samples=32)
    assert np.bincount(ds.evaluation.y).tolist() == [15, 15, 15, 15]
    assert ds.split["method"] == "seeded random, stratified by class"


def test_draw_is_seeded_stratified_and_never_the_first_n():
    y = np.repeat(np.arange(5), 40)                     # class-sorted, as an image folder
    split = Split({"input": np.arange(200, dtype=np.float32)[:, None]}, y)
    sub, info = draw(split, 50, seed=0)
    assert np.bincount(sub.y).tolist() == [10] * 5
    again, info2 = draw(split, 50, seed=0)
    assert info["indices_sha256"] == info2["indices_sha256"]
    assert draw(split, 50, seed=1)[1]["indices_sha256"] != info["indices_sha256"]
    assert info["method"] == "seeded random, stratified by class"


def test_training_data_that_holds_evaluation_samples_exits_2(tmp_path):
    x = np.random.default_rng(0).normal(size=(100, 1, 4, 4)).astype(np.float32)
    y = np.arange(100) % 2
    np.savez(tmp_path / "all.npz", x=x, y=y)
    with pytest.raises(UsageError, match=r"all.npz and all.npz: \d+ of the training samples are also evaluation"):
        load_data(tmp_path / "all.npz", DataConfig(), calibration_samples=32, train_spec=tmp_path / "all.npz")
    ds = load_data(tmp_path / "all.npz", DataConfig(allow_overlap=True), calibration_samples=32,
                   train_spec=tmp_path / "all.npz")
    assert len(ds.train) == 100


def test_given_calibration_and_evaluation_that_share_samples_exit_2(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    np.savez(tmp_path / "calibration.npz", x=x[:40], y=np.zeros(40, np.int64))
    np.savez(tmp_path / "evaluation.npz", x=x[30:], y=np.zeros(30, np.int64))
    with pytest.raises(UsageError, match="10 of the calibration samples are also evaluation samples"):
        load_data(tmp_path, DataConfig(), calibration_samples=32)


def test_labels_txt_is_one_label_per_line_spaces_included(tmp_path, tiny_data):
    x, y = tiny_data(80, classes=4)
    np.savez(tmp_path / "calibration.npz", x=x[:40], y=y[:40])
    np.savez(tmp_path / "evaluation.npz", x=x[40:], y=y[40:])
    (tmp_path / "labels.txt").write_text("sea lion\ncat\ngreat white shark\ndog\n")
    data = load_data(tmp_path, DataConfig(), calibration_samples=16)
    assert data.labels == ["sea lion", "cat", "great white shark", "dog"]
