"""The host itself: runner.py in a subprocess of this machine's Python, or the C++
ExecuTorch runner (executorch_cpp) built for this host by `edgepack device setup`."""
from __future__ import annotations

import platform
import shutil
import sys
from pathlib import Path

from ..errors import DeviceError
from . import native_runner
from .transport import HostFilesTransport, RunnerCommand


class LocalTransport(HostFilesTransport):
    kind = "local"

    @property
    def python(self) -> str:
        # The device file's `python` (another environment, say), else the one running edgepack.
        return self.device.python or sys.executable

    @property
    def native_dir(self) -> Path:
        return native_runner.cache_dir(platform.machine())

    def check(self) -> str | None:
        if not shutil.which(self.python):
            return f"python {self.python} not found"
        return None

    def setup(self, progress=None) -> None:
        if native_runner.RUNTIME not in self.device.runtimes:
            return
        dest = native_runner.ensure_runner(platform.machine(), self.native_dir, progress)
        probed = native_runner.probe([str(dest / native_runner.EXECUTABLE)])
        if not probed["ok"]:
            raise DeviceError(f"device {self.device.name!r}: the {native_runner.RUNTIME} runner in {dest} "
                              f"does not run: {probed['reason']}")

    def runner_command(self, model: Path) -> RunnerCommand:
        native, runtimes = self.pick_runner(model)
        if native is None:
            return RunnerCommand(argv=[self.python], runtimes=runtimes)
        reason = native_runner.stale_reason(self.native_dir, platform.machine())
        if reason:
            raise DeviceError(f"device {self.device.name!r}: {reason}: run `edgepack device setup {self.device.name}`")
        return RunnerCommand(argv=[str(self.native_dir / native_runner.EXECUTABLE)], runtimes=[native], script=None)
