"""Drive a diffusers scheduler in float64 with the exact GMM denoiser, on the σ list it materialises.

The diffusers model is ε-prediction in VP coordinates: x_vp = α x, α = 1/√(1+σ²), and the network returns
ε = (x - D(x, σ))/σ, so the scheduler's x0 = (x_vp - σ_vp ε)/α is the σ-space denoiser D exactly. Both sides
therefore see the same σ list and the same denoiser, as the parity rule asks.
"""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from torch import Tensor

from diffbench.core.denoiser import SigmaDenoiser

diffusers = pytest.importorskip("diffusers")


class KeepFloat64(torch.Tensor):
    """A tensor whose ``.to(torch.float32)`` is a no-op: DPMSolverMultistepScheduler.step casts the sample
    to float32 ("upcast"), which would cap the comparison at float32 rounding; everything else is unchanged."""

    def to(self, *args, **kwargs):
        args = tuple(a for a in args if a is not torch.float32)
        if kwargs.get("dtype") is torch.float32:
            kwargs.pop("dtype")
        return super().to(*args, **kwargs)


def alpha_of(sigma: float) -> float:
    return 1.0 / math.sqrt(1.0 + sigma * sigma)


def eps_model(den: SigmaDenoiser, sigma_of: Callable[[object], float]) -> Callable[[Tensor, object], Tensor]:
    """ε-prediction network in VP coordinates built from the σ-space denoiser; ``sigma_of(t)`` gives σ."""

    def net(x_vp: Tensor, t) -> Tensor:
        sigma = sigma_of(t)
        x = x_vp.as_subclass(torch.Tensor) / alpha_of(sigma)  # plain tensor inside the denoiser
        return ((x - den(x, sigma)) / sigma).as_subclass(KeepFloat64)

    return net


def run_diffusers(
    scheduler, net: Callable[[Tensor, object], Tensor], x_vp: Tensor, *, timesteps=None, **step_kwargs
) -> Tensor:
    """The standard sampling loop: for t in timesteps: x = step(net(x, t), t, x)."""
    x = x_vp.clone().as_subclass(KeepFloat64)
    for t in scheduler.timesteps if timesteps is None else timesteps:
        x = scheduler.step(net(x, t), t, x, **step_kwargs).prev_sample
    return x.as_subclass(torch.Tensor)


def relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())
