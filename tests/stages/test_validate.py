"""The validate stage's per-device gate (the stage end to end runs in tests/pipeline)."""
from __future__ import annotations

from edgepack.config import TaskConfig
from edgepack.stages.validate import gate_devices
from edgepack.tasks import Task

CLASSIFICATION = Task("classification", "top1", True, "%", TaskConfig(kind="classification"))


def entry(name: str, accuracy: float, teacher: float = 99.5, budget: float = 1.0) -> dict:
    measured = {"top1": accuracy}
    return {"name": name, "accuracy": accuracy, "metrics": measured,
            "gate": CLASSIFICATION.gate(measured, {"top1": teacher}, budget)}


def test_a_device_that_computes_differently_fails_the_gate():
    host, arm, board = entry("host", 99.0), entry("qemu-aarch64", 28.0), entry("board", 98.8)
    notes = gate_devices([host, arm, board], host)
    assert "gate_failed" not in host and "gate_failed" not in board
    assert arm["gate"]["drop_pp"] == 71.5 and arm["accuracy_vs_gate"] == -71.0
    assert notes == ["device qemu-aarch64: top1 28% vs the teacher's 99.5%: 71.5% worse, more than "
                     "validate.max_accuracy_drop_pp = 1 (against host: 99.0)"]
    assert board["gate"]["drop_pp"] == 0.7 and board["accuracy_vs_gate"] == -0.2


def test_the_gate_device_itself_is_judged_by_the_main_gate_only():
    host = entry("host", 90.0)
    assert gate_devices([host], host) == []
    assert host["gate"]["drop_pp"] == 9.5 and "gate_failed" not in host
