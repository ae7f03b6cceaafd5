"""report.md: the tables a person reads."""
from __future__ import annotations

from typing import Any

from .. import selfcheck
from . import op_profile
from .labels import metric_label


def _n(v: Any, fmt: str = "{:,}") -> str:
    return "–" if v is None else fmt.format(v)


def _kb(v: Any) -> str:
    return "–" if v is None else f"{v / 1024:,.1f} KiB"


def _lat(d: dict[str, Any], key: str) -> str:
    lat = d.get("latency_ms") or {}
    return "–" if lat.get(key) is None else f"{lat[key]:.3f}"


def gate_sentence(acc: dict[str, Any]) -> str:
    """The gate in one sentence, in the task's own metric."""
    label, unit = metric_label(acc).split(" (")[0], acc.get("unit", "")
    where = acc.get("measured_on")
    if acc.get("task") == "agreement":
        return (f"Agreement with the FP32 teacher ({where}): worst-output SQNR **{acc['value']:.1f} dB** "
                f"(at least {acc['min_sqnr_db']} dB), cosine {acc.get('cosine_similarity', 0):.4f} "
                f"(at least {acc['min_cosine']}).")
    unit = " pp" if unit == "%" else unit          # differences of percentages are points
    value_unit = acc.get("unit", "")
    text = (f"{label[0].upper() + label[1:]} ({where}): **{acc['value']:.4g}{value_unit}** (teacher "
            f"{_n(acc.get('teacher'), '{:.4g}')}{value_unit}, "
            f"{'drop' if acc.get('higher_is_better', True) else 'rise'} "
            f"{_n(acc.get('drop'), '{:+.4g}')}{unit}, budget {acc.get('max_drop')}{unit})")
    extra = []
    if acc.get("top1_agreement") is not None:
        extra.append(f"top-1 agreement with the teacher {acc['top1_agreement']:.2f} %")
    if acc.get("cosine_similarity") is not None:
        extra.append(f"output cosine similarity {acc['cosine_similarity']:.4f}")
    if acc.get("sqnr_db") is not None:
        extra.append(f"SQNR {acc['sqnr_db']:.1f} dB")
    return text + ("; " + ", ".join(extra) if extra else "") + "."


