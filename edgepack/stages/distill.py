"""distill: knowledge distillation from the FP32 teacher into a smaller student.

The student is given (`--student FILE.py:FACTORY`, or `distill.student` in the project
file) or derived from the teacher by a width multiplier: uniform structured channel
pruning through Torch-Pruning's dependency graph keeps the most important
`student_width` of every layer's channels (and their weights, a far better start than
random ones), then KD training recovers what was lost.

Loss: the task's (edgepack/tasks.py): for classification alpha * T^2 * KL(teacher/T ||
student/T) + (1 - alpha) * CE(labels); for other tasks every output matched to the
teacher's (MSE scaled by its variance, or cosine), no label term; plus optional feature hints (MSE through a learned 1x1 adapter, or cosine). Trained on the
training split only; a validation slice carved from it picks the best epoch.
"""
from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from ..artifacts import Artifact
from ..errors import ConversionError, EdgepackError, UsageError
from ..arrays import describe, flatten_outputs, n_samples, to_torch
from ..torchmodel import load_module, save_module
from ..training import (FeatureTaps, Hint, HintConfig, TrainingConfig, check_width, derive_by_width, find_layer,
                        first_line, make_adapter, model_metrics, reference_outputs, train_kd, training_data)
from .base import BuildContext, Stage, StageResult


class DistillConfig(TrainingConfig):
    enabled: bool = True
    student: str | None = None                       # FILE.py:FACTORY; --student wins over it
    student_width: float = Field(0.5, gt=0, le=1)   # derived student: fraction of channels kept per layer
    hints: tuple[HintConfig, ...] = ()               # [{teacher = "layer2", student = "layer2", loss = "mse"}]
    hint_weight: float = Field(1.0, ge=0)
    epochs: int = Field(30, ge=0)


