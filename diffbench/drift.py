"""Paired drift: a compact fingerprint of a cell's first samples, and their relative change between two runs.

Every cell starts from the same per-sample noise as its baseline, so the same sample indices can be
compared one by one: a sampler whose step is off by 1 % moves every sample, long before FID (computed on
independent-looking statistics) notices. The fingerprint is the first ``SAMPLES`` samples of the cell's
first seed group, each flattened and cut to at most ``COORDINATES`` evenly spaced coordinates, stored as
float32 (base64, little-endian). ``relative_rms_change`` is ‖run − baseline‖ / ‖baseline‖ over all of it.
"""
from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch

SAMPLES = 16
COORDINATES = 1024  # per sample; larger samples keep evenly spaced coordinates (an unbiased RMS estimate)
# Relative RMS change below which two runs' samples count as the same up to float32 round-off. Measured in
# docs/regression.md ("Paired drift"): batch size and thread count move digits-eps samples by up to ~1e-6;
# Euler's step scaled by 0.99 moves them by 5.6e-2.
FLOOR = 1e-4


def coordinates(numel: int) -> np.ndarray:
    """The flattened coordinates a fingerprint keeps: all, or ``COORDINATES`` evenly spaced ones."""
    if numel <= COORDINATES:
        return np.arange(numel)
    return np.unique(np.round(np.linspace(0, numel - 1, COORDINATES)).astype(np.int64))


def fingerprint(samples: torch.Tensor | None) -> dict[str, Any] | None:
    """The first ``SAMPLES`` samples, flattened to at most ``COORDINATES`` coordinates each, as a record field."""
    if samples is None or len(samples) == 0:
        return None
    flat = samples[:SAMPLES].detach().to("cpu", torch.float32).flatten(1).numpy()
    kept = coordinates(flat.shape[1])
    values = np.ascontiguousarray(flat[:, kept], dtype="<f4")
    return {"samples": int(values.shape[0]), "coordinates": int(values.shape[1]), "of": int(flat.shape[1]),
            "dtype": "float32", "data": base64.b64encode(values.tobytes()).decode("ascii")}


def values(fp: dict[str, Any]) -> np.ndarray:
    """A fingerprint's samples as a (samples, coordinates) float64 array; ValueError when it is malformed."""
    try:
        raw = np.frombuffer(base64.b64decode(fp["data"], validate=True), dtype="<f4")
        return raw.reshape(int(fp["samples"]), int(fp["coordinates"])).astype(np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed drift fingerprint ({type(exc).__name__}: {exc})") from None


def relative_rms_change(base: dict[str, Any], run: dict[str, Any]) -> float:
    """‖run − base‖ / ‖base‖ over the samples both fingerprints hold; ValueError when they cannot be paired."""
    b, r = values(base), values(run)
    if b.shape[1] != r.shape[1] or base.get("of") != run.get("of"):
        raise ValueError(f"fingerprints of different sample sizes ({base.get('of')} vs {run.get('of')} values)")
    n = min(len(b), len(r))
    if n == 0:
        raise ValueError("empty fingerprint")
    b, r = b[:n], r[:n]
    norm = float(np.sqrt(np.mean(b * b)))
    diff = float(np.sqrt(np.mean((r - b) ** 2)))
    if not np.isfinite(diff):
        return float("inf")
    return diff / norm if norm > 0 else (0.0 if diff == 0 else float("inf"))
