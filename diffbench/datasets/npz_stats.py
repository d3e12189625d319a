"""The `npz-stats` dataset: precomputed FID statistics (``mu``, ``sigma``) as EDM and clean-fid write them."""
from __future__ import annotations

import numpy as np

from diffbench.checkpoints import file_sha256
from diffbench.datasets._files import existing
from diffbench.datasets.base import DatasetError, Reference


def npz_stats(split: str | None = None, *, path: str = "") -> Reference:
    """``mu`` (D,) and ``sigma`` (D, D) from an ``.npz`` read with allow_pickle=False; only FID can use them."""
    file = existing(path, "npz-stats")
    try:
        with np.load(file, allow_pickle=False) as data:
            missing = [k for k in ("mu", "sigma") if k not in data.files]
            if missing:
                raise DatasetError(f"dataset 'npz-stats': {str(file)!r} has no {missing[0]!r} array "
                                   f"(has: {', '.join(data.files) or 'none'})")
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    except DatasetError:
        raise
    except Exception as exc:  # not an npz, or object arrays that would need pickle
        raise DatasetError(f"dataset 'npz-stats': {str(file)!r} is not a plain .npz of arrays "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise DatasetError(f"dataset 'npz-stats': {str(file)!r}: mu must be (D,) and sigma (D, D); "
                           f"got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DatasetError(f"dataset 'npz-stats': {str(file)!r} holds non-finite statistics")
    identity = {"dataset": "npz-stats", "path": str(file.resolve()), "sha256": file_sha256(file), "dim": len(mu)}
    return Reference("npz-stats", split or "stats", identity, 0, None, None, {"mu": mu, "sigma": sigma})


def check_dimension(reference: Reference, dim: int, extractor: str) -> None:
    """A statistics file must match the extractor's feature dimension (DatasetError naming both)."""
    have = len(reference.stats["mu"])
    if have != dim:
        raise DatasetError(f"dataset 'npz-stats': {reference.identity['path']!r} holds {have}-dimensional "
                           f"statistics; extractor {extractor!r} gives {dim}-dimensional features")


npz_stats.option_help = {"path": ".npz with mu (D,) and sigma (D, D) FID statistics, relative to the suite file"}
npz_stats.path_options = {"path": "path"}
