"""One batch of samples as a sampling call produces it: the unit metrics and saving consume."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """One batch of a sampling call, as it is produced: samples on the CPU with their sample indices."""

    samples: Tensor  # (B, *shape) on the CPU, the model's dtype
    indices: Tensor  # (B,) int64: sample i's index (first_index + position); its noise depends on (seed, i)
    labels: Tensor | None  # (B,) class labels on the CPU, None when unconditional
    seed: int
    result: Any = None  # the SampleResult of the call in progress (grid, options, meta; samples None)
