"""Restart sampling (Xu et al. 2023): Heun's ODE steps, with noise-and-resolve cycles over a restart interval.

Parameters are in the authors' units: their ``restart_info`` entry [N_restart, K, t_min, t_max] is
``restart_points`` (σ points of the restart segment, both ends included: N_restart - 1 Heun steps),
``restart_times``, ``t_min``, ``t_max``; their ``restart_gamma``, ``S_min``, ``S_max``, ``S_noise`` are
``restart_gamma``, ``s_tmin``, ``s_tmax``, ``s_noise``.
"""

from __future__ import annotations

import math

from diffbench.samplers._common import churns_at, num_steps, require_noise, sigmas_list
from diffbench.samplers.euler import heun_step


def restart_index(sigmas: list[float], t_min: float, t_max: float) -> int | None:
    """The grid index where the restarts happen: the positive σ nearest t_min (Xu et al.'s code), if below t_max."""
    positive = [(abs(s - t_min), i) for i, s in enumerate(sigmas) if s > 0.0]
    if not positive:
        return None
    i = min(positive)[1]
    return i if 0 < i and sigmas[i] < t_max else None


def restart_segment(t_max: float, sigma: float, points: int) -> list[float]:
    """``points`` Karras ρ = 7 σ from t_max down to σ (both ends exact): the authors' get_steps."""
    a, b = t_max ** (1 / 7), sigma ** (1 / 7)
    out = [(a + j / (points - 1) * (b - a)) ** 7 for j in range(points)]
    out[0], out[-1] = t_max, sigma
    return out


def _churns(restart_gamma: float, s_tmin: float, s_tmax: float | None, segment: list[float]) -> list[bool]:
    """Which segment steps raise σ by restart_gamma.

    Those starting inside [s_tmin, s_tmax] (the authors' S_min/S_max)."""
    return [churns_at(a, restart_gamma, s_tmin, s_tmax) for a in segment[:-1]]


def restart_nfe(
    sigmas, *, t_min: float = 0.06, t_max: float = 0.30, restart_points: int = 3, restart_times: int = 2, **_
) -> int:
    """Heun's 2N - 1 (or 2N above σ = 0) plus 2 (restart_points - 1) per restart when the interval is on the grid."""
    s = [float(v) for v in sigmas]
    main = 2 * num_steps(s) - (s[-1] == 0.0)
    return main + (2 * (restart_points - 1) * restart_times if restart_index(s, t_min, t_max) is not None else 0)


def restart_noise_per_step(*, restart_times: int = 2, restart_points: int = 3, restart_gamma: float = 0.0, **_) -> int:
    """Draws the bank holds per step.

    At the restart step, per restart one lift and (with churn) one per segment step."""
    per_restart = 1 + (int(restart_points) - 1 if float(restart_gamma) > 0 else 0)
    return max(1, int(restart_times) * per_restart)


def restart(
    denoiser,
    x,
    sigmas,
    *,
    noise=None,
    t_min: float = 0.06,
    t_max: float = 0.30,
    restart_points: int = 3,
    restart_times: int = 2,
    restart_gamma: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float | None = None,
    s_noise: float = 1.0,
):
    """Restart sampler (Xu et al. 2023, Alg. 2, Heun inner solver); defaults: their README's {"0": [3, 2, 0.06, 0.30]}.

    Heun's method over the σ list; on reaching the grid σ nearest t_min (if it is below t_max),
    ``restart_times`` times: add noise to climb back to t_max, x += s_noise √(t_max² - σ²) ε, and solve the ODE
    down to σ again over ``restart_points`` Karras σ points (restart_points - 1 Heun steps). With
    ``restart_gamma`` > 0 each segment step starting in [s_tmin, s_tmax] first raises σ to σ(1 + γ) with fresh
    noise (EDM churn; the authors' command uses 0.05 with S_min 0.01, S_max 1, S_noise 1.003). With no restart
    interval on the grid (or restart_times = 0) it is Heun's sampler exactly.
    """
    if restart_points < 2 or restart_times < 0 or not 0 < t_min < t_max or restart_gamma < 0:
        raise ValueError(
            f"restart needs restart_points ≥ 2, restart_times ≥ 0, restart_gamma ≥ 0 and "
            f"0 < t_min < t_max; got {restart_points}, {restart_times}, {restart_gamma}, {t_min}, {t_max}"
        )
    s = sigmas_list(sigmas)  # one host transfer before the loop
    at = restart_index(s, t_min, t_max) if restart_times > 0 else None
    per = restart_noise_per_step(
        restart_times=restart_times, restart_points=restart_points, restart_gamma=restart_gamma
    )
    for k, (sigma, sigma_next) in enumerate(zip(s, s[1:])):
        x = heun_step(denoiser, x, sigma, sigma_next)
        if k + 1 != at:
            continue
        draw = require_noise(noise, "restart")
        segment = restart_segment(t_max, sigma_next, restart_points)
        churns = _churns(restart_gamma, s_tmin, s_tmax, segment)
        lift = s_noise * math.sqrt(t_max**2 - sigma_next**2)
        index = k * per
        for _ in range(restart_times):
            x = x + lift * draw(index)
            index += 1
            for a, b, churn in zip(segment, segment[1:], churns):
                if churn:
                    a_hat = a * (1.0 + restart_gamma)
                    x = x + math.sqrt(a_hat**2 - a**2) * s_noise * draw(index)
                    a = a_hat
                index += restart_gamma > 0
                x = heun_step(denoiser, x, a, b)
    return x
