"""`edgepack search` on Ray with one worker, then two: the same trials, the same front, and
how the wall time scales.

    .venv/bin/python benchmarks/bench_search.py [--out DIR] [--trials N] [--target T] [--cluster] [--set k=v ...]

Each configuration is a fresh search (its own --out and stage cache, so nothing is shared
between them) of the embedded default model with the random sampler: its trials do not
depend on measured latencies, so every configuration asks for the same recipes and only
the wall time may differ. Configurations:
  ray-1    `--executor ray --workers 1`: a local Ray with one CPU
  ray-2    `--executor ray --workers 2`: a local Ray with two CPUs
  cluster  (--cluster) a two-node Ray cluster on loopback, `ray start --head` plus one
           `ray start --address` worker, one CPU each, joined with --address
Prints the table and writes benchmarks/results/search.json, with the CPU model and ISA
flags. Compare wall times only within one run: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))           # tests.search.ray_cluster

from edgepack.devices.runner import cpu_info  # noqa: E402


def search(out: Path, trials: int, target: str, overrides: list[str], executor: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "edgepack.cli", "search", "-t", target, "--device", "host", "--trials", str(trials),
           "--sampler", "random", "--out", str(out), *[a for o in overrides for a in ("--set", o)], *executor]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out.parent / f"{out.name}.log").write_text(res.stdout + res.stderr)
    if res.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    doc = json.loads((out / "search.json").read_text())
    doc["process_wall_s"] = round(wall, 1)
    return doc


def recipe_rows(doc: dict[str, Any]) -> list[tuple]:
    """What must not depend on the executor: each trial's recipe, metric, size and model hash."""
    return [(t["number"], json.dumps(t["params"], sort_keys=True), t.get("metric"), t.get("size_bytes"),
             t.get("sha256")) for t in doc["trials"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "out" / "search")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--target", default="tflite-int8")
    ap.add_argument("--cluster", action="store_true", help="also run on a two-node Ray cluster on loopback")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, Any]] = {}
    for name, workers in (("ray-1", 1), ("ray-2", 2)):
        print(f"{name}: searching ...", flush=True)
        runs[name] = search(args.out / name, args.trials, args.target, args.overrides,
                            ["--executor", "ray", "--workers", str(workers)])
    if args.cluster:
        from tests.search.ray_cluster import RayCluster

        print("cluster: starting two nodes, then searching ...", flush=True)
        with RayCluster(head_cpus=1, worker_cpus=1) as cluster:
            runs["cluster"] = search(args.out / "cluster", args.trials, args.target, args.overrides,
                                     ["--executor", "ray", "--address", cluster.address])

    base = runs["ray-1"]
    rows = []
    for name, doc in runs.items():
        cached = sum(s == "cached" for t in doc["trials"] if t.get("stages") for s in t["stages"].values())
        stages = sum(len(t["stages"]) for t in doc["trials"] if t.get("stages"))
        rows.append({"config": name, "workers": doc["executor"]["workers"], "nodes": doc["executor"].get("nodes", 1),
                     "wall_s": doc["wall_s"], "speedup_vs_ray_1": round(base["wall_s"] / doc["wall_s"], 2),
                     "same_trials_as_ray_1": recipe_rows(doc) == recipe_rows(base),
                     "front": doc["front"], "same_front_as_ray_1": doc["front"] == base["front"], "pick": doc["pick"],
                     "stages_cached": f"{cached}/{stages}",
                     "trial_seconds_median": sorted(t["seconds"] for t in doc["trials"] if t.get("seconds"))[
                         len(doc["trials"]) // 2] if doc["trials"] else None})
    cpu = cpu_info()
    print(f"\n{args.target}, {args.trials} trials (random sampler, seed 0), the default model; "
          f"CPU: {cpu['model']}  ISA: {' '.join(cpu.get('isa', []))}  ({platform.machine()})")
    print(f"{'config':<9} {'workers':>7} {'nodes':>5} {'wall s':>8} {'speed-up':>8}  {'same trials':<11} "
          f"{'same front':<10} front")
    for r in rows:
        print(f"{r['config']:<9} {r['workers']:>7} {r['nodes']:>5} {r['wall_s']:>8.1f} {r['speedup_vs_ray_1']:>7.2f}x  "
              f"{str(r['same_trials_as_ray_1']):<11} {str(r['same_front_as_ray_1']):<10} {r['front']}")
    print("\nper trial (ray-1 / ray-2):")
    other = runs["ray-2"]
    for a, b in zip(base["trials"], other["trials"]):
        p50a, p50b = a.get("p50_ms", {}).get("host"), b.get("p50_ms", {}).get("host")
        print(f"  {a['number']:>3} {json.dumps(a['params'])[:90]:<90} {a.get('metric')!s:>8} "
              f"{(a.get('size_bytes') or 0) / 1024:8.1f} KiB  p50 {p50a} / {p50b} ms")
    result = {"target": args.target, "trials": args.trials, "sampler": "random", "seed": 0, "cpu": cpu,
              "machine": platform.machine(), "rows": rows,
              "trials_by_config": {k: [{kk: t.get(kk) for kk in ("number", "params", "metric", "size_bytes",
                                                                   "p50_ms", "feasible", "on_front", "node", "pid",
                                                                   "seconds", "stages")} for t in d["trials"]]
                                   for k, d in runs.items()}}
    path = HERE / "results" / "search.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
