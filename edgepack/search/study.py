"""`edgepack search`: Optuna proposes recipes, the executor builds and measures them, the
front and the pick come out.

The loop is batch-synchronous: `search.batch` trials are asked of the sampler, built
concurrently (as many at once as the executor has workers), and told back in trial
order. The batch does not depend on the number of workers, so one worker and a cluster
ask for the same trials from the same seed (with TPE or NSGA-II, as long as the measured
latencies rank the same; with the random sampler, always).

Trial 0 is the profile's own recipe. A recipe the sampler proposes again is not rebuilt:
the trial repeats the earlier one's measurement (`repeat_of`).
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..build import BuildRequest, prepare
from ..config import Layer, load_settings, merge_layers, parse_set, read_toml
from ..devices import load_device
from ..errors import UsageError
from ..executors import Executor, ExecutorError, Resources
from ..pipeline import section_models
from .front import pareto_front, pick
from .space import Param, params_text, parse_space, values_to_check
from .trial import TrialSpec, run_trial, trial_request


@dataclass
class SearchRequest:
    build: BuildRequest                        # inputs and devices; out: the search's folder
    trials: int | None = None                  # --trials (default: search.trials)
    time_budget_s: float | None = None         # --time-budget
    pick: str | None = None                    # --pick
    sampler: str | None = None
    seed: int | None = None
    budget_ms: float | None = None             # --budget-ms: p50 on every device at most this
    max_size_kb: float | None = None           # --max-size-kb: the model file at most this
    resources: Resources = Resources()


@dataclass
class Plan:
    """Everything checked before the first trial."""

    target: str
    params: list[Param]
    default: dict[str, Any]
    fixed: tuple[str, ...]
    devices: list[str]
    higher_is_better: bool
    metric: str
    config: Any                                # SearchConfig, with the command line's values
    out: Path
    cache: Path
    base: BuildRequest


def plan_search(req: SearchRequest, log: Callable[[str], None]) -> Plan:
    out = Path(req.build.out or "search")
    cache = Path(req.build.cache_dir or out / ".edgepack-cache")
    base = dataclasses.replace(req.build, out=out, cache_dir=cache)
    prepared = prepare(base, log=log)                       # model, data, settings, devices: checked once
    settings, target = prepared.settings, prepared.target
    update = {k: v for k, v in (("trials", req.trials), ("time_budget_s", req.time_budget_s), ("pick", req.pick),
                                ("sampler", req.sampler), ("seed", req.seed)) if v is not None}
    config = settings.search.model_copy(update=update)
    source = str(base.config or settings.profile_path)
    models = section_models(target)
    params = []
    for p in parse_space(config, models, source):
        if p.key != "enabled" and getattr(settings[p.section], "enabled", True) is False:
            log(f"search: {p.name} left out: [{p.section}] is off (enabled = false)")
        else:
            params.append(p)
    if not params:
        raise UsageError(f"{source}: every setting in [search.space] belongs to a stage that is off")
    default = {p.name: getattr(settings[p.section], p.key) for p in params}
    params = [p.with_value(default[p.name]) for p in params]
    fixed = tuple(f"{k}={json.dumps(v)}" for k, v in config.fixed.items())
    for k in config.fixed:
        if k.split(".", 1)[0] in {"search", "inputs", "bundle"}:
            raise UsageError(f'{source}: [search.fixed] "{k}": not a build setting')
    _check_values(base, models, params, fixed, target, source)
    devices = [load_device(d).name for d in settings.validate.devices]
    task = prepared.ctx.task
    return Plan(target.name, params, default, fixed, devices, task.higher_is_better, task.metric, config, out,
                cache, base)


def _check_values(base: BuildRequest, models: dict[str, type], params: list[Param], fixed: tuple[str, ...],
                  target: Any, source: str) -> None:
    """Every value loads as a setting of this target: a bad one is refused before any trial."""
    for p in params:
        for value in values_to_check(p):
            item = f"{p.name}={json.dumps(value)}"
            try:
                s = load_settings(target.name, models, project_file=base.config,
                                  overrides=[*base.overrides, *fixed, item])
                target.check_scheme(s.quantize.scheme)
            except UsageError as e:
                raise UsageError(f'{source}: [search.space] "{p.name}" = {json.dumps(value)}: {e}') from None


def _sampler(config: Any) -> Any:
    """Optuna's samplers; the constraints reach them through each trial (`_tell`)."""
    import optuna

    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=config.seed, population_size=max(4, config.batch))
    return optuna.samplers.TPESampler(seed=config.seed, multivariate=True, n_startup_trials=max(config.batch, 4))


