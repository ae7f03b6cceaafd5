"""The test zoo (tests/zoo: a MobileNet-style classifier, a text encoder on int64 ids, a 1-D
audio CNN, a two-output detector, a U-Net segmenter, a ViT) through every target, in one run.

    .venv/bin/python benchmarks/bench_zoo.py [--out DIR] [--runs N] [--model NAME ...] [--target NAME ...]
                                             [--set k=v ...]

Each model is trained briefly on its generated data (seeded, tests/zoo/train.py), then built
for each target with the quantization only (distill and prune off: the zoo models are already
tiny; bench_compression.py measures those stages), against the FP32 teacher converted by the
same target. Per model x target: the route taken (and the routes that failed), the task's
metric for the bundle and the teacher, size and host p50 latency ratios (FP32 reference /
bundle, 1 thread), and the build's seconds. Timings compare only within a row, and only
within this run. Prints a table and writes benchmarks/results/zoo.json with the CPU model
and ISA flags.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))      # tests.zoo

from edgepack.build import BuildRequest, prepare, run_build  # noqa: E402
from edgepack.errors import EdgepackError  # noqa: E402

MODELS = ("mobilenet", "text_encoder", "audio", "detector", "segmenter", "vit")
TARGETS = ("tflite-int8", "openvino-cpu", "executorch-arm")


def zoo_files(name: str, root: Path) -> dict[str, Any]:
    import torch

    from tests.zoo import data, train

    folder = root / "zoo" / name
    folder.mkdir(parents=True, exist_ok=True)
    splits = data.make_splits(name)
    files = {"model": f"{HERE.parent / 'tests' / 'zoo' / 'models.py'}:make_{name}", "weights": None,
             "data": data.write_npz(folder / "data.npz", splits["data"]),
             "metric": f"{HERE.parent / 'tests' / 'zoo' / 'metrics.py'}:box_iou" if name == "detector" else None}
    if name != "text_encoder":                # untrained: the agreement task checks it against itself
        weights = folder / "weights.pt"
        if not weights.exists():
            torch.save(train.train(name, splits, seconds_budget=600), weights)
        files["weights"] = weights
    return files


def row(name: str, r: dict[str, Any], seconds: float) -> dict[str, Any]:
    quantize = next(s for s in r["stages"] if s["name"] == "quantize")["details"]
    acc = r["accuracy"]
    host = next((d for d in r["devices"] if d["name"] == "host" and not d.get("error")), {})
    return {"model": name, "target": r["target"], "task": acc["task"], "metric": acc["metric"],
            "value": acc["value"], "teacher": acc.get("teacher"), "drop": acc.get("drop"),
            "cosine": acc.get("cosine_similarity"), "sqnr_db": acc.get("sqnr_db"), "passed": r["passed"],
            "route": quantize.get("route"),
            "routes_failed": [f"{t['route']}: {t.get('error') or t.get('why')}" for t in quantize.get("routes_tried", [])
                              if t["status"] == "failed" or not t.get("passed")],
            "size_bytes": r["artifact"]["size_bytes"], "size_ratio": r["ratios"].get("size"),
            "p50_ms": (host.get("latency_ms") or {}).get("p50"),
            "latency_ratio": r["ratios"].get("latency_p50", {}).get("host"), "build_seconds": round(seconds, 1),
            "cpu": host.get("cpu")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "out" / "zoo")
    ap.add_argument("--runs", type=int, default=200, help="timed runs per model (validate.runs)")
    ap.add_argument("--model", dest="models", action="append", default=[], help="default: all")
    ap.add_argument("--target", dest="targets", action="append", default=[], help="default: all")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="applied to every build")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "zoo.json")
    args = ap.parse_args()

    rows, cpu = [], None
    for name in args.models or MODELS:
        files = zoo_files(name, args.out)
        for target in args.targets or TARGETS:
            t0 = time.perf_counter()
            req = BuildRequest(target=target, model=files["model"], weights=files["weights"] and str(files["weights"]),
                               data=str(files["data"]), out=args.out / name / target, metric=files["metric"],
                               overrides=("distill.enabled=false", "prune.enabled=false",
                                          f"validate.runs={args.runs}", "validate.max_accuracy_drop_pp=2.5",
                                          *args.overrides))
            try:
                r = run_build(prepare(req, log=lambda _: None)).report
            except EdgepackError as e:
                rows.append({"model": name, "target": target, "error": str(e), "exit_code": e.exit_code})
                print(f"{name:<13} {target:<15} exit {e.exit_code}: {e}", flush=True)
                continue
            rows.append(row(name, r, time.perf_counter() - t0))
            cpu = rows[-1]["cpu"] or cpu
            print(f"{name:<13} {target:<15} built in {rows[-1]['build_seconds']:6.1f} s", flush=True)

    print(f"\nCPU: {cpu['model']}  ISA: {' '.join(cpu.get('isa', []))}  threads: 1  runs: {args.runs}\n")
    print(f"{'model':<13}{'target':<16}{'route':<14}{'metric':<16}{'bundle':>9}{'teacher':>9}{'cosine':>8}"
          f"{'size x':>8}{'p50 x':>7}{'p50 ms':>9}{'build s':>9}  gate")
    for x in rows:
        if "error" in x:
            print(f"{x['model']:<13}{x['target']:<16}exit {x['exit_code']}: {x['error'][:80]}")
            continue
        fmt = lambda v, f: "–" if v is None else f.format(v)  # noqa: E731
        print(f"{x['model']:<13}{x['target']:<16}{x['route'] or '':<14}{x['metric']:<16}{fmt(x['value'], '{:.2f}'):>9}"
              f"{fmt(x['teacher'], '{:.2f}'):>9}{fmt(x['cosine'], '{:.4f}'):>8}{fmt(x['size_ratio'], '{:.2f}'):>8}"
              f"{fmt(x['latency_ratio'], '{:.2f}'):>7}{fmt(x['p50_ms'], '{:.3f}'):>9}{x['build_seconds']:>9.1f}  "
              f"{'passed' if x['passed'] else 'FAILED'}")
    for x in rows:
        for failed in x.get("routes_failed", []):
            print(f"  {x['model']} {x['target']}: route {failed[:160]}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"benchmark": "zoo", "machine": platform.machine(), "cpu": cpu, "threads": 1,
                                     "runs": args.runs, "rows": [{k: v for k, v in x.items() if k != "cpu"}
                                                                 for x in rows]}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
