"""Recovery: what the quantize stage tries, in the profile's order, while the quantized model
is over its accuracy budget (`quantize.recovery`).

One mechanism for every target: each step is a small strategy object that asks the target's
convert() for something (a `QuantPlan`), and the stage measures what came back on the host
runtime, with the task's own gate. A target declares the steps it runs
(`Target.recovery_steps`); the others are passed over, and the report says so.

  ptq       post-training quantization as the profile says, route by route (the first route
            within budget is kept; else the first that converted, for the steps that follow).
  advanced  the target's better PTQ: SmoothQuant and full bias correction through NNCF
            (openvino-cpu; executorch-arm through NNCF's quantize_pt2e with the XNNPACK
            quantizer), MSE weight ranges and GPTQ rounding of FULLY_CONNECTED weights
            through ai-edge-quantizer (tflite-int8).
  mixed     the layers the sensitivity analysis ranks worst kept in float (or int16
            activations where the runtime runs them), one at a time in that order, each with
            the layers that read its output (see edgepack.layers), until the budget holds or
            quantize.max_float_layers would be passed. Builds on the better of ptq and advanced.
  qat       quantization-aware training of the student (XNNPACK fake quantization through
            PT2E, see targets/_pt2e.py) by distillation from the FP32 teacher, on the training
            split, with the float layers of the best step so far; then the same conversion.

Every step is judged on the evaluation split, as the routes are: the figures the report
gives for the kept file are the ones the build measured to choose it. Each attempt's file is
also timed on the host (a few runs) when more than one step is configured, so that the
report can give what each step, and each layer kept in float, cost in size and latency.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .artifacts import Artifact
from .errors import ConversionError, UsageError
from .harness import run_artifact
from .layers import Layer, float_region
from .targets.base import QuantPlan

TIMING = {"warmup": 3, "runs": 20}


@dataclass
class Attempt:
    """One conversion a step made, and what the host runtime measured of it."""

    step: str
    plan: QuantPlan
    route: str | None = None
    converted: Artifact | None = None
    measured: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    p50_ms: float | None = None
    error: str | None = None
    exported: Artifact | None = None       # what it was converted from (qat: the retrained student's)
    module: Artifact | None = None

    @property
    def passed(self) -> bool:
        return bool(self.gate and self.gate.get("passed"))

    def row(self, metric: str) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "route": self.route}
        if self.error is not None:
            return {**out, "status": "failed", "error": self.error}
        out.update(status="within budget" if self.passed else "over budget", metric=metric,
                   value=(self.measured or {}).get(metric), size_bytes=self.converted.size_bytes,
                   sha256=self.converted.sha256, p50_ms=self.p50_ms, float_layers=[lay.path for lay in self.plan.float_layers],
                   advanced=self.plan.advanced)
        if self.gate is not None:
            out["drop"] = self.gate.get("drop")
            if "why" in self.gate:
                out["why"] = self.gate["why"]
        return out


@dataclass
class Recovery:
    """What every step needs: the stage's context and settings, the data, and the attempts so far."""

    ctx: Any
    config: Any
    calibration: Any                      # inputs drawn for calibration
    exported: Artifact
    module: Artifact | None               # the student, as a torch module artifact
    layers: list[Layer]
    sensitivity: list[dict[str, Any]]     # rows, worst first
    validation: tuple[Any, Any] | None = None
    timed: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    route: str | None = None              # the route later steps convert by
    float_costs: list[dict[str, Any]] = field(default_factory=list)

    # -- measuring --------------------------------------------------------------------
    def attempt(self, step: str, plan: QuantPlan, *, route: str | None = None, exported: Artifact | None = None,
                module: Artifact | None = None, tag: str = "") -> Attempt:
        """Convert with `plan` and measure the file on the host; a converter's refusal is a failed attempt."""
        from .training import reference_outputs

        ctx = self.ctx
        route = route if route is not None else self.route
        exported = exported or self.exported
        module = module or self.module
        name = "-".join(p for p in (step, tag, route or "") if p)
        att = Attempt(step, plan, route, exported=exported, module=module)
        try:
            att.converted = ctx.target.convert(
                exported, self.config, self.calibration.x, ctx.workdir / f"model-{name}", progress=ctx.progress,
                validation=self.validation if plan.default else None, task=ctx.task, route=route, module=module,
                plan=plan)
        except ConversionError as e:
            att.error = str(e)
            self.attempts.append(att)
            return att
        ev = ctx.data.evaluation
        timing = dict(TIMING, threads=ctx.settings.validate.threads) if self.timed else {}
        run = run_artifact(ctx.target, att.converted, "host", ev.x, ctx.workdir / f"host-eval-{name}",
                           output_names=ctx.output_names, **timing)
        teacher_out = reference_outputs(ctx.results)
        teacher_metrics = ctx.results["reference"].metrics.get("task_metrics") or {}
        att.measured = ctx.task.evaluate(run.outputs, ev.y, teacher_out)
        att.gate = ctx.task.gate(att.measured, teacher_metrics, ctx.settings.validate.max_accuracy_drop_pp)
        if self.timed:
            att.p50_ms = (run.result.get("latency_ms") or {}).get("p50")
        self.attempts.append(att)
        return att

    def better(self, a: Attempt | None, b: Attempt | None) -> Attempt | None:
        """The attempt closer to the budget: within budget first, then the better metric."""
        ok = [x for x in (a, b) if x is not None and x.measured is not None]
        if not ok:
            return None
        task = self.ctx.task

        def key(x: Attempt) -> tuple[bool, float]:
            v = x.measured.get(task.metric)
            v = float("-inf") if v is None else (v if task.higher_is_better else -v)
            return x.passed, v
        return max(ok, key=key)

    def best(self, steps: tuple[str, ...] | None = None, route: Any = ...) -> Attempt | None:
        """The best attempt of these steps (all), by this route (any)."""
        best = None
        for att in self.attempts:
            if (steps is None or att.step in steps) and (route is ... or att.route == route):
                best = self.better(best, att) if best is not None else (att if att.measured is not None else None)
        return best


