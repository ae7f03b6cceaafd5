"""reference: the FP32 teacher, evaluated in torch and converted by the same target
with quantization off, so that every report shows size, speed and metric ratios."""
from __future__ import annotations

from ..arrays import predict, save_named
from ..artifacts import Artifact
from ..config import ReferenceConfig
from ..errors import ConversionError
from ..torchmodel import count_params_macs, fp32_size_bytes, load_module
from .base import BuildContext, Stage, StageResult, target_toolchain


class ReferenceStage(Stage):
    name = "reference"
    order = 5
    config_model = ReferenceConfig

    def toolchain(self, config, ctx: BuildContext) -> dict[str, str]:
        return target_toolchain(ctx)

    def enabled(self, config, ctx) -> bool:
        return True   # the teacher's metric is the gate's baseline; only the conversion is optional

    def cache_key_extra(self, config: ReferenceConfig, ctx: BuildContext) -> dict:
        # It exports the teacher itself (the export section: opset, batch), and scores it by the task's metric.
        return {"target": ctx.target.name, "export": ctx.settings.export.model_dump(mode="json"),
                "task": ctx.task.kind, "metric": ctx.task.metric, "outputs": ctx.output_names}

    def run(self, artifact: Artifact, config: ReferenceConfig, ctx: BuildContext) -> StageResult:
        module = load_module(artifact)
        ev = ctx.data.evaluation
        outputs = predict(module, ev.x)
        out_path = ctx.workdir / "teacher_outputs.npz"
        save_named(out_path, outputs, ctx.output_names)
        params, macs = count_params_macs(module, ctx.data.example(1))
        measured = ctx.task.evaluate(outputs, ev.y)
        metrics = {"params": params, "macs": macs, "size_bytes": fp32_size_bytes(module),
                   "metric": ctx.task.metric, "accuracy": measured.get(ctx.task.metric), "task_metrics": measured}
        extras = {"teacher_outputs": Artifact.from_file("npz", out_path)}
        if config.enabled:
            qcfg_model = ctx.target.quantize_config or type(ctx.settings.quantize)
            export = ctx.settings.export
            exported = ctx.target.export(module, ctx.data.example(1), ctx.workdir / "export", opset=export.opset,
                                         output_names=ctx.output_names, dynamic_batch=export.dynamic_batch)
            # The teacher in float by the first route that converts it (the routes the profile
            # lists for the bundle, in its order).
            qcfg = qcfg_model(**{**ctx.settings.quantize.model_dump(), "scheme": "none", "io": "float32"})
            errors: list[tuple[str | None, ConversionError]] = []
            ref = None
            for route in ctx.target.routes(qcfg):
                try:
                    ref = ctx.target.convert(exported, qcfg, ctx.data.calibration.x,
                                             ctx.workdir / (f"convert-{route}" if route else "convert"),
                                             route=route, module=artifact)
                    break
                except ConversionError as e:
                    errors.append((route, e))
            if ref is None:
                if len(errors) == 1:
                    raise errors[0][1]
                raise ConversionError(f"target {ctx.target.name!r}: the FP32 teacher converts by no route: "
                                      + "; ".join(f"{r}: {e}" for r, e in errors))
            extras["reference"] = ref
            metrics["reference"] = {"format": ctx.target.format, "size_bytes": ref.size_bytes,
                                    "scheme": "none"}
        return StageResult(artifact, metrics, extras)
