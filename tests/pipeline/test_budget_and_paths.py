"""A latency budget the bundle cannot meet: exit 1, bundle and report written, the report
says by how much. The same bundle carries no path of the machine that built it. And what
a build that a converter refuses leaves behind."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_build import edgepack, tiny_args      # its sibling: pytest puts this folder on sys.path

NAME = "tiny_net-tflite-int8"


@pytest.fixture(scope="module")
def over_budget(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("budget") / "out"
    res = edgepack(*tiny_args(tiny, out), "--set", "reference.enabled=false",
                   "--set", "validate.max_p50_ms=0.000001", check=False)
    return out, res


def test_over_the_latency_budget_exits_1_and_says_by_how_much(over_budget):
    out, res = over_budget
    assert res.returncode == 1, res.stdout + res.stderr
    assert "exceeds validate.max_p50_ms = 1e-06 ms by" in res.stderr
    assert (out / f"{NAME}.zip").is_file()
    r = json.loads((out / NAME / "report.json").read_text())
    assert not r["passed"] and r["failed_devices"] == ["host"]
    host = next(d for d in r["devices"] if d["name"] == "host")
    assert "exceeds validate.max_p50_ms" in host["gate_failed"]
    lat = r["latency"]
    assert lat["max_p50_ms"] == 1e-6 and not lat["passed"]
    row = lat["devices"][0]
    assert row["device"] == "host" and row["p50_ms"] == host["latency_ms"]["p50"]
    assert row["over_ms"] == pytest.approx(row["p50_ms"] - 1e-6, abs=1e-6) and row["over_ms"] > 0
    md = (out / NAME / "report.md").read_text()
    assert "## Latency budget" in md and f"| host | {row['p50_ms']:.3f} | 1e-06 | {row['over_ms']:.3f} | **over budget** |" in md


def test_the_bundle_holds_no_build_machine_path(over_budget, tiny, tmp_path_factory):
    out, _ = over_budget
    roots = {str(tmp_path_factory.getbasetemp()), str(tiny["root"]), str(out), str(Path.cwd()), str(Path.home())}
    texts = [p for p in (out / NAME).rglob("*") if p.suffix in (".json", ".md", ".txt")]
    assert {p.name for p in texts} >= {"manifest.json", "report.json", "report.md", "labels.txt"}
    for p in texts:
        text = p.read_text()
        for root in roots:
            assert root not in text, f"{p.name} holds {root}"
    r = json.loads((out / NAME / "report.json").read_text())
    assert r["data"]["source"] == "data.npz" and len(r["data"]["sha256"]) == 64
    assert r["model"]["spec"] == "tiny_net.py:make_model"
    prov = json.loads((out / NAME / "manifest.json").read_text())["provenance"]
    assert prov["data"] == "data.npz" and prov["data_sha256"] == r["data"]["sha256"]
    assert prov["model"] == "tiny_net.py:make_model" and prov["model_sha256"] == r["model"]["sha256"]


def test_a_converter_failure_leaves_only_complete_stages_and_the_other_bundles(tiny, tmp_path):
    """Exit 2 naming the op; the bundles already in --out (this target's and a sibling's)
    are byte for byte as they were, and the cache holds only complete stage folders."""
    out = tmp_path / "out"
    for name in (NAME, "tiny_net-openvino-cpu"):
        (out / name).mkdir(parents=True)
        (out / name / "manifest.json").write_text(f'{{"name": "{name}"}}\n')
        (out / f"{name}.zip").write_bytes(f"an earlier bundle of {name}".encode())
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    top = sorted(p.name for p in out.iterdir())
    args = tiny_args(tiny, out)
    args[args.index("--model") + 1] = f"{tiny['model']}:make_gelu"
    args += ["--set", 'quantize.routes=["onnx2tf"]']       # litert-torch would convert it
    res = edgepack(*args, check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Erf" in res.stderr and "Traceback" not in res.stderr
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
             if p.is_file() and ".edgepack-cache" not in p.parts}
    assert after == before
    assert sorted(p.name for p in out.iterdir()) == sorted([".edgepack-cache", *top])      # no staging, no log
    cache = out / ".edgepack-cache"
    for stage in (p for p in cache.iterdir() if p.name != ".locks"):      # .locks: empty lock files
        for entry in stage.iterdir():
            assert not entry.name.startswith(".tmp-"), f"half-written stage folder {entry}"
            if stage.name != "input":
                assert (entry / "result.json").is_file(), entry
