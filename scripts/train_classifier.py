"""Train the `digits-cnn` classifier / feature extractor on the digits train split.

    python scripts/train_classifier.py            # writes diffbench/data/digits-cnn.safetensors

Deterministic: fixed seed 0, one CPU thread (torch and BLAS) whatever the caller's; docs/digits.md states
when the file is reproduced bit for bit. AdamW + one-cycle LR, random ±1 pixel shifts.
Trains on the train split only and reports test accuracy (the test split is never used for
training or model selection); then fixes ``feature_scale`` so train-split features have unit
RMS per dimension.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffbench.checkpoints import save_checkpoint, shipped
from diffbench.datasets import digits
from diffbench.devices import one_thread
from diffbench.metrics.digits_cnn import NAME, DigitsCNN, from_uint8, to_uint8


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels, padding with background (-1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen))
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


def accuracy(net: DigitsCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    with torch.inference_mode():
        return (net(images).argmax(1) == labels).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=shipped(NAME))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with one_thread():  # sums round alike whatever the machine's thread count
        train_classifier(args.out, args.epochs, args.seed)


def train_classifier(out: Path, epochs: int, seed: int) -> None:
    """Train digits-cnn with ``seed`` for ``epochs`` epochs and write it to ``out``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    train, test = digits("train"), digits("test")
    x_train = from_uint8(to_uint8(train.images))  # the extractor sees uint8 round-tripped images
    x_test = from_uint8(to_uint8(test.images))
    arch = {"width": 32, "features": 128, "num_classes": 10, "dropout": 0.3}
    net = DigitsCNN(**arch)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    batch, steps_per_epoch = 64, -(-len(x_train) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * steps_per_epoch)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(net(random_shift(x_train[idx], gen)), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: loss {loss.item():.4f} train acc {accuracy(net, x_train, train.labels):.4f}")
    seconds = time.perf_counter() - t0
    net.eval()
    with torch.inference_mode():
        net.feature_scale.fill_(net.forward_features(x_train)[0].pow(2).mean().rsqrt().item())
    test_acc = accuracy(net, x_test, test.labels)
    config = {"arch": arch, "dataset": "digits", "split": "train", "seed": seed, "epochs": epochs,
              "test_accuracy": round(test_acc, 6)}
    sha = save_checkpoint(out, net.state_dict(), config)
    print(f"test accuracy {test_acc:.4f} ({round(test_acc * len(x_test))}/{len(x_test)}); "
          f"{seconds:.1f} s; wrote {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {sha[:16]})")


if __name__ == "__main__":
    main()