class Step(ABC):
    name: ClassVar[str]
    int8_only: ClassVar[bool] = True       # advanced, mixed and qat act on int8 activations

    @abstractmethod
    def run(self, rec: Recovery) -> str | None:
        """Make this step's attempts (rec.attempt); return why the step did not run, if it did not."""


class Ptq(Step):
    name = "ptq"
    int8_only = False

    def run(self, rec: Recovery) -> str | None:
        routes = rec.ctx.target.routes(rec.config)
        first = None
        for route in routes:
            att = rec.attempt("ptq", QuantPlan("ptq"), route=route, tag="")
            if att.error is not None:
                continue
            first = first or att
            if att.passed:
                rec.route = route
                return None
        if first is None:
            failed = [a for a in rec.attempts if a.step == "ptq"]
            if len(routes) == 1:
                raise ConversionError(failed[0].error)
            raise ConversionError(f"target {rec.ctx.target.name!r}: no conversion route converts the model: "
                                  + "; ".join(f"{a.route}: {a.error}" for a in failed))
        rec.route = first.route
        return None


class Advanced(Step):
    name = "advanced"

    def run(self, rec: Recovery) -> str | None:
        rec.attempt("advanced", QuantPlan("advanced", advanced=True, layers=tuple(rec.layers)))
        return None


class Mixed(Step):
    name = "mixed"

    def run(self, rec: Recovery) -> str | None:
        if not rec.sensitivity:
            return "no per-layer sensitivity to rank the layers by (quantize.sensitivity_samples = 0?)"
        limit = rec.config.max_float_layers
        if limit == 0:
            return "quantize.max_float_layers = 0"
        base = rec.best(("ptq", "advanced"), route=rec.route)
        advanced = bool(base and base.plan.advanced)
        by_path = {lay.path: lay for lay in rec.layers}
        chosen: list[Layer] = []
        region: list[Layer] = []
        previous = base
        for row in rec.sensitivity:
            lay = by_path.get(row["module_path"])
            if lay is None or lay in region:
                continue
            wider = float_region(rec.layers, chosen + [lay])
            if len(wider) > limit:
                if not chosen:
                    return (f"the most sensitive layer, {lay.path}, needs {len(wider)} layers in float (itself and "
                            f"the layers reading its output: {', '.join(x.path for x in wider)}), more than "
                            f"quantize.max_float_layers = {limit}")
                rec.notes.append(f"quantize: mixed: stopped at quantize.max_float_layers = {limit} (the next layer, "
                                 f"{lay.path}, would need {len(wider)} in float)")
                break
            chosen.append(lay)
            region = wider
            att = rec.attempt("mixed", QuantPlan("mixed", advanced=advanced, float_layers=tuple(region),
                                                 layers=tuple(rec.layers)), tag=str(len(chosen)))
            if att.error is not None:
                return None
            rec.float_costs.append(_cost(lay, region, att, previous, rec.ctx.task.metric))
            previous = att
            if att.passed:
                return None
        return None


def _cost(lay: Layer, region: list[Layer], att: Attempt, before: Attempt | None, metric: str) -> dict[str, Any]:
    """What keeping `lay` (and the layers reading it) in float changed, against the attempt before."""
    out: dict[str, Any] = {"module_path": lay.path, "op": lay.op, "layer": lay.index,
                           "with": [x.path for x in region], "value": att.measured.get(metric),
                           "size_bytes": att.converted.size_bytes, "p50_ms": att.p50_ms}
    if before is not None and before.converted is not None:
        out["size_cost_bytes"] = att.converted.size_bytes - before.converted.size_bytes
        if att.p50_ms is not None and before.p50_ms is not None:
            out["latency_cost_ms"] = round(att.p50_ms - before.p50_ms, 4)
        if before.measured is not None and att.measured.get(metric) is not None \
                and before.measured.get(metric) is not None:
            out["gain"] = round(att.measured[metric] - before.measured[metric], 4)
    return out


