"""DPM-Solver-1/2/3, single-step, noise prediction (Lu et al. 2022, Algorithms 4-5) in σ-space.

With α = 1 in σ-space the exponential integrator reads x_t = x_s - σ_t (e^h - 1) ε̂_s - ...,
h = λ_t - λ_s, λ = -log σ. The step into σ = 0 (h = ∞) is the exact first-order limit x = D(x, σ).
"""

from __future__ import annotations

import math

from diffbench.samplers._common import log_ratio, steps_of


def _eps(denoiser, x, s):
    return (x - denoiser(x, s)) / s


def _singlestep(denoiser, x, sigmas, update):
    for _, s, sn in steps_of(sigmas):
        if sn == 0.0:
            x = denoiser(x, s)
        else:
            x = update(x, s, sn, log_ratio(s, sn), _eps(denoiser, x, s))
    return x


def dpm_solver_1(denoiser, x, sigmas, *, noise=None):
    """DPM-Solver-1 (Lu et al. 2022): first-order exponential integrator, equal to DDIM."""
    return _singlestep(denoiser, x, sigmas, lambda x, s, sn, h, e: x - sn * math.expm1(h) * e)


def dpm_solver_2(denoiser, x, sigmas, *, noise=None, r1: float = 0.5):
    """DPM-Solver-2 (Lu et al. 2022, Alg. 4): second-order single-step, intermediate at λ_s + r1 h."""

    def update(x, s, sn, h, eps_s):
        s1 = s * math.exp(-r1 * h)
        u = x - s1 * math.expm1(r1 * h) * eps_s
        phi = sn * math.expm1(h)
        return x - phi * eps_s - phi / (2.0 * r1) * (_eps(denoiser, u, s1) - eps_s)

    return _singlestep(denoiser, x, sigmas, update)


def dpm_solver_3(denoiser, x, sigmas, *, noise=None, r1: float = 1.0 / 3.0, r2: float = 2.0 / 3.0):
    """DPM-Solver-3 (Lu et al. 2022, Alg. 5): third-order single-step, intermediates at r1 h, r2 h."""

    def update(x, s, sn, h, eps_s):
        s1, s2 = s * math.exp(-r1 * h), s * math.exp(-r2 * h)
        u1 = x - s1 * math.expm1(r1 * h) * eps_s
        d1 = _eps(denoiser, u1, s1) - eps_s
        u2 = x - s2 * math.expm1(r2 * h) * eps_s - s2 * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1.0) * d1
        d2 = _eps(denoiser, u2, s2) - eps_s
        return x - sn * math.expm1(h) * eps_s - sn / r2 * (math.expm1(h) / h - 1.0) * d2

    return _singlestep(denoiser, x, sigmas, update)
