"""How the harness reaches a device: one Transport subclass per way (local, qemu, ssh).

A transport is registered by subclassing with a `kind` (the device file's `transport`
value); `Transport.for_device` imports `edgepack.devices.<kind>` on first use, so a
transport is a module of its own that nothing else names. What the harness asks of
every transport, in order, for one run:

    setup(progress)                 once, by `edgepack device setup NAME` (qemu builds its root)
    check()                      -> None when ready, else a one-line reason
    runner_command(model)        -> how to start the runner there for this model (RunnerCommand):
                                    runner.py under the device's Python, or the C++ ExecuTorch
                                    runner (runtime executorch_cpp, see native_runner)
    open(workdir)                -> a fresh folder on the device for this run
    put(local_file, remote_dir)  -> the file's path on the device
    run(argv, cwd, env, timeout_s) -> Completed (exit status, stdout, stderr)
    get(remote_file, local_file)    fetch a result file back
    close(remote_dir)               remove the run's folder from the device
    facts(result)                -> device facts merged into the runner's JSON

Paths on the device are POSIX strings. `run_subprocess` is the host-side building block
(a process group killed whole on timeout) for transports that start local programs:
the runner itself, qemu, or ssh/scp. An ssh transport, for instance: check() tries a
short `ssh ... true`; open() runs `mktemp -d` under the device's remote_dir; put() and
get() are scp; run() is `ssh ... 'cd DIR && env K=V ... ARGV'` (quoted with shlex); close()
is `rm -rf DIR`; runner_command() is the device's `python` with `runtimes_for(model)`.
"""
from __future__ import annotations

import importlib
import json
import os
import posixpath
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

from ..errors import DeviceError
from .config import DeviceConfig
from .runner import RUNTIMES_BY_SUFFIX

RUNNER = Path(__file__).resolve().with_name("runner.py")


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class RunnerCommand:
    """The argv prefix that starts the runner, its environment, and the runtimes to offer.

    With `script` (runner.py), argv starts the device's Python and the script is put on the
    device for each run and named after argv; without, argv starts a runner already there
    (the C++ runner, set up once by `edgepack device setup`)."""

    argv: list[str]
    runtimes: list[str]
    env: dict[str, str] | None = None   # None: inherit (local); a dict is the whole environment
    script: Path | None = RUNNER


def runtimes_by_suffix() -> dict[str, tuple[str, ...]]:
    """Which runtimes load which file: runner.py's, then the native runner's."""
    from .native_runner import RUNTIME, SUFFIXES

    return {suffix: names + ((RUNTIME,) if suffix in SUFFIXES else ())
            for suffix, names in RUNTIMES_BY_SUFFIX.items()}


def is_native(runtime: str) -> bool:
    """A runtime that is a program of its own (executorch_cpp), not a module runner.py imports."""
    from .native_runner import RUNTIME

    return runtime == RUNTIME


