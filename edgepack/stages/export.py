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

    def cache_key_extra(self, config: ExportConfig, ctx: BuildContext) -> dict:
        return {"target": ctx.target.name, "outputs": ctx.output_names, "inputs": ctx.data.input_names}

    def toolchain(self, config, ctx: BuildContext) -> dict[str, str]:
        return target_toolchain(ctx)

    def run(self, artifact: Artifact, config: ExportConfig, ctx: BuildContext) -> StageResult:
        module = load_module(artifact)
        exported = ctx.target.export(module, ctx.data.example(1), ctx.workdir, opset=config.opset,
                                     output_names=ctx.output_names, dynamic_batch=config.dynamic_batch)
        params, macs = count_params_macs(module, ctx.data.example(1))
        # The torch module rides along: a route that converts from torch directly needs it.
        return StageResult(exported, {"params": params, "macs": macs, "size_bytes": exported.size_bytes,
                                      "format": exported.kind}, extras={"module": artifact})
