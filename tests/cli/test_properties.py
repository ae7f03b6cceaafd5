"""Property-based tests of the input edge: any .npz, any project file, any --set.

Whatever a user hands edgepack, it either loads or raises UsageError whose message is one
line naming the file (and the field or key) at fault; never another exception, never a
traceback. A few examples also go through the real CLI (`--dry-run`: prepare only) to
check exit 2, one line on stderr and --out untouched.

Derandomized, so CI sees the same examples on every run.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgepack.cli import main
from edgepack.config import DataConfig, load_settings
from edgepack.errors import UsageError
from edgepack.inputs.data import load_data

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg.strip() and "\n" not in msg and "\r" not in msg, f"not one line: {msg!r}"
    return msg


_fresh = itertools.count()


def _scratch(root: Path) -> Path:
    """A new folder per example (hypothesis reuses the function's tmp_path)."""
    d = root / f"ex{next(_fresh)}"
    d.mkdir()
    return d


# -- .npz files ---------------------------------------------------------------------

NUMERIC = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
           "uint64", "bool"]
OTHER = ["<U3", "S2", "complex64", "m8[s]", "M8[D]"]

KEYS = ["x", "x", "x", "y", "y", "labels", "x.x", "x.a", "x.b", "x_a", "x_x", "x_mask", "y.a", "y.y", "y_b",
        "x.", "y.", "X", "xx", "x.input", "junk", "calibration", "x.\u00e9t\u00e9"]
key_names = st.one_of(st.sampled_from(KEYS),
                      st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"],
                                            exclude_characters="/\\"), min_size=1, max_size=8))


@st.composite
def arrays(draw, n: int) -> np.ndarray:
    """An array of a random dtype and shape, usually n samples, with NaN/Inf among floats."""
    kind = draw(st.sampled_from(["numeric"] * 8 + ["other", "object"]))
    rows = draw(st.sampled_from([n] * 6 + [0, 1, n - 1, n + 3]))
    rows = max(rows, 0)
    rest = draw(st.lists(st.integers(0, 3), min_size=0, max_size=3))
    if draw(st.integers(0, 20)) == 0:
        return np.array(draw(st.integers(-3, 3)))              # a 0-d array
    shape = (rows, *rest)
    if kind == "object":
        a = np.empty(shape, dtype=object)
        a.fill({"a": 1})
        return a
    dtype = np.dtype(draw(st.sampled_from(NUMERIC if kind == "numeric" else OTHER)))
    if dtype.kind in "fc":
        elements = st.floats(width=32 if dtype.itemsize >= 4 else 16, allow_nan=True, allow_infinity=True) \
            if draw(st.booleans()) else st.floats(-4, 4, width=16)
        return draw(hnp.arrays(dtype, shape, elements=elements, fill=st.just(0.5)))
    if dtype.kind in "iu":
        small = draw(st.booleans())
        info = np.iinfo(dtype)
        lo, hi = (max(info.min, -1), min(info.max, 5)) if small else (int(info.min), int(info.max))
        return draw(hnp.arrays(dtype, shape, elements=st.integers(lo, hi), fill=st.just(1)))
    return draw(hnp.arrays(dtype, shape))


@st.composite
def npz_contents(draw) -> dict[str, np.ndarray]:
    n = draw(st.sampled_from([0, 1, 3, 25, 45, 80]))
    keys = draw(st.lists(key_names, min_size=0, max_size=5, unique=True))
    out = {k: draw(arrays(n)) for k in keys}
    if draw(st.booleans()):          # often a plausible file, so the deeper checks run too
        x = draw(hnp.arrays(np.float32, (n, 2, 3), elements=st.floats(-2, 2, width=32)))
        out.setdefault("x", x)
        if draw(st.booleans()):
            out.setdefault("y", np.arange(n, dtype=np.int64) % draw(st.integers(1, 4)))
    if draw(st.integers(0, 4)) == 0:
        labels = draw(st.lists(st.text(max_size=4), max_size=5))
        out["labels"] = np.array(labels) if labels else np.array([], dtype="<U1")
    return out


