"""Restart sampling against truth (no library installed here implements it): it is Heun's sampler exactly
when no restart interval lies on the grid, and its samples follow the exact mixture (energy distance at
the Monte-Carlo level of two exact sample sets)."""
from __future__ import annotations

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
    seg = restart_segment(0.30, s[i], 3)
    assert seg[0] == 0.30 and seg[-1] == s[i] and len(seg) == 4 and seg == sorted(seg, reverse=True)
    assert restart_nfe(torch.tensor(s)) == 2 * 18 - 1 + 2 * 3 * 2


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
    with pytest.raises(ValueError, match="restart needs restart_steps ≥ 1, restart_times ≥ 0 and 0 < t_min < t_max"):
        run("restart", model, start_points(2, 80.0), truncated_karras(model, 4), t_min=0.5, t_max=0.3)
