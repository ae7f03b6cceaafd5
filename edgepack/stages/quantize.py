"""quantize: calibrated post-training quantization and conversion, by the quantizer
the target runtime itself understands (the target adapter does both), then the
converted file's metric on the host runtime; per-layer sensitivity of the student
(edgepack.sensitivity), and, while the file is over the accuracy budget, the recovery
steps the profile lists (edgepack.recovery: advanced PTQ, layers kept in float, QAT).

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
from ..inputs.data import Split, draw
from ..recovery import Recovery, run_recovery
from .base import BuildContext, Stage, StageResult, package_versions, target_toolchain

# At most this many samples for a quantizer's own accuracy checks (NNCF's default subset).
MAX_CONTROL_SAMPLES = 300


class QuantizeStage(Stage):
    name = "quantize"
    order = 50
    config_model = QuantizeConfig

    def toolchain(self, config, ctx: BuildContext) -> dict[str, str]:
        versions = target_toolchain(ctx)
        if len(config.recovery) > 1 or config.scheme == "int4-weights":
            # the recovery steps' libraries: NNCF, PT2E (QAT), ai-edge-quantizer (LiteRT's per-op recipes)
            versions.update(package_versions(("nncf", "torchao", "executorch", "ai_edge_quantizer")))
        return versions

    def cache_key_extra(self, config, ctx: BuildContext) -> dict[str, Any]:
        # The budget decides which route and which recovery step is kept; QAT distils from the
        # teacher with the distill section's loss settings.
        extra: dict[str, Any] = {"target": ctx.target.name, "budget": ctx.settings.validate.max_accuracy_drop_pp,
                                 "task": ctx.settings.task.model_dump(mode="json")}
        if "qat" in config.recovery:
            d = ctx.settings.distill
            extra.update(teacher=ctx.teacher.sha256, qat={k: getattr(d, k) for k in (
                "batch_size", "optimizer", "weight_decay", "temperature", "alpha", "val_fraction", "seed")})
        return extra

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
        module = ctx.results["export"].extras.get("module") if "export" in ctx.results else None
        if config.mixed_precision not in target.mixed_precisions:
            notes.append(f"quantize.mixed_precision = {config.mixed_precision!r}: target {target.name!r} runs "
                         f"{', '.join(target.mixed_precisions)} only; layers kept by the mixed step run in float")
            config = config.model_copy(update={"mixed_precision": "float"})
        layers, sens = measure_sensitivity(ctx, config, cal, module, notes)
        rec = Recovery(ctx, config, cal, artifact, module, layers, (sens or {}).get("layers", []),
                       validation=None if validation is None else (validation.x, validation.y),
                       timed=len(config.recovery) > 1)
        kept, steps = run_recovery(rec)
        if kept is None or kept.converted is None:
            raise ConversionError(f"target {target.name!r}: no recovery step converts the model: "
                                  + "; ".join(f"{a.step}: {a.error}" for a in rec.attempts if a.error))
        converted, measured = kept.converted, kept.measured
        route = converted.meta.get("route")
        routes = target.routes(config)
        tried = [{"route": a.route, "status": "failed", "error": a.error} if a.error is not None else
                 {"route": a.route, "status": "converted", "metric": ctx.task.metric,
                  "value": a.measured.get(ctx.task.metric), "passed": a.passed,
                  **({"why": a.gate["why"]} if "why" in a.gate else {})}
                 for a in rec.attempts if a.step == "ptq"]
        if len(routes) > 1:
            notes.append(f"quantize: route {route} taken; tried " + ", ".join(
                f"{t['route']} ({'failed: ' + t['error'] if t['status'] == 'failed' else 'within budget' if t['passed'] else 'over budget'})"
                for t in tried))
        metrics: dict[str, Any] = {"size_bytes": converted.size_bytes, "format": target.format, "route": route,
                                   "routes_tried": tried, "scheme": config.scheme, "calibration_samples": len(cal),
                                   "calibration": cal_info, "metric": ctx.task.metric,
                                   "accuracy": measured.get(ctx.task.metric), "task_metrics": measured}
        if sens is not None:
            metrics["sensitivity"] = sens
        if len(config.recovery) > 1 or len(rec.attempts) > len(tried):
            metrics["recovery"] = recovery_summary(rec, kept, steps, config)
            notes.append(recovery_note(metrics["recovery"]))
        notes += rec.notes
        if control_info is not None:
            metrics["accuracy_control_data"] = control_info
        prev = ctx.results.get("export")
        if prev is not None:
            metrics.update(params=prev.metrics.get("params"), macs=prev.metrics.get("macs"))
        discard_others(ctx.workdir, kept)
        return StageResult(converted, metrics, notes=notes + list(converted.meta.get("notes", [])))


def discard_others(workdir: Any, kept: Any) -> None:
    """Only the kept file (and what it was converted from) goes into the stage cache."""
    import shutil
    from pathlib import Path

    keep = {Path(kept.converted.path).parent.resolve()}
    if kept.exported is not None:
        keep |= {p.resolve() for p in Path(kept.exported.path).parents}
    for child in Path(workdir).iterdir():
        if child.is_dir() and child.resolve() not in keep and not any(k.is_relative_to(child.resolve()) for k in keep):
            shutil.rmtree(child, ignore_errors=True)


def measure_sensitivity(ctx: BuildContext, config: QuantizeConfig, cal: Split, module: Artifact | None,
                        notes: list[str]) -> tuple[list[Any], dict[str, Any] | None]:
    """The student's quantizable layers and their sensitivity on the first samples of the
    calibration draw (none for a float build, or with quantize.sensitivity_samples = 0). A model
    the analysis cannot run is said in the notes, never a failed build."""
    from ..layers import find_layers
    from ..sensitivity import measure
    from ..torchmodel import load_module

    if module is None or config.scheme == "none" or config.sensitivity_samples == 0:
        return [], None
    try:
        student = load_module(module)
        layers = find_layers(student, ctx.data.example(1))
        if not layers:
            notes.append("quantize: per-layer sensitivity: the model runs no torch Conv or Linear module (a "
                         "torch.export program keeps none): nothing to rank, and no mixed step")
            return [], None
        sens = measure(student, layers, {k: v[: config.sensitivity_samples] for k, v in cal.x.items()},
                       scheme=config.scheme, per_channel=config.per_channel, block_size=config.weights_block_size,
                       sim=ctx.target.quant_sim)
    except Exception as e:          # noqa: BLE001 - an analysis, not a product: say why and build on
        notes.append(f"quantize: per-layer sensitivity could not be measured: {type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}")
        return [], None
    return layers, sens


def recovery_summary(rec: Recovery, kept: Any, steps: list[dict[str, Any]], config: QuantizeConfig) -> dict[str, Any]:
    metric = rec.ctx.task.metric
    met = next((a.step for a in rec.attempts if a.passed), None)
    return {"order": list(config.recovery), "met_by": met, "kept": kept.step,
            "kept_float_layers": [lay.path for lay in kept.plan.float_layers],
            "max_float_layers": config.max_float_layers, "mixed_precision": config.mixed_precision,
            "steps": steps, "attempts": [a.row(metric) for a in rec.attempts], "float_layers": rec.float_costs,
            "judged_on": "the evaluation split, on the host"}


def recovery_note(r: dict[str, Any]) -> str:
    said = []
    for s in r["steps"]:
        tries = [a for a in r["attempts"] if a["step"] == s["step"] and a.get("value") is not None]
        value = f" ({tries[-1]['value']:.4g})" if tries else ""
        said.append(f"{s['step']} {s['status']}{value}")
    text = "quantize: recovery: " + ", ".join(said)
    if r["met_by"] is None:
        text += f"; none met the budget, kept {r['kept']}"
    if r["kept_float_layers"]:
        text += f"; kept in {'int16 activations' if r['mixed_precision'] == 'int16' else 'float'}: " \
                + ", ".join(r["kept_float_layers"])
    return text


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
