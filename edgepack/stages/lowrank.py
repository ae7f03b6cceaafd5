"""lowrank: truncated SVD of Linear layers and 1x1 convolutions, then KD fine-tuning.

A weight W (out x in) becomes B @ A with A = sqrt(S_r) V_r^T (r x in) and
B = U_r sqrt(S_r) (out x r): two thinner layers, r (in + out) weights instead of
in * out. The rank r is the smallest that retains `energy` of sum(s^2), or the one that
keeps `param_budget` of the layer's weights. A layer is factorized only when that
makes it smaller. Off in the default profile (`--set lowrank.enabled=true`).
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

from ..artifacts import Artifact
from ..torchmodel import count_params_macs, load_module, save_module
from ..training import TrainingConfig, model_metrics, reference_outputs, teacher_logits, train_kd, training_data
from .base import BuildContext, Stage, StageResult


class LowRankConfig(TrainingConfig):
    enabled: bool = False
    energy: float = Field(0.9, gt=0, le=1)                # retained share of sum(s^2)
    param_budget: float | None = Field(None, gt=0, lt=1)  # or: keep this fraction of each layer's weights
    conv1x1: bool = True                                  # factorize 1x1 convolutions too
    min_params: int = Field(1024, ge=0)                   # leave smaller layers alone
    epochs: int = Field(3, ge=0)                          # KD fine-tuning epochs


def choose_rank(s: Any, n_in: int, n_out: int, energy: float, param_budget: float | None) -> int:
    """The rank to keep for singular values `s` (descending) of an n_out x n_in weight."""
    if param_budget is not None:
        return max(1, int(param_budget * n_in * n_out / (n_in + n_out)))
    e = (s.double() ** 2).cumsum(0)
    return int(min(len(s), int((e / e[-1] < energy - 1e-12).sum()) + 1))


def factorize(layer: Any, rank: int) -> Any:
    """Two layers whose product is the rank-`rank` truncated SVD of `layer`'s weight."""
    import torch
    from torch import nn

    conv = isinstance(layer, nn.Conv2d)
    w = layer.weight.detach()
    n_out, n_in = w.shape[0], w.shape[1]
    u, s, vh = torch.linalg.svd(w.reshape(n_out, n_in), full_matrices=False)
    root = s[:rank].sqrt()
    a = vh[:rank] * root[:, None]          # r x in
    b = u[:, :rank] * root[None, :]        # out x r
    bias = layer.bias is not None
    if conv:
        first = nn.Conv2d(n_in, rank, 1, stride=layer.stride, bias=False)
        second = nn.Conv2d(rank, n_out, 1, bias=bias)
        a, b = a[:, :, None, None], b[:, :, None, None]
    else:
        first, second = nn.Linear(n_in, rank, bias=False), nn.Linear(rank, n_out, bias=bias)
    with torch.no_grad():
        first.weight.copy_(a)
        second.weight.copy_(b)
        if bias:
            second.bias.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


def _candidates(model: Any, conv1x1: bool, min_params: int) -> list[tuple[str, Any]]:
    from torch import nn

    # nn.MultiheadAttention reads its out_proj's weight directly: a factorized one would break it.
    inside_attention = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention))
    out = []
    for name, m in model.named_modules():
        if inside_attention and name.startswith(inside_attention):
            continue
        if isinstance(m, nn.Linear):
            ok = True
        elif conv1x1 and isinstance(m, nn.Conv2d):
            ok = (m.kernel_size == (1, 1) and m.groups == 1 and m.padding in ((0, 0), "valid")
                  and m.dilation == (1, 1) and m.padding_mode == "zeros")
        else:
            ok = False
        if ok and m.weight.numel() >= min_params:
            out.append((name, m))
    return out


def _set_submodule(model: Any, name: str, new: Any) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


class LowRankStage(Stage):
    name = "lowrank"
    order = 30
    config_model = LowRankConfig

    def check(self, config: LowRankConfig, ctx: BuildContext) -> None:
        if config.epochs > 0:
            training_data(ctx.data, config, self.section, ctx.task)

    def cache_key_extra(self, config: LowRankConfig, ctx: BuildContext) -> dict[str, Any]:
        return {"teacher": ctx.teacher.sha256}

    def run(self, artifact: Artifact, config: LowRankConfig, ctx: BuildContext) -> StageResult:
        import torch

        model = load_module(artifact)
        before = count_params_macs(model, ctx.data.example(1))
        layers = []
        with torch.no_grad():
            for name, m in _candidates(model, config.conv1x1, config.min_params):
                n_out, n_in = m.weight.shape[0], m.weight.shape[1]
                s = torch.linalg.svdvals(m.weight.detach().reshape(n_out, n_in))
                rank = choose_rank(s, n_in, n_out, config.energy, config.param_budget)
                kept = float((s[:rank] ** 2).sum() / (s ** 2).sum()) if float((s ** 2).sum()) > 0 else 1.0
                entry = {"layer": name, "shape": [n_out, n_in], "rank": rank, "energy": round(kept, 4)}
                if rank * (n_in + n_out) >= n_in * n_out:
                    entry["skipped"] = "no smaller at this rank"
                else:
                    _set_submodule(model, name, factorize(m, rank))
                layers.append(entry)
        done = [e for e in layers if "skipped" not in e]
        fine = {}
        if done and config.epochs > 0:
            td = training_data(ctx.data, config, self.section, ctx.task)
            teacher = ctx.teacher.module.eval()
            rep = train_kd(model, teacher, td, config, teacher_out=teacher_logits(teacher, td.x),
                           progress=ctx.progress, label="lowrank", task=ctx.task)
            fine = {k: v for k, v in rep.metrics().items() if k != "history"}
        t_eval = reference_outputs(ctx.results)
        metrics = model_metrics(model, ctx.data, teacher_out=t_eval, task=ctx.task)
        metrics.update(params_before=before[0], macs_before=before[1], layers=layers, finetune=fine)
        rule = (f"param_budget {config.param_budget}" if config.param_budget is not None
                else f"energy {config.energy}")
        note = (f"lowrank: {len(done)} of {len(layers)} candidate layer(s) factorized ({rule}): "
                f"{before[0]:,} -> {metrics['params']:,} params" if layers else
                f"lowrank: no Linear or 1x1 conv layer with {config.min_params}+ weights; nothing factorized")
        return StageResult(save_module(model, ctx.workdir / "model.pt"), metrics, notes=[note])
