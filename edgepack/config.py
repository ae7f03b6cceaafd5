"""Typed, frozen settings: target profile < project file (edgepack.toml) < --set.

A profile is data (targets/<name>.toml). It is validated once, here, at the edge;
an unknown key, a wrong type or an out-of-range value raises UsageError naming the
file and the key. Inside, code trusts these typed values.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, field_validator

from .artifacts import sha256_json
from .errors import UsageError
from .selfcheck import SelfCheckTolerance

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO_ROOT / "targets"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    """How the user's data becomes calibration and evaluation splits."""

    seed: int = 0
    eval_fraction: float = Field(0.5, gt=0, lt=1)
    image_size: int = Field(32, ge=8, le=1024)      # image folders: resized to this square
    channels: Literal[1, 3] = 3                      # image folders: grayscale or RGB
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    allow_overlap: bool = False                      # accept samples shared by training/calibration and evaluation


class ExportConfig(Section):
    opset: int = Field(17, ge=13, le=21)
    dynamic_batch: bool = False      # a dynamic batch dimension where the route supports it; else batch 1


class TaskConfig(Section):
    """What the model is for: decides the metric that gates the build and the loss that
    distillation uses ([task] in a profile or edgepack.toml)."""

    # auto: classification when y holds class ids for the first output, regression when y is
    # float and shaped like it, agreement when there is no y, custom when a metric is given.
    kind: Literal["auto", "classification", "agreement", "regression", "custom"] = "auto"
    metric: str | None = None              # FILE.py:FUNCTION -> fn(outputs, targets) -> {name: value}
    metric_key: str | None = None          # which key of the metric's result gates (default: its first)
    higher_is_better: bool = True          # of the metric's gated key
    max_drop: float | None = Field(None, ge=0)      # regression/custom: how much worse than the teacher, in its units
    max_relative_drop: float = Field(0.05, ge=0)    # ... or this share of the teacher's value, when max_drop is unset
    min_cosine: float = Field(0.98, ge=-1, le=1)    # agreement: every output's mean cosine with the FP32 teacher
    min_sqnr_db: float = Field(10.0)                # agreement: every output's SQNR against the FP32 teacher (error energy <= 10 %)
    distill_loss: Literal["mse", "cosine"] = "mse"  # agreement/regression/custom: per-output loss to the teacher
    output_weights: tuple[float, ...] = ()          # its weight per output (default: 1 each)


RecoveryStep = Literal["ptq", "advanced", "mixed", "qat"]


class QuantizeConfig(Section):
    """Settings every target understands. A target may extend this (Target.quantize_config)."""

    # int8 (static, calibrated), dynamic (int8 weights, activations at run time), none (float),
    # int4-weights (block-wise 4-bit weights, float activations; targets whose runtime runs it)
    scheme: Literal["int8", "dynamic", "none", "int4-weights"] = "int8"
    per_channel: bool = True
    calibration_samples: int = Field(256, ge=1)
    io: Literal["int8", "uint8", "float32"] = "int8"
    # Conversion routes to try, in order (empty: the target's own order, see `edgepack targets`).
    # Names of another target's routes are passed over, so one --set serves `--target all`.
    routes: tuple[str, ...] = ()
    # What to try, in this order, while the quantized model is over the accuracy budget: plain
    # post-training quantization, then better PTQ (SmoothQuant, bias correction, MSE ranges), then
    # the most sensitive layers kept in float, then quantization-aware training with the teacher as
    # the KD target. Each step runs only if the ones before it are over budget.
    recovery: tuple[RecoveryStep, ...] = ("ptq",)
    max_float_layers: int = Field(4, ge=0)          # mixed: at most this many layers kept in float
    mixed_precision: Literal["float", "int16"] = "float"   # mixed: what a kept layer runs in (int16: 16x8, LiteRT)
    weights_block_size: int = Field(32, ge=0)       # int4-weights: weights per scale along the input (0: per channel)
    sensitivity_samples: int = Field(32, ge=0)      # calibration samples for per-layer sensitivity (0: none)
    qat_epochs: int = Field(3, ge=1)                # qat: epochs on the training split
    qat_lr: float = Field(1e-4, gt=0, le=1)         # qat: learning rate (the weights are trained already)

    @field_validator("recovery")
    @classmethod
    def _steps_once(cls, steps: tuple[str, ...]) -> tuple[str, ...]:
        if not steps:
            raise ValueError("needs at least one step (\"ptq\" alone: quantize once)")
        if len(set(steps)) != len(steps):
            raise ValueError(f"names a step twice: {list(steps)}")
        return steps


