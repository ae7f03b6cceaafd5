"""User metric functions for the zoo: what an app team would pass as a custom metric.

Each takes the model outputs as a list of arrays (in output order) and the targets (an array,
or a dict of the ``y.<name>`` arrays without the ``y.`` prefix), and returns {name: float}.
numpy only.
"""
from __future__ import annotations

import numpy as np


def _outputs(outputs) -> list[np.ndarray]:
    if isinstance(outputs, np.ndarray):
        return [outputs]
    if isinstance(outputs, dict):
        return [np.asarray(v) for v in outputs.values()]
    return [np.asarray(o) for o in outputs]


def _target(targets, name: str):
    if isinstance(targets, dict):
        for key in (name, f"y.{name}"):
            if key in targets:
                return np.asarray(targets[key])
        raise KeyError(f"targets have no {name!r}: {sorted(targets)}")
    return np.asarray(targets)


def _xyxy(b: np.ndarray) -> np.ndarray:
    cx, cy, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def iou_cxcywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of (…, 4) boxes given as (cx, cy, w, h)."""
    a, b = _xyxy(np.asarray(a, np.float64)), _xyxy(np.asarray(b, np.float64))
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def box_iou(outputs, targets) -> dict[str, float]:
    """Detector metric: the highest-scoring anchor's box against the true box.

    outputs = [scores (N, A), boxes (N, A, 4)], boxes as (cx, cy, w, h) in [0, 1];
    targets = {"boxes": (N, 4), "anchor": (N,)} (``y.``-prefixed keys accepted) or a plain
    (N, 4) array of boxes. Returns {"iou": mean IoU, "hit_rate": share with IoU >= 0.5}
    and, when the true anchor is given, {"anchor_accuracy": share whose argmax anchor is it}.
    """
    scores, boxes = _outputs(outputs)[:2]
    scores = scores.reshape(scores.shape[0], -1)
    boxes = boxes.reshape(boxes.shape[0], -1, 4)
    best = scores.argmax(axis=1)
    chosen = boxes[np.arange(boxes.shape[0]), best]
    true = _target(targets, "boxes").reshape(-1, 4)
    iou = iou_cxcywh(chosen, true)
    result = {"iou": float(iou.mean()), "hit_rate": float((iou >= 0.5).mean())}
    if isinstance(targets, dict) and ("anchor" in targets or "y.anchor" in targets):
        result["anchor_accuracy"] = float((best == _target(targets, "anchor").reshape(-1)).mean())
    return result


def pixel_iou(outputs, targets) -> dict[str, float]:
    """Segmenter metric: outputs [logits (N, C, H, W)] (argmax over C), targets (N, H, W) class ids.

    Returns {"miou": mean IoU over classes present, "fg_iou": IoU of class 1 (when C == 2),
    "pixel_accuracy": share of pixels right}.
    """
    logits = _outputs(outputs)[0]
    pred = logits.argmax(axis=1)
    true = _target(targets, "y") if isinstance(targets, dict) else np.asarray(targets)
    true = true.reshape(pred.shape)
    ious = []
    for c in range(logits.shape[1]):
        inter = np.logical_and(pred == c, true == c).sum()
        union = np.logical_or(pred == c, true == c).sum()
        if union:
            ious.append(inter / union)
    result = {"miou": float(np.mean(ious)) if ious else 0.0,
              "pixel_accuracy": float((pred == true).mean())}
    if logits.shape[1] == 2:
        inter = np.logical_and(pred == 1, true == 1).sum()
        union = np.logical_or(pred == 1, true == 1).sum()
        result["fg_iou"] = float(inter / union) if union else 1.0
    return result


def embedding_spread(outputs, targets=None) -> dict[str, float]:
    """For an untrained encoder: how distinct its embeddings are (not degenerate).

    Returns {"mean_pairwise_cos": mean cosine between different samples' embeddings (low is
    good), "dim_std": mean per-dimension std across samples}.
    """
    e = _outputs(outputs)[0].reshape(len(_outputs(outputs)[0]), -1).astype(np.float64)
    u = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    cos = u @ u.T
    n = len(e)
    off = (cos.sum() - np.trace(cos)) / max(n * (n - 1), 1)
    return {"mean_pairwise_cos": float(off), "dim_std": float(e.std(axis=0).mean())}
