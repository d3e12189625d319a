"""Small class-conditional denoising network for 1×8×8 images: a residual MLP with FiLM conditioning.

An MLP rather than a conv net: 64 pixels are few enough that dense layers see the whole image,
and one evaluation on a batch of 256 costs ~0.2 GFLOP, far inside the CPU time budget.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, min_period: float | None = None) -> Tensor:
    """Sinusoidal embedding of (B,) times (Vaswani et al. 2017, as used by DDPM).

    Without ``min_period``, DDPM's frequencies: 1 to 1/max_period radians per unit (periods 2π to about
    2π·max_period). With it, periods geometric from ``min_period`` to about ``max_period`` units. Short
    periods make the network wiggle in t faster than solver grids resolve, which caps the solvers' orders
    (scripts/trajectory_floor.py); the shipped digits models use 200 to 20000 units (docs/digits.md).
    Computed in float64 for float64 times (float32 otherwise), so a float64 solve sees no float32 steps in t.
    """
    half = dim // 2
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32  # float64 runs stay smooth in t
    ratio = max_period if min_period is None else max_period / min_period
    freqs = torch.exp(-math.log(ratio) * torch.arange(half, device=t.device, dtype=dtype) / half)
    if min_period is not None:
        freqs = freqs * (2 * math.pi / min_period)
    args = t.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class FiLMBlock(nn.Module):
    """Pre-norm residual MLP block; the embedding sets a per-feature scale and shift (Perez et al. 2018)."""

    def __init__(self, width: int, hidden: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(emb_dim, 2 * width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.fc2.weight)  # each block starts as the identity
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=1)
        y = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(self.dropout(self.act(self.fc1(y))))


class DenoiserMLP(nn.Module):
    """network(x_t, t, labels) -> target-space output, for images of ``shape``.

    ``time_scale`` multiplies t before the sinusoidal embedding (1 for discrete timesteps 0..999,
    1000 for continuous t in [0, 1]); ``time_min_period`` and ``time_max_period`` set its periods
    (in time units after ``time_scale``, ``timestep_embedding``; no minimum keeps DDPM's). Label ``num_classes`` (or labels=None) is the null class
    used for classifier-free guidance (Ho & Salimans 2022).
    """

    def __init__(self, shape: tuple[int, ...] = (1, 8, 8), num_classes: int = 10, width: int = 256,
                 hidden: int = 512, depth: int = 4, emb_dim: int = 128, time_scale: float = 1.0,
                 dropout: float = 0.0, time_min_period: float | None = None,
                 time_max_period: float = 10000.0) -> None:
        super().__init__()
        self.shape, self.num_classes, self.time_scale = tuple(shape), num_classes, float(time_scale)
        self.time_min_period, self.time_max_period = time_min_period, float(time_max_period)
        dim = math.prod(self.shape)
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(FiLMBlock(width, hidden, emb_dim, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        self.act = nn.SiLU()

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is None:
            labels = torch.full((x_t.shape[0],), self.num_classes, device=x_t.device, dtype=torch.long)
        emb = self.time_mlp(timestep_embedding(t * self.time_scale, self.emb_dim, self.time_max_period,
                                                  self.time_min_period).to(x_t.dtype))
        emb = self.act(emb + self.label_emb(labels))
        h = self.inp(x_t.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.out_norm(h)).view(x_t.shape)
