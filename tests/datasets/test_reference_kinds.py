"""image-folder, npz-stats and torchvision references: contents equal what was written; bad input is one line."""
from __future__ import annotations

import pathlib
import pickle
import struct

import numpy as np
import pytest
import torch

from diffbench.datasets import DatasetError, image_folder, npz_stats, open_reference, torchvision_root
from diffbench.registry import build_registry


def write_pngs(folder: pathlib.Path, images: np.ndarray) -> list[pathlib.Path]:
    """uint8 images (N, H, W, 3) or (N, H, W) as PNG files 000.png, 001.png, ..."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def rgb(n: int, h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def all_images(ref, size=4) -> torch.Tensor:
    return torch.cat(list(ref.batches(size)))


def test_image_folder_yields_the_written_pixels_in_file_order(tmp_path):
    pixels = rgb(7)
    write_pngs(tmp_path / "imgs", pixels)
    ref = image_folder(path=str(tmp_path / "imgs"))
    assert ref.num_images == 7 and ref.shape == (3, 6, 5) and ref.split == "all"
    x = all_images(ref, size=3)
    assert x.dtype == torch.float32 and x.shape == (7, 3, 6, 5)
    want = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(x, want)
    # diffbench's uint8 mapping recovers the files' bytes exactly
    assert torch.equal(((x + 1) * 127.5).round().to(torch.uint8), torch.from_numpy(pixels).permute(0, 3, 1, 2))


def test_image_folder_split_subfolders_crop_and_resize(tmp_path):
    write_pngs(tmp_path / "data" / "train", rgb(3, 8, 12))
    write_pngs(tmp_path / "data" / "test", rgb(2, 10, 6, seed=1))
    assert image_folder("train", path=str(tmp_path / "data")).num_images == 3
    cropped = image_folder("train", path=str(tmp_path / "data"), center_crop=True)
    assert cropped.shape == (3, 8, 8)
    full = torch.from_numpy(rgb(3, 8, 12)).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(all_images(cropped), full[:, :, :, 2:10])  # the central 8 of 12 columns
    mixed = image_folder("all", path=str(tmp_path / "data"), resize=4)  # both splits, declared resize
    assert mixed.num_images == 5 and mixed.shape == (3, 4, 4) and "bicubic" in mixed.identity["resize"]
    assert all_images(mixed).shape == (5, 3, 4, 4)


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("empty", "no .png/.jpg/.jpeg files"),
    ("mixed", "mixed image sizes"),
    ("no-path", "needs the option path"),
    ("no-split", "is not a folder"),
])
def test_image_folder_errors_are_one_line(tmp_path, case, match):
    (tmp_path / "empty").mkdir()
    write_pngs(tmp_path / "mixed", rgb(2, 4, 4))
    write_pngs(tmp_path / "mixed" / "sub", rgb(1, 5, 4))
    args = {"missing": (None, tmp_path / "nope"), "empty": (None, tmp_path / "empty"),
            "mixed": (None, tmp_path / "mixed"), "no-path": (None, ""), "no-split": ("val", tmp_path / "mixed")}[case]
    with pytest.raises(DatasetError, match=match) as err:
        image_folder(args[0], path=str(args[1]) if args[1] else "")
    assert "\n" not in str(err.value)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_stats_loads_mu_and_sigma_and_refuses_bad_files(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3) * 2
    ref = npz_stats(path=str(write_npz(tmp_path / "ok.npz", mu=mu, sigma=sigma)))
    assert np.array_equal(ref.stats["mu"], mu) and np.array_equal(ref.stats["sigma"], sigma) and ref.batches is None
    assert ref.identity["dim"] == 3 and len(ref.identity["sha256"]) == 64
    bad = {
        "nomu.npz": ({"sigma": sigma}, "has no 'mu' array"),
        "shape.npz": ({"mu": mu, "sigma": np.eye(4)}, r"mu must be \(D,\) and sigma \(D, D\)"),
        "nan.npz": ({"mu": mu * np.nan, "sigma": sigma}, "non-finite"),
        "object.npz": ({"mu": np.array([{"a": 1}], dtype=object), "sigma": sigma}, "not a plain .npz"),
    }
    for name, (arrays, match) in bad.items():
        with pytest.raises(DatasetError, match=match) as err:
            npz_stats(path=str(write_npz(tmp_path / name, **arrays)))
        assert "\n" not in str(err.value)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DatasetError, match="not a plain .npz"):
        npz_stats(path=str(tmp_path / "text.npz"))


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def fake_cifar10(root: pathlib.Path, per_batch: int = 4) -> dict[str, np.ndarray]:
    """A CIFAR-10 python root in torchvision's layout with random uint8 images; returns the images by split."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {"train": [], "test": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": list(range(per_batch))}, f, protocol=2)
        out["test" if name == "test_batch" else "train"].append(data.reshape(-1, 3, 32, 32))
    return {k: np.concatenate(v) for k, v in out.items()}


