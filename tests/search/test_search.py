"""`edgepack search` on the tiny model, on this process's executor: real builds through
the real converter and runtime, the front, the pick, the picked recipe as a project file
that rebuilds the same model, and bad search spaces refused before any trial runs."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack.cli import main
from edgepack.search.front import dominates

# Training stages off (the tiny model has no training split); the space: scheme, per-channel
# and I/O type, 8 recipes.
PROJECT = """
[distill]
enabled = false
[prune]
enabled = false
[lowrank]
enabled = false
[quantize]
calibration_samples = 32
[validate]
warmup_runs = 1
[search]
trials = 5
batch = 2
sampler = "random"
[search.fixed]
"validate.runs" = 5
"validate.profile_runs" = 0
[search.space]
"quantize.scheme" = ["int8", "none"]
"quantize.per_channel" = [true, false]
"quantize.io" = ["int8", "float32"]
"""


def search_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepack.cli", "search", *args], capture_output=True, text=True,
                          timeout=900)


def inputs(tiny: dict, project: Path) -> list[str]:
    return ["--model", f"{tiny['model']}:make_model", "--weights", str(tiny["weights"]), "--data", str(tiny["data"]),
            "--config", str(project)]


@pytest.fixture(scope="module")
def project(tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("search") / "edgepack.toml"
    path.write_text(PROJECT)
    return path


@pytest.fixture(scope="module")
def local_search(tiny, project, tmp_path_factory):
    out = tmp_path_factory.mktemp("search-local") / "out"
    res = search_cli("-t", "tflite-int8", *inputs(tiny, project), "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    return out, res, json.loads((out / "search.json").read_text())


def test_search_writes_every_trial_the_front_and_the_pick(local_search):
    out, res, doc = local_search
    trials = doc["trials"]
    assert [t["number"] for t in trials] == list(range(5))
    # Trial 0 is the profile's own recipe, and the only one marked as the default.
    assert trials[0]["params"] == {"quantize.scheme": "int8", "quantize.per_channel": True, "quantize.io": "int8"}
    assert doc["default"] == 0 and [t["is_default"] for t in trials] == [True] + [False] * 4
    for t in trials:
        assert f"trial {t['number']:>3}/5" in res.stdout           # a progress line per trial
        assert t["status"] == "built" and t["size_bytes"] > 0 and t["p50_ms"]["host"] > 0
        if t["repeat_of"] is None:
            assert Path(t["bundle"]).is_file() and t["stages"]["quantize"] in ("done", "cached")
        else:                                                       # a recipe asked twice is measured once
            first = trials[t["repeat_of"]]
            assert t["params"] == first["params"] and t["p50_ms"] == first["p50_ms"]
    # Shared stages come from the cache: the FP32 reference is converted once for all trials.
    assert sum(t["stages"]["reference"] == "done" for t in trials if t["repeat_of"] is None) == 1
    # The front: every feasible, distinct trial that no other beats on metric, size and p50.
    pool = [t for t in trials if t["feasible"] and t["repeat_of"] is None]

    def vec(t):
        return [-t["metric"], t["size_bytes"], t["p50_ms"]["host"]]

    expected = sorted(t["number"] for t in pool if not any(dominates(vec(o), vec(t)) for o in pool if o is not t))
    assert doc["front"] == expected and expected
    assert doc["pick"] in doc["front"] and doc["pick_by"] == "balanced"
    assert all(t["on_front"] == (t["number"] in expected) for t in trials)
    md = (out / "search.md").read_text()
    assert "Picked (balanced): trial" in md and "| trial | scheme | per_channel | io |" in md
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_picked_recipe_rebuilds_the_same_model(local_search, tmp_path):
    out, _, doc = local_search
    picked = next(t for t in doc["trials"] if t["number"] == doc["pick"])
    recipe = tomllib.loads((out / "edgepack.toml").read_text())
    assert recipe["quantize"]["scheme"] == picked["params"]["quantize.scheme"]
    assert Path(recipe["inputs"]["model"].rpartition(":")[0]).is_absolute()
    assert "search" not in recipe and recipe["distill"] == {"enabled": False}   # the search's own project file
    # Built alone from the written file (no --model, no --data), against the search's cache.
    res = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", "-t", "tflite-int8", "--config",
                          str(out / "edgepack.toml"), "--out", str(tmp_path / "b"), "--cache-dir",
                          str(out / ".edgepack-cache"), "--set", "validate.runs=5"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((tmp_path / "b" / "tiny_net-tflite-int8" / "report.json").read_text())
    assert report["artifact"]["sha256"] == picked["sha256"]
    assert {s["name"]: s["status"] for s in report["stages"]}["quantize"] == "cached"


def test_nothing_within_budget_exits_1_and_still_reports(tiny, project, local_search, tmp_path):
    out, _, _ = local_search
    res = search_cli("-t", "tflite-int8", *inputs(tiny, project), "--out", str(tmp_path / "s"), "--trials", "2",
                     "--max-size-kb", "0.01", "--cache-dir", str(out / ".edgepack-cache"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "no trial met the budget" in res.stderr
    doc = json.loads((tmp_path / "s" / "search.json").read_text())
    assert doc["pick"] is None and doc["front"] == []
    assert all(not t["feasible"] and "size over 0.01 KiB" in t["why_not"] for t in doc["trials"])
    assert not (tmp_path / "s" / "edgepack.toml").exists()
    assert "No trial met the budget" in (tmp_path / "s" / "search.md").read_text()


@pytest.mark.parametrize("line, message", [
    ('"quantize.nope" = [1, 2]', '[search.space] "quantize.nope": [quantize] has no key \'nope\''),
    ('"quantize.scheme" = ["int8", "int3"]', '[search.space] "quantize.scheme" = "int3"'),
    ('"inputs.model" = ["a.py:f"]', "'inputs' is not a section that makes the model"),
    ('"prune.ratio" = { low = 0.5, high = 0.1 }', "high (0.1) is below low (0.5)"),
    ('"validate.runs" = [5, 5]', "a choice is listed twice"),
])
def test_a_bad_search_space_is_refused_before_any_trial(tiny, tmp_path, line, message):
    project = tmp_path / "p.toml"
    project.write_text(PROJECT.split("[search.space]")[0] + "[search.space]\n" + line + "\n")
    res = CliRunner().invoke(main, ["search", "-t", "tflite-int8", *inputs(tiny, project), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert message in res.output and str(project) in res.output
    assert not (tmp_path / "o" / "trials").exists()


def test_a_scheme_the_target_cannot_run_is_refused(tiny, tmp_path):
    project = tmp_path / "p.toml"
    project.write_text(PROJECT.split("[search.space]")[0] + '[search.space]\n"quantize.scheme" = ["int8", "int4-weights"]\n')
    res = CliRunner().invoke(main, ["search", "-t", "executorch-arm", *inputs(tiny, project), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert "int4-weights" in res.output and "executorch-arm" in res.output
    assert not (tmp_path / "o").exists()


def test_executor_flags_need_ray(tiny, project, tmp_path):
    res = CliRunner().invoke(main, ["search", "-t", "tflite-int8", *inputs(tiny, project), "--out", str(tmp_path / "o"),
                                    "--address", "127.0.0.1:6379"])
    assert res.exit_code == 2 and "--executor ray" in res.output


def test_on_a_two_node_cluster_a_lost_worker_retries_and_the_trials_match(ray_cluster, tiny, project, local_search,
                                                                          tmp_path):
    """The same search on a real two-node Ray cluster (`ray start --head` + `ray start --address`),
    with the worker node killed while it runs a trial: the trial is retried on the head node,
    the search finishes, and every trial is the recipe, metric, size and model of the local run."""
    import psutil

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "edgepack.cli", "search", "-t", "tflite-int8",
                             *inputs(tiny, project), "--out", str(out), "--executor", "ray",
                             "--address", ray_cluster.address], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    killed = None
    deadline = time.monotonic() + 600
    while proc.poll() is None and killed is None and time.monotonic() < deadline:
        for p in ray_cluster.worker.processes():        # a task worker of the worker node, mid-trial
            try:
                if "_in_worker" in " ".join(p.cmdline()):
                    killed = p.pid
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    assert killed is not None, "no trial ran on the worker node"
    ray_cluster.kill_worker_node()
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout + stderr
    doc = json.loads((out / "search.json").read_text())
    assert doc["executor"]["kind"] == "ray" and doc["executor"]["nodes"] == 2 and doc["executor"]["nodes_at_end"] == 1
    assert all(t["status"] == "built" for t in doc["trials"])
    assert killed not in {t["pid"] for t in doc["trials"]}       # the killed attempt's trial finished elsewhere
    _, _, local = local_search

    def same(t):
        return t["number"], t["params"], t["metric"], t["size_bytes"], t["sha256"], t["repeat_of"]

    assert [same(t) for t in doc["trials"]] == [same(t) for t in local["trials"]]


def test_an_unreachable_cluster_exits_1_at_once(tiny, project, tmp_path):
    import socket

    with socket.socket() as s:                    # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    res = CliRunner().invoke(main, ["search", "-t", "tflite-int8", *inputs(tiny, project), "--out", str(tmp_path / "o"),
                                    "--executor", "ray", "--address", f"127.0.0.1:{port}"])
    assert res.exit_code == 1, res.output
    assert f"--address 127.0.0.1:{port}: cannot reach the Ray cluster" in res.output
    assert time.monotonic() - started < 60 and not (tmp_path / "o").exists()
