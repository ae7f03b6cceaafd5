"""Data loading: an .npz, a folder with calibration.npz + evaluation.npz, or an image tree.

An .npz holds the model's inputs as `x` (one input) or `x.<name>` (several, named as the
model's forward arguments), each in its own dtype, and the
targets as `y` (any shape: class ids, a per-pixel mask, regression values) or `y.<name>`
(several, for a metric of the user's), or no targets at all (the agreement task checks
the converted model against the FP32 teacher). Nothing is cast: int64 ids stay int64.

Every check names the file at fault. Calibration, evaluation and training samples must
be disjoint (checked by hashing every sample); a single file is split by a seeded
permutation, stratified by class where there are class labels, and the split is recorded
in the report. Subsets (the calibration samples a quantizer sees, the samples that
re-estimate BatchNorm) are seeded random draws, stratified where there are labels, never
"the first N", which in a class-sorted image folder would be the first classes only.
"""
from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..arrays import DEFAULT_INPUT, Arrays, hash_arrays, n_samples, sample_digests, take
from ..config import REPO_ROOT, DataConfig
from ..errors import UsageError

DEFAULT_DATA_DIR = REPO_ROOT / "calibration_data" / "digits"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

# The fewest calibration samples a build accepts. Quantization ranges come from the
# extremes of each activation; with fewer samples they miss the tails that the evaluation
# split then clips (on the default digits model, int8 accuracy with 32 random calibration
# samples is within one evaluation sample of 256). Below this edgepack refuses (exit 2).
MIN_CALIBRATION = 32
# The fewest evaluation samples: the gate compares metrics on them; with fewer, one sample
# moves top-1 by more than the default budget.
MIN_EVALUATION = 20

Targets = Union[np.ndarray, dict[str, np.ndarray], None]


@dataclass(frozen=True)
class Split:
    x: Arrays                  # the model's inputs, named, in forward order, batch first
    y: Targets = None          # targets: one array, named arrays, or none

    def __len__(self) -> int:
        return n_samples(self.x)

    def take(self, index: Any) -> "Split":
        return Split(take(self.x, index), take_targets(self.y, index))

    @property
    def class_ids(self) -> np.ndarray | None:
        """Per-sample class ids when the targets are (N,) integers, for stratified draws."""
        y = self.y
        if isinstance(y, np.ndarray) and y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
            return y
        return None


def take_targets(y: Targets, index: Any) -> Targets:
    if y is None:
        return None
    if isinstance(y, dict):
        return {k: v[index] for k, v in y.items()}
    return y[index]


@dataclass(frozen=True)
class Dataset:
    calibration: Split
    evaluation: Split
    labels: list[str]
    preprocessing: dict[str, Any]
    source: str
    split: dict[str, Any]                 # how calibration/evaluation were made, for the report
    train: Split | None = None
    sha256: str = field(default="")
    notes: tuple[str, ...] = ()           # what the build should say about the data (stderr + report)

    @property
    def input_names(self) -> list[str]:
        return list(self.evaluation.x)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The first input's per-sample shape (the only one for one-input models)."""
        return tuple(next(iter(self.evaluation.x.values())).shape[1:])

    @property
    def calibration_sha256(self) -> str:
        return hash_arrays(self.calibration.x, *_target_list(self.calibration.y))

    def with_input_order(self, names: list[str]) -> "Dataset":
        """The same data with every split's inputs in `names` order (the forward's)."""
        def order(s: Split | None) -> Split | None:
            return None if s is None else Split({k: s.x[k] for k in names}, s.y)

        return dataclasses.replace(self, calibration=order(self.calibration), evaluation=order(self.evaluation),
                                   train=order(self.train))

    def example(self, n: int = 1) -> Arrays:
        """The first n evaluation samples: what export and shape checks run the model on."""
        return take(self.evaluation.x, slice(0, n))


def _target_list(y: Targets) -> list[np.ndarray]:
    return [] if y is None else list(y.values()) if isinstance(y, dict) else [y]


