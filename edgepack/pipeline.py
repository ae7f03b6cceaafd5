"""Runs the stage plan: cache lookups, atomic stage outputs, timing, progress.

Each stage's output lives in `<cache>/<stage>/<key>/`, where key hashes (input
artifact, stage config, data, edgepack version, the versions of the toolchain the stage
runs, what else the stage says it depends on). A stage is run in a temporary folder that
is renamed into place only when it has finished, so an interrupted build never leaves a
half-written stage behind. An entry that is damaged all the same (a file truncated or
edited afterwards) fails its checksums, is removed and rebuilt, and the build says so.
A stage that measures rather than derives (`Stage.cacheable = False`: validate's device
timings) runs on every build; its entry only holds its latest outputs.

The cache holds pickled torch modules (`torchmodel.save_module`): whoever can write to
it can run code in the next build. It lives under --out, which must not be shared with
untrusted users.
An unexpected exception in a stage becomes InternalError (exit 3) naming the stage
and the target; the errors a stage raises on purpose (EdgepackError) pass as they are.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .artifacts import Artifact, atomic_write_json, atomic_write_text, sha256_file, sha256_json
from .errors import stage_errors
from .locks import entry_lock
from .stages.base import BuildContext, Stage, StageResult, all_stages
from .torchmodel import save_module

DIGEST = "result.json.sha256"     # beside result.json: a garbled or half-written result.json is caught


class DamagedEntry(Exception):
    """A cache entry whose files do not match their checksums; the message says which."""


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
        """The entry's result, None when there is none (or the cache is off); DamagedEntry
        when there is one whose files fail their checksums."""
        d = self.dir(stage, key)
        if not (self.enabled or force) or not d.exists():
            return None
        try:
            raw = (d / "result.json").read_bytes()
        except OSError:
            raise DamagedEntry("no readable result.json") from None
        try:
            digest = (d / DIGEST).read_text().strip()
        except OSError:
            raise DamagedEntry(f"no {DIGEST}") from None
        if hashlib.sha256(raw).hexdigest() != digest:
            raise DamagedEntry("result.json does not match its checksum")
        try:
            doc = json.loads(raw)
            art = Artifact.from_json(doc["artifact"], d)
            extras = {k: Artifact.from_json(v, d) for k, v in doc["extras"].items()}
            checks = [(a.path, a.sha256) for a in [art, *extras.values()]]
            for entry in [doc["artifact"], *doc["extras"].values()]:
                base = (d / entry["path"]).parent
                checks += [(base / name, sha) for name, sha in entry.get("side_sha256", {}).items()]
            result = StageResult(art, doc["metrics"], extras, doc.get("notes", []))
            seconds = doc.get("seconds", 0.0)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DamagedEntry(f"result.json unreadable: {type(e).__name__}") from None
        for path, sha in checks:
            try:
                ok = sha256_file(path) == sha
            except OSError:
                raise DamagedEntry(f"{Path(path).name} is missing") from None
            if not ok:
                raise DamagedEntry(f"{Path(path).name} does not match its checksum")
        return result, seconds

    def discard(self, stage: str, key: str) -> None:
        shutil.rmtree(self.dir(stage, key), ignore_errors=True)

    def store(self, stage: str, key: str, tmp: Path, result: StageResult, seconds: float) -> StageResult:
        """Write result.json into tmp, rename tmp to its final place, read it back from there."""
        final = self.dir(stage, key)

        def entry(a: Artifact) -> dict[str, Any]:
            # files made by this stage move with tmp; others are referenced from final
            rel = (Path(a.path).resolve().relative_to(tmp.resolve()) if _inside(a.path, tmp)
                   else Path(os.path.relpath(Path(a.path).resolve(), final.resolve())))
            side = {name: sha256_file(Path(a.path).parent / name) for name in a.meta.get("side_files", [])}
            return {**a.to_json(final), "path": str(rel), **({"side_sha256": side} if side else {})}

        atomic_write_json(tmp / "result.json", {
            "stage": stage, "key": key, "edgepack": __version__, "seconds": seconds,
            "artifact": entry(result.artifact), "extras": {k: entry(a) for k, a in result.extras.items()},
            "metrics": result.metrics, "notes": result.notes})
        atomic_write_text(tmp / DIGEST, sha256_file(tmp / "result.json") + "\n")
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
    """The user's model as the first artifact, saved once per identity (LoadedModel.sha256:
    its weights and structure), checked against the checksum written beside it."""
    path = cache_root / "input" / ctx.teacher.sha256[:16] / "model.pt"
    with entry_lock(cache_root, "input", ctx.teacher.sha256[:16]):
        return _saved_teacher(ctx, path)


def _saved_teacher(ctx: BuildContext, path: Path) -> Artifact:
    digest = path.with_name(path.name + ".sha256")
    if path.exists():
        try:
            ok = sha256_file(path) == digest.read_text().strip()
        except OSError:
            ok = False
        if ok:
            return Artifact.from_file("torch", path)
        ctx.log(f"cache entry input/{path.parent.name} was damaged (model.pt does not match its checksum): rebuilt")
    art = save_module(ctx.teacher.module, path)
    atomic_write_text(digest, art.sha256 + "\n")
    return art


def stage_key(stage: Stage, config: Any, ctx: BuildContext, artifact: Artifact) -> str:
    """Everything that changes the stage's output: its input, its settings, the data, the
    code that runs it (edgepack and the toolchain's versions) and what the stage adds."""
    return sha256_json({"stage": stage.name, "edgepack": __version__, "input": artifact.sha256,
                        "config": config.model_dump(mode="json"), "data": ctx.data.sha256,
                        "toolchain": stage.toolchain(config, ctx),
                        "extra": stage.cache_key_extra(config, ctx)})[:24]


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
        key = stage_key(stage, config, ctx, artifact)
        # Held while the entry is looked up, made and stored: a concurrent build that needs
        # the same entry waits here, then finds it in the cache.
        with entry_lock(cache_root, stage.name, key):
            result, rec = _run_stage(stage, config, ctx, artifact, cache, key, cache_root)
        ctx.results[stage.name] = result
        artifact = result.artifact
        records.append(rec)
        on_stage and on_stage(rec)
    return BuildResult(records, ctx, artifact)


def _run_stage(stage: Stage, config: Any, ctx: BuildContext, artifact: Artifact, cache: StageCache, key: str,
               cache_root: Path) -> tuple[StageResult, StageRecord]:
    """One stage: its cache entry when there is a sound one, else run it and store it."""
    hit, damage = None, None
    if stage.cacheable:
        try:
            hit = cache.load(stage.name, key)
        except DamagedEntry as e:
            damage = str(e)
            cache.discard(stage.name, key)
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
        if damage:
            ctx.log(f"cache entry {stage.name}/{key} was damaged ({damage}): rebuilt")
    return result, rec
