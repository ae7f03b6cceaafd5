"""executorch-arm end to end on a small CNN: real torch.export, PT2E + XNNPACK and executorch.runtime."""
from __future__ import annotations

import importlib.util
import tomllib

import numpy as np
import pytest

from edgepack.artifacts import Artifact
from edgepack.config import PROFILES_DIR, QuantizeConfig, load_settings
from edgepack.errors import ConversionError, ToolchainMissing, UsageError
from edgepack.targets.base import get_target


CLASSES = 4


@pytest.fixture(scope="module")
def target():
    return get_target("executorch-arm")


@pytest.fixture(scope="module")
def exported(target, problem, tmp_path_factory):
    return target.export(problem["model"], problem["x"][:1], tmp_path_factory.mktemp("et-export"))


@pytest.fixture(scope="module")
def converted(target, exported, problem, tmp_path_factory):
    """scheme -> Artifact, each converted once for the module."""
    cache: dict[str, Artifact] = {}

    def get(scheme: str) -> Artifact:
        if scheme not in cache:
            qcfg = QuantizeConfig(scheme=scheme, io="float32")
            cache[scheme] = target.convert(exported, qcfg, problem["calibration"], tmp_path_factory.mktemp(scheme))
        return cache[scheme]

    return get


def torch_outputs(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def pte_outputs(artifact: Artifact, x: np.ndarray) -> np.ndarray:
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(artifact.path)).load_method("forward")
    return np.concatenate([method.execute([torch.from_numpy(x[i:i + 1])])[0].numpy() for i in range(len(x))])


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float((a.argmax(1) == b.argmax(1)).mean() * 100), float(cos.mean())


# -- export ------------------------------------------------------------------------------

def test_export_writes_a_loadable_program(exported, problem):
    import torch

    assert exported.kind == "pt2" and exported.path.name == "model.pt2"
    assert exported.meta["input_shape"] == [1, 3, 16, 16] and exported.meta["max_abs_diff"] < 1e-5
    program = torch.export.load(str(exported.path))
    x = problem["x"][:1]
    np.testing.assert_allclose(program.module()(torch.from_numpy(x)).detach().numpy(),
                               torch_outputs(problem["model"], x), atol=1e-5)


def test_export_accepts_a_torch_export_module(target, exported, problem, tmp_path):
    """A .pt2 input arrives as ExportedProgram.module(), whose eval() raises NotImplementedError."""
    import torch

    module = torch.export.load(str(exported.path)).module()
    again = target.export(module, problem["x"][:1], tmp_path)
    assert again.meta["max_abs_diff"] < 1e-5


# -- end to end --------------------------------------------------------------------------

def test_int8_is_delegated_to_xnnpack_quantized_and_agrees_with_torch(converted, problem):
    art = converted("int8")
    assert art.kind == "pte" and art.path.name == "model.pte"
    assert art.meta["layout"] == "NCHW" and art.meta["scheme"] == "int8" and art.meta["io"] == "float32"
    d = art.meta["delegation"]
    assert d["subgraphs"] >= 1 and d["portable_ops"] == 0
    assert d["layers"] == 4 and d["int8_weight_layers"] == 4                  # 3 convs + fc, int8 weights
    assert d["delegated"]["quantized_decomposed.dequantize_per_channel.default"] == 4
    assert d["delegated"]["quantized_decomposed.quantize_per_tensor.default"] >= 4   # calibrated activations
    assert art.meta["calibration_samples"] == len(problem["calibration"])
    assert any("XNNPACK runs" in n for n in art.meta["notes"])
    top1, cos = agreement(pte_outputs(art, problem["x"]), torch_outputs(problem["model"], problem["x"]))
    assert top1 >= 90 and cos > 0.95, (top1, cos)
    assert art.path.stat().st_size < 0.6 * converted("none").path.stat().st_size


def test_reference_is_float_and_matches_torch(converted, problem):
    art = converted("none")
    d = art.meta["delegation"]
    assert d["int8_weight_layers"] == 0 and d["portable_ops"] == 0
    assert not any(op.startswith("quantized_decomposed") for op in d["delegated"])
    np.testing.assert_allclose(pte_outputs(art, problem["x"]), torch_outputs(problem["model"], problem["x"]),
                               atol=1e-4, rtol=1e-4)


def test_conversion_is_reproducible(target, exported, converted, problem, tmp_path):
    again = target.convert(exported, QuantizeConfig(scheme="none", io="float32"), problem["calibration"], tmp_path)
    assert again.sha256 == converted("none").sha256


