"""Distill (derived student, width 0.5) and structured prune (ratio 0.3, uniform, L2) on every
zoo model, by the real CLI: each builds with a student really smaller than the teacher and a
pruned model smaller than the student, or exits 2 with one line naming the layer and the
setting that switches the stage off, as the table says; never a traceback. Then, at torch
level: attention keeps its heads and widths consistent, and unstructured pruning leaves every
zoo model running with the same output shapes.

Gates are off (tiny epochs cannot recover accuracy): this file is about what the stages do to
the architecture, not about accuracy."""
from __future__ import annotations

import copy
import json
import math
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgepack.cli import main

from . import models as zoo_models
from .conftest import ZOO, build_args

# The cheapest conversion with quantization off (float IR, seconds; ExecuTorch's lowering and the
# int8 quantizers take ten times longer). The student's export is checked by distill all the same.
TARGET = "openvino-cpu"

# Training stages on, as short as they go; no accuracy gates (see the module docstring).
COMPRESS = ("--set", "distill.enabled=true", "--set", "distill.epochs=1",
            "--set", "prune.enabled=true", "--set", "prune.epochs=1", "--set", "prune.steps=1",
            "--set", "prune.ratio=0.3", "--set", "prune.scope=uniform",
            "--set", "prune.criterion=l2",
            "--set", "validate.max_accuracy_drop_pp=100", "--set", "task.min_cosine=-1",
            "--set", "task.min_sqnr_db=-100", "--set", "reference.enabled=false",
            "--set", "validate.runs=2", "--set", "validate.warmup_runs=0", "--set", "quantize.scheme=none")

# model -> what distill + prune do. "pass": exit 0, both stages smaller. A tuple: exit 2 with
# (the layer, the setting) in its one-line message.
EXPECTED = {
    "mobilenet": "pass",
    "text_encoder": "pass",     # attention kept whole (its forward reshapes heads to its input width)
    "audio": "pass",            # 1-D convolutions
    "detector": "pass",         # two outputs; the 1-channel score head is an output layer, never pruned
    "segmenter": "pass",
    "vit": "pass",              # fused qkv indexed qkv[0..2]: Torch-Pruning cannot split it; kept whole
    "hardcoded_heads": ("attn.q", "--set distill.enabled=false"),   # head count only in the reshape
}
ATTENTION = {"text_encoder": "whole", "vit": "whole"}   # attention pruning decided, per model

# A model whose head count lives only in its forward's reshape (no attribute to read or update):
# nothing can tell Torch-Pruning its q/k/v split into heads, so the stage must refuse it.
HARDCODED_HEADS = textwrap.dedent('''
    import torch
    from torch import nn

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))

        def forward(self, x):
            n, t, _ = x.shape
            q, k, v = (f(x).reshape(n, t, 4, 8).transpose(1, 2) for f in (self.q, self.k, self.v))
            a = torch.softmax(q @ k.transpose(-2, -1) * 0.35, dim=-1)
            return self.o((a @ v).transpose(1, 2).reshape(n, t, 32))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 32, 8, stride=8)
            self.attn = Attn()
            self.head = nn.Linear(32, 4)

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)
            return self.head((t + self.attn(t)).mean(1))

    def make_model():
        torch.manual_seed(0)
        return Net().eval()
''')


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """The zoo's model files and data, with the seeded initial weights: what distill and prune do
    to an architecture does not depend on its training (the `zoo` fixture trains every teacher)."""
    from . import data

    made = {}

    def case(name):
        if name not in made:
            root = tmp_path_factory.mktemp(f"zoo-untrained-{name}")
            splits = data.make_splits(name)
            made[name] = {"model": f"{ZOO / 'models.py'}:make_{name}", "weights": None,
                          "data": data.write_npz(root / "data.npz", splits["data"]),
                          "train": data.write_npz(root / "train.npz", splits["train"]),
                          "metric": f"{ZOO / 'metrics.py'}:box_iou" if name == "detector" else None}
        return made[name]

    return case


