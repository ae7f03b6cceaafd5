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
    assert notes == ["device qemu-aarch64: top1 28% vs the teacher's 99.5%: 71.5 pp worse, more than "
                     "validate.max_accuracy_drop_pp = 1 (against host: 99.0)"]
    assert board["gate"]["drop_pp"] == 0.7 and board["accuracy_vs_gate"] == -0.2


def test_the_gate_device_itself_is_judged_by_the_main_gate_only():
    host = entry("host", 90.0)
    assert gate_devices([host], host) == []
    assert host["gate"]["drop_pp"] == 9.5 and "gate_failed" not in host


def timed(name: str, p50: float) -> dict:
    return {"name": name, "accuracy": 99.0, "latency_ms": {"p50": p50}}


def test_latency_budget_one_for_every_device():
    from edgepack.stages.validate import latency_gate

    host, arm = timed("host", 0.5), timed("qemu-aarch64", 12.5)
    section, notes = latency_gate([host, arm], 2.0)
    assert "gate_failed" not in host
    assert arm["gate_failed"] == "p50 12.500 ms exceeds validate.max_p50_ms = 2 ms by 10.500 ms"
    assert notes == ["device qemu-aarch64: p50 12.500 ms exceeds validate.max_p50_ms = 2 ms by 10.500 ms"]
    assert section == {"max_p50_ms": 2.0, "passed": False, "devices": [
        {"device": "host", "p50_ms": 0.5, "max_p50_ms": 2.0, "over_ms": 0.0, "passed": True},
        {"device": "qemu-aarch64", "p50_ms": 12.5, "max_p50_ms": 2.0, "over_ms": 10.5, "passed": False}]}


def test_latency_budget_per_device_and_none():
    from edgepack.stages.validate import latency_gate

    host, arm = timed("host", 0.5), timed("qemu-aarch64", 12.5)
    arm["gate_failed"] = "accuracy 28.00 % on this device"
    section, notes = latency_gate([host, arm], {"host": 0.25, "board": 1.0})
    assert host["gate_failed"] == "p50 0.500 ms exceeds validate.max_p50_ms = 0.25 ms by 0.250 ms"
    assert arm["gate_failed"] == "accuracy 28.00 % on this device"       # no budget for it: unchanged
    assert [r["device"] for r in section["devices"]] == ["host"] and len(notes) == 1
    assert latency_gate([timed("host", 0.5)], None) == (None, [])