class Qat(Step):
    name = "qat"

    def run(self, rec: Recovery) -> str | None:
        from .targets._pt2e import qat_module, trained_student
        from .torchmodel import load_module, save_module
        from .training import TrainingConfig, train_kd, training_data

        ctx = rec.ctx
        if rec.module is None:
            return "no torch module of the student to train"
        if ctx.data.train is None or len(ctx.data.train) == 0:
            return "needs a training split (--train-data FILE.npz)"
        distill = ctx.settings.distill
        cfg = TrainingConfig(epochs=rec.config.qat_epochs, lr=rec.config.qat_lr, batch_size=distill.batch_size,
                             optimizer=distill.optimizer, weight_decay=distill.weight_decay, schedule="cosine",
                             temperature=distill.temperature, alpha=distill.alpha, val_fraction=distill.val_fraction,
                             seed=distill.seed)
        try:
            data = training_data(ctx.data, cfg, "quantize.qat", ctx.task)
        except UsageError as e:
            return str(e)
        base = rec.best(route=rec.route)
        float_layers = base.plan.float_layers if base is not None else ()
        student = load_module(rec.module)
        t0 = time.perf_counter()
        try:
            qat = qat_module(student, ctx.data.example(2), rec.config.per_channel, float_layers, tuple(rec.layers))
        except Exception as e:      # noqa: BLE001 - torch.export / PT2E refusing the student: the step did not run
            return f"PT2E cannot prepare the student for QAT: {_first_line(e)}"
        report = train_kd(qat, ctx.teacher.module.eval(), data, cfg, progress=ctx.progress, label="qat", task=ctx.task)
        trained = trained_student(student, qat)
        where = Path(ctx.workdir) / "qat"
        module = save_module(trained, where / "model.pt")
        export = ctx.settings.export
        exported = ctx.target.export(trained, ctx.data.example(1), where / "export", opset=export.opset,
                                     output_names=ctx.output_names, dynamic_batch=export.dynamic_batch)
        plan = QuantPlan("qat", advanced=bool(base and base.plan.advanced), float_layers=float_layers,
                         layers=tuple(rec.layers))
        att = rec.attempt("qat", plan, exported=exported, module=module)
        rec.notes.append(f"quantize: qat: {cfg.epochs} epochs of KD from the teacher with XNNPACK fake quantization "
                         f"(best epoch {report.best_epoch}, {time.perf_counter() - t0:.1f} s)"
                         + (f", {len(float_layers)} layer(s) in float as in the best step before" if float_layers
                            else "") + ("" if att.error is None else f"; conversion failed: {att.error}"))
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


STEPS: dict[str, type[Step]] = {cls.name: cls for cls in (Ptq, Advanced, Mixed, Qat)}


def run_recovery(rec: Recovery) -> tuple[Attempt, list[dict[str, Any]]]:
    """Run the configured steps in order until one meets the budget; return the attempt kept
    (the one within budget, else the best) and one row per step (ran, skipped, not offered)."""
    target, config = rec.ctx.target, rec.config
    summary: list[dict[str, Any]] = []
    for name in config.recovery:
        if name not in target.recovery_steps:
            summary.append({"step": name, "status": "not offered", "why": f"target {target.name!r} has no {name!r} step"})
            continue
        step = STEPS[name]()
        if step.int8_only and config.scheme != "int8":
            summary.append({"step": name, "status": "skipped", "why": f"scheme {config.scheme!r} (int8 only)"})
            continue
        before = len(rec.attempts)
        why = step.run(rec)
        made = rec.attempts[before:]
        if why is not None and not made:
            summary.append({"step": name, "status": "skipped", "why": why})
            continue
        passed = any(a.passed for a in made)
        summary.append({"step": name, "status": "within budget" if passed else
                        ("failed" if all(a.error is not None for a in made) else "over budget"),
                        "attempts": len(made)})
        if passed:
            break
    # Kept: the attempt within budget; else the best of ptq's first converted route and every later
    # attempt (with ptq alone, the first route that converted, as before recovery existed).
    ptq = [a for a in rec.attempts if a.step == "ptq" and a.measured is not None]
    candidates = ptq[:1] + [a for a in rec.attempts if a.step != "ptq"]
    kept = next((a for a in rec.attempts if a.passed), None)
    if kept is None:
        for a in candidates:
            kept = a if kept is None else rec.better(kept, a)
    return kept, summary
