"""Tasks: what a model is for decides the metric that gates a build and the loss that
distillation trains with.

classification  y holds class ids for the first output, (N, C) logits or dense (N, C, *S)
                with y (N, *S) (a segmenter): top-1 (pixel accuracy when dense), top-5 where
                C >= 5, mean IoU when dense. Gate: validate.max_accuracy_drop_pp. Loss: KL at
                temperature T (scaled by T^2) mixed with cross-entropy; other outputs MSE.
agreement       no labels: every output of the converted model against the FP32 teacher's:
                cosine, SQNR (dB), max and mean abs error, and for (N, D) embeddings the share
                of each sample's 5 nearest neighbours kept. Gate: task.min_cosine and
                task.min_sqnr_db on the worst output. Loss: per-output MSE (scaled by the
                teacher output's variance, so outputs of any scale weigh alike) or cosine.
regression      float y shaped like the first output: mean abs error (gated, lower is better),
                RMSE, PSNR. Gate: task.max_drop, else task.max_relative_drop of the teacher's.
custom          the user's fn(outputs: list[np.ndarray], targets) -> {name: value}, run on the
                host on what each device returned; task.metric_key gates, higher or lower is
                better as task.higher_is_better says.

Every task also reports agreement with the teacher, so a report always says how close the
bundle is to the model it came from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import TaskConfig
from .errors import UsageError

NEIGHBOURS = 5


@dataclass(frozen=True)
class Task:
    kind: str
    metric: str                    # the gated key of evaluate()'s result
    higher_is_better: bool
    unit: str                      # "%", "dB", "" ...
    config: TaskConfig
    user_metric: Callable[..., dict[str, float]] | None = None

    @property
    def has_targets(self) -> bool:
        return self.kind != "agreement"

    # -- metrics ---------------------------------------------------------------------
    def evaluate(self, outputs: list[np.ndarray], targets: Any,
                 teacher: list[np.ndarray] | None = None) -> dict[str, Any]:
        """The task's metrics (the gated one under `self.metric`) plus agreement with the
        teacher's outputs when given."""
        m: dict[str, Any] = {}
        if self.kind == "classification":
            m.update(classification_metrics(outputs[0], targets))
        elif self.kind == "regression":
            m.update(regression_metrics(outputs[0], targets))
        elif self.kind == "custom":
            m.update(self._user(outputs, targets))
        if teacher is not None:
            ag = agreement_metrics(outputs, teacher)
            m["agreement"] = ag
            m["cosine_similarity"] = ag["cosine_min"]
            m["sqnr_db"] = ag["sqnr_db_min"]
            if self.kind == "classification":
                m["top1_agreement"] = top1_agreement(outputs[0], teacher[0])
        if self.kind == "agreement":
            m[self.metric] = m.get("sqnr_db")
        return m

    def _user(self, outputs: list[np.ndarray], targets: Any) -> dict[str, float]:
        name = self.config.metric
        try:
            result = self.user_metric(outputs, targets)
        except Exception as e:
            raise UsageError(f"task.metric {name}: raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") \
                from None
        if not isinstance(result, dict) or not result:
            raise UsageError(f"task.metric {name}: returned {type(result).__name__}; expected a dict of name -> number")
        out = {}
        for k, v in result.items():
            try:
                out[str(k)] = float(v)
            except (TypeError, ValueError):
                raise UsageError(f"task.metric {name}: value {k!r} is {type(v).__name__}, not a number") from None
        if self.metric not in out:
            raise UsageError(f"task.metric_key = {self.metric!r}: not among the metric's keys "
                             f"({', '.join(out)})")
        return out

    # -- the gate --------------------------------------------------------------------
    def gate(self, measured: dict[str, Any] | None, teacher: dict[str, Any] | None,
             max_accuracy_drop_pp: float) -> dict[str, Any]:
        """{metric, value, teacher, drop, budget, passed, ...}: drop > 0 is worse, in the
        metric's units (percentage points for classification)."""
        value = None if measured is None else measured.get(self.metric)
        out: dict[str, Any] = {"task": self.kind, "metric": self.metric, "unit": self.unit, "value": value,
                               "higher_is_better": self.higher_is_better}
        if self.kind == "agreement":
            cos = None if measured is None else measured.get("cosine_similarity")
            out.update(teacher=None, cosine_similarity=cos, min_cosine=self.config.min_cosine,
                       min_sqnr_db=self.config.min_sqnr_db, drop=None)
            out["passed"] = (value is not None and cos is not None and value >= self.config.min_sqnr_db
                             and cos >= self.config.min_cosine)
            if measured is not None and not out["passed"]:
                out["why"] = (f"agreement with the FP32 teacher: worst output cosine {cos:.4f} "
                              f"(task.min_cosine = {self.config.min_cosine}), SQNR {value:.1f} dB "
                              f"(task.min_sqnr_db = {self.config.min_sqnr_db})")
            return out
        t_value = None if teacher is None else teacher.get(self.metric)
        drop = None
        if value is not None and t_value is not None:
            drop = round((t_value - value) if self.higher_is_better else (value - t_value), 6)
        if self.kind == "classification":
            budget, field = max_accuracy_drop_pp, "validate.max_accuracy_drop_pp"
        elif self.config.max_drop is not None:
            budget, field = self.config.max_drop, "task.max_drop"
        else:
            budget = round(abs(t_value or 0.0) * self.config.max_relative_drop, 6)
            field = f"task.max_relative_drop = {self.config.max_relative_drop} of the teacher's {self.metric}"
        out.update(teacher=t_value, drop=drop, max_drop=budget, budget_from=field,
                   passed=drop is not None and drop <= budget)
        if self.kind == "classification":     # the names report readers of edgepack.report/1 know
            out.update(drop_pp=drop, max_drop_pp=budget)
        if drop is not None and not out["passed"]:
            points = " pp" if self.unit == "%" else self.unit       # a difference of percentages
            out["why"] = (f"{self.metric} {value:.4g}{self.unit} vs the teacher's {t_value:.4g}{self.unit}: "
                          f"{drop:.4g}{points} worse, more than {field.split(' = ')[0]} = {budget:.4g}")
        return out

    # -- distillation --------------------------------------------------------------------
    def kd_loss(self, student: list[Any], teacher: list[Any], targets: Any, temperature: float,
                alpha: float) -> Any:
        """The distillation loss of one batch (lists of output tensors; targets a tensor or
        a dict of tensors, or None)."""
        if self.kind == "classification":
            loss = classification_kd(student[0], teacher[0], targets, temperature, alpha)
            rest = [output_loss("mse", s, t) for s, t in zip(student[1:], teacher[1:])]
            return loss + sum(rest) if rest else loss
        weights = self.config.output_weights or (1.0,) * len(student)
        return sum(w * output_loss(self.config.distill_loss, s, t) for w, s, t in zip(weights, student, teacher))

    def selection_score(self, student: list[Any], teacher: list[Any], targets: Any, temperature: float,
                        alpha: float) -> tuple[float, float]:
        """What picks the best epoch on the validation slice: (higher is better, tie breaker)."""
        loss = float(self.kd_loss(student, teacher, targets, temperature, alpha))
        if self.kind == "classification":
            pred = student[0].argmax(1)
            return float((pred == targets).float().mean() * 100), -loss
        return -loss, 0.0


