"""openvino-cpu end to end on a small CNN: the real ONNX export, NNCF and OpenVINO runtime."""
from __future__ import annotations

import copy
import importlib.util
import tomllib

import numpy as np
import pytest

from edgepack.artifacts import Artifact
from edgepack.config import PROFILES_DIR, load_settings
from edgepack.errors import ConversionError, ToolchainMissing, UsageError
from edgepack.targets.base import get_target


CLASSES = 4


@pytest.fixture(scope="module")
def target():
    return get_target("openvino-cpu")


@pytest.fixture(scope="module")
def exported(target, problem, tmp_path_factory):
    return target.export(problem["model"], problem["x"][:1], tmp_path_factory.mktemp("ov-export"))


@pytest.fixture(scope="module")
def converted(target, exported, problem, tmp_path_factory):
    """scheme -> Artifact, each converted once for the module."""
    cache: dict[str, Artifact] = {}

    def get(scheme: str) -> Artifact:
        if scheme not in cache:
            qcfg = target.quantize_config(scheme=scheme, io="float32", accuracy_control=False)
            cache[scheme] = target.convert(exported, qcfg, problem["calibration"], tmp_path_factory.mktemp(scheme))
        return cache[scheme]

    return get


def torch_outputs(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def ov_outputs(artifact: Artifact, x: np.ndarray, config: dict | None = None) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(artifact.path), "CPU", {"INFERENCE_NUM_THREADS": 1, **(config or {})})
    return np.concatenate([compiled(x[i:i + 1])[compiled.output(0)] for i in range(len(x))])


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float((a.argmax(1) == b.argmax(1)).mean() * 100), float(cos.mean())


def ir_ops(artifact: Artifact) -> list:
    import openvino as ov

    return list(ov.Core().read_model(str(artifact.path)).get_ops())


def constants(ops: list, element_type: str) -> list:
    return [op for op in ops if op.get_type_name() == "Constant"
            and op.get_element_type().get_type_name() == element_type and op.shape and len(op.shape) >= 2]


def ir_size(artifact: Artifact) -> int:
    return artifact.path.stat().st_size + sum((artifact.path.parent / f).stat().st_size
                                              for f in artifact.meta["side_files"])


# -- end to end --------------------------------------------------------------------------

def test_int8_ir_holds_int8_weights_and_agrees_with_torch(converted, problem):
    art = converted("int8")
    assert art.kind == "openvino" and art.path.name == "model.xml"
    assert art.meta["side_files"] == ["model.bin"] and (art.path.parent / "model.bin").is_file()
    assert art.meta["layout"] == "NCHW" and art.meta["scheme"] == "int8" and art.meta["io"] == "float32"
    ops = ir_ops(art)
    assert sum(op.get_type_name() == "FakeQuantize" for op in ops) >= 4      # activations
    assert len(constants(ops, "i8")) == 4                                      # 3 convs + fc
    assert all(layer["int8_weights"] and layer["int8_input"] for layer in art.meta["layers"])
    assert any("4 of 4 weighted layers quantized" in n for n in art.meta["notes"])
    top1, cos = agreement(ov_outputs(art, problem["x"]), torch_outputs(problem["model"], problem["x"]))
    assert top1 >= 90 and cos > 0.95, (top1, cos)
    assert ir_size(art) < 0.6 * ir_size(converted("none"))