def _save(path: Path, contents: dict[str, np.ndarray]) -> None:
    np.savez(path, **contents)      # object arrays are pickled here; edgepack never unpickles


def _check_outcome(fn, *names: str) -> Any:
    """fn() returns, or raises UsageError: one line naming one of `names`."""
    try:
        result = fn()
    except UsageError as e:
        msg = _one_line(e)
        assert any(n in msg for n in names), f"{msg!r} names none of {names}"
        event("refused: " + " ".join(msg.split(": ", 1)[-1].split()[:4]))      # --hypothesis-show-statistics
        return None
    event("loaded")
    return result


@settings(max_examples=300, **SETTINGS)
@given(contents=npz_contents(), train=st.one_of(st.none(), npz_contents()),
       fraction=st.sampled_from([0.05, 0.3, 0.5, 0.9]), calibration=st.sampled_from([1, 16, 256]),
       allow_overlap=st.booleans())
def test_any_npz_loads_or_names_the_file(tmp_path, contents, train, fraction, calibration, allow_overlap):
    d = _scratch(tmp_path)
    data = d / "data.npz"
    _save(data, contents)
    train_path = None
    if train is not None:
        train_path = d / "train.npz"
        _save(train_path, train)
    cfg = DataConfig(eval_fraction=fraction, allow_overlap=allow_overlap)
    ds = _check_outcome(lambda: load_data(data, cfg, calibration_samples=calibration, train_spec=train_path),
                        "data.npz", "train.npz")
    if ds is None:
        return
    n = len(next(v for k, v in contents.items() if k == "x" or k.startswith(("x.", "x_")) and len(k) > 2))
    assert len(ds.calibration) + len(ds.evaluation) == n
    for name, a in ds.evaluation.x.items():      # nothing is cast but float64 -> float32
        assert a.dtype.kind in "biuf" and a.dtype != np.float64
        assert len(ds.calibration.x[name]) == len(ds.calibration)


@settings(max_examples=60, **SETTINGS)
@given(calibration=npz_contents(), evaluation=npz_contents(), labels_txt=st.one_of(st.none(), st.binary(max_size=20)),
       preprocessing=st.one_of(st.none(), st.binary(max_size=20), st.just(b'{"mean": [0.5]}'), st.just(b"[1, 2]")))
def test_a_given_folder_loads_or_names_the_file(tmp_path, calibration, evaluation, labels_txt, preprocessing):
    d = _scratch(tmp_path) / "given"
    d.mkdir()
    _save(d / "calibration.npz", calibration)
    _save(d / "evaluation.npz", evaluation)
    if labels_txt is not None:
        (d / "labels.txt").write_bytes(labels_txt)
    if preprocessing is not None:
        (d / "preprocessing.json").write_bytes(preprocessing)
    _check_outcome(lambda: load_data(d, DataConfig(), calibration_samples=16), "given")


# -- project files and --set --------------------------------------------------------

SECTIONS = ["data", "task", "quantize", "validate", "export", "distill", "prune", "lowrank", "reference", "inputs"]
KNOWN_KEYS = ["seed", "eval_fraction", "image_size", "channels", "mean", "std", "allow_overlap", "kind", "metric",
              "max_drop", "min_cosine", "min_sqnr_db", "distill_loss", "output_weights", "scheme", "per_channel",
              "calibration_samples", "io", "max_accuracy_drop_pp", "max_p50_ms", "devices", "warmup_runs", "runs",
              "threads", "reference_inputs", "enabled", "opset", "dynamic_batch", "model", "data", "epochs"]
TOP_KEYS = ["name", "format", "description"]

text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=10)
toml_keys = st.one_of(st.sampled_from(KNOWN_KEYS), text.filter(bool))
scalars = st.one_of(st.integers(-2 ** 63, 2 ** 63 - 1), st.sampled_from([0, 1, -1, 8, 1024, 10 ** 6]),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.5, 1.0, -0.5, 2.0]),
                    st.booleans(), text,
                    st.sampled_from(["int8", "uint8", "float32", "dynamic", "none", "auto", "classification",
                                     "regression", "agreement", "custom", "host", "mse", "tflite-int8"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(toml_keys, inner, max_size=3)),
                      max_leaves=6)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)                      # nan, inf, -inf, 1e+300 are TOML as Python writes them
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(i) for i in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(i)}" for k, i in v.items()) + "}"


