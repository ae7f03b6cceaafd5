"""Torch helpers shared by the stages that train (distill, prune, lowrank).

What lives here and why: knowledge-distillation losses, feature hints, the seeded
training loop with a validation slice and best-checkpoint selection, BatchNorm
re-estimation, and the two Torch-Pruning calls (uniform width, DepGraph channel
pruning) that both distill and prune make. Stages never import each other; they
import this.

Every check of user input raises UsageError naming the profile field at fault.
"""
from __future__ import annotations

import copy
import difflib
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

import numpy as np
from pydantic import Field

from .arrays import Arrays, as_arrays, flatten_outputs, head, n_samples, take, to_torch
from .config import Section
from .errors import UsageError
from .inputs.data import take_targets


# -- the settings every training stage shares -----------------------------------

class HintConfig(Section):
    """One feature hint: a teacher layer whose output the student layer should match."""

    teacher: str
    student: str
    loss: Literal["mse", "cosine"] = "mse"


class TrainingConfig(Section):
    """Fields of a stage that trains by KD. Stages subclass it and set their own defaults."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, ge=2)            # BatchNorm needs 2+ samples per batch
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "step", "constant"] = "cosine"
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1)      # weight of the soft (KD) term; 1 - alpha on the labels
    val_fraction: float = Field(0.1, gt=0, lt=1)   # carved from training data for model selection
    augment_shift: int = Field(0, ge=0, le=8)      # random translation by up to this many pixels (images)
    seed: int = 0


# -- losses ---------------------------------------------------------------------

def kd_loss(student_logits: Any, teacher_logits: Any, labels: Any, temperature: float, alpha: float) -> Any:
    """Classification KD (see tasks.classification_kd): kept here for the stages' tests."""
    from .tasks import classification_kd

    return classification_kd(student_logits, teacher_logits, labels, temperature, alpha)


def hint_loss(kind: str, student_feat: Any, teacher_feat: Any) -> Any:
    """MSE, or 1 - cosine similarity of the flattened per-sample hidden states."""
    import torch.nn.functional as F

    if kind == "mse":
        return F.mse_loss(student_feat, teacher_feat)
    s = student_feat.flatten(1)
    t = teacher_feat.flatten(1)
    return (1 - F.cosine_similarity(s, t, dim=1, eps=1e-8)).mean()


# -- layers by name ---------------------------------------------------------------

def find_layer(model: Any, name: str, field_name: str, whose: str) -> Any:
    """model's submodule `name`, or UsageError naming the field and the nearest names."""
    modules = dict(model.named_modules())
    modules.pop("", None)
    if name in modules:
        return modules[name]
    near = difflib.get_close_matches(name, list(modules), n=5, cutoff=0.5)
    hint = f"near matches: {', '.join(near)}" if near else f"layers: {', '.join(list(modules)[:12])}"
    raise UsageError(f"{field_name} = {name!r}: no layer of that name in the {whose} ({hint})")


class FeatureTaps:
    """Forward hooks that keep the output of named layers of one model."""

    def __init__(self, model: Any, names: Iterable[str]):
        self.out: dict[str, Any] = {}
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_module: Any, _inp: Any, output: Any) -> None:
            self.out[name] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def make_adapter(student_feat: Any, teacher_feat: Any) -> Any:
    """A learned 1x1 projection from the student's channels to the teacher's (FitNets),
    or None when they already agree. Spatial sizes are matched by pooling in `adapt`."""
    from torch import nn

    s_ch, t_ch = student_feat.shape[1], teacher_feat.shape[1]
    if s_ch == t_ch:
        return None
    if student_feat.ndim == 4:
        return nn.Conv2d(s_ch, t_ch, kernel_size=1, bias=False)
    return nn.Linear(s_ch, t_ch, bias=False)


def adapt(student_feat: Any, teacher_feat: Any, adapter: Any) -> Any:
    import torch.nn.functional as F

    s = adapter(student_feat) if adapter is not None else student_feat
    if s.ndim == 4 and s.shape[-2:] != teacher_feat.shape[-2:]:
        s = F.adaptive_avg_pool2d(s, teacher_feat.shape[-2:])
    return s


# -- data -------------------------------------------------------------------------

def random_shift(x: Any, max_shift: int, gen: Any) -> Any:
    """Translate each image of an (N, C, H, W) batch by its own random offset of up to
    max_shift pixels, filling the border with the edge pixels (the background)."""
    import torch
    import torch.nn.functional as F

    if max_shift == 0 or x.ndim != 4:
        return x
    n, c, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