def test_torchvision_cifar10_root_is_read_without_torchvision_unpickling(tmp_path):
    written = fake_cifar10(tmp_path / "tv")
    for split in ("train", "test"):
        ref = torchvision_root(split, root=str(tmp_path / "tv"), dataset="CIFAR10")
        assert ref.num_images == len(written[split]) and ref.shape == (3, 32, 32)
        assert torch.equal(((all_images(ref) + 1) * 127.5).round().to(torch.uint8), torch.from_numpy(written[split]))


def test_a_cifar_batch_with_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    fake_cifar10(tmp_path / "tv")
    marker = tmp_path / "payload-ran"
    with open(tmp_path / "tv" / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Payload(marker)}, f)
    with pytest.raises(DatasetError, match="refused global") as err:
        torchvision_root("test", root=str(tmp_path / "tv"))
    assert "\n" not in str(err.value) and not marker.exists()


def test_torchvision_mnist_raw_idx_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    (raw / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 3, 28, 28) + imgs.tobytes())
    ref = torchvision_root("test", root=str(tmp_path), dataset="MNIST")
    assert ref.shape == (1, 28, 28)
    assert torch.equal(((all_images(ref) + 1) * 127.5).round().to(torch.uint8)[:, 0], torch.from_numpy(imgs))


def test_torchvision_mnist_gz_only_as_downloaded(tmp_path):
    """torchvision's download leaves the .gz files: read them as they are (same images as unpacked)."""
    import gzip

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = np.random.default_rng(1).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">IIII", 2051, 4, 28, 28)
                                                                     + imgs.tobytes()))
    ref = torchvision_root("train", root=str(tmp_path), dataset="MNIST")
    assert ref.num_images == 4
    assert torch.equal(((all_images(ref) + 1) * 127.5).round().to(torch.uint8)[:, 0], torch.from_numpy(imgs))
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not an idx file at all"))
    with pytest.raises(DatasetError, match="is not an idx3-ubyte image file"):
        torchvision_root("train", root=str(tmp_path), dataset="MNIST")


@pytest.mark.parametrize("kwargs, match", [
    ({"root": "/nonexistent-root"}, "does not exist"),
    ({"dataset": "ImageNet"}, "unsupported dataset 'ImageNet'"),
    ({"split": "val"}, "unknown split 'val'"),
    ({"dataset": "CIFAR100"}, "not found"),
])
def test_torchvision_errors_are_one_line(tmp_path, kwargs, match):
    fake_cifar10(tmp_path / "tv")
    args = {"root": str(tmp_path / "tv"), "dataset": "CIFAR10", **kwargs}
    split = args.pop("split", "train")
    with pytest.raises(DatasetError, match=match) as err:
        torchvision_root(split, **args)
    assert "\n" not in str(err.value)


def test_datasets_are_plugins_listed_by_the_registry_and_opened_by_spec(tmp_path):
    reg = build_registry(autoload=False)
    assert {"digits", "image-folder", "torchvision", "npz-stats"} <= set(reg.names("dataset"))
    assert reg.get("dataset", "image-folder").options == {"path": "", "center_crop": False, "resize": 0}
    write_pngs(tmp_path / "imgs" / "test", rgb(2))
    spec = {"name": "image-folder", "options": {"path": str(tmp_path / "imgs")}, "split": "test"}
    assert open_reference(spec, registry=reg).num_images == 2
    assert open_reference("digits", registry=reg).split == "train"  # the string shorthand, default split
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        open_reference("nope", registry=reg)
    with pytest.raises(DatasetError, match="has no option 'root'"):
        open_reference({"name": "image-folder", "options": {"root": "x"}}, registry=reg)
