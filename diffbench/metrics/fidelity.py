"""FID, KID and precision/recall through torch-fidelity with a named feature extractor."""
from __future__ import annotations

METRICS: dict = {}