@dataclass(frozen=True)
class TrainData:
    x: Arrays
    y: Any                 # targets (class ids, arrays, a dict of arrays) or None
    val_x: Arrays
    val_y: Any

    def __len__(self) -> int:
        return n_samples(self.x)


def training_data(data: Any, cfg: TrainingConfig, section: str, task: Any = None) -> TrainData:
    """The training split, checked, with a seeded validation slice carved off (stratified
    by class for classification).

    The evaluation split never enters: it is a different array (ctx.data.evaluation)."""
    train = getattr(data, "train", None)
    if train is None or len(train) == 0:
        skip = f"set {section}.enabled = false" + ("" if section == "distill" else
                                                        f" (or {section}.epochs = 0: no fine-tuning)")
        raise UsageError(f"{section}: needs training data and there is none: give --train-data FILE.npz "
                         f"(inputs as in --data; never the evaluation data) or {skip}")
    classification = task is None or task.kind == "classification"
    y = train.y
    rng = np.random.default_rng(cfg.seed)
    if classification:
        if not isinstance(y, np.ndarray) or not np.issubdtype(y.dtype, np.integer):
            raise UsageError(f"--train-data: {section} learns a classification task and needs integer class ids "
                             f"in y")
        n_classes = len(data.labels)
        if (y >= n_classes).any():
            bad = int(y[y >= n_classes][0])
            raise UsageError(f"--train-data: label {bad} is not one of the {n_classes} labels of the data")
        present = set(np.unique(y).tolist())
        missing = sorted(set(range(n_classes)) - present) if y.ndim == 1 else []
        if missing:
            names = ", ".join(data.labels[i] for i in missing[:10])
            raise UsageError(f"--train-data: class(es) {names} have no training samples; every label needs some "
                             f"for {section} to learn it")
    val_idx = []
    if classification and y.ndim == 1:
        for c in range(len(data.labels)):
            idx = np.flatnonzero(y == c)
            k = int(round(len(idx) * cfg.val_fraction))
            if len(idx) > 1:
                k = min(max(k, 1), len(idx) - 1)   # every class in both parts when it has 2+ samples
            else:
                k = 0
            val_idx.extend(rng.permutation(idx)[:k].tolist())
    else:
        n = len(train)
        k = min(max(int(round(n * cfg.val_fraction)), 1), n - 1)
        val_idx = rng.permutation(n)[:k].tolist()
    val = np.zeros(len(train), bool)
    val[val_idx] = True
    n_train = int((~val).sum())
    if n_train < cfg.batch_size:
        raise UsageError(f"{section}.batch_size = {cfg.batch_size}: only {n_train} training samples remain after "
                         f"the validation slice ({section}.val_fraction = {cfg.val_fraction}); give more with "
                         f"--train-data or lower {section}.batch_size")
    keep, held = np.flatnonzero(~val), np.flatnonzero(val)
    return TrainData(take(train.x, keep), take_targets(y, keep), take(train.x, held), take_targets(y, held))


# -- the loop ---------------------------------------------------------------------

@dataclass
class Hint:
    teacher: str
    student: str
    loss: str
    adapter: Any = None


@dataclass
class TrainReport:
    epochs: int = 0
    best_epoch: int = 0
    best_val_accuracy: float | None = None     # classification: accuracy; else minus the KD loss
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch, "val_accuracy": self.best_val_accuracy,
                "train_seconds": round(self.seconds, 2), "history": self.history}


def _optimizer(params: list, cfg: TrainingConfig) -> Any:
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(opt: Any, cfg: TrainingConfig, steps: int) -> Any:
    from torch.optim import lr_scheduler as ls

    if cfg.schedule == "cosine":
        return ls.CosineAnnealingLR(opt, T_max=steps, eta_min=cfg.lr * 0.01)
    if cfg.schedule == "onecycle":
        return ls.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.2)
    if cfg.schedule == "step":
        return ls.MultiStepLR(opt, milestones=[int(steps * 0.5), int(steps * 0.75)], gamma=0.1)
    return ls.LambdaLR(opt, lambda _: 1.0)


def _outputs(model: Any, x: Arrays, batch: int = 512) -> list[Any]:
    """The model's outputs on every sample, as a list of tensors (one per output)."""
    import torch

    model.eval()
    chunks = []
    with torch.no_grad():
        for i in range(0, n_samples(x), batch):
            chunks.append(flatten_outputs(model(*to_torch(take(x, slice(i, i + batch))))))
    return [torch.cat(parts) for parts in zip(*chunks)]


