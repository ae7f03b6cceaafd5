"""lowrank: the rank rules, exact reconstruction at full rank, and the stage on a model
with a wide Linear head (output shape kept, fewer params, exports)."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from edgepack.stages.lowrank import choose_rank, factorize

WIDE_HEAD = textwrap.dedent('''
    from torch import nn

    class WideHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(16, 32, 1), nn.ReLU(), nn.Flatten())
            self.hidden = nn.Linear(32 * 8 * 8, 64)
            self.fc = nn.Linear(64, 4)

        def forward(self, x):
            return self.fc(self.hidden(self.features(x)).relu())

    def make_model():
        return WideHead()
''')


def test_rank_by_retained_energy_and_by_parameter_budget():
    s = torch.tensor([3.0, 2.0, 1.0])            # energies 9, 4, 1 of 14: cumulative 0.64, 0.93, 1.0
    assert choose_rank(s, 10, 10, energy=0.6, param_budget=None) == 1
    assert choose_rank(s, 10, 10, energy=0.9, param_budget=None) == 2
    assert choose_rank(s, 10, 10, energy=1.0, param_budget=None) == 3
    # budget: keep half of a 100 x 50 layer's 5000 weights: r (100 + 50) <= 2500 -> r = 16
    assert choose_rank(s, 50, 100, energy=0.9, param_budget=0.5) == 16


def test_full_rank_factorization_reproduces_linear_and_strided_1x1_conv():
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 6)
    x = torch.randn(5, 12)
    torch.testing.assert_close(factorize(lin, 6)(x), lin(x), atol=1e-5, rtol=1e-5)
    conv = torch.nn.Conv2d(8, 6, 1, stride=2, bias=False)
    xc = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(factorize(conv, 6)(xc), conv(xc), atol=1e-5, rtol=1e-5)
    low = factorize(lin, 2)
    assert [m.weight.shape for m in low] == [(2, 12), (6, 2)]


def test_truncation_error_is_the_dropped_singular_values():
    torch.manual_seed(0)
    lin = torch.nn.Linear(20, 10, bias=False)
    s = torch.linalg.svdvals(lin.weight.detach())
    low = factorize(lin, 4)
    with torch.no_grad():
        w = low[1].weight @ low[0].weight
        assert float(torch.linalg.matrix_norm(lin.weight - w)) == pytest.approx(float(s[4:].norm()), rel=1e-4)


@pytest.fixture(scope="module")
def wide(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("lowrank")
    (root / "wide.py").write_text(WIDE_HEAD)
    rng = np.random.default_rng(1)
    x = np.load(tiny["data"])["x"]
    y = np.load(tiny["data"])["y"]
    np.savez(root / "train.npz", x=(x + rng.normal(0, 0.1, x.shape)).astype(np.float32), y=y)
    return root


def test_lowrank_stage_factorizes_and_fine_tunes(tiny, wide, tmp_path):
    from edgepack.config import load_settings
    from edgepack.inputs.data import load_data
    from edgepack.inputs.model import load_model
    from edgepack.pipeline import section_models
    from edgepack.stages.base import BuildContext
    from edgepack.stages.lowrank import LowRankStage
    from edgepack.targets._onnx import export_onnx
    from edgepack.targets.base import get_target
    from edgepack.torchmodel import load_module, save_module

    target = get_target("tflite-int8")
    settings = load_settings("tflite-int8", section_models(target),
                             overrides=["lowrank.enabled=true", "lowrank.energy=0.8", "lowrank.epochs=1",
                                        "lowrank.batch_size=16", "lowrank.min_params=256"])
    data = load_data(tiny["data"], settings.data, calibration_samples=16, train_spec=wide / "train.npz")
    teacher = load_model(f"{tiny['model']}:make_model", tiny["weights"])
    torch.manual_seed(0)
    student = load_model(f"{wide / 'wide.py'}:make_model").module
    ctx = BuildContext(settings=settings, target=target, data=data, teacher=teacher, workdir=tmp_path / "w")
    ctx.workdir.mkdir()
    stage = LowRankStage()
    assert stage.enabled(settings["lowrank"], ctx)
    result = stage.run(save_module(student, tmp_path / "in.pt"), settings["lowrank"], ctx)
    m = result.metrics
    done = {e["layer"]: e for e in m["layers"] if "skipped" not in e}
    assert "hidden" in done and done["hidden"]["energy"] >= 0.8
    assert m["params"] < m["params_before"] and m["finetune"]["epochs"] == 1
    model = load_module(result.artifact)
    assert isinstance(model.hidden, torch.nn.Sequential)
    assert model(torch.from_numpy(data.evaluation.x["input"][:3])).shape == (3, 4)
    assert "factorized" in result.notes[0]
    export_onnx(model, data.evaluation.x["input"][:1], tmp_path / "low.onnx")


def test_lowrank_is_off_in_the_default_profile():
    from edgepack.config import load_settings
    from edgepack.pipeline import section_models
    from edgepack.targets.base import get_target

    target = get_target("tflite-int8")
    assert not load_settings("tflite-int8", section_models(target))["lowrank"].enabled
    assert load_settings("tflite-int8", section_models(target),
                         overrides=["lowrank.enabled=true"])["lowrank"].enabled
