"""Restart sampling against truth (no library installed here implements it): it is Heun's sampler exactly
when no restart interval lies on the grid, its samples follow the exact mixture (energy distance at the
Monte-Carlo level of two exact sample sets), and it equals the authors' loop (Xu et al.'s generate_restart.py
restart_sampler, transcribed below in float64 with their randn_like fed diffbench's draws)."""
from __future__ import annotations

import math

import pytest
import torch

from diffbench.samplers import SAMPLERS
from diffbench.samplers.restart import restart_index, restart_nfe, restart_segment
from diffbench.schedulers import karras
from helpers import edm_model, run, start_points, truncated_karras

pytestmark = pytest.mark.usefixtures("single_thread")


def test_is_heun_when_no_restart_applies():
    model = edm_model("eps")
    x = start_points(16, 80.0)
    grid = karras(model.schedule, 18, sigma_min=0.002, sigma_max=80.0)
    heun = run("heun", model, x, grid)
    assert torch.equal(run("restart", model, x, grid, restart_times=0), heun)
    above = truncated_karras(model, 12, sigma_min=0.5)  # the grid stops above t_max = 0.3: no interval on it
    assert torch.equal(run("restart", model, x, above), run("heun", model, x, above))
    assert restart_nfe(above) == SAMPLERS["heun"].nfe(above)


def test_restarts_where_the_paper_says():
    s = karras(edm_model().schedule, 18, sigma_min=0.002, sigma_max=80.0).tolist()
    i = restart_index(s, 0.06, 0.30)
    assert abs(s[i] - 0.06) == min(abs(v - 0.06) for v in s if v > 0)
    seg = restart_segment(0.30, s[i], 4)  # the authors' N_restart counts σ points: 4 points, 3 Heun steps
    assert seg[0] == 0.30 and seg[-1] == s[i] and len(seg) == 4 and seg == sorted(seg, reverse=True)
    assert restart_nfe(torch.tensor(s)) == 2 * 18 - 1 + 2 * 2 * 2  # the default [3, 2, 0.06, 0.30]: 43 NFE
    assert restart_nfe(torch.tensor(s), restart_points=4) == 47


def authors_restart(den, x, t_steps, restart_info, restart_gamma, s_min, s_max, s_noise, draws):
    """Xu et al.'s restart_sampler main loop (S_churn = 0), transcribed; ``draws`` stands for their randn_like."""
    restart_list = {int(torch.argmin(abs(t_steps - v[2]), dim=0)): v for v in restart_info.values()}
    t = t_steps.tolist()
    for i, (t_cur, t_next) in enumerate(zip(t[:-1], t[1:])):
        d_cur = (x - den(x, t_cur)) / t_cur
        x_next = x + (t_next - t_cur) * d_cur
        if t_next > 0:
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * (x_next - den(x_next, t_next)) / t_next)
        x = x_next
        if i + 1 in restart_list:
            n_restart, times, _, t_max = restart_list[i + 1]
            rho = 7
            idx = torch.arange(n_restart, dtype=torch.float64)
            new = ((t_max ** (1 / rho) + idx / (n_restart - 1) * (t[i + 1] ** (1 / rho) - t_max ** (1 / rho))) ** rho)
            new = new.tolist()
            for _ in range(times):
                x = x + next(draws) * math.sqrt(new[0] ** 2 - new[-1] ** 2) * s_noise
                for a, b in zip(new[:-1], new[1:]):
                    gamma = restart_gamma if s_min <= a <= s_max else 0
                    a_hat = a + gamma * a
                    if restart_gamma > 0:
                        x = x + math.sqrt(a_hat ** 2 - a ** 2) * s_noise * next(draws)
                    d = (x - den(x, a_hat)) / a_hat
                    x_e = x + (b - a_hat) * d
                    x = x + (b - a_hat) * (0.5 * d + 0.5 * (x_e - den(x_e, b)) / b)
    return x


@pytest.mark.parametrize("points,times,gamma", [(3, 2, 0.0), (4, 1, 0.05), (6, 3, 0.05)])
def test_equals_the_authors_loop(points, times, gamma):
    from diffbench.denoiser import SigmaDenoiser
    from diffbench.samplers import noise_draws
    from diffbench.seeding import StepNoise

    model = edm_model("eps")
    x = start_points(8, 80.0, seed=3)
    grid = karras(model.schedule, 18, sigma_min=0.002, sigma_max=80.0)
    opts = {"restart_points": points, "restart_times": times, "restart_gamma": gamma, "s_tmin": 0.01, "s_tmax": 1.0,
            "s_noise": 1.003}
    noise = StepNoise(3, range(8), (2,), noise_draws(SAMPLERS["restart"].declarations(), grid, opts),
                      dtype=torch.float64)
    at = restart_index(grid.tolist(), 0.06, 0.30) - 1  # the step after which the restarts happen
    per = times * (1 + (points - 1 if gamma > 0 else 0))
    draws = iter([noise(at * per + j) for j in range(per)])
    theirs = authors_restart(SigmaDenoiser(model), x.clone(), grid, {"0": [points, times, 0.06, 0.30]}, gamma,
                             0.01, 1.0, 1.003, draws)
    with torch.inference_mode():
        ours = SAMPLERS["restart"].fn(SigmaDenoiser(model), x.clone(), grid, noise=noise, **opts)
    assert float((ours - theirs).norm() / theirs.norm()) < 1e-12
    assert next(draws, None) is None  # every draw the authors' loop makes, and no more


def energy(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def test_samples_follow_the_mixture():
    model = edm_model("eps")
    n = 512
    x = start_points(n, 80.0, seed=2)
    out = run("restart", model, x, karras(model.schedule, 40, sigma_min=0.002, sigma_max=80.0), seed=2,
              t_min=0.06, t_max=1.0, restart_times=3)
    ref = model.analytic.sample(n, generator=torch.Generator().manual_seed(5)).to(torch.float64)
    other = model.analytic.sample(n, generator=torch.Generator().manual_seed(6)).to(torch.float64)
    assert energy(out, ref) < 3 * max(energy(other, ref), 1e-3)
    # and the restarts did something: the samples differ from Heun's
    heun = run("heun", model, x, karras(model.schedule, 40, sigma_min=0.002, sigma_max=80.0))
    assert float((out - heun).abs().max()) > 1e-3


def test_bad_options_are_clear_errors():
    model = edm_model("eps")
    with pytest.raises(ValueError, match="restart needs restart_points ≥ 2, restart_times ≥ 0, restart_gamma ≥ 0 and 0 < t_min < t_max"):
        run("restart", model, start_points(2, 80.0), truncated_karras(model, 4), t_min=0.5, t_max=0.3)
