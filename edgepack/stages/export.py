"""export: torch -> the interchange format the target converts from (ONNX, or a
torch.export program for ExecuTorch), checked against torch on a sample."""
from __future__ import annotations

from ..artifacts import Artifact
from ..config import ExportConfig
from ..torchmodel import count_params_macs, load_module
from .base import BuildContext, Stage, StageResult, target_toolchain


class ExportStage(Stage):
    name = "export"
    order = 40
    config_model = ExportConfig

    def toolchain(self, config, ctx: BuildContext) -> dict[str, str]:
        return target_toolchain(ctx)

    def run(self, artifact: Artifact, config: ExportConfig, ctx: BuildContext) -> StageResult:
        module = load_module(artifact)
        exported = ctx.target.export(module, ctx.data.evaluation.x[:1], ctx.workdir, opset=config.opset)
        params, macs = count_params_macs(module, ctx.data.input_shape)
        return StageResult(exported, {"params": params, "macs": macs, "size_bytes": exported.size_bytes,
                                      "format": exported.kind})
