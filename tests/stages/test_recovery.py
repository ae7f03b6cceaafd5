"""Recovery on a model int8 breaks, on every target, through the real converters and runtimes.

tests/zoo/outlier.py: a depthwise network whose first depthwise layer has one channel 1000x
wider than the others. Plain int8 (the ptq attempt of each build) falls to about chance; the
per-layer sensitivity names dw1.0 first; and each target ends within budget by its own
recovery step: OpenVINO by SmoothQuant (advanced), LiteRT and ExecuTorch by keeping dw1.0 and
the layer reading it in float (mixed). Builds run in-process (one import of each toolchain)
with the stages that train switched off, no FP32 reference file and few timed runs.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgepack.build import BuildRequest, prepare, run_build
from tests.zoo import mlp, outlier

pytestmark = pytest.mark.slow

FAST = ("distill.enabled=false", "prune.enabled=false", "validate.runs=5", "validate.warmup_runs=1",
        "quantize.calibration_samples=64")


@pytest.fixture(scope="module")
def outlier_files(tmp_path_factory, outlier_trained):
    return outlier.write_files(tmp_path_factory.mktemp("outlier"), trained=outlier_trained)


def build(files, target: str, out, *overrides: str, reference: bool = False, train: bool = True) -> dict:
    req = BuildRequest(target=target, model=f"{files['model']}:make_model", weights=str(files["weights"]),
                       data=str(files["data"]), train_data=str(files["train"]) if train else None, out=out,
                       overrides=(*FAST, f"reference.enabled={str(reference).lower()}", *overrides))
    outcome = run_build(prepare(req, log=lambda _: None))
    assert outcome.tree.is_dir()
    return outcome.report


@pytest.mark.parametrize("target, overrides, step", [
    ("openvino-cpu", ("quantize.accuracy_control=false",), "advanced"),
    ("tflite-int8", ('quantize.routes=["onnx2tf"]',), "mixed"),
    # one route and no advanced step: an ExecuTorch conversion takes ~30 s on 2 cores
    ("executorch-arm", ('quantize.routes=["xnnpack"]', 'quantize.recovery=["ptq", "mixed"]'), "mixed"),
])
def test_plain_int8_fails_and_recovery_ends_within_budget(outlier_files, tmp_path, target, overrides, step):
    r = build(outlier_files, target, tmp_path / "out", *overrides)
    rec = r["recovery"]
    ptq = rec["attempts"][0]
    assert ptq["step"] == "ptq" and ptq["status"] == "over budget" and ptq["drop"] > 50, ptq   # ~chance
    assert rec["met_by"] == step and rec["kept"] == step
    assert r["passed"] is True and r["accuracy"]["drop_pp"] <= 1.0
    kept = next(a for a in rec["attempts"] if a["status"] == "within budget")
    assert kept["value"] == r["accuracy"]["value"]          # what the host measured to choose it is what shipped
    assert all(a["size_bytes"] > 0 and a["p50_ms"] > 0 for a in rec["attempts"])
    # the outlier layer first, on every target's simulation of its own int8
    assert r["sensitivity"][0]["module_path"] == outlier.OUTLIER_LAYER
    assert r["sensitivity"][0]["sqnr_db"] < 5 < r["sensitivity"][1]["sqnr_db"]
    if step == "mixed":
        # dw1.0 (the first the sensitivity ranks) and pw1.0 (which reads its output) in float restore it
        assert rec["kept_float_layers"] == ["dw1.0", "pw1.0"]
        cost = rec["float_layers"][0]
        assert cost["module_path"] == "dw1.0" and cost["with"] == ["dw1.0", "pw1.0"]
        assert isinstance(cost["size_cost_bytes"], int) and "latency_cost_ms" in cost and cost["gain"] > 50
    md = (tmp_path / "out" / f"outlier-{target}" / "report.md").read_text()
    assert f"Step **{step}** met the budget" in md and "| 1 | `dw1.0` |" in md
    assert (tmp_path / "out" / f"outlier-{target}" / "sensitivity.png").is_file()


def test_qat_distils_into_fake_quantized_student_and_converts_it(outlier_files, tmp_path):
    r = build(outlier_files, "openvino-cpu", tmp_path / "out", "quantize.accuracy_control=false",
              'quantize.recovery=["ptq", "qat"]', "quantize.qat_epochs=1")
    rec = r["recovery"]
    assert [a["step"] for a in rec["attempts"]] == ["ptq", "qat"]
    ptq, qat = rec["attempts"]
    assert qat["status"] in ("within budget", "over budget") and qat["value"] is not None
    assert any("qat: 1 epochs of KD from the teacher" in n for n in r["notes"])
    assert qat["sha256"] != ptq["sha256"]          # the student was retrained: not the plain int8 file
    assert rec["kept"] in ("ptq", "qat")


def test_qat_without_training_data_is_skipped_and_said(outlier_files, tmp_path):
    r = build(outlier_files, "openvino-cpu", tmp_path / "out", "quantize.accuracy_control=false",
              'quantize.recovery=["ptq", "qat"]', train=False)
    step = next(s for s in r["recovery"]["steps"] if s["step"] == "qat")
    assert step["status"] == "skipped" and "--train-data" in step["why"]
    assert r["passed"] is False                   # the gate says so: nothing is shipped as within budget


@pytest.fixture(scope="module")
def mlp_files(outlier_files, tmp_path_factory):
    """A Linear-heavy model (int4 is about Linear weights), trained a little on the outlier data."""
    d = np.load(outlier_files["data"])
    weights = mlp.write_trained(tmp_path_factory.mktemp("mlp") / "weights.pt", d["x"][:256], d["y"][:256], steps=30)
    return {**outlier_files, "model": mlp.MODEL, "weights": weights}


@pytest.mark.parametrize("target", ["tflite-int8", "openvino-cpu"])
def test_int4_weights_build_and_are_smaller_than_int8(mlp_files, tmp_path, target):
    req = BuildRequest(target=target, model=f"{mlp_files['model']}:make_mlp", weights=str(mlp_files["weights"]),
                       data=str(mlp_files["data"]), out=tmp_path / "out",
                       overrides=(*FAST, "quantize.scheme=int4-weights", "quantize.weights_block_size=32",
                                  'quantize.routes=["onnx2tf"]'))
    r = run_build(prepare(req, log=lambda _: None)).report
    assert r["artifact"]["scheme"] == "int4-weights"
    # 768x256 + 256x128 + 128x4 float weights against 4-bit ones and their scales: > 5x
    assert r["ratios"]["size"] > 5, r["ratios"]
    assert r["accuracy"]["drop_pp"] <= 5.0
    q = next(s for s in r["stages"] if s["name"] == "quantize")["details"]
    assert q["scheme"] == "int4-weights"
    assert r["sensitivity_info"]["scheme"] == "int4-weights"
    manifest = json.loads((tmp_path / "out" / f"mlp-{target}" / "manifest.json").read_text())
    assert manifest["files"]
