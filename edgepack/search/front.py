"""The Pareto front of finished trials and the pick from it.

Objectives: the task's metric (up or down, as the task says), the model file's size, and
the p50 on every device. A trial is feasible when its build passed (metric within the
accuracy budget, every device ran it and passed its self-check) and it meets --budget-ms
and --max-size-kb. The front holds the feasible trials that no other feasible trial beats
on every objective at once.

The pick is made on the front, against the profile's own recipe (the default):
  fastest   the lowest p50, as the geometric mean over devices of p50 / default's p50
  smallest  the smallest file (ties: the faster)
  balanced  the lowest geometric mean of those latency ratios and the size ratio
"""
from __future__ import annotations

import math
from typing import Any

PICKS = ("fastest", "smallest", "balanced")


def objective_vector(t: dict[str, Any], devices: list[str]) -> list[float]:
    """To minimize, in order: the metric (negated when higher is better), size, p50 per device."""
    metric = t["metric"] if not t["higher_is_better"] else -t["metric"]
    return [metric, float(t["size_bytes"]), *(t["p50_ms"][d] for d in devices)]


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(trials: list[dict[str, Any]], devices: list[str]) -> list[int]:
    """Trial numbers on the front, among the feasible ones; a repeat counts once."""
    pool = [t for t in trials if t.get("feasible") and t.get("repeat_of") is None]
    vectors = {t["number"]: objective_vector(t, devices) for t in pool}
    return sorted(n for n, v in vectors.items() if not any(dominates(w, v) for m, w in vectors.items() if m != n))


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(max(x, 1e-12)) for x in xs) / len(xs))


def score(t: dict[str, Any], base: dict[str, Any], devices: list[str], how: str) -> tuple[float, ...]:
    speed = _geomean([t["p50_ms"][d] / base["p50_ms"][d] for d in devices])
    size = t["size_bytes"] / base["size_bytes"]
    if how == "fastest":
        return (speed, size)
    if how == "smallest":
        return (size, speed)
    return (_geomean([speed, size]), speed)


def pick(trials: list[dict[str, Any]], front: list[int], default: dict[str, Any] | None, devices: list[str],
         how: str) -> dict[str, Any] | None:
    """The front's best trial by `how`; None when nothing is feasible."""
    members = [t for t in trials if t["number"] in front]
    if not members:
        return None
    base = default if default and default.get("p50_ms") and all(d in default["p50_ms"] for d in devices) \
        else members[0]
    return min(members, key=lambda t: (*score(t, base, devices, how), t["number"]))
