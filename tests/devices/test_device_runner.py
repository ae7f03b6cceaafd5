"""runner.py on its own: the statistics, the JSON it writes, and how it fails."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgepack.devices import runner
from edgepack.devices.transport import RUNNER


@pytest.mark.parametrize("samples", [
    [1.0, 2.0, 3.0, 4.0, 10.0],
    [0.5],
    list(np.random.default_rng(3).gamma(2.0, 0.3, 997)),
])
def test_summarize_matches_numpy(samples):
    stats = runner.summarize(samples)
    a = np.asarray(samples)
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert stats[key] == pytest.approx(np.percentile(a, q))
    assert stats["mean"] == pytest.approx(a.mean())
    assert stats["std"] == pytest.approx(a.std())
    assert (stats["min"], stats["max"]) == (a.min(), a.max())


def test_summarize_known_values():
    # Linear interpolation: p90 of 1..5 and 10 lies between 4 (rank 3) and 10 (rank 4).
    stats = runner.summarize([1, 2, 3, 4, 10])
    assert stats["p50"] == 3.0
    assert stats["p90"] == pytest.approx(4 + 0.6 * 6)
    assert stats["p99"] == pytest.approx(4 + 0.96 * 6)


def test_summarize_needs_samples():
    with pytest.raises(runner.RunnerError):
        runner.summarize([])


def run_runner(tmp_path, *args):
    out_json, out_npy = tmp_path / "r.json", tmp_path / "o.npy"
    done = subprocess.run([sys.executable, str(RUNNER), *args, "--out-json", str(out_json),
                           "--out-outputs", str(out_npy)], capture_output=True, text=True, timeout=300)
    return done, out_json, out_npy


def test_runner_writes_the_schema(models, tmp_path):
    done, out_json, out_npy = run_runner(tmp_path, "--model", str(models.tflite_int8), "--inputs",
                                         str(models.inputs()), "--warmup", "2", "--runs", "7", "--threads", "1")
    assert done.returncode == 0, done.stderr
    r = json.loads(out_json.read_text())
    assert r["schema"] == "edgepack.runner/1"
    assert r["runtime"]["name"] in ("ai_edge_litert", "tflite_runtime") and r["runtime"]["version"]
    assert r["model"] == "int8.tflite"
    assert r["arch"] and isinstance(r["cpu"]["model"], str) and isinstance(r["cpu"]["isa"], list)
    assert (r["threads"], r["warmup"], r["runs"], r["n_inputs"]) == (1, 2, 7, 6)
    assert r["init_ms"] > 0 and r["peak_rss_mb"] > 10
    assert len(r["samples_ms"]) == 7
    assert set(r["latency_ms"]) == {"mean", "std", "p50", "p90", "p99", "min", "max"}
    assert r["latency_ms"] == pytest.approx(runner.summarize(r["samples_ms"]))
    assert r["io"]["inputs"][0]["dtype"] == "int8" and r["io"]["inputs"][0]["scale"] > 0
    with np.load(out_npy) as z:
        (outputs,) = [z[k] for k in z.files]
    assert outputs.shape == (6, 10) and outputs.dtype == np.float32


def test_runner_profiles_litert_ops(models, tmp_path):
    # LiteRT's profiler, through libLiteRt.so's C API: XNNPACK reports each op it runs.
    done, out_json, _ = run_runner(tmp_path, "--model", str(models.tflite_int8), "--inputs", str(models.inputs(n=1)),
                                   "--warmup", "1", "--runs", "3", "--profile", "30", "--runtimes", "ai_edge_litert")
    assert done.returncode == 0, done.stderr
    r = json.loads(out_json.read_text())
    p = r["profile"]
    assert p is not None, r["runtime"].get("profile_note")
    assert p["source"] == "litert-profiler" and p["runs"] == 30
    ops = p["ops"]
    assert [o["ms"] for o in ops] == sorted((o["ms"] for o in ops), reverse=True)
    assert all(o["type"] == "XNNPACK" and o["calls"] == 1 and o["ms"] >= 0 for o in ops)
    # The net is conv -> mean -> dense, all int8, all taken by XNNPACK; the conv does most work.
    kinds = [o["name"].split(" (")[0] for o in ops]
    assert {"Convolution", "Mean", "Fully Connected"} <= set(kinds), kinds
    assert kinds[0] == "Convolution" and ops[0]["ms"] > 0 and "QC8" in ops[0]["name"]


@pytest.mark.parametrize("args, message", [
    (["--inputs", "{bad_npz}"], "the model takes 1 inputs"),
    (["--runtimes", "openvino"], "no runtime for .tflite imports here"),
])
def test_runner_names_its_error(models, tmp_path, args, message):
    bad_npz = tmp_path / "bad.npz"
    np.savez(bad_npz, a=np.zeros((1, 8, 8, 3), np.float32), b=np.zeros((1, 8, 8, 3), np.float32))
    base = {"--model": str(models.tflite_float), "--inputs": str(models.inputs())}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value.format(bad_npz=bad_npz)
    done, out_json, _ = run_runner(tmp_path, *[x for kv in base.items() for x in kv])
    assert done.returncode == 3
    assert message in done.stderr
    assert not out_json.exists()


def test_cpu_info_names_this_cpu():
    cpu = runner.cpu_info()
    assert cpu["model"]
    assert all(isinstance(flag, str) for flag in cpu["isa"])
