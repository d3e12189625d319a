"""Float images in a data range ↔ uint8 pixels: the one conversion saving and image metrics share."""

from __future__ import annotations

import torch
from torch import Tensor


def to_uint8(x: Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Images in ``data_range`` → uint8, round to nearest, values outside the range clipped."""
    lo, hi = data_range
    return ((x.float() - lo) * (255.0 / (hi - lo))).round().clamp(0, 255).to(torch.uint8)


def from_uint8(u: Tensor) -> Tensor:
    """uint8 images → float32 in [-1, 1]."""
    return u.float() / 127.5 - 1.0
