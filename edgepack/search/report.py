"""What a search leaves behind: search.json (every trial), search.md (the front, the pick
and how it compares with the profile's own recipe), search.png (size against p50 per
device, the front marked, the default and the FP32 reference shown) and edgepack.toml
(the picked recipe, ready for `edgepack build --config`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from ..artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..config import Layer, merge_layers
from .space import params_text, value_text


def write_search_report(out: Path, doc: dict[str, Any]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    doc["summary"] = summary_lines(doc)
    paths = {"json": out / "search.json", "md": out / "search.md", "png": out / "search.png"}
    _plot(doc, paths["png"])
    atomic_write_json(paths["json"], doc)
    atomic_write_text(paths["md"], render_markdown(doc))
    chosen = _by_number(doc, doc.get("pick"))
    if chosen is not None:
        paths["toml"] = out / "edgepack.toml"
        atomic_write_bytes(paths["toml"], chosen_toml(doc, chosen).encode())
    return paths


def _by_number(doc: dict[str, Any], n: int | None) -> dict[str, Any] | None:
    return next((t for t in doc["trials"] if t["number"] == n), None) if n is not None else None


def reference_p50(doc: dict[str, Any]) -> dict[str, float]:
    """The FP32 teacher's p50 per device, as trial 0 measured it (else any trial)."""
    for t in sorted(doc["trials"], key=lambda t: t["number"] != doc.get("default")):
        if t.get("reference_p50_ms"):
            return t["reference_p50_ms"]
    return {}


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The verdict in words: the pick against the default and the FP32 reference, per device."""
    devices, lines = doc["devices"], []
    chosen, default = _by_number(doc, doc.get("pick")), _by_number(doc, doc.get("default"))
    if chosen is None:
        return [f"No trial met the budget ({len(doc['trials'])} tried): nothing to pick."]
    lines.append(f"Picked ({doc['pick_by']}): trial {chosen['number']}, {params_text(chosen['params'])}.")
    if default is not None and default.get("feasible"):
        for d in devices:
            ratio = default["p50_ms"][d] / chosen["p50_ms"][d]
            best = min((t for t in doc["trials"] if t.get("feasible")), key=lambda t: t["p50_ms"][d])
            if best["number"] == default["number"] or best["p50_ms"][d] >= default["p50_ms"][d]:
                lines.append(f"{d}: no recipe within the budget is faster than the default "
                             f"({default['p50_ms'][d]:.3g} ms); the front shows it.")
            else:
                lines.append(f"{d}: the pick runs in {chosen['p50_ms'][d]:.3g} ms against the default's "
                             f"{default['p50_ms'][d]:.3g} ms ({ratio:.2f}x); the fastest within budget is trial "
                             f"{best['number']} at {best['p50_ms'][d]:.3g} ms "
                             f"({default['p50_ms'][d] / best['p50_ms'][d]:.2f}x).")
        lines.append(f"size: {chosen['size_bytes'] / 1024:,.1f} KiB against the default's "
                     f"{default['size_bytes'] / 1024:,.1f} KiB.")
    elif default is not None:
        lines.append("The profile's own recipe (trial 0) does not meet the budget: "
                     + "; ".join(default.get("why_not") or [str(default.get("error"))]) + ".")
    for d, ref in reference_p50(doc).items():
        if d in chosen["p50_ms"] and chosen["p50_ms"][d] > ref:
            lines.append(f"WARNING: on {d} the pick ({chosen['p50_ms'][d]:.3g} ms) is slower than the FP32 "
                         f"reference ({ref:.3g} ms).")
    return lines


def render_markdown(doc: dict[str, Any]) -> str:
    """search.md, from the document write_search_report completed (its summary lines included)."""
    devices = doc["devices"]
    b = doc["budget"]
    cpu = next((t["cpu"] for t in doc["trials"] if t.get("cpu")), {})
    lines = [f"# edgepack search: {doc['target']}", "",
             f"{len(doc['trials'])} trials, sampler {doc['sampler']} (seed {doc['seed']}, batches of {doc['batch']}), "
             f"executor {doc['executor']['kind']} with {doc['executor']['workers']} worker(s), {doc['wall_s']:.0f} s."
             + (f" Stopped early: {doc['stopped']}." if doc.get("stopped") else ""), "",
             f"Budget: accuracy as the profile says (drop at most {b['max_accuracy_drop']})"
             + (f", p50 at most {b['budget_ms']:g} ms" if b["budget_ms"] else "")
             + (f", size at most {b['max_size_kb']:g} KiB" if b["max_size_kb"] else "") + ".", ""]
    for d, c in cpu.items():
        if c:
            lines.append(f"- {d}: {c.get('model', '?')} ({', '.join(c.get('isa', []))})")
    lines += ["", *doc["summary"], "", "![size against p50, the front marked](search.png)", "",
              "## Trials", "", "On the front first, then by trial number. `*`: the pick; `d`: the profile's own recipe.", ""]
    names = [p["name"] for p in doc["space"]]
    head = ["trial", *[n.split(".", 1)[1] for n in names], doc["metric"], "size KiB",
            *[f"p50 {d} ms" for d in devices], "front", "verdict"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ordered = sorted(doc["trials"], key=lambda t: (not t.get("on_front"), t["number"]))
    for t in ordered:
        mark = ("*" if t["number"] == doc.get("pick") else "") + ("d" if t["number"] == doc.get("default") else "")
        cells = [f"{t['number']}{mark}", *[value_text(t["params"].get(n)) for n in names]]
        if t.get("status") == "built":
            cells += [f"{t['metric']:.4g}", f"{t['size_bytes'] / 1024:,.1f}",
                      *[f"{t['p50_ms'].get(d, float('nan')):.3g}" for d in devices]]
        else:
            cells += ["-", "-", *["-" for _ in devices]]
        verdict = ("feasible" if t.get("feasible") else
                   "; ".join(t.get("why_not") or []) or f"failed: {str(t.get('error')).splitlines()[0]}")
        if t.get("repeat_of") is not None:
            verdict += f" (repeat of {t['repeat_of']})"
        cells += ["yes" if t.get("on_front") else "", verdict.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    ref = reference_p50(doc)
    if ref:
        lines += ["", "FP32 reference (the teacher, unquantized, same target): "
                  + ", ".join(f"{d} {ms:.3g} ms" for d, ms in ref.items()) + "."]
    chosen = _by_number(doc, doc.get("pick"))
    if chosen is not None:
        lines += ["", f"Build the pick: `edgepack build --target {doc['target']} --config edgepack.toml` "
                  f"(its bundle from the search: `{chosen['bundle']}`)."]
    return "\n".join(lines) + "\n"


def chosen_toml(doc: dict[str, Any], chosen: dict[str, Any]) -> str:
    """The pick as a project file: the search's own project file and --set (inputs made
    absolute), with the trial's recipe on top."""
    layers = [Layer("search", doc.get("recipe_base") or {}), Layer("trial", {})]
    for name, value in chosen["params"].items():
        section, key = name.split(".", 1)
        layers[1].data.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    unit = chosen.get("unit") or ""
    head = [f"# edgepack search, {doc['target']}: trial {chosen['number']} of {len(doc['trials'])}, "
            f"picked {doc['pick_by']}",
            f"# {doc['metric']} {chosen['metric']:.4g}{unit}, {chosen['size_bytes'] / 1024:,.1f} KiB, p50 "
            + ", ".join(f"{d} {ms:.3g} ms" for d, ms in chosen["p50_ms"].items()),
            f"# edgepack build --target {doc['target']} --config edgepack.toml", ""]
    return "\n".join(head) + tomli_w.dumps(merge_layers(layers))


