"""The embedded default's FP32 reference and bundle, per target, on the host and under the
aarch64 emulator, in one run.

    .venv/bin/python benchmarks/bench_devices.py [--out DIR] [--runs N] [--device NAME ...] [--target NAME ...]

Each target is built once with `validate.devices` set to the devices asked for (default:
host and qemu-aarch64; run `edgepack device setup qemu-aarch64` first), so both the bundle
and the reference run through the same device runner on every device: on-device
accuracy on the whole evaluation split, then warm-up and timed runs. Emulated timings
(qemu) are comparable only with each other, never with the host's or a real board's; a
target whose runtime does not run under the emulator is listed with the reason. Prints a
table (with each bundle's self-check against the host's outputs, and the five slowest
operators where the runtime profiles them: OpenVINO's counters, LiteRT's profiler,
ExecuTorch's ETDump from the C++ runner) and writes benchmarks/results/devices.json.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

from edgepack.build import BuildRequest, prepare, run_build
from edgepack.targets.base import expand_targets

HERE = Path(__file__).resolve().parent


def device_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for model, devices in (("FP32 reference", r["reference"]["devices"]), ("bundle", r["devices"])):
        for d in devices:
            row = {"target": r["target"], "model": model, "device": d["name"],
                   "scheme": "none" if model != "bundle" else r["artifact"]["scheme"]}
            if d.get("error"):
                row["error"] = d["error"].splitlines()[0]
            else:
                row.update(arch=d.get("arch"), emulated=d.get("emulated"), cpu=d.get("cpu"), runtime=d.get("runtime"),
                           accuracy=d["accuracy"], p50_ms=d["latency_ms"]["p50"], p90_ms=d["latency_ms"]["p90"],
                           init_ms=d["init_ms"], peak_rss_mb=d.get("peak_rss_mb"), runs=d.get("runs"),
                           self_check=d.get("self_check"),
                           top_ops=[{k: o[k] for k in ("name", "type", "ms")}
                                    for o in ((d.get("profile") or {}).get("ops") or [])[:5]],
                           method_ms=(d.get("profile") or {}).get("method_ms"))
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "out" / "default")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per model and device (validate.runs)")
    ap.add_argument("--device", dest="devices", action="append", default=[])
    ap.add_argument("--target", dest="targets", action="append", default=[], help="default: all")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "devices.json")
    args = ap.parse_args()
    devices = args.devices or ["host", "qemu-aarch64"]

    rows = []
    for name in expand_targets(args.targets or ["all"]):
        prepared = prepare(BuildRequest(target=name, out=args.out, devices=tuple(devices),
                                        overrides=(f"validate.runs={args.runs}", "validate.warmup_runs=10")),
                           log=lambda _: None)
        r = run_build(prepared).report
        rows += device_rows(r)
        print(f"built {name}: passed={r['passed']}", flush=True)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"benchmark": "devices", "machine": platform.machine(), "devices": devices,
                                     "runs": args.runs, "rows": rows}, indent=2) + "\n")
    print()
    cpus = {x["device"]: (x["arch"], x["cpu"]) for x in rows if x.get("cpu")}   # the report keeps it per bundle row
    for name, (arch, cpu) in cpus.items():
        print(f"{name:<14} {arch:<8} {cpu['model']}  ISA: {' '.join(cpu.get('isa', []))}")
    print(f"\n{'target':<16}{'model':<16}{'device':<14}{'emulated':>9}{'acc %':>8}{'init ms':>9}{'p50 ms':>10}"
          f"{'p90 ms':>10}{'RSS MB':>8}  self-check")
    for x in rows:
        head = f"{x['target']:<16}{x['model']:<16}{x['device']:<14}"
        if "error" in x:
            print(f"{head}  does not run: {x['error'][:110]}")
            continue
        print(f"{head}{'EMULATED' if x['emulated'] else 'no':>9}{x['accuracy']:>8.2f}{x['init_ms']:>9.1f}"
              f"{x['p50_ms']:>10.3f}{x['p90_ms']:>10.3f}{x['peak_rss_mb'] or 0:>8.1f}  {x.get('self_check') or ''}")
    profiled = [x for x in rows if x.get("top_ops")]
    for x in profiled:
        print(f"\nslowest operators: {x['target']} {x['model']} on {x['device']}"
              + (" (emulated)" if x.get("emulated") else ""))
        for o in x["top_ops"]:
            print(f"  {o['ms']:>9.4f} ms  {o['type'][:28]:<28} {o['name'][:70]}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
