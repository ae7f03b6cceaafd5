"""The host itself: runner.py in a subprocess of this machine's Python."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .transport import HostFilesTransport, RunnerCommand


class LocalTransport(HostFilesTransport):
    kind = "local"

    @property
    def python(self) -> str:
        # The device file's `python` (another environment, say), else the one running edgepack.
        return self.device.python or sys.executable

    def check(self) -> str | None:
        if not shutil.which(self.python):
            return f"python {self.python} not found"
        return None

    def runner_command(self, model: Path) -> RunnerCommand:
        return RunnerCommand(argv=[self.python], runtimes=self.runtimes_for(model))
