"""`build` validates on every device it is given: the bundle and the FP32 reference run on
each; a device that cannot run fails alone (exit 1) and the others are still measured."""
from __future__ import annotations

import json

import pytest
from test_build import edgepack, tiny_args     # its sibling: pytest puts this folder on sys.path


def report(out):
    return json.loads((out / "tiny_net-tflite-int8" / "report.json").read_text())


@pytest.mark.emulator
def test_build_validates_on_the_emulator_with_the_hosts_accuracy(qemu_root, tiny, tmp_path):
    out = tmp_path / "out"
    edgepack(*tiny_args(tiny, out), "--device", "host", "--device", "qemu-aarch64")
    r = report(out)
    assert r["passed"] is True
    devices = {d["name"]: d for d in r["devices"]}
    arm = devices["qemu-aarch64"]
    assert (arm["arch"], arm["emulated"]) == ("aarch64", True)
    assert devices["host"]["emulated"] is False
    # int8 kernels on ARM and on x86 agree on every evaluation sample of this model
    assert arm["accuracy"] == devices["host"]["accuracy"] and arm["accuracy_vs_gate"] == 0
    # ... and the ARM run gives back the host's outputs on reference.npz (the self-check)
    assert devices["host"]["self_check"] == "reference" and arm["self_check"] == "pass"
    assert arm["self_check_detail"]["worst"]["max_abs_error"] <= arm["self_check_detail"]["worst"]["allowed"]
    ref = {d["name"]: d for d in r["reference"]["devices"]}
    assert ref["qemu-aarch64"]["emulated"] is True and ref["qemu-aarch64"]["latency_ms"]["p50"] > 0
    assert "qemu-aarch64" in r["ratios"]["latency_p50"]
    md = (out / "tiny_net-tflite-int8" / "report.md").read_text()
    assert "| qemu-aarch64 | bundle | aarch64 | yes |" in md
    assert "Emulated timings compare only with other emulated timings" in md


def test_a_broken_device_fails_alone_with_exit_1(tiny, tmp_path):
    bad = tmp_path / "broken-board.toml"
    bad.write_text('name = "broken-board"\ntransport = "local"\npython = "/nonexistent/python3"\n')
    out = tmp_path / "out"
    res = edgepack(*tiny_args(tiny, out), "--device", "host", "--device", str(bad), check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "broken-board" in res.stderr
    r = report(out)                       # built: the bundle and report say why
    assert r["passed"] is False and r["failed_devices"] == ["broken-board"]
    devices = {d["name"]: d for d in r["devices"]}
    assert devices["host"]["accuracy"] > 0 and devices["host"]["latency_ms"]["p50"] > 0
    assert "python3 not found" in devices["broken-board"]["error"]      # no build-machine paths in a bundle
    assert r["accuracy"]["passed"] is True
