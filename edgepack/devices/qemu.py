"""An aarch64 device emulated on this host by qemu-user: the runner really runs ARM code.

The root (see qemu_setup) holds an arm64 Python 3.11 and one site-packages folder per
runtime; runner.py is started with the folder of the runtime that loads the model on
PYTHONPATH. For .pte files the C++ runner (executorch_cpp, in its own folder there) is
started directly, on the root's dynamic loader and libraries. Timings are marked emulated:
comparable with each other, never with hardware.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import DeviceError
from . import native_runner
from .config import QemuDevice
from .qemu_setup import KNOWN_LIMITS, QEMU, emulator_argv, emulator_env, read_marker, setup_qemu_root
from .runner import cpu_info
from .transport import HostFilesTransport, RunnerCommand, is_native, runtimes_by_suffix


class QemuTransport(HostFilesTransport):
    kind = "qemu"
    emulated = True
    device: QemuDevice

    @property
    def root(self) -> Path:
        return self.device.root_path()

    def check(self) -> str | None:
        if not shutil.which(QEMU):
            return f"{QEMU} not found: apt-get install qemu-user-static"
        if read_marker(self.root) is None:
            return f"no emulator root at {self.root}: run `edgepack device setup {self.device.name}`"
        return None

    def setup(self, progress=None) -> None:
        setup_qemu_root(self.root, progress, runtimes=self.device.runtimes)

    def runner_command(self, model: Path) -> RunnerCommand:
        candidates = runtimes_by_suffix().get(model.suffix.lower())
        if not candidates:
            self.runtimes_for(model)            # raises: no runtime loads this file at all
        listed = [r for r in self.device.runtimes if r in candidates]
        runtimes = read_marker(self.root) or {"runtimes": {}}
        for runtime in listed:
            record = runtimes["runtimes"].get(runtime)
            if record and record.get("ok"):
                argv = emulator_argv(self.root, self.device.cpu)
                if is_native(runtime):          # the C++ runner in the root, on the root's loader and libraries
                    folder = self.root / record["site"]
                    reason = native_runner.stale_reason(folder, "aarch64")
                    if reason:
                        raise DeviceError(f"{runtime} in the emulator root: {reason}: run "
                                          f"`edgepack device setup {self.device.name}`")
                    return RunnerCommand(argv=argv[:-1] + [str(folder / native_runner.EXECUTABLE)],
                                         runtimes=[runtime], env=emulator_env(self.root, None), script=None)
                if self.device.python:          # another interpreter inside the root
                    argv[-1] = str(self.root / self.device.python.lstrip("/"))
                return RunnerCommand(argv=argv, runtimes=[runtime], env=emulator_env(self.root, runtime))
        runtime = (listed or list(candidates))[0]
        record = runtimes["runtimes"].get(runtime)
        if record and not record.get("ok"):
            reason = record["reason"]
        else:
            where = self.device.source or f"devices/{self.device.name}.toml"
            reason = (f"it is not set up in {self.root} (to try: add {runtime!r} to runtimes in {where}, "
                      f"then run `edgepack device setup {self.device.name}`)")
            if runtime in KNOWN_LIMITS:
                reason = f"{KNOWN_LIMITS[runtime]}; {reason}"
        raise DeviceError(f"{runtime} does not run under qemu-aarch64: {reason}")

    def facts(self, result: dict) -> dict:
        facts = super().facts(result)
        state = read_marker(self.root) or {}
        host = cpu_info()["model"]
        cpu = dict(result.get("cpu") or {})
        cpu["model"] = (f"qemu-aarch64 {state.get('qemu', '')} -cpu {self.device.cpu} (emulated) "
                        f"on {host}").replace("  ", " ")
        facts["cpu"] = cpu
        return facts
