"""DPM-Solver++ multistep against diffusers' DPMSolverMultistepScheduler, step for step, in float64.

Same σ list (the scheduler's own, materialised and handed to both), same exact GMM denoiser. diffusers'
rule for the final orders (lower only below 15 steps; the step into σ = 0 is always first order) is
diffbench's ``lower_order_final: auto``. Relative difference ≤ 1e-10 (measured ≤ 1e-14).
"""

from __future__ import annotations

import pytest
import torch
from diffusers_parity import alpha_of, eps_model, relative, run_diffusers
from helpers import edm_model, start_points

from diffbench.core.denoiser import SigmaDenoiser
from diffbench.samplers import SAMPLERS
from diffbench.samplers._common import lowers_final

pytestmark = pytest.mark.usefixtures("single_thread")
TOLERANCE = 1e-10


def dpm_scheduler(
    order: int, steps: int, lower_order_final: bool, final: str, karras: bool, solver_type: str = "midpoint"
):
    from diffusers import DPMSolverMultistepScheduler

    sch = DPMSolverMultistepScheduler(
        solver_order=order,
        algorithm_type="dpmsolver++",
        prediction_type="epsilon",
        lower_order_final=lower_order_final,
        final_sigmas_type=final,
        use_karras_sigmas=karras,
        solver_type=solver_type,
    )
    sch.set_timesteps(steps)
    sch.sigmas = sch.sigmas.to(torch.float64)  # the σ list both sides use
    return sch


def diffusers_result(sch, x):
    den = SigmaDenoiser(edm_model("eps"))
    sig = sch.sigmas.tolist()
    net = eps_model(den, lambda t: sig[sch.step_index or 0])
    out = run_diffusers(sch, net, x * alpha_of(sig[0]))
    return out / alpha_of(sig[-1]) if sig[-1] > 0 else out


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("steps", [5, 14, 15, 22])
@pytest.mark.parametrize("order,name", [(2, "dpm-solver++-2m"), (3, "dpm-solver++-3m")])
def test_matches_diffusers_with_its_default_rule(order, name, steps, final):
    # Karras σ with final_sigmas_type="sigma_min" repeats the last σ (a zero-length step): not a grid
    sch = dpm_scheduler(order, steps, True, final, karras=final == "zero")
    x = start_points(16, float(sch.sigmas[0]))
    ours = SAMPLERS[name].fn(SigmaDenoiser(edm_model("eps")), x, sch.sigmas, lower_order_final="auto")
    assert relative(ours, diffusers_result(sch, x)) < TOLERANCE


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("steps", [6, 20])
def test_matches_diffusers_without_lowering(steps, solver_type):
    sch = dpm_scheduler(3, steps, False, "sigma_min", karras=False, solver_type=solver_type)
    x = start_points(16, float(sch.sigmas[0]))
    ours = SAMPLERS["dpm-solver++-3m"].fn(
        SigmaDenoiser(edm_model("eps")), x, sch.sigmas, lower_order_final=False, solver_type=solver_type
    )
    assert relative(ours, diffusers_result(sch, x)) < TOLERANCE


def test_the_corrected_update_is_not_what_diffusers_runs():
    sch = dpm_scheduler(3, 10, True, "zero", karras=True)
    x = start_points(16, float(sch.sigmas[0]))
    ours = SAMPLERS["dpm-solver++-3m-corrected"].fn(SigmaDenoiser(edm_model("eps")), x, sch.sigmas)
    assert relative(ours, diffusers_result(sch, x)) > 1e-4


def test_auto_is_diffusers_rule():
    assert [lowers_final("auto", n) for n in (1, 14, 15, 100)] == [True, True, False, False]
    assert lowers_final(True, 100) and not lowers_final(False, 3)
    with pytest.raises(ValueError, match="lower_order_final must be true, false or 'auto'"):
        lowers_final("yes", 3)
