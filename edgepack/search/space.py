"""The search space: [search.space] in a profile or edgepack.toml, as Optuna distributions.

A parameter is a setting, "section.key", with a list of choices or a numeric range. The
profile's own value is always in the space (added to the choices, or the range widened),
so the default recipe is trial 0 and every comparison with it is measured the same way.
Every value is checked against the settings' own validation and the target before any
trial runs: a bad one is refused naming the key and the value.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..config import SearchConfig, SearchRange, key_name
from ..errors import UsageError

SCALARS = (bool, int, float, str)
NOT_SEARCHABLE = {"inputs", "bundle", "search", "data"}    # where files are, signing, the data split


@dataclass(frozen=True)
class Param:
    name: str                                   # "section.key"
    choices: tuple[Any, ...] | None = None      # categorical ...
    low: float = 0.0                            # ... or a range
    high: float = 0.0
    step: float | None = None
    log: bool = False
    integer: bool = False

    @property
    def section(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def key(self) -> str:
        return self.name.split(".", 1)[1]

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for a value. Non-scalar choices (a list of recovery steps)
        travel as their JSON text, since Optuna's categorical choices must be scalars."""
        if self.choices is not None:
            encoded = [c if isinstance(c, SCALARS) else json.dumps(c) for c in self.choices]
            picked = trial.suggest_categorical(self.name, encoded)
            return self.choices[encoded.index(picked)]
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def encode(self, value: Any) -> Any:
        """The value as Optuna records it (for enqueueing the profile's recipe)."""
        return value if isinstance(value, SCALARS) else json.dumps(value)

    def with_value(self, value: Any) -> Param:
        """The same parameter, widened to hold `value` (the profile's own)."""
        if self.choices is not None:
            return self if value in self.choices else Param(self.name, (value, *self.choices))
        low, high = min(self.low, value), max(self.high, value)
        step = self.step
        if step and ((value - low) / step) % 1:                 # off the grid: drop the step
            step = None if not self.integer else 1
        return Param(self.name, None, low, high, step, self.log, self.integer)


def override(name: str, value: Any) -> str:
    """A `--set` item; JSON's literals for these values are TOML's too."""
    return f"{name}={json.dumps(value)}"


def parse_space(config: SearchConfig, section_models: dict[str, type], source: str) -> list[Param]:
    """[search.space] -> parameters, every name checked against the settings' sections."""
    if not config.space:
        raise UsageError(f"{source}: [search.space] is empty: name at least one setting to search "
                         f'("distill.student_width" = [0.25, 0.5])')
    params = []
    for name, spec in config.space.items():
        where = f'{source}: [search.space] "{key_name([name])}"'
        section, dot, key = name.partition(".")
        if not dot or "." in key or not key:
            raise UsageError(f"{where}: expected section.key (\"quantize.scheme\")")
        if section in NOT_SEARCHABLE or section not in section_models:
            allowed = sorted(set(section_models) - NOT_SEARCHABLE)
            raise UsageError(f"{where}: {section!r} is not a section that makes the model "
                             f"(searchable: {', '.join(allowed)})")
        if key not in section_models[section].model_fields:
            raise UsageError(f"{where}: [{section}] has no key {key!r}")
        if isinstance(spec, SearchRange):
            if spec.high < spec.low:
                raise UsageError(f"{where}: high ({spec.high}) is below low ({spec.low})")
            if spec.log and spec.low <= 0:
                raise UsageError(f"{where}: log = true needs low > 0 (got {spec.low})")
            field_type = section_models[section].model_fields[key].annotation
            integer = field_type is int
            params.append(Param(name, None, spec.low, spec.high, spec.step, spec.log, integer))
        else:
            if not spec:
                raise UsageError(f"{where}: no choices")
            if len({json.dumps(c, sort_keys=True) for c in spec}) != len(spec):
                raise UsageError(f"{where}: a choice is listed twice: {spec}")
            params.append(Param(name, tuple(tuple(c) if isinstance(c, list) else c for c in spec)))
    return params


def values_to_check(param: Param) -> list[Any]:
    """Every choice, or a range's two ends: what must load as a setting before trials run."""
    if param.choices is not None:
        return list(param.choices)
    return [int(param.low), int(param.high)] if param.integer else [param.low, param.high]


def params_text(params: dict[str, Any]) -> str:
    """`width=0.5 ratio=0.3 scheme=int8`: a trial's recipe on one line."""
    return " ".join(f"{name.split('.', 1)[1]}={value_text(v)}" for name, v in params.items())


def value_text(v: Any) -> str:
    """A setting's value, short: 0.5, int8, ptq+advanced."""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "+".join(map(str, v))
    return str(v)
