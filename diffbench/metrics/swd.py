"""Multi-scale sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, "Progressive
Growing of GANs", Sec. 5 and their metrics/sliced_wasserstein.py): a quality metric for any image size that
needs no pretrained network, so it runs offline on a user's own model.

Each image (as uint8, the mapping FID uses) becomes a Laplacian pyramid (5×5 binomial filter, mirrored
edges, as cv2.pyrDown/pyrUp) over the resolutions from the image's down to ``min_resolution``; from each
level, ``patches_per_image`` random 7×7 neighbourhoods (positions depend only on the seed and the sample's
index, so results do not depend on batching). Per level, each set of descriptors is normalised by its own
per-channel mean and standard deviation (as the authors do), projected on ``directions`` random unit
directions, and the 1-D Wasserstein-1 distance of the projections is averaged over directions; the value is
the mean over levels, ×10³ (the authors' scale). The two sets may differ in size: W1 is computed exactly
between the empirical quantile functions. Its uncertainty is a delete-a-group jackknife over the generated
samples on the first 64 directions (normalisation and reference fixed; the reference's own sampling noise
is not included). It is NOT comparable with Inception FID or with SWD figures
computed at other patch counts, directions or resolutions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from diffbench.metrics import reference
from diffbench.metrics.base import Batch, MetricContext, MetricValue, StreamingMetric
from diffbench.metrics.digits_cnn import to_uint8
from diffbench.metrics.extractors import MetricUnavailable

SCALE = 1e3  # the authors report SWD × 10³
_KERNEL_1D = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16.0
NOT_COMPARABLE = "not comparable with Inception FID (no pretrained network; raw Laplacian-pyramid patches)"


# --- Laplacian pyramid and patches -------------------------------------------------------------------

def _blur(x: Tensor, gain: float = 1.0) -> Tensor:
    """5×5 binomial filter (× gain) with mirrored edges (scipy 'mirror', torch 'reflect'), per channel."""
    k = (torch.outer(_KERNEL_1D, _KERNEL_1D) * gain).to(x.dtype)
    c = x.shape[1]
    pad = F.pad(x, (2, 2, 2, 2), mode="reflect") if min(x.shape[-2:]) > 2 else F.pad(x, (2, 2, 2, 2), mode="replicate")
    return F.conv2d(pad, k.expand(c, 1, 5, 5), groups=c)


def pyr_down(x: Tensor) -> Tensor:
    return _blur(x)[..., ::2, ::2]


def pyr_up(x: Tensor, size: tuple[int, int]) -> Tensor:
    up = torch.zeros((*x.shape[:2], 2 * x.shape[-2], 2 * x.shape[-1]), dtype=x.dtype)
    up[..., ::2, ::2] = x
    return _blur(up, 4.0)[..., : size[0], : size[1]]


def laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """Band-pass levels, finest first; the last level is the low-pass residual (Burt & Adelson 1983)."""
    out = [x]
    for _ in range(1, levels):
        low = pyr_down(out[-1])
        out[-1] = out[-1] - pyr_up(low, tuple(out[-1].shape[-2:]))
        out.append(low)
    return out


def resolutions(size: int, min_resolution: int, patch_size: int) -> list[int]:
    """The pyramid's resolutions: size, size/2, ... down to min_resolution (the full size alone when smaller)."""
    out, res = [], size
    while res >= min_resolution and res >= patch_size:
        out.append(res)
        res //= 2
    if not out and size >= patch_size:
        out = [size]
    return out


