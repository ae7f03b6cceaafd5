"""An unexpected exception is exit 3: one line naming the stage and the target, the
traceback in a log inside --out, and in a multi-target build the other targets still run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.stages.quantize import QuantizeStage

FAST = ["--set", "validate.runs=5", "--set", "validate.warmup_runs=1", "--set", "quantize.calibration_samples=32",
        "--set", "reference.enabled=false", "--set", "distill.enabled=false", "--set", "prune.enabled=false",
        "--set", "lowrank.enabled=false"]


@pytest.fixture
def quantize_breaks_on_tflite(monkeypatch):
    """A bug in one stage for one target: quantize raises RuntimeError for tflite-int8 only."""
    real = QuantizeStage.run

    def run(self, artifact, config, ctx):
        if ctx.target.name == "tflite-int8":
            raise RuntimeError("calibration went sideways\nsecond line of the message")
        return real(self, artifact, config, ctx)

    monkeypatch.setattr(QuantizeStage, "run", run)


def build(tiny: dict[str, Path], out: Path, *targets: str):
    args = ["build", *[a for t in targets for a in ("-t", t)], "--model", f"{tiny['model']}:make_model",
            "--weights", str(tiny["weights"]), "--data", str(tiny["data"]), "--out", str(out), *FAST]
    return CliRunner().invoke(main, args)


def test_a_crash_in_a_stage_is_exit_3_with_one_line_and_a_log(tiny, tmp_path, quantize_breaks_on_tflite):
    out = tmp_path / "out"
    result = build(tiny, out, "tflite-int8")
    assert result.exit_code == 3, result.output
    # notes about the data (a budget finer than one evaluation sample) may come first
    lines = [line for line in result.stderr.splitlines() if not line.startswith("edgepack: note: ")]
    log = out / "edgepack-error-tflite-int8.log"
    assert lines == [("edgepack: error: internal error in stage quantize for target tflite-int8: "
                      f"RuntimeError: calibration went sideways (traceback in {log})")], result.stderr
    text = log.read_text()
    assert text.startswith("Traceback (most recent call last):")
    assert "RuntimeError: calibration went sideways\nsecond line of the message" in text
    assert "Traceback" not in result.output
    assert not (out / "tiny_net-tflite-int8.zip").exists() and not (out / "tiny_net-tflite-int8").exists()


def test_a_crash_in_one_target_does_not_stop_the_others(tiny, tmp_path, quantize_breaks_on_tflite):
    out = tmp_path / "out"
    result = build(tiny, out, "tflite-int8", "openvino-cpu")
    assert result.exit_code == 3, result.output          # the worst of (3, 0)
    assert "internal error in stage quantize for target tflite-int8" in result.stderr
    assert (out / "edgepack-error-tflite-int8.log").is_file()
    assert (out / "tiny_net-openvino-cpu.zip").is_file()
    rows = {r["target"]: r for r in json.loads((out / "comparison.json").read_text())["targets"]}
    assert rows["tflite-int8"]["status"] == "failed" and rows["tflite-int8"]["exit_code"] == 3
    assert rows["openvino-cpu"]["status"] == "passed" and rows["openvino-cpu"]["exit_code"] == 0
    assert "failed (exit 3)" in (out / "comparison.md").read_text()
