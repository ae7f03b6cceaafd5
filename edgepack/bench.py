"""`edgepack bench`: run finished bundles on devices and compare them.

Each bundle is checked against its manifest, unpacked, and run on each device by the
same runner as `build`. Inputs: --data if given (its evaluation split), else the bundle's
own reference.npz, whose expected outputs (what the build's host run gave) every device's
outputs are compared with (SQNR, cosine); a classification bundle also gets top-1.
"""
from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bundle import intact_manifest
from .errors import DeviceError, UsageError
from .selfcheck import describe


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
    manifest = intact_manifest(path)
    if path.is_dir():
        root = path
    else:
        with zipfile.ZipFile(path) as z:
            z.extractall(scratch)
        root = scratch / manifest["name"]
    report = json.loads((root / "report.json").read_text()) if (root / "report.json").exists() else None
    return BundleUnderTest(path, manifest, report, root)


def bench_inputs(b: BundleUnderTest, data: str | None) -> tuple[dict[str, np.ndarray], Any, list | None, str]:
    """(inputs in the model's layout, named; targets; the outputs the build's host run gave
    on them, or None; where they came from)."""
    from .config import DataConfig
    from .inputs.data import load_data
    from .targets.base import to_layout

    specs = b.manifest["inputs"]
    if data:
        ds = load_data(data, DataConfig(allow_overlap=True), calibration_samples=0)
        given = ds.evaluation.x
        if len(given) != len(specs):
            raise UsageError(f"{data}: {len(given)} input(s) ({', '.join(given)}); {b.path} takes {len(specs)} "
                             f"({', '.join(s['name'] for s in specs)})")
        inputs = {}
        for spec, (name, x) in zip(specs, given.items()):
            x = to_layout(x, spec.get("layout"))
            if tuple(x.shape[1:]) != tuple(spec["shape"][1:]):
                raise UsageError(f"{data}: {name} samples of shape {tuple(x.shape[1:])} do not fit {b.path}'s "
                                 f"input {spec['name']} {spec['shape']}")
            inputs[spec["name"]] = x
        return inputs, ds.evaluation.y, None, f"{Path(data).name} (evaluation split)"
    ref = b.root / "reference.npz"
    if not ref.exists():
        raise UsageError(f"{b.path}: no reference.npz and no --data to measure on")
    inputs, expected, y = reference_io(b)
    return inputs, y, expected, f"{b.path.name}: reference.npz"


def reference_io(b: BundleUnderTest) -> tuple[dict[str, np.ndarray], list | None, Any]:
    """(inputs named as the model's, expected outputs in output order or None, targets) of
    the bundle's reference.npz."""
    from .arrays import as_arrays

    with np.load(b.root / "reference.npz") as z:
        files = list(z.files)
        inputs = {k[2:]: z[k] for k in files if k.startswith("x.")} or as_arrays(z["x"], b.manifest["inputs"][0]["name"])
        expected = [z[k] for k in files if k.startswith("expected.")] or (
            [z["expected_outputs"]] if "expected_outputs" in files else None)
        y = z["y"] if "y" in files else ({k[2:]: z[k] for k in files if k.startswith("y.")} or None)
    return inputs, expected, y


