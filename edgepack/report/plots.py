"""PNG plots for the report: per-stage size/accuracy and the latency distributions."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import op_profile
from .labels import metric_label


def render_plots(r: dict[str, Any], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    label = metric_label(r.get("accuracy"))
    stages = [s for s in r["stages"] if s.get("size_bytes")]
    if stages:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        xs = range(len(stages))
        ax.bar(xs, [s["size_bytes"] / 1024 for s in stages], color="#4c78a8")
        ax.set_xticks(list(xs), [s["name"] for s in stages])
        ax.set_ylabel("size (KiB)")
        ax.set_yscale("log")
        ax2 = ax.twinx()
        acc = [(i, s["accuracy"]) for i, s in enumerate(stages) if s.get("accuracy") is not None]
        if acc:
            ax2.plot([a[0] for a in acc], [a[1] for a in acc], "o-", color="#e45756")
        ax2.set_ylabel(label, color="#e45756")
        ax.set_title(f"{r['model']['name']} → {r['target']}: size and {label.split(' (')[0]} per stage")
        fig.tight_layout()
        fig.savefig(folder / "stages.png", dpi=110)
        plt.close(fig)
        names.append("stages.png")

    points = [s for s in r["stages"] if s.get("accuracy") is not None and s.get("macs") and s.get("size_bytes")]
    if len(points) >= 2:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
        for s in points:
            for ax, x in ((a1, s["macs"] / 1e6), (a2, s["size_bytes"] / 1024)):
                ax.scatter(x, s["accuracy"], s=30)
                ax.annotate(s["name"], (x, s["accuracy"]), fontsize=8, xytext=(4, 3), textcoords="offset points")
        a1.plot([s["macs"] / 1e6 for s in points], [s["accuracy"] for s in points], ":", color="grey")
        a2.plot([s["size_bytes"] / 1024 for s in points], [s["accuracy"] for s in points], ":", color="grey")
        from matplotlib.ticker import NullFormatter

        for ax in (a1, a2):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())    # labelled minor ticks overlap on short ranges
        a1.set_xlabel("MACs per inference (M)")
        a2.set_xlabel("model size (KiB)")
        a1.set_ylabel(label)
        fig.suptitle(f"{label.split(' (')[0]} vs compute and size, one point per stage")
        fig.tight_layout()
        fig.savefig(folder / "compression.png", dpi=110)
        plt.close(fig)
        names.append("compression.png")

    rows = r.get("sensitivity") or []
    if rows:
        names.append(sensitivity_plot(rows, r, folder, plt))

    series = []
    ref_devices = {d["name"]: d for d in (r.get("reference") or {}).get("devices", []) if d.get("samples_ms")}
    for d in r["devices"]:
        if not d.get("samples_ms"):
            continue
        tag = " (emulated)" if d.get("emulated") else ""
        if d["name"] in ref_devices:
            series.append((f"{d['name']}{tag}\nFP32 reference", ref_devices[d["name"]]["samples_ms"]))
        series.append((f"{d['name']}{tag}\n{r['artifact']['scheme']} bundle", d["samples_ms"]))
    if series:
        fig, ax = plt.subplots(figsize=(7, 1.2 + 0.9 * len(series)))
        ax.boxplot([s[1] for s in series], vert=False, showfliers=True)
        ax.set_yticks(range(1, len(series) + 1), [s[0] for s in series])
        ax.set_xlabel("latency per inference (ms)")
        ax.set_title("latency distribution")
        fig.tight_layout()
        fig.savefig(folder / "latency.png", dpi=110)
        plt.close(fig)
        names.append("latency.png")
    for name, png in op_profile.plots(r["devices"]).items():
        (folder / name).write_bytes(png)
        names.append(name)
    return names


def sensitivity_plot(rows: list[dict[str, Any]], r: dict[str, Any], folder: Path, plt: Any) -> str:
    """One bar per layer, in execution order: the model's SQNR with that layer alone quantized."""
    ordered = sorted(rows, key=lambda x: x["layer"])
    worst = {x["module_path"] for x in sorted(rows, key=lambda x: x["sqnr_db"])[:3]}
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.22 * len(ordered)))
    ys = range(len(ordered))
    ax.barh(list(ys), [x["sqnr_db"] for x in ordered],
            color=["#e45756" if x["module_path"] in worst else "#4c78a8" for x in ordered])
    for y, x in zip(ys, ordered):
        ax.annotate(f"{x['sqnr_db']:.1f}", (x["sqnr_db"], y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=7)
    ax.set_yticks(list(ys), [x["module_path"] for x in ordered], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("model output SQNR with only this layer quantized (dB, higher is better)")
    ax.set_title(f"{r['model']['name']} → {r['target']}: per-layer quantization sensitivity")
    fig.tight_layout()
    fig.savefig(folder / "sensitivity.png", dpi=110)
    plt.close(fig)
    return "sensitivity.png"
