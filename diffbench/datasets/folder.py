"""The `image-folder` dataset: PNG/JPEG files under a folder, optionally centre-cropped and resized (declared)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffbench.datasets._files import existing, fingerprint
from diffbench.datasets.base import DatasetError, Reference

EXTENSIONS = (".png", ".jpg", ".jpeg")


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted by relative path."""
    return sorted((p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()),
                  key=lambda p: p.relative_to(folder).as_posix())


def _prepared(img, center_crop: bool, resize: int):
    """PIL image → RGB, square centre crop of the short side (optional), bicubic resize (optional)."""
    from PIL import Image

    img = img.convert("RGB")
    if center_crop:
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if resize:
        img = img.resize((resize, resize), Image.BICUBIC)
    return img


def load_image(path: Path, center_crop: bool = False, resize: int = 0) -> Tensor:
    """One image as uint8 (3, H, W), prepared as declared."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(_prepared(img, center_crop, resize), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _decoded(path: Path, center_crop: bool, resize: int, size: tuple[int, int]) -> Tensor:
    """``load_image`` with a one-line DatasetError naming the file when it cannot be decoded (a truncated
    PNG passes the size check at open, which reads only the header) or changed size since."""
    try:
        img = load_image(path, center_crop, resize)
    except Exception as exc:
        text = (str(exc).strip().splitlines() or [""])[0]
        raise DatasetError(f"dataset 'image-folder': {str(path)!r} cannot be decoded ({type(exc).__name__}: "
                           f"{text})") from None
    if tuple(img.shape[1:]) != size:
        raise DatasetError(f"dataset 'image-folder': {str(path)!r} is {img.shape[2]}x{img.shape[1]}, not "
                           f"{size[1]}x{size[0]} as when the folder was opened")
    return img


def image_folder(split: str | None = None, *, path: str = "", center_crop: bool = False,
                 resize: int = 0) -> Reference:
    """PNG/JPEG images under ``path`` (or ``path/<split>`` when a split is named), as RGB in [-1, 1].

    ``center_crop`` takes the central square of each image's short side; ``resize`` (pixels, 0 = none)
    resizes to a square with PIL bicubic. Without them every image must have the same size.
    """
    from PIL import Image

    root = existing(path, "image-folder")
    folder = root if split in (None, "all") else root / split
    if not folder.is_dir():
        raise DatasetError(f"dataset 'image-folder': {str(folder)!r} is not a folder"
                           + ("" if folder == root else " (split names a subfolder; split: all uses the folder itself)"))
    files = image_files(folder)
    if not files:
        raise DatasetError(f"dataset 'image-folder': no {'/'.join(EXTENSIONS)} files under {str(folder)!r}")
    if resize < 0:
        raise DatasetError(f"dataset 'image-folder': resize must be 0 (none) or a positive size, got {resize}")
    sizes: dict[tuple[int, int], Path] = {}
    for f in files:
        try:
            with Image.open(f) as img:
                w, h = img.size
        except Exception as exc:
            raise DatasetError(f"dataset 'image-folder': {str(f)!r} is not a readable image ({exc})") from None
        size = (resize, resize) if resize else ((min(w, h),) * 2 if center_crop else (w, h))
        sizes.setdefault(size, f)
        if len(sizes) > 1:
            (a, fa), (b, fb) = list(sizes.items())[:2]
            raise DatasetError(f"dataset 'image-folder': mixed image sizes under {str(folder)!r}: {fa.name} is "
                               f"{a[0]}x{a[1]}, {fb.name} is {b[0]}x{b[1]} (set resize: <pixels> to declare one)")
    (width, height), = sizes
    identity = {"dataset": "image-folder", "path": str(folder.resolve()), "files": len(files),
                "fingerprint": fingerprint(files, folder), "center_crop": center_crop,
                "resize": f"PIL bicubic to {resize}x{resize}" if resize else "none"}

    def batches(size: int) -> Iterator[Tensor]:
        for start in range(0, len(files), size):
            u8 = torch.stack([_decoded(f, center_crop, resize, (height, width)) for f in files[start:start + size]])
            yield u8.float() / 127.5 - 1.0  # exact inverse of diffbench's uint8 mapping

    return Reference("image-folder", split or "all", identity, len(files), (3, height, width), batches)


image_folder.option_help = {
    "path": "folder of PNG/JPEG images (a split names a subfolder), relative to the suite file",
    "center_crop": "take the central square of each image's short side",
    "resize": "resize to this many pixels square with PIL bicubic (0: keep the size)",
}
image_folder.path_options = {"path": "path"}
