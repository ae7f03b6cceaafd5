"""Train the embedded default teacher on the digits training split and save its weights.

    .venv/bin/python scripts/train_default_teacher.py [--epochs N] [--out FILE]

Deterministic: fixed seeds, one data-order generator, deterministic algorithms, two
threads. Trains on the 1347-sample training split only; the 450-sample evaluation split
is only measured (printed each epoch), never used to choose anything: the weights of the
last epoch are saved, as float32, to edgepack/inputs/assets/digits_teacher.pt.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepack.inputs.default_model import WEIGHTS_PATH, count_macs, make_teacher  # noqa: E402
from edgepack.inputs.digits import MEAN, STD, digits_splits  # noqa: E402

SEED = 0
SHIFT = 2            # random translation, in pixels of the 32x32 image
BATCH = 64
LR = 0.05
WEIGHT_DECAY = 5e-4


def random_shift(x: torch.Tensor, gen: torch.Generator, shift: int = SHIFT) -> torch.Tensor:
    """Translate each image by up to +-shift pixels, filling with the background (0 before normalizing)."""
    background = -MEAN[0] / STD[0]
    n, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), value=background)
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=gen)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    args = ap.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception as e:  # pragma: no cover - CPU supports it; keep going if a build does not
        print(f"deterministic algorithms unavailable: {e}")

    splits = digits_splits(SEED)
    xtr, ytr = (torch.from_numpy(a) for a in splits["train"])
    xev, yev = (torch.from_numpy(a) for a in splits["evaluation"])

    model = make_teacher(num_classes=10)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters, {count_macs(model):,} MACs per image; "
          f"train {len(ytr)}, evaluation {len(yev)}")

    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": WEIGHT_DECAY},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=LR, momentum=0.9, nesterov=True)
    # Only full batches: a 3-sample remainder batch (1347 = 21 * 64 + 3) makes BatchNorm's
    # running statistics swing. Each epoch's order is new, so every sample is still used.
    steps_per_epoch = len(ytr) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, epochs=args.epochs,
                                                steps_per_epoch=steps_per_epoch, pct_start=0.2)
    gen = torch.Generator().manual_seed(SEED)

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(ytr), generator=gen)
        total, seen, correct = 0.0, 0, 0
        for step in range(steps_per_epoch):
            idx = order[step * BATCH:(step + 1) * BATCH]
            xb, yb = random_shift(xtr[idx], gen), ytr[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        acc = accuracy(model, xev, yev)
        print(f"epoch {epoch:3d}/{args.epochs}  loss {total / seen:.4f}  train-acc {correct / seen:.4f}  "
              f"eval-acc {acc:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)

    elapsed = time.perf_counter() - start
    acc = accuracy(model, xev, yev)
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).clone().contiguous()
             for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    print(f"trained in {elapsed:.0f} s; evaluation top-1 {acc * 100:.2f} % "
          f"({int(round(acc * len(yev)))}/{len(yev)}); saved {args.out} ({args.out.stat().st_size:,} bytes)")
    return 0 if acc >= 0.98 else 1


if __name__ == "__main__":
    raise SystemExit(main())
