"""The embedded default data: scikit-learn's bundled handwritten digits (no network).

`load_digits` holds 1797 grey 8x8 images (pixel values 0..16) of the digits 0-9. Each
image is upsampled bilinearly to 32x32, scaled to [0, 1] and normalized with the fixed
MEAN/STD below, giving float32 arrays of shape (N, 1, 32, 32) and int64 labels.

The split is a seeded permutation (numpy `default_rng(seed)`): the first 450 indices
are the evaluation split, the remaining 1347 the training split; the 256 calibration
samples are drawn from the training split, so calibration and evaluation are disjoint
and evaluation is never trained on.
"""
from __future__ import annotations

import numpy as np

LABELS: list[str] = [str(i) for i in range(10)]
IMAGE_SIZE = 32
N_EVALUATION = 450
N_CALIBRATION = 256
SOURCE = "scikit-learn load_digits, bilinear upsampled 8x8 -> 32x32"

# Mean and standard deviation of the [0, 1]-scaled, upsampled pixels of the seed-0
# training split, computed once (see `_pixel_stats`) and fixed here so that the bundle
# manifest can record the preprocessing. They do not change with the seed.
MEAN: tuple[float, ...] = (0.3052,)
STD: tuple[float, ...] = (0.3238,)


def _upsampled_unit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 images as (N, 1, 32, 32) float32 in [0, 1], and int64 labels."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]    # (N, 1, 8, 8)
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return x.clamp_(0.0, 1.0).numpy().astype(np.float32), digits.target.astype(np.int64)


def digits_split_indices(seed: int = 0) -> dict[str, np.ndarray]:
    """Sorted int64 indices into `load_digits()` for "train", "calibration", "evaluation".

    evaluation: 450 samples; train: the other 1347; calibration: 256 samples of train.
    """
    n = 1797
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    evaluation = np.sort(order[:N_EVALUATION])
    train = np.sort(order[N_EVALUATION:])
    calibration = np.sort(rng.choice(train, size=N_CALIBRATION, replace=False))
    return {"train": train.astype(np.int64), "calibration": calibration.astype(np.int64),
            "evaluation": evaluation.astype(np.int64)}


def _normalize(x: np.ndarray) -> np.ndarray:
    mean = np.asarray(MEAN, np.float32)[None, :, None, None]
    std = np.asarray(STD, np.float32)[None, :, None, None]
    return ((x - mean) / std).astype(np.float32)


def digits_splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train", "calibration", "evaluation"} -> (x float32 (N, 1, 32, 32) normalized, y int64 (N,))."""
    x, y = _upsampled_unit_images()
    x = _normalize(x)
    return {name: (np.ascontiguousarray(x[idx]), y[idx].copy())
            for name, idx in digits_split_indices(seed).items()}


def _pixel_stats(seed: int = 0) -> tuple[float, float]:
    """How MEAN/STD were computed: over the [0, 1] pixels of the training split."""
    x, _ = _upsampled_unit_images()
    train = x[digits_split_indices(seed)["train"]].astype(np.float64)
    return float(train.mean()), float(train.std())


if __name__ == "__main__":
    print("mean %.6f std %.6f" % _pixel_stats())
