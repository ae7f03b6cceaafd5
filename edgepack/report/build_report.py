"""Assemble report.json (schema edgepack.report/1) from a finished build."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from .. import __version__
from ..artifacts import strip_paths

SCHEMA = "edgepack.report/1"


def _stage_row(rec: Any) -> dict[str, Any]:
    m = rec.metrics
    return {"name": rec.name, "status": rec.status, "seconds": rec.seconds,
            "params": m.get("params"), "macs": m.get("macs"), "size_bytes": m.get("size_bytes"),
            "accuracy": m.get("accuracy") if not isinstance(m.get("accuracy"), dict) else m["accuracy"].get("value"),
            **({"notes": rec.notes} if rec.notes else {}),
            "metric": m.get("metric") if not isinstance(m.get("accuracy"), dict) else m["accuracy"].get("metric"),
            **({"details": {k: v for k, v in m.items() if k not in ("params", "macs", "size_bytes", "accuracy",
                                                                      "devices", "reference_devices", "sensitivity",
                                                                      "recovery")}}
               if rec.name not in ("validate",) else {})}


def sensitivity_section(quantize: dict[str, Any] | None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The quantize stage's per-layer sensitivity: rows worst first, and how it was measured."""
    sens = (quantize or {}).get("sensitivity")
    if not sens:
        return [], None
    return sens["layers"], {k: v for k, v in sens.items() if k != "layers"}


def slower_than_reference(ratios: dict[str, Any], devices: dict[str, dict[str, Any]]) -> list[str]:
    """The bundle slower than its FP32 reference on a device: said, never shipped in silence
    (int8 gains nothing on a CPU without fast int8 dot products, and tiny models pay the
    quantize/dequantize steps)."""
    out = []
    for name, x in ratios.get("latency_p50", {}).items():
        if x < 1:
            cpu = (devices.get(name) or {}).get("cpu") or {}
            out.append(f"on {name} the bundle runs at {x:.2f}x the speed of its FP32 reference "
                       f"({cpu.get('model', 'this CPU')}): the float model is faster there; "
                       "--set quantize.scheme=none would ship it")
    return out


def build_report(result: Any, settings: Any, target: Any, data: Any, teacher: Any,
                 artifact_name: str, created_at: str | None = None) -> dict[str, Any]:
    ctx, art = result.ctx, result.artifact
    val = ctx.results["validate"].metrics
    ref_stage = ctx.results["reference"]
    ref = ref_stage.extras.get("reference")
    ok = {d["name"]: d for d in val["devices"] if "error" not in d}
    ref_ok = {d["name"]: d for d in val["reference_devices"] if "error" not in d}
    reference = None
    ratios: dict[str, Any] = {"size": None, "latency_p50": {}}
    if ref is not None:
        host_ref = ref_ok.get("host") or next(iter(ref_ok.values()), None)
        reference = {"format": target.format, "scheme": "none", "size_bytes": ref.size_bytes, "sha256": ref.sha256,
                     "accuracy": host_ref and host_ref["accuracy"],
                     "devices": [{k: d.get(k) for k in ("name", "arch", "emulated", "threads", "init_ms",
                                                         "latency_ms", "samples_ms", "peak_rss_mb", "accuracy",
                                                         "error")}
                                 for d in val["reference_devices"]]}
        ratios["size"] = round(ref.size_bytes / art.size_bytes, 3)
        for name, d in ok.items():
            if name in ref_ok:
                ratios["latency_p50"][name] = round(ref_ok[name]["latency_ms"]["p50"] / d["latency_ms"]["p50"], 3)
    warnings = slower_than_reference(ratios, ok)
    notes = [n for rec in result.records for n in rec.notes] + warnings
    quantize = ctx.results["quantize"].metrics if "quantize" in ctx.results else None
    sensitivity, sensitivity_info = sensitivity_section(quantize)
    return strip_paths({      # inputs by name and sha256: a bundle carries no build-machine paths
        "schema": SCHEMA,
        "target": target.name,
        "model": {"name": teacher.name, "spec": teacher.spec, "sha256": teacher.sha256},
        "passed": bool(val["passed"]),
        "stages": [_stage_row(r) for r in result.records],
        "teacher": {k: ref_stage.metrics.get(k) for k in ("params", "macs", "size_bytes", "accuracy", "metric",
                                                           "task_metrics")},
        "task": {"kind": ctx.task.kind, "metric": ctx.task.metric, "higher_is_better": ctx.task.higher_is_better,
                 "metric_function": ctx.task.config.metric and Path(ctx.task.config.metric).name},
        "inputs": [{"name": k, "dtype": str(v.dtype), "shape": [1, *v.shape[1:]]}
                   for k, v in data.evaluation.x.items()],
        "outputs": ctx.output_names,
        "reference": reference,
        "artifact": {"path": artifact_name, "format": target.format, "size_bytes": art.size_bytes,
                     "sha256": art.sha256, "scheme": art.meta.get("scheme"), "layout": art.meta.get("layout")},
        "ratios": ratios,
        "accuracy": val["accuracy"],
        "devices": val["devices"],
        "failed_devices": val["failed_devices"],
        "latency": val.get("latency"),
        "sensitivity": sensitivity,
        "sensitivity_info": sensitivity_info,
        "recovery": (quantize or {}).get("recovery"),
        "data": {"source": data.source, "split": data.split, "sha256": data.sha256,
                 "calibration_sha256": data.calibration_sha256,
                 "calibration_samples": len(data.calibration), "evaluation_samples": len(data.evaluation)},
        "config": settings.resolved(),
        "recipe_hash": settings.recipe_hash,
        "edgepack_version": __version__,
        "created_at": created_at or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "notes": notes,
        "warnings": warnings,
    })
