"""DPM-Solver++ (data prediction, Lu et al. 2022b) in σ-space: 2S, 2M, 3M (published and corrected), 2M-SDE.

x_t = (σ_t/σ_s) e^{-ηh} x_s - expm1(-(1+η)h) D_s + higher-order corrections, h = log(σ_s/σ_t).
The step into σ = 0 is always the first-order limit x = D(x, σ).

The 3M third-order term: with λ = -log σ the ODE is dx/dλ = D - x, so x_t = e^{-h} x_s + ∫_0^h e^{τ-h} D(λ_s+τ) dτ
= e^{-h} x_s - expm1(-h) D + h φ2 D' - h² φ3 D'' + O(h⁴), φ2 = expm1(-h)/h + 1, φ3 = φ2/h - 1/2 (≈ -h/6).
The divided difference D2 = (D1_0 - D1_1)/(r0 + r1) estimates h² D''/2, so the h³ term is -2 φ3 D2. The published
update (Lu et al.'s code, k-diffusion, diffusers) uses -φ3 D2 and leaves a φ3 h² D''/2 = O(h³) local error:
it is second order (derivation and measurements in docs/solvers.md).
"""
from __future__ import annotations

import math
from typing import Literal

from diffbench.samplers._common import LowerOrderFinal, log_ratio, lowers_final, num_steps, require_noise, steps_of


def dpmpp_2s(denoiser, x, sigmas, *, noise=None, r: float = 0.5):
    """DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1): second-order single-step, intermediate at λ_s + r h."""
    for _, s, sn in steps_of(sigmas):
        d_s = denoiser(x, s)
        if sn == 0.0:
            x = d_s
            continue
        h = log_ratio(s, sn)
        s_mid = s * math.exp(-r * h)
        u = (s_mid / s) * x - math.expm1(-r * h) * d_s
        d_mid = denoiser(u, s_mid)
        x = (sn / s) * x - math.expm1(-h) * ((1.0 - 1.0 / (2.0 * r)) * d_s + d_mid / (2.0 * r))
    return x


def _multistep(denoiser, x, sigmas, *, order: int, eta: float, noise, s_noise: float,
               lower_order_final: LowerOrderFinal, d2_weight: float = 1.0, solver_type: str = "midpoint"):
    """Shared DPM-Solver++ multistep loop (k-diffusion's dpmpp_2m/_3m_sde formulation).

    ``d2_weight`` multiplies the third-order term φ3·D2: 1 is the published update, 2 the corrected one.
    ``solver_type`` is the second-order step's form (diffusers' option): 'midpoint' -expm1(-h)/2 · D1 (Lu et al.'s
    Alg. 2, diffusers' default) or 'heun' φ2 · D1 (k-diffusion's dpmpp_3m_sde); both second order.
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    n = num_steps(sigmas)
    lower = lowers_final(lower_order_final, n)
    history: list[tuple[object, float]] = []  # (D, h) of previous steps, newest first
    for k, s, sn in steps_of(sigmas):
        d = denoiser(x, s)
        if sn == 0.0:
            x = d
            continue
        h = log_ratio(s, sn)
        h_eta = h * (1.0 + eta)
        step_order = min(order, len(history) + 1, (n - k) if lower else order)
        # the update is linear in x and the last denoised points: its scalar weights first, then one tensor
        # operation per term (the harness cost per network call; tests/benchmarks/test_sampler_cost.py)
        weights = [-math.expm1(-h_eta), 0.0, 0.0]  # of d, d_{-1}, d_{-2}
        if step_order == 2 and solver_type == "midpoint":  # Lu et al. 2022b, DPM-Solver++(2M)
            c = -math.expm1(-h_eta) * (h / history[0][1]) * 0.5
            weights[0] += c
            weights[1] -= c
        elif step_order == 2:
            c = (math.expm1(-h_eta) / h_eta + 1.0) * (h / history[0][1])
            weights[0] += c
            weights[1] -= c
        elif step_order == 3:
            # the D2 below estimates h² D''/2, so the h³ term needs 2·D2 (d2_weight = 2); the published
            # form, D2 alone, converges at order 2 only (measured on the exact GMM; tests/samplers)
            r0, r1 = history[0][1] / h, history[1][1] / h
            phi2 = math.expm1(-h_eta) / h_eta + 1.0
            phi3 = phi2 / h_eta - 0.5
            # x += phi2 (D1_0 + (D1_0 - D1_1) r0/(r0+r1)) - phi3 w (D1_0 - D1_1)/(r0+r1),
            # D1_0 = (d - d_{-1})/r0, D1_1 = (d_{-1} - d_{-2})/r1
            a = phi2 * (1.0 + r0 / (r0 + r1)) - phi3 * d2_weight / (r0 + r1)  # weight of D1_0
            b = -phi2 * r0 / (r0 + r1) + phi3 * d2_weight / (r0 + r1)  # weight of D1_1
            weights[0] += a / r0
            weights[1] += -a / r0 + b / r1
            weights[2] += -b / r1
        x = x * ((sn / s) * math.exp(-eta * h))
        for w, past in zip(weights, [d, *(p for p, _ in history)]):
            if w != 0.0:
                x = x.add(past, alpha=w)
        if eta > 0.0:
            x = x + require_noise(noise, "dpm-solver++ with eta > 0")(k) * (
                sn * math.sqrt(-math.expm1(-2.0 * eta * h)) * s_noise)
        history = [(d, h), *history[: order - 2]]
    return x


def dpmpp_2m(denoiser, x, sigmas, *, noise=None, lower_order_final: LowerOrderFinal = "auto"):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): second-order multistep, data prediction."""
    return _multistep(denoiser, x, sigmas, order=2, eta=0.0, noise=noise, s_noise=1.0,
                      lower_order_final=lower_order_final)


def dpmpp_3m(denoiser, x, sigmas, *, noise=None, lower_order_final: LowerOrderFinal = "auto",
             solver_type: Literal["midpoint", "heun"] = "midpoint"):
    """DPM-Solver++(3M) as published (Lu et al. 2022b; their code, k-diffusion, diffusers): -φ3·D2, order 2.

    D2 estimates h² D''/2 where the third-order term needs h² D'', so this update is second order
    (measured 1.95 on the exact GMM); ``dpm-solver++-3m-corrected`` uses 2·D2 and is third order.
    """
    return _multistep(denoiser, x, sigmas, order=3, eta=0.0, noise=noise, s_noise=1.0,
                      lower_order_final=lower_order_final, d2_weight=1.0, solver_type=solver_type)


def dpmpp_3m_corrected(denoiser, x, sigmas, *, noise=None, lower_order_final: LowerOrderFinal = "auto",
                       solver_type: Literal["midpoint", "heun"] = "midpoint"):
    """DPM-Solver++(3M) with the third-order term corrected to -2·φ3·D2 (Lu et al. 2022b, App. B): order 3."""
    return _multistep(denoiser, x, sigmas, order=3, eta=0.0, noise=noise, s_noise=1.0,
                      lower_order_final=lower_order_final, d2_weight=2.0, solver_type=solver_type)


def dpmpp_2m_sde(denoiser, x, sigmas, *, noise=None, eta: float = 1.0, s_noise: float = 1.0,
                 lower_order_final: LowerOrderFinal = "auto"):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, midpoint form as in k-diffusion)."""
    return _multistep(denoiser, x, sigmas, order=2, eta=eta, noise=noise, s_noise=s_noise,
                      lower_order_final=lower_order_final)
