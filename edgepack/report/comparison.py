"""The comparison report of a multi-target build: comparison.json/.md/.png in --out.

A target whose every device failed has a report but no accuracy and no latency: its
row says "–" there rather than a number (or a crash)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_json, atomic_write_text
from .labels import metric_label

SCHEMA = "edgepack.comparison/1"


def comparison_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for res in results:
        r = res.get("report")
        if r is None:
            rows.append({"target": res["target"], "status": "failed", "exit_code": res["exit_code"],
                         "error": res["error"]})
            continue
        host = next((d for d in r["devices"] if d["name"] == "host" and not d.get("error")), None)
        ref_host = next((d for d in (r["reference"] or {}).get("devices", [])
                         if d["name"] == "host" and not d.get("error")), None)
        rows.append({
            "target": r["target"], "status": "passed" if r["passed"] else "gate failed",
            "exit_code": res["exit_code"], "bundle": res.get("bundle"),
            "format": r["artifact"]["format"], "scheme": r["artifact"]["scheme"],
            "size_bytes": r["artifact"]["size_bytes"], "accuracy": r["accuracy"]["value"],
            "metric": r["accuracy"].get("metric", "top1"), "unit": r["accuracy"].get("unit", "%"),
            "drop": r["accuracy"].get("drop", r["accuracy"].get("drop_pp")),
            "p50_ms": host and host["latency_ms"]["p50"],
            "reference": r["reference"] and {"size_bytes": r["reference"]["size_bytes"],
                                             "accuracy": r["reference"]["accuracy"],
                                             "p50_ms": ref_host and ref_host["latency_ms"]["p50"]},
            "ratios": r["ratios"], "teacher_accuracy": r["accuracy"]["teacher"],
            "notes": r["notes"]})
    return rows


def _f(v: Any, fmt: str) -> str:
    return "–" if v is None else fmt.format(v)


def _markdown(rows: list[dict[str, Any]], plot: str | None) -> str:
    label = metric_label(next((r for r in rows if r["status"] != "failed"), None))
    lines = ["# Target comparison", "",
             f"| target | status | size KiB | {label} | drop | host p50 ms | size × vs FP32 | p50 × vs FP32 |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        if row["status"] == "failed":
            lines.append(f"| {row['target']} | failed (exit {row['exit_code']}): {row['error']} | | | | | | |")
            continue
        ratios = row["ratios"]
        lat = ratios.get("latency_p50", {}).get("host")
        lines.append(f"| {row['target']} | {row['status']} | {row['size_bytes'] / 1024:,.1f} | "
                     f"{_f(row['accuracy'], '{:.2f}')} | {_f(row['drop'], '{:+.2f}')} | "
                     f"{_f(row['p50_ms'], '{:.3f}')} | {_f(ratios.get('size'), '{:.2f}')} | {_f(lat, '{:.2f}')} |")
    refs = [(r["target"], r["reference"]) for r in rows if r.get("reference")]
    if refs:
        lines += ["", "FP32 references (the teacher converted by each target, quantization off):", ""]
        for t, ref in refs:
            p50 = _f(ref.get("p50_ms"), "{:.3f} ms")
            lines.append(f"- {t}: {ref['size_bytes'] / 1024:,.1f} KiB, {_f(ref['accuracy'], '{:.2f}')}, host p50 {p50}")
    if plot:
        lines += ["", f"![{plot}]({plot})"]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], folder: Path) -> str | None:
    ok = [r for r in rows if r["status"] != "failed" and r.get("p50_ms") and r.get("accuracy") is not None]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    # Colour per target, marker per model (o bundle, x its FP32 reference): a legend instead of
    # text labels, which overlap when two targets land close together.
    for i, r in enumerate(ok):
        color = f"C{i}"
        size_kib = r["size_bytes"] / 1024
        ax.scatter(r["p50_ms"], r["accuracy"], s=40 + 8 * size_kib ** 0.5, alpha=0.8, color=color,
                   label=f"{r['target']} ({size_kib:,.0f} KiB)")
        ref = r.get("reference")
        if ref and ref.get("p50_ms") and ref.get("accuracy") is not None:
            ax.scatter(ref["p50_ms"], ref["accuracy"], marker="x", s=60, color=color)
    ax.scatter([], [], marker="x", color="grey", label="FP32 reference (same colour)")
    ax.set_xscale("log")
    ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("host p50 latency (ms)")
    label = metric_label(ok[0])
    ax.set_ylabel(label)
    ax.set_title(f"{label.split(' (')[0]} vs host latency per target (marker area ~ size)")
    fig.tight_layout()
    fig.savefig(folder / "comparison.png", dpi=110)
    plt.close(fig)
    return "comparison.png"


def write_comparison(out: Path, results: list[dict[str, Any]]) -> Path:
    rows = comparison_rows(results)
    plot = _plot(rows, out)
    atomic_write_json(out / "comparison.json", {"schema": SCHEMA, "targets": rows,
                                                "exit_code": max((r["exit_code"] for r in rows), default=0)})
    atomic_write_text(out / "comparison.md", _markdown(rows, plot))
    return out / "comparison.md"
