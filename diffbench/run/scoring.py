"""Score samples made elsewhere (an image folder, an .npz of samples or of features) with a suite's metrics.

The samples go through the same streaming metric flow as a cell's (``metrics.stream``): the
metrics' extractors turn batches into feature rows, each metric scores once, with the same
reference, options and uncertainty as in a suite. ``--reference`` and ``--metric`` take what a
suite's ``reference:`` and ``metrics:`` entries take.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor

from diffbench.datasets.npz_stats import npy_shapes
from diffbench.metrics.base import Batch, MetricContext
from diffbench.metrics.digits_cnn import from_uint8

SAMPLE_KEYS = ("samples", "images", "arr_0")  # arrays an .npz of samples may hold (arr_0: ADM/guided-diffusion)


class ScoreError(ValueError):
    """Bad input to ``score`` (one line)."""


@dataclass(frozen=True)
class Scored:
    """One value of an offline score: the value, its standard error, how it was estimated, the metric's seconds."""

    value: float
    se: float | None
    method: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "se": self.se, "method": self.method, "seconds": self.seconds}


def _checked(registry: Any, kind: str, cls, value: Any, path: str):
    """A suite entry (a name or a mapping) parsed as ``cls`` and checked against ``registry`` (SuiteError)."""
    from diffbench.registry import UnknownComponentError
    from diffbench.run.suite import SuiteError, check_options, first_error

    try:
        spec = cls.model_validate({"name": value} if isinstance(value, str) else value)
    except ValidationError as exc:
        raise SuiteError(f"{path}: {first_error(exc)}") from None
    try:
        comp = registry.get(kind, spec.name)
    except UnknownComponentError as exc:
        raise SuiteError(f"{path}.name: {exc}") from None
    return spec.model_copy(update={"options": check_options(comp, spec.options, f"{path}.options")})


def image_batches(path: Path, batch_size: int) -> Iterator[Tensor]:
    """An image folder (PNG/JPEG, recursively, sorted; one size) or an .npz of samples, as float batches in [-1, 1].

    .npz: its one array, or the one named samples / images / arr_0; uint8 (N, H, W, C) with C 1 or 3 (the
    ADM convention) or (N, C, H, W); a float array is taken as (N, C, H, W) in [-1, 1].
    """
    if path.is_dir():
        from diffbench.datasets.folder import image_files, load_image

        files = image_files(path)
        if not files:
            raise ScoreError(f"{str(path)!r}: no PNG or JPEG images in the folder")
        shape = None
        for start in range(0, len(files), batch_size):
            images = [load_image(f) for f in files[start : start + batch_size]]
            for f, img in zip(files[start : start + batch_size], images):
                shape = shape or img.shape
                if img.shape != shape:
                    raise ScoreError(
                        f"{str(f)!r}: image of size {tuple(img.shape[1:])}, the folder's first is "
                        f"{tuple(shape[1:])} (resize them to one size first)"
                    )
            yield from_uint8(torch.stack(images))
        return
    arr = _npz_array(path, SAMPLE_KEYS, "samples")
    if arr.ndim != 4:
        raise ScoreError(f"{str(path)!r}: samples must be a 4-d array (N, H, W, C) or (N, C, H, W), not {arr.shape}")
    if arr.dtype == np.uint8:
        if arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
            arr = arr.transpose(0, 3, 1, 2)
        for start in range(0, len(arr), batch_size):
            yield from_uint8(torch.from_numpy(np.ascontiguousarray(arr[start : start + batch_size])))
    elif np.issubdtype(arr.dtype, np.floating):
        for start in range(0, len(arr), batch_size):
            yield torch.from_numpy(np.ascontiguousarray(arr[start : start + batch_size])).float()
    else:
        raise ScoreError(f"{str(path)!r}: samples of dtype {arr.dtype}; uint8 images or floats in [-1, 1]")


MAX_ARRAY_BYTES = 16 << 30  # decoded: 50,000 samples of 3×256×256 uint8 are 9.8 GB, their 2048 features 0.4 GB