def _fields(models: dict[str, Any]) -> dict[str, list[str]]:
    """Each section's real keys, so most generated files get past "unknown key"."""
    from edgepack.config import DataConfig, InputsConfig, TaskConfig

    every = {"inputs": InputsConfig, "data": DataConfig, "task": TaskConfig, **models}
    return {name: list(model.model_fields) for name, model in every.items()}


@st.composite
def project_files(draw, fields: dict[str, list[str]]) -> str:
    if draw(st.integers(0, 9)) == 0:        # not TOML at all, or nearly
        return draw(st.one_of(text, st.sampled_from(["[validate", "runs = ", "[a]\n[a]\n", "x = 1\nx = 2\n"])))
    lines = []
    if draw(st.integers(0, 3)) == 0:
        lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in
                 draw(st.dictionaries(st.sampled_from(TOP_KEYS) | toml_keys, scalars, max_size=2)).items()]
    sections = {}
    known_sections = st.sampled_from(sorted(fields))
    section_names = st.one_of(known_sections, known_sections, known_sections, text.filter(bool))
    for name in draw(st.lists(section_names, max_size=4, unique=True)):
        known = st.sampled_from(fields.get(name) or KNOWN_KEYS)
        keys = st.one_of(known, known, known, toml_keys)
        sections[name] = draw(st.dictionaries(keys, values, max_size=3))
    for name, body in sections.items():
        lines.append(f"[{json.dumps(name, ensure_ascii=False)}]")
        lines += [f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def models():
    from edgepack.pipeline import section_models
    from edgepack.targets.base import get_target

    return section_models(get_target("tflite-int8"))


@settings(max_examples=300, **SETTINGS)
@given(data=st.data())
def test_any_project_file_loads_or_names_the_file(tmp_path, models, data):
    body = data.draw(project_files(_fields(models)), label="edgepack.toml")
    cfg = _scratch(tmp_path) / "edgepack.toml"
    cfg.write_text(body, encoding="utf-8")
    _check_outcome(lambda: load_settings("tflite-int8", models, project_file=cfg), str(cfg))


def set_items(fields: dict[str, list[str]]) -> st.SearchStrategy[str]:
    """`section.key=value` items: mostly real keys with values of any type, some malformed."""
    real = st.sampled_from(sorted(fields)).flatmap(lambda sec: st.tuples(st.just(sec), st.sampled_from(fields[sec])))
    raw_values = st.one_of(st.builds(toml_value, values), text)
    good = st.builds(lambda sk, v: f"{sk[0]}.{sk[1]}={v}", real, raw_values)
    odd = st.one_of(st.builds(lambda s, k, v: f"{s}.{k}={v}", st.sampled_from(SECTIONS), toml_keys, raw_values),
                    st.builds(lambda k, v: f"{k}={v}", text, text), text)
    return st.one_of(good, good, good, odd)


@settings(max_examples=200, **SETTINGS)
@given(data=st.data())
def test_any_set_loads_or_names_the_flag(models, data):
    items = data.draw(st.lists(set_items(_fields(models)), min_size=1, max_size=3), label="--set")
    _check_outcome(lambda: load_settings("tflite-int8", models, overrides=items), "--set")


# -- through the real CLI -----------------------------------------------------------

MUTATIONS = ["none", "drop y", "rename x", "add junk", "float64", "float16 y", "nan", "truncate y", "empty",
             "strings", "labels", "second input", "int x", "few", "y.<name>", "negative y"]


def _mutate(x: np.ndarray, y: np.ndarray, how: list[str], draw_n: int) -> dict[str, np.ndarray]:
    c: dict[str, np.ndarray] = {"x": x.copy(), "y": y.copy()}
    for m in how:
        if m == "drop y":
            c.pop("y", None)
        elif m == "rename x" and "x" in c:
            c["x.x"] = c.pop("x")
        elif m == "add junk":
            c["junk"] = np.arange(3)
        elif m == "float64":
            c = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in c.items()}
        elif m == "float16 y" and "y" in c:
            c["y"] = c["y"].astype(np.float16)
        elif m == "nan":
            k = next(iter(c))
            if c[k].dtype.kind == "f" and c[k].size:
                c[k].reshape(-1)[draw_n % c[k].size] = np.nan
        elif m == "truncate y" and "y" in c:
            c["y"] = c["y"][: draw_n % max(len(c["y"]), 1)]
        elif m == "empty":
            c = {k: v[:0] for k, v in c.items()}
        elif m == "strings":
            c["y"] = np.array(["a"] * len(x))
        elif m == "labels":
            c["labels"] = np.array(["cat", "dog"])
        elif m == "second input":
            c["x.mask"] = np.ones((len(x), 8), np.bool_)
        elif m == "int x":
            c = {k: (v * 10).astype(np.int64) if k.startswith("x") else v for k, v in c.items()}
        elif m == "few":
            c = {k: v[: 20 + draw_n % 30] for k, v in c.items()}
        elif m == "y.<name>" and "y" in c:
            c["y.a"] = c.pop("y")
        elif m == "negative y" and "y" in c:
            c["y"] = c["y"] - 2
    return c


