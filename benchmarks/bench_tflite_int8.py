"""Build the embedded default for tflite-int8 and compare the int8 bundle with the FP32
reference (.tflite of the teacher), both timed on the host in the same run.

    .venv/bin/python benchmarks/bench_tflite_int8.py [--out DIR] [--runs N] [--set k=v ...]

Prints a table and writes benchmarks/results/tflite_int8.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from edgepack.build import BuildRequest, prepare, run_build

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "out" / "tflite-int8")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--json", type=Path, default=HERE / "results" / "tflite_int8.json")
    args = ap.parse_args()

    overrides = [f"validate.runs={args.runs}", *args.overrides]
    t0 = time.perf_counter()
    prepared = prepare(BuildRequest(target="tflite-int8", out=args.out, overrides=tuple(overrides)))
    outcome = run_build(prepared, use_cache=False)
    seconds = time.perf_counter() - t0
    r = outcome.report
    host = next(d for d in r["devices"] if d["name"] == "host")
    ref_host = next(d for d in r["reference"]["devices"] if d["name"] == "host")
    rows = [
        ("FP32 reference (.tflite)", r["reference"]["size_bytes"], ref_host["accuracy"],
         r["accuracy"]["teacher"] - ref_host["accuracy"], ref_host["latency_ms"]["p50"]),
        (f"{r['artifact']['scheme']} bundle", r["artifact"]["size_bytes"], host["accuracy"],
         r["accuracy"]["drop_pp"], host["latency_ms"]["p50"]),
    ]
    print(f"CPU: {host['cpu']['model']}  ISA: {' '.join(host['cpu'].get('isa', []))}  threads: {host['threads']}  "
          f"runs: {host['runs']}")
    print(f"teacher (torch FP32) accuracy on {r['data']['evaluation_samples']} evaluation samples: "
          f"{r['accuracy']['teacher']:.2f} %")
    print(f"{'model':<26}{'size KiB':>11}{'acc %':>8}{'drop pp':>9}{'p50 ms':>9}")
    for name, size, acc, drop, p50 in rows:
        print(f"{name:<26}{size / 1024:>11.1f}{acc:>8.2f}{drop:>9.2f}{p50:>9.3f}")
    ratios = {"size": r["ratios"]["size"], "latency_p50": r["ratios"]["latency_p50"]["host"]}
    print(f"ratios (reference / bundle): size {ratios['size']:.2f}x, p50 latency {ratios['latency_p50']:.2f}x; "
          f"build {seconds:.1f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "tflite_int8", "machine": platform.machine(), "cpu": host["cpu"],
        "build_seconds": round(seconds, 1), "teacher_accuracy": r["accuracy"]["teacher"],
        "rows": [dict(zip(("model", "size_bytes", "accuracy", "drop_pp", "p50_ms"), row)) for row in rows],
        "ratios": ratios, "stages": r["stages"], "passed": r["passed"]}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
