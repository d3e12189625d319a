"""DDPM, DDIM and Euler-ancestral: one denoiser call per step, optional fresh noise."""

from __future__ import annotations

import math

from diffbench.samplers._common import ancestral_step, require_noise, steps_of, to_d


def ddpm(denoiser, x, sigmas, *, noise=None, variance: str = "posterior"):
    """DDPM ancestral sampling with the posterior mean and variance (Ho et al. 2020, eq. 6-7).

    Works in VP coordinates: ᾱ = 1 / (1 + σ²), x_vp = √ᾱ x. variance: 'posterior' (β̃_t) or 'beta' (β_t).
    """
    if variance not in ("posterior", "beta"):
        raise ValueError(f"ddpm variance must be 'posterior' or 'beta', got {variance!r}")
    noise = require_noise(noise, "ddpm")
    for k, s, sn in steps_of(sigmas):
        x0 = denoiser(x, s)
        ab, ab_prev = 1.0 / (1.0 + s * s), 1.0 / (1.0 + sn * sn)
        one_minus_ab, one_minus_ab_prev = s * s * ab, sn * sn * ab_prev
        beta = (s * s - sn * sn) * ab  # 1 - ᾱ_t / ᾱ_prev
        mean = (math.sqrt(ab_prev) * beta / one_minus_ab) * x0 + (
            math.sqrt(1.0 - beta) * one_minus_ab_prev / one_minus_ab
        ) * (math.sqrt(ab) * x)
        x_vp = mean
        if sn > 0.0:
            var = one_minus_ab_prev / one_minus_ab * beta if variance == "posterior" else beta
            x_vp = mean + math.sqrt(var) * noise(k)
        x = x_vp / math.sqrt(ab_prev)
    return x


def ddim(denoiser, x, sigmas, *, noise=None, eta: float = 0.0):
    """DDIM with stochasticity η (Song et al. 2021, eq. 12); η = 1 is DDPM's ancestral update."""
    for k, s, sn in steps_of(sigmas):
        x0 = denoiser(x, s)
        sigma_down, sigma_up = ancestral_step(s, sn, eta)
        x = x0 + (sigma_down / s) * (x - x0)
        if sigma_up > 0.0:
            x = x + sigma_up * require_noise(noise, "ddim with eta > 0")(k)
    return x


def euler_ancestral(denoiser, x, sigmas, *, noise=None, eta: float = 1.0, s_noise: float = 1.0):
    """Euler ancestral sampling (k-diffusion, Crowson 2022): Euler to σ_down, then noise to σ_next."""
    for k, s, sn in steps_of(sigmas):
        d = to_d(x, s, denoiser(x, s))
        sigma_down, sigma_up = ancestral_step(s, sn, eta)
        x = x + (sigma_down - s) * d
        if sigma_up > 0.0:
            x = x + require_noise(noise, "euler-ancestral with eta > 0")(k) * (s_noise * sigma_up)
    return x
