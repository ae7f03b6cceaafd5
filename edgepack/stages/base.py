"""The stage seam: one module per stage, each a subclass of `Stage`.

A stage declares its name, its place in the plan (`order`) and its profile section
(a pydantic model); it implements `run(artifact, config, ctx) -> StageResult`.
Subclassing registers it, so adding a stage touches its own module, its profile
section and its tests, nothing else.
"""
from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
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
            from ..config import TaskConfig
            from ..tasks import Task

            self.task = Task("classification", "top1", True, "%", TaskConfig(kind="classification"))


class Stage(ABC):
    name: ClassVar[str]
    order: ClassVar[int]
    config_model: ClassVar[type[BaseModel]]
    section: ClassVar[str] = ""        # profile section; defaults to the stage name

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

    @abstractmethod
    def run(self, artifact: Artifact, config: BaseModel, ctx: BuildContext) -> StageResult:
        """Take the previous artifact, write new files under ctx.workdir, return the result."""


def all_stages() -> list[type[Stage]]:
    pkg = importlib.import_module(__package__)
    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{__package__}.{mod.name}")
    return sorted(REGISTRY.values(), key=lambda s: s.order)
