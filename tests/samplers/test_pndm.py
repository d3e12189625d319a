"""PNDM / PLMS against diffusers' PNDMScheduler, whole runs, in float64, with the σ-midpoint of continuous models.

diffusers takes PRK midpoints at timestep t - δ/2 of its training schedule; to hand both implementations the
same σ list *and* the same midpoints, the test builds the scheduler's ᾱ (trained_betas) so that, with
2N training timesteps and 'leading' spacing (δ = 2), even timesteps carry diffbench's grid σ and odd ones
the geometric means diffbench uses as midpoints on a continuous model (the EDM GMM: ``midpoint: auto`` is
'sigma' there). set_alpha_to_one=True makes the final σ 0, and both take an Adams-Bashforth step into it.
Relative difference ≤ 1e-10. The trained-timestep midpoint on the linear-β schedule is
tests/models/test_diffusers_parity.py's.
"""
from __future__ import annotations

import math

import pytest
import torch

from diffbench.denoiser import SigmaDenoiser
from diffbench.samplers import SAMPLERS
from diffbench.samplers.pndm import pndm_nfe
from diffusers_parity import alpha_of, eps_model, relative, run_diffusers
from helpers import edm_model, start_points, truncated_karras

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]
TOLERANCE = 1e-10


def pndm_scheduler(sigmas: list[float], skip_prk_steps: bool):
    """A PNDMScheduler whose timestep 2j carries sigmas[N-1-j] and 2j+1 the geometric mean with the next."""
    from diffusers import PNDMScheduler

    grid = sigmas[::-1]  # increasing: timestep 0 is the smallest σ
    by_t = []
    for j, s in enumerate(grid):
        by_t.append(s)
        by_t.append(math.sqrt(s * grid[j + 1]) if j + 1 < len(grid) else s * 1.5)
    abar = torch.tensor([1.0 / (1.0 + s * s) for s in by_t], dtype=torch.float64)
    betas = 1.0 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    sch = PNDMScheduler(num_train_timesteps=len(by_t), trained_betas=betas.numpy(), skip_prk_steps=skip_prk_steps,
                        set_alpha_to_one=True, timestep_spacing="leading")
    sch.alphas_cumprod = abar  # float64, as built (diffusers stores float32 betas)
    sch.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    sch.set_timesteps(len(sigmas))
    return sch, by_t


@pytest.mark.parametrize("steps", [4, 8, 20])
@pytest.mark.parametrize("prk_warmup", [True, False])
def test_matches_diffusers_step_for_step(steps, prk_warmup):
    sigmas = truncated_karras(edm_model(), steps, sigma_min=0.05, sigma_max=60.0)  # steps + 1 positive σ
    grid = sigmas.tolist()
    sch, by_t = pndm_scheduler(grid[:-1], skip_prk_steps=not prk_warmup)  # diffusers: N = steps, then σ = 0
    den = SigmaDenoiser(edm_model("eps"))
    x = start_points(16, grid[0])
    net = eps_model(den, lambda t: by_t[int(t)])
    theirs = run_diffusers(sch, net, x * alpha_of(grid[0]))  # every call, the PLMS step into ᾱ = 1 too
    zero = torch.cat([sigmas[:-1], torch.zeros(1, dtype=sigmas.dtype)])
    ours = SAMPLERS["pndm"].fn(den, x, zero, prk_warmup=prk_warmup)
    assert relative(ours, theirs) < TOLERANCE
    before = SAMPLERS["pndm"].fn(den, x, sigmas[:-1], prk_warmup=prk_warmup)
    assert relative(ours, den(before, grid[-2])) > 1e-6  # not the first-order x = D(x, σ)


def test_timestep_midpoint_needs_a_discrete_model():
    x = start_points(2, 60.0)
    grid = truncated_karras(edm_model(), 4, sigma_min=0.05, sigma_max=60.0)
    with pytest.raises(ValueError, match="pndm midpoint='timestep' needs a discrete-time model"):
        SAMPLERS["pndm"].fn(SigmaDenoiser(edm_model("eps")), x, grid, midpoint="timestep")
    with pytest.raises(ValueError, match="pndm midpoint must be 'auto', 'timestep' or 'sigma', got 'mid'"):
        SAMPLERS["pndm"].fn(SigmaDenoiser(edm_model("eps")), x, grid, midpoint="mid")

def test_declared_nfe():
    s = torch.tensor([80.0, 20.0, 5.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    assert pndm_nfe(s) == 4 * 3 + 1 + 1  # three PRK steps, one PLMS step, the step into 0
    assert pndm_nfe(s, prk_warmup=False) == 2 + 3 + 1
    one = torch.tensor([80.0, 0.0], dtype=torch.float64)
    assert pndm_nfe(one) == 1 and pndm_nfe(one, prk_warmup=False) == 1
    assert pndm_nfe(s[:2]) == 4 and pndm_nfe(s[:2], prk_warmup=False) == 2