def teacher_logits(teacher: Any, x: Arrays) -> list[Any]:
    """The teacher's outputs, once: training uses no augmentation, so they never change."""
    return [o.float() if o.is_floating_point() else o for o in _outputs(teacher, x)]


def _targets_torch(y: Any) -> Any:
    import torch

    if y is None:
        return None
    if isinstance(y, dict):
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in y.items()}
    return torch.from_numpy(np.ascontiguousarray(y))


def _task(task: Any) -> Any:
    """The classification task when a caller (a stage's test) gives none."""
    if task is not None:
        return task
    from .tasks import classification

    return classification()


def train_kd(student: Any, teacher: Any, data: TrainData, cfg: TrainingConfig, *,
             hints: list[Hint] | None = None, hint_weight: float = 0.0, teacher_out: Any = None,
             progress: Any = None, label: str = "train", task: Any = None) -> TrainReport:
    """Train `student` in place by KD from `teacher` with the task's loss; keep the weights of
    the epoch with the best validation score (classification: accuracy, ties broken by the
    lower loss; other tasks: the lower loss). Seeded: the same inputs give the same weights."""
    import torch

    task = _task(task)
    report = TrainReport(epochs=cfg.epochs)
    if cfg.epochs == 0:
        return report
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    xs = to_torch(data.x)
    y = _targets_torch(data.y)
    augment = cfg.augment_shift > 0 and len(xs) == 1 and xs[0].ndim == 4 and xs[0].is_floating_point()
    # Without augmentation the teacher's outputs never change: computed once. With it, the
    # teacher sees the same shifted images as the student (consistent teaching).
    t_all = None if augment else (teacher_out if teacher_out is not None else teacher_logits(teacher, data.x))
    val_t = teacher_logits(teacher, data.val_x)
    val_y = _targets_torch(data.val_y)
    hints = hints or []
    s_taps = FeatureTaps(student, [h.student for h in hints]) if hints else None
    t_taps = FeatureTaps(teacher, [h.teacher for h in hints]) if hints else None
    params = list(student.parameters()) + [p for h in hints if h.adapter is not None for p in h.adapter.parameters()]
    opt = _optimizer(params, cfg)
    steps_per_epoch = n_samples(data.x) // cfg.batch_size     # drop_last: BatchNorm never sees a 1-sample batch
    sched = _scheduler(opt, cfg, cfg.epochs * steps_per_epoch)
    teacher.eval()
    best: tuple[float, float] | None = None
    best_state = None
    t0 = time.perf_counter()
    bar = epoch_bar(progress, label, cfg.epochs)
    # Denormal floats (tiny gradients, weights decayed towards zero) make CPU math up to 10x
    # slower; flushing them to zero changes nothing measurable in what is learned.
    torch.set_flush_denormal(True)
    try:
        for epoch in range(1, cfg.epochs + 1):
            student.train()
            for h in hints:
                h.adapter is not None and h.adapter.train()
            order = torch.randperm(n_samples(data.x), generator=gen)
            total, n = 0.0, 0
            for b in range(steps_per_epoch):
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                xb = tuple(x[idx] for x in xs)
                if augment:
                    xb = (random_shift(xb[0], cfg.augment_shift, gen),)
                if augment or hints:
                    with torch.no_grad():
                        tb = flatten_outputs(teacher(*xb))
                else:
                    tb = [t[idx] for t in t_all]
                out = flatten_outputs(student(*xb))
                loss = task.kd_loss(out, tb, take_targets(y, idx), cfg.temperature, cfg.alpha)
                if hints:
                    hl = sum(hint_loss(h.loss, adapt(s_taps.out[h.student], t_taps.out[h.teacher], h.adapter),
                                       t_taps.out[h.teacher]) for h in hints)
                    loss = loss + hint_weight * hl / len(hints)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                n += len(idx)
            val_out = _outputs(student, data.val_x)
            score, tie = task.selection_score(val_out, val_t, val_y, cfg.temperature, cfg.alpha)
            val_loss = float(task.kd_loss(val_out, val_t, val_y, cfg.temperature, cfg.alpha))
            report.history.append({"epoch": epoch, "loss": round(total / max(n, 1), 5),
                                   "val_accuracy": round(score, 3), "val_loss": round(val_loss, 5)})
            if best is None or (score, tie) > best:
                best = (score, tie)
                best_state = copy.deepcopy(student.state_dict())
                report.best_epoch, report.best_val_accuracy = epoch, round(score, 3)
            bar(loss=total / max(n, 1), val_acc=score)
    finally:
        torch.set_flush_denormal(False)     # torch's default; there is no getter to restore from
        bar.close()
        for taps in (s_taps, t_taps):
            taps is not None and taps.close()
    student.load_state_dict(best_state)
    student.eval()
    report.seconds = time.perf_counter() - t0
    return report