# -- subsets ------------------------------------------------------------------------

def draw_indices(split: Split, n: int, seed: int) -> tuple[np.ndarray, str]:
    """Sorted indices of a seeded random subset of n samples (all when n >= len), stratified
    by class when the split has class ids; and the method's name."""
    total = len(split)
    if n >= total:
        return np.arange(total), "all"
    rng = np.random.default_rng(seed)
    classes = split.class_ids
    if classes is None:
        return np.sort(rng.choice(total, size=n, replace=False)), "seeded random"
    return _stratified(classes, n, rng), "seeded random, stratified by class"


def draw(split: Split, n: int, seed: int) -> tuple[Split, dict[str, Any]]:
    """draw_indices' subset, and how it was drawn (for the report)."""
    idx, method = draw_indices(split, n, seed)
    info = {"method": method, "seed": seed, "samples": int(len(idx)), "of": len(split),
            "indices_sha256": hash_arrays(idx.astype(np.int64))}
    return split.take(idx), info


def _stratified(classes: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices with every class represented in proportion (largest remainders), sorted."""
    values, counts = np.unique(classes, return_counts=True)
    quota = counts / counts.sum() * n
    take_n = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take_n))[: n - take_n.sum()]:
        take_n[i] += 1
    picked = [rng.choice(np.flatnonzero(classes == v), size=min(k, c), replace=False)
              for v, k, c in zip(values, take_n, counts)]
    return np.sort(np.concatenate(picked)) if picked else np.arange(0)


# -- reading ------------------------------------------------------------------------

def _read_npz(path: Path, require_x: bool = True) -> tuple[Arrays, Targets, list[str] | None]:
    if not path.exists():
        raise UsageError(f"{path}: data file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = list(z.files)
            x = _named(path, z, files, "x")
            if "x" in files and x:
                raise UsageError(f"{path}: holds both x and x.<name> arrays ({', '.join('x.' + k for k in x)}); "
                                 "use one convention")
            if "x" in files:
                x = {DEFAULT_INPUT: _array(path, z, "x")}
            y_named = _named(path, z, files, "y")
            if "y" in files and y_named:
                raise UsageError(f"{path}: holds both y and y.<name> arrays ({', '.join('y.' + k for k in y_named)}); "
                                 "use one convention")
            y: Targets = _array(path, z, "y") if "y" in files else (y_named or None)
            labels = _read_labels(path, _array(path, z, "labels")) if "labels" in files else None
    except UsageError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise UsageError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if not x:
        if require_x:
            raise UsageError(f"{path}: missing array(s) x (an .npz needs the model's input as x, or x.<name> "
                             f"for each of several inputs; found {', '.join(files[:12]) or 'nothing'})")
        return {}, y, labels
    return _check(path, x, y) + (labels,)


def _array(path: Path, z: Any, key: str) -> np.ndarray:
    try:
        return z[key]
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise
        raise UsageError(f"{path}: {key} holds Python objects (dtype object), which edgepack does not unpickle "
                         "(save numbers: float32 values, integer ids, bool masks)") from None


def _named(path: Path, z: Any, files: list[str], prefix: str) -> Arrays:
    """The `x.<name>` arrays (not a plain `x`), by name, in file order. One convention only:
    `x_<name>` would also read scikit-learn's `x_train`/`x_test` as two inputs."""
    return {f[2:]: _array(path, z, f) for f in files if f.startswith(prefix + ".") and len(f) > 2}


def _read_labels(path: Path, a: np.ndarray) -> list[str]:
    if a.ndim != 1 or a.dtype.kind not in "USbiuf":
        raise UsageError(f"{path}: labels has dtype {a.dtype} and shape {a.shape}; expected (K,) class names")
    return [str(s) for s in a.tolist()]


# dtype kinds a model's inputs and the targets may have: bool, signed and unsigned ints, floats
NUMERIC_KINDS = "biuf"
# The most classes integer targets may imply (class ids 0..K-1; labels.txt lists them)
MAX_CLASSES = 1 << 20


def _check(path: Path | str, x: Arrays, y: Targets) -> tuple[Arrays, Targets]:
    n = None
    for name, a in x.items():
        key = "x" if name == DEFAULT_INPUT and len(x) == 1 else f"x.{name}"
        if a.dtype.kind not in NUMERIC_KINDS:
            raise UsageError(f"{path}: {key} has dtype {a.dtype}; expected numbers (float32 values, integer ids, "
                             "bool masks)")
        if a.ndim < 1 or (a.ndim == 1 and np.issubdtype(a.dtype, np.floating) and len(x) == 1):
            raise UsageError(f"{path}: {key} has shape {a.shape}; expected (N, ...) with one sample per row")
        if n is None:
            n = len(a)
        elif len(a) != n:
            raise UsageError(f"{path}: {key} has {len(a)} samples but x.{next(iter(x))} has {n}")
        if len(a) == 0:
            raise UsageError(f"{path}: {key} holds no samples")
        if a.size == 0:
            raise UsageError(f"{path}: {key} has shape {a.shape}; each sample holds no values")
        if np.issubdtype(a.dtype, np.floating):
            finite = np.isfinite(a.reshape(len(a), -1)).all(axis=1)
            if not finite.all():
                raise UsageError(f"{path}: {key} holds NaN or Inf (first at sample {int(np.argmin(finite))})")
            if a.dtype == np.float64:
                x[name] = a.astype(np.float32)       # the models compute in float32
    for key, t in ([("y", y)] if isinstance(y, np.ndarray) else
                   [(f"y.{k}", v) for k, v in y.items()] if isinstance(y, dict) else []):
        if t.dtype.kind not in NUMERIC_KINDS or t.ndim == 0:
            raise UsageError(f"{path}: {key} has dtype {t.dtype} and shape {t.shape}; expected numbers, one row "
                             "per sample")
        if len(t) != n:
            raise UsageError(f"{path}: x has {n} samples but {key} has {len(t)}")
        if t.size == 0:
            raise UsageError(f"{path}: {key} has shape {t.shape}; each sample holds no values")
        if np.issubdtype(t.dtype, np.floating) and not np.isfinite(t).all():
            raise UsageError(f"{path}: {key} holds NaN or Inf")
    if isinstance(y, np.ndarray) and y.ndim == 1 and np.issubdtype(y.dtype, np.floating) \
            and np.all(y == np.round(y)) and np.all(np.abs(y) < MAX_CLASSES) and len(x) == 1 \
            and next(iter(x.values())).ndim >= 2:
        y = y.astype(np.int64)           # class ids saved as floats
    if isinstance(y, np.ndarray) and np.issubdtype(y.dtype, np.integer):
        if (y < 0).any():
            raise UsageError(f"{path}: y holds negative labels (class ids run 0..K-1)")
        if int(y.max()) >= MAX_CLASSES:
            raise UsageError(f"{path}: y holds class id {int(y.max())}, more than {MAX_CLASSES} classes (class ids "
                             "run 0..K-1; save y as float for regression targets)")
    return x, y


def _split(path: Path, split: Split, cfg: DataConfig) -> tuple[Split, Split, dict[str, Any]]:
    n = len(split)
    idx, method = draw_indices(split, max(1, int(round(n * cfg.eval_fraction))), cfg.seed)
    ev_mask = np.zeros(n, bool)
    ev_mask[idx] = True
    info = {"method": method, "seed": cfg.seed, "eval_fraction": cfg.eval_fraction,
            "evaluation_indices_sha256": hash_arrays(idx.astype(np.int64)), "source": path.name}
    return split.take(np.flatnonzero(~ev_mask)), split.take(idx), info


def _load_images(root: Path, cfg: DataConfig) -> tuple[Arrays, np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(f"{root}: no class subfolders (expected one subfolder of images per class)")
    mean = np.array(cfg.mean if len(cfg.mean) == cfg.channels else cfg.mean * cfg.channels, np.float32)
    std = np.array(cfg.std if len(cfg.std) == cfg.channels else cfg.std * cfg.channels, np.float32)
    if len(mean) != cfg.channels or len(std) != cfg.channels:
        raise UsageError(f"data.mean/data.std: need 1 or {cfg.channels} values")
    xs, ys = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert("L" if cfg.channels == 1 else "RGB").resize(
                        (cfg.image_size, cfg.image_size), Image.BILINEAR)
                    a = np.asarray(im, np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as e:
                raise UsageError(f"{f}: not a readable image ({e})") from None
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
            xs.append((a - mean[:, None, None]) / std[:, None, None])
            ys.append(label)
    if not xs:
        raise UsageError(f"{root}: no images found in the class subfolders")
    return {DEFAULT_INPUT: np.stack(xs).astype(np.float32)}, np.array(ys, np.int64), classes


def load_train(spec: str | Path | None, default: bool) -> Split | None:
    """Training data for the stages that train (distill, prune fine-tuning): the user's
    --train-data .npz, or for the embedded default its training split (never evaluated on)."""
    if spec is not None:
        x, y, _ = _read_npz(Path(spec))
        return Split(x, y)
    if default:
        from .digits import digits_splits

        x, y = digits_splits()["train"]
        return Split({DEFAULT_INPUT: x.astype(np.float32)}, y.astype(np.int64))
    return None


def _same_inputs(where: str, split: Split, ref: Split, ref_name: str) -> None:
    got = {k: (v.dtype, v.shape[1:]) for k, v in split.x.items()}
    want = {k: (v.dtype, v.shape[1:]) for k, v in ref.x.items()}
    if list(got) != list(want):
        raise UsageError(f"{where}: inputs {', '.join(got)} differ from {ref_name}'s {', '.join(want)}")
    for k in got:
        if got[k][1] != want[k][1]:
            raise UsageError(f"{where}: {k} samples have shape {got[k][1]}, {ref_name} {want[k][1]}")
        if got[k][0] != want[k][0] and not (np.issubdtype(got[k][0], np.floating)
                                            and np.issubdtype(want[k][0], np.floating)):
            raise UsageError(f"{where}: {k} has dtype {got[k][0]}, {ref_name} {want[k][0]}")


def _overlap(a: Split, b: Split) -> int:
    digests = set(sample_digests(a.x))
    return sum(d in digests for d in sample_digests(b.x))


def load_data(spec: str | Path | None, cfg: DataConfig, *, calibration_samples: int,
              train_spec: str | Path | None = None) -> Dataset:
    """Load and split the user's data (or the shipped default when spec is None)."""
    path = Path(spec) if spec is not None else DEFAULT_DATA_DIR
    preprocessing: dict[str, Any] = {}
    labels: list[str] | None = None
    names = {"calibration": path.name, "evaluation": path.name}
    if path.is_dir() and (path / "calibration.npz").exists():
        cx, cy, labels = _read_npz(path / "calibration.npz")
        ex, ey, _ = _read_npz(path / "evaluation.npz")
        cal, ev = Split(cx, cy), Split(ex, ey)
        split = {"method": "given", "source": path.name}
        names = {"calibration": f"{path.name}/calibration.npz", "evaluation": f"{path.name}/evaluation.npz"}
        if (path / "labels.txt").exists():
            try:
                text = (path / "labels.txt").read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError) as e:
                raise UsageError(f"{path / 'labels.txt'}: not readable as UTF-8 text ({e})") from None
            labels = [line.strip() for line in text.splitlines() if line.strip()]
        if (path / "preprocessing.json").exists():
            try:
                preprocessing = json.loads((path / "preprocessing.json").read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
                raise UsageError(f"{path / 'preprocessing.json'}: not valid JSON ({e})") from None
            if not isinstance(preprocessing, dict):
                raise UsageError(f"{path / 'preprocessing.json'}: expected a JSON object, got "
                                 f"{type(preprocessing).__name__}")
    elif path.is_dir():
        x, y, labels = _load_images(path, cfg)
        cal, ev, split = _split(path, Split(x, y), cfg)
        preprocessing = {"mean": list(cfg.mean), "std": list(cfg.std), "image_size": cfg.image_size,
                         "channels": cfg.channels, "scale": "1/255", "layout": "NCHW"}
    elif path.exists() or path.suffix == ".npz":
        x, y, labels = _read_npz(path)
        cal, ev, split = _split(path, Split(x, y), cfg)
    else:
        raise UsageError(f"{path}: data not found (give an .npz file or a folder)")

    _same_inputs(names["calibration"], cal, ev, names["evaluation"])
    if (cal.y is None) != (ev.y is None):
        raise UsageError(f"{path}: one of calibration and evaluation has targets (y) and the other has not")
    notes: list[str] = []
    if len(ev) < MIN_EVALUATION:
        raise UsageError(f"{names['evaluation']}: {len(ev)} evaluation samples; the accuracy gate needs at least "
                         f"{MIN_EVALUATION} (give more data, or raise data.eval_fraction)")
    if len(cal) < min(calibration_samples, MIN_CALIBRATION):
        raise UsageError(f"{names['calibration']}: {len(cal)} calibration samples; quantization needs at least "
                         f"{min(calibration_samples, MIN_CALIBRATION)} (give more data, or lower "
                         "data.eval_fraction)")
    if len(cal) < calibration_samples:
        notes.append(f"data: {len(cal)} calibration samples, fewer than quantize.calibration_samples = "
                     f"{calibration_samples}: all {len(cal)} are used")
    labels = _labels(labels, cal, ev)
    split = dict(split, calibration=len(cal), evaluation=len(ev))
    train = load_train(train_spec, default=spec is None)
    if train is not None:
        _same_inputs(str(train_spec or "the default training split"), train, ev, names["evaluation"])
        split["train"] = len(train)
    _check_overlap(cfg, cal if split["method"] == "given" else None, ev, train, names, train_spec)
    hashed = [cal.x, *_target_list(cal.y), ev.x, *_target_list(ev.y)]
    if train is not None:
        hashed += [train.x, *_target_list(train.y)]
    return Dataset(calibration=cal, evaluation=ev, labels=labels, preprocessing=preprocessing,
                   source=path.name, split=split, train=train, sha256=hash_arrays(*hashed), notes=tuple(notes))


def _labels(labels: list[str] | None, cal: Split, ev: Split) -> list[str]:
    """Class names when the targets are class ids: the file's, else "0", "1", ..."""
    ids = [s.y for s in (cal, ev) if isinstance(s.y, np.ndarray) and np.issubdtype(s.y.dtype, np.integer)]
    if not ids:
        return labels or []
    n_classes = int(max(int(a.max()) for a in ids)) + 1
    if labels is None or len(labels) < n_classes:
        return [str(i) for i in range(n_classes)]
    return labels


def _check_overlap(cfg: DataConfig, cal: Split | None, ev: Split, train: Split | None, names: dict[str, str],
                   train_spec: Any) -> None:
    """Samples shared between the data a build learns from and the data it is judged on
    make the gate meaningless: exit 2 unless data.allow_overlap says the user knows.
    `cal` is None when edgepack split one file itself (disjoint by index; identical samples
    within one file, silence clips say, are the data's own)."""
    if cfg.allow_overlap:
        return
    pairs = [("calibration", cal, names["calibration"])] if cal is not None else []
    if train is not None:
        pairs.append(("training", train, str(Path(train_spec).name) if train_spec else "the default training split"))
    for what, split, name in pairs:
        shared = _overlap(ev, split)
        if shared:
            raise UsageError(f"{name} and {names['evaluation']}: {shared} of the {what} samples are also evaluation "
                             "samples (the gate would measure on data the build learned from); give disjoint data, "
                             "or --allow-overlap if you know why")
