"""Data loading: an .npz, a folder with calibration.npz + evaluation.npz, or an image tree.

Every check names the file at fault. Calibration and evaluation samples are disjoint,
and the split of a single file is deterministic (seeded) and recorded in the report.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import REPO_ROOT, DataConfig
from ..errors import UsageError

DEFAULT_DATA_DIR = REPO_ROOT / "calibration_data" / "digits"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Split:
    x: np.ndarray   # (N, C, H, W) float32, preprocessed
    y: np.ndarray   # (N,) int64

    def __len__(self) -> int:
        return len(self.y)


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

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.evaluation.x.shape[1:])

    @property
    def calibration_sha256(self) -> str:
        return _hash_arrays(self.calibration.x, self.calibration.y)


def _hash_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    if not path.exists():
        raise UsageError(f"{path}: data file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            missing = {"x", "y"} - keys
            if missing:
                raise UsageError(f"{path}: missing array(s) {', '.join(sorted(missing))} (an .npz needs x and y)")
            x, y = z["x"], z["y"]
            labels = [str(s) for s in z["labels"].tolist()] if "labels" in keys else None
    except UsageError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise UsageError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    return _check_xy(path, x, y) + (labels,)


def _check_xy(path: Path | str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not np.issubdtype(x.dtype, np.number):
        raise UsageError(f"{path}: x has dtype {x.dtype}; expected float32 numbers")
    if x.ndim < 2:
        raise UsageError(f"{path}: x has shape {x.shape}; expected (N, C, H, W) or (N, features)")
    if y.ndim != 1:
        raise UsageError(f"{path}: y has shape {y.shape}; expected (N,) integer labels")
    if len(x) != len(y):
        raise UsageError(f"{path}: x has {len(x)} samples but y has {len(y)}")
    if not np.issubdtype(y.dtype, np.integer):
        ok = np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))
        if not ok:
            bad = next((v for v in y.tolist() if not isinstance(v, (int, float)) or v != int(v)), y[:1].tolist())
            raise UsageError(f"{path}: y holds non-integer labels (dtype {y.dtype}, e.g. {bad!r}); expected integer class ids")
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        idx = int(np.argwhere(~finite.reshape(len(x), -1).all(axis=1))[0][0])
        raise UsageError(f"{path}: x holds NaN or Inf (first at sample {idx})")
    y = y.astype(np.int64)
    if (y < 0).any():
        raise UsageError(f"{path}: y holds negative labels")
    return x, y


def _split(path: Path, x: np.ndarray, y: np.ndarray, cfg: DataConfig) -> tuple[Split, Split, dict[str, Any]]:
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(y))
    n_eval = max(1, int(round(len(y) * cfg.eval_fraction)))
    ev, cal = np.sort(order[:n_eval]), np.sort(order[n_eval:])
    info = {"method": "seeded permutation", "seed": cfg.seed, "eval_fraction": cfg.eval_fraction,
            "evaluation_indices_sha256": _hash_arrays(ev), "source": str(path)}
    return Split(x[cal], y[cal]), Split(x[ev], y[ev]), info


def _load_images(root: Path, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
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
    return np.stack(xs).astype(np.float32), np.array(ys, np.int64), classes


def load_train(spec: str | Path | None, default: bool) -> Split | None:
    """Training data for the stages that train (distill, prune fine-tuning): the user's
    --train-data .npz, or for the embedded default its training split (never evaluated on)."""
    if spec is not None:
        x, y, _ = _read_npz(Path(spec))
        return Split(x, y)
    if default:
        from .digits import digits_splits

        x, y = digits_splits()["train"]
        return Split(x.astype(np.float32), y.astype(np.int64))
    return None


def load_data(spec: str | Path | None, cfg: DataConfig, *, calibration_samples: int,
              train_spec: str | Path | None = None) -> Dataset:
    """Load and split the user's data (or the shipped default when spec is None)."""
    path = Path(spec) if spec is not None else DEFAULT_DATA_DIR
    preprocessing: dict[str, Any] = {}
    labels: list[str] | None = None
    if path.is_dir() and (path / "calibration.npz").exists():
        cx, cy, labels = _read_npz(path / "calibration.npz")
        ex, ey, _ = _read_npz(path / "evaluation.npz")
        cal, ev = Split(cx, cy), Split(ex, ey)
        split = {"method": "given", "source": str(path)}
        if (path / "labels.txt").exists():
            labels = [ln.strip() for ln in (path / "labels.txt").read_text().splitlines() if ln.strip()]
        if (path / "preprocessing.json").exists():
            preprocessing = json.loads((path / "preprocessing.json").read_text())
    elif path.is_dir():
        x, y, labels = _load_images(path, cfg)
        cal, ev, split = _split(path, x, y, cfg)
        preprocessing = {"mean": list(cfg.mean), "std": list(cfg.std), "image_size": cfg.image_size,
                         "channels": cfg.channels, "scale": "1/255", "layout": "NCHW"}
    elif path.exists() or path.suffix == ".npz":
        x, y, labels = _read_npz(path)
        cal, ev, split = _split(path, x, y, cfg)
    else:
        raise UsageError(f"{path}: data not found (give an .npz file or a folder)")

    if cal.x.shape[1:] != ev.x.shape[1:]:
        raise UsageError(f"{path}: calibration samples have shape {cal.x.shape[1:]}, evaluation {ev.x.shape[1:]}")
    if len(cal) < calibration_samples:
        raise UsageError(f"{path}: {len(cal)} calibration samples, but quantize.calibration_samples asks for "
                         f"{calibration_samples} (give more data or lower it)")
    n_classes = int(max(cal.y.max(), ev.y.max())) + 1
    if labels is None or len(labels) < n_classes:
        labels = [str(i) for i in range(n_classes)]
    split = dict(split, calibration=len(cal), evaluation=len(ev))
    train = load_train(train_spec, default=spec is None)
    if train is not None:
        if train.x.shape[1:] != ev.x.shape[1:]:
            raise UsageError(f"{train_spec}: training samples have shape {train.x.shape[1:]}, "
                             f"evaluation {ev.x.shape[1:]}")
        split["train"] = len(train)
    hashed = [cal.x, cal.y, ev.x, ev.y] + ([train.x, train.y] if train is not None else [])
    return Dataset(calibration=cal, evaluation=ev, labels=labels, preprocessing=preprocessing,
                   source=str(path), split=split, train=train, sha256=_hash_arrays(*hashed))
