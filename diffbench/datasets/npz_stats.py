"""The `npz-stats` dataset: precomputed FID statistics (``mu``, ``sigma``) as EDM and clean-fid write them."""

from __future__ import annotations

import hashlib
import io
import math
import zipfile

import numpy as np

from diffbench.datasets._files import existing
from diffbench.datasets.base import DatasetError, Reference

MAX_DIM = 8192  # feature dimensions (Inception 2048, VGG16 4096); sigma then takes 512 MiB in float64
MAX_FILE_BYTES = 1 << 30


def npy_shapes(data) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each array's declared (shape, dtype) in an .npz (its bytes or its path), read from the .npy headers
    without decoding the arrays."""
    shapes = {}
    with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as z:
        for info in z.infolist():
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f, max_header_size=10_000)
            shapes[info.filename.removesuffix(".npy")] = (shape, dtype)
    return shapes


def npz_stats(split: str | None = None, *, path: str = "") -> Reference:
    """``mu`` (D,) and ``sigma`` (D, D) from an ``.npz`` read with allow_pickle=False; only FID can use them.

    The file is read once (at most 1 GiB), so the recorded sha256 is that of the statistics used; array
    sizes are checked from their headers before anything is decoded (D ≤ MAX_DIM)."""
    file = existing(path, "npz-stats")
    where = f"dataset 'npz-stats': {str(file)!r}"
    try:
        with open(file, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise DatasetError(f"{where} cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise DatasetError(
            f"{where} is larger than {MAX_FILE_BYTES >> 20} MiB; FID statistics of at most "
            f"{MAX_DIM} dimensions are far smaller"
        )
    try:
        shapes = npy_shapes(data)
        missing = [k for k in ("mu", "sigma") if k not in shapes]
        if missing:
            raise DatasetError(f"{where} has no {missing[0]!r} array (has: {', '.join(shapes) or 'none'})")
        for name in ("mu", "sigma"):
            shape, dtype = shapes[name]
            if len(shape) > 2 or any(d > MAX_DIM for d in shape) or math.prod(shape) * dtype.itemsize > 8 * MAX_DIM**2:
                raise DatasetError(
                    f"{where}: {name} has shape {shape}; statistics of at most {MAX_DIM} dimensions are supported"
                )
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    except DatasetError:
        raise
    except Exception as exc:  # not an npz, or object arrays that would need pickle
        text = (str(exc).strip().splitlines() or [""])[0]
        raise DatasetError(f"{where} is not a plain .npz of arrays ({type(exc).__name__}: {text})") from None
    identity = {
        "dataset": "npz-stats",
        "path": str(file.resolve()),
        "sha256": hashlib.sha256(data).hexdigest(),
        "dim": len(mu) if mu.ndim == 1 else None,
    }
    return Reference("npz-stats", split or "stats", identity, 0, None, None, {"mu": mu, "sigma": sigma})


def check_dimension(reference: Reference, dim: int, extractor: str) -> None:
    """A statistics file must match the extractor's feature dimension (DatasetError naming both)."""
    have = len(reference.stats["mu"])
    if have != dim:
        raise DatasetError(
            f"dataset 'npz-stats': {reference.identity['path']!r} holds {have}-dimensional "
            f"statistics; extractor {extractor!r} gives {dim}-dimensional features"
        )


npz_stats.option_help = {"path": ".npz with mu (D,) and sigma (D, D) FID statistics, relative to the suite file"}
npz_stats.path_options = {"path": "path"}
