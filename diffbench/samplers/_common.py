"""Small helpers shared by the samplers (σ-space, k-diffusion conventions)."""

from __future__ import annotations

import math
from typing import Callable, Iterator, Literal, Union

import torch
from torch import Tensor

Noise = Callable[[int], Tensor]
LowerOrderFinal = Union[bool, Literal["auto"]]
AUTO_BELOW_STEPS = 15  # diffusers' multistep schedulers lower the final orders only below 15 steps


def lowers_final(lower_order_final: LowerOrderFinal, n: int) -> bool:
    """Whether a multistep solver lowers its order on the last steps of an ``n``-step grid.

    ``"auto"`` is diffusers' rule (DPMSolverMultistepScheduler, DEISMultistepScheduler): only when
    n < 15. Lowering makes the last step first order, so a grid stopping above σ = 0 converges at
    order 2 at most; a grid ending at σ = 0 takes a first-order last step whatever this says.
    """
    if lower_order_final == "auto":
        return n < AUTO_BELOW_STEPS
    if isinstance(lower_order_final, bool):
        return lower_order_final
    raise ValueError(f"lower_order_final must be true, false or 'auto', got {lower_order_final!r}")


def sigmas_list(sigmas: Tensor) -> list[float]:
    """The σ list as host floats (one device transfer)."""
    return torch.as_tensor(sigmas).tolist()


def steps_of(sigmas: Tensor) -> Iterator[tuple[int, float, float]]:
    """(k, σ_k, σ_{k+1}) as host floats: one transfer before the loop, none inside it."""
    s = sigmas_list(sigmas)
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


def churns_at(sigma: float, amount: float, s_tmin: float, s_tmax: float | None) -> bool:
    """Whether a step from ``sigma`` churns: a positive amount and σ inside [s_tmin, s_tmax] (EDM's S_tmin/S_tmax)."""
    return amount > 0 and s_tmin <= sigma and (s_tmax is None or sigma <= s_tmax)


def churn(
    x: Tensor,
    k: int,
    sigma: float,
    n: int,
    noise: Noise | None,
    amount: float,
    s_tmin: float,
    s_tmax: float | None,
    s_noise: float,
) -> tuple[Tensor, float]:
    """EDM stochastic churn (Karras et al. 2022, Alg. 2): raise σ to σ(1+γ) with fresh noise."""
    if not churns_at(sigma, amount, s_tmin, s_tmax):
        return x, sigma
    gamma = min(amount / n, math.sqrt(2.0) - 1.0)
    sigma_hat = sigma * (1.0 + gamma)
    eps = require_noise(noise, "churn")(k)
    return x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * eps, sigma_hat


def log_ratio(sigma: float, sigma_next: float) -> float:
    """h = λ_next - λ with λ = -log σ (log-SNR half)."""
    return math.log(sigma / sigma_next)


def lagrange_basis(nodes: list[float]) -> list[list[float]]:
    """Coefficients (constant term first) of each Lagrange basis polynomial ℓ_j on ``nodes`` (ℓ_j(nodes[i]) = δ_ij).

    Plain floats: a multistep solver of order ≤ 4 needs a handful of products per step, far cheaper than
    building polynomial objects (the harness cost per network call, tests/benchmarks/test_sampler_cost.py).
    """
    out = []
    for j, node in enumerate(nodes):
        coef, scale = [1.0], 1.0
        for i, other in enumerate(nodes):
            if i != j:  # multiply by (u - other)
                coef = [
                    (coef[m - 1] if m else 0.0) - other * (coef[m] if m < len(coef) else 0.0)
                    for m in range(len(coef) + 1)
                ]
                scale *= node - other
        out.append([c / scale for c in coef])
    return out


def integrate_polynomial(coef: list[float], a: float, b: float) -> float:
    """∫_a^b Σ_m coef[m] u^m du, exactly."""
    return sum(c * (b ** (m + 1) - a ** (m + 1)) / (m + 1) for m, c in enumerate(coef))


def integrate_polynomial_exp(coef: list[float], a: float, b: float) -> float:
    """∫_a^b p(u) e^u du, exactly: the antiderivative is e^u Σ_m (-1)^m p^(m)(u)."""
    series, deriv, sign = [0.0] * len(coef), list(coef), 1.0
    while deriv:
        for m, c in enumerate(deriv):
            series[m] += sign * c
        deriv = [m * c for m, c in enumerate(deriv)][1:]
        sign = -sign

    def value(u: float) -> float:
        return sum(c * u**m for m, c in enumerate(series))

    return math.exp(b) * value(b) - math.exp(a) * value(a)
