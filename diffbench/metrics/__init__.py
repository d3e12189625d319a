"""Built-in metrics: name → metric object with compute(...)."""
from __future__ import annotations

METRICS: dict = {}
