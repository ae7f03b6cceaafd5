"""The README's main command, as a newcomer types it: `edgepack build --target tflite-int8`
on the embedded default (distill + prune + int8), in a subprocess, from another working
directory with the default relative output folder."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def edgepack(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepack.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("default")
    res = edgepack(cwd, "build", "--target", "tflite-int8")
    assert res.returncode == 0, res.stdout + res.stderr
    return cwd, res


def test_default_build_passes_its_gates_and_is_many_times_smaller(default_build):
    cwd, _ = default_build
    tree = cwd / "out" / "digits-resnet-tflite-int8"
    r = json.loads((tree / "report.json").read_text())
    assert r["passed"] is True
    assert [s["name"] for s in r["stages"] if s["status"] == "done"] == \
        ["reference", "distill", "prune", "export", "quantize", "validate"]
    assert r["accuracy"]["drop_pp"] <= 1.0 and r["accuracy"]["max_drop_pp"] == 1.0
    # The student (width 0.5) pruned by 30 % and quantized to int8 against the FP32 teacher's
    # .tflite: the bar is 12x; measured 28x.
    assert r["ratios"]["size"] >= 12
    params = {s["name"]: s.get("params") for s in r["stages"]}
    assert params["prune"] < params["distill"] < params["reference"]
    assert (tree / "model.tflite").stat().st_size == r["artifact"]["size_bytes"]
    assert (cwd / "out" / "digits-resnet-tflite-int8.zip").is_file()
    # every Conv/Linear of the pruned student ranked by int8 sensitivity, cheaply (~1 s measured)
    sens = r["sensitivity"]
    assert len(sens) == 16 and {"stem.0", "fc"} <= {s["module_path"] for s in sens}
    assert all(s["sqnr_db"] > 20 for s in sens)           # no layer the default's int8 breaks
    assert r["sensitivity_info"]["seconds"] < 10
    assert r["recovery"]["met_by"] == "ptq"


def test_inspect_passes_on_the_default_bundle(default_build):
    cwd, _ = default_build
    res = edgepack(cwd, "inspect", "out/digits-resnet-tflite-int8.zip")
    assert res.returncode == 0, res.stderr
    manifest = json.loads((cwd / "out" / "digits-resnet-tflite-int8" / "manifest.json").read_text())
    assert f"all {len(manifest['files'])} files match their sha256" in res.stdout


def test_a_second_build_is_all_cached_but_the_device_measurements(default_build):
    cwd, _ = default_build
    res = edgepack(cwd, "build", "--target", "tflite-int8")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [ln.split() for ln in res.stdout.splitlines()]
    status = {p[1]: p[0] for p in lines if len(p) >= 2 and p[0] in ("done", "cached", "skipped")}
    assert status["lowrank"] == "skipped"
    assert status["validate"] == "done"         # device timings are taken afresh
    assert {k: v for k, v in status.items() if k not in ("lowrank", "validate")} == dict.fromkeys(
        ["reference", "distill", "prune", "export", "quantize"], "cached")
