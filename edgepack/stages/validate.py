"""validate: accuracy of the converted artifact against the FP32 teacher, and latency
of artifact and reference on every device the profile names, through the harness;
the bundle's p50 against validate.max_p50_ms where a latency budget is set.

A device that fails is recorded with its reason; the build still writes its bundle
and report, and the gate fails (exit 1).
"""
from __future__ import annotations

import numpy as np

from ..artifacts import Artifact
from ..config import ValidateConfig
from ..errors import DeviceError, UsageError
from ..harness import run_artifact, score
from .base import BuildContext, Stage, StageResult


def _device_entry(run, name: str) -> dict:
    r = run.result
    keep = ("device", "transport", "arch", "cpu", "emulated", "runtime", "threads", "warmup", "runs",
            "init_ms", "latency_ms", "samples_ms", "peak_rss_mb")
    entry = {k: r.get(k) for k in keep}
    entry["name"] = name
    return entry


def gate_devices(ok: list[dict], gate_dev: dict | None, teacher_acc: float, budget: float) -> list[str]:
    """Every device answers to the same accuracy budget as the gate device: the same file on
    other kernels (ARM, another ISA) can compute differently, and a device that gets it wrong
    must not pass unseen. Marks each entry with drop_pp, accuracy_vs_gate_pp and, over budget,
    gate_failed; returns the notes for the report."""
    notes = []
    for d in ok:
        d["drop_pp"] = round(teacher_acc - d["accuracy"], 4)
        if gate_dev is None:
            continue
        d["accuracy_vs_gate_pp"] = round(d["accuracy"] - gate_dev["accuracy"], 4)
        if d is not gate_dev and d["drop_pp"] > budget:
            d["gate_failed"] = (f"accuracy {d['accuracy']:.2f} % on this device ({d['accuracy_vs_gate_pp']:+.2f} pp "
                                f"against {gate_dev['name']}): drop {d['drop_pp']:.2f} pp exceeds "
                                f"validate.max_accuracy_drop_pp = {budget}")
            notes.append(f"device {d['name']}: {d['gate_failed']}")
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

        return {"target": ctx.target.name,
                "devices": [load_device(d).model_dump(mode="json") for d in config.devices]}

    def run(self, artifact: Artifact, config: ValidateConfig, ctx: BuildContext) -> StageResult:
        ev = ctx.data.evaluation
        ref_stage = ctx.results["reference"]
        teacher_out = np.load(ref_stage.extras["teacher_outputs"].path)
        teacher_acc = ref_stage.metrics["accuracy"]
        reference = ref_stage.extras.get("reference")
        timing = dict(warmup=config.warmup_runs, runs=config.runs, threads=config.threads)

        devices, ref_devices, notes = [], [], []
        host_outputs = None
        from ..devices import load_device

        for spec in config.devices:
            device = load_device(spec)       # a device name, or the path of a device file
            name = device.name
            wd = ctx.workdir / name
            try:
                run = run_artifact(ctx.target, artifact, device, ev.x, wd / "artifact", **timing)
            except DeviceError as e:
                devices.append({"name": name, "error": str(e)})
                notes.append(f"device {name} failed: {e}")
                continue
            entry = _device_entry(run, name)
            entry.update(score(run.outputs, ev.y, teacher_out))
            devices.append(entry)
            if host_outputs is None:
                host_outputs = run.outputs
            if reference is not None:
                try:
                    rrun = run_artifact(ctx.target, reference, device, ev.x, wd / "reference", **timing)
                    rentry = _device_entry(rrun, name)
                    rentry.update(score(rrun.outputs, ev.y, teacher_out))
                    ref_devices.append(rentry)
                except DeviceError as e:
                    ref_devices.append({"name": name, "error": str(e)})
                    notes.append(f"reference on device {name} failed: {e}")

        ok = [d for d in devices if "error" not in d]
        gate_dev = next((d for d in ok if d["name"] == "host"), ok[0] if ok else None)
        value = gate_dev["accuracy"] if gate_dev else None
        drop = round(teacher_acc - value, 4) if value is not None else None
        acc = {"metric": "top1", "value": value, "teacher": teacher_acc, "drop_pp": drop,
               "max_drop_pp": config.max_accuracy_drop_pp, "measured_on": gate_dev and gate_dev["name"],
               "passed": drop is not None and drop <= config.max_accuracy_drop_pp}
        if gate_dev:
            acc.update(top1_agreement=gate_dev["top1_agreement"], cosine_similarity=gate_dev["cosine_similarity"])
        if not acc["passed"] and drop is not None:
            notes.append(f"accuracy drop {drop:.2f} pp exceeds validate.max_accuracy_drop_pp = {config.max_accuracy_drop_pp}")
        notes += gate_devices(ok, gate_dev, teacher_acc, config.max_accuracy_drop_pp)
        latency, latency_notes = latency_gate(ok, config.max_p50_ms)
        notes += latency_notes
        failed_devices = [d["name"] for d in devices if "error" in d or "gate_failed" in d]
        metrics = {"accuracy": acc, "devices": devices, "reference_devices": ref_devices,
                   "passed": acc["passed"] and not failed_devices, "failed_devices": failed_devices,
                   "latency": latency}

        extras = {}
        if host_outputs is not None:
            n = min(config.reference_inputs, len(ev.y))
            path = ctx.workdir / "reference.npz"
            np.savez(path, x=ctx.target.to_model_layout(ev.x[:n], artifact), y=ev.y[:n],
                     expected_outputs=host_outputs[:n])
            extras["reference_io"] = Artifact.from_file("npz", path)
        return StageResult(artifact, metrics, extras, notes)