# -- resolving the task ------------------------------------------------------------------

def classification() -> Task:
    """Top-1 classification: the task of a context or a training call made without one."""
    return Task("classification", "top1", True, "%", TaskConfig(kind="classification"))


def resolve_task(cfg: TaskConfig, outputs: list[np.ndarray], targets: Any, source: str,
                 metric_spec: str | None = None) -> Task:
    """The task for this model and data: cfg.kind, or for "auto" what the targets say.
    `outputs`: the teacher's outputs on a few evaluation samples."""
    spec = metric_spec or cfg.metric
    if spec is not None:
        cfg = cfg.model_copy(update={"metric": spec})
    kind = cfg.kind
    if kind == "auto":
        kind = _infer_kind(outputs, targets, spec)
    if kind == "custom":
        if spec is None:
            raise UsageError("task.kind = 'custom' needs a metric: --metric FILE.py:FUNCTION or task.metric")
        fn = load_metric(spec)
        return Task("custom", cfg.metric_key or _first_key(fn, outputs, targets, spec), cfg.higher_is_better, "",
                    cfg, fn)
    if kind == "agreement":
        return Task("agreement", "sqnr_db", True, " dB", cfg)
    if targets is None:
        raise UsageError(f"task.kind = {kind!r} needs targets, and {source} has no y (give y, or set "
                         "task.kind = 'agreement' to compare with the FP32 teacher)")
    if kind == "classification":
        _check_classification(outputs[0], targets, source)
        dense = outputs[0].ndim > 2
        return Task("classification", "pixel_accuracy" if dense else "top1", True, "%", cfg)
    _check_regression(outputs[0], targets, source)
    return Task("regression", "mae", False, "", cfg)


