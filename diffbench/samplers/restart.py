"""Restart sampling (Xu et al. 2023): Heun's ODE steps, with noise-and-resolve cycles over a restart interval."""
from __future__ import annotations

import math

from diffbench.samplers._common import num_steps, require_noise, sigmas_list
from diffbench.samplers.euler import heun_step


def restart_index(sigmas: list[float], t_min: float, t_max: float) -> int | None:
    """The grid index where the restarts happen: the positive σ nearest t_min (Xu et al.'s code), if below t_max."""
    positive = [(abs(s - t_min), i) for i, s in enumerate(sigmas) if s > 0.0]
    if not positive:
        return None
    i = min(positive)[1]
    return i if 0 < i and sigmas[i] < t_max else None


def restart_segment(t_max: float, sigma: float, steps: int) -> list[float]:
    """Karras ρ = 7 σ from t_max down to σ in ``steps`` steps (both ends exact)."""
    a, b = t_max ** (1 / 7), sigma ** (1 / 7)
    out = [(a + j / steps * (b - a)) ** 7 for j in range(steps + 1)]
    out[0], out[-1] = t_max, sigma
    return out


def restart_nfe(sigmas, *, t_min: float = 0.06, t_max: float = 0.30, restart_steps: int = 3, restart_times: int = 2,
                **_) -> int:
    """Heun's 2N - 1 (or 2N above σ = 0) plus 2 · restart_steps per restart when the interval is on the grid."""
    s = [float(v) for v in sigmas]
    main = 2 * num_steps(s) - (s[-1] == 0.0)
    return main + (2 * restart_steps * restart_times if restart_index(s, t_min, t_max) is not None else 0)


def restart(denoiser, x, sigmas, *, noise=None, t_min: float = 0.06, t_max: float = 0.30, restart_steps: int = 3,
            restart_times: int = 2, s_noise: float = 1.0):
    """Restart sampler (Xu et al. 2023, Alg. 2, Heun inner solver); defaults {"0": [3, 2, 0.06, 0.30]} of their code.

    Heun's method over the σ list; on reaching the grid σ nearest t_min (if it is below t_max),
    ``restart_times`` times: add noise to climb back to t_max, x += s_noise √(t_max² - σ²) ε, and solve the ODE
    down to σ again with ``restart_steps`` Heun steps on a Karras grid. With no restart interval on the grid
    (or restart_times = 0) it is Heun's sampler exactly.
    """
    if restart_steps < 1 or restart_times < 0 or not 0 < t_min < t_max:
        raise ValueError(f"restart needs restart_steps ≥ 1, restart_times ≥ 0 and 0 < t_min < t_max; got "
                         f"{restart_steps}, {restart_times}, {t_min}, {t_max}")
    s = sigmas_list(sigmas)  # one host transfer before the loop
    at = restart_index(s, t_min, t_max) if restart_times > 0 else None
    for k, (sigma, sigma_next) in enumerate(zip(s, s[1:])):
        x = heun_step(denoiser, x, sigma, sigma_next)
        if k + 1 == at:
            segment = restart_segment(t_max, sigma_next, restart_steps)
            lift = s_noise * math.sqrt(t_max ** 2 - sigma_next ** 2)
            for j in range(restart_times):
                x = x + lift * require_noise(noise, "restart")(k * restart_times + j)
                for a, b in zip(segment, segment[1:]):
                    x = heun_step(denoiser, x, a, b)
    return x


def restart_noise_per_step(*, restart_times: int = 2, **_) -> int:
    """restart_times draws at the restart step (the bank holds that many per step)."""
    return max(1, int(restart_times))
