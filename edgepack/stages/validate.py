"""validate: the task's metric of the converted artifact against the FP32 teacher (and
agreement of every output with the teacher's), and latency of artifact and reference on
every device the profile names, through the harness. The metric runs here, on the host,
on the outputs each device returned. The bundle's p50 is checked against
validate.max_p50_ms where a latency budget is set.

A device that fails is recorded with its reason; the build still writes its bundle
and report, and the gate fails (exit 1).
"""
from __future__ import annotations

import numpy as np

from .. import selfcheck
from ..arrays import take
from ..artifacts import Artifact
from ..config import ValidateConfig
from ..errors import DeviceError, UsageError
from ..harness import run_artifact
from ..inputs.data import take_targets
from ..training import reference_outputs
from .base import BuildContext, Stage, StageResult, target_toolchain


def _device_entry(run, name: str) -> dict:
    r = run.result
    keep = ("device", "transport", "arch", "cpu", "emulated", "runtime", "threads", "warmup", "runs",
            "init_ms", "latency_ms", "samples_ms", "peak_rss_mb", "profile")
    entry = {k: r.get(k) for k in keep}     # profile: per-operator times, None where the runtime has none
    entry["name"] = name
    return entry


def gate_devices(ok: list[dict], gate_dev: dict | None) -> list[str]:
    """Every device answers to the same budget as the gate device: the same file on other
    kernels (ARM, another ISA) can compute differently, and a device that gets it wrong must
    not pass unseen. Marks each failing entry with gate_failed; returns the notes."""
    notes = []
    for d in ok:
        if gate_dev is None or d is gate_dev:
            continue
        g = d["gate"]
        if g.get("value") is not None and gate_dev.get("accuracy") is not None:
            d["accuracy_vs_gate"] = round(g["value"] - gate_dev["accuracy"], 6)
        if not g["passed"]:
            msg = f"{g.get('why') or g['metric'] + ' out of budget'} (against {gate_dev['name']}: " \
                  f"{gate_dev['accuracy']})"
            d["gate_failed"] = f"{d['gate_failed']}; {msg}" if d.get("gate_failed") else msg
            notes.append(f"device {d['name']}: {msg}")
    return notes


def latency_gate(ok: list[dict], budget: float | dict[str, float] | None) -> tuple[dict | None, list[str]]:
    """validate.max_p50_ms: the bundle's p50 on each device against its budget (one for all,
    or one per device name). Marks an entry over budget with gate_failed; returns the
    report's latency section (None without a budget) and the notes."""
    if budget is None:
        return None, []
    rows, notes = [], []
    for d in ok:
        limit = budget.get(d["name"]) if isinstance(budget, dict) else budget
        if limit is None:
            continue
        p50 = d["latency_ms"]["p50"]
        over = round(p50 - limit, 6)
        rows.append({"device": d["name"], "p50_ms": p50, "max_p50_ms": limit, "over_ms": max(over, 0.0),
                     "passed": p50 <= limit})
        if p50 > limit:
            msg = f"p50 {p50:.3f} ms exceeds validate.max_p50_ms = {limit:g} ms by {over:.3f} ms"
            d["gate_failed"] = f"{d['gate_failed']}; {msg}" if d.get("gate_failed") else msg
            notes.append(f"device {d['name']}: {msg}")
    return {"max_p50_ms": budget, "devices": rows, "passed": all(r["passed"] for r in rows)}, notes


