"""The C++ ExecuTorch runner (runtime `executorch_cpp`): built once per architecture, cached.

runner.py's executorch runtime imports torch, and PyPI's aarch64 torch is a CUDA build
that does not import on a board or under qemu. The executorch wheel itself ships a C++
runtime without libtorch (executorch 1.5.1: `executorch/lib/libexecutorch*.so` with the
XNNPACK backend, the optimized kernels with the portable ones behind them, the quantized
kernels, the thread pool and ETDump; headers under `executorch/include`). native/ holds a
small runner on it that speaks runner.py's flags, files and JSON; this module compiles it
against the wheel of the architecture asked for and keeps it in a folder of its own:

    DEST/edgepack-executorch-runner     RUNPATH $ORIGIN: the libraries beside it
    DEST/libexecutorch*.so              the six it links, copied from the wheel
    DEST/edgepack-runner.json           the marker, written last (arch, executorch version, source hash)

x86-64 on an x86-64 host builds with g++ from the installed executorch; aarch64 with
Debian's cross compiler (g++-aarch64-linux-gnu) from the aarch64 wheel, which `pip
download` fetches at setup (the same version as the converter that wrote the .pte). No
CMake: the wheel's CMake package wants CMake >= 3.28 for its targets (Debian 12 has 3.25),
and one compiler command needs only what the package's EXECUTORCH_COMPILE_DEFINITIONS
lists. `-Wl,--no-as-needed` keeps the libraries that only register kernels and backends
when loaded (nothing calls into them by name). The runner needs glibc >= 2.34 and the
libstdc++ of GCC >= 11 on the device (Debian 12, Ubuntu 22.04, Raspberry Pi OS bookworm).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock

from ..errors import DeviceError, ToolchainMissing
from .transport import describe_exit, read_setup_record, run_subprocess, tail

RUNTIME = "executorch_cpp"
SUFFIXES = (".pte",)
EXECUTABLE = "edgepack-executorch-runner"
MARKER = "edgepack-runner.json"
SCHEMA = "edgepack.executorch-runner/1"
SOURCE_DIR = Path(__file__).resolve().with_name("native")
SOURCES = ("executorch_runner.cpp", "npz.cpp")
LIBRARIES = ("libexecutorch.so", "libexecutorch_backend_xnnpack.so", "libexecutorch_kernels_optimized.so",
             "libexecutorch_kernels_quantized.so", "libexecutorch_threadpool.so", "libexecutorch_etdump.so")
# What the headers need when the CMake package cannot be read (its EXECUTORCH_COMPILE_DEFINITIONS,
# plus ET_USE_THREADPOOL, which it adds when the wheel ships the thread pool).
DEFINES = ("C10_USING_CUSTOM_GENERATED_MACROS", "ET_EVENT_TRACER_ENABLED", "ET_USE_THREADPOOL")
WHEEL_PLATFORMS = {"aarch64": ("manylinux_2_28_aarch64",), "x86_64": ("manylinux_2_28_x86_64",)}
BUILD_TIMEOUT_S = 900

Progress = Callable[[str], None]


def cache_dir(arch: str) -> Path:
    """Where a build for this host's own use lives: $EDGEPACK_RUNNER_CACHE/<arch>, else
    ~/.cache/edgepack/executorch-runner/<arch>. The emulator keeps its own inside its root."""
    base = os.environ.get("EDGEPACK_RUNNER_CACHE") or "~/.cache/edgepack/executorch-runner"
    return Path(base).expanduser() / arch


def executorch_version() -> str:
    """The installed executorch's version (the converter's): the runtime must be as new."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("executorch").split("+")[0]
    except PackageNotFoundError:
        raise ToolchainMissing("executorch is not installed: the C++ runner is built from its wheel") from None


def source_hash() -> str:
    """What the build is made of: the runner's sources and how they are compiled."""
    h = hashlib.sha256()
    for path in sorted(SOURCE_DIR.iterdir()):
        if path.suffix in (".cpp", ".h"):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(" ".join(DEFINES + LIBRARIES).encode())
    return h.hexdigest()[:16]


def read_marker(dest: Path) -> dict | None:
    return read_setup_record(dest, MARKER, SCHEMA, EXECUTABLE)