class ValidateConfig(Section):
    max_accuracy_drop_pp: float = Field(1.0, ge=0)
    # Latency budget on the bundle's p50: one number for every device (max_p50_ms = 5.0),
    # or a table by device name (max_p50_ms = { host = 2.0, qemu-aarch64 = 40.0 }); a
    # device the table leaves out has no budget. None: no latency gate.
    max_p50_ms: PositiveFloat | dict[str, PositiveFloat] | None = None
    devices: tuple[str, ...] = ("host",)
    warmup_runs: int = Field(20, ge=0)
    runs: int = Field(200, ge=1)
    threads: int = Field(1, ge=1)
    reference_inputs: int = Field(16, ge=1)   # how many eval samples the bundle ships in reference.npz
    profile_runs: int = Field(20, ge=0)       # runs with the runtime's per-operator profiler after timing (0: none)
    # How far another device's outputs on reference.npz may stray from the host's
    # (edgepack/selfcheck.py); written into the manifest for bench and verify.
    self_check: SelfCheckTolerance = SelfCheckTolerance()


class ReferenceConfig(Section):
    """The FP32 teacher, converted by the same target with scheme "none" and timed the same way."""

    enabled: bool = True


class InputsConfig(Section):
    """What a project file may name instead of flags ([inputs] in edgepack.toml)."""

    model: str | None = None
    weights: str | None = None
    data: str | None = None
    train_data: str | None = None
    student: str | None = None
    out: str | None = None


class BundleConfig(Section):
    """How the bundle is sealed on the way out ([bundle] in a profile or edgepack.toml)."""

    # A PEM elliptic-curve private key (P-256 or P-384): the build signs the bundle with
    # OpenSSF model-signing (model.sig beside manifest.json; `edgepack verify --key` checks it).
    # Where a key lies is not part of the recipe: it is left out of the recipe hash.
    sign_key: str | None = None


class SearchRange(Section):
    """A numeric range in [search.space]: { low = 0.0, high = 0.6, step = 0.1 }."""

    low: float
    high: float
    step: float | None = Field(None, gt=0)
    log: bool = False


class SearchConfig(Section):
    """`edgepack search`: which recipes it may try and how ([search] in a profile or edgepack.toml).
    Not part of a build's recipe (left out of the recipe hash)."""

    trials: int = Field(16, ge=1)                   # builds in all, the profile's own recipe first
    time_budget_s: PositiveFloat | None = None      # no new trial starts after this many seconds
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"   # Optuna's multi-objective samplers
    seed: int = 0
    # Trials asked of the sampler at once; their results are told in trial order, so the same seed
    # gives the same trials whatever the number of workers (with "tpe"/"nsga2", as long as the
    # measured latencies rank the same).
    batch: int = Field(4, ge=1)
    pick: Literal["fastest", "smallest", "balanced"] = "balanced"
    # "section.key" = [choices] or { low, high, step, log }; the profile's own value is always in.
    space: dict[str, list[Any] | SearchRange] = {}
    # Settings for every trial that measure rather than make the model ("validate.runs" = 50).
    fixed: dict[str, Any] = {}


# -- loading -------------------------------------------------------------------

class Layer:
    """One source of settings (a file or the command line) and the keys it set."""

    def __init__(self, source: str, data: dict[str, Any]):
        self.source, self.data = source, data


