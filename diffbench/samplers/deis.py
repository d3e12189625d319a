"""DEIS, the log-ρ time-Adams–Bashforth exponential integrator (tAB-DEIS, Zhang & Chen 2023)."""
from __future__ import annotations

import math

from diffbench.samplers._common import (LowerOrderFinal, integrate_polynomial_exp, lagrange_basis, lowers_final,
                                        num_steps, sigmas_list)


def deis_coefficients(sigmas: list[float], k: int, order: int) -> list[float]:
    """Weights of ε at σ_k, σ_{k-1}, ...: ∫_{σ_k}^{σ_{k+1}} ℓ_j(log σ) dσ, Lagrange basis in log σ (diffusers' ind_fn)."""
    nodes = [math.log(sigmas[k - j]) for j in range(order)]
    a, b = math.log(sigmas[k]), math.log(sigmas[k + 1])
    return [integrate_polynomial_exp(coef, a, b) for coef in lagrange_basis(nodes)]


def deis(denoiser, x, sigmas, *, noise=None, order: int = 3, lower_order_final: LowerOrderFinal = "auto"):
    """tAB-DEIS of order 1-3 (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator").

    In σ-space the VP step x_t/α_t = x_s/α_s + Σ_j c_j ε_j (ρ = σ/α) reads x_t = x_s + Σ_j c_j ε_j with ε
    interpolated by a polynomial in log σ, as diffusers' DEISMultistepScheduler ("log-rho" DEIS). Order 1 is
    DDIM. ``lower_order_final``: 'auto' lowers the last two steps' orders below 15 steps (diffusers' rule).
    The step into σ = 0 is the first-order limit x = D(x, σ).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"deis order must be 1, 2 or 3, got {order!r}")
    n = num_steps(sigmas)
    lower = lowers_final(lower_order_final, n)
    s = sigmas_list(sigmas)  # one host transfer before the loop
    orders = [min(k + 1, order, (n - k) if lower else order) for k in range(n)]
    coefficients = [deis_coefficients(s, k, p) if s[k + 1] > 0.0 else [] for k, p in enumerate(orders)]  # once
    eps: list = []  # ε of previous steps, newest first
    for k, (sigma, coef) in enumerate(zip(s, coefficients)):
        denoised = denoiser(x, sigma)
        if s[k + 1] == 0.0:
            x = denoised
            continue
        eps = [(x - denoised) / sigma, *eps][:order]
        for c, e in zip(coef, eps):
            x = x.add(e, alpha=c)
    return x
