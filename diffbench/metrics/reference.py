"""Reference features and FID statistics of a reference dataset, cached on disk in a safe format (no pickle).

Features of a reference split are extracted batch by batch and cached as safetensors under the
metric context's cache folder (verified against their recorded sha256 on every load: see
``diffbench.util.verified_cache``), keyed by the reference's identity (dataset, split, options, file
fingerprint), the extractor, its weights' sha256, the feature layer, the resize and the uint8
mapping. Within a process the opened references and their statistics are memoised, so a grid
of cells computes a reference's mean and covariance once.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffbench.datasets import Reference, open_reference, reference_spec
from diffbench.metrics import extractors
from diffbench.metrics.digits_cnn import UINT8_MAPPING
from diffbench.metrics.extractors import Extractor
from diffbench.util import verified_cache

CACHE_FORMAT = 3  # bump when the cached feature layout, the key or the uint8 mapping changes
_MEMO: OrderedDict[Any, Any] = OrderedDict()
_MEMO_SIZE = 8


@dataclass
class ReferenceData:
    """A reference's features (None for a statistics-only reference), their sha256 and FID statistics."""

    reference: Reference
    features: Tensor | None
    sha256: str
    _stats: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.features) if self.features is not None else self.reference.num_images

    def stats(self) -> dict[str, np.ndarray]:
        """``mu`` and ``sigma`` (float64, N−1 normalisation; torch-fidelity's), computed once."""
        if self._stats is None:
            if self.reference.stats is not None:
                self._stats = self.reference.stats
            else:
                self._stats = features_to_statistics(self.features.double())
        return self._stats

    def memo(self, name: str, make):
        """A derived quantity (e.g. a kernel matrix) computed once for this reference and kept with it."""
        cache = self.__dict__.setdefault("_derived", {})
        if name not in cache:
            cache[name] = make()
        return cache[name]

    def describe(self) -> dict[str, Any]:
        return {**self.reference.describe(), "reference_size": self.size, "reference_hash": self.sha256}


def features_to_statistics(features: Tensor) -> dict[str, np.ndarray]:
    """torch-fidelity's ``fid_features_to_statistics`` (the same numpy calls, so the same bits: tested), without
    importing torch-fidelity, whose import pulls in torchvision and torch._dynamo."""
    rows = features.numpy()
    return {"mu": np.mean(rows, axis=0), "sigma": np.cov(rows, rowvar=False)}


def _memo(key: Any, make):
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    value = make()
    _MEMO[key] = value
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return value


def clear_memo() -> None:
    """Forget opened references and their statistics (the disk cache stays)."""
    _MEMO.clear()


def opened(dataset: Any, split: str | None, registry: Any = None) -> Reference:
    """``open_reference`` memoised per process on (spec, split, registry)."""
    name, options, spec_split = reference_spec(dataset)
    key = ("open", json.dumps([name, options, spec_split, split], sort_keys=True, default=str), id(registry))
    return _memo(key, lambda: open_reference(dataset, split, registry))


def reference_data(
    reference: Reference, ext: Extractor, cache_dir: Path, device: torch.device | str = "cpu", batch_size: int = 256
) -> ReferenceData:
    """Features (from the disk cache when present) or statistics of ``reference`` under extractor ``ext``."""
    if reference.stats is not None:
        return ReferenceData(reference, None, reference.identity.get("sha256") or reference.key)
    key = {
        "format": CACHE_FORMAT,
        "reference": reference.identity,
        "extractor": ext.name,
        "extractor_hash": ext.sha256,
        "layer": ext.layer,
        "resize": ext.describe()["resize"],
        "uint8_mapping": UINT8_MAPPING,
    }
    key_json = json.dumps(key, sort_keys=True, default=str)

    def make() -> ReferenceData:
        feats, sha = _cached_features(reference, ext, Path(cache_dir), key_json, device, batch_size)
        return ReferenceData(reference, feats, sha)

    return _memo(("data", key_json, str(cache_dir), batch_size), make)


def _cached_features(
    reference: Reference, ext: Extractor, cache_dir: Path, key_json: str, device: torch.device | str, batch_size: int
) -> tuple[Tensor, str]:
    """Features from the verified cache (``diffbench.util.verified_cache``), else extracted and cached.

    Returned with their sha256."""
    digest = hashlib.sha256(key_json.encode()).hexdigest()[:16]
    path = cache_dir / f"ref-{reference.name}-{reference.split}-{ext.name}-{digest}.safetensors"
    entry = verified_cache.load(path, key=key_json)
    if entry is not None and "features" in entry.tensors:
        return entry.tensors["features"], entry.sha256
    feats = torch.cat(
        [extractors.extract_features(b, (-1.0, 1.0), ext, device, batch_size) for b in reference.batches(batch_size)]
    )
    return feats, verified_cache.save(path, {"features": feats}, key=key_json)