# -- progress ---------------------------------------------------------------------

class epoch_bar:
    """One tick per epoch with loss and validation accuracy.

    Through ctx.progress when the runner set one (progress(description, total) returns
    advance(n, **fields)); else a rich bar that is quiet when stdout is not a terminal."""

    def __init__(self, progress: Any, label: str, total: int):
        self._rich = None
        if progress is not None:
            self._advance = progress(label, total)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._rich = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("loss {task.fields[loss]}  val acc {task.fields[val_acc]}"),
                              TimeElapsedColumn(), disable=not sys.stdout.isatty(), transient=True)
        self._task = self._rich.add_task(label, total=total, loss="-", val_acc="-")
        try:
            self._rich.start()
        except Exception:       # rich.errors.LiveError: another live display (a spinner) owns the terminal
            self._rich = None
            self._advance = lambda n, **fields: None

    def __call__(self, *, loss: float, val_acc: float) -> None:
        if self._rich is not None:
            self._rich.update(self._task, advance=1, loss=f"{loss:.4f}", val_acc=f"{val_acc:.2f}%")
            return
        try:
            self._advance(1, loss=round(loss, 4), val_acc=round(val_acc, 2))
        except TypeError:          # an advance(n) that takes no fields
            self._advance(1)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()


# -- BatchNorm --------------------------------------------------------------------

def reestimate_bn(model: Any, x: Arrays, batch_size: int = 128, max_samples: int = 2048) -> int:
    """Recompute BatchNorm running statistics from scratch on `x` (a cumulative mean over
    the batches, not an EMA): after pruning, the old statistics describe channels
    that are gone or inputs that changed. Returns how many BN layers were updated."""
    import torch
    from torch import nn

    x = as_arrays(x)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        xs = head(x, max_samples)
        for i in range(0, n_samples(xs), batch_size):
            xb = take(xs, slice(i, i + batch_size))
            if n_samples(xb) > 1:
                model(*to_torch(xb))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.eval()
    return len(bns)


# -- Torch-Pruning ----------------------------------------------------------------

