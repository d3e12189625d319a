"""Exact solver error against the true probability-flow ODE solution (analytic models)."""
from __future__ import annotations

METRICS: dict = {}
