"""Device files, the device list, and how a broken or unknown device fails."""
from __future__ import annotations

import pytest

from edgepack.devices import DeviceConfig, list_devices, load_device, run_on_device
from edgepack.devices.config import QemuDevice
from edgepack.errors import DeviceError, UsageError


@pytest.fixture
def devices(tmp_path, monkeypatch):
    """A private devices folder: write(name, text) adds a device file."""
    folder = tmp_path / "devices"
    folder.mkdir()
    monkeypatch.setenv("EDGEPACK_DEVICES_DIR", str(folder))

    def write(name: str, text: str):
        (folder / f"{name}.toml").write_text(text)
    return write


def test_shipped_devices_load():
    names = {d.name: (d, reason) for d, reason in list_devices()}
    assert {"host", "qemu-aarch64", "raspberry-pi"} <= set(names)
    assert names["host"][1] is None
    assert names["raspberry-pi"][1]                      # an example board: not reachable here
    pi = load_device("raspberry-pi")
    assert (pi.transport, pi.host, pi.port) == ("ssh", "raspberrypi.local", 22)
    qemu = load_device("qemu-aarch64")
    assert isinstance(qemu, QemuDevice) and isinstance(qemu, DeviceConfig) and qemu.arch == "aarch64"


def test_qemu_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEPACK_QEMU_ROOT", str(tmp_path / "r"))
    assert load_device("qemu-aarch64").root_path() == tmp_path / "r"


@pytest.mark.parametrize("text, message", [
    ('transport = "local"\nspeed = 3', "unknown key 'speed'"),
    ('transport = "local"\nhost = "x"', "unknown key 'host'"),
    ('transport = "ssh"', "missing key 'host'"),
    ('transport = "carrier-pigeon"', "key 'transport'"),
    ('threads = 2', "key 'transport'"),
    ('transport = "local"\nthreads = 0', "key 'threads'"),
    ('transport = "local"\nruntimes = ["tensorrt"]', "key 'runtimes.0'"),
    ('transport = "local"\nname = "other"', "must match the file name"),
    ('transport = = "local"', "not valid TOML"),
])
def test_bad_device_file_names_file_and_key(devices, text, message):
    devices("board", text)
    with pytest.raises(UsageError, match="board.toml") as info:
        load_device("board")
    assert message in str(info.value)


def test_unknown_device_lists_known_ones(devices):
    devices("board", 'transport = "local"')
    with pytest.raises(UsageError, match=r"unknown device 'nope'.*known devices: board"):
        load_device("nope")


def test_unreachable_device(devices, models, tmp_path):
    devices("broken", 'transport = "local"\npython = "/nonexistent/python3"')
    [(_, reason)] = list_devices()
    assert reason == "python /nonexistent/python3 not found"
    with pytest.raises(DeviceError, match=r"device 'broken' is not ready: python /nonexistent/python3 not found"):
        run_on_device("broken", models.tflite_float, models.inputs(), warmup=0, runs=1, threads=1, workdir=tmp_path)


def test_device_that_cannot_start_the_runner(devices, models, tmp_path):
    devices("false", 'transport = "local"\npython = "false"')     # starts, and fails at once
    with pytest.raises(DeviceError, match=r"device 'false': the runner exited with status 1 on float.tflite"):
        run_on_device("false", models.tflite_float, models.inputs(), warmup=0, runs=1, threads=1, workdir=tmp_path)


def test_qemu_without_root_is_not_ready(devices, models, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_QEMU_ROOT", str(tmp_path / "no-root"))
    devices("arm", 'transport = "qemu"')
    [(device, reason)] = list_devices()
    assert "edgepack device setup arm" in reason
    with pytest.raises(DeviceError, match="device 'arm' is not ready"):
        run_on_device("arm", models.tflite_float, models.inputs(), warmup=0, runs=1, threads=1, workdir=tmp_path)


def test_interrupted_qemu_setup_is_not_ready(devices, tmp_path, monkeypatch):
    root = tmp_path / "half-built"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "python3.11").touch()         # a sysroot, but no marker written last
    monkeypatch.setenv("EDGEPACK_QEMU_ROOT", str(root))
    devices("arm", 'transport = "qemu"')
    [(_, reason)] = list_devices()
    assert reason and ("edgepack device setup arm" in reason or "qemu-user-static" in reason)


def test_runner_crash_reports_stderr(models, tmp_path):
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"this is not a flatbuffer" * 10)
    with pytest.raises(DeviceError) as info:
        run_on_device("host", garbage, models.inputs(), warmup=0, runs=1, threads=1, workdir=tmp_path / "w")
    first, *rest = str(info.value).splitlines()
    assert first.startswith("device 'host': the runner exited with status 1 on garbage.tflite: ")
    assert "Error" in first and rest                    # the exception, then the stderr tail


def test_runner_timeout(models, tmp_path):
    with pytest.raises(DeviceError, match=r"timed out after 0.01 s"):
        run_on_device("host", models.tflite_float, models.inputs(), warmup=0, runs=1, threads=1,
                      workdir=tmp_path, timeout_s=0.01)


def test_runner_timeout_from_the_device_file(devices, models, tmp_path):
    devices("impatient", 'transport = "local"\nrun_timeout_s = 0.01')
    with pytest.raises(DeviceError, match=r"device 'impatient' timed out after 0.01 s"):
        run_on_device("impatient", models.tflite_float, models.inputs(), warmup=0, runs=1, threads=1,
                      workdir=tmp_path)


def test_format_without_runtime(devices, models, tmp_path):
    devices("tfl-only", 'transport = "local"\nruntimes = ["ai_edge_litert"]')
    with pytest.raises(DeviceError, match=r"device 'tfl-only' has no runtime for .xml files"):
        run_on_device("tfl-only", models.openvino, models.inputs("nchw"), warmup=0, runs=1, threads=1,
                      workdir=tmp_path)


def test_missing_model_is_a_usage_error(models, tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        run_on_device("host", tmp_path / "nope.tflite", models.inputs(), warmup=0, runs=1, threads=1,
                      workdir=tmp_path)