def stale_reason(dest: Path, arch: str | None = None) -> str | None:
    """None when DEST holds a build of the current sources for the installed executorch, else why not."""
    state = read_marker(dest)
    if state is None:
        return f"no C++ runner built in {dest}"
    if arch and state["arch"] != arch:
        return f"the runner in {dest} is for {state['arch']}, not {arch}"
    if state["source"] != source_hash():
        return f"the runner in {dest} was built from other sources (edgepack changed since)"
    if state["executorch"] != executorch_version():
        return f"the runner in {dest} is executorch {state['executorch']}, the converter {executorch_version()}"
    return None


def ensure_runner(arch: str, dest: Path, progress: Progress | None = None) -> Path:
    """Build the runner for `arch` into `dest` unless a current build is there; returns `dest`."""
    say = progress or (lambda message: None)
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.parent / f".{dest.name}.lock"):     # two setups at once: the second finds it built
        if stale_reason(dest, arch) is None:
            return dest
        started = time.monotonic()
        _require_compiler(arch)                # before any download
        build = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build-", dir=dest.parent))
        try:
            sdk = _sdk(arch, build / "sdk", say)
            out = build / "out"
            out.mkdir()
            say(f"{RUNTIME}: compiling the runner for {arch} ({_compiler(arch)})")
            _compile(arch, sdk, out / EXECUTABLE, build)
            for lib in LIBRARIES:
                shutil.copy2(sdk / "lib" / lib, out / lib)
            state = {"schema": SCHEMA, "arch": arch, "executorch": executorch_version(), "source": source_hash(),
                     "compiler": _compiler_version(arch), "libraries": list(LIBRARIES),
                     "size_mb": round(sum(p.stat().st_size for p in out.iterdir()) / 2**20, 1),
                     "seconds": round(time.monotonic() - started, 1)}
            (out / MARKER).write_text(json.dumps(state, indent=1), encoding="utf-8")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(out, dest)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    say(f"{RUNTIME}: runner built in {dest} ({state['size_mb']} MB, {state['seconds']} s)")
    return dest


# --------------------------------------------------------------------------- the SDK


def _sdk(arch: str, scratch: Path, say: Progress) -> Path:
    """The executorch package folder (lib/, include/, share/cmake) of the wheel for `arch`."""
    if arch == platform.machine():
        from importlib.metadata import distribution

        installed = Path(distribution("executorch").locate_file("executorch"))
        if (installed / "lib" / LIBRARIES[0]).is_file() and (installed / "include").is_dir():
            return installed
    if arch not in WHEEL_PLATFORMS:
        raise DeviceError(f"{RUNTIME}: no executorch wheel for {arch} (choose from {', '.join(WHEEL_PLATFORMS)})")
    version = executorch_version()
    wheels = scratch / "wheels"
    say(f"{RUNTIME}: downloading the executorch {version} wheel for {arch}")
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "-q", "--no-deps",
            "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
            "-d", str(wheels), f"executorch=={version}"]
    for tag in WHEEL_PLATFORMS[arch]:
        argv += ["--platform", tag]
    done = run_subprocess(argv, timeout_s=900, what="pip download executorch")
    if done.returncode != 0:
        raise DeviceError(f"{RUNTIME}: pip download executorch=={version} for {arch} "
                          f"{describe_exit(done.returncode)}:\n{tail(done.stderr or done.stdout)}")
    wheel = next(wheels.glob("executorch-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith(("executorch/lib/", "executorch/include/",
                                                             "executorch/share/cmake/"))]
        zf.extractall(scratch, members)
    sdk = scratch / "executorch"
    missing = [lib for lib in LIBRARIES if not (sdk / "lib" / lib).is_file()]
    if missing:
        raise DeviceError(f"{RUNTIME}: the executorch {version} wheel for {arch} lacks {', '.join(missing)}")
    return sdk


def _defines(sdk: Path) -> list[str]:
    """EXECUTORCH_COMPILE_DEFINITIONS from the wheel's CMake package, plus the thread pool's."""
    config = sdk / "share" / "cmake" / "executorch-config.cmake"
    try:
        m = re.search(r"set\(EXECUTORCH_COMPILE_DEFINITIONS\s+([^)]*)\)", config.read_text(encoding="utf-8"))
    except OSError:
        m = None
    found = [w.strip('"') for w in m.group(1).split()] if m else list(DEFINES)
    return found + [d for d in DEFINES if d not in found]


def _compiler(arch: str) -> str:
    return "g++" if arch == platform.machine() else f"{arch}-linux-gnu-g++"


