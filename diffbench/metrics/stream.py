"""The streaming metric flow of one sampling call: one extractor per feature key, rows per batch, one score.

``MetricPlan`` resolves a cell's metrics into feature extractors (metrics whose extractors share a
key share one), ``FeatureRows`` collects each extractor's rows batch by batch (and merges the rows
of several workers in sample-index order), and ``MetricPlan.score`` scores each metric once on the
gathered rows. Metrics with only the older ``compute(samples, ...)`` get the samples themselves as
rows (see ``diffbench.metrics.base``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Hashable, Iterable

import torch
from torch import Tensor

from diffbench.metrics.base import (
    Batch,
    FeatureExtractor,
    MetricContext,
    MetricValue,
    SampleRows,
    is_streaming,
)


class MetricError(Exception):
    """A metric failed; the message names the metric (one line)."""

    def __init__(self, metric: str, exc: BaseException) -> None:
        super().__init__(f"metric {metric!r}: {type(exc).__name__}: {exc}")
        self.metric, self.original = metric, exc


@dataclass(frozen=True)
class PlannedMetric:
    """One metric of a plan: its component, resolved options and the key of the rows it scores."""

    name: str
    component: Any  # registry.Component
    options: dict[str, Any]
    key: Hashable
    streaming: bool


class MetricPlan:
    """A cell's metrics on one model: build with ``(component, options)`` pairs; extractors are built here."""

    def __init__(self, metrics: Iterable[tuple[Any, dict[str, Any]]], model: Any, context: MetricContext) -> None:
        self.model, self.context = model, context
        self.metrics: list[PlannedMetric] = []
        self.extractors: dict[Hashable, FeatureExtractor] = {}
        self.owner: dict[Hashable, str] = {}  # the metric named when a shared extractor fails
        for comp, options in metrics:
            streaming = is_streaming(comp.obj)
            try:
                ext = comp.obj.features(model=model, context=context, **options) if streaming else SampleRows()
                key = ext.key
                hash(key)
            except (Exception, SystemExit) as exc:  # SystemExit from a plugin fails its cell, not the run
                raise MetricError(comp.name, exc) from exc
            if key not in self.extractors:
                self.extractors[key], self.owner[key] = ext, comp.name
            self.metrics.append(PlannedMetric(comp.name, comp, options, key, streaming))

    def rows(self) -> FeatureRows:
        """An empty collector for one sampling call."""
        return FeatureRows(self.extractors, self.owner)

    def score(self, rows: FeatureRows, result: Any) -> list[tuple[PlannedMetric, dict[str, MetricValue]]]:
        """Each metric scored once on the gathered rows; ``result`` is the call's SampleResult."""
        gathered = rows.gathered()
        return [(m, self.score_metric(m, gathered[m.key], result)) for m in self.metrics]

    def score_metric(self, m: PlannedMetric, feats: Tensor, result: Any) -> dict[str, MetricValue]:
        """One metric of the plan scored on its gathered rows ``feats``."""
        try:
            if m.streaming:
                return m.component.obj.score(feats, model=self.model, result=result, context=self.context, **m.options)
            res = dataclasses.replace(result, samples=feats) if dataclasses.is_dataclass(result) else result
            return m.component.obj.compute(feats, model=self.model, result=res, context=self.context, **m.options)
        except (Exception, SystemExit) as exc:  # SystemExit from a plugin fails its cell, not the run
            raise MetricError(m.name, exc) from exc


class FeatureRows:
    """Per-sample rows of every extractor, collected batch by batch, with the sample indices they belong to."""

    def __init__(self, extractors: dict[Hashable, FeatureExtractor], owner: dict[Hashable, str] | None = None) -> None:
        self.extractors, self.owner = extractors, owner or {}
        self.parts: dict[Hashable, list[Tensor]] = {k: [] for k in extractors}
        self.indices: list[Tensor] = []
        self.extract_seconds = 0.0  # time in the extractors
        self._pending: tuple[Batch, int] | None = None

    def add_later(self, batch: Batch) -> None:
        """``add`` the batch before this one now, and this one when the next comes or the rows are read: the
        last batch of a sampling call is then extracted by whoever reads the rows (the scoring thread, beside
        the cell's harness probe), on as many torch threads as it would have had here."""
        self.flush()
        self._pending = (batch, torch.get_num_threads())

    def flush(self) -> None:
        """Extract the batch ``add_later`` still holds."""
        if self._pending is None:
            return
        (batch, threads), self._pending = self._pending, None
        before = torch.get_num_threads()
        torch.set_num_threads(threads)  # per thread: features are extracted as on the sampling thread
        try:
            self.add(batch)
        finally:
            torch.set_num_threads(before)

    def add(self, batch: Batch) -> None:
        """Run every extractor once on ``batch`` and keep its rows (one per sample)."""
        t0 = time.perf_counter()
        try:
            self._extract(batch)
        finally:
            self.extract_seconds += time.perf_counter() - t0

    def _extract(self, batch: Batch) -> None:
        for key, ext in self.extractors.items():
            try:
                rows = ext(batch)
                if not isinstance(rows, Tensor) or rows.ndim < 1 or len(rows) != len(batch.samples):
                    raise ValueError(
                        f"feature extractor returned {type(rows).__name__} "
                        f"{tuple(getattr(rows, 'shape', ()))}, not one row for each of "
                        f"{len(batch.samples)} samples"
                    )
            except (Exception, SystemExit) as exc:  # SystemExit from a plugin fails its cell, not the run
                raise MetricError(self.owner.get(key, str(key)), exc) from exc
            self.parts[key].append(rows.detach().cpu())
        self.indices.append(batch.indices.detach().cpu().long())

    def __len__(self) -> int:
        pending = 0 if self._pending is None else len(self._pending[0].samples)
        return sum(len(i) for i in self.indices) + pending

    def gathered(self) -> dict[Hashable, Tensor]:
        """Each extractor's rows concatenated in sample-index order (ValueError on a repeated index)."""
        self.flush()
        if not self.indices:
            raise ValueError("no samples were collected")
        idx = torch.cat(self.indices)
        order = None
        if len(idx) > 1 and not bool((idx[1:] > idx[:-1]).all()):
            order = torch.argsort(idx, stable=True)
            if bool((idx[order][1:] == idx[order][:-1]).any()):
                raise ValueError("the same sample index was collected twice")
        out = {}
        for key, parts in self.parts.items():
            rows = torch.cat(parts) if len(parts) > 1 else parts[0]
            out[key] = rows if order is None else rows[order]
        return out

    def export(self) -> dict[str, Any]:
        """Plain tensors to send from a worker: {"indices": (n,), "rows": {key: (n, ...)}} (picklable)."""
        self.flush()
        return {
            "indices": torch.cat(self.indices) if self.indices else torch.zeros(0, dtype=torch.long),
            "rows": {k: torch.cat(v) for k, v in self.parts.items() if v},
        }

    def absorb(self, exported: dict[str, Any]) -> None:
        """Add a worker's ``export()`` (same extractor keys; its sample indices disjoint from the others)."""
        self.flush()
        if len(exported["indices"]) == 0:
            return
        if set(exported["rows"]) != set(self.parts):
            raise ValueError("cannot merge rows of different feature extractors")
        for key, rows in exported["rows"].items():
            self.parts[key].append(rows)
        self.indices.append(exported["indices"].long())