def render_markdown(r: dict[str, Any], plots: list[str]) -> str:
    acc = r["accuracy"]
    verdict = "PASSED" if r["passed"] else "FAILED"
    label = metric_label(acc)
    lines = [f"# {r['model']['name']} → {r['target']}: {verdict}", ""]
    if acc.get("value") is not None:
        lines += [gate_sentence(acc), ""]
    ratios = r["ratios"]
    if ratios.get("size"):
        lat = ", ".join(f"{k} {v:.2f}×" for k, v in ratios["latency_p50"].items()) or "–"
        lines += [f"Against the FP32 reference ({r['reference']['format']}, "
                  f"{_kb(r['reference']['size_bytes'])}): **{ratios['size']:.2f}× smaller**; p50 latency {lat} faster.", ""]
    if r.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in r["notes"]] + [""]
    lines += ["## Stages", "", f"| stage | status | seconds | params | MACs | size | {label} |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in r["stages"]:
        lines.append(f"| {s['name']} | {s['status']} | {_n(s['seconds'], '{:.2f}')} | {_n(s['params'])} | "
                     f"{_n(s['macs'])} | {_kb(s['size_bytes'])} | {_n(s['accuracy'], '{:.2f}')} |")
    lines += ["", "## Devices", "", "| device | model | arch | emulated | threads | init ms | p50 ms | p90 ms | "
              f"p99 ms | mean ± std ms | peak RSS MB | {label} | self-check |",
              "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    rows = [("bundle", d) for d in r["devices"]]
    rows += [("reference", d) for d in (r["reference"] or {}).get("devices", [])]
    for which, d in rows:
        if d.get("error"):
            lines.append(f"| {d['name']} | {which} | – | – | – | – | failed: {d['error']} | | | | | | |")
            continue
        lat = d.get("latency_ms") or {}
        lines.append(f"| {d['name']} | {which} | {d.get('arch', '–')} | {'yes' if d.get('emulated') else 'no'} | "
                     f"{d.get('threads', '–')} | {_n(d.get('init_ms'), '{:.1f}')} | {_lat(d, 'p50')} | "
                     f"{_lat(d, 'p90')} | {_lat(d, 'p99')} | "
                     f"{_n(lat.get('mean'), '{:.3f}')} ± {_n(lat.get('std'), '{:.3f}')} | "
                     f"{_n(d.get('peak_rss_mb'), '{:.1f}')} | {_n(d.get('accuracy'), '{:.2f}')}"
                     f"{' **over budget**' if d.get('gate_failed') else ''} | {selfcheck.cell(d) if which == 'bundle' else ''} |")
    cpus = {(d.get("name"), (d.get("cpu") or {}).get("model"), " ".join((d.get("cpu") or {}).get("isa", [])))
            for d in r["devices"] if not d.get("error")}
    for name, model, isa in sorted(cpus, key=str):
        lines.append(f"\n{name}: {model} ({isa or 'no ISA flags recorded'})")
    if any(d.get("emulated") for d in r["devices"]):
        lines.append("\nEmulated timings compare only with other emulated timings, never with hardware.")
    if r.get("latency"):
        lines += ["", "## Latency budget", "", "| device | p50 ms | budget ms | over by ms | |",
                  "| --- | ---: | ---: | ---: | --- |"]
        for row in r["latency"]["devices"]:
            lines.append(f"| {row['device']} | {row['p50_ms']:.3f} | {row['max_p50_ms']:g} | {row['over_ms']:.3f} | "
                         f"{'passed' if row['passed'] else '**over budget**'} |")
    lines += recovery_lines(r.get("recovery"), label)
    lines += sensitivity_lines(r.get("sensitivity") or [], r.get("sensitivity_info"))
    lines += ["", "## Artifact", "", f"- model: {r['model']['spec']} (sha256 `{r['model']['sha256'][:16]}`)",
              f"- file: `{r['artifact']['path']}` ({_kb(r['artifact']['size_bytes'])}, "
              f"scheme {r['artifact']['scheme']}, layout {r['artifact']['layout']})",
              f"- sha256: `{r['artifact']['sha256']}`",
              f"- data: {r['data']['source']} (sha256 `{r['data']['sha256'][:16]}`) — "
              f"{r['data']['calibration_samples']} calibration / "
              f"{r['data']['evaluation_samples']} evaluation samples ({r['data']['split'].get('method')})",
              f"- recipe hash: `{r['recipe_hash']}`, edgepack {r['edgepack_version']}, {r['created_at']}", ""]
    lines += op_profile.markdown(r["devices"], plots) + [""]
    for p in plots:
        if not p.startswith("ops-"):
            lines += [f"![{p}]({p})", ""]
    return "\n".join(lines)


def _db(v: Any) -> str:
    return "–" if v is None else f"{v:.1f}"


def sensitivity_lines(rows: list[dict[str, Any]], info: dict[str, Any] | None, worst: int = 10) -> list[str]:
    """The ten layers int8 hurts most, by the model's SQNR with that layer alone quantized."""
    if not rows or info is None:
        return []
    intro = (f"Each layer quantized alone ({info.get('scheme')}, {info.get('activations')} activations), the rest in "
             f"float, on {info.get('samples')} calibration samples: the SQNR of the model's outputs and of the layer's "
             f"own output against float, and the model's SQNR with every *other* layer quantized "
             f"(all layers: {_db(info.get('all_quantized_sqnr_db'))} dB). Lower is worse; module paths are the "
             f"model's.")
    lines = ["", "## Per-layer sensitivity", "", intro, "",
             "| rank | module path | op | model SQNR dB | own output dB | all but it dB |",
             "| ---: | --- | --- | ---: | ---: | ---: |"]
    for row in rows[:worst]:
        lines.append(f"| {row['rank']} | `{row['module_path']}` | {row['op']} | {_db(row['sqnr_db'])} | "
                     f"{_db(row.get('layer_sqnr_db'))} | {_db(row.get('all_but_sqnr_db'))} |")
    if len(rows) > worst:
        lines.append(f"\n{len(rows) - worst} more layer(s) in report.json and sensitivity.png.")
    return lines


def recovery_lines(rec: dict[str, Any] | None, label: str) -> list[str]:
    """Which recovery step met the budget, and what each attempt measured."""
    if not rec:
        return []
    met = rec.get("met_by")
    head = (f"Step **{met}** met the budget." if met else
            f"No step met the budget; the build kept the best attempt ({rec.get('kept')}).")
    intro = (f"Steps in order: {', '.join(rec['order'])}. {head} Judged on "
             f"{rec.get('judged_on', 'the evaluation split')}.")
    lines = ["", "## Recovery", "", intro, "",
             f"| step | status | {label} | drop | size | p50 ms | in float |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for a in rec["attempts"]:
        if a["status"] == "failed":
            lines.append(f"| {a['step']} | failed: {a.get('error', '')[:120]} | | | | | |")
            continue
        floats = ", ".join(f"`{p}`" for p in a.get("float_layers") or []) or "–"
        lines.append(f"| {a['step']}{' (' + a['route'] + ')' if a.get('route') else ''} | {a['status']} | "
                     f"{_n(a.get('value'), '{:.4g}')} | {_n(a.get('drop'), '{:+.4g}')} | {_kb(a.get('size_bytes'))} | "
                     f"{_n(a.get('p50_ms'), '{:.4f}')} | {floats} |")
    for s in rec["steps"]:
        if s["status"] in ("skipped", "not offered"):
            lines.append(f"| {s['step']} | {s['status']}: {s.get('why', '')} | | | | | |")
    if rec.get("float_layers"):
        lines += ["", ("Layers kept in float, in the order the sensitivity ranked them (each with the layers that "
                       "read its output), and what each cost against the attempt before:"), "",
                  f"| module path | op | kept with | {label} after | size cost | p50 cost ms |",
                  "| --- | --- | --- | ---: | ---: | ---: |"]
        for f in rec["float_layers"]:
            size = f.get("size_cost_bytes")
            lines.append(f"| `{f['module_path']}` | {f['op']} | {', '.join(f['with'])} | {_n(f.get('value'), '{:.4g}')} "
                         f"| {'–' if size is None else f'{size:+,} B'} | {_n(f.get('latency_cost_ms'), '{:+.4f}')} |")
    return lines
