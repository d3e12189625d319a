"""What a reference dataset is: a split opened for metrics, streamed as image batches or given as FID statistics.

A ``dataset`` plugin is a loader ``loader(split, **options) -> Reference`` with keyword-only options
(their defaults are the component's options). It checks what it can before returning (a missing
path, an empty folder, mixed image sizes, statistics of the wrong shape): a ``DatasetError`` is a
one-line configuration error, raised before any sampling. It never downloads.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor


class DatasetError(ValueError):
    """A reference dataset that cannot be used as given; the message is one line."""


@dataclass(frozen=True)
class Reference:
    """One split of a reference dataset, opened: images in [-1, 1] streamed in batches, or FID statistics.

    ``identity`` names what was opened (dataset, split, options, a fingerprint of the files): it is
    recorded with every result and keys the reference-feature cache. ``batches(n)`` yields float32
    tensors (B, C, H, W) in [-1, 1]; ``stats`` holds precomputed ``mu`` (D,) and ``sigma`` (D, D)
    (float64) for a statistics-only reference, which only FID can use.
    """

    name: str
    split: str
    identity: dict[str, Any]
    num_images: int
    shape: tuple[int, ...] | None = None
    batches: Callable[[int], Iterator[Tensor]] | None = None
    stats: dict[str, np.ndarray] | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """sha256 of the identity (JSON, sorted keys): equal keys mean the same reference data."""
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True, default=str).encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the reference."""
        return {"reference_dataset": self.name, "reference_split": self.split, "reference_identity": self.identity}


def from_tensor(name: str, split: str, images: Tensor, identity: dict[str, Any]) -> Reference:
    """A reference over images already in memory (N, C, H, W) in [-1, 1]."""
    def batches(size: int) -> Iterator[Tensor]:
        yield from images.split(size)

    return Reference(name, split, identity, len(images), tuple(images.shape[1:]), batches)
