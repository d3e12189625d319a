"""A small random 28×28 denoiser (MNIST-sized, DDPM-style sinusoidal time embedding), for cost benchmarks.

Untrained: its weights are drawn from a fixed seed, so the benchmarks that use it measure what running
and scoring cost on a network of this size, not sample quality. Load it through the ``python`` model:
``{name: python, options: {factory: "mnist_like:random_unet28", shape: [1, 28, 28]}}`` with this folder
on ``sys.path``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """DDPM's sinusoidal embedding of the timestep (Ho et al. 2020; max period 10,000 timesteps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    args = t[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin) if cin >= 8 else nn.Identity(), nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(emb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.time(e)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class RandomUNet28(nn.Module):
    """Two resolutions (28, 14), 32/64 channels, about 0.3M parameters: the size of a small MNIST DDPM."""

    def __init__(self, seed: int = 0, emb: int = 64) -> None:
        super().__init__()
        gen = torch.random.fork_rng(devices=[])
        with gen:
            torch.manual_seed(seed)
            self.emb_dim = emb
            self.emb = nn.Sequential(nn.Linear(emb, 128), nn.SiLU(), nn.Linear(128, 128))
            self.down1, self.down2 = Block(1, 32, 128), Block(32, 64, 128)
            self.mid = Block(64, 64, 128)
            self.up2, self.up1 = Block(128, 32, 128), Block(64, 32, 128)
            self.out = nn.Conv2d(32, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        e = self.emb(_embedding(t.to(x.dtype), self.emb_dim))
        h1 = self.down1(x, e)
        h2 = self.down2(nn.functional.avg_pool2d(h1, 2), e)
        h = self.mid(h2, e)
        h = self.up2(torch.cat([h, h2], 1), e)
        h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.up1(torch.cat([h, h1], 1), e)
        return self.out(nn.functional.silu(h))


def random_unet28(*, seed: int = 0) -> RandomUNet28:
    return RandomUNet28(seed)
