"""Brief, seeded training of each zoo model on its "train" split.

    train(name, data, seconds_budget=5.0, seed=0) -> state_dict
    fit(name, data, seconds_budget=5.0, seed=0)   -> (model in eval mode, info dict)

``data`` is either the dict from ``data.make_splits`` ({"data": ..., "train": ...}; the "train"
split is used) or one split's arrays directly. Training runs a fixed number of epochs per
model (so the result is the same run to run on one machine), stopping early only if
``seconds_budget`` runs out. Losses: classification CE (mobilenet, audio, vit); detector BCE on
the anchor logits + L1 on the true anchor's box; segmenter per-pixel CE; the text encoder is
not trained (agreement task; its seeded random init gives non-degenerate embeddings: mean
pairwise cosine between different sentences 0.28, per-dimension std 0.33).

Measured with tests/zoo/check_zoo.py (torch 2.13 CPU, torch.set_num_threads(1), 384 training
samples, evaluated on the 192-sample "data" split; the 2-core machine was shared, load ~8, so
wall seconds were ~2.5x the CPU seconds; the budget counts process CPU time, so results do not
depend on machine load):

    model         params  epochs  CPU s  wall s  metric on the "data" split
    mobilenet      28480     4      4.5    9.5   accuracy 0.990             (chance 0.25)
    text_encoder   19712     -      0.0    0.0   untrained; mean pairwise cosine 0.28, dim std 0.33
    audio           4611     3      1.6    3.4   accuracy 1.000             (chance 0.33)
    detector       25717    12      4.1    8.4   iou 0.699, hit_rate 0.911, anchor accuracy 0.786
    segmenter      30138     3      3.2    6.6   fg IoU 0.914, mIoU 0.949, pixel accuracy 0.987
    vit            20964     7      3.0    6.3   accuracy 0.938             (chance 0.25)

All stay under the 5 s CPU budget with their fixed epoch counts, so the budget never cuts
training short on a machine at least this fast (two runs gave identical numbers). The budget is
checked after each epoch; mobilenet (~1.1 CPU s an epoch) would lose its 4th epoch on a machine
1.5x slower than this one: pass a larger seconds_budget there if exact results matter.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from . import models

# epochs, learning rate, batch size per model
SCHEDULE = {
    "mobilenet": (4, 6e-3, 32),
    "audio": (3, 5e-3, 32),
    "vit": (7, 5e-3, 32),
    "detector": (12, 4e-3, 32),
    "segmenter": (3, 8e-3, 32),
}


def _split(data: dict) -> dict:
    return data["train"] if "train" in data and isinstance(data["train"], dict) else data


def _loss(name: str, out, y: dict) -> torch.Tensor:
    if name == "detector":
        scores, boxes = out
        anchor = y["anchor"]
        target = F.one_hot(anchor, scores.shape[1]).to(scores.dtype)
        bce = F.binary_cross_entropy_with_logits(scores, target)
        chosen = boxes[torch.arange(boxes.shape[0]), anchor]                   # (N, 4)
        return bce + 5.0 * F.l1_loss(chosen, y["boxes"])
    return F.cross_entropy(out, y["y"])                                        # classification / per-pixel


def fit(name: str, data: dict, seconds_budget: float = 5.0, seed: int = 0, model=None):
    """Train zoo model ``name`` (or the given ``model``) and return (model.eval(), info)."""
    split = _split(data)
    model = models.make(name) if model is None else model
    start, cpu0 = time.perf_counter(), time.process_time()
    info = {"name": name, "epochs": 0, "steps": 0, "seconds": 0.0, "cpu_seconds": 0.0, "final_loss": None}
    if name == "text_encoder":                                                 # agreement: no training
        return model.eval(), info
    epochs, lr, batch = SCHEDULE[name]
    xs = [torch.from_numpy(np.ascontiguousarray(a)) for a in
          ([split["x"]] if "x" in split else [v for k, v in split.items() if k.startswith("x.")])]
    if name == "detector":
        ys = {"anchor": torch.from_numpy(split["y.anchor"]), "boxes": torch.from_numpy(split["y.boxes"])}
    else:
        ys = {"y": torch.from_numpy(split["y"])}
    n = xs[0].shape[0]
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        steps_total = epochs * ((n + batch - 1) // batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps_total, pct_start=0.2)
        model.train()
        for epoch in range(epochs):
            order = torch.randperm(n, generator=g)
            total = 0.0
            for i in range(0, n, batch):
                idx = order[i:i + batch]
                out = model(*[x[idx] for x in xs])
                loss = _loss(name, out, {k: v[idx] for k, v in ys.items()})
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                info["steps"] += 1
            info["epochs"] = epoch + 1
            info["final_loss"] = round(total / n, 4)
            if time.process_time() - cpu0 > seconds_budget:
                break
    info["seconds"] = round(time.perf_counter() - start, 2)
    info["cpu_seconds"] = round(time.process_time() - cpu0, 2)
    return model.eval(), info


def train(name: str, data: dict, seconds_budget: float = 5.0, seed: int = 0) -> dict:
    """Train zoo model ``name`` briefly on its train split; return its state_dict."""
    model, _ = fit(name, data, seconds_budget, seed)
    return model.state_dict()


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model, split: dict, batch: int = 64) -> list[np.ndarray]:
    """Run ``model`` on a split's inputs; returns the outputs as a list of arrays."""
    xs = [torch.from_numpy(np.ascontiguousarray(a)) for a in
          ([split["x"]] if "x" in split else [v for k, v in split.items() if k.startswith("x.")])]
    outs: list[list[np.ndarray]] = []
    for i in range(0, xs[0].shape[0], batch):
        o = model(*[x[i:i + batch] for x in xs])
        o = o if isinstance(o, (tuple, list)) else (o,)
        outs.append([t.numpy() for t in o])
    return [np.concatenate(parts) for parts in zip(*outs)]


def evaluate(name: str, model, split: dict) -> dict[str, float]:
    """The metric each zoo model is judged by on ``split``."""
    from . import metrics
    outs = predict(model.eval(), split)
    if name == "detector":
        return metrics.box_iou(outs, {"boxes": split["y.boxes"], "anchor": split["y.anchor"]})
    if name == "segmenter":
        return metrics.pixel_iou(outs, split["y"])
    if name == "text_encoder":
        return metrics.embedding_spread(outs)
    return {"accuracy": float((outs[0].argmax(1) == split["y"]).mean())}
