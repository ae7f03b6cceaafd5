"""prune: fewer channels (structured) or fewer non-zero weights (unstructured).

structured   Torch-Pruning (DepGraph) channel pruning: a channel is removed together
             with everything that depends on it (the next layer's inputs, BatchNorm,
             residual partners), so the model is really smaller and faster on every
             runtime. Importance L1 / L2 / Taylor; a target ratio or a MAC budget;
             global or uniform; one shot or in steps with KD fine-tuning between
             steps; BatchNorm statistics re-estimated after each cut.
unstructured global L1 magnitude pruning (torch.nn.utils.prune.global_unstructured),
             gradual (cubic schedule, Zhu & Gupta 2017) to the target sparsity with KD
             fine-tuning; the re-parametrisation is removed before export. Zeros shrink
             the compressed (zip) bundle, not the latency.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..artifacts import Artifact
from ..errors import UsageError
from ..arrays import to_torch
from ..inputs.data import Split, draw
from ..torchmodel import count_params_macs, load_module, save_module
from ..training import (TrainingConfig, check_pruned, output_shapes, pruning_guard, channel_pruner, compressed_size_bytes, model_metrics, reestimate_bn,
                        reference_outputs, taylor_gradients, teacher_logits, train_kd, training_data)
from .base import BuildContext, Stage, StageResult

BN_SAMPLES = 2048   # samples that re-estimate BatchNorm statistics (and feed Taylor gradients)

DENSE_SPEED_NOTE = ("prune: unstructured sparsity makes the bundle smaller once compressed (zip), not faster: "
                    "TFLite and the other runtimes run the zeros at dense speed")


class PruneConfig(TrainingConfig):
    enabled: bool = True
    method: Literal["structured", "unstructured"] = "structured"
    # structured
    ratio: float = Field(0.3, ge=0, lt=1)                  # fraction of channels removed
    mac_budget: float | None = Field(None, gt=0, le=1)     # or: keep at most this fraction of the input's MACs
    criterion: Literal["l1", "l2", "taylor"] = "l2"
    scope: Literal["global", "uniform"] = "uniform"
    max_layer_ratio: float = Field(0.9, gt=0, lt=1)        # global: no layer loses more than this
    round_to: int | None = Field(None, ge=1)               # keep channel counts a multiple of this
    # unstructured
    sparsity: float = Field(0.5, ge=0, lt=1)               # fraction of Conv/Linear weights set to zero
    # both
    steps: int = Field(1, ge=1)                            # prune in this many steps, fine-tuning after each
    epochs: int = Field(3, ge=0)                           # KD fine-tuning epochs after each step


class PruneStage(Stage):
    name = "prune"
    order = 20
    config_model = PruneConfig

    def check(self, config: PruneConfig, ctx: BuildContext) -> None:
        if config.epochs > 0:
            training_data(ctx.data, config, self.section, ctx.task)
        if config.method == "structured" and config.criterion == "taylor" and ctx.task.kind != "classification":
            raise UsageError(f"prune.criterion = 'taylor' needs class labels (its gradients come from the "
                             f"cross-entropy); the task is {ctx.task.kind}: use l1 or l2")

    def cache_key_extra(self, config: PruneConfig, ctx: BuildContext) -> dict[str, Any]:
        return {"teacher": ctx.teacher.sha256}      # the KD fine-tuning learns from it

    def run(self, artifact: Artifact, config: PruneConfig, ctx: BuildContext) -> StageResult:

        model = load_module(artifact)
        teacher = ctx.teacher.module.eval()
        td = training_data(ctx.data, config, self.section, ctx.task) if config.epochs > 0 else None
        t_out = teacher_logits(teacher, td.x) if td is not None else None
        before = count_params_macs(model, ctx.data.example(1))
        example = to_torch(ctx.data.example(2))
        # BatchNorm re-estimation and Taylor gradients: a seeded draw (stratified by class),
        # never the first samples, which in a class-sorted file are the first classes only.
        pool = Split(td.x, td.y) if td is not None else ctx.data.calibration
        calib_split, _ = draw(pool, BN_SAMPLES, config.seed)
        calib = calib_split.x

        def finetune(step: int) -> dict[str, Any]:
            if td is None:
                return {}
            cfg = config.model_copy(update={"seed": config.seed + step})
            rep = train_kd(model, teacher, td, cfg, teacher_out=t_out, progress=ctx.progress,
                           label=f"prune {step}/{config.steps}", task=ctx.task)
            return {"step": step, **{k: v for k, v in rep.metrics().items() if k != "history"}}

        if config.method == "structured":
            steps, extra = self._structured(model, example, config, ctx, calib_split, finetune, before[1])
        else:
            steps, extra = self._unstructured(model, config, calib, finetune)
        attention_notes = extra.pop("notes", [])
        t_eval = reference_outputs(ctx.results)
        metrics = model_metrics(model, ctx.data, teacher_out=t_eval, task=ctx.task)
        metrics.update(method=config.method, params_before=before[0], macs_before=before[1],
                       compressed_size_bytes=compressed_size_bytes(model), steps=steps, **extra)
        notes = [self._summary(config, metrics), *attention_notes]
        if config.method == "structured" and config.mac_budget is not None:
            notes.append(f"prune: prune.mac_budget = {config.mac_budget} sets how much is cut; prune.ratio is not used")
        if config.method == "unstructured":
            notes.append(DENSE_SPEED_NOTE)
        return StageResult(save_module(model, ctx.workdir / "model.pt"), metrics, notes=notes)

    # -- structured --------------------------------------------------------------------
    def _structured(self, model: Any, example: Any, config: PruneConfig, ctx: BuildContext, calib_split: Split,
                    finetune: Any, base_macs: int) -> tuple[list, dict]:
        shape = ctx.data.example(1)
        shapes = output_shapes(model, example)
        glob = config.scope == "global"
        steps = []
        if config.mac_budget is None:
            if config.ratio == 0:
                return steps, {"ratio": 0.0}
            with pruning_guard(model, self.section):
                pruner = channel_pruner(model, example, ratio=config.ratio, criterion=config.criterion,
                                        global_pruning=glob, steps=config.steps,
                                        max_layer_ratio=config.max_layer_ratio if glob else 1.0,
                                        round_to=config.round_to)
            for step in range(1, config.steps + 1):
                self._gradients(model, config, calib_split)
                with pruning_guard(model, self.section):
                    pruner.step()
                check_pruned(model, example, shapes, self.section)
                steps.append(self._after_cut(model, shape, calib_split.x, step) | finetune(step))
            return steps, {"ratio": config.ratio, **self._attention(pruner)}
        # MAC budget: cut in small increments until each step's share of the budget is met.
        increments = 50 * config.steps
        with pruning_guard(model, self.section):
            pruner = channel_pruner(model, example, ratio=config.max_layer_ratio, criterion=config.criterion,
                                    global_pruning=glob, steps=increments, max_layer_ratio=config.max_layer_ratio,
                                    round_to=config.round_to)
        macs = base_macs
        for step in range(1, config.steps + 1):
            goal = base_macs * (1 - (1 - config.mac_budget) * step / config.steps)
            while macs > goal and pruner.current_step < increments:
                self._gradients(model, config, calib_split)
                with pruning_guard(model, self.section):
                    pruner.step()
                check_pruned(model, example, shapes, self.section)
                macs = count_params_macs(model, shape)[1]
            steps.append(self._after_cut(model, shape, calib_split.x, step) | finetune(step))
        if macs > base_macs * config.mac_budget * 1.0001:
            raise UsageError(f"prune.mac_budget = {config.mac_budget}: reached only {macs / base_macs:.3f} of the "
                             f"input's MACs with prune.max_layer_ratio = {config.max_layer_ratio} "
                             "(raise it, or the budget)")
        return steps, {"mac_budget": config.mac_budget, "macs_fraction": round(macs / base_macs, 4),
                       **self._attention(pruner)}

    @classmethod
    def _attention(cls, pruner: Any) -> dict[str, Any]:
        """What was done to attention (pruned by head dimensions, or kept whole and why), for the
        report, and its note; nothing for a model without attention."""
        if not pruner.attention:
            return {}
        return {**pruner.describe(), "notes": pruner.notes(cls.name)}

    @staticmethod
    def _gradients(model: Any, config: PruneConfig, calib: Split) -> None:
        if config.criterion == "taylor":
            taylor_gradients(model, calib.x, calib.y)

    @staticmethod
    def _after_cut(model: Any, shape: Any, calib: Any, step: int) -> dict[str, Any]:
        model.zero_grad(set_to_none=True)
        reestimate_bn(model, calib)
        params, macs = count_params_macs(model, shape)
        return {"step": step, "params": params, "macs": macs}

    # -- unstructured ------------------------------------------------------------------
    def _unstructured(self, model: Any, config: PruneConfig, calib: Any, finetune: Any) -> tuple[list, dict]:
        from torch import nn
        from torch.nn.utils import prune

        layers = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
        targets = [(m, "weight") for m in model.modules() if isinstance(m, layers)]
        total = sum(m.weight.numel() for m, _ in targets)
        steps = []
        for step in range(1, config.steps + 1):
            goal = config.sparsity * (1 - (1 - step / config.steps) ** 3)   # cubic: big cuts early, small late
            zeros_now = sum(int((m.weight_mask == 0).sum()) for m, _ in targets if hasattr(m, "weight_mask"))
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured,
                                      amount=max(0, int(round(goal * total)) - zeros_now))
            reestimate_bn(model, calib)
            steps.append({"step": step, "sparsity": round(_sparsity(targets), 5)} | finetune(step))
        for m, name in targets:
            if prune.is_pruned(m):
                prune.remove(m, name)          # bake the mask in: a plain weight for export
        reached = _sparsity(targets)
        all_params = sum(p.numel() for p in model.parameters())
        all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
        return steps, {"sparsity_target": config.sparsity, "sparsity": round(reached, 5),
                       "sparsity_all_params": round(all_zeros / all_params, 5), "pruned_weights": total}

    @staticmethod
    def _summary(config: PruneConfig, m: dict[str, Any]) -> str:
        if config.method == "unstructured":
            return (f"prune: unstructured sparsity {m['sparsity'] * 100:.1f}% of Conv/Linear weights "
                    f"(target {config.sparsity * 100:.1f}%); compressed FP32 weights "
                    f"{m['compressed_size_bytes'] / 1024:,.0f} KiB")
        return (f"prune: structured ({config.scope}, {config.criterion}) {m['params_before']:,} -> {m['params']:,} "
                f"params, {m['macs_before'] / 1e6:.1f} -> {m['macs'] / 1e6:.1f} M MACs")


def _sparsity(targets: list[tuple[Any, str]]) -> float:
    zeros = sum(int((getattr(m, name) == 0).sum()) for m, name in targets)
    return zeros / max(1, sum(getattr(m, name).numel() for m, name in targets))
