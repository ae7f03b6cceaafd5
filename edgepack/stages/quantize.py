"""quantize: calibrated post-training quantization and conversion, by the quantizer
the target runtime itself understands (the target adapter does both), then the
converted file's accuracy on the host runtime."""
from __future__ import annotations

from ..artifacts import Artifact
from ..config import QuantizeConfig
from ..harness import run_artifact, score
from .base import BuildContext, Stage, StageResult, target_toolchain


class QuantizeStage(Stage):
    name = "quantize"
    order = 50
    config_model = QuantizeConfig

    def toolchain(self, config, ctx: BuildContext) -> dict[str, str]:
        return target_toolchain(ctx)

    def run(self, artifact: Artifact, config: QuantizeConfig, ctx: BuildContext) -> StageResult:
        target = ctx.target
        target.check_scheme(config.scheme)
        cal = ctx.data.calibration
        calibration = cal.x[: config.calibration_samples]
        # Labeled data for a quantizer that checks accuracy itself: the calibration split, never
        # the evaluation split, so that the accuracy this build reports is measured on unseen data.
        validation = (calibration, cal.y[: config.calibration_samples])
        converted = target.convert(artifact, config, calibration, ctx.workdir / "model", progress=ctx.progress,
                                   validation=validation)
        ev = ctx.data.evaluation
        run = run_artifact(target, converted, "host", ev.x, ctx.workdir / "host-eval")
        metrics = {"size_bytes": converted.size_bytes, "format": target.format, "scheme": config.scheme,
                   "calibration_samples": len(calibration),
                   **score(run.outputs, ev.y, None)}
        prev = ctx.results.get("export")
        if prev is not None:
            metrics.update(params=prev.metrics.get("params"), macs=prev.metrics.get("macs"))
        return StageResult(converted, metrics, notes=list(converted.meta.get("notes", [])))
