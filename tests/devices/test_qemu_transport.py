"""The qemu transport: the same models on aarch64 kernels under qemu-aarch64-static.

The emulator root is built once and cached by the `qemu_root` fixture (tests/conftest.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from edgepack.devices import run_on_device
from edgepack.devices.qemu_setup import MARKER, read_marker, setup_qemu_root
from edgepack.errors import DeviceError

pytestmark = pytest.mark.emulator


def both(models, model, layout, tmp_path):
    kw = dict(warmup=1, runs=3, threads=1, workdir=tmp_path)
    inputs = models.inputs(layout)
    return run_on_device("qemu-aarch64", model, inputs, **kw), run_on_device("host", model, inputs, **kw)


def assert_emulated(result, runtime):
    assert result["arch"] == "aarch64"
    assert result["emulated"] is True
    assert (result["device"], result["transport"]) == ("qemu-aarch64", "qemu")
    assert result["runtime"]["name"] == runtime
    assert "emulated" in result["cpu"]["model"] and "qemu-aarch64" in result["cpu"]["model"]
    assert "asimd" in result["cpu"]["isa"]           # the emulated CPU's, not the host's


def test_root_is_recorded_and_setup_is_idempotent(qemu_root):
    state = read_marker(qemu_root)
    assert state["runtimes"]["tflite_runtime"]["ok"] and state["runtimes"]["tflite_runtime"]["version"] == "2.14.0"
    stamp = (qemu_root / MARKER).stat().st_mtime_ns
    assert setup_qemu_root(qemu_root, runtimes=("tflite",)) == qemu_root
    assert (qemu_root / MARKER).stat().st_mtime_ns == stamp


def test_qemu_float_tflite_matches_host(qemu_root, models, tmp_path):
    arm, host = both(models, models.tflite_float, "nhwc", tmp_path)
    assert_emulated(arm.result, "tflite_runtime")
    np.testing.assert_allclose(arm.outputs[0], host.outputs[0], rtol=1e-4, atol=1e-5)


def test_qemu_int8_tflite_matches_host(qemu_root, models, tmp_path):
    arm, host = both(models, models.tflite_int8, "nhwc", tmp_path)
    assert_emulated(arm.result, "tflite_runtime")
    assert arm.result["io"]["outputs"][0]["dtype"] == "int8"
    np.testing.assert_array_equal(arm.outputs[0].argmax(1), host.outputs[0].argmax(1))
    # ARM and x86 int8 kernels may round one step apart: at most one output quantum.
    quantum = arm.result["io"]["outputs"][0]["scale"]
    np.testing.assert_allclose(arm.outputs[0], host.outputs[0], rtol=0, atol=quantum * 1.01)


def test_qemu_openvino_runs_on_arm(qemu_root, models, tmp_path):
    if not read_marker(qemu_root)["runtimes"].get("openvino", {}).get("ok"):
        pytest.fail(f"openvino does not run in the emulator root: {read_marker(qemu_root)['runtimes'].get('openvino')}")
    arm, host = both(models, models.openvino, "nchw", tmp_path)
    assert_emulated(arm.result, "openvino")
    # The ARM CPU plugin runs f16 by default (the result says so): close, not equal.
    assert arm.result["runtime"]["inference_precision"]
    np.testing.assert_array_equal(arm.outputs[0].argmax(1), host.outputs[0].argmax(1))
    np.testing.assert_allclose(arm.outputs[0], host.outputs[0], rtol=0, atol=0.05)


def test_qemu_names_a_runtime_it_lacks(qemu_root, models, tmp_path):
    # The emulator without the C++ runner: the Python executorch runtime is named, and why it cannot run.
    device = tmp_path / "arm-python.toml"
    device.write_text('transport = "qemu"\nruntimes = ["tflite_runtime", "openvino"]\n')
    with pytest.raises(DeviceError, match=r"^executorch does not run under qemu-aarch64: its Python runtime imports "
                                          r"torch.*the C\+\+ runner \(executorch_cpp\) runs \.pte files here instead"):
        run_on_device(str(device), models.pte, models.inputs("nchw"), warmup=1, runs=1, threads=1,
                      workdir=tmp_path)
