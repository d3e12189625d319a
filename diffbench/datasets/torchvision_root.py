"""The `torchvision` dataset: an already-downloaded torchvision dataset root (never ``download=True``).

CIFAR-10 and CIFAR-100 are read from their python batches (``cifar-10-batches-py``,
``cifar-100-python``) with a restricted unpickler that admits only numpy arrays, so no code in a
data file can run; MNIST and Fashion-MNIST from their raw idx files (torchvision's own readers).
"""
from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffbench.datasets._files import existing, fingerprint
from diffbench.datasets.base import DatasetError, Reference

CIFAR = {
    "CIFAR10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}),
    "CIFAR100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}),
}
MNIST_LIKE = ("MNIST", "FashionMNIST")
SUPPORTED = (*CIFAR, *MNIST_LIKE)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes and numpy arrays; any other global is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # str → bytes: how protocol-2 pickles carry an array's raw bytes

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


MAX_BATCH_BYTES = 1 << 30  # a CIFAR python batch is 31 MB (CIFAR-100's train file 155 MB)


def _cifar_batch(path: Path) -> np.ndarray:
    """uint8 images (N, 3, 32, 32) of one CIFAR python batch file.

    ``data`` must be a uint8 array (N, 3072) stored in the file itself: a list would let a few kB of
    pickle memo references expand to gigabytes when converted, so it is refused, as is a file over 1 GiB.
    """
    where = f"dataset 'torchvision': {str(path)!r}"
    if path.stat().st_size > MAX_BATCH_BYTES:
        raise DatasetError(f"{where} is larger than {MAX_BATCH_BYTES >> 20} MiB; not a CIFAR batch")
    try:
        with open(path, "rb") as f:
            entry = _ArraysOnly(f, encoding="latin1").load()
        data = entry["data"] if isinstance(entry, dict) else None
    except Exception as exc:
        text = (str(exc).strip().splitlines() or [""])[0]
        raise DatasetError(f"{where} is not a CIFAR batch of arrays ({type(exc).__name__}: {text})") from None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{where} is not a CIFAR batch: its 'data' must be a uint8 array of shape (N, 3072), "
                           f"got {got}")
    return data.reshape(-1, 3, 32, 32)


def read_idx_images(path: Path) -> Tensor:
    """uint8 images (N, 1, H, W) of an idx3-ubyte file, plain or gzip-compressed (as torchvision downloads it)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DatasetError(f"dataset 'torchvision': cannot read {str(path)!r} ({exc})") from None
    magic = int.from_bytes(data[:4], "big") if len(data) >= 16 else 0
    if magic != 0x0803:  # unsigned byte, 3 dimensions
        raise DatasetError(f"dataset 'torchvision': {str(path)!r} is not an idx3-ubyte image file")
    n, h, w = (int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(3))
    if len(data) != 16 + n * h * w:
        raise DatasetError(f"dataset 'torchvision': {str(path)!r} holds {len(data) - 16} bytes of pixels, "
                           f"not {n}×{h}×{w}")
    return torch.frombuffer(bytearray(data[16:]), dtype=torch.uint8).reshape(n, 1, h, w)


def _mnist(root: Path, name: str, split: str) -> tuple[list[Path], Tensor]:
    prefix = "train" if split == "train" else "t10k"
    raw = root / name / "raw" / f"{prefix}-images-idx3-ubyte"
    path = next((p for p in (raw, raw.with_name(raw.name + ".gz")) if p.is_file()), None)  # torchvision keeps both
    if path is None:
        raise DatasetError(f"dataset 'torchvision': {name} {split} images not found at {str(raw)!r} (or .gz)")
    if path.stat().st_size > MAX_BATCH_BYTES:
        raise DatasetError(f"dataset 'torchvision': {str(path)!r} is larger than {MAX_BATCH_BYTES >> 20} MiB")
    if path.suffix == ".gz":
        return [path], read_idx_images(path)  # (N, 1, H, W) uint8
    from torchvision.datasets.mnist import read_image_file

    try:
        images = read_image_file(str(path))
    except Exception as exc:  # a header whose sizes the data does not have, a wrong magic number
        text = (str(exc).strip().splitlines() or [""])[0]
        raise DatasetError(f"dataset 'torchvision': {str(path)!r} is not an idx image file "
                           f"({type(exc).__name__}: {text})") from None
    if images.dtype != torch.uint8 or images.ndim != 3:
        raise DatasetError(f"dataset 'torchvision': {str(path)!r} holds {images.dtype} of shape "
                           f"{tuple(images.shape)}, not uint8 images (N, H, W)")
    return [path], images[:, None]  # (N, 1, 28, 28) uint8


def torchvision_root(split: str | None = None, *, root: str = "", dataset: str = "CIFAR10") -> Reference:
    """Split 'train' or 'test' of an already-downloaded CIFAR10, CIFAR100, MNIST or FashionMNIST under ``root``."""
    base = existing(root, "torchvision", "root")
    split = split or "train"
    if dataset not in SUPPORTED:
        raise DatasetError(f"dataset 'torchvision': unsupported dataset {dataset!r}; supported: {', '.join(SUPPORTED)}")
    if split not in ("train", "test"):
        raise DatasetError(f"dataset 'torchvision': unknown split {split!r} of {dataset}; splits: train, test")
    if dataset in CIFAR:
        folder, lists = CIFAR[dataset]
        files = [base / folder / n for n in lists[split]]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DatasetError(f"dataset 'torchvision': {dataset} {split} file {str(missing[0])!r} not found "
                               "(diffbench never downloads: fetch it once with torchvision, download=True)")
        u8 = torch.from_numpy(np.concatenate([_cifar_batch(f) for f in files]))
    else:
        files, u8 = _mnist(base, dataset, split)
    if len(u8) == 0:
        raise DatasetError(f"dataset 'torchvision': {dataset} {split} holds no images")
    identity = {"dataset": "torchvision", "name": dataset, "root": str(base.resolve()), "split": split,
                "images": len(u8), "fingerprint": fingerprint(files, base)}

    def batches(size: int) -> Iterator[Tensor]:
        for part in u8.split(size):
            yield part.float() / 127.5 - 1.0  # exact inverse of diffbench's uint8 mapping

    return Reference("torchvision", split, identity, len(u8), tuple(u8.shape[1:]), batches)


torchvision_root.option_help = {
    "root": "the root torchvision downloaded into (holds MNIST/raw/ or cifar-10-batches-py/), relative to the suite "
            "file",
    "dataset": f"which dataset under root: {', '.join(SUPPORTED)}",
}
torchvision_root.path_options = {"root": "path"}