CONSTRAINTS = ("accuracy", "latency", "size")     # feasibility()'s values, in order


def feasibility(row: dict[str, Any], req: SearchRequest, devices: list[str]) -> tuple[bool, list[str], list[float]]:
    """(feasible, why not, Optuna's constraint values: <= 0 each when met)."""
    if row.get("status") != "built":
        return False, ["build failed"], [1.0, 1.0, 1.0]
    why = []
    if not row["accuracy_passed"]:
        why.append(row.get("accuracy_why") or f"{row['metric_name']} out of budget")
    if row["failed_devices"]:
        why.append("failed on " + ", ".join(row["failed_devices"]))
    missing = [d for d in devices if d not in row["p50_ms"]]
    if missing:
        why.append("no timing on " + ", ".join(missing))
    if not row["passed"] and not why:       # another gate of the profile's own (validate.max_p50_ms)
        why.append(row["notes"][0] if row.get("notes") else "a gate of the profile failed")
    gate = 1.0 if why else 0.0
    latency = 0.0
    if req.budget_ms is not None and not missing:
        latency = max(row["p50_ms"][d] for d in devices) - req.budget_ms
        if latency > 0:
            why.append(f"p50 over {req.budget_ms:g} ms")
    size = 0.0
    if req.max_size_kb is not None:
        size = row["size_bytes"] / 1024 - req.max_size_kb
        if size > 0:
            why.append(f"size over {req.max_size_kb:g} KiB")
    return not why, why, [gate, latency, size]


def run_search(req: SearchRequest, executor: Executor, log: Callable[[str], None] = print) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan = plan_search(req, log)
    config = plan.config
    started = time.perf_counter()
    directions = ["maximize" if plan.higher_is_better else "minimize", "minimize", *["minimize"] * len(plan.devices)]
    study = optuna.create_study(directions=directions, sampler=_sampler(config), study_name=f"edgepack-{plan.target}")
    study.enqueue_trial({p.name: p.encode(plan.default[p.name]) for p in plan.params})
    executor_info = executor.describe()
    log(f"search {plan.target}: {len(plan.params)} settings, {config.trials} trials, sampler {config.sampler} "
        f"(seed {config.seed}), batches of {config.batch}, executor {executor.kind} with {executor.workers} "
        f"worker(s); devices {', '.join(plan.devices)}")

    rows: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    stopped = None
    while len(rows) < config.trials:
        if rows and config.time_budget_s is not None and time.perf_counter() - started > config.time_budget_s:
            stopped = f"time budget of {config.time_budget_s:g} s spent after {len(rows)} trials"
            break
        asked = [study.ask() for _ in range(min(config.batch, config.trials - len(rows)))]
        batch = [(t, {p.name: p.suggest(t) for p in plan.params}) for t in asked]
        todo: dict[str, TrialSpec] = {}
        for t, params in batch:
            key = json.dumps(params, sort_keys=True, default=list)
            if key not in seen and key not in todo:
                todo[key] = TrialSpec(t.number, params, trial_request(plan.base, plan.out, t.number), plan.fixed)
        specs = list(todo.values())
        for i, row in executor.map_unordered(run_trial, specs, req.resources):
            if isinstance(row, ExecutorError):
                row = {"number": specs[i].number, "params": specs[i].params, "status": "failed", "exit_code": 1,
                       "error": str(row)}
            key = json.dumps(specs[i].params, sort_keys=True, default=list)
            seen[key] = _finish(row, req, plan)
            log(progress_line(seen[key], config.trials))
        for t, params in batch:          # told in trial order: the same seed asks the same next batch
            first = seen[json.dumps(params, sort_keys=True, default=list)]
            row = first if first["number"] == t.number else {**first, "number": t.number, "repeat_of": first["number"]}
            if row is not first:
                log(progress_line(row, config.trials))
            _tell(study, t, row, plan)
            rows.append(row)

    rows.sort(key=lambda r: r["number"])
    front = pareto_front(rows, plan.devices)
    for r in rows:
        r["on_front"] = r["number"] in front
    default = rows[0] if rows and rows[0]["number"] == 0 else None
    chosen = pick(rows, front, default, plan.devices, config.pick)
    return {"schema": 1, "target": plan.target, "devices": plan.devices, "metric": plan.metric,
            "higher_is_better": plan.higher_is_better, "space": [dataclasses.asdict(p) for p in plan.params],
            "fixed": list(plan.fixed), "sampler": config.sampler, "seed": config.seed, "batch": config.batch,
            "budget": {"max_accuracy_drop": default and default.get("max_drop"), "budget_ms": req.budget_ms,
                       "max_size_kb": req.max_size_kb},
            "pick_by": config.pick, "executor": _at_end(executor_info, executor), "wall_s": round(time.perf_counter() - started, 2),
            "stopped": stopped, "trials": rows, "front": front, "default": default and default["number"],
            "pick": chosen and chosen["number"], "cache": str(plan.cache), "recipe_base": _recipe_base(plan.base)}