def output_layers(model: Any, example: Any) -> list[Any]:
    """The layer(s) that produce the model's outputs (the classifier): never pruned, so the
    number of outputs stays the teacher's. Found by running the model: the last Conv or
    Linear executed whose output width is the model's, or whose output holds as many values
    per sample as the model's output (a head reshaped: (N, 1, 4, 4) scores -> (N, 16))."""
    import torch
    from torch import nn

    seen: list[tuple[Any, int | None]] = []

    def hook(mod: Any, _i: Any, o: Any) -> None:
        seen.append((mod, int(o[0].numel()) if isinstance(o, torch.Tensor) and o.ndim > 0 else None))

    hooks = [m.register_forward_hook(hook)
             for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    try:
        model.eval()
        with torch.no_grad():
            outs = flatten_outputs(model(*_args(example)))
    finally:
        for h in hooks:
            h.remove()
    # Every output's producer: the last Conv/Linear run whose width is that output's last or
    # channel dimension (a head's boxes come out of a Linear of width A*4, reshaped), or whose
    # per-sample output has as many values (a 1-channel score map flattened to anchors).
    found: list[Any] = []
    for out in outs:
        per_sample = int(out[0].numel()) if out.ndim else None
        widths = {out.shape[-1], out.shape[1] if out.ndim > 1 else None, per_sample}
        for m, numel in reversed(seen):
            if getattr(m, "out_features", getattr(m, "out_channels", None)) in widths or \
                    (numel is not None and numel == per_sample):
                if m not in found:
                    found.append(m)
                break
    return found or [m for m, _ in seen[-1:]]


def _args(example: Any) -> tuple[Any, ...]:
    return example if isinstance(example, tuple) else (example,)


def importance(criterion: str) -> Any:
    """Torch-Pruning's criterion, with NaN scores read as 0: a group whose scores are all
    zero (no gradient reaches it, e.g. behind a zero-initialised BatchNorm) normalizes
    to 0/0, and one NaN would stop global pruning from cutting anything."""
    import torch
    import torch_pruning as tp

    inner = (tp.importance.GroupTaylorImportance() if criterion == "taylor"
             else tp.importance.GroupMagnitudeImportance(p=1 if criterion == "l1" else 2))

    class Finite(tp.importance.Importance):
        def __call__(self, group: Any) -> Any:
            scores = inner(group)
            return None if scores is None else torch.nan_to_num(scores, nan=0.0)

    return Finite()


def check_width(model: Any, example: Any, width: float, field_name: str) -> None:
    """UsageError when keeping `width` of a layer's channels leaves it none."""
    from torch import nn

    ignored = set(output_layers(model, example))
    for att in find_attention(model, example):
        ignored.update(att.layers(model))       # pruned by head dims (>= 1 each) or kept whole
    for name, m in model.named_modules():
        if m in ignored or not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels:
            continue    # depthwise: follows its producer
        ch = m.out_channels if hasattr(m, "out_channels") else m.out_features
        if int(ch * width) < 1:
            raise UsageError(f"{field_name} = {width}: leaves layer {name!r} ({ch} channels) with no channels "
                             f"(needs at least {1 / ch:.3g})")


# -- attention ----------------------------------------------------------------------
#
# Torch-Pruning prunes attention when told which Linear layers produce heads
# (num_heads={qkv: heads}): it removes the same dimensions from every head, so q, k and v
# stay consistent. The module's forward still reads its head dimension from an attribute
# (timm's head_dim, a BERT-style head_size), which Torch-Pruning's ViT example updates after
# pruning; we do the same for the usual names. Two things defeat it in models as they come:
# a forward that reshapes the heads back to its *input* width (x.reshape(n, t, d) with d from
# x.shape: Torch-Pruning's own example replaces timm's forward for this reason), and a fused
# qkv indexed as qkv[0], qkv[1], qkv[2] (Torch-Pruning follows torch.unbind, not indexing).
# So attention is pruned by heads only when a trial on a copy runs and keeps the output
# shapes; otherwise its projections are kept whole (and with them the hidden size they read
# and write): MLP widths and conv channels are still pruned, and the stage says so.

HEAD_COUNT_ATTRS = ("num_heads", "heads", "n_heads", "num_attention_heads", "n_head", "nhead")
HEAD_DIM_ATTRS = ("head_dim", "dh", "d_head", "head_size", "attention_head_size", "dim_head", "d_k",
                  "all_head_size", "inner_dim")


@dataclass
class Attention:
    """One attention module found by running the model: its head count and the Linear layers
    that make the heads (q, k, v or a fused qkv: they read the module's input) and that read
    them back (the output projection), by name, so that a copy of the model resolves them."""

    name: str
    heads: int
    projections: list[str]
    outputs: list[str]
    width: int = 0          # out_features of the first projection, now

    def module(self, model: Any) -> Any:
        return model.get_submodule(self.name)

    def layers(self, model: Any) -> list[Any]:
        return [model.get_submodule(n) for n in self.projections + self.outputs]

    def update_head_dims(self, model: Any) -> None:
        """After Torch-Pruning removed head dimensions: scale the module's head-size attributes
        as its projections shrank (heads are kept; their dimensions are pruned)."""
        new = model.get_submodule(self.projections[0]).out_features
        if new == self.width:
            return
        mod = self.module(model)
        for attr in HEAD_DIM_ATTRS:
            value = getattr(mod, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                if (value * new) % self.width:
                    raise RuntimeError(f"head dimension attribute {self.name}.{attr} = {value} does not scale to "
                                       f"{new} of {self.width} projection channels")
                setattr(mod, attr, value * new // self.width)
        self.width = new


def find_attention(model: Any, example: Any) -> list[Attention]:
    """Attention modules: a module with a head-count attribute (num_heads, heads, ...) that owns
    Linear layers; the ones reading its input make the heads, the ones reading its output (or
    the rest of its own Linears) put them back together. nn.MultiheadAttention is left to
    Torch-Pruning, which prunes it natively."""
    import torch
    from torch import nn

    cands: dict[str, tuple[Any, int]] = {}
    for name, m in model.named_modules():
        if not name or isinstance(m, nn.MultiheadAttention):
            continue
        for attr in HEAD_COUNT_ATTRS:
            v = getattr(m, attr, None)
            if isinstance(v, int) and not isinstance(v, bool) and v >= 1 and \
                    any(isinstance(c, nn.Linear) for c in m.modules()):
                cands[name] = (m, v)
                break
    # the innermost module that says how many heads: a layer holding an attention may say it too
    cands = {n: c for n, c in cands.items() if not any(o != n and o.startswith(n + ".") for o in cands)}
    if not cands:
        return []
    ins: dict[str, list[Any]] = {n: [] for n in cands}
    outs: dict[str, list[Any]] = {n: [] for n in cands}
    calls: list[tuple[str, Any]] = []           # (linear name, its input tensor), in order

    def tensors(obj: Any) -> list[Any]:
        if isinstance(obj, torch.Tensor):
            return [obj]
        if isinstance(obj, dict):
            obj = list(obj.values())
        if isinstance(obj, (tuple, list)):
            return [t for o in obj for t in tensors(o)]
        return []

    hooks = []
    for n, (m, _) in cands.items():
        hooks.append(m.register_forward_pre_hook(
            lambda mod, a, kw, n=n: ins[n].extend(tensors(a) + tensors(kw)), with_kwargs=True))
        hooks.append(m.register_forward_hook(lambda mod, a, o, n=n: outs[n].extend(tensors(o))))
    for ln, lm in model.named_modules():
        if isinstance(lm, nn.Linear):
            hooks.append(lm.register_forward_pre_hook(lambda mod, a, ln=ln: calls.append((ln, a[0]))))
    try:
        model.eval()
        with torch.no_grad():
            model(*_args(example))
    finally:
        for h in hooks:
            h.remove()
    found = []
    for n, (m, heads) in cands.items():
        inside = {f"{n}.{c}" for c, lm in m.named_modules() if c and isinstance(lm, nn.Linear)}
        proj, back = [], []
        for ln, x in calls:
            if ln in inside and any(x is t for t in ins[n]):
                proj.append(ln)
            elif ln in inside or any(x is t for t in outs[n]):
                back.append(ln)
        proj = list(dict.fromkeys(proj))
        back = [b for b in dict.fromkeys(back) if b not in proj]
        if proj:
            found.append(Attention(n, heads, proj, back, model.get_submodule(proj[0]).out_features))
    return found


class ChannelPruner:
    """Torch-Pruning's pruner, and what was decided for attention: `step()` prunes and then
    updates the head-size attributes of the attention modules pruned by heads."""

    def __init__(self, model: Any, pruner: Any, attention: list[Attention], mode: str, reason: str = ""):
        self.model, self.pruner, self.attention, self.mode, self.reason = model, pruner, attention, mode, reason

    @property
    def current_step(self) -> int:
        return self.pruner.current_step

    def step(self) -> None:
        self.pruner.step()
        if self.mode == "heads":
            for att in self.attention:
                att.update_head_dims(self.model)

    def notes(self, section: str) -> list[str]:
        """One line on what happened to attention (none without attention)."""
        if not self.attention:
            return []
        names = ", ".join(a.name for a in self.attention[:4]) + (", ..." if len(self.attention) > 4 else "")
        if self.mode == "heads":
            line = (f"{section}: attention {names}: head dimensions pruned through Torch-Pruning's num_heads "
                    f"(heads kept, head-size attributes updated)")
        else:
            line = (f"{section}: attention {names}: projections kept whole, so the hidden size they read and write "
                    f"is kept too (Torch-Pruning cannot prune their heads here: {self.reason}); MLP widths and conv "
                    f"channels are pruned")
        return [line]

    def describe(self) -> dict[str, Any]:
        return {"attention": [{"layer": a.name, "heads": a.heads, "projections": a.projections,
                               "outputs": a.outputs} for a in self.attention],
                "attention_pruning": None if not self.attention else self.mode,
                **({"attention_kept_whole_because": self.reason} if self.mode == "whole" else {})}


def _tp_pruner(model: Any, example: Any, attention: list[Attention], mode: str, *, ratio: float, criterion: str,
               global_pruning: bool, steps: int, max_layer_ratio: float, round_to: int | None) -> Any:
    import torch_pruning as tp

    ignored = output_layers(model, example)
    num_heads = {}
    for att in attention:
        if mode == "heads":
            num_heads.update({model.get_submodule(p): att.heads for p in att.projections})
        else:
            ignored += [m for m in att.layers(model) if m not in ignored]
    return tp.pruner.BasePruner(
        model, _args(example) if len(_args(example)) > 1 else _args(example)[0], importance=importance(criterion),
        global_pruning=global_pruning,
        pruning_ratio=ratio, iterative_steps=steps, max_pruning_ratio=max_layer_ratio,
        ignored_layers=ignored, round_to=round_to, unwrapped_parameters=unwrapped_parameters(model) or None,
        num_heads=num_heads, prune_head_dims=True, prune_num_heads=False)


def unwrapped_parameters(model: Any) -> list[tuple[Any, int]]:
    """Parameters held by no layer Torch-Pruning knows (a class token, position embeddings), with
    the dimension that follows the channels: the last one larger than 1 ((1, T, D) -> D), as
    Torch-Pruning assumes, given explicitly as its ViT examples do."""
    from torch import nn

    layers = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
              nn.modules.instancenorm._InstanceNorm, nn.Embedding, nn.PReLU, nn.MultiheadAttention, nn.RNNBase)
    out = []
    for m in model.modules():
        if isinstance(m, layers):
            continue
        for p in m.parameters(recurse=False):
            dims = [i for i, n in enumerate(p.shape) if n > 1]
            if dims:
                out.append((p, dims[-1]))
    return out


def channel_pruner(model: Any, example: Any, *, ratio: float, criterion: str = "l2", global_pruning: bool = False,
                   steps: int = 1, max_layer_ratio: float = 0.9, round_to: int | None = None) -> ChannelPruner:
    """A Torch-Pruning (DepGraph) pruner over every Conv/Linear except the classifier.

    Attention (see find_attention) is pruned by head dimensions when a trial on a copy of the
    model, through every step, runs and keeps the output shapes; else its projections are kept
    whole. A model without attention gets exactly Torch-Pruning's plain pruner."""
    kw = {"ratio": ratio, "criterion": criterion, "global_pruning": global_pruning, "steps": steps,
          "max_layer_ratio": max_layer_ratio, "round_to": round_to}
    attention = find_attention(model, example)
    mode, reason = "heads", ""
    if attention:
        mode, reason = _trial_heads(model, example, attention, kw)
    fresh = [Attention(a.name, a.heads, a.projections, a.outputs, a.width) for a in attention]
    return ChannelPruner(model, _tp_pruner(model, example, fresh, mode, **kw), fresh, mode, reason)


def _trial_heads(model: Any, example: Any, attention: list[Attention], kw: dict[str, Any]) -> tuple[str, str]:
    """("heads", "") when pruning by heads works on a copy at every step, else ("whole", why)."""
    trial = copy.deepcopy(model)
    atts = [Attention(a.name, a.heads, a.projections, a.outputs, a.width) for a in attention]
    try:
        shapes = output_shapes(trial, example)
        pruner = ChannelPruner(trial, _tp_pruner(trial, example, atts, "heads", **kw), atts, "heads")
        for _ in range(kw["steps"]):
            pruner.step()
            got = output_shapes(trial, example)
            if got != shapes:
                return "whole", f"the outputs would have shapes {got}, not {shapes}"
    except Exception as e:      # noqa: BLE001 - whatever Torch-Pruning or the forward raised: keep attention whole
        return "whole", first_line(e)
    finally:
        trial.zero_grad(set_to_none=True)
    return "heads", ""


def taylor_gradients(model: Any, x: Arrays, y: np.ndarray, batch_size: int = 128, batches: int = 4) -> None:
    """Accumulate loss gradients for Taylor importance (|w * dL/dw|): cross-entropy on the
    first output, so class ids are needed (prune.check says so up front)."""
    import torch
    import torch.nn.functional as F

    x = as_arrays(x)
    model.eval()
    model.zero_grad()
    for i in range(0, min(n_samples(x), batch_size * batches), batch_size):
        xb = to_torch(take(x, slice(i, i + batch_size)))
        out = flatten_outputs(model(*xb))[0]
        F.cross_entropy(out, torch.from_numpy(y[i:i + batch_size])).backward()


def derive_by_width(teacher: Any, example: Any, width: float, field_name: str, criterion: str = "l2",
                    notes: list[str] | None = None) -> Any:
    """A copy of the teacher with `width` of every layer's channels kept (uniform structured
    pruning through the dependency graph, least important channels removed first). What was
    done to attention is appended to `notes` when given."""
    check_width(teacher, example, width, field_name)
    student = copy.deepcopy(teacher)
    section = field_name.split(".")[0]
    if width < 1:
        shapes = output_shapes(teacher, example)
        with pruning_guard(student, section):
            pruner = channel_pruner(student, example, ratio=1 - width, criterion=criterion, max_layer_ratio=1.0)
            pruner.step()
        check_pruned(student, example, shapes, section)
        if notes is not None:
            notes.extend(pruner.notes(section))
    student.eval()
    return student


def output_shapes(model: Any, example: Any) -> list[tuple[int, ...]]:
    import torch

    model.eval()
    with torch.no_grad():
        return [tuple(o.shape) for o in flatten_outputs(model(*_args(example)))]


class pruning_guard:
    """Torch-Pruning failing on a graph it cannot follow becomes exit 2 naming the layer it
    was at (when it says) and the setting that switches the stage off, not a traceback."""

    def __init__(self, model: Any, section: str):
        self.model, self.section = model, section

    def __enter__(self) -> "pruning_guard":
        return self

    def __exit__(self, kind: Any, e: Any, tb: Any) -> bool:
        if e is None or isinstance(e, (UsageError, KeyboardInterrupt)):
            return False
        if not isinstance(e, Exception):
            return False
        raise UsageError(f"{self.section}: Torch-Pruning cannot prune this model ({first_line(e)}); "
                         f"{_layer_hint(self.model, e, tb)}switch the stage off with --set {self.section}.enabled=false") \
            from None


def _layer_hint(model: Any, e: BaseException, tb: Any = None) -> str:
    """'at layer NAME; ': the layer named in the error, else the innermost layer Torch-Pruning's
    frames were working on when it failed (a local `module`, `layer` or pruning `group`)."""
    names = {id(m): n for n, m in model.named_modules() if n}
    text = str(e)
    for n in sorted(names.values(), key=len, reverse=True):
        if n in text:
            return f"at layer {n!r}; "
    found = None
    while tb is not None:
        loc = tb.tb_frame.f_locals
        for key in ("module", "layer", "group", "root"):
            v = loc.get(key)
            try:
                if key == "group" and v is not None and not isinstance(v, (list, tuple, dict)) and len(v):
                    v = v[0].dep.target.module
            except Exception:       # noqa: BLE001 - a local of that name that is no pruning group
                v = None
            if id(v) in names:
                found = names[id(v)]
                break
        tb = tb.tb_next
    if found is not None:
        return f"at layer {found!r} ({type(model.get_submodule(found)).__name__}); "
    return ""


def check_pruned(model: Any, example: Any, shapes: list[tuple[int, ...]], section: str) -> None:
    """The pruned model must still run and give the teacher's output shapes: a dependency the
    graph could not see (a head count baked into a reshape, say) would otherwise ship a
    broken model. Names the last layer entered when the forward fails."""
    import torch

    entered: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=name: entered.append(n))
             for name, m in model.named_modules() if name]
    model.eval()
    try:
        with torch.no_grad():
            got = [tuple(o.shape) for o in flatten_outputs(model(*_args(example)))]
    except Exception as e:
        layer = entered[-1] if entered else "?"
        kind = type(model.get_submodule(layer)).__name__ if entered else "?"
        raise UsageError(f"{section}: after channel pruning, layer {layer!r} ({kind}) fails ({first_line(e)}): "
                         f"Torch-Pruning could not follow a dependency there; switch the stage off with "
                         f"--set {section}.enabled=false") from None
    finally:
        for h in hooks:
            h.remove()
    if got != shapes:
        raise UsageError(f"{section}: after channel pruning the outputs have shapes {got}, not {shapes}; switch "
                         f"the stage off with --set {section}.enabled=false")


