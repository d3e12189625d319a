"""Parity as users run it: each diffbench sampler against the diffusers scheduler of the same method, whole runs.

A randomly initialised UNet2DModel (``tiny_diffusers.pixel_ddpm``, written with save_pretrained) under the
linear-β 1000-step schedule it is configured with, batch 8, every scheduler option at its diffusers default
unless the row says otherwise, every diffbench option at its default, whole runs including the last step
(into σ = 0 where the scheduler goes there). Both sides see the same σ list: the scheduler's integer
timesteps, with σ and ᾱ taken in float64 from the model's schedule (diffusers keeps them in float32 tables,
which the tests replace by the float64 values), the same start and the same per-sample step noise.
Tolerance 1e-10 relative in float64. Where a diffusers ``step`` casts the sample to float32 (Euler
ancestral, Euler, DPMSolverMultistep), the sample is a tensor whose cast to float32 is a no-op, so the comparison
stays in float64.

Conventions that differ and how the tests hold them fixed:
- spacing: diffusers' Euler-type schedulers' default 'linspace' spacing uses fractional timesteps with σ
  interpolated linearly in σ, where diffbench's schedule interpolates in log σ; those tests use 'trailing'
  (integer timesteps), a spacing diffusers ships.
- PNDM's half-step: diffusers' network sees t - (T//N)//2; the tests use N with T//N even (with an odd
  stride diffusers asks the network one timestep off from where it steps, docs/solvers.md).
- PNDM with ``set_alpha_to_one=False`` (its default) ends with a no-op step at t = 0: diffbench is given the
  grid that stops at σ(t = 0) (``final_zero: false``), one step (one network call) fewer.
- DEIS: diffusers ends at σ(t = 0) (final_sigmas_type has no 'zero' there); its default order is 2,
  diffbench's 3: both are compared.
DDIM, DDPM and Heun are compared in float64 at batch 8 in tests/models/test_diffusers_parity.py.
Samplers of diffusers not here: ScoreSdeVe (a VE model; ``pc`` is compared with it in
tests/samplers/test_pc.py at batch 16), DPMSolverSinglestep (its intermediate points are grid points, a
different discretisation from diffbench's single-step solvers), KDPM2 (no diffbench sampler).
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

import diffusers  # noqa: E402

from diffbench.denoiser import SigmaDenoiser  # noqa: E402
from diffbench.models.diffusers import diffusers_model  # noqa: E402
from diffbench.registry import default_registry  # noqa: E402
from diffbench.seeding import StepNoise, initial_noise  # noqa: E402

import tiny_diffusers  # noqa: E402

BATCH = 8
TOL = 1e-10
pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


class KeepFloat64(torch.Tensor):
    """A tensor whose ``.to(torch.float32)`` is a no-op (diffusers' "upcast" of the sample in some steps)."""

    def to(self, *args, **kwargs):
        args = tuple(a for a in args if a is not torch.float32)
        if kwargs.get("dtype") is torch.float32:
            kwargs.pop("dtype")
        return super().to(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tiny_diffusers.pixel_ddpm(tmp_path_factory.mktemp("parity"), channels=1)
    model = diffusers_model(path=str(root)).to(dtype=torch.float64)
    unet = diffusers.UNet2DModel.from_pretrained(root / "unet").eval().to(torch.float64)
    return model, unet


def scheduler(name: str, **options):
    return getattr(diffusers, name)(**{**tiny_diffusers.VP, **options})


def sigmas_at(model, timesteps, last: float | None) -> torch.Tensor:
    """σ at integer training timesteps in float64 (the model's schedule), then ``last`` (0, σ(0)) if given."""
    t = torch.as_tensor(timesteps).double()
    assert torch.equal(t, t.round()), "the tests use integer timesteps only"
    s = torch.as_tensor(model.schedule.sigmas[t.long().numpy()], dtype=torch.float64)
    return torch.cat([s, torch.tensor([last], dtype=torch.float64)]) if last is not None else s


def run_diffusers(sched, unet, x, timesteps=None):
    x = x.clone().as_subclass(KeepFloat64)
    with torch.inference_mode():
        for t in (sched.timesteps if timesteps is None else timesteps):
            inp = sched.scale_model_input(x, t).as_subclass(torch.Tensor)
            out = unet(inp, t.expand(x.shape[0]), return_dict=False)[0].as_subclass(KeepFloat64)
            x = sched.step(out, t, x, return_dict=False)[0].as_subclass(KeepFloat64)
    return x.as_subclass(torch.Tensor)


def run_diffbench(model, name, x, sigmas, noise=None, **options):
    den = SigmaDenoiser(model)
    with torch.inference_mode():
        out = default_registry().get("sampler", name).obj(den, x.clone(), sigmas, noise=noise, **options)
    return out, den.counter.calls


def feed_noise(monkeypatch, module, noise):
    """diffusers' randn_tensor in ``module`` returns diffbench's step noise k at its k-th draw."""
    draws = iter(range(noise.num_steps))
    monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: noise(next(draws)).clone().as_subclass(KeepFloat64))


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("steps", [8, 20])
def test_lms(tiny, steps):
    """lms (order 4) = LMSDiscreteScheduler (order 4), both integrating down to σ = 0."""
    model, unet = tiny
    sched = scheduler("LMSDiscreteScheduler", timestep_spacing="trailing")
    sched.set_timesteps(steps)
    sigmas = sigmas_at(model, sched.timesteps, 0.0)
    sched.sigmas = sigmas.clone()
    eps = initial_noise(0, range(BATCH), model.shape, dtype=torch.float64)
    x = eps * float(sigmas[0])
    ours, _ = run_diffbench(model, "lms", x, sigmas)
    assert rel(ours, run_diffusers(sched, unet, x)) <= TOL


@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("skip_prk_steps,set_alpha_to_one", [(False, False), (False, True), (True, False),
                                                            (True, True)])
def test_pndm(tiny, steps, skip_prk_steps, set_alpha_to_one):
    """pndm (PRK half-step at t - δ/2, the default on a discrete model) / PLMS = PNDMScheduler, leading spacing."""
    model, unet = tiny
    sched = scheduler("PNDMScheduler", skip_prk_steps=skip_prk_steps, set_alpha_to_one=set_alpha_to_one)
    sched.set_timesteps(steps)
    abar = torch.as_tensor(model.schedule.alphas_cumprod, dtype=torch.float64)
    sched.alphas_cumprod = abar
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if set_alpha_to_one else abar[0]
    grid = sched._timesteps[::-1].copy()  # the N leading timesteps, descending
    sigmas = sigmas_at(model, grid, 0.0 if set_alpha_to_one else None)
    eps = initial_noise(0, range(BATCH), model.shape, dtype=torch.float64)
    theirs = run_diffusers(sched, unet, eps)
    ours, calls = run_diffbench(model, "pndm", eps * (1.0 + float(sigmas[0]) ** 2) ** 0.5, sigmas,
                                prk_warmup=not skip_prk_steps)
    last = float(sigmas[-1])
    assert rel(ours, theirs * (1.0 + last ** 2) ** 0.5) <= TOL  # diffusers ends in VP coordinates: x_vp = α x
    assert calls == len(sched.timesteps) - (not set_alpha_to_one)  # diffusers' no-op last call


def test_pndm_sigma_midpoint_is_another_method(tiny):
    model, unet = tiny
    sigmas = sigmas_at(model, [900, 800, 700, 600, 500], 0.0)
    x = initial_noise(0, range(BATCH), model.shape, dtype=torch.float64) * float(sigmas[0])
    timestep, _ = run_diffbench(model, "pndm", x, sigmas)
    sigma, _ = run_diffbench(model, "pndm", x, sigmas, midpoint="sigma")
    assert rel(sigma, timestep) > 1e-6


@pytest.mark.parametrize("steps", [8, 20])
def test_euler(tiny, steps):
    """euler = EulerDiscreteScheduler in float64 (its step's float32 cast held off; test_diffusers_parity.py
    compares it in float32 as diffusers runs it)."""
    model, unet = tiny
    sched = scheduler("EulerDiscreteScheduler", timestep_spacing="trailing")
    sched.set_timesteps(steps)
    sigmas = sigmas_at(model, sched.timesteps, 0.0)
    sched.sigmas = sigmas.clone()
    x = initial_noise(0, range(BATCH), model.shape, dtype=torch.float64) * float(sigmas[0])
    ours, _ = run_diffbench(model, "euler", x, sigmas)
    assert rel(ours, run_diffusers(sched, unet, x)) <= TOL


@pytest.mark.parametrize("steps", [8, 20])
def test_euler_ancestral(tiny, steps, monkeypatch):
    """euler-ancestral (η = 1) = EulerAncestralDiscreteScheduler, the same per-sample noise at each step."""
    model, unet = tiny
    sched = scheduler("EulerAncestralDiscreteScheduler", timestep_spacing="trailing")
    sched.set_timesteps(steps)
    sigmas = sigmas_at(model, sched.timesteps, 0.0)
    sched.sigmas = sigmas.clone()
    noise = StepNoise(0, range(BATCH), model.shape, steps, dtype=torch.float64)
    feed_noise(monkeypatch, diffusers.schedulers.scheduling_euler_ancestral_discrete, noise)
    x = initial_noise(0, range(BATCH), model.shape, dtype=torch.float64) * float(sigmas[0])
    theirs = run_diffusers(sched, unet, x)
    ours, _ = run_diffbench(model, "euler-ancestral", x, sigmas, noise=noise)
    assert rel(ours, theirs) <= TOL


def dpm_sched(model, steps, **options):
    sched = scheduler("DPMSolverMultistepScheduler", **options)
    sched.set_timesteps(steps)
    sigmas = sigmas_at(model, sched.timesteps, 0.0)
    sched.sigmas = sigmas.clone()
    return sched, sigmas


@pytest.mark.parametrize("steps", [8, 20])
@pytest.mark.parametrize("sampler,options", [("dpm-solver++-2m", {}), ("dpm-solver++-3m", {"solver_order": 3})])
def test_dpm_solver_multistep(tiny, steps, sampler, options):
    """dpm-solver++-2m / -3m (as published) = DPMSolverMultistepScheduler at its defaults (order 2 or 3)."""
    model, unet = tiny
    sched, sigmas = dpm_sched(model, steps, **options)
    eps = initial_noise(0, range(BATCH), model.shape, dtype=torch.float64)
    theirs = run_diffusers(sched, unet, eps)
    ours, _ = run_diffbench(model, sampler, eps * (1.0 + float(sigmas[0]) ** 2) ** 0.5, sigmas)
    assert rel(ours, theirs) <= TOL


@pytest.mark.parametrize("steps", [8, 20])
def test_dpm_solver_sde(tiny, steps, monkeypatch):
    """dpm-solver++-2m-sde (η = 1) = DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++')."""
    model, unet = tiny
    sched, sigmas = dpm_sched(model, steps, algorithm_type="sde-dpmsolver++")
    noise = StepNoise(0, range(BATCH), model.shape, steps, dtype=torch.float64)
    feed_noise(monkeypatch, diffusers.schedulers.scheduling_dpmsolver_multistep, noise)
    eps = initial_noise(0, range(BATCH), model.shape, dtype=torch.float64)
    theirs = run_diffusers(sched, unet, eps)
    ours, _ = run_diffbench(model, "dpm-solver++-2m-sde", eps * (1.0 + float(sigmas[0]) ** 2) ** 0.5, sigmas,
                            noise=noise)
    assert rel(ours, theirs) <= TOL


@pytest.mark.parametrize("steps", [8, 20])
@pytest.mark.parametrize("order", [2, 3])
def test_deis(tiny, steps, order):
    """deis = DEISMultistepScheduler (log-ρ), both ending at σ(t = 0); diffusers' default order 2, diffbench's 3."""
    model, unet = tiny
    sched = scheduler("DEISMultistepScheduler", solver_order=order)
    sched.set_timesteps(steps)
    sigmas = sigmas_at(model, sched.timesteps, float(model.schedule.sigmas[0]))
    sched.sigmas = sigmas.clone()
    eps = initial_noise(0, range(BATCH), model.shape, dtype=torch.float64)
    theirs = run_diffusers(sched, unet, eps)
    options = {} if order == 3 else {"order": order}
    ours, _ = run_diffbench(model, "deis", eps * (1.0 + float(sigmas[0]) ** 2) ** 0.5, sigmas, **options)
    assert rel(ours, theirs * (1.0 + float(sigmas[-1]) ** 2) ** 0.5) <= TOL
