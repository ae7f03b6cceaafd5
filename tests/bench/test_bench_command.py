"""`edgepack bench` on a real bundle, on the host and under the ARM emulator."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepack.cli", *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    """The session's tiny tflite-int8 bundle (tests/conftest.py), shared with the shipping tests."""
    return tiny_bundle["zip"]


@pytest.mark.emulator
def test_bench_on_host_and_emulator_writes_three_reports(qemu_root, bundle, tmp_path):
    out = tmp_path / "bench"
    res = cli("bench", str(bundle), "--device", "host", "--device", "qemu-aarch64", "--out", str(out), "--runs", "10")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads((out / "bench.json").read_text())
    assert doc["schema"] == "edgepack.bench/1"
    rows = {r["device"]: r for r in doc["results"]}
    assert rows["host"]["emulated"] is False
    qemu = rows["qemu-aarch64"]
    assert qemu["arch"] == "aarch64" and qemu["emulated"] is True
    assert qemu["accuracy"] == rows["host"]["accuracy"] and qemu["accuracy_vs_host_pp"] == 0
    assert rows["host"]["sqnr_db"] >= 40      # the same file on the same runtime: the outputs the build saw
    assert rows["host"]["self_check"] == "pass" and qemu["self_check"] == "pass"
    assert len(qemu["samples_ms"]) == 10 and qemu["n_inputs"] == 16      # the bundle's reference.npz
    html = (out / "bench.html").read_text()
    assert "EMULATED" in html and "data:image/png;base64," in html
    assert "**yes**" in (out / "bench.md").read_text()


def test_a_failing_device_is_reported_and_the_others_measured(bundle, tmp_path):
    bad = tmp_path / "broken-board.toml"
    bad.write_text('name = "broken-board"\ntransport = "local"\npython = "/nonexistent/python3"\n')
    out = tmp_path / "bench"
    res = cli("bench", str(bundle), "--device", "host", "--device", str(bad), "--out", str(out), "--runs", "3")
    assert res.returncode == 1
    doc = json.loads((out / "bench.json").read_text())
    rows = {r["device"]: r for r in doc["results"]}
    assert "accuracy" in rows["host"]
    assert "error" in rows[str(bad)] and doc["failed"]
    assert "broken-board" in res.stderr


def test_a_changed_bundle_is_refused(bundle, tmp_path):
    import shutil
    import zipfile

    tree = tmp_path / "tree"
    with zipfile.ZipFile(bundle) as z:
        z.extractall(tree)
    root = next(tree.iterdir())
    (root / "labels.txt").write_text("tampered\n")
    res = cli("bench", str(root), "--device", "host", "--out", str(tmp_path / "b"))
    assert res.returncode == 2 and "labels.txt changed" in res.stderr
    shutil.rmtree(tree)


def test_unknown_device_exits_2_before_running(bundle, tmp_path):
    res = cli("bench", str(bundle), "--device", "no-such-board", "--out", str(tmp_path / "b"))
    assert res.returncode == 2 and "unknown device 'no-such-board'" in res.stderr
    assert not (tmp_path / "b").exists()
