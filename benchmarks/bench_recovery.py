"""Recovery on a model int8 breaks, per target: the metric after each step, the layers kept
in float, and the step that met the budget.

    .venv/bin/python benchmarks/bench_recovery.py [--out DIR] [--target NAME ...] [--factor X] [--set k=v ...]

The model is tests/zoo/outlier.py: a depthwise network (30 K parameters, four classes, 100 %
in float) whose first depthwise layer has one channel --factor times wider than the median of
the others (1000 by default; the float function is unchanged). For each target, one build
with the profile's recovery order (ptq, advanced, mixed, qat; NNCF's accuracy control off for
openvino-cpu, so that its ptq is plain NNCF PTQ): each step runs only while the ones before
are over budget. Then every step the first build did not reach, alone after ptq
(recovery = ["ptq", step]), so that the table has each step's metric on every target.
Distill and prune are off (the model is the student); QAT trains it on 512 samples.
Then the check that the sensitivity simulation predicts each target's real int8 file: the
three layers it ranks worst, each kept in float alone (with the layers reading its output),
converted by the target and measured on the host.
Also block-wise int4 weights on a Linear-heavy MLP (the same data), for the targets that run
it: size against the FP32 reference. Timings are the host's p50 over 20 runs, 1 thread,
compare only within this run. Prints the table and writes benchmarks/results/recovery.json
with the CPU model and ISA flags.
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
from edgepack.targets.base import expand_targets  # noqa: E402

FAST = ("distill.enabled=false", "prune.enabled=false", "validate.runs=50", "validate.warmup_runs=5",
        "quantize.calibration_samples=128")
def build(target: str, files: dict[str, Any], out: Path, *overrides: str, model: str = "make_model") -> dict[str, Any]:
    t0 = time.perf_counter()
    req = BuildRequest(target=target, model=f"{files['model']}:{model}", weights=str(files["weights"]),
                       data=str(files["data"]), train_data=str(files["train"]), out=out, overrides=(*FAST, *overrides))
    report = run_build(prepare(req, log=lambda _: None)).report
    report["_seconds"] = round(time.perf_counter() - t0, 1)
    return report


def step_rows(target: str, r: dict[str, Any], run: str) -> list[dict[str, Any]]:
    rec = r.get("recovery") or {}
    rows = []
    for a in rec.get("attempts", []):
        rows.append({"target": target, "run": run, "step": a["step"], "route": a.get("route"),
                     "status": a["status"], "metric": a.get("metric"), "value": a.get("value"),
                     "drop": a.get("drop"), "size_bytes": a.get("size_bytes"), "p50_ms": a.get("p50_ms"),
                     "float_layers": a.get("float_layers", []), "error": a.get("error")})
    return rows


def real_check(target_name: str, files: dict[str, Any], out: Path, ranked: list[str]) -> list[dict[str, Any]]:
    """Each of `ranked` (module paths) kept in float alone, with its consumers, in the target's real
    int8 file: the top-1 accuracy the host runtime measures."""
    import numpy as np
    import torch

    from edgepack.config import QuantizeConfig
    from edgepack.harness import run_artifact
    from edgepack.layers import find_layers, float_region
    from edgepack.targets.base import QuantPlan, get_target
    from edgepack.torchmodel import save_module
    from tests.zoo import outlier

    model = outlier.make_model()
    model.load_state_dict(torch.load(files["weights"]))
    d = np.load(files["data"])
    cal, ev, y = {"input": d["x"][:128]}, {"input": d["x"][256:]}, d["y"][256:]
    target = get_target(target_name)
    layers = find_layers(model, {"input": d["x"][:1]})
    by_path = {lay.path: lay for lay in layers}
    exported = target.export(model, {"input": d["x"][:1]}, out / "export")
    module = save_module(model, out / "model.pt")
    config = (target.quantize_config or QuantizeConfig)(
        scheme="int8", calibration_samples=128, io="int8" if target_name == "tflite-int8" else "float32",
        **({"accuracy_control": False} if target_name == "openvino-cpu" else {}))
    rows = []
    for path in ranked:
        region = tuple(float_region(layers, [by_path[path]]))
        plan = QuantPlan("mixed", float_layers=region, layers=tuple(layers))
        route = target.routes(config)[0]
        art = target.convert(exported, config, cal, out / path, route=route, module=module, plan=plan)
        run = run_artifact(target, art, "host", ev, out / f"run-{path}", output_names=["output"])
        rows.append({"target": target_name, "layer": path, "in_float": [x.path for x in region],
                     "top1": round(float((run.outputs[0].argmax(1) == y).mean() * 100), 2)})
    return rows


def mlp_files(files: dict[str, Any], root: Path) -> dict[str, Any]:
    import numpy as np

    from tests.zoo import mlp

    root.mkdir(parents=True, exist_ok=True)
    d = np.load(files["train"])
    return {**files, "model": mlp.MODEL, "weights": mlp.write_trained(root / "mlp-weights.pt", d["x"], d["y"], steps=60)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "out" / "recovery")
    ap.add_argument("--target", dest="targets", action="append", default=[], help="default: all")
    ap.add_argument("--factor", type=float, default=None, help="outlier range, x the median channel's")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="applied to every build")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "recovery.json")
    args = ap.parse_args()

    from tests.zoo import outlier

    factor = args.factor or outlier.OUTLIER
    files = outlier.write_files(args.out / "inputs", factor=factor, n_train=512)
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    cpu = None
    for target in expand_targets(args.targets or ["all"]):
        extra = ["quantize.accuracy_control=false"] if target == "openvino-cpu" else []
        r = build(target, files, args.out / target / "recovery", *extra, *args.overrides)
        cpu = next(d for d in r["devices"] if d["name"] == "host")["cpu"]
        rec = r["recovery"]
        rows += step_rows(target, r, "recovery")
        summary.append({"target": target, "met_by": rec["met_by"], "kept": rec["kept"],
                        "kept_float_layers": rec["kept_float_layers"], "float_layer_costs": rec["float_layers"],
                        "passed": r["passed"], "accuracy": r["accuracy"]["value"], "drop_pp": r["accuracy"]["drop_pp"],
                        "teacher": r["accuracy"]["teacher"], "size_ratio": r["ratios"]["size"],
                        "sensitivity_top3": [(s["module_path"], s["sqnr_db"]) for s in r["sensitivity"][:3]],
                        "sensitivity_seconds": r["sensitivity_info"]["seconds"], "build_seconds": r["_seconds"]})
        print(f"built {target:<15} recovery in {r['_seconds']:6.1f} s: met by {rec['met_by']}", flush=True)
        reached = {a["step"] for a in rec["attempts"]}
        for step in rec["order"]:
            if step in reached or step == "ptq":
                continue
            alone = build(target, files, args.out / target / step, *extra, f'quantize.recovery=["ptq", "{step}"]',
                          *args.overrides)
            rows += [x for x in step_rows(target, alone, f"ptq+{step}") if x["step"] == step]
            print(f"built {target:<15} ptq+{step} in {alone['_seconds']:6.1f} s", flush=True)

    real = []
    for s in summary:
        ranked = [p for p, _ in s["sensitivity_top3"]]
        real += real_check(s["target"], files, args.out / s["target"] / "real-check", ranked)
        print(f"checked {s['target']:<15} the top 3 layers on its real int8 file", flush=True)

    int4 = []
    mlp = mlp_files(files, args.out / "inputs")
    for target in expand_targets(args.targets or ["all"]):
        if target == "executorch-arm":
            continue     # no int4-weights scheme (exit 2): XNNPACK's 4-bit kernels take linear layers only
        r = build(target, mlp, args.out / target / "int4", "quantize.scheme=int4-weights",
                  'quantize.recovery=["ptq"]', *args.overrides, model="make_mlp")
        q = next(s for s in r["stages"] if s["name"] == "quantize")["details"]
        int4.append({"target": target, "model": "MLP 768-256-128-4 (230 K params)",
                     "size_bytes": r["artifact"]["size_bytes"], "reference_size_bytes": r["reference"]["size_bytes"],
                     "size_ratio": r["ratios"]["size"], "accuracy": r["accuracy"]["value"],
                     "drop_pp": r["accuracy"]["drop_pp"], "route": q.get("route"),
                     "notes": [n for n in r["notes"] if "4-bit" in n or "int4" in n]})

    print(f"\nCPU: {cpu['model']}  ISA: {' '.join(cpu.get('isa', []))}  threads: 1")
    print(f"model: tests/zoo/outlier.py, one depthwise channel {factor:g}x the median; teacher "
          f"{summary[0]['teacher']:.2f} % top-1 on {256} evaluation samples\n")
    print(f"{'target':<16}{'run':<14}{'step':<24}{'status':<15}{'top-1 %':>8}{'drop':>8}{'KiB':>8}{'p50 ms':>9}"
          f"  in float")
    for x in rows:
        step = f"{x['step']} ({x['route']})" if x["route"] else x["step"]
        if x["error"]:
            print(f"{x['target']:<16}{x['run']:<14}{step:<24}failed: {x['error'][:70]}")
            continue
        print(f"{x['target']:<16}{x['run']:<14}{step:<24}{x['status']:<15}{x['value']:>8.2f}{x['drop']:>8.2f}"
              f"{x['size_bytes'] / 1024:>8.1f}{x['p50_ms']:>9.4f}  {', '.join(x['float_layers']) or '-'}")
    print()
    for s in summary:
        print(f"{s['target']:<16}met by {s['met_by'] or 'none'}: {s['accuracy']:.2f} % (drop {s['drop_pp']:.2f} pp)"
              f"{'; in float: ' + ', '.join(s['kept_float_layers']) if s['kept_float_layers'] else ''}; "
              f"sensitivity first: {s['sensitivity_top3'][0][0]} ({s['sensitivity_top3'][0][1]:.1f} dB, "
              f"{s['sensitivity_seconds']:.2f} s)")
    print("\nthe three layers the sensitivity ranks worst, each kept in float alone (with its consumers), "
          "in the real int8 file:")
    for x in real:
        print(f"{x['target']:<16}{x['layer']:<8} in float: {', '.join(x['in_float']):<18} top-1 {x['top1']:6.2f} %")
    print()
    for x in int4:
        print(f"{x['target']:<16}int4-weights on the MLP: {x['size_ratio']:.2f}x smaller than FP32, "
              f"{x['accuracy']:.2f} % (drop {x['drop_pp']:.2f} pp)")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"benchmark": "recovery", "machine": platform.machine(), "cpu": cpu,
                                     "threads": 1, "outlier_factor": factor, "steps": rows, "targets": summary,
                                     "real_check": real, "int4_weights": int4}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