def read_toml(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise UsageError(f"{path}: {what} not found")
    if not path.is_file():
        raise UsageError(f"{path}: not a file (the {what} must be a .toml file)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid TOML ({e})") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read the {what} ({e.strerror or e})") from None


def key_name(parts: tuple[Any, ...] | list[Any]) -> str:
    """section.key for a message; a key that is empty or not printable (a newline in a quoted
    TOML key) is shown quoted, so the message stays one line."""
    return ".".join(p if p and p.isprintable() else repr(p) for p in map(str, parts))


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`--set quantize.io=float32 --set validate.runs=50` -> nested dict, values as TOML."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or "." not in key or not all(key.split(".")):
            raise UsageError(f"--set {item!r}: expected section.key=value")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw          # bare words are strings: --set quantize.scheme=dynamic
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {item!r}: {p} is not a section")
        node[leaf] = value
    return out


# Tables a later layer replaces whole instead of merging into: a project's search space is the
# space, not the profile's plus its own.
REPLACED_TABLES = {("search", "space")}


def _merge(layers: list[Layer]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    merged: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}

    def walk(dst: dict, src: dict, path: tuple[str, ...], source: str) -> None:
        for k, v in src.items():
            sources[path + (k,)] = source
            if isinstance(v, dict) and isinstance(dst.get(k), dict) and path + (k,) not in REPLACED_TABLES:
                walk(dst[k], v, path + (k,), source)
            else:
                dst[k] = v if not isinstance(v, dict) else _copy(v, path + (k,), source)

    def _copy(d: dict, path: tuple[str, ...], source: str) -> dict:
        for k in d:
            sources[path + (k,)] = source
            if isinstance(d[k], dict):
                _copy(d[k], path + (k,), source)
        return dict(d)

    for layer in layers:
        walk(merged, layer.data, (), layer.source)
    return merged, sources


def merge_layers(layers: list[Layer]) -> dict[str, Any]:
    """Layers merged as a build merges them (later wins), without validation."""
    return _merge(layers)[0]


def validation_message(err: ValidationError, sources: dict[tuple[str, ...], str], default: str,
                       section: str) -> str:
    e = err.errors()[0]
    loc = (section, *(str(p) for p in e["loc"]))
    source = next((sources[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in sources), default)
    key = key_name(loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        return f"{source}: unknown key {key}"
    return f"{source}: {key}: {e['msg']} (got {e.get('input')!r})"


class Settings:
    """The resolved, validated configuration of one build for one target."""

    def __init__(self, target: str, sections: dict[str, BaseModel], profile_path: Path,
                 layers: list[Layer], meta: dict[str, Any]):
        self.target, self.sections, self.profile_path = target, sections, profile_path
        self.layers, self.meta = layers, meta

    def __getitem__(self, section: str) -> BaseModel:
        return self.sections[section]

    def __getattr__(self, section: str) -> BaseModel:
        try:
            return self.__dict__["sections"][section]
        except KeyError:
            raise AttributeError(section) from None

    def resolved(self) -> dict[str, Any]:
        return {**self.meta, **{k: v.model_dump(mode="json") for k, v in self.sections.items()}}

    @property
    def recipe_hash(self) -> str:
        d = self.resolved()
        d.pop("inputs", None)       # where files live is not part of the recipe,
        d.pop("bundle", None)       # nor which key signs the result,
        d.pop("search", None)       # nor how `edgepack search` would explore around it
        return sha256_json(d)


def profile_path(target: str) -> Path:
    path = PROFILES_DIR / f"{target}.toml"
    if not path.exists():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
        raise UsageError(f"unknown target {target!r} (known: {', '.join(known) or 'none'}; profiles live in {PROFILES_DIR})")
    return path


def load_settings(target: str, section_models: dict[str, type[BaseModel]], *,
                  project_file: Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Settings:
    """Merge profile < project file < --set and validate every section with its model.

    `section_models` maps a section name to its pydantic model: the pipeline builds it
    from the registered stages and the target, so a new stage brings its own section.
    """
    path = profile_path(target)
    layers = [Layer(str(path), read_toml(path, "target profile"))]
    if project_file is not None:
        layers.append(Layer(str(project_file), read_toml(Path(project_file), "project file")))
    if overrides:
        layers.append(Layer("--set", parse_set(overrides)))
    merged, sources = _merge(layers)

    meta_keys = {"name": str, "format": str, "description": str}
    meta = {k: merged.pop(k) for k in list(merged) if k in meta_keys}
    for k, v in meta.items():
        if not isinstance(v, meta_keys[k]):
            raise UsageError(f"{sources.get((k,), path)}: {k} must be a string (got {v!r})")
    if meta.get("name", target) != target:
        raise UsageError(f"{sources.get(('name',), path)}: name = {meta['name']!r} but the build is for target "
                         f"{target!r} (remove name, or build --target {meta['name']})")
    models = {"inputs": InputsConfig, "data": DataConfig, "task": TaskConfig, "bundle": BundleConfig,
              "search": SearchConfig, **section_models}
    sections: dict[str, BaseModel] = {}
    for key, value in merged.items():
        if key not in models:
            raise UsageError(f"{sources.get((key,), path)}: unknown key {key_name([key])} "
                             f"(sections: {', '.join(sorted(models))})")
        if not isinstance(value, dict):
            raise UsageError(f"{sources.get((key,), path)}: {key} must be a section ([{key}], not {value!r})")
    for key, model in models.items():
        try:
            sections[key] = model.model_validate(merged.get(key, {}))
        except ValidationError as e:
            raise UsageError(validation_message(e, sources, str(path), key)) from None
    return Settings(target, sections, path, layers, {"name": target, **meta})