def _positions(n_valid_y: int, n_valid_x: int, count: int, seed: int, index: int, level: int) -> np.ndarray:
    """``count`` distinct patch corners for one image and level, drawn from (seed, sample index, level) alone."""
    flat = np.random.default_rng([seed, index, level, 0x5D]).choice(n_valid_y * n_valid_x, size=count, replace=False)
    return np.stack([flat // n_valid_x, flat % n_valid_x], axis=1)


def patches_per_level(size: tuple[int, int], levels: int, patch_size: int, patches: int) -> list[int]:
    """Neighbourhoods each image contributes per level: ``patches``, or every position of a smaller level."""
    out, (h, w) = [], size
    for _ in range(levels):
        out.append(min(patches, (h - patch_size + 1) * (w - patch_size + 1)))
        h, w = (h + 1) // 2, (w + 1) // 2
    return out


def descriptors(images: Tensor, indices: Tensor, seed: int, levels: int, patch_size: int, patches: int) -> Tensor:
    """(B, levels × patches × C × p × p) float32: each image's patches from every pyramid level."""
    x = images.to(torch.float64)
    rows = []
    for level, band in enumerate(laplacian_pyramid(x, levels)):
        h, w = band.shape[-2:]
        ny, nx = h - patch_size + 1, w - patch_size + 1
        unfolded = band.unfold(2, patch_size, 1).unfold(3, patch_size, 1)  # (B, C, ny, nx, p, p)
        if ny * nx <= patches:  # small images: every position of every image
            rows.append(unfolded.permute(0, 2, 3, 1, 4, 5).reshape(len(x), -1))
            continue
        per_image = []
        for b, i in enumerate(indices.tolist()):
            pos = torch.from_numpy(_positions(ny, nx, patches, seed, int(i), level))
            picked = unfolded[b][:, pos[:, 0], pos[:, 1]]  # (C, k, p, p)
            per_image.append(picked.transpose(0, 1).reshape(-1))
        rows.append(torch.stack(per_image))
    return torch.cat(rows, dim=1).to(torch.float32)


# --- the distance --------------------------------------------------------------------------------

def wasserstein_1d(a: Tensor, b: Tensor) -> Tensor:
    """W1 between the empirical distributions of each column of ``a`` (n, D) and ``b`` (m, D), exactly:
    ∫₀¹ |F_a⁻¹(u) − F_b⁻¹(u)| du over the merged quantile breakpoints (sizes may differ)."""
    return _w1_sorted(torch.sort(a.double(), dim=0).values, torch.sort(b.double(), dim=0).values)


def _w1_sorted(a: Tensor, b: Tensor) -> Tensor:
    """``wasserstein_1d`` of columns already sorted ascending (float64 sums over the columns' values)."""
    n, m = a.shape[0], b.shape[0]
    if n == m:
        return (a - b).abs().sum(0, dtype=torch.float64) / n
    ia, ib, width = _merge_plan(n, m)
    return ((a[ia] - b[ib]).abs() * width.to(a.dtype)[:, None]).sum(0, dtype=torch.float64)


@lru_cache(maxsize=64)
def _merge_plan(n: int, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """Where the quantile functions of n and m sorted values are constant: (index into a, into b, width)."""
    u = torch.unique(torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                                torch.arange(1, m + 1, dtype=torch.float64) / m]))
    u = torch.cat([torch.zeros(1, dtype=torch.float64), u.clamp(max=1.0)])
    mid, width = (u[1:] + u[:-1]) / 2, u[1:] - u[:-1]
    return (mid * n).floor().long().clamp(max=n - 1), (mid * m).floor().long().clamp(max=m - 1), width


def normalise(desc: Tensor, channels: int) -> Tensor:
    """Each channel's values (over descriptors and patch positions) to mean 0, s.d. 1 (the authors' step)."""
    d = desc.double().reshape(desc.shape[0], channels, -1)
    mean = d.mean(dim=(0, 2), keepdim=True)
    std = d.std(dim=(0, 2), keepdim=True, unbiased=False).clamp_min(1e-12)
    return ((d - mean) / std).reshape(desc.shape[0], -1)


def random_directions(dim: int, count: int, seed: int) -> Tensor:
    """``count`` unit vectors uniform on the sphere in ``dim`` dimensions (Gaussian draws, normalised)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(dim, count, generator=g, dtype=torch.float64)
    return d / d.norm(dim=0, keepdim=True)


def sliced_wasserstein(a: Tensor, b: Tensor, directions: Tensor) -> float:
    """Mean over ``directions`` (dim, K) of W1 between the projections of rows of ``a`` and of ``b``."""
    return float(wasserstein_1d(a.double() @ directions, b.double() @ directions).mean())


# --- the metric ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PatchRows:
    """Per sample, its Laplacian-pyramid patches (uint8-mapped, as the reference's)."""

    data_range: tuple[float, float]
    levels: int
    patch_size: int
    patches: int

    @property
    def key(self) -> tuple:
        return ("swd-patches", self.data_range, self.levels, self.patch_size, self.patches)

    def __call__(self, batch: Batch) -> Tensor:
        u8 = to_uint8(batch.samples.cpu(), self.data_range)
        return descriptors(u8.float(), batch.indices, batch.seed, self.levels, self.patch_size, self.patches)


def level_distance(gen: Tensor, ref: Tensor, channels: int, directions: Tensor, labels: Tensor, groups: int,
                   chunk: int = 64) -> tuple[float, np.ndarray]:
    """Sliced W1 of one level's descriptors, and the jackknife replicates: its value over the first ``chunk``
    directions with each group of generated rows left out.

    Each direction's projections are sorted once; leaving a group out keeps the others' order, so the
    replicates need no further sort. The replicates use one chunk of directions: their spread measures the
    samples' noise, which every direction shares, at a fraction of the cost. Directions go ``chunk`` at a
    time to bound memory."""
    g, r = normalise(gen, channels).float(), normalise(ref, channels).float()
    full, jack = 0.0, np.zeros(max(groups, 1))
    for i, d in enumerate(directions.float().split(chunk, dim=1)):
        sg, order = torch.sort(g @ d, dim=0)
        sr = torch.sort(r @ d, dim=0).values
        full += float(_w1_sorted(sg, sr).sum())
        if groups >= 2 and i == 0:
            lab = labels[order]  # (rows, chunk): the group of each sorted value
            for k in range(groups):
                kept = sg.T[lab.T != k].reshape(sg.shape[1], -1).T
                jack[k] = float(_w1_sorted(kept, sr).mean())
    return full / directions.shape[1], jack


class SlicedWassersteinDistance(StreamingMetric):
    """Multi-scale sliced Wasserstein distance on Laplacian-pyramid patches, ×10³ (Karras et al. 2018)."""

    name = "swd"
    higher_is_better = False
    REFERENCE_SEED: ClassVar[int] = 2**31 - 1  # the reference's patch positions: a stream no sample index uses
    options: ClassVar[dict[str, Any]] = {"reference_split": None, "max_reference": 10000, "patch_size": 7,
                                         "patches_per_image": 128, "min_resolution": 16, "directions": 512,
                                         "groups": 10}
    option_types: ClassVar[dict[str, Any]] = {"reference_split": str | None}
    option_help: ClassVar[dict[str, str]] = {
        "reference_split": "split of the reference dataset (null: the dataset's default)",
        "max_reference": "reference images used (the first ones of the split)",
        "patch_size": "side of the square neighbourhoods (the authors: 7)",
        "patches_per_image": "neighbourhoods drawn per image and level (the authors: 128)",
        "min_resolution": "coarsest pyramid level (the authors: 16); images smaller than this use one level",
        "directions": "random projection directions (the authors: 4 × 128)",
        "groups": "jackknife groups over generated samples for the standard error (0: none)",
    }

    def _levels(self, model: Any, patch_size: int, min_resolution: int) -> int:
        shape = tuple(getattr(model, "shape", ()))
        if len(shape) != 3:
            raise MetricUnavailable(f"metric 'swd' needs images (C, H, W); model samples have shape {shape}")
        levels = resolutions(min(shape[1:]), min_resolution, patch_size)
        if not levels:
            raise MetricUnavailable(f"metric 'swd': images of {shape[1]}×{shape[2]} are smaller than patch_size "
                                    f"{patch_size}")
        return len(levels)

    def features(self, *, model: Any, context: MetricContext, reference_split: str | None = None,
                 patch_size: int = 7, patches_per_image: int = 128, min_resolution: int = 16, **_: Any) -> PatchRows:
        if getattr(model, "dataset", None) is None:
            raise MetricUnavailable("metric 'swd' needs reference data: add 'reference:' to the suite (e.g. "
                                    "reference: {name: torchvision, options: {root: ..., dataset: MNIST}}) or the "
                                    "model's dataset option")
        levels = self._levels(model, patch_size, min_resolution)
        ref = reference.opened(model.dataset, reference_split, getattr(context, "registry", None))
        if ref.batches is None:
            raise MetricUnavailable(f"metric 'swd' needs reference images; reference {ref.name!r} holds statistics")
        if ref.shape is not None and tuple(ref.shape) != tuple(model.shape):
            raise MetricUnavailable(f"metric 'swd': reference images are {'×'.join(map(str, ref.shape))}, samples "
                                    f"{'×'.join(map(str, model.shape))}")
        return PatchRows(tuple(float(v) for v in model.data_range), levels, patch_size, patches_per_image)

    def _reference_rows(self, ref: Any, rows: PatchRows, max_reference: int) -> Tensor:
        def make() -> Tensor:
            parts, seen = [], 0
            for images in ref.batches(256):
                images = images[: max_reference - seen]
                idx = torch.arange(seen, seen + len(images))
                parts.append(descriptors(to_uint8(images, (-1.0, 1.0)).float(), idx, self.REFERENCE_SEED,
                                         rows.levels, rows.patch_size, rows.patches))
                seen += len(images)
                if seen >= max_reference:
                    break
            return torch.cat(parts)

        key = ("swd-reference", ref.key, rows.levels, rows.patch_size, rows.patches, max_reference)
        return reference._memo(key, make)

    def score(self, features: Tensor, *, model: Any, result: Any, context: MetricContext,
              **options: Any) -> dict[str, MetricValue]:
        o = {**self.options, **options}
        rows = self.features(model=model, context=context, reference_split=o["reference_split"],
                             patch_size=o["patch_size"], patches_per_image=o["patches_per_image"],
                             min_resolution=o["min_resolution"])
        ref = reference.opened(model.dataset, o["reference_split"], getattr(context, "registry", None))
        ref_rows = self._reference_rows(ref, rows, int(o["max_reference"]))
        channels, p = int(model.shape[0]), rows.patch_size
        counts = patches_per_level(tuple(model.shape[1:]), rows.levels, p, rows.patches)
        dirs = random_directions(channels * p * p, int(o["directions"]), context.seed)
        n = len(features)
        groups = min(int(o["groups"]), n)
        labels = torch.arange(n) % max(groups, 1)
        per_level, reps, start = [], np.zeros(max(groups, 1)), 0
        for count in counts:
            width = count * channels * p * p
            gen = features[:, start:start + width].reshape(-1, channels * p * p)
            ref_level = ref_rows[:, start:start + width].reshape(-1, channels * p * p)
            full, jack = level_distance(gen, ref_level, channels, dirs, labels.repeat_interleave(count), groups)
            per_level.append(SCALE * full)
            reps += SCALE * jack
            start += width
        total = float(np.mean(per_level))
        sizes = resolutions(min(model.shape[1:]), o["min_resolution"], p)
        context.info.update({"swd_levels": dict(zip([f"{r}px" for r in sizes], per_level)),
                             "swd_reference_images": len(ref_rows), "swd_note": NOT_COMPARABLE})
        se, method = None, f"SWD ×10³ (Karras et al. 2018), {NOT_COMPARABLE}; no uncertainty (groups < 2)"
        if groups >= 2:
            reps = reps / len(counts)
            se = float(math.sqrt((groups - 1) / groups * ((reps - reps.mean()) ** 2).sum()))
            method = (f"SWD ×10³ (Karras et al. 2018), mean over pyramid levels {sizes} px, {counts} patches of "
                      f"{p}×{p} per image and level, {o['directions']} directions, {len(ref_rows)} reference "
                      f"images; s.e. = delete-a-group jackknife over {groups} groups of generated samples, on "
                      f"the first 64 directions (normalisation and reference fixed); {NOT_COMPARABLE}")
        return {"swd": MetricValue(total, se, method)}


METRICS: dict = {"swd": SlicedWassersteinDistance()}