def _infer_kind(outputs: list[np.ndarray], targets: Any, spec: str | None) -> str:
    if spec is not None:
        return "custom"
    if targets is None:
        return "agreement"
    out = outputs[0]
    if isinstance(targets, np.ndarray) and np.issubdtype(targets.dtype, np.integer) and out.ndim >= 2 \
            and targets.shape[1:] == out.shape[2:]:
        return "classification"
    if isinstance(targets, np.ndarray) and targets.shape[1:] == out.shape[1:]:
        return "regression"
    return "unknown"


def _check_classification(out: np.ndarray, y: Any, source: str) -> None:
    if not isinstance(y, np.ndarray) or not np.issubdtype(y.dtype, np.integer):
        raise UsageError(f"{source}: task classification needs integer class ids in y")
    if out.ndim < 2 or y.shape[1:] != out.shape[2:]:
        raise UsageError(f"{source}: y has per-sample shape {y.shape[1:]}; the model's first output "
                         f"{tuple(out.shape[1:])} needs class ids of shape {tuple(out.shape[2:])} for classification")


def _check_regression(out: np.ndarray, y: Any, source: str) -> None:
    if not isinstance(y, np.ndarray) or y.shape[1:] != out.shape[1:]:
        got = (f"named targets ({', '.join('y.' + k for k in y)}) do" if isinstance(y, dict)
               else f"y of per-sample shape {y.shape[1:]} does")
        raise UsageError(f"{source}: {got} not fit the model's first output {tuple(out.shape[1:])}: "
                         "set task.kind (classification, regression, agreement) or give a metric "
                         "(--metric FILE.py:FUNCTION)")


def check_task_fits(task: Task, outputs: list[np.ndarray], labels: list[str], source: str) -> None:
    if task.kind == "classification" and labels and outputs[0].shape[1] < len(labels):
        raise UsageError(f"{source}: the model's first output has {outputs[0].shape[1]} classes but the data's "
                         f"labels go up to {len(labels) - 1}")


def resolution_note(task: Task, n_evaluation: int, budget_pp: float) -> str | None:
    """A classification budget finer than one evaluation sample fails on a single changed
    prediction: worth saying before the build, not after."""
    step = 100.0 / max(n_evaluation, 1)
    if task.kind == "classification" and task.metric == "top1" and budget_pp < step:
        return (f"validate.max_accuracy_drop_pp = {budget_pp} is less than one evaluation sample "
                f"({step:.2f} pp of {n_evaluation}): one changed prediction fails the gate")
    return None


def load_metric(spec: str) -> Callable[..., dict[str, float]]:
    from .inputs.model import import_callable

    try:
        return import_callable(spec, what="metric")
    except UsageError as e:
        raise UsageError(f"task.metric: {e}") from None


def _first_key(fn: Callable[..., Any], outputs: list[np.ndarray], targets: Any, spec: str) -> str:
    try:
        result = fn(outputs, targets)
    except Exception as e:
        from .inputs.model import first_line

        raise UsageError(f"task.metric {spec}: raised {first_line(e)} on the teacher's outputs") from None
    if not isinstance(result, dict) or not result:
        raise UsageError(f"task.metric {spec}: returned {type(result).__name__}; expected a dict of name -> number")
    return str(next(iter(result)))


# -- the metrics themselves ----------------------------------------------------------------