# -- metrics ----------------------------------------------------------------------

def reference_outputs(results: dict[str, Any]) -> list[np.ndarray] | None:
    """The FP32 teacher's outputs on the evaluation split, saved by the reference stage."""
    from .arrays import load_named

    ref = results.get("reference")
    path = ref.extras.get("teacher_outputs") if ref is not None else None
    return list(load_named(path.path).values()) if path is not None else None


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def model_metrics(model: Any, data: Any, teacher_out: list[np.ndarray] | None = None, task: Any = None) -> dict[str, Any]:
    """What every compression stage records: params, MACs (Torch-Pruning's counter), FP32
    size, the task's metric on the evaluation split (and agreement with the teacher)."""
    from .arrays import predict
    from .torchmodel import count_params_macs, fp32_size_bytes

    task = _task(task)
    out = predict(model, data.evaluation.x)
    params, macs = count_params_macs(model, data.example(1))
    measured = task.evaluate(out, data.evaluation.y, teacher_out)
    return {"params": params, "macs": macs, "size_bytes": fp32_size_bytes(model), "metric": task.metric,
            "accuracy": measured.get(task.metric), "task_metrics": measured,
            **{k: measured[k] for k in ("top1_agreement", "cosine_similarity", "sqnr_db") if k in measured}}


def compressed_size_bytes(model: Any) -> int:
    """Size of the FP32 weights once deflated, as in a zip: what unstructured zeros buy."""
    import io
    import zlib

    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(zlib.compress(buf.getvalue(), 6))