def _files(untrained, name, tmp_path):
    if name != "hardcoded_heads":
        return untrained(name)
    model = tmp_path / "hardcoded_heads.py"
    model.write_text(HARDCODED_HEADS)
    return {**untrained("vit"), "model": f"{model}:make_model"}        # the ViT's images and labels


def _params(name):
    return sum(p.numel() for p in zoo_models.make(name).parameters())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_distill_and_prune_each_zoo_model_or_name_the_layer(untrained, tmp_path, name):
    files = _files(untrained, name, tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, build_args(files, TARGET, out, *COMPRESS))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    expected = EXPECTED[name]
    if expected != "pass":
        assert result.exit_code == 2, result.output
        layer, setting = expected
        errors = [line for line in result.output.splitlines() if "error:" in line]
        assert len(errors) == 1, result.output
        assert repr(layer) in errors[0] and setting in errors[0], errors[0]
        assert not list(out.glob("*.zip"))
        return
    assert result.exit_code == 0, result.output
    (bundle,) = out.glob("*.zip")
    report = json.loads((out / bundle.stem / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    teacher = _params(name)
    assert stages["distill"]["params"] < teacher, (stages["distill"]["params"], teacher)
    assert stages["prune"]["params"] < stages["distill"]["params"]
    details = stages["prune"].get("details", {})
    assert details.get("attention_pruning") == ATTENTION.get(name)
    attention_notes = [n for n in report["notes"] if ": attention " in n]
    if name in ATTENTION:
        assert [n.split(":")[0] for n in attention_notes] == ["distill", "prune"]
        assert all("kept whole" in n for n in attention_notes)
    else:
        assert not attention_notes


# -- torch level --------------------------------------------------------------------------

def _export(model, example):
    torch.export.export(model, example)


@pytest.mark.parametrize("name", ["text_encoder", "vit"])
def test_derived_student_keeps_zoo_attention_consistent(name):
    """The zoo's attention reads its head dimension from an attribute and reshapes the heads back
    to its input width: its projections are kept whole (heads x head dim = hidden size, as in
    the teacher), the MLP widths are halved, and the student runs, keeps its outputs and exports."""
    from edgepack.training import derive_by_width, find_attention

    spec = zoo_models.SPECS[name]
    teacher = zoo_models.make(name)
    example = spec.example_inputs(2)
    notes = []
    student = derive_by_width(teacher, example, 0.5, "distill.student_width", notes=notes)
    found = find_attention(student, example)
    assert [a.name for a in found] == [n for n, m in teacher.named_modules() if hasattr(m, "heads")]
    for att in found:
        mod = att.module(student)
        t_mod = teacher.get_submodule(att.name)
        assert (mod.heads, mod.dh) == (t_mod.heads, t_mod.dh)
        projections = [student.get_submodule(p) for p in att.projections]
        per = 3 if len(projections) == 1 else 1            # fused qkv
        assert all(p.out_features == per * mod.heads * mod.dh for p in projections)
        assert all(student.get_submodule(o).in_features == mod.heads * mod.dh for o in att.outputs)
    mlp_in = [m for n, m in student.named_modules() if n.endswith(("ff.0", "mlp.fc1"))]
    assert mlp_in and all(m.out_features == 32 for m in mlp_in)          # 64 -> 32
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    with torch.no_grad():
        assert [o.shape for o in zoo_models_outputs(student, example)] == \
               [o.shape for o in zoo_models_outputs(teacher, example)]
    assert any("kept whole" in n for n in notes)
    _export(student, example)


def zoo_models_outputs(model, example):
    out = model(*example)
    return list(out) if isinstance(out, (tuple, list)) else [out]


class _Attention(nn.Module):
    """Attention the way Torch-Pruning's ViT example leaves it: heads from an attribute, and
    merged back with reshape(n, t, -1) (not to the input width). Fused (unbind) or q/k/v."""

    def __init__(self, d, heads, fused):
        super().__init__()
        self.num_heads, self.head_dim, self.fused = heads, d // heads, fused
        if fused:
            self.qkv = nn.Linear(d, 3 * d)
        else:
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        n, t, _ = x.shape
        if self.fused:
            qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        else:
            q, k, v = (f(x).reshape(n, t, self.num_heads, self.head_dim).transpose(1, 2)
                       for f in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(n, t, -1))


class _Encoder(nn.Module):
    def __init__(self, fused, d=32, heads=4):
        super().__init__()
        self.embed = nn.Linear(6, d)
        self.norm = nn.LayerNorm(d)
        self.attn = _Attention(d, heads, fused)
        self.mlp = nn.Sequential(nn.Linear(d, 64), nn.GELU(), nn.Linear(64, d))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(self.norm(h))
        return self.head((h + self.mlp(h)).mean(1))


@pytest.mark.parametrize("fused", [False, True], ids=["qkv-separate", "qkv-fused"])
def test_attention_pruned_by_heads_when_torch_pruning_can_follow_it(fused):
    """Torch-Pruning's num_heads: the same dimensions leave every head, heads are kept, the
    module's head_dim is updated; hidden size and MLP width are pruned too."""
    from edgepack.training import channel_pruner, derive_by_width

    torch.manual_seed(0)
    teacher = _Encoder(fused).eval()
    x = (torch.randn(2, 10, 6),)
    notes = []
    student = derive_by_width(teacher, x, 0.5, "distill.student_width", notes=notes)
    att = student.attn
    assert att.num_heads == 4 and att.head_dim == 4                      # 8 -> 4 per head
    width = att.qkv.out_features // 3 if fused else att.q.out_features
    assert width == att.num_heads * att.head_dim == att.proj.in_features
    assert student.embed.out_features == 16 and student.mlp[0].out_features == 32
    assert student(*x).shape == (2, 3)
    assert any("head dimensions pruned" in n for n in notes)
    _export(student, x)

    model = copy.deepcopy(teacher)
    pruner = channel_pruner(model, x, ratio=0.3, steps=2)
    assert pruner.mode == "heads"
    for _ in range(2):
        pruner.step()
        assert model(*x).shape == (2, 3)
    assert model.attn.head_dim == 5 and (model.attn.qkv.out_features if fused else model.attn.q.out_features) \
        == 3 ** fused * 4 * 5


def test_torch_pruning_failure_names_the_layer():
    """A Torch-Pruning exception that names no layer still becomes one line naming the layer it was at."""
    from edgepack.errors import UsageError
    from edgepack.training import pruning_guard

    model = zoo_models.make("vit")

    class Boom(Exception):
        pass

    def tp_like(module):
        raise Boom("index 32 is out of bounds")

    with pytest.raises(UsageError) as e, pruning_guard(model, "prune"):
        tp_like(model.blocks[1].attn.proj)
    msg = str(e.value)
    assert "'blocks.1.attn.proj'" in msg and "--set prune.enabled=false" in msg and "\n" not in msg


@pytest.mark.parametrize("name", zoo_models.NAMES)
def test_unstructured_prune_keeps_every_zoo_model_running(name):
    from edgepack.stages.prune import PruneConfig, PruneStage

    spec = zoo_models.SPECS[name]
    model = zoo_models.make(name)
    example = spec.example_inputs(8)
    shapes = [o.shape for o in zoo_models_outputs(model, example)]
    calib = {n: t.numpy() for n, t in zip(spec.inputs, example)}
    cfg = PruneConfig(method="unstructured", sparsity=0.5, steps=2, epochs=0)
    steps, extra = PruneStage()._unstructured(model, cfg, calib, lambda step: {})
    assert len(steps) == 2 and abs(extra["sparsity"] - 0.5) < 0.01
    assert not any(n.endswith(("_orig", "_mask")) for n, _ in model.named_parameters())
    with torch.no_grad():
        assert [o.shape for o in zoo_models_outputs(model, example)] == shapes
        assert all(np.isfinite(o.numpy()).all() for o in zoo_models_outputs(model, example))
    _export(model.eval(), example)
