"""The local transport: real models through the runner, against the runtime called directly."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgepack.devices import run_on_device


def direct_tflite(model, x):
    """The LiteRT interpreter called here, sample by sample, with the quantization done by hand."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for sample in x:
        sample = sample[None]
        if inp["dtype"] == np.int8:
            scale, zp = inp["quantization"]
            sample = np.clip(np.round(sample / scale + zp), -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], sample)
        it.invoke()
        y = it.get_tensor(out["index"])
        if out["dtype"] == np.int8:
            scale, zp = out["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        rows.append(y[0])
    return np.stack(rows)


@pytest.mark.parametrize("kind", ["tflite_float", "tflite_int8"])
def test_local_tflite_matches_the_interpreter(models, tmp_path, kind):
    model = getattr(models, kind)
    run = run_on_device("host", model, models.inputs(), warmup=3, runs=10, threads=1, workdir=tmp_path)
    x = np.load(models.inputs())["x"]
    np.testing.assert_allclose(run.outputs[0], direct_tflite(model, x), rtol=1e-6, atol=1e-6)
    r = run.result
    assert (r["device"], r["transport"], r["emulated"]) == ("host", "local", False)
    assert r["runtime"]["name"] == "ai_edge_litert"       # host.toml prefers it
    assert r["runs"] == 10 and len(r["samples_ms"]) == 10
    # The merged result is what lands in workdir/<device>/result.json.
    assert json.loads((tmp_path / "host" / "result.json").read_text()) == r
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # the run's folder is gone


def test_local_openvino_matches_openvino(models, tmp_path):
    import openvino as ov

    x = np.load(models.inputs("nchw"))["x"]
    run = run_on_device("host", models.openvino, models.inputs("nchw"), warmup=1, runs=3, threads=1, workdir=tmp_path)
    compiled = ov.Core().compile_model(str(models.openvino), "CPU", {"INFERENCE_NUM_THREADS": 1,
                                                                     "PERFORMANCE_HINT": "LATENCY"})
    expected = np.concatenate([compiled(x[i : i + 1])[0] for i in range(len(x))])
    np.testing.assert_allclose(run.outputs[0], expected, rtol=1e-6, atol=1e-6)
    assert run.result["runtime"]["name"] == "openvino"


@pytest.mark.slow
def test_local_executorch_matches_executorch(models, tmp_path):
    import torch
    from executorch.runtime import Runtime

    x = np.load(models.inputs("nchw"))["x"]
    run = run_on_device("host", models.pte, models.inputs("nchw"), warmup=1, runs=3, threads=1, workdir=tmp_path)
    method = Runtime.get().load_program(str(models.pte)).load_method("forward")
    expected = np.concatenate([method.execute([torch.from_numpy(x[i : i + 1])])[0].numpy() for i in range(len(x))])
    np.testing.assert_allclose(run.outputs[0], expected, rtol=1e-5, atol=1e-6)
    assert run.result["runtime"]["name"] == "executorch"
