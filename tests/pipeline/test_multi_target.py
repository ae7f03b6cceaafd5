"""One build for several targets: one target's failure neither stops the others nor hides
in the exit code (the all-targets build itself: test_target_all.py)."""
from __future__ import annotations

import json

from test_build import FAST, edgepack      # its sibling: pytest puts this folder on sys.path


def multi(tiny, out, *targets, factory="make_model", extra=()):
    args = ["build", *[a for t in targets for a in ("-t", t)], "--model", f"{tiny['model']}:{factory}",
            "--weights", str(tiny["weights"]), "--data", str(tiny["data"]), "--out", str(out), *FAST, *extra]
    return edgepack(*args, check=False)


def test_one_failing_target_does_not_stop_the_others(tiny, tmp_path):
    out = tmp_path / "out"
    # onnx2tf only (litert-torch would convert it); openvino-cpu has no route of that name
    res = multi(tiny, out, "tflite-int8", "openvino-cpu", factory="make_gelu",
                extra=("--set", 'quantize.routes=["onnx2tf"]'))
    assert res.returncode == 2, res.stdout + res.stderr          # the worst of (2, 0)
    doc = json.loads((out / "comparison.json").read_text())
    rows = {r["target"]: r for r in doc["targets"]}
    assert rows["tflite-int8"]["status"] == "failed" and rows["tflite-int8"]["exit_code"] == 2
    assert "Erf" in rows["tflite-int8"]["error"]
    assert rows["openvino-cpu"]["status"] == "passed"
    assert (out / "tiny_net-openvino-cpu.zip").is_file()
    assert not (out / "tiny_net-tflite-int8.zip").exists()
    assert "failed (exit 2)" in (out / "comparison.md").read_text()
