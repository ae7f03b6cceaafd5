"""One build for several targets: compression once, one bundle per target, a comparison
report, and one target's failure neither stopping the others nor hiding in the exit code."""
from __future__ import annotations

import json

from test_build import FAST, edgepack      # its sibling: pytest puts this folder on sys.path


def multi(tiny, out, *targets, factory="make_model", extra=()):
    args = ["build", *[a for t in targets for a in ("-t", t)], "--model", f"{tiny['model']}:{factory}",
            "--weights", str(tiny["weights"]), "--data", str(tiny["data"]), "--out", str(out), *FAST, *extra]
    return edgepack(*args, check=False)


def test_target_all_writes_three_bundles_and_a_comparison(tiny_all):
    out, res = tiny_all
    assert res.returncode == 0, res.stdout + res.stderr
    for target, model in (("tflite-int8", "model.tflite"), ("openvino-cpu", "model.xml"),
                          ("executorch-arm", "model.pte")):
        assert (out / f"tiny_net-{target}.zip").is_file()
        manifest = json.loads((out / f"tiny_net-{target}" / "manifest.json").read_text())
        assert manifest["target"] == target and manifest["model"] == model
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["schema"] == "edgepack.comparison/1" and doc["exit_code"] == 0
    rows = {r["target"]: r for r in doc["targets"]}
    assert set(rows) == {"tflite-int8", "openvino-cpu", "executorch-arm"}
    for r in rows.values():
        assert r["status"] == "passed" and r["scheme"] == "int8" and r["p50_ms"] > 0
        # (no size ratio asserted: on a 1.5 K-parameter model the quantization metadata outweighs the weights)
        assert r["reference"]["size_bytes"] > 0 and r["reference"]["p50_ms"] > 0
    # The profile's accuracy control ran on the labeled calibration split (never the evaluation split).
    assert any(n.startswith("NNCF accuracy control on ") for n in rows["openvino-cpu"]["notes"])
    ov = json.loads((out / "tiny_net-openvino-cpu" / "report.json").read_text())
    control = next(s for s in ov["stages"] if s["name"] == "quantize")["details"]["accuracy_control_data"]
    assert control["disjoint_from"] == ["the calibration draw", "the evaluation split"] and control["samples"] > 0
    md = (out / "comparison.md").read_text()
    assert "| executorch-arm | passed |" in md and "comparison.png" in md
    assert (out / "comparison.png").stat().st_size > 0


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
