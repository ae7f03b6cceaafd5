"""distill: the KD and hint losses against hand-computed values, the derived and the
given student, real (tiny, seconds-long) training, and every bad input exiting 2."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.errors import UsageError

SMALL = ["distill.epochs=3", "distill.batch_size=16", "distill.lr=0.01", "prune.epochs=1", "prune.batch_size=16",
         "lowrank.epochs=1", "lowrank.batch_size=16"]

STUDENTS = textwrap.dedent('''
    import torch
    from torch import nn

    class Student(nn.Module):
        def __init__(self, classes=4, width=4):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(width, classes)

        def forward(self, x):
            return self.fc(self.features(x))

    class Inverting(Student):
        """Exports to no ONNX opset: linalg_inv has no ONNX op."""
        def __init__(self):
            super().__init__()
            self.register_buffer("eye", torch.eye(4))

        def forward(self, x):
            return self.fc(self.features(x)) @ torch.linalg.inv(self.eye)

    def make_student():
        return Student()

    def make_wrong_classes():
        return Student(classes=7)

    def make_broken():
        raise RuntimeError("no weights here")

    def make_inverting():
        return Inverting()
''')


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory, tiny_data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distill")
    x, y = tiny_data(200, seed=1)
    np.savez(root / "train.npz", x=x, y=y)
    x, y = tiny_data(200, seed=2)
    keep = y != 3
    np.savez(root / "train_missing_class.npz", x=x[keep], y=y[keep])
    (root / "students.py").write_text(STUDENTS)
    return {"train": root / "train.npz", "missing": root / "train_missing_class.npz", "students": root / "students.py"}


def make_ctx(tiny, files, workdir: Path, *overrides: str, train: bool = True, student: str | None = None):
    from edgepack.config import load_settings
    from edgepack.inputs.data import load_data
    from edgepack.inputs.model import load_model
    from edgepack.pipeline import section_models
    from edgepack.stages.base import BuildContext
    from edgepack.targets.base import get_target

    target = get_target("tflite-int8")
    settings = load_settings("tflite-int8", section_models(target), overrides=[*SMALL, *overrides])
    data = load_data(tiny["data"], settings.data, calibration_samples=16,
                     train_spec=files["train"] if train else None)
    teacher = load_model(f"{tiny['model']}:make_model", tiny["weights"])
    workdir.mkdir(parents=True, exist_ok=True)
    return BuildContext(settings=settings, target=target, data=data, teacher=teacher, workdir=workdir,
                        student_spec=student)


# -- losses --------------------------------------------------------------------------

def _softmax(v: list[float]) -> list[float]:
    e = [math.exp(a) for a in v]
    return [a / sum(e) for a in e]


@pytest.mark.parametrize("alpha, temperature", [(0.7, 4.0), (1.0, 2.0), (0.0, 1.0), (0.5, 1.0)])
def test_kd_loss_matches_hand_computed_values(alpha, temperature):
    from edgepack.training import kd_loss

    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.5]]
    y = [1, 2]
    kl = ce = 0.0
    for si, ti, yi in zip(s, t, y):
        ps = _softmax([a / temperature for a in si])
        pt = _softmax([a / temperature for a in ti])
        kl += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
        ce += -math.log(_softmax(si)[yi])
    expected = alpha * temperature ** 2 * kl / 2 + (1 - alpha) * ce / 2
    got = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature, alpha)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_soft_term_when_student_equals_teacher():
    from edgepack.training import kd_loss

    z = torch.tensor([[1.0, -2.0, 0.3]])
    assert float(kd_loss(z, z, torch.tensor([0]), 4.0, 1.0)) == pytest.approx(0.0, abs=1e-7)


def test_hint_losses_match_hand_computed_values():
    from edgepack.training import hint_loss

    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    # MSE: ((1-0)^2 + (0-1)^2 + (1-2)^2 + (1-2)^2) / 4 = 1
    assert float(hint_loss("mse", s, t)) == pytest.approx(1.0)
    # cosine: orthogonal (1 - 0) and parallel (1 - 1), mean 0.5
    assert float(hint_loss("cosine", s, t)) == pytest.approx(0.5)


def test_adapter_is_a_1x1_projection_only_when_channels_differ():
    from edgepack.training import adapt, make_adapter

    s, t = torch.zeros(2, 4, 8, 8), torch.zeros(2, 16, 4, 4)
    adapter = make_adapter(s, t)
    assert isinstance(adapter, torch.nn.Conv2d) and adapter.kernel_size == (1, 1)
    assert (adapter.in_channels, adapter.out_channels) == (4, 16)
    assert adapt(s, t, adapter).shape == t.shape          # spatial size pooled to the teacher's
    assert make_adapter(torch.zeros(2, 16), torch.zeros(2, 16)) is None
    assert isinstance(make_adapter(torch.zeros(2, 8), torch.zeros(2, 16)), torch.nn.Linear)


# -- the student -----------------------------------------------------------------------

def test_derived_student_of_the_default_teacher_keeps_outputs_and_exports(tmp_path):
    from edgepack.inputs.default_model import make_teacher
    from edgepack.targets._onnx import export_onnx
    from edgepack.torchmodel import count_params_macs
    from edgepack.training import derive_by_width

    teacher = make_teacher().eval()
    x = torch.randn(2, 1, 32, 32)
    student = derive_by_width(teacher, x, 0.5, "distill.student_width")
    assert student(x).shape == teacher(x).shape == (2, 10)
    assert student.stem[0].out_channels == teacher.stem[0].out_channels // 2
    assert student.fc.out_features == 10
    t_params, t_macs = count_params_macs(teacher, (1, 32, 32))
    s_params, s_macs = count_params_macs(student, (1, 32, 32))
    assert 0.2 < s_params / t_params < 0.3 and 0.2 < s_macs / t_macs < 0.3
    assert export_onnx(student, x.numpy(), tmp_path / "student.onnx").path.exists()


def test_distill_trains_a_derived_student_on_small_data(tiny, files, tmp_path):
    from edgepack.stages.distill import DistillStage
    from edgepack.torchmodel import load_module, save_module

    ctx = make_ctx(tiny, files, tmp_path / "a")
    cfg = ctx.settings["distill"]
    teacher_art = save_module(ctx.teacher.module, tmp_path / "teacher.pt")
    result = DistillStage().run(teacher_art, cfg, ctx)
    m = result.metrics
    teacher_params = sum(p.numel() for p in ctx.teacher.module.parameters())
    assert m["student"]["kind"] == "derived" and m["params"] < 0.4 * teacher_params
    assert {"params", "macs", "size_bytes", "accuracy", "val_accuracy", "best_epoch", "history"} <= set(m)
    assert len(m["history"]) == 3 and m["accuracy"] > m["accuracy_before_training"]
    assert m["accuracy"] >= 90
    student = load_module(result.artifact)
    assert student(torch.from_numpy(ctx.data.evaluation.x["input"][:3])).shape == (3, 4)
    # seeded: the same inputs train the same weights
    again = DistillStage().run(teacher_art, cfg, make_ctx(tiny, files, tmp_path / "b"))
    assert again.metrics["history"] == m["history"]
    assert not (tmp_path / "a" / "export-check").exists()


def test_distill_with_feature_hints_and_a_given_student(tiny, files, tmp_path):
    from edgepack.stages.distill import DistillStage
    from edgepack.torchmodel import save_module

    hints = ('distill.hints=[{teacher = "features.5", student = "features.2", loss = "mse"}, '
             '{teacher = "features.7", student = "features.4", loss = "cosine"}]')
    ctx = make_ctx(tiny, files, tmp_path / "w", hints, "distill.hint_weight=0.5",
                   student=f"{files['students']}:make_student")
    stage = DistillStage()
    stage.check(ctx.settings["distill"], ctx)
    result = stage.run(save_module(ctx.teacher.module, tmp_path / "t.pt"), ctx.settings["distill"], ctx)
    assert result.metrics["student"] == {"kind": "given", "spec": f"{files['students']}:make_student"}
    assert result.metrics["params"] == 4 * 9 + 4 + 8 + 4 * 4 + 4      # the given Student(width=4)
    assert len(result.metrics["hints"]) == 2
    assert stage.cache_key_extra(ctx.settings["distill"], ctx)["student"]["sha256"]


def test_progress_goes_through_ctx_progress_when_set(tiny, files, tmp_path):
    from edgepack.stages.distill import DistillStage
    from edgepack.torchmodel import save_module

    ticks = []

    def progress(description, total):
        ticks.append((description, total))
        return lambda n, **fields: ticks.append((n, sorted(fields)))

    ctx = make_ctx(tiny, files, tmp_path / "w", "distill.epochs=2")
    ctx.progress = progress
    DistillStage().run(save_module(ctx.teacher.module, tmp_path / "t.pt"), ctx.settings["distill"], ctx)
    assert ticks == [("distill", 2), (1, ["loss", "val_acc"]), (1, ["loss", "val_acc"])]


# -- bad input: exit 2, one line naming the field, --out untouched ------------------------

def _bad_case(name: str, tiny, files) -> tuple[list[str], str]:
    base = ["-t", "tflite-int8", "--model", f"{tiny['model']}:make_model", "--weights", str(tiny["weights"]),
            "--data", str(tiny["data"]), "--set", "quantize.calibration_samples=16"]
    train = ["--train-data", str(files["train"])]
    students = files["students"]
    return {
        "prune ratio of 1": ([*base, *train, "--set", "prune.ratio=1.0"], "prune.ratio"),
        "negative sparsity": ([*base, *train, "--set", "prune.sparsity=-0.1"], "prune.sparsity"),
        "width leaves no channels": ([*base, *train, "--set", "distill.student_width=0.1"],
                                     "distill.student_width = 0.1: leaves layer"),
        "width above 1": ([*base, *train, "--set", "distill.student_width=1.5"], "distill.student_width"),
        "student output shape differs": ([*base, *train, "--student", f"{students}:make_wrong_classes"],
                                         "differs from the teacher's (2, 4)"),
        "student factory fails": ([*base, *train, "--student", f"{students}:make_broken"],
                                  "--student: " + f"{students}:make_broken: the factory raised RuntimeError"),
        "student not exportable": ([*base, *train, "--student", f"{students}:make_inverting"], "linalg_inv"),
        "class missing from training data": ([*base, "--train-data", str(files["missing"])],
                                             "--train-data: class(es) 3 have no training samples"),
        "batch larger than the training set": ([*base, *train, "--set", "distill.batch_size=512"],
                                               "distill.batch_size = 512"),
        "no training data": (base, "--train-data"),
        "hint layer that does not exist": ([*base, *train, "--set",
                                            'distill.hints=[{teacher = "featurs.3", student = "features.3"}]'],
                                           "distill.hints[0].teacher = 'featurs.3': no layer of that name in the "
                                           "teacher (near matches: features.3"),
    }[name]


BAD = ["prune ratio of 1", "negative sparsity", "width leaves no channels", "width above 1",
       "student output shape differs", "student factory fails", "student not exportable",
       "class missing from training data", "batch larger than the training set", "no training data",
       "hint layer that does not exist"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_naming_the_field(case, tiny, files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous-bundle.zip").write_bytes(b"an earlier good bundle")
    args, expected = _bad_case(case, tiny, files)
    result = CliRunner().invoke(main, ["build", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgepack: error: "), result.output
    assert expected in lines[0], lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["previous-bundle.zip"]


def test_distill_disabled_needs_no_training_data(tiny, files, tmp_path):
    from edgepack.stages.distill import DistillStage

    ctx = make_ctx(tiny, files, tmp_path, "distill.enabled=false", train=False)
    with pytest.raises(UsageError, match="--train-data"):
        DistillStage().check(ctx.settings["distill"], ctx)
    assert not DistillStage().enabled(ctx.settings["distill"], ctx)
