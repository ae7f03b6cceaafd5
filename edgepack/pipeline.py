"""Runs the stage plan: cache lookups, atomic stage outputs, timing, progress.

Each stage's output lives in `<cache>/<stage>/<key>/`, where key hashes (input
artifact, stage config, edgepack version, what else the stage says it depends on).
A stage is run in a temporary folder that is renamed into place only when it has
finished, so an interrupted build never leaves a half-written stage behind.
An unexpected exception in a stage becomes InternalError (exit 3) naming the stage
and the target; the errors a stage raises on purpose (EdgepackError) pass as they are.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .artifacts import Artifact, atomic_write_json, sha256_file, sha256_json
from .errors import stage_errors
from .stages.base import BuildContext, Stage, StageResult, all_stages
from .torchmodel import save_module


@dataclass
class StageRecord:
    name: str
    status: str                      # done | cached | skipped
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    key: str = ""


@dataclass
class BuildResult:
    records: list[StageRecord]
    ctx: BuildContext
    artifact: Artifact


def section_models(target: Any) -> dict[str, type]:
    """Every profile section the build understands: one per stage (the target may
    widen the quantize section with its own settings)."""
    models = {s.section: s.config_model for s in all_stages()}
    if getattr(target, "quantize_config", None) is not None:
        models["quantize"] = target.quantize_config
    return models


def plan(ctx: BuildContext) -> list[tuple[Stage, bool]]:
    out = []
    for cls in all_stages():
        stage = cls()
        out.append((stage, stage.enabled(ctx.settings[cls.section], ctx)))
    return out


class StageCache:
    def __init__(self, root: Path, enabled: bool = True):
        self.root, self.enabled = root, enabled

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def load(self, stage: str, key: str, force: bool = False) -> tuple[StageResult, float] | None:
        d = self.dir(stage, key)
        if not (self.enabled or force) or not (d / "result.json").exists():
            return None
        try:
            doc = json.loads((d / "result.json").read_text())
            art = Artifact.from_json(doc["artifact"], d)
            extras = {k: Artifact.from_json(v, d) for k, v in doc["extras"].items()}
            for a in [art, *extras.values()]:      # a damaged cache entry is a miss, not an error
                if sha256_file(a.path) != a.sha256:
                    return None
        except (OSError, KeyError, ValueError):
            return None
        return StageResult(art, doc["metrics"], extras, doc.get("notes", [])), doc.get("seconds", 0.0)

    def store(self, stage: str, key: str, tmp: Path, result: StageResult, seconds: float) -> StageResult:
        """Write result.json into tmp, rename tmp to its final place, read it back from there."""
        final = self.dir(stage, key)

        def entry(a: Artifact) -> dict[str, Any]:
            # files made by this stage move with tmp; others are referenced from final
            rel = (Path(a.path).resolve().relative_to(tmp.resolve()) if _inside(a.path, tmp)
                   else Path(os.path.relpath(Path(a.path).resolve(), final.resolve())))
            return {**a.to_json(final), "path": str(rel)}

        atomic_write_json(tmp / "result.json", {
            "stage": stage, "key": key, "edgepack": __version__, "seconds": seconds,
            "artifact": entry(result.artifact), "extras": {k: entry(a) for k, a in result.extras.items()},
            "metrics": result.metrics, "notes": result.notes})
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        loaded = self.load(stage, key, force=True)
        assert loaded is not None, f"stage {stage}: result just written to {final} does not read back"
        return loaded[0]


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def teacher_artifact(ctx: BuildContext, cache_root: Path) -> Artifact:
    """The user's model as the first artifact, saved once per content hash."""
    path = cache_root / "input" / ctx.teacher.sha256[:16] / "model.pt"
    if path.exists():
        return Artifact.from_file("torch", path)
    return save_module(ctx.teacher.module, path)


def run_pipeline(ctx: BuildContext, cache_root: Path, *, use_cache: bool = True,
                 on_stage: Callable[[StageRecord], None] | None = None) -> BuildResult:
    cache = StageCache(cache_root, enabled=use_cache)
    artifact = teacher_artifact(ctx, cache_root)
    records: list[StageRecord] = []
    for stage, enabled in plan(ctx):
        config = ctx.settings[stage.section]
        if not enabled:
            rec = StageRecord(stage.name, "skipped")
            records.append(rec)
            on_stage and on_stage(rec)
            continue
        key = sha256_json({"stage": stage.name, "edgepack": __version__, "input": artifact.sha256,
                           "config": config.model_dump(mode="json"), "data": ctx.data.sha256,
                           "extra": stage.cache_key_extra(config, ctx)})[:24]
        hit = cache.load(stage.name, key)
        if hit is not None:
            result, seconds = hit
            rec = StageRecord(stage.name, "cached", seconds, result.metrics, result.notes, key)
        else:
            (cache_root / stage.name).mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache_root / stage.name))
            ctx.workdir = tmp
            t0 = time.perf_counter()
            try:
                with stage_errors(stage.name, ctx.target.name):
                    result = stage.run(artifact, config, ctx)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            seconds = round(time.perf_counter() - t0, 3)
            result = cache.store(stage.name, key, tmp, result, seconds)
            rec = StageRecord(stage.name, "done", seconds, result.metrics, result.notes, key)
        ctx.results[stage.name] = result
        artifact = result.artifact
        records.append(rec)
        on_stage and on_stage(rec)
    return BuildResult(records, ctx, artifact)
