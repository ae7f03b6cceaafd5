"""One trial: a real build of one recipe through the whole pipeline, measured on the
search's devices, summed up as plain data. It runs wherever the executor puts it (this
process, a Ray worker, another node); the shared stage cache makes the stages it has in
common with earlier trials (the reference, a distilled student, an export) cache hits.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..build import BuildRequest, build_detached
from .space import override


@dataclass(frozen=True)
class TrialSpec:
    number: int
    params: dict[str, Any]           # "section.key" -> value: the recipe
    request: BuildRequest            # the search's own inputs, out and cache folder set per trial
    fixed: tuple[str, ...] = ()      # --set items every trial takes ([search.fixed])


def run_trial(spec: TrialSpec) -> dict[str, Any]:
    """Build the trial's recipe; return its row for search.json (never raises on purpose)."""
    req = dataclasses.replace(spec.request, overrides=(*spec.request.overrides, *spec.fixed,
                                                       *(override(k, v) for k, v in spec.params.items())))
    done = build_detached(req)
    row: dict[str, Any] = {"number": spec.number, "params": spec.params, "exit_code": done["exit_code"],
                           "error": done["error"], "node": done["node"], "pid": done["pid"],
                           "seconds": done["seconds"]}
    report = done.get("report")
    if report is None:
        return {**row, "status": "failed"}
    acc = report["accuracy"]
    devices = {d["name"]: d for d in report["devices"]}
    ref = {d["name"]: d["latency_ms"]["p50"] for d in (report.get("reference") or {}).get("devices", [])
           if "latency_ms" in d}
    p50 = {name: d["latency_ms"]["p50"] for name, d in devices.items() if "latency_ms" in d}
    return {**row, "status": "built", "passed": report["passed"], "accuracy_passed": acc.get("passed"),
            "metric_name": acc.get("metric"), "metric": acc.get("value"), "unit": acc.get("unit"),
            "higher_is_better": acc.get("higher_is_better", True), "drop": acc.get("drop"), "accuracy_why": acc.get("why"),
            "max_drop": acc.get("max_drop"), "size_bytes": report["artifact"]["size_bytes"],
            "scheme": report["artifact"].get("scheme"), "sha256": report["artifact"]["sha256"],
            "p50_ms": p50, "reference_p50_ms": ref, "reference_size_bytes": (report.get("reference") or {}).get("size_bytes"),
            "failed_devices": report.get("failed_devices", []), "cpu": {n: d.get("cpu") for n, d in devices.items()},
            "recipe_hash": report["recipe_hash"], "bundle": done["bundle"],
            "stages": {r["name"]: r["status"] for r in done["records"]},
            "notes": [n for s in report.get("stages", []) if s.get("name") == "validate" for n in s.get("notes", [])]}


def trial_request(base: BuildRequest, out: Path, number: int) -> BuildRequest:
    return dataclasses.replace(base, out=out / "trials" / f"{number:03d}")
