"""The stage seam: one module per stage, each a subclass of `Stage`.

A stage declares its name, its place in the plan (`order`) and its profile section
(a pydantic model); it implements `run(artifact, config, ctx) -> StageResult`.
Subclassing registers it, so adding a stage touches its own module, its profile
section and its tests, nothing else.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel

from ..artifacts import Artifact

REGISTRY: dict[str, type["Stage"]] = {}


@dataclass
class StageResult:
    artifact: Artifact                                   # what the next stage takes
    metrics: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Artifact] = field(default_factory=dict)   # side outputs (reference model, outputs …)
    notes: list[str] = field(default_factory=list)       # what the report should say in words


@dataclass
class BuildContext:
    """What every stage may read: settings, target, data, the teacher, earlier results."""

    settings: Any                      # edgepack.config.Settings
    target: Any                        # edgepack.targets.base.Target
    data: Any                          # edgepack.inputs.data.Dataset
    teacher: Any                       # edgepack.inputs.model.LoadedModel
    results: dict[str, StageResult] = field(default_factory=dict)
    progress: Callable[..., Any] | None = None    # progress(description, total) -> advance(n) callable
    log: Callable[[str], None] = print
    workdir: Path | None = None        # set by the runner to the stage's own output folder
    student_spec: str | None = None    # --student FILE.py:FACTORY (distill), if given
    task: Any = None                   # edgepack.tasks.Task: the metric that gates, the loss that distills
    output_names: list[str] = field(default_factory=lambda: ["output"])   # the teacher's, in order

    def __post_init__(self) -> None:
        if self.task is None:        # a context made by hand (a stage's test): classification
            from ..tasks import classification

            self.task = classification()


class Stage(ABC):
    name: ClassVar[str]
    order: ClassVar[int]
    config_model: ClassVar[type[BaseModel]]
    section: ClassVar[str] = ""        # profile section; defaults to the stage name
    # False: never served from the cache (a measurement, not a derivation: a rebuild re-measures)
    cacheable: ClassVar[bool] = True

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if getattr(cls, "name", None):
            cls.section = cls.section or cls.name
            REGISTRY[cls.name] = cls

    def enabled(self, config: BaseModel, ctx: BuildContext) -> bool:
        return bool(getattr(config, "enabled", True))

    def check(self, config: BaseModel, ctx: BuildContext) -> None:
        """Pre-flight: raise UsageError for bad input before anything is written
        (the build calls it for every enabled stage before the first stage runs)."""

    def cache_key_extra(self, config: BaseModel, ctx: BuildContext) -> dict[str, Any]:
        """What besides the input artifact and the stage's own config changes its output."""
        return {"target": ctx.target.name}

    def toolchain(self, config: BaseModel, ctx: BuildContext) -> dict[str, str]:
        """The versions of the packages whose code makes this stage's output (part of its key):
        the torch side by default (torch-pruning counts MACs and prunes)."""
        return package_versions(("torch", "torch_pruning"))

    @abstractmethod
    def run(self, artifact: Artifact, config: BaseModel, ctx: BuildContext) -> StageResult:
        """Take the previous artifact, write new files under ctx.workdir, return the result."""


def target_toolchain(ctx: BuildContext) -> dict[str, str]:
    """The torch side plus what the target declares it needs (`Target.requires`), for the
    stages whose output the target's converter or runtime makes."""
    return package_versions(("torch", "torch_pruning", *ctx.target.requires))


def package_versions(modules: tuple[str, ...] | list[str]) -> dict[str, str]:
    return {m: package_version(m) for m in modules}


def package_version(module: str) -> str:
    """The installed version of the distribution that provides an importable module, read
    from its metadata (nothing is imported); "absent" when none provides it."""
    return _dist_version(module.split(".")[0])


@cache
def _dist_version(top: str) -> str:
    try:
        return importlib.metadata.version(top)     # the usual case: the distribution is named as the module
    except importlib.metadata.PackageNotFoundError:
        pass
    dists = importlib.metadata.packages_distributions().get(top, [])
    versions = []
    for d in sorted(set(dists)):
        try:
            versions.append(f"{d}=={importlib.metadata.version(d)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ",".join(versions) or "absent"


def all_stages() -> list[type[Stage]]:
    pkg = importlib.import_module(__package__)
    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{__package__}.{mod.name}")
    return sorted(REGISTRY.values(), key=lambda s: s.order)
