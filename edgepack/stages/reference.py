"""reference: the FP32 teacher, evaluated in torch and converted by the same target
with quantization off, so that every report shows size, speed and accuracy ratios."""
from __future__ import annotations

import numpy as np

from ..artifacts import Artifact
from ..config import ReferenceConfig
from ..torchmodel import accuracy, count_params_macs, fp32_size_bytes, load_module, predict
from .base import BuildContext, Stage, StageResult, target_toolchain


class ReferenceStage(Stage):
    name = "reference"
    order = 5
    config_model = ReferenceConfig

    def cache_key_extra(self, config: ReferenceConfig, ctx: BuildContext) -> dict:
        # it exports the teacher itself, with the export section's opset
        return {"target": ctx.target.name, "opset": ctx.settings.export.opset}

    def toolchain(self, config, ctx: BuildContext) -> dict[str, str]:
        return target_toolchain(ctx)

    def enabled(self, config, ctx) -> bool:
        return True   # the teacher's accuracy is the gate's baseline; only the conversion is optional

    def run(self, artifact: Artifact, config: ReferenceConfig, ctx: BuildContext) -> StageResult:
        module = load_module(artifact)
        ev = ctx.data.evaluation
        outputs = predict(module, ev.x)
        out_path = ctx.workdir / "teacher_outputs.npy"
        np.save(out_path, outputs)
        params, macs = count_params_macs(module, ctx.data.input_shape)
        metrics = {"params": params, "macs": macs, "size_bytes": fp32_size_bytes(module),
                   "accuracy": accuracy(outputs, ev.y)}
        extras = {"teacher_outputs": Artifact.from_file("npy", out_path)}
        if config.enabled:
            qcfg_model = ctx.target.quantize_config or type(ctx.settings.quantize)
            exported = ctx.target.export(module, ev.x[:1], ctx.workdir / "export", opset=ctx.settings.export.opset)
            ref = ctx.target.convert(exported, qcfg_model(scheme="none", io="float32"),
                                     ctx.data.calibration.x, ctx.workdir / "convert")
            extras["reference"] = ref
            metrics["reference"] = {"format": ctx.target.format, "size_bytes": ref.size_bytes,
                                    "scheme": "none"}
        return StageResult(artifact, metrics, extras)