class ValidateStage(Stage):
    name = "validate"
    order = 60
    config_model = ValidateConfig
    cacheable = False      # device timings are measurements: every build takes them afresh

    def check(self, config: ValidateConfig, ctx: BuildContext) -> None:
        if isinstance(config.max_p50_ms, dict):
            from ..devices import load_device

            names = [load_device(d).name for d in config.devices]
            unknown = sorted(set(config.max_p50_ms) - set(names))
            if unknown:
                raise UsageError(f"validate.max_p50_ms names {', '.join(unknown)}, not among validate.devices "
                                 f"({', '.join(names)})")

    def cache_key_extra(self, config: ValidateConfig, ctx: BuildContext) -> dict:
        from ..devices import load_device

        ref = ctx.results.get("reference")     # the FP32 reference it times and the outputs it compares with
        return {"target": ctx.target.name,
                "devices": [load_device(d).model_dump(mode="json") for d in config.devices],
                "reference": None if ref is None else {k: a.sha256 for k, a in sorted(ref.extras.items())}}

    def toolchain(self, config, ctx: BuildContext) -> dict[str, str]:
        return target_toolchain(ctx)

    def run(self, artifact: Artifact, config: ValidateConfig, ctx: BuildContext) -> StageResult:
        ev = ctx.data.evaluation
        task = ctx.task
        ref_stage = ctx.results["reference"]
        teacher_out = reference_outputs(ctx.results)
        teacher_metrics = ref_stage.metrics.get("task_metrics") or {}
        reference = ref_stage.extras.get("reference")
        timing = dict(warmup=config.warmup_runs, runs=config.runs, threads=config.threads,
                      output_names=ctx.output_names)

        def scored(run, name: str) -> dict:
            entry = _device_entry(run, name)
            measured = task.evaluate(run.outputs, ev.y, teacher_out)
            entry.update(metric=task.metric, accuracy=measured.get(task.metric), metrics=measured,
                         gate=task.gate(measured, teacher_metrics, config.max_accuracy_drop_pp))
            for k in ("top1_agreement", "cosine_similarity", "sqnr_db"):
                if k in measured:
                    entry[k] = measured[k]
            return entry

        devices, ref_devices, notes = [], [], []
        raw: dict[str, list] = {}            # device name -> its outputs, as the file gives them
        from ..devices import load_device

        for spec in config.devices:
            device = load_device(spec)       # a device name, or the path of a device file
            name = device.name
            wd = ctx.workdir / name
            try:
                run = run_artifact(ctx.target, artifact, device, ev.x, wd / "artifact", **timing,
                                   profile=config.profile_runs)
            except DeviceError as e:
                devices.append({"name": name, "error": str(e)})
                notes.append(f"device {name} failed: {e}")
                continue
            devices.append(scored(run, name))
            raw[name] = run.raw_outputs if run.raw_outputs is not None else run.outputs
            if reference is not None:
                try:
                    ref_devices.append(scored(run_artifact(ctx.target, reference, device, ev.x, wd / "reference",
                                                           **timing), name))
                except DeviceError as e:
                    ref_devices.append({"name": name, "error": str(e)})
                    notes.append(f"reference on device {name} failed: {e}")

        # The host's outputs become the bundle's expected ones (reference.npz); every other
        # device must give them back on those inputs (the self-check), whatever its accuracy.
        source = "host" if "host" in raw else next(iter(raw), None)
        host_outputs = raw.get(source)
        n = min(config.reference_inputs, len(ev))
        by_device = {d["name"]: d for d in devices}
        by_name = {o["name"]: o for o in ctx.target.io_details(artifact)["outputs"]} if len(raw) > 1 else {}
        specs = [by_name.get(o, {"name": o}) for o in ctx.output_names]
        for d in devices:
            if "error" in d:
                continue
            if d["name"] == source:
                d["self_check"] = "reference"
                continue
            tol, kind = selfcheck.tolerance_for(config.self_check, selfcheck.run_identity(by_device[source]), d)
            check = selfcheck.compare([o[:n] for o in raw[d["name"]]], [o[:n] for o in host_outputs], specs, tol)
            check["tolerance"] = kind
            d["self_check"], d["self_check_detail"] = check["self_check"], check
            if check["self_check"] == "fail":
                d["gate_failed"] = f"self-check against {source}: {selfcheck.describe(check)}"
                notes.append(f"device {d['name']}: {d['gate_failed']}")

        ok = [d for d in devices if "error" not in d]
        gate_dev = next((d for d in ok if d["name"] == "host"), ok[0] if ok else None)
        acc = task.gate(gate_dev["metrics"] if gate_dev else None, teacher_metrics, config.max_accuracy_drop_pp)
        acc.update(measured_on=gate_dev and gate_dev["name"])
        if gate_dev:
            for k in ("top1_agreement", "cosine_similarity", "sqnr_db"):
                if k in gate_dev:
                    acc[k] = gate_dev[k]
            if "top5" in gate_dev["metrics"]:
                acc["top5"] = gate_dev["metrics"]["top5"]
        if not acc["passed"] and gate_dev is not None:
            notes.append(acc.get("why") or f"{task.metric} out of budget")
        notes += gate_devices(ok, gate_dev)
        latency, latency_notes = latency_gate(ok, config.max_p50_ms)
        notes += latency_notes
        failed_devices = [d["name"] for d in devices if "error" in d or "gate_failed" in d]
        metrics = {"accuracy": acc, "devices": devices, "reference_devices": ref_devices,
                   "passed": acc["passed"] and not failed_devices, "failed_devices": failed_devices,
                   "latency": latency}

        extras = {}
        if host_outputs is not None:
            path = ctx.workdir / "reference.npz"
            arrays = {f"x.{k}": v for k, v in ctx.target.to_model_layout(take(ev.x, slice(0, n)), artifact).items()}
            arrays.update({f"expected.{k}": v[:n] for k, v in zip(ctx.output_names, host_outputs)})
            arrays.update(_targets(take_targets(ev.y, slice(0, n))))
            if len(ev.x) == 1 and len(host_outputs) == 1:    # the names of one-input, one-output bundles
                arrays["x"] = arrays[f"x.{next(iter(ev.x))}"]
                arrays["expected_outputs"] = host_outputs[0][:n]
            np.savez(path, **arrays)
            extras["reference_io"] = Artifact.from_file("npz", path)
        return StageResult(artifact, metrics, extras, notes)


def _targets(y) -> dict:
    if y is None:
        return {}
    if isinstance(y, dict):
        return {f"y.{k}": v for k, v in y.items()}
    return {"y": y}
