"""DEIS against diffusers' DEISMultistepScheduler ("log-rho" tAB-DEIS), step for step, in float64.

Same σ list (the scheduler's own linear-β list, which ends at σ(t=0) > 0), same exact GMM denoiser; diffusers'
rule for the final orders is diffbench's ``lower_order_final: auto``. Relative difference ≤ 1e-10.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers_parity import alpha_of, eps_model, relative, run_diffusers
from helpers import edm_model, start_points

from diffbench.core.denoiser import SigmaDenoiser
from diffbench.samplers import SAMPLERS
from diffbench.samplers.deis import deis_coefficients

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]
TOLERANCE = 1e-10


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("steps", [4, 10, 16])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_matches_diffusers_step_for_step(order, steps, lower_order_final):
    from diffusers import DEISMultistepScheduler

    sch = DEISMultistepScheduler(solver_order=order, lower_order_final=lower_order_final)
    sch.set_timesteps(steps)
    sch.sigmas = sch.sigmas.to(torch.float64)
    sig = sch.sigmas.tolist()
    den = SigmaDenoiser(edm_model("eps"))
    x = start_points(16, sig[0])
    theirs = run_diffusers(sch, eps_model(den, lambda t: sig[sch.step_index or 0]), x * alpha_of(sig[0]))
    ours = SAMPLERS["deis"].fn(
        den, x, sch.sigmas, order=order, lower_order_final="auto" if lower_order_final else False
    )
    assert relative(ours, theirs / alpha_of(sig[-1])) < TOLERANCE


def test_coefficients_integrate_polynomials_in_log_sigma_exactly():
    s = [9.0, 5.0, 2.5, 1.2]
    c = deis_coefficients(s, 2, 3)
    # ε(σ) = (log σ)² is reproduced by the quadratic interpolant: Σ c_j ε(σ_{k-j}) = ∫ (log σ)² dσ
    got = sum(cj * math.log(s[2 - j]) ** 2 for j, cj in enumerate(c))

    def antiderivative(u):
        return u * (math.log(u) ** 2 - 2 * math.log(u) + 2)

    assert got == pytest.approx(antiderivative(s[3]) - antiderivative(s[2]), rel=1e-13)
