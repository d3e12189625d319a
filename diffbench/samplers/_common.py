"""Small helpers shared by the samplers (σ-space, k-diffusion conventions)."""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import Tensor

Noise = Callable[[int], Tensor]


def steps_of(sigmas: Tensor) -> Iterator[tuple[int, float, float]]:
    """(k, σ_k, σ_{k+1}) as host floats: one transfer before the loop, none inside it."""
    s = torch.as_tensor(sigmas).tolist()
    for k in range(len(s) - 1):
        yield k, s[k], s[k + 1]


def num_steps(sigmas) -> int:
    return len(sigmas) - 1


def ends_at_zero(sigmas) -> bool:
    return float(sigmas[-1]) == 0.0


def to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """ODE derivative dx/dσ = (x - D(x, σ)) / σ."""
    return (x - denoised) / sigma


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(σ_down, σ_up) splitting a step into a deterministic part and fresh noise (DDIM η in σ-space)."""
    if sigma_next == 0.0 or eta == 0.0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def require_noise(noise: Noise | None, name: str) -> Noise:
    if noise is None:
        raise ValueError(f"{name} is stochastic with these options and needs noise=")
    return noise


def churn(x: Tensor, k: int, sigma: float, n: int, noise: Noise | None, amount: float,
          s_tmin: float, s_tmax: float | None, s_noise: float) -> tuple[Tensor, float]:
    """EDM stochastic churn (Karras et al. 2022, Alg. 2): raise σ to σ(1+γ) with fresh noise."""
    if amount <= 0 or sigma < s_tmin or (s_tmax is not None and sigma > s_tmax):
        return x, sigma
    gamma = min(amount / n, math.sqrt(2.0) - 1.0)
    sigma_hat = sigma * (1.0 + gamma)
    eps = require_noise(noise, "churn")(k)
    return x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * eps, sigma_hat


def log_ratio(sigma: float, sigma_next: float) -> float:
    """h = λ_next - λ with λ = -log σ (log-SNR half)."""
    return math.log(sigma / sigma_next)
