"""What distillation and pruning buy on top of quantization, on the embedded default.

    .venv/bin/python benchmarks/bench_compression.py [--out DIR] [--runs N] [--set k=v ...]

Builds, in one run and one build folder (so the teacher's reference and the distilled
student are computed once and reused from the stage cache):

    default    KD + structured prune + PTQ (the tflite-int8 profile as shipped; timed from
               an empty cache: this is the default build's time)
    kd         KD student + PTQ (prune off)
    ptq        PTQ-only of the teacher (distill and prune off)
    sparse     KD + unstructured prune + PTQ
    ablation   the student trained with labels only (alpha = 0), by KD, and by KD + feature
               hints, the same epochs, no pruning, for three seeds each

and the FP32 teacher's reference .tflite that every build converts and times alike. For
each: params, MACs, bundle model size, its compressed (zip) size, accuracy, drop, host p50
latency and the ratios against the reference. Prints a table and writes
benchmarks/results/compression.json with the CPU model and ISA flags.
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

from edgepack.build import BuildRequest, prepare, run_build

HERE = Path(__file__).resolve().parent
HINTS = ('distill.hints=[{teacher = "layer2", student = "layer2", loss = "mse"}, '
         '{teacher = "layer3", student = "layer3", loss = "mse"}]')

BUILDS: list[tuple[str, str, list[str]]] = [
    ("default", "KD + structured prune + PTQ", []),
    ("kd", "KD student + PTQ", ["prune.enabled=false"]),
    ("ptq", "PTQ-only teacher", ["distill.enabled=false", "prune.enabled=false"]),
    ("sparse", "KD + unstructured prune + PTQ", ["prune.method='unstructured'", "prune.sparsity=0.6"]),
]
ABLATION: list[tuple[str, str, list[str]]] = [
    ("labels", "labels only (alpha = 0)", ["prune.enabled=false", "distill.alpha=0.0"]),
    ("kd", "KD (profile alpha, T)", ["prune.enabled=false"]),
    ("kd+hints", "KD + hints layer2, layer3 (MSE)", ["prune.enabled=false", HINTS, "distill.hint_weight=1.0"]),
]


def zip_size(path: Path) -> int:
    """The file's size inside a zip (deflate, level 9): what a download or an OTA update costs."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.write(path, path.name)
    return len(buf.getvalue())


def build(out: Path, overrides: list[str]) -> tuple[dict[str, Any], Any, float]:
    t0 = time.perf_counter()
    prepared = prepare(BuildRequest(target="tflite-int8", out=out, overrides=tuple(overrides)), log=lambda _: None)
    outcome = run_build(prepared)
    return outcome.report, (prepared, outcome), time.perf_counter() - t0


def row(name: str, what: str, r: dict[str, Any], prepared: Any, outcome: Any, seconds: float) -> dict[str, Any]:
    export = next(s for s in r["stages"] if s["name"] == "export")
    host = next(d for d in r["devices"] if d["name"] == "host")
    model = outcome.tree / r["artifact"]["path"]
    ref_host = next(d for d in r["reference"]["devices"] if d["name"] == "host")
    student = next((s for s in r["stages"] if s["name"] in ("prune", "distill") and s["status"] != "skipped"), None)
    prune = next(s for s in r["stages"] if s["name"] == "prune")
    return {
        "build": name, "what": what, "params": export["params"], "macs": export["macs"],
        "size_bytes": r["artifact"]["size_bytes"], "zip_bytes": zip_size(model),
        "accuracy": r["accuracy"]["value"], "drop_pp": r["accuracy"]["drop_pp"],
        "fp32_accuracy": student and student["accuracy"], "p50_ms": host["latency_ms"]["p50"],
        "size_ratio": r["reference"]["size_bytes"] / r["artifact"]["size_bytes"],
        "latency_ratio": ref_host["latency_ms"]["p50"] / host["latency_ms"]["p50"],
        "sparsity": (prune.get("details") or {}).get("sparsity"), "passed": r["passed"],
        "build_seconds": round(seconds, 1),
        "stages": {s["name"]: {"status": s["status"], "seconds": s["seconds"]} for s in r["stages"]},
    }


