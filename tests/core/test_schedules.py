"""Noise schedules: σ ↔ t inverses, VP normalisation, derivatives, hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import CONTINUOUS, DISCRETE, SCHEDULES

from diffbench.core.schedules import make_schedule

VP = ("linear", "scaled-linear", "cosine")


def time_grid(sched, n: int = 101) -> np.ndarray:
    return np.linspace(sched.t_min, sched.t_max, n)


@pytest.mark.parametrize("name", SCHEDULES)
def test_sigma_and_time_maps_are_inverse(name):
    sched = make_schedule(name)
    t = time_grid(sched)
    np.testing.assert_allclose(sched.t_of_sigma(sched.sigma_of_t(t)), t, rtol=1e-12, atol=1e-12)
    sigma = np.geomspace(sched.sigma_min, sched.sigma_max, 101)
    np.testing.assert_allclose(sched.sigma_of_t(sched.t_of_sigma(sigma)), sigma, rtol=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_sigma_space_is_sigma_over_alpha(name):
    sched = make_schedule(name)
    t = time_grid(sched)
    c = sched.coef(t)
    np.testing.assert_allclose(c.sigma / c.alpha, sched.sigma_of_t(t), rtol=1e-12)
    assert np.all(np.diff(sched.sigma_of_t(t)) > 0), "σ must increase with t"


@pytest.mark.parametrize("name", VP)
def test_vp_schedules_preserve_variance(name):
    sched = make_schedule(name)
    c = sched.coef(time_grid(sched))
    np.testing.assert_allclose(c.alpha**2 + c.sigma**2, 1.0, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_derivatives_match_finite_differences(name):
    sched = make_schedule(name)
    t = time_grid(sched, 21)[1:-1]
    h = 1e-6 * (sched.t_max - sched.t_min)
    hi, lo, c = sched.coef(t + h), sched.coef(t - h), sched.coef(t)
    # central differences: truncation O(h²) and rounding O(eps/h) are both ~1e-10 relative here
    np.testing.assert_allclose(c.dalpha, (hi.alpha - lo.alpha) / (2 * h), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(c.dsigma, (hi.sigma - lo.sigma) / (2 * h), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", DISCRETE)
def test_discrete_schedules_declare_no_derivatives(name):
    sched = make_schedule(name)
    c = sched.coef(500.0)
    assert not sched.has_derivatives and math.isnan(c.dalpha) and math.isnan(c.dsigma)


def test_linear_vp_by_hand():
    sched = make_schedule("linear")
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    ab_last = math.prod(1 - b for b in betas)
    assert math.isclose(sched.sigma_min, math.sqrt(1e-4 / (1 - 1e-4)), rel_tol=1e-12)
    assert math.isclose(sched.sigma_max, math.sqrt((1 - ab_last) / ab_last), rel_tol=1e-10)
    assert (sched.t_min, sched.t_max, sched.num_steps) == (0.0, 999.0, 1000)
    # between training timesteps σ is log-linear (k-diffusion's interpolation)
    mid = math.sqrt(float(sched.sigma_of_t(10.0)) * float(sched.sigma_of_t(11.0)))
    assert math.isclose(float(sched.sigma_of_t(10.5)), mid, rel_tol=1e-12)


def test_scaled_linear_betas():
    sched = make_schedule("scaled-linear")
    assert math.isclose(sched.betas[0], 0.00085, rel_tol=1e-12)
    assert math.isclose(sched.betas[-1], 0.012, rel_tol=1e-12)
    assert np.allclose(np.diff(np.sqrt(sched.betas)), (0.012**0.5 - 0.00085**0.5) / 999, rtol=1e-9)


def test_continuous_schedules_by_hand():
    cos, ve, edm, flow = (make_schedule(n) for n in CONTINUOUS)
    assert math.isclose(float(cos.sigma_of_t(0.5)), 1.0, rel_tol=1e-15)
    c = cos.coef(0.5)
    assert math.isclose(c.alpha, math.sqrt(0.5)) and math.isclose(c.dsigma, math.pi / 2 * math.sqrt(0.5))
    assert math.isclose(float(ve.sigma_of_t(0.5)), math.sqrt(0.002 * 80), rel_tol=1e-14)
    assert (float(ve.t_min), float(ve.t_max)) == pytest.approx((0.0, 1.0), abs=1e-15)
    assert float(edm.sigma_of_t(3.7)) == 3.7 and float(edm.t_of_sigma(3.7)) == 3.7
    c = flow.coef(0.25)
    assert (c.alpha, c.sigma, c.dalpha, c.dsigma) == (0.75, 0.25, -1.0, 1.0)
    assert math.isclose(float(flow.sigma_of_t(0.5)), 1.0) and math.isclose(float(flow.t_of_sigma(80.0)), 80 / 81)


def test_schedule_errors():
    with pytest.raises(ValueError, match="unknown noise schedule 'cosin'"):
        make_schedule("cosin")
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max"):
        make_schedule("edm", sigma_min=1.0, sigma_max=0.5)


@pytest.mark.parametrize("name", SCHEDULES)
def test_describe_names_the_schedule(name):
    d = make_schedule(name).describe()
    assert d["schedule"] == name and d["sigma_min"] > 0 and d["sigma_max"] > d["sigma_min"]
