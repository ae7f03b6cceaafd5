"""Write the embedded default's data folder, calibration_data/digits/, from digits_splits.

    .venv/bin/python scripts/make_calibration_data.py [--seed 0] [--out calibration_data/digits]

Writes calibration.npz and evaluation.npz (x float32 (N, 1, 32, 32), normalized; y int64),
labels.txt (one class name per line) and preprocessing.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgepack.inputs.digits import IMAGE_SIZE, LABELS, MEAN, SOURCE, STD, digits_splits  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "calibration_data" / "digits")
    args = ap.parse_args()

    splits = digits_splits(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("calibration", "evaluation"):
        x, y = splits[name]
        np.savez_compressed(args.out / f"{name}.npz", x=x.astype(np.float32), y=y.astype(np.int64))
        print(f"{args.out / (name + '.npz')}: x {x.shape} {x.dtype}, y {y.shape} {y.dtype}")
    (args.out / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
    preprocessing = {"mean": list(MEAN), "std": list(STD), "image_size": IMAGE_SIZE, "layout": "NCHW",
                     "source": SOURCE}
    (args.out / "preprocessing.json").write_text(json.dumps(preprocessing, indent=2) + "\n")
    print(f"{args.out}: labels.txt, preprocessing.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