def reference_row(r: dict[str, Any], prepared: Any) -> dict[str, Any]:
    ref_file = prepared.ctx.results["reference"].extras["reference"].path
    ref_host = next(d for d in r["reference"]["devices"] if d["name"] == "host")
    return {"build": "reference", "what": "FP32 teacher (.tflite)", "params": r["teacher"]["params"],
            "macs": r["teacher"]["macs"], "size_bytes": r["reference"]["size_bytes"], "zip_bytes": zip_size(ref_file),
            "accuracy": ref_host["accuracy"], "drop_pp": round(r["accuracy"]["teacher"] - ref_host["accuracy"], 4),
            "fp32_accuracy": r["accuracy"]["teacher"], "p50_ms": ref_host["latency_ms"]["p50"],
            "size_ratio": 1.0, "latency_ratio": 1.0}


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'model':<32}{'params':>10}{'MMACs':>8}{'KiB':>9}{'zip KiB':>9}{'acc %':>8}{'drop':>7}"
          f"{'p50 ms':>9}{'size x':>8}{'speed x':>9}")
    for x in rows:
        print(f"{x['what']:<32}{x['params']:>10,}{x['macs'] / 1e6:>8.1f}{x['size_bytes'] / 1024:>9.1f}"
              f"{x['zip_bytes'] / 1024:>9.1f}{x['accuracy']:>8.2f}{x['drop_pp']:>7.2f}{x['p50_ms']:>9.4f}"
              f"{x['size_ratio']:>8.1f}{x['latency_ratio']:>9.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "out" / "compression")
    ap.add_argument("--runs", type=int, default=300, help="timed runs per model and build (validate.runs)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="applied to every build")
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--seeds", default="0,1,2", help="distill.seed values of the ablation (accuracy on 450 "
                    "samples moves by a sample or two with the seed)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "compression.json")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)          # the default build is timed from an empty cache
    common = [f"validate.runs={args.runs}", *args.overrides]

    rows, reports = [], {}
    for name, what, extra in BUILDS:
        r, (prepared, outcome), seconds = build(args.out, [*common, *extra])
        if not rows:
            rows.append(reference_row(r, prepared))
        rows.append(row(name, what, r, prepared, outcome, seconds))
        reports[name] = r
        print(f"built {name:<8} in {seconds:6.1f} s  ({what})", flush=True)
    host = next(d for d in reports["default"]["devices"] if d["name"] == "host")
    by = {x["build"]: x for x in rows}
    vs_ptq = {"size": by["ptq"]["size_bytes"] / by["default"]["size_bytes"],
              "latency_p50": by["ptq"]["p50_ms"] / by["default"]["p50_ms"]}

    ablation = []
    seeds = [int(s) for s in args.seeds.split(",")] if not args.no_ablation else []
    for name, what, extra in ABLATION if seeds else []:
        runs = []
        for seed in seeds:
            r, _, _ = build(args.out, [*common, *extra, f"distill.seed={seed}"])
            distill = next(s for s in r["stages"] if s["name"] == "distill")
            runs.append({"seed": seed, "fp32_accuracy": distill["accuracy"], "int8_accuracy": r["accuracy"]["value"],
                         "drop_pp": r["accuracy"]["drop_pp"], "best_epoch": distill["details"]["best_epoch"],
                         "train_seconds": distill["details"]["train_seconds"]})
        ablation.append({"student": name, "what": what, "epochs": distill["details"]["epochs"], "runs": runs,
                         **{f"{k}_{f.__name__}": f(x[k] for x in runs)
                            for k in ("fp32_accuracy", "int8_accuracy") for f in (min, max)},
                         "int8_accuracy_mean": sum(x["int8_accuracy"] for x in runs) / len(runs)})
        print(f"ablation {name:<9} seeds {args.seeds}: int8 " + ", ".join(f"{x['int8_accuracy']:.2f}" for x in runs),
              flush=True)

    print(f"\nCPU: {host['cpu']['model']}  ISA: {' '.join(host['cpu'].get('isa', []))}  "
          f"threads: {host['threads']}  runs: {host['runs']}")
    print(f"teacher (torch FP32) accuracy on {reports['default']['data']['evaluation_samples']} evaluation "
          f"samples: {reports['default']['accuracy']['teacher']:.2f} %\n")
    print_table(rows)
    d = by["default"]
    print(f"\ndefault build: {d['build_seconds']:.1f} s from an empty cache; vs FP32 reference "
          f"{d['size_ratio']:.1f}x smaller, {d['latency_ratio']:.1f}x faster (p50); vs PTQ-only "
          f"{vs_ptq['size']:.1f}x smaller, {vs_ptq['latency_p50']:.1f}x faster; drop {d['drop_pp']:.2f} pp")
    if ablation:
        print(f"\nablation (width-{reports['default']['config']['distill']['student_width']} student, "
              f"{ablation[0]['epochs']} epochs, no pruning, seeds {args.seeds}):")
        print(f"{'student trained with':<34}{'FP32 acc % (min-max)':>22}{'int8 acc % (min-max)':>22}{'int8 mean':>11}")
        for a in ablation:
            print(f"{a['what']:<34}{a['fp32_accuracy_min']:>14.2f} - {a['fp32_accuracy_max']:<5.2f}"
                  f"{a['int8_accuracy_min']:>14.2f} - {a['int8_accuracy_max']:<5.2f}{a['int8_accuracy_mean']:>11.2f}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "compression", "machine": platform.machine(), "cpu": host["cpu"], "threads": host["threads"],
        "runs": host["runs"], "teacher_accuracy": reports["default"]["accuracy"]["teacher"],
        "evaluation_samples": reports["default"]["data"]["evaluation_samples"],
        "default_build_seconds": d["build_seconds"], "rows": rows,
        "default_vs_reference": {"size": d["size_ratio"], "latency_p50": d["latency_ratio"]},
        "default_vs_ptq": vs_ptq, "ablation": ablation,
        "profile": {k: reports["default"]["config"][k] for k in ("distill", "prune", "lowrank")}}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
