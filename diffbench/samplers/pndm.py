"""PNDM and PLMS (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds") in σ-space.

The transfer φ of the paper (its eq. 9, DDIM's update) reads x' = x + (σ' - σ) ε in σ-space, so each method
is a classical integrator with ε as the derivative: pseudo Runge-Kutta (RK4 weights) for the first three steps,
then pseudo linear multistep (Adams-Bashforth weights of a uniform grid, as the paper and diffusers'
PNDMScheduler use them on any timestep spacing). The Runge-Kutta half-step lands where diffusers puts it on a
discrete-time model: at the trained timestep t - ⌊δ/2⌋ (δ the step's timestep stride), not halfway in σ.
"""

from __future__ import annotations

import math
from typing import Literal

from diffbench.samplers._common import ends_at_zero, num_steps, steps_of

PRK_STEPS = 3
AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}
Midpoint = Literal["auto", "timestep", "sigma"]


def pndm_nfe(sigmas, *, prk_warmup: bool = True, **_) -> int:
    """4 evaluations per pseudo Runge-Kutta step (the first three), 2 on PLMS' Heun first step, else 1."""
    n, zero = num_steps(sigmas), ends_at_zero(sigmas)
    finite = n - zero  # steps that do not end at σ = 0
    warm = min(PRK_STEPS, finite) * 3 if prk_warmup else min(1, finite)
    return n + warm


def _discrete_schedule(denoiser):
    """The noise schedule of the model behind ``denoiser`` when it is a discrete-time (trained timesteps) one."""
    schedule = getattr(getattr(denoiser, "model", None), "schedule", None)
    return schedule if getattr(schedule, "discrete", False) else None


def prk_midpoint(s: float, sn: float, schedule) -> float:
    """σ of the Runge-Kutta half-step from s to sn: at timestep t - ⌊δ/2⌋ on a discrete schedule (diffusers'
    PNDMScheduler, δ = t - t' the step's stride, whole on training timesteps), else the geometric mean √(s sn)."""
    if schedule is None:
        return math.sqrt(s * sn)
    t, tn = float(schedule.t_of_sigma(s)), float(schedule.t_of_sigma(sn))
    delta = t - tn
    half = math.floor(delta / 2.0 + 1e-9) if abs(delta - round(delta)) < 1e-6 else delta / 2.0
    return float(schedule.sigma_of_t(t - half))


def pndm(denoiser, x, sigmas, *, noise=None, prk_warmup: bool = True, midpoint: Midpoint = "auto"):
    """PNDM (Liu et al. 2022): three pseudo Runge-Kutta warm-up steps, then PLMS; prk_warmup=False is PLMS.

    ``midpoint``: where the Runge-Kutta half-steps evaluate the network: 'timestep' at the trained
    timestep t - ⌊δ/2⌋ (diffusers' PNDMScheduler; needs a discrete-time model), 'sigma' at √(σ σ') (halfway in
    log σ, for continuous models), 'auto' (default) the first on discrete-time models, the second otherwise.
    PLMS starts as diffusers' PNDMScheduler(skip_prk_steps=True) does: a pseudo Heun first step, then
    Adams-Bashforth of growing order (2, 3, 4) on the ε of previous steps. As diffusers with
    set_alpha_to_one, the multistep step into σ = 0 is an Adams-Bashforth step too (x - σ ε_AB); a
    Runge-Kutta or Heun step into σ = 0 (grids of 3 steps or fewer) is x = D(x, σ).
    """
    if midpoint not in ("auto", "timestep", "sigma"):
        raise ValueError(f"pndm midpoint must be 'auto', 'timestep' or 'sigma', got {midpoint!r}")
    schedule = _discrete_schedule(denoiser) if midpoint != "sigma" else None
    if midpoint == "timestep" and schedule is None:
        raise ValueError(
            "pndm midpoint='timestep' needs a discrete-time model (trained timesteps); use 'sigma' or 'auto'"
        )

    def eps(y, s):
        return (y - denoiser(y, s)) / s

    ets: list = []  # ε at the start of each step, newest last
    for k, s, sn in steps_of(sigmas):
        denoised = denoiser(x, s)
        e = (x - denoised) / s
        warmup = k < PRK_STEPS if prk_warmup else k == 0
        if sn == 0.0 and warmup:
            x = denoised
        elif warmup and prk_warmup:  # pseudo RK4 (Liu et al. 2022, eq. 13)
            mid = prk_midpoint(s, sn, schedule)
            e2 = eps(x + (mid - s) * e, mid)
            e3 = eps(x + (mid - s) * e2, mid)
            e4 = eps(x + (sn - s) * e3, sn)
            ets.append(e)
            x = x + (sn - s) * ((e + 2.0 * e2 + 2.0 * e3 + e4) / 6.0)
        elif warmup:  # PLMS' first step: pseudo Heun
            e1 = eps(x + (sn - s) * e, sn)
            ets.append(e)
            x = x + (sn - s) * (0.5 * (e + e1))
        else:  # pseudo linear multistep (eq. 12)
            ets = [*ets[-3:], e]
            weights = AB[len(ets)]
            for w, past in zip(weights, reversed(ets)):
                x = x.add(past, alpha=(sn - s) * w)
    return x
