"""What a metric is: compute(samples, ...) -> {name: MetricValue}, every value with its uncertainty."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class MetricValue:
    """A metric value, one standard error (None only where none can be estimated) and how it was estimated."""

    value: float
    uncertainty: float | None
    method: str  # e.g. "bootstrap 200 over generated samples", "std over 100 KID subsets / sqrt(100)"


@dataclass
class MetricContext:
    """What the runner hands a metric: where to cache reference statistics, the device, the seed."""

    cache_dir: Path
    device: torch.device = torch.device("cpu")
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # filled by metrics: extractor, reference hash, ...


# Naming convention for metrics that do not declare ``higher_is_better``.
HIGHER_IS_BETTER_WORDS = ("accuracy", "precision", "recall", "density", "coverage", "inception_score", "isc")
LOWER_IS_BETTER_WORDS = ("fid", "kid", "error")


def conventional_direction(value_name: str) -> bool | None:
    """True (higher is better) / False (lower is better) by the name's convention, None when it has none."""
    name = value_name.lower()
    if any(word in name for word in HIGHER_IS_BETTER_WORDS):
        return True
    if any(word in name for word in LOWER_IS_BETTER_WORDS):
        return False
    return None


class Metric(Protocol):
    """A metric plugin: ``options`` are its defaults; ``compute`` returns one or more named values."""

    name: str
    options: dict[str, Any]

    def compute(self, samples: Tensor, *, model: Any, result: Any, context: MetricContext,
                **options: Any) -> dict[str, MetricValue]: ...