def classification_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    logits = np.asarray(logits)
    pred = logits.argmax(axis=1)
    correct = float((pred == y).mean() * 100.0)
    if logits.ndim > 2:       # dense: per pixel
        classes = logits.shape[1]
        ious = []
        for c in range(classes):
            inter = np.logical_and(pred == c, y == c).sum()
            union = np.logical_or(pred == c, y == c).sum()
            if union:
                ious.append(inter / union)
        return {"pixel_accuracy": correct, "miou": float(np.mean(ious) * 100.0) if ious else 0.0}
    m = {"top1": correct}
    if logits.shape[1] >= 5:
        top5 = np.argsort(-logits, axis=1)[:, :5]
        m["top5"] = float((top5 == y[:, None]).any(axis=1).mean() * 100.0)
    return m


def regression_metrics(out: np.ndarray, y: np.ndarray) -> dict[str, float]:
    err = out.astype(np.float64) - y.astype(np.float64)
    mse = float((err ** 2).mean())
    peak = float(y.max() - y.min()) or 1.0
    return {"mae": float(np.abs(err).mean()), "rmse": math.sqrt(mse),
            "psnr_db": float(10 * math.log10(peak ** 2 / mse)) if mse > 0 else 99.0}


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean() * 100.0)


def agreement_metrics(outputs: list[np.ndarray], teacher: list[np.ndarray]) -> dict[str, Any]:
    """Per output against the teacher's: cosine, SQNR, max/mean abs error (and neighbours
    kept for embeddings); and the worst of each over the outputs."""
    per = []
    for i, (o, t) in enumerate(zip(outputs, teacher)):
        a = o.reshape(len(o), -1).astype(np.float64)
        b = t.reshape(len(t), -1).astype(np.float64)
        noise = float(((a - b) ** 2).sum())
        signal = float((b ** 2).sum())
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        both_zero = (np.linalg.norm(a, axis=1) < 1e-12) & (np.linalg.norm(b, axis=1) < 1e-12)
        cos[both_zero] = 1.0
        entry = {"index": i, "cosine": float(cos.mean()),
                 "sqnr_db": 99.0 if noise == 0 else float(min(99.0, 10 * math.log10(max(signal, 1e-30) / noise))),
                 "max_abs_error": float(np.abs(a - b).max()) if a.size else 0.0,
                 "mean_abs_error": float(np.abs(a - b).mean()) if a.size else 0.0}
        if o.ndim == 2 and len(o) > NEIGHBOURS + 1 and o.shape[1] > 1:
            entry["neighbours_kept"] = neighbours_kept(a, b)
        per.append(entry)
    return {"outputs": per, "cosine_min": min(e["cosine"] for e in per),
            "sqnr_db_min": min(e["sqnr_db"] for e in per),
            "max_abs_error": max(e["max_abs_error"] for e in per)}


def neighbours_kept(a: np.ndarray, b: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Share of each sample's k nearest neighbours (cosine) under the teacher's embedding
    that stay among its k nearest under the student's: what a retrieval app would notice."""
    def knn(e: np.ndarray) -> np.ndarray:
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-12)
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1)[:, :k]

    na, nb = knn(a), knn(b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]) * 100.0)


# -- losses --------------------------------------------------------------------------------

def classification_kd(student: Any, teacher: Any, labels: Any, temperature: float, alpha: float) -> Any:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels).

    KL per sample (per pixel for dense outputs), averaged; T^2 keeps the soft term's gradient
    scale independent of T (Hinton et al., 2015)."""
    import torch.nn.functional as F

    t = temperature
    log_ps = F.log_softmax(student / t, dim=1)
    log_pt = F.log_softmax(teacher / t, dim=1)
    positions = student.numel() // student.shape[1]        # samples x pixels
    kl = F.kl_div(log_ps, log_pt, reduction="sum", log_target=True) / positions
    ce = F.cross_entropy(student, labels) if alpha < 1 and labels is not None else student.new_zeros(())
    if labels is None:
        alpha = 1.0
    return alpha * t * t * kl + (1 - alpha) * ce


def output_loss(kind: str, student: Any, teacher: Any) -> Any:
    import torch.nn.functional as F

    s, t = student.float(), teacher.float()
    if kind == "cosine":
        return (1 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1, eps=1e-8)).mean()
    return F.mse_loss(s, t) / (t.var().detach() + 1e-8)


def metric_file_name(spec: str | None) -> str | None:
    return None if spec is None else Path(spec.rpartition(":")[0]).name + ":" + spec.rpartition(":")[2]