def self_check_on(b: BundleUnderTest, device: str, outputs: list[np.ndarray] | None, workdir: Path,
                  result: dict[str, Any] | None = None,
                  timeout_s: float | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The self-check of one device: its outputs on reference.npz's inputs (`outputs` and the
    runner's `result`, where the run was on them; else one untimed run here) against the
    expected ones. Returns the check and the runner's result."""
    from . import selfcheck
    from .devices import run_on_device

    def refused(why: str) -> tuple[dict[str, Any], None]:
        return {"self_check": "fail", "why": why, "worst": None, "outputs": []}, None

    if not (b.root / "reference.npz").exists():
        return refused(f"{b.path} has no reference.npz")
    inputs, expected, _ = reference_io(b)
    if expected is None:
        return refused(f"{b.path}: reference.npz holds no expected outputs")
    if outputs is None:
        path = workdir / "reference-inputs.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **inputs)
        names = [o["name"] for o in b.manifest.get("outputs", [])] or None
        run = run_on_device(device, b.model, path, warmup=0, runs=1, threads=None, workdir=workdir,
                            timeout_s=timeout_s, output_names=names)
        outputs, result = run.outputs, run.result
    tol, kind = selfcheck.tolerance_of(b.manifest, result)
    check = selfcheck.compare(outputs, expected, b.manifest.get("outputs", []), tol)
    check["tolerance"] = kind
    return check, result


def score_run(report: dict[str, Any] | None, outputs: list[np.ndarray], y: Any, expected: list | None,
              specs: list[dict[str, Any]] = ()) -> dict:
    """What bench can say without the build's data: top-1 for a classification bundle with
    labels, and agreement with the outputs the build saw (SQNR, cosine) where it has them."""
    from .targets.base import from_layout
    from .tasks import agreement_metrics, classification_metrics

    task = ((report or {}).get("accuracy") or {}).get("task", "classification")
    out: dict[str, Any] = {}
    first = from_layout(outputs[0], specs[0].get("layout")) if specs else outputs[0]
    if task == "classification" and isinstance(y, np.ndarray) and y.ndim == first.ndim - 1:
        m = classification_metrics(first, y)
        out["metric"], out["accuracy"] = next(iter(m.items()))
    if expected is not None and len(expected) == len(outputs):
        ag = agreement_metrics(outputs, expected)
        out.update(sqnr_db=ag["sqnr_db_min"], cosine_similarity=ag["cosine_min"])
        if "accuracy" not in out:
            out["metric"], out["accuracy"] = "sqnr_db", ag["sqnr_db_min"]
    return out


def run_bench(bundles: list[Path], devices: list[str], *, data: str | None, warmup: int, runs: int,
              threads: int | None, profile: int = 0, log: Callable[[str], None] = print) -> dict[str, Any]:
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
            x, y, expected, source = bench_inputs(b, data)
            inputs = tmp / f"inputs-{i}.npz"
            np.savez(inputs, **x)
            output_names = [o["name"] for o in b.manifest.get("outputs", [])]
            host_acc = None          # on-device accuracy is compared with the host's
            for dev in devices:
                log(f"{b.label} on {dev} …")
                row: dict[str, Any] = {"bundle": b.label, "target": b.manifest.get("target"), "device": dev,
                                       "inputs": source, "n_inputs": int(len(next(iter(x.values()))))}
                try:
                    run = run_on_device(dev, b.model, inputs, warmup=warmup, runs=runs, threads=threads,
                                        workdir=tmp / f"run-{i}", output_names=output_names or None,
                                        profile=profile)
                except DeviceError as e:
                    row["error"] = str(e).splitlines()[0]
                    row["error_detail"] = str(e)
                    results.append(row)
                    log(f"  failed: {row['error']}")
                    continue
                r = run.result
                row.update({k: r.get(k) for k in ("arch", "cpu", "emulated", "runtime", "threads", "warmup", "runs",
                                                  "init_ms", "latency_ms", "samples_ms", "peak_rss_mb", "profile")})
                row.update(score_run(b.report, run.outputs, y, expected, b.manifest.get("outputs", [])))
                try:
                    # On --data the timed run saw other inputs: one more run on reference.npz's.
                    check, _ = self_check_on(b, dev, None if data else run.outputs, tmp / f"check-{i}",
                                             None if data else run.result)
                except DeviceError as e:
                    check = {"self_check": "fail", "why": f"the reference run failed: {str(e).splitlines()[0]}",
                             "worst": None, "outputs": []}
                row["self_check"], row["self_check_detail"] = check["self_check"], check
                acc = row.get("accuracy")
                if dev == "host":
                    host_acc = acc
                results.append(row)
                log(f"  p50 {r['latency_ms']['p50']:.3f} ms, {row.get('metric', 'metric')} "
                    + (f"{acc:.2f}" if acc is not None else "–")
                    + (" (emulated)" if r.get("emulated") else "") + f"; self-check {describe(check)}")
            for row in results:
                if row["bundle"] == b.label and row.get("accuracy") is not None and host_acc is not None:
                    row["accuracy_vs_host_pp"] = round(row["accuracy"] - host_acc, 4)
        summary = [{"name": b.label, "path": str(b.path), "target": b.manifest.get("target"),
                         "format": b.manifest.get("format"), "scheme": b.manifest.get("scheme"),
                         "model_sha256": b.manifest["files"].get(b.manifest["model"]),
                    "size_bytes": b.model.stat().st_size} for b in opened]
    return {"bundles": summary, "results": results}
