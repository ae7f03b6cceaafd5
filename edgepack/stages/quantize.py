"""quantize: calibrated post-training quantization and conversion, by the quantizer
the target runtime itself understands (the target adapter does both), then the
converted file's metric on the host runtime.

The calibration samples are a seeded random draw from the calibration split (stratified
by class where there are class labels), recorded in the report. A quantizer that checks
accuracy itself (NNCF's accuracy control) gets labeled samples disjoint from both that
draw and the evaluation split: what the build reports stays measured on unseen data.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..arrays import sample_digests
from ..artifacts import Artifact
from ..config import QuantizeConfig
from ..errors import ConversionError
from ..harness import run_artifact
from ..inputs.data import Split, draw
from ..training import reference_outputs
from .base import BuildContext, Stage, StageResult, target_toolchain

# At most this many samples for a quantizer's own accuracy checks (NNCF's default subset).
MAX_CONTROL_SAMPLES = 300


class QuantizeStage(Stage):
    name = "quantize"
    order = 50
    config_model = QuantizeConfig

    def toolchain(self, config, ctx: BuildContext) -> dict[str, str]:
        return target_toolchain(ctx)

    def check(self, config: QuantizeConfig, ctx: BuildContext) -> None:
        ctx.target.routes(config)         # a misspelt route: exit 2 before anything runs

    def run(self, artifact: Artifact, config: QuantizeConfig, ctx: BuildContext) -> StageResult:
        target = ctx.target
        target.check_scheme(config.scheme)
        seed = ctx.settings.data.seed
        cal, cal_info = draw(ctx.data.calibration, config.calibration_samples, seed)
        notes = list(ctx.data.notes)
        validation, control_info = None, None
        if getattr(config, "accuracy_control", False) and config.scheme == "int8":
            validation, control_info = control_slice(ctx, cal, seed)
            if validation is None:
                notes.append("quantize.accuracy_control: no labeled samples outside the calibration draw and the "
                             "evaluation split (give --train-data or more calibration data): plain quantization")
        ev = ctx.data.evaluation
        teacher_out = reference_outputs(ctx.results)
        teacher_metrics = ctx.results["reference"].metrics.get("task_metrics") or {}
        module = ctx.results["export"].extras.get("module") if "export" in ctx.results else None
        routes = target.routes(config)
        tried: list[dict[str, Any]] = []
        kept = None                 # (artifact, measured): the first route that converts, or the first that passes
        for route in routes:
            where = ctx.workdir / (f"model-{route}" if route else "model")
            try:
                converted = target.convert(artifact, config, cal.x, where, progress=ctx.progress,
                                           validation=None if validation is None else (validation.x, validation.y),
                                           task=ctx.task, route=route, module=module)
            except ConversionError as e:
                if len(routes) == 1:
                    raise
                tried.append({"route": route, "status": "failed", "error": str(e)})
                continue
            run = run_artifact(target, converted, "host", ev.x, ctx.workdir / f"host-eval-{route or 'model'}",
                               output_names=ctx.output_names)
            measured = ctx.task.evaluate(run.outputs, ev.y, teacher_out)
            gate = ctx.task.gate(measured, teacher_metrics, ctx.settings.validate.max_accuracy_drop_pp)
            tried.append({"route": route, "status": "converted", "metric": ctx.task.metric,
                          "value": measured.get(ctx.task.metric), "passed": gate["passed"],
                          **({"why": gate["why"]} if "why" in gate else {})})
            if kept is None or gate["passed"]:
                kept = (converted, measured)
            if gate["passed"]:
                break
        if kept is None:
            raise ConversionError(f"target {target.name!r}: no conversion route converts the model: "
                                  + "; ".join(f"{t['route']}: {t['error']}" for t in tried))
        converted, measured = kept
        route = converted.meta.get("route")
        if len(routes) > 1:
            notes.append(f"quantize: route {route} taken; tried " + ", ".join(
                f"{t['route']} ({'failed: ' + t['error'] if t['status'] == 'failed' else 'within budget' if t['passed'] else 'over budget'})"
                for t in tried))
        metrics: dict[str, Any] = {"size_bytes": converted.size_bytes, "format": target.format, "route": route,
                                   "routes_tried": tried, "scheme": config.scheme, "calibration_samples": len(cal),
                                   "calibration": cal_info, "metric": ctx.task.metric,
                                   "accuracy": measured.get(ctx.task.metric), "task_metrics": measured}
        if control_info is not None:
            metrics["accuracy_control_data"] = control_info
        prev = ctx.results.get("export")
        if prev is not None:
            metrics.update(params=prev.metrics.get("params"), macs=prev.metrics.get("macs"))
        return StageResult(converted, metrics, notes=notes + list(converted.meta.get("notes", [])))


def control_slice(ctx: BuildContext, cal: Split, seed: int) -> tuple[Split | None, dict[str, Any] | None]:
    """Labeled samples for a quantizer's own accuracy checks: from the calibration split's
    samples not drawn for calibration, then the training split, never a sample of the
    calibration draw or of the evaluation split (compared by content)."""
    if ctx.task.kind != "classification":
        return None, None
    taken = set(sample_digests(cal.x)) | set(sample_digests(ctx.data.evaluation.x))
    pools = [("calibration split (not drawn for calibration)", ctx.data.calibration), ("training split", ctx.data.train)]
    parts, sources = [], []
    for name, split in pools:
        if split is None or split.class_ids is None:
            continue
        digests = sample_digests(split.x)
        keep = np.array([d not in taken for d in digests])
        if keep.any():
            parts.append(split.take(np.flatnonzero(keep)))
            sources.append(f"{name}: {int(keep.sum())}")
            taken |= {d for d, k in zip(digests, keep) if k}
    if not parts:
        return None, None
    pool = Split({k: np.concatenate([p.x[k] for p in parts]) for k in parts[0].x},
                 np.concatenate([p.y for p in parts]))
    chosen, info = draw(pool, MAX_CONTROL_SAMPLES, seed)
    info["from"] = sources
    info["disjoint_from"] = ["the calibration draw", "the evaluation split"]
    return chosen, info
