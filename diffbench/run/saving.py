"""Saving a cell's samples as they stream (suite option ``save_samples: none | png | npz``).

``png``: one 8-bit image per sample, ``samples/<cell>/seed<s>/<index>.png``, through the same
uint8 mapping the feature extractors use (images only). ``npz``: one file per batch,
``samples/<cell>/seed<s>-<first>-<last>.npz`` holding ``samples`` (the model's dtype as float32/64)
and ``indices`` (and ``labels`` when conditional). Each file is written atomically, batch by
batch, so saving never holds more than one batch.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from diffbench.core.batch import Batch
from diffbench.core.images import to_uint8
from diffbench.run.rundir import write_atomic

MODES = ("none", "png", "npz")


class SampleSaver:
    """Writes each batch of one cell's samples under ``folder`` in ``mode``; ``none`` writes nothing."""

    def __init__(self, mode: str, folder: Path, data_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        if mode not in MODES:
            raise ValueError(f"save_samples must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.folder, self.data_range = mode, Path(folder), data_range
        self.files = 0

    def add(self, batch: Batch) -> None:
        if self.mode == "png":
            self._png(batch)
        elif self.mode == "npz":
            self._npz(batch)

    def _png(self, batch: Batch) -> None:
        from PIL import Image

        if batch.samples.ndim != 4 or batch.samples.shape[1] not in (1, 3):
            raise ValueError(
                f"save_samples: png needs images (B, 1 or 3, H, W), got {tuple(batch.samples.shape)}; use npz"
            )
        u8 = to_uint8(batch.samples, self.data_range).permute(0, 2, 3, 1).numpy()
        folder = self.folder / f"seed{batch.seed}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in zip(batch.indices.tolist(), u8):
            buf = io.BytesIO()
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
            write_atomic(folder / f"{i:06d}.png", buf.getvalue())
            self.files += 1

    def _npz(self, batch: Batch) -> None:
        lo, hi = int(batch.indices[0]), int(batch.indices[-1])
        arrays = {"samples": batch.samples.numpy(), "indices": batch.indices.numpy()}
        if batch.labels is not None:
            arrays["labels"] = batch.labels.numpy()
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / f"seed{batch.seed}-{lo:06d}-{hi:06d}.npz", buf.getvalue())
        self.files += 1
