"""Shared fixtures: a tiny real model file, its weights and a learnable data set; a signing
key pair; one real (signed) bundle of the tiny model, built once per test run (shared by
the xdist workers)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

# The suite runs on two pytest-xdist workers (pyproject's addopts), one per core: one
# intra-op thread each, for them and the builds they start, or torch's OpenMP threads
# spin against each other (seen: distillation ten times slower on a busy 2-core box).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# The longest files first (measured with --durations), so that the two workers finish
# together instead of one starting a ten-minute file while the other has nothing left.
SLOW_FIRST = ("tests/pipeline/test_default_build.py", "tests/zoo/test_zoo_builds.py", "tests/pipeline/test_target_all.py",
              "tests/search/test_search.py", "tests/pipeline/test_build.py", "tests/zoo/test_zoo_compression.py", "tests/pipeline/test_cache.py",
              "tests/pipeline/test_build_devices.py", "tests/bench/test_bench_command.py")


def pytest_collection_modifyitems(items) -> None:
    def rank(item) -> int:
        return next((i for i, f in enumerate(SLOW_FIRST) if item.nodeid.startswith(f)), len(SLOW_FIRST))

    items.sort(key=rank)           # stable: each file's own order is kept

TINY_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self, classes: int = 4):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(16, classes)

        def forward(self, x):
            return self.fc(self.features(x))

    def make_model():
        return Tiny()

    def make_other():
        return Tiny(classes=7)

    def make_gelu():
        """The same weights with exact GELU (ONNX Erf), which TFLite builtins cannot run below opset 20."""
        model = Tiny()
        model.features[2] = nn.GELU()
        return model
''')


def make_tiny_data(n: int = 160, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A learnable data set: each class is a bright square in its own quadrant, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, 0, r * 4:(r + 1) * 4, col * 4:(col + 1) * 4] += 2.0
    return x, y.astype(np.int64)


@pytest.fixture(scope="session")
def tiny_data():
    """make_tiny_data(n, classes, seed) -> (x, y): more samples of the tiny problem."""
    return make_tiny_data


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A model file, trained weights and an .npz, on disk as a user would give them."""
    import importlib.util

    import torch

    root = tmp_path_factory.mktemp("tiny")
    model_py = root / "tiny_net.py"
    model_py.write_text(TINY_MODEL)
    x, y = make_tiny_data()
    np.savez(root / "data.npz", x=x, y=y)
    spec = importlib.util.spec_from_file_location("tiny_net_fixture", model_py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = mod.make_model()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    torch.save(model.state_dict(), root / "weights.pt")
    return {"root": root, "model": model_py, "weights": root / "weights.pt", "data": root / "data.npz"}


def run_once(tmp_path_factory, name: str, make) -> Path:
    """A folder that `make(folder)` fills once per test run, whichever xdist worker asks
    first; the others wait for it (a file lock in the base temp folder the workers share)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent                       # pytest-of-<user>/pytest-N/, above every worker's own
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            if folder.exists():
                shutil.rmtree(folder)            # a worker that failed half-way
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


def _make_keys(folder: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    for prefix in ("", "other_"):
        key = ec.generate_private_key(ec.SECP256R1())
        (folder / f"{prefix}private.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (folder / f"{prefix}public.pem").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory) -> dict[str, Path]:
    """An EC P-256 key pair made for this run (keys are never committed), and a second one
    to stand for somebody else's key: private, public, other_private, other_public."""
    folder = run_once(tmp_path_factory, "signing-keys", _make_keys)
    return {f"{prefix}{kind}": folder / f"{prefix}{kind}.pem" for prefix in ("", "other_")
            for kind in ("private", "public")}


@pytest.fixture(scope="session")
def tiny_bundle(tiny, signing_keys, tmp_path_factory) -> dict[str, Path]:
    """One real tflite-int8 bundle of the tiny model (training stages off, few timed runs),
    signed by the build (--sign-key) with signing_keys' private key: zip, tree, out. Built
    once per run; a test that changes it works on a copy."""
    from edgepack.stages.base import all_stages

    def build(out: Path) -> None:
        training_off = [a for s in all_stages() if s.name in ("distill", "prune", "lowrank")
                        for a in ("--set", f"{s.name}.enabled=false")]
        res = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", "-t", "tflite-int8",
                              "--model", f"{tiny['model']}:make_model", "--weights", str(tiny["weights"]),
                              "--data", str(tiny["data"]), "--out", str(out), "--set", "validate.runs=5",
                              "--set", "quantize.calibration_samples=32", *training_off,
                              "--sign-key", str(signing_keys["private"])],
                             capture_output=True, text=True, timeout=900, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "signed: model.sig" in res.stdout, res.stdout

    out = run_once(tmp_path_factory, "tiny-bundle", build)
    return {"zip": out / "tiny_net-tflite-int8.zip", "tree": out / "tiny_net-tflite-int8", "out": out}


@pytest.fixture(scope="session")
def outlier_trained():
    """(model, splits): tests/zoo/outlier.py trained (~5 s) with its 1000x channel, once per session."""
    from tests.zoo import outlier

    return outlier.make_trained()


@pytest.fixture(scope="session")
def qemu_root() -> Path:
    """The aarch64 emulator's root, built once and cached ($EDGEPACK_QEMU_ROOT, else
    ~/.cache/edgepack/qemu-aarch64). Without qemu-user-static the emulator tests fail
    rather than skip: CI installs it (scripts/install-system-deps.sh)."""
    import shutil

    from edgepack.devices import load_device
    from edgepack.devices.qemu_setup import setup_qemu_root

    if not shutil.which("qemu-aarch64-static"):
        pytest.fail("qemu-aarch64-static is not installed: apt-get install qemu-user-static")
    device = load_device("qemu-aarch64")
    return setup_qemu_root(device.root_path(), runtimes=device.runtimes)
