"""How reports name the task's metric: "top-1 accuracy %", "SQNR vs FP32 dB", "mae"."""
from __future__ import annotations

from typing import Any

_NAMES = {"top1": "top-1 accuracy", "pixel_accuracy": "pixel accuracy", "sqnr_db": "SQNR vs FP32",
          "mae": "mean abs error"}


def metric_label(acc: dict[str, Any] | None) -> str:
    """`acc`: report["accuracy"] (or anything with metric and unit); classification by default."""
    acc = acc or {}
    metric = acc.get("metric", "top1")
    unit = (acc.get("unit") if "unit" in acc else "%").strip()
    return f"{_NAMES.get(metric, metric)}{' (' + unit + ')' if unit else ''}"
