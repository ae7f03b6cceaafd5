"""The validate stage's per-device accuracy gate (the stage end to end runs in tests/pipeline)."""
from __future__ import annotations

from edgepack.stages.validate import gate_devices


def entry(name: str, accuracy: float) -> dict:
    return {"name": name, "accuracy": accuracy}


def test_a_device_that_computes_differently_fails_the_gate():
    host, arm, board = entry("host", 99.0), entry("qemu-aarch64", 28.0), entry("board", 98.8)
    notes = gate_devices([host, arm, board], host, teacher_acc=99.5, budget=1.0)
    assert "gate_failed" not in host and "gate_failed" not in board
    assert arm["drop_pp"] == 71.5 and arm["accuracy_vs_gate_pp"] == -71.0
    assert notes == ["device qemu-aarch64: accuracy 28.00 % on this device (-71.00 pp against host): "
                     "drop 71.50 pp exceeds validate.max_accuracy_drop_pp = 1.0"]
    assert board["drop_pp"] == 0.7 and board["accuracy_vs_gate_pp"] == -0.2


def test_the_gate_device_itself_is_judged_by_the_main_gate_only():
    host = entry("host", 90.0)
    assert gate_devices([host], host, teacher_acc=99.5, budget=1.0) == []
    assert host["drop_pp"] == 9.5 and "gate_failed" not in host
