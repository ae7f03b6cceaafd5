"""One build for every target (`-t all`): three bundles and a comparison report; and the
self-check on each: a bundle whose file was changed after it was measured fails on every
device that runs it, even when its manifest hashes were re-signed to match."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_build import FAST, edgepack      # its sibling: pytest puts this folder on sys.path

TARGETS = {"tflite-int8": "model.tflite", "openvino-cpu": "model.bin", "executorch-arm": "model.pte"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepack.cli", *args], capture_output=True, text=True, timeout=900)


# -- one weight, changed in place, per format --------------------------------------------


def _largest_tflite_buffer(data: bytes) -> tuple[int, int, str]:
    """(offset in the file, size, dtype) of the largest constant tensor's data."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    best = None
    for t in range(graph.TensorsLength()):
        tensor = graph.Tensors(t)
        buf = model.Buffers(tensor.Buffer())
        if buf is None:
            continue
        if buf.DataLength():
            raw = buf.DataAsNumpy()
            offset = raw.__array_interface__["data"][0] - np.frombuffer(data, np.uint8).__array_interface__["data"][0]
            size = raw.size
        elif buf.Offset():                        # large models keep buffers after the flatbuffer
            offset, size = buf.Offset(), buf.Size()
        else:
            continue
        if best is None or size > best[1]:
            best = (offset, size, names[tensor.Type()].lower())
    return best


def _largest_ir_const(xml: str) -> tuple[int, int, str]:
    consts = re.findall(r'<layer [^>]*type="Const"[^>]*>\s*<data ([^/]*)/>', xml)
    best = None
    for attrs in consts:
        a = dict(re.findall(r'(\w+)="([^"]*)"', attrs))
        if best is None or int(a["size"]) > best[1]:
            best = (int(a["offset"]), int(a["size"]), a["element_type"])
    return best