def test_reference_is_fp32_and_matches_torch(converted, problem):
    art = converted("none")
    ops = ir_ops(art)
    assert not any(op.get_type_name() == "FakeQuantize" for op in ops)
    assert not constants(ops, "i8") and not constants(ops, "f16")    # save_model's f16 compression is off
    assert art.meta["float_check_max_abs_diff"] < 1e-4
    got = ov_outputs(art, problem["x"], {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(got, torch_outputs(problem["model"], problem["x"]), atol=1e-4, rtol=1e-4)


def test_dynamic_compresses_weights_and_keeps_float_activations(converted, problem):
    art = converted("dynamic")
    ops = ir_ops(art)
    assert not any(op.get_type_name() == "FakeQuantize" for op in ops)
    assert len(constants(ops, "i8")) == 4
    assert all(layer["int8_weights"] and not layer["int8_input"] for layer in art.meta["layers"])
    top1, cos = agreement(ov_outputs(art, problem["x"]), torch_outputs(problem["model"], problem["x"]))
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
    np.testing.assert_allclose(run.outputs[0], ov_outputs(art, problem["x"][:16]), atol=1e-4)
    assert run.result["runtime"]["name"] == "openvino"


def test_artifact_hash_covers_the_weights_and_is_reproducible(target, exported, problem, tmp_path):
    """The sha256 (every later stage's cache key) is model.xml's: it must change with the weights
    in model.bin, and stay put when nothing changed (OpenVINO numbers its nodes process-wide)."""
    import torch

    qcfg = target.quantize_config(scheme="none", io="float32")
    again = target.convert(exported, qcfg, problem["calibration"][:4], tmp_path / "again")
    assert again.sha256 == target.convert(exported, qcfg, problem["calibration"][:4], tmp_path / "b").sha256
    other = copy.deepcopy(problem["model"])
    with torch.no_grad():
        other.fc.bias += 1.0            # same layers, other weights: model.xml alone would not change
    other_exported = target.export(other, problem["x"][:1], tmp_path / "other-export")
    changed = target.convert(other_exported, qcfg, problem["calibration"][:4], tmp_path / "other")
    assert changed.sha256 != again.sha256
    assert changed.meta["weights_sha256"] != again.meta["weights_sha256"]


# -- accuracy control -------------------------------------------------------------------

def with_activation_outlier(model):
    """A copy whose first block has one channel stuck at 5000 that the next conv ignores: the
    same function (almost), but per-tensor int8 activations after it lose every other channel."""
    import torch

    m = copy.deepcopy(model)
    with torch.no_grad():
        m.features[1].bias[15] = 5000.0
        m.features[3].weight[:, 15] = 0.0
    return m


def test_accuracy_control_reverts_the_layer_that_costs_accuracy(target, problem, tmp_path):
    model = with_activation_outlier(problem["model"])
    exported = target.export(model, problem["x"][:1], tmp_path / "export")
    qcfg = target.quantize_config(scheme="int8", io="float32", accuracy_control=True, max_drop_pp=1.0)
    validation = (problem["x"], problem["y"])
    art = target.convert(exported, qcfg, problem["calibration"], tmp_path / "ac", validation=validation)

    ac = art.meta["accuracy_control"]
    assert ac["samples"] == len(problem["x"])
    assert ac["float_accuracy"] - ac["int8_accuracy_before"] > 10      # the outlier ruins plain int8
    reverted = [layer for layer in art.meta["layers"] if not layer["int8_weights"]]
    assert reverted and "features.4" in reverted[0]["module"]         # the conv reading the outlier
    assert any("reverting layers to float" in n for n in art.meta["notes"])
    assert any("kept in float: features.4" in n for n in art.meta["notes"])
    # what shipped is within budget, measured with the runtime
    got = ov_outputs(art, problem["x"])
    accuracy = float((got.argmax(1) == problem["y"]).mean() * 100)
    assert ac["float_accuracy"] - accuracy <= 1.0 + 1e-9
    assert sum(op.get_type_name() == "FakeQuantize" for op in ir_ops(art)) >= 2   # the rest stays int8


def test_accuracy_control_without_labels_says_so(target, exported, problem, tmp_path):
    qcfg = target.quantize_config(scheme="int8", io="float32", accuracy_control=True)
    art = target.convert(exported, qcfg, problem["calibration"][:16], tmp_path)
    assert "accuracy_control" not in art.meta
    assert any("no labeled validation data" in n for n in art.meta["notes"])


# -- failures ------------------------------------------------------------------------------

def det_model():
    import torch
    from torch import nn

    class Det(nn.Module):      # ONNX Det: exported and run by onnxruntime, no OpenVINO conversion rule
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.conv(x)[:, :, :4, :4]
            return torch.linalg.det(y)

    return Det().eval()


def kthvalue_model():
    import torch
    from torch import nn

    class Kth(nn.Module):      # aten.kthvalue: no ONNX translation
        def forward(self, x):
            return torch.kthvalue(x.flatten(1), 3, dim=1).values.unsqueeze(1)

    return Kth().eval()


@pytest.mark.parametrize("make, op", [(det_model, "Det (opset 18)"), (kthvalue_model, "aten.kthvalue")],
                         ids=["openvino-rejects-Det", "onnx-export-rejects-kthvalue"])
def test_unsupported_operator_names_op_and_target(target, problem, tmp_path, make, op):
    qcfg = target.quantize_config(scheme="none", io="float32")
    with pytest.raises(ConversionError) as err:
        exported = target.export(make(), problem["x"][:1], tmp_path)
        target.convert(exported, qcfg, problem["calibration"][:4], tmp_path / "out")
    assert op in str(err.value) and "openvino-cpu" in str(err.value)


@pytest.mark.parametrize("case, message", [
    ("wrong-artifact", "converts from ONNX, got a 'pt2' artifact"),
    ("no-calibration", "needs calibration data"),
])
def test_bad_input(target, exported, problem, tmp_path, case, message):
    qcfg = target.quantize_config(scheme="int8")
    art, calib = exported, problem["calibration"]
    if case == "wrong-artifact":
        art = Artifact(kind="pt2", path=tmp_path / "model.pt2", sha256="0")
    else:
        calib = calib[:0]
    with pytest.raises(UsageError, match=message):
        target.convert(art, qcfg, calib, tmp_path)


def test_missing_toolchain_names_the_package(target, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    with pytest.raises(ToolchainMissing, match="nncf"):
        target.check_toolchain()


# -- profile --------------------------------------------------------------------------------

def test_profile_loads_with_the_nncf_keys(target):
    from edgepack.pipeline import section_models

    settings = load_settings("openvino-cpu", section_models(target))
    q = settings.quantize
    assert isinstance(q, target.quantize_config)
    assert (q.scheme, q.io, q.preset, q.accuracy_control) == ("int8", "float32", "performance", True)
    ours = tomllib.loads((PROFILES_DIR / "openvino-cpu.toml").read_text())
    tflite = tomllib.loads((PROFILES_DIR / "tflite-int8.toml").read_text())
    assert {k for k, v in ours.items() if isinstance(v, dict)} == {k for k, v in tflite.items() if isinstance(v, dict)}


def test_size_bytes_counts_the_weights_file(converted, tmp_path, monkeypatch):
    art = converted("int8")
    monkeypatch.chdir(tmp_path)
    assert art.size_bytes == ir_size(art)

