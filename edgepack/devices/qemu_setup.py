"""Build the aarch64 emulator root once: an arm64 Python 3.11 plus the runtimes' wheels.

    ROOT/                         arm64 Debian bookworm files unpacked with `dpkg -x`
      usr/bin/python3.11          run as `qemu-aarch64-static -L ROOT ROOT/usr/bin/python3.11`
      site-packages/<runtime>/    aarch64 wheels, one folder per runtime (numpy versions clash:
                                  tflite-runtime 2.14 needs numpy 1.x, executorch 2.x)
      site-packages/executorch_cpp/   the C++ ExecuTorch runner, cross-compiled against the
                                  aarch64 executorch wheel, with its libraries (native_runner)
      edgepack-qemu.json          the marker, written last: which runtimes run, and why not

Nothing touches the host's apt: the arm64 package lists live in a private apt state
folder inside the build. The root is built in a temporary folder beside ROOT and renamed
into place; the marker is written last, so an interrupted setup is redone next time.
Asking again for runtimes the marker already records does nothing.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterable

from filelock import FileLock

from ..errors import DeviceError, ToolchainMissing, UsageError
from . import native_runner
from .config import DEFAULT_QEMU_CPU
from .qemu_probes import probe_model, probe_script
from .transport import describe_exit, read_setup_record, run_subprocess, tail

QEMU = "qemu-aarch64-static"
MARKER = "edgepack-qemu.json"
SCHEMA = "edgepack.qemu-root/1"
PYTHON = "usr/bin/python3.11"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCES = (  # Debian bookworm, arm64 only; python3.11 3.11.2 and glibc 2.36 (the wheels need <= 2.35)
    "http://deb.debian.org/debian bookworm main",
    "http://deb.debian.org/debian bookworm-updates main",
    "http://deb.debian.org/debian-security bookworm-security main",
)
# python3.11 and the shared libraries it and the runtimes' wheels load (Debian's own
# dependency closure also drags in perl, dpkg and tar, which nothing here needs).
DEBS = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libc6", "libgcc-s1", "libstdc++6", "libgomp1", "zlib1g", "libexpat1", "libssl3", "libffi8",
    "libbz2-1.0", "liblzma5", "libsqlite3-0", "libncursesw6", "libtinfo6", "libreadline8",
    "libuuid1", "libdb5.3", "libgdbm6", "libnsl2", "libtirpc3", "libcrypt1", "libgssapi-krb5-2",
    "libk5crypto3", "libkrb5-3", "libkrb5support0", "libkeyutils1", "libcom-err2",
)
PLATFORMS = ("manylinux_2_17_aarch64", "manylinux2014_aarch64", "manylinux_2_28_aarch64",
             "manylinux_2_34_aarch64", "manylinux_2_35_aarch64")
# What each runtime needs in its folder. `deps=False`: pip resolves nothing, the list is
# complete (executorch's own requirements pull in GBs it does not need to run a program).
WHEELS: dict[str, tuple[tuple[str, ...], bool]] = {
    "tflite_runtime": (("tflite-runtime==2.14.0", "numpy==1.26.4"), True),   # numpy 2 breaks it
    "ai_edge_litert": (("ai-edge-litert", "numpy==1.26.4"), True),   # 2.x has no aarch64 cp311 wheel
    "openvino": (("openvino==2026.4.1", "numpy==1.26.4"), True),
    "executorch": (("executorch==1.5.1", "torch==2.13.0", "numpy==2.2.6", "sympy", "mpmath", "typing-extensions",
                    "filelock", "networkx", "jinja2", "markupsafe", "fsspec", "packaging", "flatbuffers",
                    "ruamel.yaml", "pyyaml"), False),
}
# Seen here, so that a runtime nobody set up can still be explained.
KNOWN_LIMITS = {
    "executorch": "its Python runtime imports torch, and PyPI's aarch64 torch 2.13.0 is a CUDA build "
                  "that does not import without GBs of CUDA wheels (seen with executorch 1.5.1); "
                  f"the C++ runner ({native_runner.RUNTIME}) runs .pte files here instead",
}
ALIASES = {"tflite": "tflite_runtime", "litert": "ai_edge_litert"}
NATIVE = (native_runner.RUNTIME,)      # built here rather than unpacked from wheels
DEFAULT_RUNTIMES = ("tflite_runtime", "openvino", native_runner.RUNTIME)
PROBE_TIMEOUT_S = 600

Progress = Callable[[str], None]


def read_marker(root: Path) -> dict | None:
    """The root's record, or None when the root is missing or unfinished."""
    return read_setup_record(root, MARKER, SCHEMA, PYTHON)


