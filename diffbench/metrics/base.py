"""What a metric is: per batch, samples → per-sample feature rows; after all batches, one score.

The streaming contract (what ``diffbench.run.cell`` and the executors rely on)
--------------------------------------------------------------------------
A metric has ``name``, ``options`` (defaults) and either the two streaming methods

- ``features(*, model, context, **options) -> FeatureExtractor``: called once per cell and seed
  group, before sampling (so a metric that cannot run fails before any sampling). The extractor
  has a hashable ``key`` and turns one :class:`Batch` into a tensor with one row per sample,
  ``rows[i]`` belonging to ``batch.indices[i]``. Extractors with equal keys must return equal rows:
  the cell calls only the first of them and hands its rows to every metric that shares the key
  (fid, kid and prc on one extractor extract once).
- ``score(features, *, model, result, context, **options) -> dict[str, MetricValue]``: called
  once, after all batches, with the rows of every batch concatenated in sample-index order. The
  rows may come from several workers (a cell split across processes): they are gathered and
  sorted by sample index first, so a score never depends on how the work was split. ``result``
  is the ``SampleResult`` of the sampling call (grid, options, meta, labels, counted NFE); its
  ``samples`` is None. Resampling for uncertainty (bootstrap, subsets) works on these rows.

or the older in-memory form ``compute(samples, *, model, result, context, **options)``: such a
metric still works; the cell collects the group's samples in memory for it (the memory of the
whole group, not of a batch) and calls ``compute`` once with ``result.samples`` filled in.
:class:`StreamingMetric` gives streaming metrics a ``compute`` of that form too, for direct calls.

Every value is a :class:`MetricValue` with its uncertainty and how it was estimated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Protocol, runtime_checkable

import torch
from torch import Tensor

from diffbench.core.batch import (
    Batch,  # re-exported: metric plugins import it from here
)


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
    registry: Any = None  # where ``dataset`` plugins are looked up (None: the default registry)
    # σ grids of the run's deterministic cells, by model (``grid_key(model)``): what a metric that shares one
    # computation across cells (trajectory-error's reference) plans from; empty outside a run
    # entries {"sigmas": [...], "guidance": g, "clip_x0": bool}
    grids: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dry_run: bool = False  # validate: check that every metric can run, never compute a costly reference


def grid_key(model: Any) -> str:
    """The key of ``model`` in ``MetricContext.grids``: its identity as sorted JSON."""
    import json

    return json.dumps(model.identity(), sort_keys=True, default=str)


@runtime_checkable
class FeatureExtractor(Protocol):
    """Turns a batch into per-sample rows; extractors with equal ``key`` give equal rows (computed once)."""

    key: Hashable

    def __call__(self, batch: Batch) -> Tensor: ...


class Metric(Protocol):
    """The in-memory form: ``compute`` on all samples of a seed group at once (collected for it)."""

    name: str
    options: dict[str, Any]

    def compute(
        self, samples: Tensor, *, model: Any, result: Any, context: MetricContext, **options: Any
    ) -> dict[str, MetricValue]: ...


def is_streaming(metric: Any) -> bool:
    """Whether ``metric`` implements the streaming form (``features`` and ``score``)."""
    return callable(getattr(metric, "features", None)) and callable(getattr(metric, "score", None))


class StreamingMetric:
    """Base class of streaming metrics: subclasses define ``features`` and ``score``; ``compute`` is given."""

    name: str = ""
    options: dict[str, Any] = {}

    def features(self, *, model: Any, context: MetricContext, **options: Any) -> FeatureExtractor:
        raise NotImplementedError

    def score(
        self, features: Tensor, *, model: Any, result: Any, context: MetricContext, **options: Any
    ) -> dict[str, MetricValue]:
        raise NotImplementedError

    def compute(
        self, samples: Tensor, *, model: Any, result: Any = None, context: MetricContext | None = None, **options: Any
    ) -> dict[str, MetricValue]:
        """The metric on in-memory ``samples`` (one batch holding sample indices 0..N-1)."""
        opts = {**self.options, **options}
        labels = getattr(result, "labels", None)
        batch = Batch(samples, torch.arange(len(samples)), labels, int(getattr(context, "seed", 0)), result)
        rows = self.features(model=model, context=context, **opts)(batch)
        return self.score(rows, model=model, result=result, context=context, **opts)


class SampleRows:
    """The feature extractor that keeps the samples themselves (key 'samples'): for metrics that need them."""

    key: Hashable = ("samples",)

    def __call__(self, batch: Batch) -> Tensor:
        return batch.samples


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
