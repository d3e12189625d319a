"""Predictor-corrector against diffusers' ScoreSdeVeScheduler (the VE case), step for step, in float64.

Same geometric σ list, same exact GMM score s = (D - x)/σ², and the same normal draws (diffusers' randn_tensor
is replaced by diffbench's per-sample step noise, in the order the two consume it). diffusers (and Song et al.'s
code) average the Langevin step-size norms over the batch: ``step_size: snr-batch`` does the same and is
compared at batch 16; the default ``snr`` keeps them per sample, which equals diffusers one sample per batch.
diffusers rounds the Langevin step size to float32 (it multiplies by float32 ones); the test makes those ones
float64 while diffusers runs. Relative difference ≤ 1e-10.
"""
from __future__ import annotations

import math

import pytest
import torch

from diffbench.denoiser import SigmaDenoiser
from diffbench.samplers import SAMPLERS
from diffbench.samplers.pc import pc_nfe
from diffbench.seeding import StepNoise
from diffusers_parity import relative
from helpers import edm_model, start_points

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]
TOLERANCE = 1e-10
SIGMA_MIN, SIGMA_MAX = 0.01, 50.0


def diffusers_pc(x, steps, corrector_steps, snr, noise, monkeypatch):
    import diffusers.schedulers.scheduling_sde_ve as sde_ve

    sch = sde_ve.ScoreSdeVeScheduler(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, snr=snr, correct_steps=corrector_steps)
    sch.set_timesteps(steps)
    sch.set_sigmas(steps)
    sch.discrete_sigmas = torch.exp(torch.linspace(math.log(SIGMA_MIN), math.log(SIGMA_MAX), steps,
                                                   dtype=torch.float64))
    draws = iter(noise(k) for k in range(steps * (corrector_steps + 1)))
    monkeypatch.setattr(sde_ve, "randn_tensor", lambda *a, **kw: next(draws).clone())
    # step_correct multiplies the step size by torch.ones(batch), float32, which rounds it to float32;
    # for the float64 comparison those ones are float64 (only while diffusers runs)
    ones = torch.ones
    monkeypatch.setattr(sde_ve.torch, "ones", lambda *a, **kw: ones(*a, **{"dtype": torch.float64, **kw}))
    den = SigmaDenoiser(edm_model("eps"))
    score = lambda y, s: (den(y, s) - y) / (s * s)  # noqa: E731
    for i, t in enumerate(sch.timesteps):
        assert int(t * (steps - 1)) == steps - 1 - i  # diffusers' discrete σ index is ours
        s = float(sch.discrete_sigmas[steps - 1 - i])
        for _ in range(corrector_steps):
            x = sch.step_correct(score(x, s), x).prev_sample
        out = sch.step_pred(score(x, s), t, x)
        x = out.prev_sample
    monkeypatch.undo()
    return out.prev_sample_mean, sch.discrete_sigmas


@pytest.mark.parametrize("corrector_steps,snr", [(0, 0.16), (1, 0.16), (2, 0.075)])
@pytest.mark.parametrize("steps", [3, 12])
def test_default_matches_diffusers_one_sample_at_a_time(steps, corrector_steps, snr, monkeypatch):
    per = corrector_steps + 1
    for i in range(3):
        x = start_points(i + 1, SIGMA_MAX)[i:i + 1]
        noise = StepNoise(0, [i], (2,), steps * per, dtype=torch.float64)
        theirs, discrete = diffusers_pc(x.clone(), steps, corrector_steps, snr, noise, monkeypatch)
        sigmas = torch.cat([discrete.flip(0), torch.zeros(1, dtype=torch.float64)])
        ours = SAMPLERS["pc"].fn(SigmaDenoiser(edm_model("eps")), x, sigmas, noise=noise, snr=snr,
                                 corrector_steps=corrector_steps)
        assert relative(ours, theirs) < TOLERANCE


@pytest.mark.parametrize("corrector_steps,snr", [(1, 0.16), (2, 0.075)])
def test_batch_mean_norms_match_diffusers_at_batch_16(corrector_steps, snr, monkeypatch):
    steps, per = 12, corrector_steps + 1
    x = start_points(16, SIGMA_MAX)
    noise = StepNoise(0, range(16), (2,), steps * per, dtype=torch.float64)
    theirs, discrete = diffusers_pc(x.clone(), steps, corrector_steps, snr, noise, monkeypatch)
    sigmas = torch.cat([discrete.flip(0), torch.zeros(1, dtype=torch.float64)])
    den = SigmaDenoiser(edm_model("eps"))
    ours = SAMPLERS["pc"].fn(den, x, sigmas, noise=noise, snr=snr, corrector_steps=corrector_steps,
                             step_size="snr-batch")
    assert relative(ours, theirs) < TOLERANCE
    # the per-sample default is another method at batch 16 (and batch-independent, unlike this one)
    per_sample = SAMPLERS["pc"].fn(den, x, sigmas, noise=noise, snr=snr, corrector_steps=corrector_steps)
    assert relative(per_sample, theirs) > 1e-3
    alone = SAMPLERS["pc"].fn(den, x[:1], sigmas, noise=lambda k: noise(k)[:1], snr=snr,
                              corrector_steps=corrector_steps, step_size="snr-batch")
    assert relative(alone, ours[:1]) > 1e-6  # sample 0's result depends on its batch


@pytest.mark.parametrize("corrector_steps", [0, 1])
def test_samples_follow_the_mixture(corrector_steps):
    # a truth check beside parity: with many steps PC's samples follow the mixture (energy distance at the
    # Monte-Carlo level of two exact sample sets) with step_size 'sigma'; Song et al.'s rule with per-sample
    # norms (the default) does not, in 2-D, where ‖s‖ near a mode is near 0 (docs/solvers.md)
    model = edm_model("eps")
    sigmas = torch.cat([torch.exp(torch.linspace(math.log(80.0), math.log(0.002), 200, dtype=torch.float64)),
                        torch.zeros(1, dtype=torch.float64)])
    n = 512
    noise = StepNoise(1, range(n), (2,), 200 * (corrector_steps + 1), dtype=torch.float64)
    x = start_points(n, 80.0, seed=1)
    out = SAMPLERS["pc"].fn(SigmaDenoiser(model), x, sigmas, noise=noise, corrector_steps=corrector_steps,
                            step_size="sigma")
    ref = model.analytic.sample(n, generator=torch.Generator().manual_seed(3)).to(torch.float64)
    other = model.analytic.sample(n, generator=torch.Generator().manual_seed(4)).to(torch.float64)

    def energy(a, b):
        return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())

    assert energy(out, ref) < 3 * max(energy(other, ref), 1e-3)
    if corrector_steps:
        snr_rule = SAMPLERS["pc"].fn(SigmaDenoiser(model), x, sigmas, noise=noise, corrector_steps=corrector_steps)
        assert energy(snr_rule, ref) > 10 * max(energy(other, ref), 1e-3)

def test_declared_nfe_and_noise():
    s = torch.tensor([80.0, 5.0, 0.5, 0.0], dtype=torch.float64)
    assert pc_nfe(s) == 6 and pc_nfe(s, corrector_steps=0) == 3 and pc_nfe(s, corrector_steps=3) == 12
