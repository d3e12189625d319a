"""First- and second-order ODE samplers in σ-space (Euler, Heun)."""

from __future__ import annotations

from diffbench.samplers._common import churn, num_steps, steps_of, to_d


def euler(
    denoiser,
    x,
    sigmas,
    *,
    noise=None,
    churn_amount: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float | None = None,
    s_noise: float = 1.0,
):
    """Euler method on the probability-flow ODE, optional EDM churn (Karras et al. 2022, Alg. 2)."""
    n = num_steps(sigmas)
    for k, s, sn in steps_of(sigmas):
        x, s = churn(x, k, s, n, noise, churn_amount, s_tmin, s_tmax, s_noise)
        x = x + (sn - s) * to_d(x, s, denoiser(x, s))
    return x


def heun(
    denoiser,
    x,
    sigmas,
    *,
    noise=None,
    churn_amount: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float | None = None,
    s_noise: float = 1.0,
):
    """Heun's 2nd-order method, no correction on the step to σ = 0 (Karras et al. 2022, Alg. 1/2)."""
    n = num_steps(sigmas)
    for k, s, sn in steps_of(sigmas):
        x, s = churn(x, k, s, n, noise, churn_amount, s_tmin, s_tmax, s_noise)
        x = heun_step(denoiser, x, s, sn)
    return x


def heun_step(denoiser, x, s: float, sn: float):
    """One step of Heun's method from σ = s to sn; Euler (x = D(x, s)) when sn = 0."""
    d = to_d(x, s, denoiser(x, s))
    x_euler = x + (sn - s) * d
    if sn == 0.0:
        return x_euler
    return x + (sn - s) * 0.5 * (d + to_d(x_euler, sn, denoiser(x_euler, sn)))
