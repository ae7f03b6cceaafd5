"""prune: structured (DepGraph) pruning keeps the output shape and exports, unstructured
reaches its sparsity within 1 %, BatchNorm is re-estimated, and the cache reruns prune
and what follows, not distill, when prune.ratio changes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SMALL = ["distill.epochs=2", "distill.batch_size=16", "distill.lr=0.01", "prune.epochs=1", "prune.batch_size=16",
         "lowrank.epochs=1", "lowrank.batch_size=16"]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, tiny_data) -> Path:
    path = tmp_path_factory.mktemp("prune") / "train.npz"
    x, y = tiny_data(200, seed=1)
    np.savez(path, x=x, y=y)
    return path


def make_ctx(tiny, train_file: Path, workdir: Path, *overrides: str):
    from edgepack.config import load_settings
    from edgepack.inputs.data import load_data
    from edgepack.inputs.model import load_model
    from edgepack.pipeline import section_models
    from edgepack.stages.base import BuildContext
    from edgepack.targets.base import get_target

    target = get_target("tflite-int8")
    settings = load_settings("tflite-int8", section_models(target), overrides=[*SMALL, *overrides])
    data = load_data(tiny["data"], settings.data, calibration_samples=16, train_spec=train_file)
    teacher = load_model(f"{tiny['model']}:make_model", tiny["weights"])
    workdir.mkdir(parents=True, exist_ok=True)
    return BuildContext(settings=settings, target=target, data=data, teacher=teacher, workdir=workdir)


def run_prune(tiny, train_file, tmp_path, *overrides):
    from edgepack.stages.prune import PruneStage
    from edgepack.torchmodel import load_module, save_module

    ctx = make_ctx(tiny, train_file, tmp_path / "work", *overrides)
    art = save_module(ctx.teacher.module, tmp_path / "in.pt")
    result = PruneStage().run(art, ctx.settings["prune"], ctx)
    return ctx, result, load_module(result.artifact)


# -- structured ----------------------------------------------------------------------------

@pytest.mark.parametrize("scope, criterion", [("uniform", "l2"), ("uniform", "l1"), ("global", "taylor")])
def test_default_teacher_pruned_keeps_output_shape_and_exports(scope, criterion, tmp_path):
    from edgepack.inputs.default_model import load_default_teacher
    from edgepack.inputs.digits import digits_splits
    from edgepack.targets._onnx import export_onnx
    from edgepack.torchmodel import count_params_macs
    from edgepack.training import channel_pruner, reestimate_bn, taylor_gradients

    model = load_default_teacher()
    xs, ys = digits_splits()["calibration"]
    x = torch.from_numpy(xs[:64])
    before = count_params_macs(model, (1, 32, 32))
    pruner = channel_pruner(model, x[:2], ratio=0.4, criterion=criterion, global_pruning=scope == "global")
    if criterion == "taylor":
        taylor_gradients(model, x.numpy(), ys[:64], batch_size=32)
    pruner.step()
    reestimate_bn(model, x.numpy())
    after = count_params_macs(model, (1, 32, 32))
    assert model(x[:3]).shape == (3, 10) and model.fc.out_features == 10
    assert after[0] < 0.5 * before[0] and after[1] < 0.5 * before[1]
    if scope == "uniform":
        assert model.stem[0].out_channels == int(48 * 0.6)
    assert export_onnx(model, x[:1].numpy(), tmp_path / "pruned.onnx").path.exists()


def test_structured_stage_in_steps_with_kd_finetuning(tiny, train_file, tmp_path):
    ctx, result, model = run_prune(tiny, train_file, tmp_path, "prune.ratio=0.5", "prune.steps=2")
    m = result.metrics
    assert m["method"] == "structured" and len(m["steps"]) == 2
    assert m["steps"][0]["params"] > m["steps"][1]["params"] == m["params"] < m["params_before"]
    assert all("best_epoch" in s for s in m["steps"])                 # fine-tuned after each step
    assert {"params", "macs", "size_bytes", "accuracy", "compressed_size_bytes"} <= set(m)
    assert model(torch.from_numpy(ctx.data.evaluation.x["input"][:5])).shape == (5, 4)
    assert m["accuracy"] >= 80
    from edgepack.targets._onnx import export_onnx

    export_onnx(model, ctx.data.evaluation.x["input"][:1], tmp_path / "m.onnx")


def test_mac_budget_is_met(tiny, train_file, tmp_path):
    _, result, _ = run_prune(tiny, train_file, tmp_path, "prune.mac_budget=0.5", "prune.epochs=0")
    m = result.metrics
    assert m["macs"] <= 0.5 * m["macs_before"] and m["macs_fraction"] <= 0.5
    assert any("prune.ratio is not used" in n for n in result.notes)


def test_batchnorm_statistics_are_re_estimated(tmp_path):
    from edgepack.training import reestimate_bn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    x = torch.randn(256, 1, 8, 8) * 3 + 1
    model[1].running_mean.fill_(100.0)                          # stale statistics
    reestimate_bn(model, x.numpy(), batch_size=64)
    with torch.no_grad():
        feats = model[0](x)
    torch.testing.assert_close(model[1].running_mean, feats.mean((0, 2, 3)), atol=1e-4, rtol=1e-4)
    assert model[1].momentum == 0.1 and not model.training


# -- unstructured ----------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity, steps", [(0.6, 3), (0.8, 1)])
def test_unstructured_reaches_global_sparsity_within_1pct(tiny, train_file, tmp_path, sparsity, steps):
    ctx, result, model = run_prune(tiny, train_file, tmp_path, "prune.method='unstructured'",
                                   f"prune.sparsity={sparsity}", f"prune.steps={steps}")
    m = result.metrics
    weights = [mod.weight for mod in model.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))]
    reached = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert abs(reached - sparsity) <= 0.01 and m["sparsity"] == pytest.approx(reached, abs=1e-5)
    assert [round(s["sparsity"], 2) for s in m["steps"]][-1] == pytest.approx(sparsity, abs=0.01)
    # the re-parametrisation is gone: plain weights, no mask buffers, no hooks
    assert not any(name.endswith(("_orig", "_mask")) for name in model.state_dict())
    assert not any(mod._forward_pre_hooks for mod in model.modules())
    assert any("dense speed" in n for n in result.notes)
    assert m["compressed_size_bytes"] < m["size_bytes"]
    from edgepack.targets._onnx import export_onnx

    export_onnx(model, ctx.data.evaluation.x["input"][:1], tmp_path / "sparse.onnx")


# -- the cache --------------------------------------------------------------------------------

def test_changing_prune_ratio_reruns_prune_and_what_follows_not_distill(tiny, train_file, tmp_path, monkeypatch):
    """run_pipeline twice over reference (conversion off), distill, prune and lowrank: the
    stages that convert and time (export, quantize, validate) are left out to stay fast."""
    import edgepack.pipeline as pipeline
    from edgepack.stages.distill import DistillStage
    from edgepack.stages.lowrank import LowRankStage
    from edgepack.stages.prune import PruneStage
    from edgepack.stages.reference import ReferenceStage

    def plan(ctx):
        stages = [cls() for cls in (ReferenceStage, DistillStage, PruneStage, LowRankStage)]
        return [(s, s.enabled(ctx.settings[s.section], ctx)) for s in stages]

    monkeypatch.setattr(pipeline, "plan", plan)
    common = ["reference.enabled=false", "lowrank.enabled=true", "lowrank.min_params=0",
              "distill.student_width=0.75"]
    cache = tmp_path / "cache"

    def statuses(*overrides):
        ctx = make_ctx(tiny, train_file, tmp_path / "unused", *common, *overrides)
        res = pipeline.run_pipeline(ctx, cache)
        return {r.name: r.status for r in res.records}, res

    first, res = statuses("prune.ratio=0.25")
    assert first == {"reference": "done", "distill": "done", "prune": "done", "lowrank": "done"}
    assert statuses("prune.ratio=0.25")[0] == dict.fromkeys(first, "cached")
    changed, res2 = statuses("prune.ratio=0.5")
    assert changed == {"reference": "cached", "distill": "cached", "prune": "done", "lowrank": "done"}
    assert res2.records[2].metrics["params"] < res.records[2].metrics["params"]