def _npz_array(path: Path, keys: tuple[str, ...], what: str) -> np.ndarray:
    """The array of an .npz named by the first of ``keys`` it holds (or its only array), size checked from its
    header before it is decoded (at most MAX_ARRAY_BYTES)."""
    if not path.is_file():
        raise ScoreError(f"{str(path)!r}: no such file")
    try:
        shapes = npy_shapes(path)
        names = list(shapes)
        key = names[0] if len(names) == 1 else next((k for k in keys if k in names), None)
        if key is None:
            raise ScoreError(f"{str(path)!r}: no array named {' or '.join(keys)} (it holds {', '.join(names)})")
        shape, dtype = shapes[key]
        size = math.prod(shape) * dtype.itemsize
        if size > MAX_ARRAY_BYTES:
            raise ScoreError(
                f"{str(path)!r}: array {key!r} {shape} {dtype} decodes to {size / 2**30:.1f} GiB, over the "
                f"{MAX_ARRAY_BYTES >> 30} GiB limit; score an image folder or features instead"
            )
        with np.load(path, allow_pickle=False) as data:
            return data[key]
    except ScoreError:
        raise
    except Exception as exc:  # not a zip / npz, or an object array that would need pickle
        raise ScoreError(f"{str(path)!r}: not a readable .npz of {what} ({type(exc).__name__}: {exc})") from None


def load_features(path: Path) -> Tensor:
    """The N × D float array ``features`` of an .npz (features extracted elsewhere)."""
    arr = _npz_array(Path(path), ("features",), "features")
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating) or len(arr) < 2:
        raise ScoreError(f"{str(path)!r}: features must be a float array of N × D (N ≥ 2), not {arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all():
        raise ScoreError(f"{str(path)!r}: features hold NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(arr))


def score(
    reference: Any,
    metrics: list[Any],
    *,
    samples: str | Path | None = None,
    features: str | Path | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 256,
    registry: Any = None,
) -> dict[str, Scored]:
    """Score ``samples`` (image folder or .npz) or precomputed ``features`` (.npz, array ``features``) with
    ``metrics`` (suite ``metrics:`` entries) against ``reference`` (a suite's ``reference:`` entry).

    Returns one :class:`Scored` per value name (``fid``, ``kid``, ``precision``, ...). With ``features``
    every metric must score extractor features (fid, fid-inf, kid, prc); the features must come from the
    extractor those metrics use (their ``extractor`` option; default Inception, digits-cnn on digits).
    """
    from diffbench.metrics.stream import MetricPlan
    from diffbench.registry import default_registry
    from diffbench.run.preparation import default_cache_dir
    from diffbench.run.suite import MetricSpec, ReferenceSpec
    from diffbench.util.devices import resolve_device

    if (samples is None) == (features is None):
        raise ScoreError("give samples (an image folder or .npz) or --features FILE.npz, one of the two")
    if not metrics:
        raise ScoreError("name at least one metric (--metric fid)")
    registry = registry or default_registry()
    ref = _checked(registry, "dataset", ReferenceSpec, reference, "--reference")
    specs = [_checked(registry, "metric", MetricSpec, m, f"--metric[{i}]") for i, m in enumerate(metrics)]
    model = SimpleNamespace(name="score", dataset=ref, data_range=(-1.0, 1.0))
    context = MetricContext(
        cache_dir=Path(cache_dir or default_cache_dir()), device=resolve_device(device), seed=seed, registry=registry
    )
    plan = MetricPlan([(registry.get("metric", s.name), s.options) for s in specs], model, context)
    rows = plan.rows()
    if features is not None:
        from diffbench.metrics.fidelity import FidelityFeatures

        if not all(isinstance(ext, FidelityFeatures) for ext in plan.extractors.values()) or len(plan.extractors) > 1:
            raise ScoreError(
                "--features works with metrics on one feature extractor's features (fid, fid-inf, kid, "
                f"prc with one extractor); asked for {', '.join(s.name for s in specs)}"
            )
        feats = load_features(Path(features))
        ((key, _),) = plan.extractors.items()
        rows.absorb({"indices": torch.arange(len(feats)), "rows": {key: feats}})
    else:
        path = Path(samples)
        if not path.exists():
            raise ScoreError(f"{str(path)!r}: no such file or folder")
        first = 0
        for images in image_batches(path, batch_size):
            rows.add(Batch(images, torch.arange(first, first + len(images)), None, seed))
            first += len(images)
    gathered = rows.gathered()
    out: dict[str, Scored] = {}
    for planned in plan.metrics:  # timed one by one: the seconds each metric's scoring takes
        t0 = time.perf_counter()
        values = plan.score_metric(planned, gathered[planned.key], None)
        seconds = time.perf_counter() - t0
        for name, v in values.items():
            out[name] = Scored(
                float(v.value), None if v.uncertainty is None else float(v.uncertainty), v.method, seconds
            )
    return out