def _largest_pte_weights(data: bytes) -> tuple[int, int, str]:
    """The largest blob of named data (XNNPACK weights) or delegate payload in a .pte."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(data)
    blobs = [bytes(b) for b in (getattr(pte, "named_data", None) and pte.named_data.buffers or [])]
    blobs = [getattr(b, "buffer", b) for b in blobs] or [bytes(d.data) for d in pte.program.backend_delegate_data]
    blob = max(blobs, key=len)
    offset = data.find(blob)
    assert offset >= 0 and data.find(blob, offset + 1) < 0, "the weights blob is not found once in the .pte"
    # A weights blob of int8 values: change one in the middle of it.
    return offset + len(blob) // 2, 1, "int8"


def corrupt_one_weight(tree: Path, model_file: str) -> str:
    """Negate the largest-magnitude value of the largest weight tensor in place, then write
    the new sha256 into manifest.json: only the numbers differ. Returns what changed."""
    path = tree / model_file
    data = bytearray(path.read_bytes())
    if model_file.endswith(".tflite"):
        offset, size, dtype = _largest_tflite_buffer(bytes(data))
    elif model_file.endswith(".bin"):
        offset, size, dtype = _largest_ir_const((tree / "model.xml").read_text())
    else:
        offset, size, dtype = _largest_pte_weights(bytes(data))
    np_dtype = {"int8": np.int8, "i8": np.int8, "u8": np.uint8, "uint8": np.uint8, "float32": np.float32,
                "f32": np.float32, "f16": np.float16, "float16": np.float16, "int32": np.int32, "i32": np.int32}[dtype]
    values = np.frombuffer(bytes(data[offset:offset + size]), np_dtype).copy()
    i = int(np.abs(values.astype(np.float64)).argmax())
    before = values[i]
    values[i] = -values[i] if values[i] != 0 else np_dtype(50)
    if np_dtype is np.uint8:
        values[i] = 255 - before
    data[offset:offset + size] = values.tobytes()
    path.write_bytes(bytes(data))
    manifest = json.loads((tree / "manifest.json").read_text())
    manifest["files"][model_file] = hashlib.sha256(bytes(data)).hexdigest()
    (tree / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return f"{model_file}: {dtype} weight {i} of {size // np.dtype(np_dtype).itemsize}: {before} -> {values[i]}"


@pytest.fixture(scope="module")
def tiny_all(tiny, tiny_data, tmp_path_factory) -> tuple[Path, object]:
    """`edgepack build -t all --executor ray` of the tiny model, distilled (a stage the three
    targets share) on a training split: (out folder, the finished process)."""
    root = tmp_path_factory.mktemp("all")
    x, y = tiny_data(320, seed=1)
    np.savez(root / "train.npz", x=x, y=y)
    distill_on = [a for pair in zip(FAST[::2], FAST[1::2]) if pair[1] != "distill.enabled=false" for a in pair]
    res = edgepack("build", "-t", "all", "--model", f"{tiny['model']}:make_model", "--weights", str(tiny["weights"]),
                   "--data", str(tiny["data"]), "--train-data", str(root / "train.npz"), "--out", str(root / "out"),
                   *distill_on, "--set", "distill.epochs=5", "--set", "distill.student_width=1.0",
                   "--executor", "ray", "--workers", "2", check=False)
    return root / "out", res


def test_ray_builds_the_targets_concurrently_and_distills_once(tiny_all):
    out, res = tiny_all
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 targets on ray (2 workers)" in res.stdout
    distill = {}
    for target in TARGETS:
        report = json.loads((out / f"tiny_net-{target}" / "report.json").read_text())
        distill[target] = {s["name"]: s for s in report["stages"]}["distill"]["status"]
    # The shared stage is made by one build; the others wait for it and read it from the cache.
    assert sorted(distill.values()) == ["cached", "cached", "done"], distill
    # Each target ran as a Ray task in a worker process: two workers, so two processes at least.
    pids = set(re.findall(r"passed \[[^:\]]+:(\d+), \d+ s\]", res.stdout))
    assert len(pids) >= 2, res.stdout


def test_target_all_writes_three_bundles_and_a_comparison(tiny_all):
    out, res = tiny_all
    assert res.returncode == 0, res.stdout + res.stderr
    for target, model in (("tflite-int8", "model.tflite"), ("openvino-cpu", "model.xml"),
                          ("executorch-arm", "model.pte")):
        assert (out / f"tiny_net-{target}.zip").is_file()
        manifest = json.loads((out / f"tiny_net-{target}" / "manifest.json").read_text())
        assert manifest["target"] == target and manifest["model"] == model
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["schema"] == "edgepack.comparison/1" and doc["exit_code"] == 0
    rows = {r["target"]: r for r in doc["targets"]}
    assert set(rows) == {"tflite-int8", "openvino-cpu", "executorch-arm"}
    for r in rows.values():
        assert r["status"] == "passed" and r["scheme"] == "int8" and r["p50_ms"] > 0
        # (no size ratio asserted: on a 1.5 K-parameter model the quantization metadata outweighs the weights)
        assert r["reference"]["size_bytes"] > 0 and r["reference"]["p50_ms"] > 0
    # The profile's accuracy control ran on the labeled calibration split (never the evaluation split).
    assert any(n.startswith("NNCF accuracy control on ") for n in rows["openvino-cpu"]["notes"])
    ov = json.loads((out / "tiny_net-openvino-cpu" / "report.json").read_text())
    control = next(s for s in ov["stages"] if s["name"] == "quantize")["details"]["accuracy_control_data"]
    assert control["disjoint_from"] == ["the calibration draw", "the evaluation split"] and control["samples"] > 0
    md = (out / "comparison.md").read_text()
    assert "| executorch-arm | passed |" in md and "comparison.png" in md
    assert (out / "comparison.png").stat().st_size > 0


@pytest.fixture(scope="module")
def bundles(tiny_all) -> dict[str, Path]:
    out, res = tiny_all
    assert res.returncode == 0, res.stdout + res.stderr
    return {t: out / f"tiny_net-{t}" for t in TARGETS}


def test_every_build_records_its_self_check_tolerance(bundles):
    for target, tree in bundles.items():
        manifest = json.loads((tree / "manifest.json").read_text())
        check = manifest["self_check"]
        assert set(check) == {"rtol", "atol", "int8_steps", "across", "reference_run"}, target
        report = json.loads((tree / "report.json").read_text())
        host = next(d for d in report["devices"] if d["name"] == "host")
        assert host["self_check"] == "reference"            # its outputs are reference.npz's
        assert check["reference_run"] == {"runtime": host["runtime"]["name"], "version": host["runtime"]["version"],
                                          "arch": host["arch"]}


@pytest.mark.parametrize("target", list(TARGETS))
def test_verify_passes_an_untouched_bundle_and_fails_one_changed_weight(bundles, target, tmp_path):
    res = cli("verify", str(bundles[target]), "--device", "host", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["passed"] and doc["devices"][0]["self_check"] == "pass"
    assert doc["devices"][0]["detail"]["worst"]["max_abs_error"] == 0      # the same file on the same runtime
    assert doc["devices"][0]["detail"]["tolerance"] == "same runtime"

    tree = tmp_path / bundles[target].name
    shutil.copytree(bundles[target], tree)
    what = corrupt_one_weight(tree, TARGETS[target])
    assert cli("inspect", str(tree)).returncode == 0, "the re-signed hashes should match"
    res = cli("verify", str(tree), "--device", "host", "--json")
    assert res.returncode == 1, f"{what}\n{res.stdout}\n{res.stderr}"
    doc = json.loads(res.stdout)
    row = doc["devices"][0]
    assert row["self_check"] == "fail", what
    worst = row["detail"]["worst"]
    assert worst["max_abs_error"] > worst["allowed"] and worst["mismatched"] > 0
    assert f"self-check fail (worst {worst['output']}: max abs error" in res.stderr


def test_verify_refuses_a_changed_file_before_running_anything(bundles, tmp_path):
    tree = tmp_path / "b"
    shutil.copytree(bundles["tflite-int8"], tree)
    corrupt_one_weight(tree, "model.tflite")
    manifest = json.loads((tree / "manifest.json").read_text())
    manifest["files"]["model.tflite"] = "0" * 64                 # hashes not re-signed
    (tree / "manifest.json").write_text(json.dumps(manifest))
    res = cli("verify", str(tree), "--device", "host")
    assert res.returncode == 2 and "model.tflite" in res.stderr, res.stderr


def test_bench_fails_a_device_whose_self_check_fails(bundles, tmp_path):
    tree = tmp_path / bundles["openvino-cpu"].name
    shutil.copytree(bundles["openvino-cpu"], tree)
    corrupt_one_weight(tree, "model.bin")
    out = tmp_path / "bench"
    res = cli("bench", str(bundles["openvino-cpu"]), str(tree), "--device", "host", "--out", str(out), "--runs", "3")
    assert res.returncode == 1, res.stdout + res.stderr
    doc = json.loads((out / "bench.json").read_text())
    good, bad = doc["results"]
    assert good["self_check"] == "pass" and bad["self_check"] == "fail"
    assert doc["failed"] == [f"{bad['bundle']} @ host"]
    md = (out / "bench.md").read_text()
    assert "**FAIL**" in md
    # OpenVINO's performance counters: the slowest operators, with a chart
    assert good["profile"]["source"] == "openvino-perf-counters" and good["profile"]["ops"]
    assert "### Slowest operators" in md and any(p.name.startswith("ops-") for p in out.iterdir())
