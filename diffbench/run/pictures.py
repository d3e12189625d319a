"""A cell's picture: a grid of its first images or a scatter of its 2-D points, drawn as it runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from diffbench.run.rundir import atomic_path

MAX_PREVIEW = 100  # images in a cell's preview grid


def save_samples(
    samples: torch.Tensor,
    path: str | Path,
    *,
    data_range: tuple[float, float] = (-1.0, 1.0),
    reference: torch.Tensor | None = None,
    max_images: int = MAX_PREVIEW,
) -> Path | None:
    """A grid of the first samples (images) or a scatter (2-D points); None for other shapes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if samples.ndim == 4:
        with atomic_path(path) as tmp:
            _image_grid(samples[:max_images], tmp, data_range)
    elif samples.ndim == 2 and samples.shape[1] == 2:
        with atomic_path(path) as tmp:
            _scatter(samples, tmp, reference)
    else:
        return None
    return path


def tile(images: torch.Tensor, nrow: int, padding: int = 1, pad_value: float = 1.0) -> torch.Tensor:
    """Images (N, C, H, W) tiled ``nrow`` to a row with ``padding`` pixels of ``pad_value`` around each: the layout
    of torchvision's ``make_grid`` (tested against it), without importing torchvision (seconds: it pulls in
    torch._dynamo)."""
    n, c, h, w = images.shape
    if n == 1:
        return images[0]  # make_grid's one image: unpadded
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = images.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for k in range(n):
        y, x = divmod(k, cols)
        top, left = y * (h + padding) + padding, x * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = images[k]
    return grid


def _image_grid(images: torch.Tensor, path: Path, data_range: tuple[float, float]) -> None:
    from PIL import Image

    lo, hi = data_range
    x = ((images.float() - lo) / (hi - lo)).clamp(0, 1)
    nrow = int(math.ceil(math.sqrt(len(x))))
    grid = tile(x, nrow=nrow, padding=1, pad_value=1.0)
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 or (arr[..., 0] == arr[..., 1]).all() else arr)
    scale = max(1, 512 // max(img.size))  # tiny images (8×8 digits) are upscaled to stay readable
    img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST).save(path)


def _scatter(points: torch.Tensor, path: Path, reference: torch.Tensor | None, size: int = 320) -> None:
    """Points drawn straight into a bitmap (matplotlib costs ~0.3 s a figure; a run draws one per cell)."""
    from PIL import Image, ImageDraw

    pts = points.double()[:, :2]
    both = pts if reference is None else torch.cat([pts, reference.double()[:, :2]])
    both = both[torch.isfinite(both).all(1)]
    lo, hi = both.min(0).values, both.max(0).values
    span = float((hi - lo).max()) or 1.0
    centre = (lo + hi) / 2
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, size - 1, size - 1), outline=(160, 160, 160))

    def plot(xy: torch.Tensor, colour: tuple[int, int, int]) -> None:
        pix = ((xy - centre) / span * 0.92 + 0.5) * (size - 1)
        for x, y in pix[torch.isfinite(pix).all(1)].tolist():
            draw.ellipse((x - 1.2, size - 1 - y - 1.2, x + 1.2, size - 1 - y + 1.2), fill=colour)

    if reference is not None:
        plot(reference.double()[:, :2], (190, 190, 190))
    plot(pts, (31, 119, 180))
    draw.text((6, 4), "blue: sampler" + ("   grey: exact" if reference is not None else ""), fill=(60, 60, 60))
    draw.text(
        (6, size - 14),
        f"x, y in [{float(centre[0]) - span / 2:.2g}, {float(centre[0]) + span / 2:.2g}] x "
        f"[{float(centre[1]) - span / 2:.2g}, {float(centre[1]) + span / 2:.2g}]",
        fill=(60, 60, 60),
    )
    img.save(path)
