"""The solver-error metric against closed forms and the samplers' known orders."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import conditional_model, edm_model, fit_slope, run, truncated_karras

import diffbench
from diffbench.core.denoiser import DiffusionModel
from diffbench.core.sigma_grids import StepGrid
from diffbench.hookspecs import hookimpl
from diffbench.metrics.base import MetricContext
from diffbench.metrics.exact import (
    SolverError,
    exact_endpoints,
    starting_points,
    summarize,
)
from diffbench.models.gmm import GaussianMixture
from diffbench.registry import build_registry

pytestmark = pytest.mark.usefixtures("single_thread")

METRIC = SolverError()


def mean_error(model, sampler: str, steps: int, **sampler_options) -> float:
    res = diffbench.sample(
        model,
        sampler,
        steps=steps,
        num_samples=24,
        sampler_options=sampler_options,
        scheduler_options={"sigma_min": 1e-4},
    )
    return METRIC.compute(res.samples, model=model, result=res, context=None)["solver-error-mean"].value


def test_registered_as_a_metric():
    comp = diffbench.default_registry().get("metric", "solver-error")
    assert comp.obj.higher_is_better is False and comp.plugin == "builtin"


def test_endpoint_at_zero_matches_the_closed_form_gaussian_flow():
    # one Gaussian: x(0) = μ + U diag(sqrt(λ / (λ + σ0²))) Uᵀ (x - μ)
    mix = GaussianMixture.random(dim=2, components=1, seed=3)
    x = 80.0 * torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lam, u = torch.linalg.eigh(mix.covs[0])
    exact = mix.means[0] + ((x - mix.means[0]) @ u) * (lam / (lam + 80.0**2)).sqrt() @ u.T
    # the docstring's bound: σ_s²/2 · |x - μ| / λ_min ≈ 1e-12 here, below the ODE tolerance
    torch.testing.assert_close(exact_endpoints(mix, x, 80.0, 0.0), exact, rtol=0, atol=1e-9)


def test_starting_points_are_the_samplers_own():
    # an identity sampler returns its starting point: the metric must rebuild exactly that
    class Identity:
        @hookimpl
        def diffbench_register(self, registry):
            registry.add("sampler", "identity", lambda denoiser, x, sigmas, *, noise=None: x, nfe=lambda sigmas, **_: 0)

    reg = build_registry([Identity()], autoload=False)
    model = edm_model()
    for dtype in ("float32", "float64"):
        res = diffbench.sample(
            model, "identity", steps=4, num_samples=5, seed=7, first_index=11, batch_size=2, dtype=dtype, registry=reg
        )
        assert torch.equal(starting_points(model, res), res.samples.double())


def test_first_order_scaling_for_euler():
    model = edm_model()
    steps = (32, 64, 128)
    slope = fit_slope(steps, [mean_error(model, "euler", n) for n in steps])
    assert abs(slope - 1) < 0.2, f"euler measured order {slope:.3f}"


def test_heun_error_vanishes_at_second_order():
    # Karras grid to σ_min = 1e-4, then 0: the final Euler step adds ~σ_min²/2·|∇log p| ≈ 1e-7, far below
    # Heun's own error (2e-4 at 256 steps), so the metric sees the pure second-order decay towards 0
    model = edm_model()
    steps = (64, 128, 256)
    slope = fit_slope(steps, [mean_error(model, "heun", n) for n in steps])
    assert abs(slope - 2) < 0.2, f"heun measured order {slope:.3f}"


def test_grid_ending_above_zero_is_compared_at_its_last_sigma():
    model = edm_model()
    res = diffbench.sample(model, "heun", steps=3, num_samples=6)
    sigmas = truncated_karras(model, 40)
    x0 = starting_points(model, dataclasses.replace(res, grid=StepGrid(sigmas, [], False)))
    out = run("heun", model, x0, sigmas)
    truncated = dataclasses.replace(res, samples=out, grid=StepGrid(sigmas, [], False))
    errors = METRIC.errors(out, model=model, result=truncated)
    expected = (out - model.analytic.ode_solve(x0, 80.0, 0.1)).norm(dim=1)
    torch.testing.assert_close(errors, expected, rtol=1e-8, atol=1e-12)


def test_summary_and_standard_errors_by_hand():
    v = summarize(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    assert v["solver-error-mean"].value == 2.5
    assert math.isclose(v["solver-error-mean"].uncertainty, math.sqrt(5 / 3) / 2)  # sample std / sqrt(n)
    assert math.isclose(v["solver-error-rms"].value, math.sqrt(7.5))
    sq = torch.tensor([1.0, 4.0, 9.0, 16.0], dtype=torch.float64)
    assert math.isclose(v["solver-error-rms"].uncertainty, float(sq.std()) / 2 / (2 * math.sqrt(7.5)))
    assert v["solver-error-max"].value == 4.0 and v["solver-error-max"].uncertainty is None
    assert summarize(torch.tensor([0.5]))["solver-error-mean"].uncertainty is None


def test_non_analytic_model_is_a_clear_error():
    base = edm_model()
    model = DiffusionModel("net", base.network, base.schedule, base.target, base.shape, dtype=torch.float64)
    res = diffbench.sample(model, "euler", steps=2, num_samples=2)
    with pytest.raises(ValueError, match="needs an analytic model .* model 'net' has none"):
        METRIC.compute(res.samples, model=model, result=res, context=MetricContext(cache_dir=None))


def test_guided_run_is_a_clear_error():
    model = conditional_model()
    res = diffbench.sample(model, "euler", steps=2, num_samples=2, guidance=2.0)
    with pytest.raises(ValueError, match="unguided ODE"):
        METRIC.compute(res.samples, model=model, result=res)
