"""Built-in metrics: name → metric object with ``options`` and ``compute(...)`` (see base.Metric)."""
from __future__ import annotations

from diffbench.metrics import exact, fidelity, swd, trajectory
from diffbench.metrics.base import Metric, MetricContext, MetricValue

METRICS: dict = {**exact.METRICS, **fidelity.METRICS, **swd.METRICS, **trajectory.METRICS}

__all__ = ["METRICS", "Metric", "MetricContext", "MetricValue"]
