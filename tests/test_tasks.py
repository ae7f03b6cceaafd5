"""Tasks: which metric gates, how it is computed, and which the data implies."""
from __future__ import annotations

import numpy as np
import pytest

from edgepack.config import TaskConfig
from edgepack.errors import UsageError
from edgepack.tasks import agreement_metrics, classification_metrics, neighbours_kept, resolve_task


def test_classification_top1_top5_and_dense():
    logits = np.eye(6, dtype=np.float32)[[0, 1, 2, 3, 4, 5]]
    y = np.array([0, 1, 2, 3, 4, 0])
    m = classification_metrics(logits, y)
    assert m["top1"] == pytest.approx(500 / 6) and m["top5"] == pytest.approx(100.0)
    dense = np.zeros((2, 2, 4, 4), np.float32)
    dense[:, 1, :2] = 1.0                                   # class 1 on the top half
    mask = np.zeros((2, 4, 4), np.int64)
    mask[:, :2] = 1
    d = classification_metrics(dense, mask)
    assert d["pixel_accuracy"] == 100.0 and d["miou"] == 100.0


def test_agreement_metrics_sqnr_cosine_and_neighbours():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(50, 16))
    noisy = teacher + rng.normal(scale=0.1, size=teacher.shape)
    m = agreement_metrics([noisy], [teacher])
    assert 18 < m["sqnr_db_min"] < 22                     # signal 1, noise 0.01: 20 dB
    assert m["cosine_min"] > 0.99
    assert m["outputs"][0]["neighbours_kept"] > 70
    assert neighbours_kept(teacher, teacher) == 100.0
    assert agreement_metrics([teacher], [teacher])["sqnr_db_min"] == 99.0


@pytest.mark.parametrize("targets, outputs, kind, metric", [
    (np.array([0, 1]), [np.zeros((2, 3))], "classification", "top1"),
    (np.zeros((2, 8, 8), np.int64), [np.zeros((2, 2, 8, 8))], "classification", "pixel_accuracy"),
    (np.zeros((2, 3), np.float32), [np.zeros((2, 3))], "regression", "mae"),
    (None, [np.zeros((2, 32))], "agreement", "sqnr_db"),
])
def test_auto_task_follows_the_targets(targets, outputs, kind, metric):
    task = resolve_task(TaskConfig(), outputs, targets, "data.npz")
    assert (task.kind, task.metric) == (kind, metric)


def test_targets_that_fit_no_task_exit_2():
    with pytest.raises(UsageError, match="set task.kind"):
        resolve_task(TaskConfig(), [np.zeros((2, 3))], np.zeros((2, 7), np.float32), "data.npz")
    with pytest.raises(UsageError, match="needs targets"):
        resolve_task(TaskConfig(kind="regression"), [np.zeros((2, 3))], None, "data.npz")


def test_user_metric_gates_on_its_key(tmp_path):
    (tmp_path / "m.py").write_text(
        "import numpy as np\n"
        "def err(outputs, targets):\n"
        "    return {'err': float(np.abs(outputs[0] - targets).mean()), 'other': 1.0}\n")
    y = np.zeros((4, 2), np.float32)
    task = resolve_task(TaskConfig(higher_is_better=False, max_drop=0.1), [y], y, "d.npz",
                        f"{tmp_path / 'm.py'}:err")
    assert (task.kind, task.metric) == ("custom", "err")
    teacher = task.evaluate([y], y)
    worse = task.evaluate([y + 0.5], y)
    assert task.gate(teacher, teacher, 1.0)["passed"]
    gate = task.gate(worse, teacher, 1.0)
    assert not gate["passed"] and gate["drop"] == pytest.approx(0.5) and "task.max_drop" in gate["why"]


def test_agreement_gate_uses_the_worst_output():
    task = resolve_task(TaskConfig(min_sqnr_db=30), [np.zeros((2, 4))], None, "d.npz")
    rng = np.random.default_rng(1)
    t = [rng.normal(size=(20, 4)), rng.normal(size=(20, 3))]
    good = task.evaluate([t[0], t[1] + 1e-3], None, t)
    bad = task.evaluate([t[0], t[1] + rng.normal(scale=0.3, size=(20, 3))], None, t)
    assert task.gate(good, None, 1.0)["passed"]
    assert not task.gate(bad, None, 1.0)["passed"]
