"""LMS against diffusers' LMSDiscreteScheduler (k-diffusion's Lagrange-integral coefficients) in float64.

diffusers integrates each Lagrange basis polynomial with scipy.integrate.quad, diffbench exactly; both run on
the scheduler's own Karras σ list and the exact GMM denoiser, over whole runs: like diffusers (and k-diffusion's
sample_lms), diffbench's step into σ = 0 is a multistep step integrated down to 0.
"""
from __future__ import annotations

import pytest
import torch

from diffbench.denoiser import SigmaDenoiser
from diffbench.samplers import SAMPLERS
from diffbench.samplers.lms import lms_coefficients
from diffusers_parity import relative, run_diffusers
from helpers import edm_model, start_points

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
TOLERANCE = 1e-10


@pytest.mark.parametrize("steps", [3, 8, 25])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_matches_diffusers_step_for_step(order, steps):
    from diffusers import LMSDiscreteScheduler

    sch = LMSDiscreteScheduler(use_karras_sigmas=True)
    sch.set_timesteps(steps)
    sigmas = sch.sigmas.to(torch.float64)
    sch.sigmas = sigmas
    den = SigmaDenoiser(edm_model("eps"))
    x = start_points(16, float(sigmas[0]))
    sig = sigmas.tolist()

    def net(x_vp, t):  # the scheduler hands the network x (σ-space) and reads ε; x0 = x - σ ε
        sigma = sig[sch.step_index or 0]
        xs = x_vp.as_subclass(torch.Tensor)
        return (xs - den(xs, sigma)) / sigma

    theirs = run_diffusers(sch, net, x, order=order)  # every step, the last one into σ = 0 too
    ours = SAMPLERS["lms"].fn(den, x, sigmas, order=order)
    assert relative(ours, theirs) < TOLERANCE
    if order > 1 and steps > 1:  # the step into 0 is not the first-order x = D(x, σ)
        before = SAMPLERS["lms"].fn(den, x, sigmas[:-1], order=order)
        assert relative(ours, den(before, sig[-2])) > 1e-6

def test_coefficients_are_exact_for_polynomials():
    # the order-4 weights integrate every cubic in σ exactly: Σ c_j p(σ_{k-j}) = ∫ p over [σ_k, σ_{k+1}]
    s = [9.0, 5.0, 2.5, 1.2, 0.4]
    c = lms_coefficients(s, 3, 4)
    cubic = lambda u: 2 * u**3 - u**2 + 3 * u - 1  # noqa: E731
    integral = lambda u: u**4 / 2 - u**3 / 3 + 1.5 * u**2 - u  # noqa: E731
    got = sum(cj * cubic(s[3 - j]) for j, cj in enumerate(c))
    assert got == pytest.approx(integral(s[4]) - integral(s[3]), rel=1e-13)
    assert lms_coefficients(s, 0, 1) == [s[1] - s[0]]  # order 1 is Euler


def test_order_is_validated():
    with pytest.raises(ValueError, match="lms order must be 1, 2, 3 or 4, got 5"):
        SAMPLERS["lms"].fn(None, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), order=5)
