"""Deterministic, learnable data for every zoo model, in edgepack's .npz convention.

Convention: one input -> key ``x``; several inputs -> ``x.<input name>`` in forward-argument
order; targets -> ``y`` or ``y.<name>``; optional ``labels`` (class names). dtypes are kept as
they are (token ids and masks int64, images/audio float32, class ids int64).

    make_dataset(name, n, seed) -> dict[str, np.ndarray]
    make_splits(name, seed=0)   -> {"data": ..., "train": ...}   (disjoint seeds)
    write_npz(path, arrays)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

IMAGE = 32
QUADRANTS = np.array(["top-left", "top-right", "bottom-left", "bottom-right"])
TONES_HZ = (300.0, 800.0, 2000.0)
SAMPLE_RATE = 16000
CLIP = 4000                      # 0.25 s at 16 kHz
SEQ, VOCAB = 16, 64
GRID = 4

# samples per split: "data" is calibration + evaluation, "train" trains the teacher
SPLIT_SIZES = {"data": 192, "train": 384}


def _quadrant_images(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """4 classes: a coloured square (random colour, size, place) inside one quadrant, plus noise."""
    y = rng.integers(0, 4, n)
    x = rng.normal(0.0, 0.3, (n, 3, IMAGE, IMAGE)).astype(np.float32)
    half = IMAGE // 2
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        s = int(rng.integers(7, 13))
        top = r * half + int(rng.integers(0, half - s + 1))
        left = col * half + int(rng.integers(0, half - s + 1))
        colour = rng.uniform(0.2, 1.0, 3).astype(np.float32)
        colour *= 2.0 / colour.max()                     # brightest channel at +2
        x[i, :, top:top + s, left:left + s] += colour[:, None, None]
    return {"x": x, "y": y.astype(np.int64), "labels": QUADRANTS.copy()}


def _text(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random token sequences, lengths 6..16; padding id 0 and mask 0 after the length. No targets."""
    lengths = rng.integers(6, SEQ + 1, n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, VOCAB, (n, SEQ)).astype(np.int64) * mask
    return {"x.input_ids": ids, "x.attention_mask": mask}


def _audio(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """3 classes of tones (300, 800, 2000 Hz) with random phase, amplitude, slight detuning and noise."""
    y = rng.integers(0, len(TONES_HZ), n)
    t = np.arange(CLIP, dtype=np.float64) / SAMPLE_RATE
    freq = np.asarray(TONES_HZ)[y] * rng.uniform(0.95, 1.05, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    amp = rng.uniform(0.2, 1.0, n)
    wave = amp[:, None] * np.sin(2 * np.pi * freq[:, None] * t[None, :] + phase[:, None])
    wave += rng.normal(0.0, 0.1, (n, CLIP))
    labels = np.array([f"{int(f)}Hz" for f in TONES_HZ])
    return {"x": wave[:, None, :].astype(np.float32), "y": y.astype(np.int64), "labels": labels}


def _detection(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One bright rectangle per image; y.boxes (cx, cy, w, h) in [0, 1], y.anchor its 4x4 grid cell."""
    x = rng.normal(0.0, 0.25, (n, 3, IMAGE, IMAGE)).astype(np.float32)
    boxes = np.zeros((n, 4), np.float32)
    anchor = np.zeros(n, np.int64)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(5, 17, 2))
        left = int(rng.integers(0, IMAGE - w + 1))
        top = int(rng.integers(0, IMAGE - h + 1))
        colour = rng.uniform(1.2, 2.0, 3).astype(np.float32)
        x[i, :, top:top + h, left:left + w] += colour[:, None, None]
        cx, cy = (left + w / 2) / IMAGE, (top + h / 2) / IMAGE
        boxes[i] = (cx, cy, w / IMAGE, h / IMAGE)
        col = min(int(cx * GRID), GRID - 1)
        row = min(int(cy * GRID), GRID - 1)
        anchor[i] = row * GRID + col                     # row-major, as the detector flattens
    return {"x": x, "y.boxes": boxes, "y.anchor": anchor}


def _segmentation(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """1-3 discs/rectangles per image, brighter than a noisy background; y (N, 32, 32) int64 mask."""
    x = rng.normal(0.0, 0.3, (n, 1, IMAGE, IMAGE)).astype(np.float32)
    x += rng.uniform(-0.3, 0.3, (n, 1, 1, 1)).astype(np.float32)          # brightness offset
    y = np.zeros((n, IMAGE, IMAGE), np.int64)
    yy, xx = np.mgrid[0:IMAGE, 0:IMAGE]
    for i in range(n):
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.5:
                r = rng.uniform(3, 8)
                cy, cx = rng.uniform(0, IMAGE, 2)
                shape = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                h, w = (int(v) for v in rng.integers(4, 14, 2))
                top, left = int(rng.integers(0, IMAGE - h + 1)), int(rng.integers(0, IMAGE - w + 1))
                shape = np.zeros((IMAGE, IMAGE), bool)
                shape[top:top + h, left:left + w] = True
            y[i][shape] = 1
        x[i, 0][y[i] == 1] += rng.uniform(1.0, 1.6)
    return {"x": x, "y": y, "labels": np.array(["background", "object"])}


_GENERATORS = {
    "mobilenet": _quadrant_images,
    "vit": _quadrant_images,
    "text_encoder": _text,
    "audio": _audio,
    "detector": _detection,
    "segmenter": _segmentation,
}


def make_dataset(name: str, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` samples for zoo model ``name``; the same (name, n, seed) always gives the same arrays."""
    if name not in _GENERATORS:
        raise KeyError(f"no data for zoo model {name!r}; known: {sorted(_GENERATORS)}")
    return _GENERATORS[name](n, np.random.default_rng(seed))


def make_splits(name: str, seed: int = 0, sizes: dict | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{"data": calibration+evaluation samples, "train": training samples}, from disjoint seeds."""
    sizes = {**SPLIT_SIZES, **(sizes or {})}
    return {"data": make_dataset(name, sizes["data"], 2 * seed + 1000),
            "train": make_dataset(name, sizes["train"], 2 * seed + 1001)}


def inputs_of(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model inputs in forward-argument order (``x`` or the ``x.*`` keys as written)."""
    if "x" in arrays:
        return [arrays["x"]]
    return [v for k, v in arrays.items() if k.startswith("x.")]


def targets_of(arrays: dict[str, np.ndarray]):
    """``y`` as an array, ``y.<name>`` keys as a dict {name: array}, or None (agreement)."""
    if "y" in arrays:
        return arrays["y"]
    named = {k[2:]: v for k, v in arrays.items() if k.startswith("y.")}
    return named or None


def write_npz(path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` (key order kept) to ``path`` atomically: temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