def read_setup_record(folder: Path, marker: str, schema: str, needed: str) -> dict | None:
    """What `device setup` recorded in `folder` (marker, a JSON file), or None when the folder
    is missing or unfinished: no readable record, another schema, or `needed` absent."""
    try:
        state = json.loads((Path(folder) / marker).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if state.get("schema") != schema or not (Path(folder) / needed).is_file():
        return None
    return state


def tail(text: str, lines: int = 8) -> str:
    """The last non-empty lines of a program's output, for an error message."""
    kept = [line.rstrip() for line in text.splitlines() if line.strip(" ^~\t")]   # no traceback carets
    return "\n".join(kept[-lines:])


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def run_subprocess(argv: list[str], *, cwd: str | Path | None = None, env: dict[str, str] | None = None,
                   timeout_s: float, what: str = "") -> Completed:
    """Run a program on this host; on timeout kill its whole process group and raise DeviceError."""
    what = what or Path(argv[0]).name
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    except OSError as e:
        raise DeviceError(f"cannot start {what} ({argv[0]}): {e.strerror or e}") from None
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        last = tail(err, 4)
        raise DeviceError(f"{what} timed out after {timeout_s:g} s" + (f"; stderr:\n{last}" if last else "")) from None
    except BaseException:            # Ctrl-C: leave nothing running behind us
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return Completed(proc.returncode, out, err)


class Transport:
    """Base of all transports. Subclasses set `kind` and override what differs."""

    kind: ClassVar[str] = ""
    emulated: ClassVar[bool] = False
    _registry: ClassVar[dict[str, type["Transport"]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            Transport._registry[cls.kind] = cls

    def __init__(self, device: DeviceConfig):
        self.device = device

    @classmethod
    def for_device(cls, device: DeviceConfig) -> "Transport":
        kind = device.transport
        if kind not in cls._registry:
            module = f"{__package__}.{kind}"
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as e:
                if e.name != module:
                    raise
            if kind not in cls._registry:
                raise DeviceError(f"device {device.name!r}: the {kind} transport is not available "
                                  f"(no module {module})")
        return cls._registry[kind](device)

    # -- readiness -------------------------------------------------------------------

    def check(self) -> str | None:
        """None when the device can run the runner now, else why not (one line). Cheap."""
        return None

    def setup(self, progress: Callable[[str], None] | None = None) -> None:
        """Prepare the device once (`edgepack device setup NAME`); most need nothing."""

    # -- the runner ------------------------------------------------------------------

    def runtimes_for(self, model: Path) -> list[str]:
        """The device's runtimes that can load `model`, in its order of preference."""
        suffix = model.suffix.lower()
        table = runtimes_by_suffix()
        if suffix not in table:
            raise DeviceError(f"no runtime runs {model.name}: expected a .tflite, .xml or .pte file")
        found = [r for r in self.device.runtimes if r in table[suffix]]
        if not found:
            where = f" in {self.device.source}" if self.device.source else ""
            raise DeviceError(f"device {self.device.name!r} has no runtime for {suffix} files "
                              f"(runtimes = {list(self.device.runtimes)}{where})")
        return found

    def runner_command(self, model: Path) -> RunnerCommand:
        raise NotImplementedError

    def pick_runner(self, model: Path) -> tuple[str | None, list[str]]:
        """(the native runtime to start, or None; else the runtimes to offer runner.py). The
        device's first runtime for the file decides: runner.py cannot fall back to a program."""
        found = self.runtimes_for(model)
        if is_native(found[0]):
            return found[0], []
        return None, [r for r in found if not is_native(r)]

    # -- files and processes ------------------------------------------------------------

    def open(self, workdir: Path) -> str:
        raise NotImplementedError

    def put(self, local: Path, remote_dir: str) -> str:
        raise NotImplementedError

    def run(self, argv: list[str], *, cwd: str, env: dict[str, str] | None, timeout_s: float) -> Completed:
        raise NotImplementedError

    def get(self, remote: str, local: Path) -> None:
        raise NotImplementedError

    def close(self, remote_dir: str) -> None:
        pass

    @staticmethod
    def join(remote_dir: str, name: str) -> str:
        return posixpath.join(remote_dir, name)

    # -- what the result says about the device --------------------------------------------

    def facts(self, result: dict) -> dict:
        """Device facts merged into the runner's JSON; subclasses may amend cpu etc."""
        return {"device": self.device.name, "transport": self.device.transport,
                "emulated": self.emulated, "arch": result.get("arch") or self.device.arch}


class HostFilesTransport(Transport):
    """A device that shares this host's file system (local, qemu): files stay where they are."""

    def open(self, workdir: Path) -> str:
        workdir.mkdir(parents=True, exist_ok=True)
        # Absolute: the runner starts in another working directory (a relative --out broke it).
        return tempfile.mkdtemp(prefix=f".{self.device.name}-", dir=workdir.absolute())

    def put(self, local: Path, remote_dir: str) -> str:
        return str(Path(local).absolute())

    def run(self, argv: list[str], *, cwd: str, env: dict[str, str] | None, timeout_s: float) -> Completed:
        return run_subprocess(argv, cwd=cwd, env=env, timeout_s=timeout_s, what=f"device {self.device.name!r}")

    def get(self, remote: str, local: Path) -> None:
        if Path(remote).resolve() != Path(local).resolve():
            shutil.copyfile(remote, local)

    def close(self, remote_dir: str) -> None:
        shutil.rmtree(remote_dir, ignore_errors=True)
