"""The `digits` reference dataset: images in [-1, 1] as (N, C, H, W) with labels.

``digits``: scikit-learn's bundled handwritten digits (UCI optdigits test set, 1797 images,
8×8, 17 grey levels 0..16, 10 classes), scaled as x = v / 8 - 1. The split is fixed:
scikit-learn ``train_test_split(test_size=300, stratify=labels, random_state=0)`` →
1497 train / 300 test images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from diffbench.datasets.base import DatasetError, Reference

SPLITS = ("train", "test", "all")
DIGITS_TEST_SIZE = 300
SPLIT_SIZES = {"train": 1797 - DIGITS_TEST_SIZE, "test": DIGITS_TEST_SIZE, "all": 1797}  # tested against the data
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class ImageDataset:
    """Images (N, C, H, W) float32 in [-1, 1] and integer labels (N,), one split of a named dataset."""

    name: str
    split: str
    images: Tensor
    labels: Tensor
    num_classes: int

    def __len__(self) -> int:
        return len(self.images)


@cache
def digits_indices() -> dict[str, Tensor]:
    """Indices into the full 1797-image set of each digits split (sorted; train and test disjoint)."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = load_digits().target
    idx_train, idx_test = train_test_split(
        np.arange(len(target)), test_size=DIGITS_TEST_SIZE, stratify=target, random_state=DIGITS_SPLIT_SEED
    )
    return {
        "train": torch.from_numpy(np.sort(idx_train)),
        "test": torch.from_numpy(np.sort(idx_test)),
        "all": torch.arange(len(target)),
    }


@cache
def _digits_all() -> tuple[Tensor, Tensor]:
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy((data.images / 8.0 - 1.0).astype(np.float32))[:, None]
    return images, torch.from_numpy(data.target.astype(np.int64))


def digits(split: str = "train") -> ImageDataset:
    """scikit-learn digits, 1×8×8 in [-1, 1]; split 'train' (1497), 'test' (300) or 'all' (1797)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} of dataset 'digits'; splits: {', '.join(SPLITS)}")
    images, labels = _digits_all()
    idx = digits_indices()[split]
    return ImageDataset("digits", split, images[idx], labels[idx], 10)


def reference(split: str | None = None) -> Reference:
    """The `digits` dataset plugin: scikit-learn's bundled 8×8 digits, split 'train' (default), 'test' or 'all'.

    The images are loaded when first streamed: a run whose reference features are cached never imports
    scikit-learn (about 2 s of start-up)."""
    split = split or "train"
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} of dataset 'digits'; splits: {', '.join(SPLITS)}")

    def batches(size: int) -> Iterator[Tensor]:
        yield from digits(split).images.split(size)

    return Reference("digits", split, {"dataset": "digits", "split": split}, SPLIT_SIZES[split], (1, 8, 8), batches)