def test_dynamic_quantizes_what_xnnpack_takes_and_says_what_it_left(converted, problem):
    art = converted("dynamic")
    d = art.meta["delegation"]
    assert "quantized_decomposed.choose_qparams.tensor" in d["delegated"]      # run-time activation scales
    # XNNPACK's dynamic quantizer skips conv+relu: here only the linear layer gets int8 weights.
    assert 1 <= d["int8_weight_layers"] < d["layers"]
    assert any("stay float" in n for n in art.meta["notes"])
    top1, cos = agreement(pte_outputs(art, problem["x"]), torch_outputs(problem["model"], problem["x"]))
    assert top1 >= 90 and cos > 0.95, (top1, cos)


def test_io_details(target, converted):
    io = target.io_details(converted("int8"))
    assert io["inputs"] == [{"name": "input", "index": 0, "shape": [1, 3, 16, 16], "dtype": "float32",
                             "layout": "NCHW", "scale": None, "zero_point": 0}]
    assert io["outputs"] == [{"name": "output", "index": 0, "shape": [1, CLASSES], "dtype": "float32",
                              "layout": "NC", "scale": None, "zero_point": 0}]


def test_runs_on_the_host_through_the_device_runner(target, converted, problem, tmp_path):
    from edgepack.harness import run_artifact

    art = converted("int8")
    run = run_artifact(target, art, "host", problem["x"][:16], tmp_path, warmup=1, runs=2)
    np.testing.assert_allclose(run.outputs[0], pte_outputs(art, problem["x"][:16]), atol=1e-5)
    assert run.result["runtime"]["name"] == "executorch"


# -- failures ------------------------------------------------------------------------------

def det_model():
    import torch
    from torch import nn

    class Det(nn.Module):      # aten._linalg_det: not Core ATen, to_edge rejects it
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return torch.linalg.det(self.conv(x)[:, :, :4, :4])

    return Det().eval()


def sort_model():
    import torch
    from torch import nn

    class Sort(nn.Module):     # aten.sort: Core ATen, lowers and serializes, but the runtime has no kernel
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 1)

        def forward(self, x):
            return torch.sort(self.conv(x).flatten(1), dim=1).values[:, :4]

    return Sort().eval()


@pytest.mark.parametrize("make, op", [(det_model, "aten._linalg_det"), (sort_model, "aten::sort")],
                         ids=["to_edge-rejects-det", "runtime-lacks-sort"])
def test_unsupported_operator_names_op_and_target(target, problem, tmp_path, make, op):
    exported = target.export(make(), problem["x"][:1], tmp_path)
    with pytest.raises(ConversionError) as err:
        target.convert(exported, QuantizeConfig(scheme="none", io="float32"), problem["calibration"][:2],
                       tmp_path / "out")
    assert op in str(err.value) and "executorch-arm" in str(err.value)
    assert not (tmp_path / "out" / "model.pte").exists()


def test_several_outputs_export_and_a_non_tensor_output_is_named(target, problem, tmp_path):
    from torch import nn

    from edgepack.errors import UsageError

    class TwoOutputs(nn.Module):
        def forward(self, x):
            return x, x * 2

    class CountToo(nn.Module):
        def forward(self, x):
            return x, 3

    exported = target.export(TwoOutputs(), problem["x"][:1], tmp_path)
    assert exported.meta["output_names"] == ["output_0", "output_1"]
    with pytest.raises(UsageError, match="forward returns Tensor, int"):
        target.export(CountToo(), problem["x"][:1], tmp_path / "bad")


@pytest.mark.parametrize("case, message", [
    ("wrong-artifact", "converts a torch.export program"),
    ("no-calibration", "needs calibration data"),
])
def test_bad_input(target, exported, problem, tmp_path, case, message):
    art, calib = exported, problem["calibration"]
    if case == "wrong-artifact":
        art = Artifact(kind="onnx", path=tmp_path / "model.onnx", sha256="0")
    else:
        calib = calib[:0]
    with pytest.raises(UsageError, match=message):
        target.convert(art, QuantizeConfig(scheme="int8"), calib, tmp_path)


def test_missing_toolchain_names_the_package(target, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(ToolchainMissing, match="torchao"):
        target.check_toolchain()


# -- profile --------------------------------------------------------------------------------

def test_profile_loads(target):
    from edgepack.pipeline import section_models

    settings = load_settings("executorch-arm", section_models(target))
    assert (settings.quantize.scheme, settings.quantize.io) == ("int8", "float32")
    ours = tomllib.loads((PROFILES_DIR / "executorch-arm.toml").read_text())
    tflite = tomllib.loads((PROFILES_DIR / "tflite-int8.toml").read_text())
    assert {k for k, v in ours.items() if isinstance(v, dict)} == {k for k, v in tflite.items() if isinstance(v, dict)}
