"""The front and the pick on hand-made trials, and how a project's [search.space] meets the profile's."""
from __future__ import annotations

from edgepack.config import load_settings
from edgepack.pipeline import section_models
from edgepack.search.front import pareto_front, pick
from edgepack.targets.base import get_target


def row(n, metric, size, p50, feasible=True, repeat_of=None, higher=True):
    return {"number": n, "metric": metric, "higher_is_better": higher, "size_bytes": size, "p50_ms": p50,
            "feasible": feasible, "repeat_of": repeat_of}


def test_the_front_keeps_what_nothing_beats_on_every_objective():
    rows = [row(0, 99.0, 100, {"host": 1.0}),                 # the default
            row(1, 99.0, 50, {"host": 2.0}),                  # smaller, slower: on the front
            row(2, 98.0, 100, {"host": 1.0}),                 # beaten by 0 on the metric alone
            row(3, 99.5, 40, {"host": 0.5}, feasible=False),  # best everywhere, but out of budget
            row(4, 99.0, 50, {"host": 2.0}, repeat_of=1)]     # a repeat counts once
    assert pareto_front(rows, ["host"]) == [0, 1]
    # Lower is better for a regression error: 2 now beats 0.
    low = [dict(r, higher_is_better=False) for r in rows]
    assert pareto_front(low, ["host"]) == [1, 2]


def test_the_pick_by_speed_size_or_both_across_devices():
    rows = [row(0, 99.0, 100, {"host": 1.0, "arm": 10.0}),
            row(1, 99.0, 20, {"host": 1.2, "arm": 12.0}),     # 5x smaller, 1.2x slower
            row(2, 99.0, 90, {"host": 0.5, "arm": 9.0}),      # fastest (geometric mean over devices)
            row(3, 99.0, 95, {"host": 0.9, "arm": 4.0})]      # fastest on arm only
    front = pareto_front(rows, ["host", "arm"])
    assert front == [1, 2, 3]
    default = rows[0]
    assert pick(rows, front, default, ["host", "arm"], "fastest")["number"] == 3   # sqrt(.9 * .4) < sqrt(.5 * .9)
    assert pick(rows, front, default, ["host", "arm"], "smallest")["number"] == 1
    assert pick(rows, front, default, ["host", "arm"], "balanced")["number"] == 1
    assert pick(rows, [], default, ["host"], "balanced") is None


def test_a_project_search_space_replaces_the_profiles(tmp_path):
    project = tmp_path / "edgepack.toml"
    project.write_text('[search.space]\n"quantize.io" = ["int8", "float32"]\n[search]\ntrials = 3\n')
    target = get_target("tflite-int8")
    s = load_settings("tflite-int8", section_models(target), project_file=project)
    assert list(s.search.space) == ["quantize.io"] and s.search.trials == 3
    base = load_settings("tflite-int8", section_models(target))
    assert "distill.student_width" in base.search.space
    assert s.recipe_hash == load_settings("tflite-int8", section_models(target)).recipe_hash   # not part of the recipe
