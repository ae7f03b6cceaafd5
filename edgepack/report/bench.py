"""The device benchmark report: bench.json (edgepack.bench/1), bench.md and a
self-contained bench.html (plots inlined), emulated results visibly marked."""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from pathlib import Path
from typing import Any

from . import op_profile
from .labels import metric_label

from .. import __version__
from ..artifacts import atomic_write_json, atomic_write_text
from .. import selfcheck

SCHEMA = "edgepack.bench/1"
EMULATED_NOTE = "Emulated timings (qemu) compare only with other emulated timings, never with hardware."


def _label(row: dict[str, Any]) -> str:
    return f"{row['bundle']} @ {row['device']}" + (" (emulated)" if row.get("emulated") else "")


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _plots(doc: dict[str, Any]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in doc["results"] if r.get("samples_ms")]
    out: dict[str, bytes] = {}
    if not ok:
        return out
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.7 * len(ok)))
    box = ax.boxplot([r["samples_ms"] for r in ok], vert=False, patch_artist=True)
    for patch, r in zip(box["boxes"], ok):
        patch.set_facecolor("#f2b6b6" if r.get("emulated") else "#a6c8e8")
        patch.set_hatch("//" if r.get("emulated") else "")
    ax.set_yticks(range(1, len(ok) + 1), [_label(r) for r in ok], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency per inference (ms, log scale)")
    ax.set_title("latency distribution per bundle × device (hatched: emulated)")
    fig.tight_layout()
    out["latency.png"] = _fig_png(fig)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 1.5 + 0.5 * len(ok)))
    ys = range(len(ok))
    a1.barh(ys, [r["latency_ms"]["p50"] for r in ok],
            color=["#e45756" if r.get("emulated") else "#4c78a8" for r in ok],
            hatch=None)
    a1.set_yticks(list(ys), [_label(r) for r in ok], fontsize=8)
    a1.set_xscale("log")
    a1.set_xlabel("p50 latency (ms)")
    scored = [(y, r) for y, r in zip(ys, ok) if r.get("accuracy") is not None]
    a2.barh([y for y, _ in scored], [r["accuracy"] for _, r in scored], color="#54a24b")
    a2.set_yticks(list(ys), [""] * len(ok))
    metrics = sorted({metric_label({"metric": r.get("metric", "top1"), "unit": _UNITS.get(r.get("metric"), "")})
                      for _, r in scored})
    if scored and all(r.get("metric") in ("top1", "pixel_accuracy") for _, r in scored):
        a2.set_xlim(max(0, min(r["accuracy"] for _, r in scored) - 5), 100)
    a2.set_xlabel(f"{' / '.join(metrics) or 'metric'} on device")
    for y, r in scored:
        a2.text(r["accuracy"], y, f" {r['accuracy']:.2f}", va="center", fontsize=8)
    fig.suptitle("p50 latency and the metric on each device (red: emulated)")
    fig.tight_layout()
    out["p50_accuracy.png"] = _fig_png(fig)
    plt.close(fig)
    return out


_UNITS = {"top1": "%", "pixel_accuracy": "%", "sqnr_db": "dB"}


def _metric(r: dict[str, Any]) -> str:
    if r.get("accuracy") is None:
        return "–"
    return f"{r['accuracy']:.2f} {_UNITS.get(r.get('metric'), '')} ({r.get('metric')})"


