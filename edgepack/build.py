"""One build for one target: resolve settings, load inputs, run the stages, write
the bundle and report. Every input is checked before the output folder is touched."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import selfcheck
from .artifacts import atomic_write_json
from .bundle import bundle_name, make_manifest, model_filename, write_bundle
from .config import Settings, load_settings
from .errors import EdgepackError, UsageError, error_line, stage_errors
from .inputs.data import Dataset, load_data
from .inputs.model import LoadedModel, check_forward, load_model, order_inputs
from .pipeline import BuildResult, StageRecord, plan, run_pipeline, section_models
from .stages.base import BuildContext
from .targets.base import Target, get_target
from .tasks import check_task_fits, resolution_note, resolve_task


@dataclass
class BuildRequest:
    target: str
    model: str | None = None
    weights: str | None = None
    data: str | None = None
    train_data: str | None = None
    student: str | None = None
    config: Path | None = None
    out: Path | None = None
    overrides: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    use_cache: bool = True
    metric: str | None = None          # --metric FILE.py:FUNCTION (task.metric)
    allow_overlap: bool = False        # --allow-overlap (data.allow_overlap)
    sign_key: Path | None = None       # --sign-key (bundle.sign_key)
    cache_dir: Path | None = None      # --cache-dir: the stage cache (default: <out>/.edgepack-cache)


@dataclass
class Prepared:
    settings: Settings
    target: Target
    ctx: BuildContext
    out: Path
    use_cache: bool = True
    cache_dir: Path | None = None

    @property
    def cache_root(self) -> Path:
        """The stage cache: --cache-dir (a folder several builds or cluster nodes share), else in --out."""
        return self.cache_dir or self.out / ".edgepack-cache"


@dataclass
class BuildOutcome:
    passed: bool
    tree: Path
    zip: Path
    report: dict[str, Any]
    records: list[StageRecord]
    signed_by: str | None = None       # fingerprint of the key that signed the bundle


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    parent = next((p for p in [out, *out.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is a file, not a folder")


def prepare(req: BuildRequest, log: Callable[[str], None] = print) -> Prepared:
    """Everything that can fail on bad input, before any file is written."""
    target = get_target(req.target)
    overrides = list(req.overrides)
    if req.allow_overlap:
        overrides.append("data.allow_overlap=true")
    if req.devices:
        overrides.append("validate.devices=[" + ", ".join(f'"{d}"' for d in req.devices) + "]")
    if req.sign_key:
        overrides.append(f"bundle.sign_key={json.dumps(str(req.sign_key))}")   # a JSON string is a TOML string
    settings = load_settings(req.target, section_models(target), project_file=req.config, overrides=overrides)
    if settings.bundle.sign_key:
        from .shipping.signing import load_private_key

        load_private_key(Path(settings.bundle.sign_key), what="bundle.sign_key")
    target.check_toolchain()
    target.check_scheme(settings.quantize.scheme)
    inputs = settings.inputs
    out = Path(req.out or inputs.out or "out")
    _check_out(out)
    for d in settings.validate.devices:
        from .devices import load_device

        load_device(d)
    data: Dataset = load_data(req.data or inputs.data, settings.data,
                              calibration_samples=settings.quantize.calibration_samples,
                              train_spec=req.train_data or inputs.train_data)
    teacher: LoadedModel = load_model(req.model or inputs.model, req.weights or inputs.weights)
    data = data.with_input_order(order_inputs(teacher, data.evaluation.x, data.source))
    probe = data.evaluation.take(slice(0, 8))
    outputs, names = check_forward(teacher, probe.x, data.source)
    task = resolve_task(settings.task, outputs, probe.y, data.source, req.metric)
    check_task_fits(task, outputs, data.labels, data.source)
    note = resolution_note(task, len(data.evaluation), settings.validate.max_accuracy_drop_pp)
    if note:
        data = dataclasses.replace(data, notes=(*data.notes, note))
    ctx = BuildContext(settings=settings, target=target, data=data, teacher=teacher, log=log,
                       student_spec=req.student or inputs.student, task=task, output_names=names)
    for stage, enabled in plan(ctx):
        if enabled:
            stage.check(settings[stage.section], ctx)
    cache_dir = Path(req.cache_dir) if req.cache_dir else None
    if cache_dir is not None:
        _check_out(cache_dir)
    return Prepared(settings, target, ctx, out, req.use_cache, cache_dir)


def describe_plan(p: Prepared) -> list[tuple[str, bool]]:
    return [(stage.name, enabled) for stage, enabled in plan(p.ctx)]


def run_build(p: Prepared, *, use_cache: bool = True,
              on_stage: Callable[[StageRecord], None] | None = None) -> BuildOutcome:
    result: BuildResult = run_pipeline(p.ctx, p.cache_root, use_cache=use_cache, on_stage=on_stage)
    with stage_errors("bundle", p.target.name):
        return _write_outputs(p, result)


def _write_outputs(p: Prepared, result: BuildResult) -> BuildOutcome:
    """The report and the bundle, from a finished pipeline."""
    from .report import build_report

    ctx, art = result.ctx, result.artifact
    name = bundle_name(ctx.teacher.name, p.target.name)
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    report = build_report(result, p.settings, p.target, ctx.data, ctx.teacher, model_filename(art), created)

    # The plots' scratch folder is this build's own: a shared cache may serve several at once.
    p.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgepack-report-", dir=p.out) as scratch_dir:
        return _bundle(p, result, report, name, created, Path(scratch_dir))


def _bundle(p: Prepared, result: BuildResult, report: dict[str, Any], name: str, created: str,
            scratch: Path) -> BuildOutcome:
    from .report import render_markdown, render_plots

    ctx, art = result.ctx, result.artifact
    plots = render_plots(report, scratch)
    files: dict[str, Any] = {model_filename(art): art.path}
    for side in art.meta.get("side_files", []):
        files[Path(side).name] = art.path.parent / Path(side).name
    ref_io = ctx.results["validate"].extras.get("reference_io")
    if ref_io is not None:
        files["reference.npz"] = ref_io.path
    if ctx.data.labels:
        files["labels.txt"] = "\n".join(ctx.data.labels) + "\n"
    files["report.json"] = _json(report)
    files["report.md"] = render_markdown(report, plots)
    for plot in plots:
        files[plot] = scratch / plot
    manifest = make_manifest(name=name, target=p.target, artifact=art, io=p.target.io_details(art), data=ctx.data,
                             labels=ctx.data.labels, settings=p.settings, teacher=ctx.teacher, created_at=created,
                             reference_run=selfcheck.run_identity(next(
                                 (d for d in report["devices"] if d.get("self_check") == "reference"), None)))
    signed: list[str] = []
    sign = None
    if p.settings.bundle.sign_key:
        from .shipping.signing import sign_tree

        def sign(tree: Path) -> None:
            signed.append(sign_tree(tree, Path(p.settings.bundle.sign_key)))
    tree, zip_path = write_bundle(p.out, name, files, manifest, sign=sign)
    return BuildOutcome(report["passed"], tree, zip_path, report, result.records, signed[0] if signed else None)


def build_detached(req: BuildRequest) -> dict[str, Any]:
    """One build from its request, for a worker process or another node (`--executor ray`,
    search trials): prepares, runs and bundles it, and returns what the driver prints and
    records, plain data only. Errors on purpose become an exit code and a message here."""
    lines: list[str] = []
    started = time.perf_counter()
    where = {"node": socket.gethostname(), "pid": os.getpid()}
    try:
        with stage_errors("prepare", req.target):
            prepared = prepare(req, log=lines.append)
        with stage_errors("build", req.target):
            outcome = run_build(prepared, use_cache=req.use_cache)
    except EdgepackError as e:
        return {"target": req.target, "exit_code": e.exit_code, "log": lines, **where,
                "error": error_line(e, Path(req.out or "out")),
                "seconds": round(time.perf_counter() - started, 3)}
    return {"target": req.target, "exit_code": 0 if outcome.passed else 1, "error": None, "log": lines, **where,
            "seconds": round(time.perf_counter() - started, 3), "report": outcome.report,
            "bundle": str(outcome.zip), "tree": str(outcome.tree), "signed_by": outcome.signed_by,
            "records": [dataclasses.asdict(r) for r in outcome.records]}


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str) + "\n"


__all__ = ["BuildRequest", "prepare", "run_build", "describe_plan", "atomic_write_json"]
