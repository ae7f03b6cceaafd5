"""Builds of a tiny real model through the real converter and runtime: the bundle,
the cache, and what an interrupted build leaves behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgepack.stages.base import all_stages

# The tiny model has no training split: the stages that train are switched off here
# (they have their own tests).
TRAINING_STAGES = [s.name for s in all_stages() if s.name in ("distill", "prune", "lowrank")]
FAST = ["--set", "validate.runs=5", "--set", "validate.warmup_runs=1", "--set", "quantize.calibration_samples=32",
        *[a for name in TRAINING_STAGES for a in ("--set", f"{name}.enabled=false")]]


def edgepack(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgepack.cli", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def tiny_args(tiny: dict[str, Path], out: Path) -> list[str]:
    return ["build", "-t", "tflite-int8", "--model", f"{tiny['model']}:make_model", "--weights", str(tiny["weights"]),
            "--data", str(tiny["data"]), "--out", str(out), *FAST]


def statuses(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("done", "cached", "skipped"):
            out[parts[1]] = parts[0]
    return out


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "out"
    first = edgepack(*tiny_args(tiny, out))
    return out, first


def test_bundle_contents_and_manifest(built):
    out, first = built
    tree = out / "tiny_net-tflite-int8"
    names = {p.name for p in tree.iterdir()}
    assert {"model.tflite", "manifest.json", "report.json", "report.md", "labels.txt", "reference.npz"} <= names
    manifest = json.loads((tree / "manifest.json").read_text())
    assert manifest["schema"] == "edgepack.bundle/1"
    inp = manifest["inputs"][0]
    assert inp["dtype"] == "int8" and inp["scale"] > 0 and isinstance(inp["zero_point"], int)
    assert manifest["outputs"][0]["dtype"] == "int8"
    assert set(manifest["files"]) >= {"model.tflite", "report.json", "labels.txt", "reference.npz"}
    prov = manifest["provenance"]
    assert prov["profile"] == "tflite-int8.toml" and len(prov["recipe_hash"]) == 64
    with zipfile.ZipFile(out / "tiny_net-tflite-int8.zip") as z:
        assert "tiny_net-tflite-int8/manifest.json" in z.namelist()
    assert edgepack("inspect", str(out / "tiny_net-tflite-int8.zip")).returncode == 0


def test_report_has_the_contract_fields(built):
    out, _ = built
    r = json.loads((out / "tiny_net-tflite-int8" / "report.json").read_text())
    assert r["schema"] == "edgepack.report/1"
    assert [s["name"] for s in r["stages"] if s["status"] != "skipped"] == ["reference", "export", "quantize", "validate"]
    host = next(d for d in r["devices"] if d["name"] == "host")
    assert len(host["samples_ms"]) == 5 and host["latency_ms"]["p50"] > 0 and host["peak_rss_mb"] > 0
    assert host["cpu"]["model"]
    assert r["reference"]["size_bytes"] > r["artifact"]["size_bytes"]
    assert r["ratios"]["size"] == pytest.approx(r["reference"]["size_bytes"] / r["artifact"]["size_bytes"], rel=1e-3)
    acc = r["accuracy"]
    assert acc["drop_pp"] == pytest.approx(acc["teacher"] - acc["value"])
    assert 0 <= acc["top1_agreement"] <= 100 and -1 <= acc["cosine_similarity"] <= 1
    assert acc["passed"] == (acc["drop_pp"] <= acc["max_drop_pp"])
    # per-layer sensitivity of every Conv/Linear, by module path, worst first
    sens = r["sensitivity"]
    assert sorted(s["module_path"] for s in sens) == ["fc", "features.0", "features.3"]
    assert [s["sqnr_db"] for s in sens] == sorted(s["sqnr_db"] for s in sens) and sens[0]["rank"] == 1
    assert r["sensitivity_info"]["samples"] == 32 and r["sensitivity_info"]["scheme"] == "int8"
    assert r["recovery"]["met_by"] == "ptq" and [s["step"] for s in r["recovery"]["steps"]] == ["ptq"]
    md = (out / "tiny_net-tflite-int8" / "report.md").read_text()
    assert "## Per-layer sensitivity" in md and "| 1 | `" in md
    assert (out / "tiny_net-tflite-int8" / "sensitivity.png").is_file()


def test_reference_npz_reproduces_with_the_runtime(built):
    from ai_edge_litert.interpreter import Interpreter

    tree = built[0] / "tiny_net-tflite-int8"
    ref = np.load(tree / "reference.npz")
    it = Interpreter(model_path=str(tree / "model.tflite"))
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    s, z = i["quantization"]
    os_, oz = o["quantization"]
    for x, expected in zip(ref["x"], ref["expected_outputs"]):
        q = np.clip(np.round(x / s + z), -128, 127).astype(np.int8)[None]
        it.set_tensor(i["index"], q)
        it.invoke()
        got = (it.get_tensor(o["index"]).astype(np.float32) - oz) * os_
        np.testing.assert_allclose(got[0], expected, atol=1e-6)


def test_second_build_is_all_cached_and_a_quantize_change_reruns_only_what_follows(built, tiny):
    out, _ = built
    again = edgepack(*tiny_args(tiny, out))
    st = statuses(again.stdout)
    assert st.pop("validate") == "done", again.stdout          # device timings are taken afresh
    assert st and all(v in ("cached", "skipped") for v in st.values()), again.stdout
    changed = edgepack(*tiny_args(tiny, out), "--set", "quantize.per_channel=false")
    st = statuses(changed.stdout)
    assert st["reference"] == "cached" and st["export"] == "cached"
    assert st["quantize"] == "done" and st["validate"] == "done"
    fresh = edgepack(*tiny_args(tiny, out), "--no-cache")
    assert all(v in ("done", "skipped") for v in statuses(fresh.stdout).values())


def test_dry_run_prints_plan_and_writes_nothing(tiny, tmp_path):
    out = tmp_path / "out"
    res = edgepack(*tiny_args(tiny, out), "--dry-run")
    assert "stage plan:" in res.stdout and "quantize" in res.stdout
    assert '"scheme": "int8"' in res.stdout
    assert not out.exists()


def test_gate_failure_exits_1_with_bundle_and_reason(tiny, tmp_path):
    """Calibration data a thousand times smaller than the real inputs: the int8 ranges
    clip everything the model sees at evaluation, and accuracy collapses."""
    x, y = np.load(tiny["data"])["x"], np.load(tiny["data"])["y"]
    data = tmp_path / "skewed"
    data.mkdir()
    np.savez(data / "calibration.npz", x=x[:80] * 1e-3, y=y[:80])
    np.savez(data / "evaluation.npz", x=x[80:], y=y[80:])
    out = tmp_path / "out"
    args = tiny_args(tiny, out)
    args[args.index("--data") + 1] = str(data)
    res = edgepack(*args, check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "worse, more than validate.max_accuracy_drop_pp = 1" in res.stderr
    r = json.loads((out / "tiny_net-tflite-int8" / "report.json").read_text())
    assert not r["passed"] and r["accuracy"]["drop_pp"] > 1.0
    assert "FAILED" in (out / "tiny_net-tflite-int8" / "report.md").read_text()
    assert (out / "tiny_net-tflite-int8.zip").exists()


def test_kill_9_mid_build_keeps_the_previous_bundle(tiny, tmp_path):
    out = tmp_path / "out"
    edgepack(*tiny_args(tiny, out))
    zip_path = out / "tiny_net-tflite-int8.zip"
    before = zip_path.read_bytes()
    tree_before = {p.name: p.read_bytes() for p in (out / "tiny_net-tflite-int8").iterdir()}
    proc = subprocess.Popen([sys.executable, "-m", "edgepack.cli", *tiny_args(tiny, out), "--no-cache"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:          # kill it while quantize is running
        if line.split()[:2] == ["done", "export"]:
            time.sleep(0.5)
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert zip_path.read_bytes() == before
    assert {p.name: p.read_bytes() for p in (out / "tiny_net-tflite-int8").iterdir()} == tree_before
    # and the next build completes
    assert edgepack(*tiny_args(tiny, out)).returncode == 0
