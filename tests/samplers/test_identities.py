"""Algebraic identities between samplers and schedulers, to float64 rounding on the same σ list.

- DDIM(η=0), DPM-Solver-1 and Euler are one update: x0 + (σ_next/σ)(x - x0) = x - σ(e^h - 1)ε = x + (σ_next - σ)d.
- DDIM(η=1) is DDPM's ancestral step with the posterior variance: η = 1 makes DDIM's
  σ_t² = (1-ᾱ_prev)/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_prev) = β̃_t, and its mean equals the posterior mean μ̃_t.
- DDIM(η) is Euler-ancestral(η): both step to σ_down = √(σ_next² - σ_up²) and add σ_up·noise.
Rounding: float64 ulp at |x| ≤ ~300 is 6e-14 and the flow contracts towards the data; measured ≤ 2e-15.
"""

from __future__ import annotations

import pytest
import torch
from helpers import SCHEDULES, edm_model, run, start_points, truncated_karras

from diffbench.core.schedules import make_schedule
from diffbench.core.sigma_grids import exponential, karras, logsnr

pytestmark = pytest.mark.usefixtures("single_thread")

ROUNDING = 1e-12
POINTS, SIGMA_MAX = 32, 80.0


@pytest.fixture(scope="module", params=["to-zero", "truncated"])
def case(request):
    """The GMM model, starting points and a 25-step σ list that ends at 0 or stops at 0.1."""
    model = edm_model("eps")
    if request.param == "to-zero":
        sigmas = karras(model.schedule, 25, sigma_min=0.002, sigma_max=SIGMA_MAX)
    else:
        sigmas = truncated_karras(model, 25)
    return model, start_points(POINTS, SIGMA_MAX), sigmas


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_ddim_eta0_equals_dpm_solver_1_equals_euler(case):
    model, x, sigmas = case
    ddim = run("ddim", model, x, sigmas, eta=0.0)
    assert max_diff(ddim, run("dpm-solver-1", model, x, sigmas)) < ROUNDING
    assert max_diff(ddim, run("euler", model, x, sigmas)) < ROUNDING


def test_ddim_eta1_equals_ddpm_posterior_with_the_same_noise(case):
    model, x, sigmas = case
    ddim = run("ddim", model, x, sigmas, eta=1.0, seed=3)
    ddpm = run("ddpm", model, x, sigmas, variance="posterior", seed=3)
    assert max_diff(ddim, ddpm) < ROUNDING
    # the identity is specific to the posterior variance: DDPM's β_t variance is a different sampler
    assert max_diff(ddim, run("ddpm", model, x, sigmas, variance="beta", seed=3)) > 1e-3


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_eta_equals_euler_ancestral_eta(case, eta):
    model, x, sigmas = case
    assert (
        max_diff(
            run("ddim", model, x, sigmas, eta=eta, seed=5), run("euler-ancestral", model, x, sigmas, eta=eta, seed=5)
        )
        < ROUNDING
    )


@pytest.mark.parametrize(
    "name,options", [("lms", {"order": 1}), ("deis", {"order": 1}), ("restart", {"restart_times": 0})]
)
def test_first_order_multistep_and_restart_without_restarts_are_euler_or_heun(case, name, options):
    # lms(1) integrates the constant interpolant of d: Euler; deis(1) is DDIM's exponential step = Euler in σ-space
    model, x, sigmas = case
    other = "heun" if name == "restart" else "euler"
    assert max_diff(run(name, model, x, sigmas, **options), run(other, model, x, sigmas)) < ROUNDING


def test_dpmpp_2m_sde_with_eta0_is_dpmpp_2m(case):
    model, x, sigmas = case
    assert torch.equal(run("dpm-solver++-2m-sde", model, x, sigmas, eta=0.0), run("dpm-solver++-2m", model, x, sigmas))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("steps", [1, 2, 10, 50])
def test_exponential_rho1_equals_logsnr(schedule, steps):
    sched = make_schedule(schedule)
    a, b = exponential(sched, steps, rho=1.0), logsnr(sched, steps)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
