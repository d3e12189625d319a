"""PNDM and PLMS (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds") in σ-space.

The transfer φ of the paper (its eq. 9, DDIM's update) reads x' = x + (σ' - σ) ε in σ-space, so each method
is a classical integrator with ε as the derivative: pseudo Runge-Kutta (RK4 weights, midpoint at the geometric
mean √(σ σ'), i.e. halfway in log σ) for the first three steps, then pseudo linear multistep (Adams-Bashforth
weights of a uniform grid, as the paper and diffusers' PNDMScheduler use them on any timestep spacing).
"""
from __future__ import annotations

import math

from diffbench.samplers._common import ends_at_zero, num_steps, steps_of

PRK_STEPS = 3
AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def pndm_nfe(sigmas, *, prk_warmup: bool = True, **_) -> int:
    """4 evaluations per pseudo Runge-Kutta step (the first three), 2 on PLMS' Heun first step, else 1."""
    n, zero = num_steps(sigmas), ends_at_zero(sigmas)
    finite = n - zero  # steps that do not end at σ = 0
    warm = min(PRK_STEPS, finite) * 3 if prk_warmup else min(1, finite)
    return n + warm


def pndm(denoiser, x, sigmas, *, noise=None, prk_warmup: bool = True):
    """PNDM (Liu et al. 2022): three pseudo Runge-Kutta warm-up steps, then PLMS; prk_warmup=False is PLMS.

    PLMS starts as diffusers' PNDMScheduler(skip_prk_steps=True) does: a pseudo Heun first step, then
    Adams-Bashforth of growing order (2, 3, 4) on the ε of previous steps. The step into σ = 0 is the
    first-order limit x = D(x, σ).
    """
    def eps(y, s):
        return (y - denoiser(y, s)) / s

    ets: list = []  # ε at the start of each step, newest last
    for k, s, sn in steps_of(sigmas):
        denoised = denoiser(x, s)
        if sn == 0.0:
            x = denoised
            continue
        e = (x - denoised) / s
        if prk_warmup and k < PRK_STEPS:  # pseudo RK4 (Liu et al. 2022, eq. 13)
            mid = math.sqrt(s * sn)
            e2 = eps(x + (mid - s) * e, mid)
            e3 = eps(x + (mid - s) * e2, mid)
            e4 = eps(x + (sn - s) * e3, sn)
            ets.append(e)
            x = x + (sn - s) * ((e + 2.0 * e2 + 2.0 * e3 + e4) / 6.0)
        elif not prk_warmup and k == 0:  # PLMS' first step: pseudo Heun
            e1 = eps(x + (sn - s) * e, sn)
            ets.append(e)
            x = x + (sn - s) * (0.5 * (e + e1))
        else:  # pseudo linear multistep (eq. 12)
            ets = [*ets[-3:], e]
            weights = AB[len(ets)]
            x = x + (sn - s) * sum(w * past for w, past in zip(weights, reversed(ets)))
    return x
