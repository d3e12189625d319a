"""Reference datasets for distribution metrics: the built-in `dataset` plugins and how a suite names one.

Built-ins (registered as plugin kind ``dataset``): ``digits`` (scikit-learn's 8×8 digits),
``image-folder`` (PNG/JPEG files), ``torchvision`` (an already-downloaded CIFAR/MNIST root) and
``npz-stats`` (precomputed FID statistics). A suite names one as ``reference: digits`` or
``reference: {name: image-folder, options: {path: ...}, split: ...}``; a model's ``dataset`` is its
default reference.
"""

from __future__ import annotations

from typing import Any

from diffbench.datasets.base import DatasetError, Reference, from_tensor
from diffbench.datasets.digits import SPLITS, ImageDataset, digits, digits_indices
from diffbench.datasets.digits import reference as digits_reference
from diffbench.datasets.folder import image_folder
from diffbench.datasets.npz_stats import npz_stats
from diffbench.datasets.torchvision_root import torchvision_root

DATASETS: dict[str, Any] = {
    "digits": digits_reference,
    "image-folder": image_folder,
    "torchvision": torchvision_root,
    "npz-stats": npz_stats,
}


def reference_spec(dataset: Any) -> tuple[str, dict[str, Any], str | None]:
    """(name, options, split) of a model's ``dataset`` or a suite's ``reference`` (a name, a mapping or a spec)."""
    if isinstance(dataset, str):
        return dataset, {}, None
    if isinstance(dataset, dict):
        return dataset["name"], dict(dataset.get("options") or {}), dataset.get("split")
    return dataset.name, dict(dataset.options), getattr(dataset, "split", None)


def open_reference(dataset: Any, split: str | None = None, registry: Any = None) -> Reference:
    """Open a reference through the registry's ``dataset`` plugins; ``split`` (when given) overrides the spec's."""
    from diffbench.registry import default_registry, resolve_options

    name, options, spec_split = reference_spec(dataset)
    from diffbench.registry import UnknownComponentError

    try:
        comp = (registry or default_registry()).get("dataset", name)
    except UnknownComponentError as exc:
        raise DatasetError(str(exc)) from None
    try:
        opts = resolve_options(comp, options)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    return comp.obj(split if split is not None else spec_split, **opts)


def load_dataset(name: str, split: str = "train") -> ImageDataset:
    """A shipped in-memory dataset's split by name (digits)."""
    if name != "digits":
        raise ValueError(f"unknown dataset {name!r}; available: digits")
    return digits(split)


__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetError",
    "ImageDataset",
    "Reference",
    "digits",
    "digits_indices",
    "from_tensor",
    "image_folder",
    "load_dataset",
    "npz_stats",
    "open_reference",
    "reference_spec",
    "torchvision_root",
]