def _plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    devices = doc["devices"]
    built = [t for t in doc["trials"] if t.get("status") == "built" and t.get("repeat_of") is None
             and all(d in t["p50_ms"] for d in devices)]
    fig, axes = plt.subplots(1, len(devices), figsize=(6.2 * len(devices), 4.6), squeeze=False)
    ref = reference_p50(doc)
    ref_size = next((t.get("reference_size_bytes") for t in built if t.get("reference_size_bytes")), None)
    for ax, d in zip(axes[0], devices):
        for kind, style in (("infeasible", dict(marker="x", color="0.6", s=30)),
                            ("feasible", dict(marker="o", facecolors="none", edgecolors="tab:blue", s=40)),
                            ("front", dict(marker="o", color="tab:blue", s=55))):
            pts = [t for t in built if (kind == "infeasible") == (not t.get("feasible"))
                   and (kind != "front" or t.get("on_front")) and (kind != "feasible" or not t.get("on_front"))]
            if pts:
                ax.scatter([t["p50_ms"][d] for t in pts], [t["size_bytes"] / 1024 for t in pts], label=kind, **style)
        front = sorted((t for t in built if t.get("on_front")), key=lambda t: t["p50_ms"][d])
        if front:       # the front's 2-D shadow on this device: its lower-left staircase
            xs, ys, best = [], [], float("inf")
            for t in front:
                if t["size_bytes"] / 1024 < best:
                    best = t["size_bytes"] / 1024
                    xs.append(t["p50_ms"][d])
                    ys.append(best)
            ax.step(xs, ys, where="post", color="tab:blue", alpha=0.5, lw=1)
        for n, label, style in ((doc.get("default"), "default profile", dict(marker="*", color="tab:orange", s=200)),
                                (doc.get("pick"), f"pick ({doc['pick_by']})",
                                 dict(marker="o", facecolors="none", edgecolors="tab:red", s=220, linewidths=2))):
            t = _by_number(doc, n)
            if t is not None and t in built:
                ax.scatter([t["p50_ms"][d]], [t["size_bytes"] / 1024], label=label, zorder=5, **style)
        if d in ref and ref_size:
            ax.scatter([ref[d]], [ref_size / 1024], marker="D", color="k", s=45, label="FP32 reference")
        for t in built:
            ax.annotate(str(t["number"]), (t["p50_ms"][d], t["size_bytes"] / 1024), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):          # 1-2-5 ticks in plain numbers
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"p50 on {d} (ms)")
        ax.set_ylabel("model file (KiB)")
        ax.set_title(f"{doc['target']} on {d}")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