def emulator_argv(root: Path, cpu: str = DEFAULT_QEMU_CPU) -> list[str]:
    """How to start the root's Python under the emulator, as `cpu` (see DEFAULT_QEMU_CPU)."""
    return [QEMU, "-cpu", cpu, "-L", str(root), str(root / PYTHON)]


def emulator_env(root: Path, runtime: str | None) -> dict[str, str]:
    """A clean environment: nothing of the host's Python may leak into the guest's."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/"),
           "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if runtime:
        env["PYTHONPATH"] = str(root / "site-packages" / runtime)
    return env


def require_qemu() -> str:
    path = shutil.which(QEMU)
    if not path:
        raise ToolchainMissing(f"{QEMU} not found: install it with `apt-get install qemu-user-static`")
    return path


def setup_qemu_root(root: Path, progress: Progress | None = None,
                    runtimes: Iterable[str] = DEFAULT_RUNTIMES) -> Path:
    """Build (once) the emulator root at `root` with `runtimes`; returns `root`.

    Runtimes are runner names (tflite_runtime, ai_edge_litert, openvino, executorch,
    executorch_cpp; "tflite" means tflite_runtime). Each is installed and then probed under
    the emulator: the marker records which run and, for the others, why not. Already
    recorded runtimes are not redone, except a C++ runner built from other sources or for
    another executorch. executorch is opt-in: it costs a 430 MB torch download and ~1 GB on
    disk only to find that PyPI's aarch64 torch does not import here (KNOWN_LIMITS);
    executorch_cpp (an 18 MB wheel and a cross-compile, ~1 min) runs .pte files instead.
    """
    say = progress or (lambda message: None)
    root = Path(root).expanduser()
    wanted = _normalize(runtimes)
    require_qemu()
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(root.parent / f".{root.name}.lock"):    # two setups at once: the second waits, then finds it done
        return _setup_locked(root, wanted, say)


def _setup_locked(root: Path, wanted: list[str], say: Progress) -> Path:
    started = time.monotonic()
    state = read_marker(root)
    if state is not None:
        for runtime in wanted:          # a C++ runner that failed to build, or of other sources, is built again
            record = state["runtimes"].get(runtime)
            if runtime in NATIVE and record and (not record.get("ok") or
                                                 native_runner.stale_reason(root / record["site"], "aarch64")):
                del state["runtimes"][runtime]
    if state is not None and all(r in state["runtimes"] for r in wanted):
        return root
    if state is None:
        say(f"building the arm64 Python root in {root}")
        _build_sysroot(root, say)
        state = {"schema": SCHEMA, "qemu": _qemu_version(), "python": _guest_python(root), "runtimes": {},
                 "debs": list(DEBS), "seconds": 0.0}
    for runtime in wanted:
        if runtime not in state["runtimes"]:
            state["runtimes"][runtime] = _install_runtime(root, runtime, say)
    state["seconds"] = round(state.get("seconds", 0.0) + time.monotonic() - started, 1)
    state["size_mb"] = round(_size_bytes(root) / 2**20, 1)
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
    os.replace(tmp, root / MARKER)
    ok = [r for r, s in state["runtimes"].items() if s["ok"]]
    say(f"emulator root ready: {state['size_mb']} MB, runtimes that run: {', '.join(ok) or 'none'}")
    return root


def _normalize(runtimes: Iterable[str]) -> list[str]:
    out = []
    for name in runtimes:
        name = ALIASES.get(name, name)
        if name not in WHEELS and name not in NATIVE:
            raise UsageError(f"unknown emulator runtime {name!r}: choose from {', '.join((*WHEELS, *NATIVE))}")
        if name not in out:
            out.append(name)
    return out


# --------------------------------------------------------------------------- the Python root


def _build_sysroot(root: Path, say: Progress) -> None:
    for tool in ("apt-get", "dpkg"):
        if not shutil.which(tool):
            raise ToolchainMissing(f"{tool} not found: the emulator root is built from Debian's arm64 packages")
    if not Path(KEYRING).exists():
        raise ToolchainMissing(f"{KEYRING} not found: `apt-get install debian-archive-keyring`")
    build = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
    try:
        apt = _private_apt(build / ".apt")
        say("fetching the arm64 package lists (Debian bookworm)")
        _check_run(apt + ["update"], "apt-get update (arm64 lists)", timeout_s=600)
        debs = build / ".apt" / "debs"
        debs.mkdir()
        say(f"downloading {len(DEBS)} arm64 packages (python3.11 and its libraries)")
        _check_run(apt + ["download", *DEBS], "apt-get download (arm64)", cwd=debs, timeout_s=900)
        say("unpacking them")
        for deb in sorted(debs.glob("*.deb")):
            _check_run(["dpkg", "-x", str(deb), str(build)], f"dpkg -x {deb.name}", timeout_s=300)
        shutil.rmtree(build / ".apt")
        (build / "site-packages").mkdir()
        if not (build / PYTHON).exists():
            raise DeviceError(f"the arm64 packages did not provide /{PYTHON}")
        if root.exists():                 # an unfinished root from an interrupted setup
            shutil.rmtree(root)
        os.replace(build, root)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    probe = _guest(root, None, ["-c", "import ssl, sqlite3, ctypes, bz2, lzma, json; print('ok')"], timeout_s=300)
    if probe.returncode != 0:
        raise DeviceError(f"the arm64 Python does not start under {QEMU} ({describe_exit(probe.returncode)}):\n"
                          f"{tail(probe.stderr)}")


def _private_apt(state: Path) -> list[str]:
    """apt-get with its own lists, cache and sources: the host's apt is left as it was."""
    (state / "lists" / "partial").mkdir(parents=True)
    (state / "cache" / "archives" / "partial").mkdir(parents=True)
    (state / "status").touch()
    (state / "sources.list").write_text(
        "".join(f"deb [arch=arm64 signed-by={KEYRING}] {line}\n" for line in SOURCES), encoding="utf-8")
    options = {
        "Dir::State": state, "Dir::State::status": state / "status", "Dir::Cache": state / "cache",
        "Dir::Etc::SourceList": state / "sources.list", "Dir::Etc::SourceParts": state / "none",
        "APT::Architecture": "arm64", "APT::Architectures::": "arm64", "Debug::NoLocking": "1",
        "APT::Sandbox::User": getpass.getuser(),
    }
    return ["apt-get", "-q"] + [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


def _guest_python(root: Path) -> str:
    done = _guest(root, None, ["-c", "import platform; print(platform.python_version())"], timeout_s=120)
    return done.stdout.strip()


def _qemu_version() -> str:
    done = subprocess.run([QEMU, "--version"], capture_output=True, text=True)
    first = done.stdout.splitlines()[0] if done.stdout else ""
    return first.split(" version ")[-1].split()[0] if " version " in first else first


# --------------------------------------------------------------------------- runtimes


def _install_runtime(root: Path, runtime: str, say: Progress) -> dict:
    """Download and unpack a runtime's wheels into its own folder, then probe it."""
    if runtime in NATIVE:
        return _install_native(root, runtime, say)
    started = time.monotonic()
    requirements, deps = WHEELS[runtime]
    site = root / "site-packages" / runtime
    build = Path(tempfile.mkdtemp(prefix=f".{runtime}.build-", dir=root / "site-packages"))
    try:
        wheels = build / ".wheels"
        say(f"{runtime}: downloading aarch64 wheels ({', '.join(requirements[:2])} ...)")
        _check_run(_pip_download(wheels, requirements, deps), f"pip download for {runtime}", timeout_s=1800)
        say(f"{runtime}: unpacking")
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(build)
                for info in zf.infolist():   # zipfile drops the execute bits that wheels carry
                    mode = info.external_attr >> 16
                    if mode & 0o111:
                        os.chmod(build / info.filename, mode & 0o777)
        shutil.rmtree(wheels)
        shutil.rmtree(site, ignore_errors=True)
        os.replace(build, site)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    size_mb = round(_size_bytes(site) / 2**20, 1)
    say(f"{runtime}: checking that it runs under {QEMU}")
    record = {"site": f"site-packages/{runtime}", "size_mb": size_mb, "requirements": list(requirements)}
    record.update(_probe(root, runtime))
    if not record["ok"]:
        shutil.rmtree(site, ignore_errors=True)    # of no use, and possibly large
        record["site"] = None
        say(f"{runtime}: does not run under {QEMU}: {record['reason']}")
    record["seconds"] = round(time.monotonic() - started, 1)
    return record


def _install_native(root: Path, runtime: str, say: Progress) -> dict:
    """Cross-compile the C++ runner into the root's folder for it, then probe it there."""
    started = time.monotonic()
    site = root / "site-packages" / runtime
    try:
        native_runner.ensure_runner("aarch64", site, say)
    except (ToolchainMissing, DeviceError) as e:      # the other runtimes still get set up; the next setup retries
        say(f"{runtime}: not built: {e}")
        return {"site": None, "ok": False, "reason": str(e).splitlines()[0],
                "seconds": round(time.monotonic() - started, 1)}
    state = native_runner.read_marker(site)
    record = {"site": f"site-packages/{runtime}", "size_mb": state["size_mb"], "executorch": state["executorch"],
              "source": state["source"]}
    say(f"{runtime}: checking that it runs under {QEMU}")
    record.update(native_runner.probe(emulator_argv(root)[:-1] + [str(site / native_runner.EXECUTABLE)],
                                      env=emulator_env(root, None), timeout_s=PROBE_TIMEOUT_S))
    if not record["ok"]:
        shutil.rmtree(site, ignore_errors=True)
        record["site"] = None
        say(f"{runtime}: does not run under {QEMU}: {record['reason']}")
    record["seconds"] = round(time.monotonic() - started, 1)
    return record


def _pip_download(dest: Path, requirements: tuple[str, ...], deps: bool) -> list[str]:
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "-q",
            "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
            "-d", str(dest)]
    for tag in PLATFORMS + ("any",):
        argv += ["--platform", tag]
    return argv + ([] if deps else ["--no-deps"]) + list(requirements)