def _require_compiler(arch: str) -> str:
    cxx = _compiler(arch)
    if not shutil.which(cxx):
        package = "g++" if arch == platform.machine() else f"g++-{arch.replace('_', '-')}-linux-gnu"
        raise ToolchainMissing(f"{cxx} not found: the {arch} C++ runner needs it (apt-get install {package})")
    return cxx


def _compiler_version(arch: str) -> str:
    done = subprocess.run([_compiler(arch), "--version"], check=False, capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.stdout else ""


def _compile(arch: str, sdk: Path, out: Path, scratch: Path) -> None:
    """Each source to an object, side by side (two processes), then one link. -O1: the work is
    in the wheel's libraries; the runner's own code is argument parsing and file I/O, and
    -O2 cost half again as long to compile for no difference in the timings."""
    cxx = _require_compiler(arch)
    include = sdk / "include"
    flags = [cxx, "-std=c++17", "-O1", "-pipe", "-w", *(f"-D{d}" for d in _defines(sdk)),
             f'-DEDGEPACK_EXECUTORCH_VERSION="{executorch_version()}"', f'-DEDGEPACK_RUNNER_SOURCE="{source_hash()}"',
             "-isystem", str(include), "-isystem", str(include / "executorch/runtime/core/portable_type/c10")]
    objects = [scratch / f"{Path(source).stem}.o" for source in SOURCES]
    procs = [subprocess.Popen(flags + ["-c", str(SOURCE_DIR / source), "-o", str(obj)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for source, obj in zip(SOURCES, objects)]
    failed = []
    try:
        for source, proc in zip(SOURCES, procs):
            text, _ = proc.communicate(timeout=BUILD_TIMEOUT_S)
            if proc.returncode != 0:
                failed.append(f"{source} {describe_exit(proc.returncode)}:\n{tail(text, 12)}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    if failed:
        raise DeviceError(f"{RUNTIME}: compiling the runner for {arch}: " + "\n".join(failed))
    link = [cxx, *map(str, objects), "-o", str(out), "-L", str(sdk / "lib"), "-Wl,--no-as-needed",
            *(f"-l{lib[3:-3]}" for lib in LIBRARIES), "-Wl,--as-needed", "-Wl,--enable-new-dtags,-rpath,$ORIGIN"]
    done = run_subprocess(link, timeout_s=BUILD_TIMEOUT_S, what=cxx)
    if done.returncode != 0:
        raise DeviceError(f"{RUNTIME}: linking the runner for {arch} {describe_exit(done.returncode)}:\n"
                          f"{tail(done.stderr or done.stdout, 12)}")


# --------------------------------------------------------------------------- the probe


def probe(argv: list[str], env: dict[str, str] | None = None, timeout_s: float = 300) -> dict:
    """Run the built runner (`argv` starts it: an emulator prefix and the executable) on a tiny
    .pte whose two ops, aten::mul and aten::add, run on the portable kernels: {"ok": True,
    "version": ...} when it gives y = 2x + 1, else {"ok": False, "reason": ...}."""
    from .qemu_probes import PROBE_PTE

    with tempfile.TemporaryDirectory(prefix="edgepack-probe-") as tmp:
        tmp = Path(tmp)
        (tmp / "probe.pte").write_bytes(PROBE_PTE)
        x = np.array([[1, 2, 3, 4]], np.float32)
        np.savez(tmp / "x.npz", x=x)
        done = run_subprocess(argv + ["--model", str(tmp / "probe.pte"), "--inputs", str(tmp / "x.npz"),
                                      "--warmup", "0", "--runs", "1", "--profile-runs", "0",
                                      "--out-json", str(tmp / "r.json"), "--out-outputs", str(tmp / "y.npz")],
                              env=env, cwd=tmp, timeout_s=timeout_s, what=EXECUTABLE)
        if done.returncode != 0:
            last = (tail(done.stderr, 1) or tail(done.stdout, 1))[:240]
            said = f"its probe {describe_exit(done.returncode)}" + (f": {last}" if last else "")
            return {"ok": False, "reason": said}
        with np.load(tmp / "y.npz") as z:
            y = z[z.files[0]]
        if not np.allclose(y.reshape(1, 4), 2 * x + 1):
            return {"ok": False, "reason": f"its probe gave a wrong answer: {y.tolist()}"}
        result = json.loads((tmp / "r.json").read_text(encoding="utf-8"))
        return {"ok": True, "version": result["runtime"]["version"]}
