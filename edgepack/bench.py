"""`edgepack bench`: run finished bundles on devices and compare them.

Each bundle is checked against its manifest, unpacked, and run on each device by the
same runner as `build`. Inputs for on-device accuracy: --data if given, else the
evaluation split the bundle's report records (re-made deterministically when that data
is on this machine), else the bundle's own reference.npz.
"""
from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bundle import inspect_bundle
from .errors import DeviceError, UsageError


@dataclass
class BundleUnderTest:
    path: Path
    manifest: dict[str, Any]
    report: dict[str, Any] | None
    root: Path                       # unpacked tree

    @property
    def label(self) -> str:
        return self.manifest.get("name", self.path.stem)

    @property
    def model(self) -> Path:
        return self.root / self.manifest["model"]


def open_bundle(path: Path, scratch: Path) -> BundleUnderTest:
    manifest, checks = inspect_bundle(path)
    bad = [f for f, ok in checks if not ok]
    if bad:
        raise UsageError(f"{path}: {', '.join(bad)} changed since the bundle was made (sha256 mismatch)")
    if path.is_dir():
        root = path
    else:
        with zipfile.ZipFile(path) as z:
            z.extractall(scratch)
        root = scratch / manifest["name"]
    report = json.loads((root / "report.json").read_text()) if (root / "report.json").exists() else None
    return BundleUnderTest(path, manifest, report, root)


def _to_layout(x: np.ndarray, layout: str | None) -> np.ndarray:
    if layout == "NHWC" and x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x


def bench_inputs(b: BundleUnderTest, data: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(x in the model's layout, y, where they came from)."""
    from .config import DataConfig
    from .inputs.data import load_data

    layout = b.manifest["inputs"][0].get("layout")
    source = data or (b.report or {}).get("data", {}).get("source")
    if source and Path(source).exists():
        cfg = DataConfig(**(b.report or {}).get("config", {}).get("data", {})) if not data else DataConfig()
        ds = load_data(source, cfg, calibration_samples=0)
        if ds.input_shape != tuple(b.manifest["inputs"][0]["shape"][1:]) and \
                _to_layout(ds.evaluation.x[:1], layout).shape[1:] != tuple(b.manifest["inputs"][0]["shape"][1:]):
            raise UsageError(f"{source}: samples of shape {ds.input_shape} do not fit {b.path}'s input "
                             f"{b.manifest['inputs'][0]['shape']}")
        return _to_layout(ds.evaluation.x, layout), ds.evaluation.y, f"{source} (evaluation split)"
    ref = b.root / "reference.npz"
    if not ref.exists():
        raise UsageError(f"{b.path}: no reference.npz and no --data to measure accuracy with")
    with np.load(ref) as z:
        return z["x"], z["y"], f"{b.path.name}: reference.npz"


def run_bench(bundles: list[Path], devices: list[str], *, data: str | None, warmup: int, runs: int,
              threads: int | None, log: Callable[[str], None] = print) -> dict[str, Any]:
    from .devices import load_device, run_on_device

    for d in devices:
        load_device(d)                       # unknown device: exit 2 before anything runs
    results: list[dict[str, Any]] = []
    opened = []
    with tempfile.TemporaryDirectory(prefix="edgepack-bench-") as tmp:
        tmp = Path(tmp)
        for i, path in enumerate(bundles):
            opened.append(open_bundle(Path(path), tmp / f"b{i}"))
        for i, b in enumerate(opened):
            x, y, source = bench_inputs(b, data)
            inputs = tmp / f"inputs-{i}.npz"
            np.savez(inputs, x=x.astype(np.float32))
            host_acc = None          # on-device accuracy is compared with the host's
            for dev in devices:
                log(f"{b.label} on {dev} …")
                row: dict[str, Any] = {"bundle": b.label, "target": b.manifest.get("target"), "device": dev,
                                       "inputs": source, "n_inputs": int(len(y))}
                try:
                    run = run_on_device(dev, b.model, inputs, warmup=warmup, runs=runs, threads=threads,
                                        workdir=tmp / f"run-{i}")
                except DeviceError as e:
                    row["error"] = str(e).splitlines()[0]
                    row["error_detail"] = str(e)
                    results.append(row)
                    log(f"  failed: {row['error']}")
                    continue
                r = run.result
                acc = float((run.outputs.reshape(len(y), -1).argmax(1) == y).mean() * 100)
                row.update({k: r.get(k) for k in ("arch", "cpu", "emulated", "runtime", "threads", "warmup", "runs",
                                                  "init_ms", "latency_ms", "samples_ms", "peak_rss_mb")})
                row["accuracy"] = acc
                if dev == "host":
                    host_acc = acc
                results.append(row)
                log(f"  p50 {r['latency_ms']['p50']:.3f} ms, accuracy {acc:.2f} %"
                    + (" (emulated)" if r.get("emulated") else ""))
            for row in results:
                if row["bundle"] == b.label and "accuracy" in row and host_acc is not None:
                    row["accuracy_vs_host_pp"] = round(row["accuracy"] - host_acc, 4)
        summary = [{"name": b.label, "path": str(b.path), "target": b.manifest.get("target"),
                         "format": b.manifest.get("format"), "scheme": b.manifest.get("scheme"),
                         "model_sha256": b.manifest["files"].get(b.manifest["model"]),
                    "size_bytes": b.model.stat().st_size} for b in opened]
    return {"bundles": summary, "results": results}
