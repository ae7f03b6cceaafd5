"""tflite-int8: real conversions (torch -> ONNX -> onnx2tf -> TFLite) of a small residual CNN,
run with LiteRT and compared with torch."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgepack.artifacts import Artifact, sha256_file
from edgepack.config import QuantizeConfig
from edgepack.errors import ConversionError, UsageError
from edgepack.targets.base import get_target
from edgepack.targets.tflite_int8 import TfliteInt8

@pytest.fixture(scope="module")
def convert(onnx_model, cnn, tmp_path_factory):
    """convert(**QuantizeConfig fields) -> Artifact, each configuration converted once."""
    _, calibration, _, _ = cnn
    done: dict[tuple, Artifact] = {}

    def run(**settings) -> Artifact:
        key = tuple(sorted(settings.items()))
        if key not in done:
            out = tmp_path_factory.mktemp("tflite")
            done[key] = TfliteInt8().convert(onnx_model, QuantizeConfig(**settings), calibration, out)
        return done[key]

    return run


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def tensor_dtypes(path: Path) -> set[str]:
    from ai_edge_litert.interpreter import Interpreter

    return {np.dtype(d["dtype"]).name for d in Interpreter(model_path=str(path)).get_tensor_details()}


# -- the adapter as the pipeline sees it ----------------------------------------------

def test_registered_with_its_runtime_and_toolchain():
    target = get_target("tflite-int8")
    assert isinstance(target, TfliteInt8)
    assert (target.format, target.runtime, target.runtime_min_version) == ("tflite", "ai-edge-litert", "2.3")
    assert {"name": "tflite-runtime", "min_version": "2.14"} in target.runtime_alternatives
    assert target.missing_packages() == []


def test_export_is_checked_and_byte_identical(cnn, onnx_model, tmp_path):
    from edgepack.targets._onnx import export_onnx

    model, _, x_eval, _ = cnn
    again = export_onnx(model, x_eval, tmp_path / "again.onnx")
    assert again.sha256 == onnx_model.sha256
    assert onnx_model.meta["input_shape"] == [1, 3, 16, 16]
    assert onnx_model.meta["max_abs_diff"] < 1e-4
    # the profile's opset 17 is below what the exporter has: raised, and said so
    assert onnx_model.meta["opset"] == 18
    assert "raised to 18" in onnx_model.meta["notes"][0]
    assert [p.name for p in tmp_path.iterdir()] == ["again.onnx"]        # no temporary file left


# -- full integer -----------------------------------------------------------------------

def test_int8_has_int8_io_with_sensible_quantization(convert, cnn):
    _, calibration, _, _ = cnn
    artifact = convert()
    assert artifact.kind == "tflite" and artifact.path.name == "model.tflite"
    assert artifact.meta["layout"] == "NHWC"
    assert (artifact.meta["scheme"], artifact.meta["io"]) == ("int8", "int8")
    assert "float_ops" not in artifact.meta and "notes" not in artifact.meta     # fully integer, loads anywhere
    io = TfliteInt8().io_details(artifact)
    (inp,), (out,) = io["inputs"], io["outputs"]
    assert (inp["name"], inp["dtype"], inp["layout"], inp["shape"]) == ("input", "int8", "NHWC", [1, 16, 16, 3])
    assert (out["name"], out["dtype"], out["layout"], out["shape"]) == ("output", "int8", "NC", [1, 4])
    # the input range the int8 tensor can hold covers the calibration data, without waste
    lo, hi = (-128 - inp["zero_point"]) * inp["scale"], (127 - inp["zero_point"]) * inp["scale"]
    assert lo <= calibration.min() + inp["scale"] and hi >= calibration.max() - inp["scale"]
    assert hi - lo < 1.5 * (calibration.max() - calibration.min())
    assert 0 < out["scale"] < 1 and -128 <= out["zero_point"] <= 127


@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_agrees_with_torch(convert, cnn, torch_logits, run_tflite, per_channel):
    _, _, x_eval, y_eval = cnn
    artifact = convert(per_channel=per_channel)
    assert artifact.meta["per_channel"] is per_channel
    logits = run_tflite(artifact.path, x_eval)
    agreement = float(np.mean(logits.argmax(1) == torch_logits.argmax(1)))
    assert agreement >= 0.9
    assert cosine(logits, torch_logits) > 0.95
    assert np.mean(logits.argmax(1) == y_eval) >= 0.9


def test_per_channel_and_per_tensor_weights_differ(convert):
    from ai_edge_litert.interpreter import Interpreter

    def most_scales(artifact: Artifact) -> int:
        details = Interpreter(model_path=str(artifact.path)).get_tensor_details()
        return max(len(d["quantization_parameters"]["scales"]) for d in details)

    assert most_scales(convert(per_channel=True)) > 1      # one scale per output channel of a conv
    assert most_scales(convert(per_channel=False)) == 1


@pytest.mark.parametrize("io,dtype", [("uint8", "uint8"), ("float32", "float32")])
def test_io_dtype_follows_the_setting(convert, cnn, torch_logits, run_tflite, io, dtype):
    _, _, x_eval, _ = cnn
    artifact = convert(io=io)
    details = TfliteInt8().io_details(artifact)
    assert details["inputs"][0]["dtype"] == dtype and details["outputs"][0]["dtype"] == dtype
    assert "int8" in tensor_dtypes(artifact.path)                 # the body stays integer
    if io == "float32":
        assert details["inputs"][0]["scale"] is None and details["inputs"][0]["zero_point"] == 0
    logits = run_tflite(artifact.path, x_eval)
    assert np.mean(logits.argmax(1) == torch_logits.argmax(1)) >= 0.9


# -- float and dynamic range ---------------------------------------------------------------

def test_none_is_float_and_matches_torch(convert, cnn, torch_logits, run_tflite):
    _, _, x_eval, _ = cnn
    artifact = convert(scheme="none", io="float32")
    assert (artifact.meta["scheme"], artifact.meta["io"]) == ("none", "float32")
    assert "notes" not in artifact.meta
    assert "int8" not in tensor_dtypes(artifact.path)
    np.testing.assert_allclose(run_tflite(artifact.path, x_eval), torch_logits, atol=1e-4, rtol=1e-4)


def test_dynamic_quantizes_weights_only_and_says_io_stays_float(convert, cnn, torch_logits, run_tflite):
    _, _, x_eval, _ = cnn
    artifact = convert(scheme="dynamic")           # io left at its default, int8
    assert (artifact.meta["scheme"], artifact.meta["io"]) == ("dynamic", "float32")
    assert "quantize.io = 'int8'" in artifact.meta["notes"][0]
    details = TfliteInt8().io_details(artifact)
    assert details["inputs"][0]["dtype"] == "float32"
    assert "int8" in tensor_dtypes(artifact.path)
    assert convert(scheme="dynamic").size_bytes < 0.5 * convert(scheme="none", io="float32").size_bytes
    logits = run_tflite(artifact.path, x_eval)
    assert cosine(logits, torch_logits) > 0.99


# -- determinism and tidiness ------------------------------------------------------------------

@pytest.mark.parametrize("settings", [{}, {"scheme": "none", "io": "float32"}])
def test_conversion_is_byte_identical(convert, onnx_model, cnn, tmp_path, settings):
    _, calibration, _, _ = cnn
    again = TfliteInt8().convert(onnx_model, QuantizeConfig(**settings), calibration, tmp_path)
    assert again.sha256 == convert(**settings).sha256


def test_out_dir_holds_only_the_model_and_the_onnx_is_untouched(onnx_model, cnn, tmp_path, monkeypatch):
    _, calibration, _, _ = cnn
    before = sha256_file(onnx_model.path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")     # onnx2tf sets it to -1 for the process
    TfliteInt8().convert(onnx_model, QuantizeConfig(calibration_samples=16), calibration, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]
    assert sha256_file(onnx_model.path) == before       # onnx2tf rewrites the file it gets: it gets a copy
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"


def test_to_model_layout_feeds_nhwc(convert, cnn):
    _, _, x_eval, _ = cnn
    assert TfliteInt8().to_model_layout(x_eval[:2], convert())["input"].shape == (2, 16, 16, 3)


def test_progress_is_reported(onnx_model, cnn, tmp_path):
    _, calibration, _, _ = cnn
    calls = []

    def progress(description, total):
        calls.append((description, total))
        return lambda n=1: calls.append(n)

    TfliteInt8().convert(onnx_model, QuantizeConfig(scheme="none", io="float32"), calibration, tmp_path,
                         progress=progress)
    assert calls[0][1] == 2 and calls[1:] == [1, 1]


# -- bad input -------------------------------------------------------------------------------

def test_int8_without_calibration_data_is_a_usage_error(onnx_model, tmp_path):
    with pytest.raises(UsageError, match="calibration"):
        TfliteInt8().convert(onnx_model, QuantizeConfig(), np.zeros((0, *onnx_model.meta["input_shape"][1:]),
                                                                  np.float32), tmp_path)


def test_a_non_onnx_artifact_is_a_usage_error(tmp_path):
    f = tmp_path / "model.pte"
    f.write_bytes(b"x")
    with pytest.raises(UsageError, match="converts from ONNX"):
        TfliteInt8().convert(Artifact.from_file("pte", f), QuantizeConfig(), np.zeros((1, 3, 8, 8), np.float32), tmp_path)


def _with_head(op):
    """A conv followed by `op`, reduced to (1, 4) logits."""
    import torch
    from torch import nn

    class WithOp(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return op(torch, self.conv(x))

    return WithOp()


# Each row: an op that really fails somewhere on the way, the opset, the stage that refuses
# it, and what the message must name.
UNSUPPORTED = [
    pytest.param(lambda t, y: t.lgamma(y).mean((2, 3)), 18, "export", r"prims\.lgamma", id="torch.onnx: lgamma"),
    pytest.param(lambda t, y: t.bitwise_and((y * 10).int(), 3).float().mean((2, 3)), 18, "convert",
                 r"ONNX op BitwiseAnd", id="onnx2tf: BitwiseAnd"),
    pytest.param(lambda t, y: t.linalg.det(y[:, :, :4, :4]), 18, "convert", r"MatrixDeterminant",
                 id="TFLite builtins: Det"),
    pytest.param(lambda t, y: t.nn.functional.gelu(y).mean((2, 3)), 18, "convert", r"Erf.*export\.opset = 20",
                 id="TFLite builtins: exact GELU below opset 20"),
]


@pytest.mark.parametrize("op,opset,stage,message", UNSUPPORTED)
def test_unsupported_op_is_a_conversion_error_naming_it(op, opset, stage, message, blobs, tmp_path):
    from edgepack.targets._onnx import export_onnx

    x = blobs(8, seed=3)[0]
    model = _with_head(op).eval()
    with pytest.raises(ConversionError, match=message):
        exported = export_onnx(model, x, tmp_path / "model.onnx", opset=opset)
        assert stage == "convert", "the export should have failed"
        TfliteInt8().convert(exported, QuantizeConfig(), x, tmp_path / "out")
    assert not (tmp_path / "out" / "model.tflite").exists()


@pytest.mark.parametrize("op,meta_key,note", [
    pytest.param(lambda t, y: t.sin(y).mean((2, 3)), "float_ops", "not fully integer: SIN", id="no int8 kernel: SIN"),
    pytest.param(lambda t, y: t.sqrt(y.abs() + 1).mean((2, 3)), "tflite_min_runtime_version",
                 "tflite-runtime 2.14 cannot load it", id="int8 SQRT needs a new runtime"),
])
def test_what_the_int8_file_cannot_promise_is_noted(op, meta_key, note, blobs, tmp_path):
    from edgepack.targets._onnx import export_onnx

    x = blobs(8, seed=3)[0]
    exported = export_onnx(_with_head(op).eval(), x, tmp_path / "model.onnx", opset=18)
    artifact = TfliteInt8().convert(exported, QuantizeConfig(), x, tmp_path / "out")
    assert meta_key in artifact.meta
    assert any(note in n for n in artifact.meta["notes"])


def test_exact_gelu_converts_at_opset_20(blobs, run_tflite, tmp_path):
    import torch

    from edgepack.targets._onnx import export_onnx

    x = blobs(16, seed=3)[0]
    model = _with_head(lambda t, y: t.nn.functional.gelu(y).mean((2, 3))).eval()
    exported = export_onnx(model, x, tmp_path / "model.onnx", opset=20)
    artifact = TfliteInt8().convert(exported, QuantizeConfig(io="float32"), x, tmp_path / "out")
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert cosine(run_tflite(artifact.path, x), expected) > 0.99