@settings(max_examples=15, **SETTINGS)
@given(how=st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3), n=st.integers(0, 1000),
       extra=st.lists(st.sampled_from(["task.kind=regression", "task.kind=agreement", "task.kind=classification",
                                       "data.eval_fraction=0.9", "data.seed=7", "quantize.calibration_samples=64"]),
                      max_size=2))
def test_cli_dry_run_exits_0_or_2_with_one_line_and_touches_nothing(tiny, tiny_data, tmp_path, how, n, extra):
    d = _scratch(tmp_path)
    with np.load(tiny["data"]) as z:
        x, y = z["x"], z["y"]
    data = d / "data.npz"
    _save(data, _mutate(x, y, how, n))
    train = d / "train.npz"                  # disjoint from the data (another seed), for distill and prune
    tx, ty = tiny_data(96, seed=1)
    _save(train, {"x": tx, "y": ty})
    out = d / "out"
    out.mkdir()
    (out / "previous-bundle.zip").write_bytes(b"an earlier good bundle")
    before = sorted((str(p), p.stat().st_mtime_ns) for p in out.rglob("*"))
    args = ["build", "-t", "tflite-int8", "--model", f"{tiny['model']}:make_model", "--weights", str(tiny["weights"]),
            "--data", str(data), "--train-data", str(train), "--out", str(out), "--dry-run", "--set", "quantize.calibration_samples=16"]
    for e in extra:
        args += ["--set", e]
    result = CliRunner().invoke(main, args)
    event(f"exit {result.exit_code}")
    assert result.exit_code in (0, 2), (how, extra, result.output)
    if result.exit_code == 2:
        errors = [l for l in result.output.splitlines() if l.startswith("edgepack: error: ")]
        assert len(errors) == 1 and len([l for l in result.output.splitlines() if l.strip()]) == 1, result.output
        assert any(s in errors[0] for s in ("data.npz", "train.npz", "tiny_net.py", "--set", "task.")), errors[0]
    assert sorted((str(p), p.stat().st_mtime_ns) for p in out.rglob("*")) == before


def test_the_strategies_reach_both_outcomes(tmp_path):
    """A guard on the generators: a plausible file loads, a broken one is refused."""
    good = {"x": np.random.default_rng(0).normal(size=(80, 2, 3)).astype(np.float32),
            "y": np.arange(80, dtype=np.int64) % 3}
    _save(tmp_path / "good.npz", good)
    assert len(load_data(tmp_path / "good.npz", DataConfig(), calibration_samples=16).evaluation) == 40
    _save(tmp_path / "bad.npz", {**good, "x.a": good["x"]})
    with pytest.raises(UsageError, match="bad.npz: holds both x and x.<name>"):
        load_data(tmp_path / "bad.npz", DataConfig(), calibration_samples=16)