def _at_end(info: dict[str, Any], executor: Executor) -> dict[str, Any]:
    """The executor as the search began, and its nodes at the end (a node may have died)."""
    end = executor.describe()
    return {**info, **({"nodes_at_end": end["nodes"]} if "nodes" in end else {})}


def _finish(row: dict[str, Any], req: SearchRequest, plan: Plan) -> dict[str, Any]:
    row["repeat_of"] = None
    row["is_default"] = row["number"] == 0
    row["feasible"], row["why_not"], row["constraints"] = feasibility(row, req, plan.devices)
    return row


def _tell(study: Any, trial: Any, row: dict[str, Any], plan: Plan) -> None:
    import optuna

    for name, value in zip(CONSTRAINTS, row["constraints"]):
        trial.set_constraint(name, value)
    if row["status"] != "built" or row.get("metric") is None or any(d not in row["p50_ms"] for d in plan.devices):
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    study.tell(trial, [row["metric"], row["size_bytes"], *(row["p50_ms"][d] for d in plan.devices)])


def _recipe_base(base: BuildRequest) -> dict[str, Any]:
    """What every trial's recipe starts from besides the profile: the project file and --set,
    with the inputs made absolute, so that the picked edgepack.toml builds the same thing."""
    layers = [Layer("--set", parse_set(base.overrides))]
    if base.config:
        layers.insert(0, Layer(str(base.config), read_toml(Path(base.config), "project file")))
    merged = merge_layers(layers)
    merged.pop("search", None)
    inputs = merged.setdefault("inputs", {})
    for key in ("model", "weights", "data", "train_data", "student"):
        value = getattr(base, key) or inputs.get(key)
        if value:
            path, colon, factory = str(value).partition(":")
            if Path(path).exists():
                value = str(Path(path).resolve()) + colon + factory
            inputs[key] = value
    if not inputs:
        merged.pop("inputs")
    return merged


def progress_line(row: dict[str, Any], total: int) -> str:
    head = f"trial {row['number']:>3}/{total}  {params_text(row['params'])}"
    if row["status"] != "built":
        return f"{head}  → failed (exit {row['exit_code']}): {str(row['error']).splitlines()[0]}"
    unit = row.get("unit") or ""
    bits = [f"{row['metric_name']} {row['metric']:.4g}{unit}", f"{row['size_bytes'] / 1024:,.1f} KiB",
            *(f"{d} {ms:.3g} ms" for d, ms in row["p50_ms"].items())]
    verdict = "feasible" if row["feasible"] else "infeasible: " + "; ".join(row["why_not"])
    where = f"repeat of {row['repeat_of']}" if row.get("repeat_of") is not None else \
        f"{row['node']}:{row['pid']}, {row['seconds']:.0f} s"
    return f"{head}  → {'  '.join(bits)}  {verdict}  [{where}]"