def _probe(root: Path, runtime: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgepack-probe-") as tmp:
        model = probe_model(runtime)
        path = ""
        if model:
            path = str(Path(tmp) / model[0])
            Path(path).write_bytes(model[1])
        done = _guest(root, runtime, ["-c", probe_script(runtime, path)], timeout_s=PROBE_TIMEOUT_S, cwd=tmp)
    if done.returncode == 0:
        try:
            return {"ok": True, "version": json.loads(done.stdout.strip().splitlines()[-1])["version"]}
        except (ValueError, KeyError, IndexError):
            pass
    last = (tail(done.stderr, 1) or tail(done.stdout, 1))[:240]
    reason = f"its probe {describe_exit(done.returncode)}" + (f": {last}" if last else "")
    if runtime in KNOWN_LIMITS and ("libcu" in last or "cuda" in last.lower()):
        reason = f"{KNOWN_LIMITS[runtime]}; {reason}"
    return {"ok": False, "reason": reason}


def _guest(root: Path, runtime: str | None, args: list[str], *, timeout_s: float, cwd: str | None = None):
    return run_subprocess(emulator_argv(root) + args, env=emulator_env(root, runtime), cwd=cwd,
                          timeout_s=timeout_s, what=f"python3.11 under {QEMU}")


def _check_run(argv: list[str], what: str, *, timeout_s: float, cwd: Path | None = None) -> None:
    done = run_subprocess(argv, cwd=cwd, timeout_s=timeout_s, what=what)
    if done.returncode != 0:
        last = tail(done.stderr or done.stdout)
        raise DeviceError(f"emulator setup: {what} {describe_exit(done.returncode)}:\n{last}")


def _size_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total
