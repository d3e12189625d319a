"""What a reference dataset is: a split opened for metrics, streamed as image batches or given as FID statistics.

A ``dataset`` plugin is a loader ``loader(split, **options) -> Reference`` with keyword-only options
(their defaults are the component's options). It checks what it can before returning (a missing
path, an empty folder, mixed image sizes, statistics of the wrong shape): a ``DatasetError`` is a
one-line configuration error, raised before any sampling. It never downloads.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor


class DatasetError(ValueError):
    """A reference dataset that cannot be used as given; the message is one line."""


@dataclass(frozen=True)
class Reference:
    """One split of a reference dataset, opened: images in [-1, 1] streamed in batches, or FID statistics.

    ``identity`` names what was opened (dataset, split, options, a fingerprint of the files): it is
    recorded with every result and keys the reference-feature cache. ``batches(n)`` yields float32
    tensors (B, C, H, W) in [-1, 1]; ``stats`` holds precomputed ``mu`` (D,) and ``sigma`` (D, D)
    (float64) for a statistics-only reference, which only FID can use.
    """

    name: str
    split: str
    identity: dict[str, Any]
    num_images: int
    shape: tuple[int, ...] | None = None
    batches: Callable[[int], Iterator[Tensor]] | None = None
    stats: dict[str, np.ndarray] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.stats is not None:
            where = self.identity.get("path") or self.name
            check_statistics(self.stats.get("mu"), self.stats.get("sigma"), f"dataset {self.name!r}: {str(where)!r}")

    @property
    def key(self) -> str:
        """sha256 of the identity (JSON, sorted keys): equal keys mean the same reference data."""
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True, default=str).encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the reference."""
        return {"reference_dataset": self.name, "reference_split": self.split, "reference_identity": self.identity}


# Round-off allowed in reference statistics, relative to the largest entry / eigenvalue: float32 storage of
# a rank-deficient covariance (1000 samples of 2048 features) gives eigenvalues down to -7e-9 of the largest.
SYMMETRY_TOL = 1e-5
PSD_TOL = 1e-6


def check_statistics(mu: Any, sigma: Any, where: str) -> None:
    """FID statistics must be a finite mean (D,) and a finite, symmetric, positive semi-definite covariance
    (D, D) within round-off (SYMMETRY_TOL, PSD_TOL); otherwise a one-line DatasetError naming ``where``.
    (A covariance with a negative eigenvalue makes FID meaningless, even negative.)"""
    if not (isinstance(mu, np.ndarray) and isinstance(sigma, np.ndarray)):
        raise DatasetError(f"{where}: statistics need arrays mu and sigma")
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise DatasetError(f"{where}: mu must be (D,) and sigma (D, D); got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DatasetError(f"{where}: holds non-finite statistics (NaN or inf in mu or sigma)")
    scale = float(np.abs(sigma).max()) if sigma.size else 0.0
    asym = float(np.abs(sigma - sigma.T).max()) if sigma.size else 0.0
    if asym > SYMMETRY_TOL * scale:
        raise DatasetError(f"{where}: sigma is not symmetric (largest |sigma - sigma^T| = {asym:.3g}, "
                           f"largest |sigma| = {scale:.3g})")
    if sigma.size:
        eig = np.linalg.eigvalsh((sigma + sigma.T) / 2)
        if eig[0] < -PSD_TOL * max(float(eig[-1]), 0.0):
            raise DatasetError(f"{where}: sigma is not positive semi-definite (smallest eigenvalue {eig[0]:.4g}, "
                               f"largest {eig[-1]:.4g}); FID against it would be meaningless")


def from_tensor(name: str, split: str, images: Tensor, identity: dict[str, Any]) -> Reference:
    """A reference over images already in memory (N, C, H, W) in [-1, 1]."""
    def batches(size: int) -> Iterator[Tensor]:
        yield from images.split(size)

    return Reference(name, split, identity, len(images), tuple(images.shape[1:]), batches)