class DistillStage(Stage):
    name = "distill"
    order = 10
    config_model = DistillConfig

    def __init__(self) -> None:
        self._student: Any = None      # the given student's LoadedModel, loaded once per build

    # -- what the student is ---------------------------------------------------------
    def _student_field(self, config: DistillConfig, ctx: BuildContext) -> tuple[str | None, str]:
        if ctx.student_spec:
            return ctx.student_spec, "--student"
        return config.student, "distill.student"

    def _given_student(self, config: DistillConfig, ctx: BuildContext) -> Any:
        spec, field_name = self._student_field(config, ctx)
        if spec is None:
            return None
        if self._student is None or self._student.spec != spec:
            from ..inputs.model import load_model

            try:
                self._student = load_model(spec)
            except UsageError as e:
                raise UsageError(f"{field_name}: {e}") from None
        return self._student

    def check(self, config: DistillConfig, ctx: BuildContext) -> None:
        """Everything about this stage's input that can be wrong, before any training."""
        import torch

        training_data(ctx.data, config, self.section, ctx.task)
        example = to_torch(ctx.data.example(2))
        teacher = ctx.teacher.module
        teacher.eval()
        with torch.no_grad():
            t_shape = [tuple(o.shape) for o in flatten_outputs(teacher(*example))]
        given = self._given_student(config, ctx)
        for i, h in enumerate(config.hints):       # a derived student keeps the teacher's layer names
            find_layer(teacher, h.teacher, f"distill.hints[{i}].teacher", "teacher")
            find_layer(teacher if given is None else given.module, h.student, f"distill.hints[{i}].student", "student")
        if given is None:
            check_width(teacher, example, config.student_width, "distill.student_width")
            return
        spec, field_name = self._student_field(config, ctx)
        try:
            with torch.no_grad():
                s_out = given.module.eval()(*example)
        except Exception as e:
            raise UsageError(f"{field_name} {spec}: forward fails on input {describe(ctx.data.example(2))}: "
                             f"{first_line(e)}") from None
        s_shape = [tuple(o.shape) for o in flatten_outputs(s_out, f"{field_name} {spec}")]
        if s_shape != t_shape:
            s_shape, t_shape = (s_shape[0], t_shape[0]) if len(s_shape) == len(t_shape) == 1 else (s_shape, t_shape)
            raise UsageError(f"{field_name} {spec}: output shape {s_shape} differs from the teacher's {t_shape}")
        with tempfile.TemporaryDirectory(prefix="edgepack-student-") as tmp:
            self._check_export(given.module, ctx, Path(tmp))

    def cache_key_extra(self, config: DistillConfig, ctx: BuildContext) -> dict[str, Any]:
        # Loading the given student also imports its file, which a cached student's pickle needs.
        given = self._given_student(config, ctx)
        return {"teacher": ctx.teacher.sha256,
                "student": None if given is None else {"spec": given.spec, "sha256": given.sha256}}

    # -- the work ---------------------------------------------------------------------
    def run(self, artifact: Artifact, config: DistillConfig, ctx: BuildContext) -> StageResult:

        self.check(config, ctx)
        teacher = ctx.teacher.module.eval()
        example = to_torch(ctx.data.example(2))
        given = self._given_student(config, ctx)
        notes = []
        if given is not None:
            student = copy.deepcopy(given.module)      # its export was checked in check()
            origin = {"kind": "given", "spec": given.spec}
        else:
            student = derive_by_width(load_module(artifact), example, config.student_width, "distill.student_width",
                                      notes=notes)
            origin = {"kind": "derived", "width": config.student_width, "method": "uniform L2 channel pruning"}
            self._check_export(student, ctx, ctx.workdir / "export-check")

        hints = self._hints(config, teacher, student, example)
        td = training_data(ctx.data, config, self.section, ctx.task)
        before = model_metrics(student, ctx.data, teacher_out=None, task=ctx.task)
        report = train_kd(student, teacher, td, config, hints=hints, hint_weight=config.hint_weight,
                          progress=ctx.progress, label="distill", task=ctx.task)
        t_eval = reference_outputs(ctx.results)
        metrics = model_metrics(student, ctx.data, teacher_out=t_eval, task=ctx.task)
        metrics.update(student=origin, accuracy_before_training=before["accuracy"],
                       train_samples=len(td), val_samples=n_samples(td.val_x),
                       hints=[h.model_dump() for h in config.hints], **report.metrics())
        t_params = ctx.results["reference"].metrics.get("params") if "reference" in ctx.results else None
        what = (f"given by {given.spec}" if given is not None
                else f"derived from the teacher at width {config.student_width}")
        notes.insert(0, f"distill: student {what}: {metrics['params']:,} params"
                     + (f" ({t_params / metrics['params']:.1f}x fewer than the teacher)" if t_params else "")
                     + (f", best validation accuracy {report.best_val_accuracy}% "
                        if ctx.task.kind == "classification" else f", best validation loss {-report.best_val_accuracy} ")
                     + f"at epoch {report.best_epoch}/{config.epochs}")
        art = save_module(student, ctx.workdir / "model.pt")
        return StageResult(art, metrics, notes=notes)

    def _hints(self, config: DistillConfig, teacher: Any, student: Any, example: Any) -> list[Hint]:
        import torch

        hints = []
        for i, h in enumerate(config.hints):
            find_layer(teacher, h.teacher, f"distill.hints[{i}].teacher", "teacher")
            find_layer(student, h.student, f"distill.hints[{i}].student", "student")
            hints.append(Hint(h.teacher, h.student, h.loss))
        if not hints:
            return hints
        s_taps = FeatureTaps(student, [h.student for h in hints])
        t_taps = FeatureTaps(teacher, [h.teacher for h in hints])
        try:
            with torch.no_grad():
                student.eval()(*example)
                teacher(*example)
            for i, h in enumerate(hints):
                s, t = s_taps.out[h.student], t_taps.out[h.teacher]
                if s.ndim != t.ndim or s.ndim not in (2, 4):
                    raise UsageError(f"distill.hints[{i}]: student {h.student} gives shape {tuple(s.shape)}, "
                                     f"teacher {h.teacher} {tuple(t.shape)}: a hint needs (N, C) or "
                                     "(N, C, H, W) on both")
                h.adapter = make_adapter(s, t)
        finally:
            s_taps.close()
            t_taps.close()
        torch.manual_seed(config.seed)
        for h in hints:
            if h.adapter is not None:
                torch.nn.init.kaiming_uniform_(h.adapter.weight, a=5 ** 0.5)
        return hints

    @staticmethod
    def _check_export(student: Any, ctx: BuildContext, folder: Path) -> None:
        """The target's own export, on the untrained student: fail here, naming the op,
        rather than after minutes of training or in a later stage."""
        try:
            ctx.target.export(student, ctx.data.example(1), folder, opset=ctx.settings.export.opset,
                              output_names=ctx.output_names)
        except EdgepackError as e:
            raise ConversionError(f"distill: the student cannot be exported for target {ctx.target.name}: "
                                  f"{e}") from None
        except Exception as e:         # an exporter error the target did not translate
            from ..targets._onnx import _unsupported_op

            op = _unsupported_op(str(e))
            raise ConversionError(f"distill: the student cannot be exported for target {ctx.target.name}"
                                  + (f": operator {op} is not supported" if op else "")
                                  + f": {first_line(e)}") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
