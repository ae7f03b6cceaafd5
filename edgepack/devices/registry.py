"""The device harness: find a device, put model + inputs + runner on it, run, read back.

    run = run_on_device("qemu-aarch64", Path("model.tflite"), Path("inputs.npz"),
                        warmup=20, runs=200, threads=1, workdir=Path("build/devices"))
    run.result["latency_ms"]["p50"], run.outputs.shape

An unknown device is a UsageError (exit 2); a device that is not ready, cannot be
reached, or whose runner fails is a DeviceError (exit 1) with a one-line reason first
and the last lines of the device's stderr after it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts import atomic_write_bytes
from ..errors import DeviceError, UsageError
from ..locks import device_lock
from .config import DeviceConfig, device_files, devices_dir, read_device_file
from .transport import Transport, describe_exit, tail

RESULT_JSON = "result.json"
OUTPUTS_NPZ = "outputs.npz"


@dataclass
class DeviceRun:
    result: dict                  # the runner's JSON (schema edgepack.runner/1) plus device facts
    outputs: list[np.ndarray]     # one (N, ...) array per model output, one row per input sample
    raw_outputs: list[np.ndarray] | None = None   # as the file gives them, where a caller re-lays outputs


def load_device(name: str) -> DeviceConfig:
    """devices/<name>.toml (or a path to a .toml file), validated."""
    if name.endswith(".toml"):
        path = Path(name).expanduser()
        if path.is_file():
            return read_device_file(path)
    path = devices_dir() / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(p.stem for p in device_files()) or "none"
        raise UsageError(f"unknown device {name!r}: no {path} (known devices: {known})")
    return read_device_file(path)


def list_devices() -> list[tuple[DeviceConfig, str | None]]:
    """Every device file with None when the device is ready, else why it is not."""
    out = []
    for path in device_files():
        device = read_device_file(path)
        try:
            reason = Transport.for_device(device).check()
        except DeviceError as e:
            reason = str(e)
        out.append((device, reason))
    return out


def run_on_device(device: str | DeviceConfig, model: Path, inputs: Path, *, warmup: int, runs: int,
                  threads: int | None, workdir: Path, timeout_s: float | None = None,
                  extra_files: list[Path] = (), output_names: list[str] | None = None, profile: int = 0) -> DeviceRun:
    """Run `model` on `device` for outputs of every sample in `inputs`, then time it.

    Results land in workdir/<device>/ (result.json, outputs.npz: one array per output, in
    `output_names` order when given, else the model's own). `timeout_s`: the runner's
    wall-clock limit; None: the device file's run_timeout_s. `profile`: that many more
    runs with the runtime's per-operator profiler, where it has one (result["profile"]).
    """
    device = load_device(device) if isinstance(device, str) else device
    model, inputs, workdir = Path(model), Path(inputs), Path(workdir)
    for path in (model, inputs, *map(Path, extra_files)):
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    transport = Transport.for_device(device)
    reason = transport.check()
    if reason:
        raise DeviceError(f"device {device.name!r} is not ready: {reason}")
    command = transport.runner_command(model)

    script = [command.script] if command.script else []     # runner.py; a native runner is there already
    files = [*script, model, *_side_files(model), inputs, *map(Path, extra_files)]
    names = [path.name for path in files]
    if len(set(names)) != len(names):
        raise UsageError(f"files for device {device.name!r} must have distinct names: {', '.join(names)}")
    local_dir = workdir / device.name
    local_dir.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT_JSON, OUTPUTS_NPZ):
        (local_dir / stale).unlink(missing_ok=True)
    remote_dir = transport.open(workdir)
    try:
        placed = {path: transport.put(path, remote_dir) for path in files}
        out_json, out_npy = transport.join(remote_dir, RESULT_JSON), transport.join(remote_dir, OUTPUTS_NPZ)
        argv = command.argv + [placed[path] for path in script] + [
            "--model", placed[model], "--inputs", placed[inputs],
            "--warmup", str(warmup), "--runs", str(runs), "--threads", str(threads or device.threads),
            "--out-json", out_json, "--out-outputs", out_npy, "--runtimes", ",".join(command.runtimes),
        ] + (["--outputs", ",".join(output_names)] if output_names else []) \
          + (["--profile", str(profile)] if profile else [])
        with device_lock(device):         # one measurement at a time per device (edgepack/locks.py)
            done = transport.run(argv, cwd=remote_dir, env=command.env, timeout_s=timeout_s or device.run_timeout_s)
        if done.returncode != 0:
            last = tail(done.stderr) or tail(done.stdout)
            headline = _headline(last)
            raise DeviceError(f"device {device.name!r}: the runner {describe_exit(done.returncode)} on "
                              f"{model.name}" + (f": {headline}" if headline else "")
                              + (f"\n{_indent(last)}" if last and last != headline else ""))
        try:
            transport.get(out_json, local_dir / RESULT_JSON)
            transport.get(out_npy, local_dir / OUTPUTS_NPZ)
        except OSError as e:
            raise DeviceError(f"device {device.name!r}: the runner exited cleanly but its results cannot be "
                              f"fetched: {e}") from None
    finally:
        transport.close(remote_dir)

    try:
        result = json.loads((local_dir / RESULT_JSON).read_text(encoding="utf-8"))
        with np.load(local_dir / OUTPUTS_NPZ) as z:
            outputs = [z[k] for k in z.files]
    except (OSError, ValueError) as e:
        raise DeviceError(f"device {device.name!r}: unreadable runner result in {local_dir}: {e}") from None
    result.update(transport.facts(result))
    atomic_write_bytes(local_dir / RESULT_JSON, json.dumps(result, indent=1).encode())
    return DeviceRun(result=result, outputs=outputs)


def _side_files(model: Path) -> list[Path]:
    """Files a model needs beside it: an OpenVINO .xml's weights (.bin)."""
    if model.suffix.lower() == ".xml":
        weights = model.with_suffix(".bin")
        if not weights.is_file():
            raise UsageError(f"{model}: its weights {weights.name} are not beside it")
        return [weights]
    return []


def _headline(stderr_tail: str) -> str:
    """The line that says what went wrong: a Python exception or the runner's own message."""
    lines = stderr_tail.splitlines()
    for line in reversed(lines):
        stripped = line.strip()
        exception = stripped.split(":")[0].endswith(("Error", "Exception")) and ": " in stripped
        if stripped.startswith("runner: ") or exception:
            return stripped
    return lines[-1].strip() if lines else ""


def _indent(text: str) -> str:
    return "\n".join("  | " + line for line in text.splitlines())

