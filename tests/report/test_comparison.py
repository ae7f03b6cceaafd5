"""The comparison report of a multi-target build, from report dicts (the builds themselves
run in tests/pipeline/test_multi_target.py)."""
from __future__ import annotations

import json

from edgepack.report.comparison import write_comparison


def all_devices_failed_report(target: str) -> dict:
    """What build_report gives when no device could run the bundle (executorch-arm with
    --device qemu-aarch64, say): no accuracy, no latency, a reference that never ran."""
    error = "executorch does not run under the emulator"
    return {"target": target, "passed": False,
            "artifact": {"format": "pte", "scheme": "int8", "size_bytes": 20480},
            "accuracy": {"metric": "top1", "value": None, "teacher": 95.0, "drop_pp": None, "max_drop_pp": 1.0,
                         "passed": False},
            "devices": [{"name": "qemu-aarch64", "error": error}],
            "reference": {"size_bytes": 40960, "accuracy": None, "devices": [{"name": "qemu-aarch64", "error": error}]},
            "ratios": {"size": 2.0, "latency_p50": {}},
            "notes": [f"device qemu-aarch64 failed: {error}"]}


def test_a_target_whose_every_device_failed_is_a_row_with_dashes(tmp_path):
    results = [{"target": "executorch-arm", "exit_code": 1, "report": all_devices_failed_report("executorch-arm"),
                "bundle": str(tmp_path / "m-executorch-arm.zip"), "error": None},
               {"target": "tflite-int8", "exit_code": 3, "report": None,
                "error": "internal error in stage quantize for target tflite-int8: RuntimeError: boom"}]
    md = write_comparison(tmp_path, results).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| executorch-arm |"))
    assert row == "| executorch-arm | gate failed | 20.0 | – | – | – | 2.00 | – |"
    assert "- executorch-arm: 40.0 KiB, –, host p50 –" in md
    assert "| tflite-int8 | failed (exit 3): internal error in stage quantize" in md
    doc = json.loads((tmp_path / "comparison.json").read_text())
    assert doc["exit_code"] == 3
    assert {r["target"]: r["status"] for r in doc["targets"]} == {"executorch-arm": "gate failed",
                                                                  "tflite-int8": "failed"}
    assert not (tmp_path / "comparison.png").exists()     # nothing to plot
