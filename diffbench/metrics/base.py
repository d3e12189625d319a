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


class Metric(Protocol):
    """A metric plugin: ``options`` are its defaults; ``compute`` returns one or more named values."""

    name: str
    options: dict[str, Any]

    def compute(self, samples: Tensor, *, model: Any, result: Any, context: MetricContext,
                **options: Any) -> dict[str, MetricValue]: ...
