"""Where the time goes: the slowest operators per device, as tables and bar charts.

Each runner that can say so puts a `profile` in its result (schema edgepack.runner/1):

    {"source": "openvino-perf-counters" | "etdump" | ...,
     "ops": [{"name": str, "type": str, "ms": mean ms per invocation, "calls": per invocation}]}

sorted by ms, slowest first. Build reports and bench reports show the ten slowest.
"""
from __future__ import annotations

import html
import io
import re
from typing import Any

TOP = 10


def _with_ops(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if (r.get("profile") or {}).get("ops")]


def _who(r: dict[str, Any]) -> str:
    label = r.get("device") or r.get("name") or "?"
    if r.get("bundle"):
        label = f"{r['bundle']} @ {label}"
    return label + (" (emulated)" if r.get("emulated") else "")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "device"


def top_ops(profile: dict[str, Any], k: int = TOP) -> list[dict[str, Any]]:
    """The k slowest ops with each one's share of the profiled total."""
    ops = sorted(profile.get("ops") or [], key=lambda o: -o["ms"])
    total = sum(o["ms"] for o in ops) or 1.0
    return [dict(o, share=o["ms"] / total) for o in ops[:k]]


def markdown(rows: list[dict[str, Any]], plots: list[str] = ()) -> list[str]:
    """Markdown lines: one table of the slowest ops per device that has a profile."""
    lines: list[str] = []
    for r in _with_ops(rows):
        p = r["profile"]
        lines += ["", f"### Slowest operators: {_who(r)} ({p.get('source', '?')})", "",
                  "| # | operator | type | ms per run | share | calls |", "| ---: | --- | --- | ---: | ---: | ---: |"]
        for i, o in enumerate(top_ops(p), 1):
            name = o["name"].replace("|", "\\|")
            lines.append(f"| {i} | `{name}` | {o.get('type', '')} | {o['ms']:.4f} | {o['share']:.0%} | "
                         f"{o.get('calls', 1)} |")
        png = f"ops-{_slug(_who(r))}.png"
        if png in plots:
            lines += ["", f"![{png}]({png})"]
    return lines


def html_tables(rows: list[dict[str, Any]]) -> str:
    parts = []
    for r in _with_ops(rows):
        p = r["profile"]
        body = "".join(f"<tr><td>{i}</td><td><code>{html.escape(o['name'])}</code></td>"
                       f"<td>{html.escape(str(o.get('type', '')))}</td><td>{o['ms']:.4f}</td>"
                       f"<td>{o['share']:.0%}</td></tr>" for i, o in enumerate(top_ops(p), 1))
        parts.append(f"<h2>Slowest operators: {html.escape(_who(r))} ({html.escape(p.get('source', '?'))})</h2>"
                     f"<table><tr><th>#</th><th>operator</th><th>type</th><th>ms per run</th><th>share</th></tr>"
                     f"{body}</table>")
    return "".join(parts)


def plots(rows: list[dict[str, Any]]) -> dict[str, bytes]:
    """One horizontal bar chart per profiled device: {file name: PNG bytes}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    for r in _with_ops(rows):
        ops = top_ops(r["profile"])[::-1]
        fig, ax = plt.subplots(figsize=(8, 1.0 + 0.35 * len(ops)))
        ax.barh(range(len(ops)), [o["ms"] for o in ops], color="#e45756" if r.get("emulated") else "#4c78a8")
        ax.set_yticks(range(len(ops)), [_short(o) for o in ops], fontsize=7)
        ax.set_xlabel("ms per inference")
        ax.set_title(f"slowest operators: {_who(r)}", fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        out[f"ops-{_slug(_who(r))}.png"] = buf.getvalue()
    return out


def _short(op: dict[str, Any]) -> str:
    name = op["name"] if len(op["name"]) <= 40 else "…" + op["name"][-39:]
    return f"{name} [{op['type']}]" if op.get("type") else name