def _md(doc: dict[str, Any], plots: list[str]) -> str:
    lines = ["# Device benchmark", "", f"edgepack {doc['edgepack_version']}, {doc['created_at']}; "
             f"warm-up {doc['warmup']}, runs {doc['runs']}.", "",
             "| bundle | device | arch | emulated | runtime | threads | init ms | p50 ms | p90 ms | p99 ms | "
             "peak RSS MB | metric | vs host | self-check |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in doc["results"]:
        if r.get("error"):
            lines.append(f"| {r['bundle']} | {r['device']} | | | failed: {r['error']} | | | | | | | | | |")
            continue
        lat, rt = r["latency_ms"], r.get("runtime") or {}
        lines.append(f"| {r['bundle']} | {r['device']} | {r.get('arch')} | {'**yes**' if r.get('emulated') else 'no'} | "
                     f"{rt.get('name')} {rt.get('version')} | {r.get('threads')} | {r.get('init_ms', 0):.1f} | "
                     f"{lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | {r.get('peak_rss_mb', 0):.1f} | "
                     f"{_metric(r)} | {r.get('accuracy_vs_host_pp', '–')} | {selfcheck.cell(r)} |")
    cpus = sorted({(r["device"], (r.get("cpu") or {}).get("model", "?"), " ".join((r.get("cpu") or {}).get("isa", [])))
                   for r in doc["results"] if not r.get("error")})
    lines += [""] + [f"- {d}: {m} ({isa})" for d, m, isa in cpus]
    if any(r.get("emulated") for r in doc["results"]):
        lines += ["", f"> {EMULATED_NOTE}"]
    lines += [""] + [f"![{p}]({p})" for p in plots if not p.startswith("ops-")]
    lines += op_profile.markdown(doc["results"], [p for p in plots if p.startswith("ops-")])
    return "\n".join(lines) + "\n"


def _html(doc: dict[str, Any], pngs: dict[str, bytes]) -> str:
    rows = []
    for r in doc["results"]:
        if r.get("error"):
            rows.append(f"<tr class=failed><td>{html.escape(r['bundle'])}</td><td>{html.escape(r['device'])}</td>"
                        f"<td colspan=8>failed: {html.escape(r['error'])}</td></tr>")
            continue
        lat = r["latency_ms"]
        emu = "<span class=emu>EMULATED</span>" if r.get("emulated") else "no"
        rows.append(f"<tr class='{'emulated' if r.get('emulated') else ''}'><td>{html.escape(r['bundle'])}</td>"
                    f"<td>{html.escape(r['device'])}</td><td>{r.get('arch')}</td><td>{emu}</td>"
                    f"<td>{html.escape(str((r.get('cpu') or {}).get('model')))}</td>"
                    f"<td>{r.get('init_ms', 0):.1f}</td><td>{lat['p50']:.3f}</td><td>{lat['p99']:.3f}</td>"
                    f"<td>{r.get('peak_rss_mb', 0):.1f}</td><td>{html.escape(_metric(r))}</td>"
                    f"<td>{html.escape(selfcheck.cell(r))}</td></tr>")
    imgs = "".join(f"<figure><img alt='{n}' src='data:image/png;base64,{base64.b64encode(b).decode()}'>"
                   f"<figcaption>{n}</figcaption></figure>" for n, b in pngs.items())
    ops = op_profile.html_tables(doc["results"])
    note = f"<p class=note>{EMULATED_NOTE}</p>" if any(r.get("emulated") for r in doc["results"]) else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>edgepack device benchmark</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}
tr.emulated{{background:#fdeaea}}tr.failed{{background:#fbd0d0}}.emu{{color:#b00;font-weight:bold}}
.note{{color:#b00}}img{{max-width:100%}}</style></head><body>
<h1>Device benchmark</h1><p>edgepack {doc['edgepack_version']}, {doc['created_at']}; warm-up {doc['warmup']},
runs {doc['runs']}.</p>{note}
<table><tr><th>bundle</th><th>device</th><th>arch</th><th>emulated</th><th>cpu</th><th>init ms</th><th>p50 ms</th>
<th>p99 ms</th><th>peak RSS MB</th><th>metric</th><th>self-check</th></tr>{''.join(rows)}</table>{ops}{imgs}</body></html>
"""


def write_bench_report(out: Path, bench: dict[str, Any], *, warmup: int, runs: int) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"schema": SCHEMA, "edgepack_version": __version__,
           "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "warmup": warmup, "runs": runs, **bench,
           "failed": [f"{r['bundle']} @ {r['device']}" for r in bench["results"]
                      if r.get("error") or r.get("self_check") == "fail"]}
    pngs = {**_plots(doc), **op_profile.plots(doc["results"])}
    for name, data in pngs.items():
        (out / name).write_bytes(data)
    atomic_write_json(out / "bench.json", doc)
    atomic_write_text(out / "bench.md", _md(doc, list(pngs)))
    atomic_write_text(out / "bench.html", _html(doc, pngs))
    return {"json": out / "bench.json", "md": out / "bench.md", "html": out / "bench.html"}


__all__ = ["write_bench_report", "SCHEMA", "json"]
