"""Every zoo model through every target, by the real CLI: each case builds within its gate
or exits 2 naming the operator and the target, as the table says; never a traceback, never
exit 0 with a wrong model (every bundle's reference outputs are checked against a fresh
run of its model file)."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import main

from .conftest import build_args

# (model, target) -> what the build must do. "pass": exit 0, gate met; a string: exit 2 with
# that text (the operator) in the message.
EXPECTED = {
    ("mobilenet", "tflite-int8"): "pass",
    ("mobilenet", "openvino-cpu"): "pass",
    ("mobilenet", "executorch-arm"): "pass",
    ("text_encoder", "tflite-int8"): "pass",       # onnx2tf converts, over budget; litert-torch within it
    ("text_encoder", "openvino-cpu"): "pass",
    ("text_encoder", "executorch-arm"): "pass",
    ("audio", "tflite-int8"): "pass",
    ("audio", "openvino-cpu"): "pass",
    ("audio", "executorch-arm"): "pass",
    ("detector", "tflite-int8"): "pass",
    ("detector", "openvino-cpu"): "pass",
    ("detector", "executorch-arm"): "pass",
    ("segmenter", "tflite-int8"): "pass",
    ("segmenter", "openvino-cpu"): "pass",
    ("segmenter", "executorch-arm"): "pass",
    ("vit", "tflite-int8"): "pass",
    ("vit", "openvino-cpu"): "pass",
    ("vit", "executorch-arm"): "pass",
}

TASKS = {"mobilenet": ("classification", "top1"), "text_encoder": ("agreement", "sqnr_db"),
         "audio": ("classification", "top1"), "detector": ("custom", "iou"),
         "segmenter": ("classification", "pixel_accuracy"), "vit": ("classification", "top1")}
OUTPUTS = {"detector": ["output_0", "output_1"]}
# Where the first route fails or misses the budget, the route taken and what the first one said.
ROUTES = {("vit", "tflite-int8"): ("litert-torch", "Erf"),          # exact GELU: no TFLite builtin via onnx2tf
          ("text_encoder", "tflite-int8"): ("litert-torch", "over budget")}


@pytest.mark.slow
@pytest.mark.parametrize("name, target", list(EXPECTED), ids=[f"{m}-{t}" for m, t in EXPECTED])
def test_zoo_model_builds_or_names_the_operator(zoo, tmp_path, name, target):
    files = zoo(name)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, build_args(files, target, out, "--set", "reference.enabled=false"))
    expected = EXPECTED[(name, target)]
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    if expected != "pass":
        assert result.exit_code == 2, result.output
        assert expected in result.output and target in result.output
        assert not list(out.glob("*.zip"))
        return
    assert result.exit_code == 0, result.output
    (bundle,) = out.glob("*.zip")
    tree = out / bundle.stem
    report = json.loads((tree / "report.json").read_text())
    manifest = json.loads((tree / "manifest.json").read_text())
    assert (report["accuracy"]["task"], report["accuracy"]["metric"]) == TASKS[name]
    assert report["accuracy"]["passed"] and report["passed"]
    assert [o["name"] for o in manifest["outputs"]] == OUTPUTS.get(name, ["output"])
    inputs = {i["name"]: i for i in manifest["inputs"]}
    if name == "text_encoder":
        assert list(inputs) == ["input_ids", "attention_mask"]
        assert all(i["dtype"] in ("int64", "int32") for i in inputs.values())   # ids stay integers
    with np.load(tree / "reference.npz") as ref:
        assert {k for k in ref.files if k.startswith("x.")} == {f"x.{n}" for n in inputs}
        assert {k for k in ref.files if k.startswith("expected.")} == {f"expected.{o['name']}"
                                                                       for o in manifest["outputs"]}
        if name == "text_encoder":
            assert ref["x.input_ids"].dtype in (np.int64, np.int32)
    quantize = next(s for s in report["stages"] if s["name"] == "quantize")["details"]
    if (name, target) in ROUTES:
        route, why = ROUTES[(name, target)]
        first = quantize["routes_tried"][0]
        assert quantize["route"] == route
        assert why in (first.get("error") or ("over budget" if not first.get("passed") else ""))
    with zipfile.ZipFile(bundle) as z:
        assert f"{bundle.stem}/manifest.json" in z.namelist()
