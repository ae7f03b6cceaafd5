"""The embedded default through every target, in one run, each against its own FP32 reference.

    .venv/bin/python benchmarks/bench_targets.py [--out DIR] [--runs N] [--target NAME ...] [--set k=v ...]

One build folder for all targets: distill and prune run once (the profiles share those
sections) and every target reuses them from the stage cache. For each target: the FP32
teacher converted by that target with quantization off (the reference), and the bundle
(KD student, pruned, quantized by the target's own quantizer); size, accuracy on the
evaluation split, drop against the torch FP32 teacher, host p50 latency (1 thread) and
the ratios reference / bundle. Timings compare only within a target's two rows, and
only within this run. Prints a table and writes benchmarks/results/targets.json with the
CPU model and ISA flags.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from edgepack.build import BuildRequest, prepare, run_build
from edgepack.targets.base import expand_targets

HERE = Path(__file__).resolve().parent


def host_row(devices: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in devices if d["name"] == "host")


def target_rows(r: dict[str, Any], seconds: float) -> list[dict[str, Any]]:
    ref, host = host_row(r["reference"]["devices"]), host_row(r["devices"])
    teacher = r["accuracy"]["teacher"]
    common = {"target": r["target"], "format": r["artifact"]["format"]}
    return [
        {**common, "model": "FP32 reference", "scheme": "none", "size_bytes": r["reference"]["size_bytes"],
         "accuracy": ref["accuracy"], "drop_pp": round(teacher - ref["accuracy"], 4),
         "p50_ms": ref["latency_ms"]["p50"], "init_ms": ref["init_ms"]},
        {**common, "model": "bundle", "scheme": r["artifact"]["scheme"], "size_bytes": r["artifact"]["size_bytes"],
         "accuracy": host["accuracy"], "drop_pp": r["accuracy"]["drop_pp"], "p50_ms": host["latency_ms"]["p50"],
         "init_ms": host["init_ms"], "size_ratio": r["ratios"]["size"],
         "latency_ratio": r["ratios"]["latency_p50"].get("host"), "passed": r["passed"],
         "build_seconds": round(seconds, 1), "notes": [n for n in r["notes"] if not n.startswith(("distill", "prune"))]},
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "out" / "default")
    ap.add_argument("--runs", type=int, default=300, help="timed runs per model (validate.runs)")
    ap.add_argument("--target", dest="targets", action="append", default=[], help="default: all")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="applied to every build")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "targets.json")
    args = ap.parse_args()

    rows, cpu, teacher = [], None, None
    for name in expand_targets(args.targets or ["all"]):
        t0 = time.perf_counter()
        prepared = prepare(BuildRequest(target=name, out=args.out,
                                        overrides=(f"validate.runs={args.runs}", *args.overrides)), log=lambda _: None)
        r = run_build(prepared).report
        seconds = time.perf_counter() - t0
        rows += target_rows(r, seconds)
        cpu, teacher = host_row(r["devices"])["cpu"], r["accuracy"]["teacher"]
        print(f"built {name:<15} in {seconds:6.1f} s", flush=True)

    print(f"\nCPU: {cpu['model']}  ISA: {' '.join(cpu.get('isa', []))}  threads: 1  runs: {args.runs}")
    print(f"teacher (torch FP32) accuracy on the evaluation split: {teacher:.2f} %\n")
    print(f"{'target':<16}{'model':<16}{'scheme':<8}{'KiB':>9}{'acc %':>8}{'drop':>7}{'p50 ms':>9}"
          f"{'size x':>8}{'speed x':>9}")
    for x in rows:
        ratios = (f"{x['size_ratio']:>8.1f}{x['latency_ratio']:>9.1f}" if "size_ratio" in x else f"{'1.0':>8}{'1.0':>9}")
        print(f"{x['target']:<16}{x['model']:<16}{x['scheme']:<8}{x['size_bytes'] / 1024:>9.1f}{x['accuracy']:>8.2f}"
              f"{x['drop_pp']:>7.2f}{x['p50_ms']:>9.4f}{ratios}")
    for x in rows:
        for note in x.get("notes", []):
            print(f"  {x['target']}: {note}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"benchmark": "targets", "machine": platform.machine(), "cpu": cpu,
                                     "threads": 1, "runs": args.runs, "teacher_accuracy": teacher, "rows": rows},
                                    indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
