"""Parity: diffbench's samplers reproduce diffusers' schedulers stepping the same tiny random model.

Each test loads a folder written by ``save_pretrained`` twice: through diffbench's ``diffusers``
model and as bare diffusers modules, then runs diffusers' scheduler loop and diffbench's sampler
over the same timesteps from the same point with the same per-step noise. Conventions that differ
are matched explicitly, never by a looser tolerance:

- start: diffusers' VP schedulers (DDIM, DDPM, DPMSolverMultistep, UniPC) start from x_T in VP
  coordinates; diffbench's sampler starts from the same point in σ-space, x = x_T / α_T. Euler and
  Heun keep σ-space samples already (``init_noise_sigma``), so x is passed as is.
- float64: diffusers keeps ᾱ (DDIM, DDPM) and σ (Heun, UniPC) in float32 tensors; the float64 tests
  hand it the float64 values diffbench uses at the same timesteps. Euler's and DPMSolverMultistep's
  ``step`` cast the sample to float32 (diffusers' "upcast"), so those two are checked in float32 only.
- guidance: pipelines combine raw network outputs, diffbench the x0 estimates; the conversion is
  affine with the same coefficients for both halves, so the two agree to rounding.
- the network sees the same integer timestep: diffbench's t(σ) on the grid is that integer to ~1e-13,
  and diffusers' timestep embedding casts it to float32 either way.
"""
from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusers  # noqa: E402

from diffbench.denoiser import SigmaDenoiser  # noqa: E402
from diffbench.models.diffusers import diffusers_model  # noqa: E402
from diffbench.registry import default_registry  # noqa: E402
from diffbench.sampling import make_grid  # noqa: E402
from diffbench.seeding import StepNoise, initial_noise  # noqa: E402

import tiny_diffusers  # noqa: E402

BATCH, STEPS = 8, 8
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Tiny networks: threads only add contention on a shared 2-core machine."""


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def pixel(tmp_path_factory):
    """Pixel UNet2DModel folders for ε and v prediction: (adapter model, bare UNet) per (target, dtype)."""
    out = {}
    for pred in ("epsilon", "v_prediction"):
        root = tiny_diffusers.pixel_ddpm(tmp_path_factory.mktemp(pred), prediction_type=pred)
        for dtype in (torch.float32, torch.float64):
            bare = diffusers.UNet2DModel.from_pretrained(root / "unet").eval().to(dtype)
            out[pred, dtype] = (diffusers_model(path=str(root)).to(dtype=dtype), bare)
    return out


def scheduler_for(name: str, prediction_type: str, **extra):
    """A diffusers scheduler with the tiny models' β schedule (linear unless ``extra`` says otherwise)."""
    return getattr(diffusers, name)(**{**tiny_diffusers.VP, "prediction_type": prediction_type, **extra})


def vp_start(model, sigmas, dtype):
    """x_T = ε in VP coordinates (diffusers) and the same point in σ-space (diffbench)."""
    eps = initial_noise(0, range(BATCH), model.shape, dtype=dtype)
    return eps, eps * (1.0 + float(sigmas[0]) ** 2) ** 0.5


def run_diffusers(sched, fn, x, step_kwargs=lambda k: {}):
    with torch.inference_mode():
        for k, t in enumerate(sched.timesteps):
            scale = getattr(sched, "scale_model_input", None)  # flow matching has none
            out = fn(scale(x, t) if scale else x, t)
            x = sched.step(out, t, x, return_dict=False, **step_kwargs(k))[0]
    return x


def run_diffbench(model, sampler, x, sigmas, noise=None, **kw):
    den = SigmaDenoiser(model, labels=kw.pop("labels", None), guidance=kw.pop("guidance", None))
    with torch.inference_mode():
        return default_registry().get("sampler", sampler).obj(den, x.clone(), sigmas, noise=noise, **kw)


def bare_fn(unet):
    return lambda x, t: unet(x, t.expand(x.shape[0]), return_dict=False)[0]


def grid(model, spacing, steps=STEPS):
    g, _ = make_grid(model, spacing, steps)
    return g


def check_timesteps(sched, g):
    ours = torch.tensor([round(t) for t in g.timesteps], dtype=torch.float64)
    assert torch.equal(sched.timesteps.double().unique_consecutive(), ours)


PREDS = ("epsilon", "v_prediction")
DTYPES = (torch.float32, torch.float64)


@pytest.mark.parametrize("pred,dtype,eta", list(itertools.product(PREDS, DTYPES, (0.0, 0.5))))
def test_ddim(pixel, pred, dtype, eta):
    """ddim(η) = DDIMScheduler (leading spacing, set_alpha_to_one) with the same variance noise."""
    model, unet = pixel[pred, dtype]
    g = grid(model, "leading")
    sched = scheduler_for("DDIMScheduler", pred, clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(STEPS)
    check_timesteps(sched, g)
    if dtype == torch.float64:  # diffusers' ᾱ table is float32; the model's values, in float64
        sched.alphas_cumprod = sched.alphas_cumprod.double()
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    x_vp, x_sigma = vp_start(model, g.sigmas, dtype)
    noise = StepNoise(0, range(BATCH), model.shape, STEPS, dtype=dtype)
    ref = run_diffusers(sched, bare_fn(unet), x_vp, lambda k: {"eta": eta, "variance_noise": noise(k)})
    ours = run_diffbench(model, "ddim", x_sigma, g.sigmas, noise=noise, eta=eta)
    assert rel(ours, ref) <= TOL[dtype]


@pytest.mark.parametrize("pred,dtype,clip", [(p, d, False) for p in PREDS for d in DTYPES]
                         + [("epsilon", torch.float32, True)])
def test_ddpm(pixel, pred, dtype, clip, monkeypatch):
    """ddpm = DDPMScheduler (fixed_small variance); its noise draws replaced by diffbench's step noise."""
    model, unet = pixel[pred, dtype]
    g = grid(model, "leading")
    sched = scheduler_for("DDPMScheduler", pred, clip_sample=clip, variance_type="fixed_small")
    sched.set_timesteps(STEPS)
    check_timesteps(sched, g)
    if dtype == torch.float64:
        sched.alphas_cumprod = sched.alphas_cumprod.double()
        sched.one = torch.tensor(1.0, dtype=torch.float64)
    noise = StepNoise(0, range(BATCH), model.shape, STEPS, dtype=dtype)
    draws = iter(range(STEPS))  # diffusers draws once per step with t > 0, in step order
    monkeypatch.setattr(diffusers.schedulers.scheduling_ddpm, "randn_tensor", lambda *a, **k: noise(next(draws)))
    x_vp, x_sigma = vp_start(model, g.sigmas, dtype)
    ref = run_diffusers(sched, bare_fn(unet), x_vp)
    den = SigmaDenoiser(model, clip_x0=clip)  # diffusers' clip_sample clamps x0 to [-1, 1], the data range
    with torch.inference_mode():
        ours = default_registry().get("sampler", "ddpm").obj(den, x_sigma.clone(), g.sigmas, noise=noise)
    assert rel(ours, ref) <= TOL[dtype]


def sigma_space_start(model, sched, dtype):
    return initial_noise(0, range(BATCH), model.shape, dtype=dtype) * sched.init_noise_sigma


@pytest.mark.parametrize("pred", PREDS)
def test_euler(pixel, pred):
    """euler = EulerDiscreteScheduler (trailing; float32: its step casts the sample to float32)."""
    model, unet = pixel[pred, torch.float32]
    g = grid(model, "trailing")
    sched = scheduler_for("EulerDiscreteScheduler", pred, timestep_spacing="trailing")
    sched.set_timesteps(STEPS)
    check_timesteps(sched, g)
    x = sigma_space_start(model, sched, torch.float32)
    assert float(sched.init_noise_sigma) == pytest.approx(float(g.sigmas[0]), rel=1e-6)  # starts at σ_max ε
    ref = run_diffusers(sched, bare_fn(unet), x)
    assert rel(run_diffbench(model, "euler", x, g.sigmas), ref) <= TOL[torch.float32]


@pytest.mark.parametrize("pred,dtype", list(itertools.product(PREDS, DTYPES)))
def test_heun(pixel, pred, dtype):
    """heun = HeunDiscreteScheduler: 2N - 1 evaluations, Euler on the last step into σ = 0."""
    model, unet = pixel[pred, dtype]
    g = grid(model, "trailing")
    sched = scheduler_for("HeunDiscreteScheduler", pred, timestep_spacing="trailing")
    sched.set_timesteps(STEPS)
    check_timesteps(sched, g)
    if dtype == torch.float64:  # float32 σ in diffusers; the same σ in float64, interleaved as it keeps them
        s = g.sigmas
        sched.sigmas = torch.cat([s[:1], s[1:-1].repeat_interleave(2), s[-1:]])
    x = sigma_space_start(model, sched, dtype)
    calls = []
    fn = bare_fn(unet)
    ref = run_diffusers(sched, lambda x, t: calls.append(t) or fn(x, t), x.clone())
    assert len(calls) == 2 * STEPS - 1
    assert rel(run_diffbench(model, "heun", x, g.sigmas), ref) <= TOL[dtype]


@pytest.mark.parametrize("pred,spacing", list(itertools.product(PREDS, ("trailing",))))
def test_dpm_solver_pp_2m(pixel, pred, spacing):
    """dpm-solver++-2m = DPMSolverMultistepScheduler(dpmsolver++, order 2, midpoint, final σ = 0)."""
    model, unet = pixel[pred, torch.float32]
    g = grid(model, spacing)
    sched = scheduler_for("DPMSolverMultistepScheduler", pred, algorithm_type="dpmsolver++", solver_order=2,
                          solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
                          timestep_spacing=spacing)
    sched.set_timesteps(STEPS)
    check_timesteps(sched, g)
    x_vp, x_sigma = vp_start(model, g.sigmas, torch.float32)
    ref = run_diffusers(sched, bare_fn(unet), x_vp)
    # diffusers lowers only the last step (into σ = 0) for order 2, as diffbench does with the option on
    ours = run_diffbench(model, "dpm-solver++-2m", x_sigma, g.sigmas, lower_order_final=True)
    assert rel(ours, ref) <= TOL[torch.float32]


@pytest.mark.parametrize("pred,dtype,variant", [(p, d, "bh2") for p in PREDS for d in DTYPES]
                         + [(p, torch.float64, "bh1") for p in PREDS])
def test_unipc(pixel, pred, dtype, variant):
    """unipc (diffbench-extra) = UniPCMultistepScheduler(predict_x0, order 2, corrector on).

    bh2 steps into σ = 0 (final_sigmas_type 'zero'). diffusers' bh1 returns NaN on that step (its
    B(h) = h is -∞ there), so bh1 is compared on diffusers' 'sigma_min' grid, which ends at the
    smallest training σ instead; diffbench is given that same σ list.
    """
    if ("sampler", "unipc") not in default_registry():
        pytest.skip("unipc comes with plugins/diffbench-extra, which is not installed")
    model, unet = pixel[pred, dtype]
    g = grid(model, "trailing")
    final = "zero" if variant == "bh2" else "sigma_min"
    sched = scheduler_for("UniPCMultistepScheduler", pred, solver_order=2, solver_type=variant, predict_x0=True,
                          lower_order_final=True, final_sigmas_type=final, timestep_spacing="trailing")
    sched.set_timesteps(STEPS)
    check_timesteps(sched, g)
    sigmas = g.sigmas.clone()
    if final == "sigma_min":
        sigmas[-1] = model.schedule.sigma_min
        assert float(sched.sigmas[-1]) == pytest.approx(model.schedule.sigma_min, rel=1e-6)
    if dtype == torch.float64:
        sched.sigmas = sigmas.clone()
    x_vp, x_sigma = vp_start(model, sigmas, dtype)
    ref = run_diffusers(sched, bare_fn(unet), x_vp)
    ours = run_diffbench(model, "unipc", x_sigma, sigmas, solver_order=2, variant=variant, corrector=True,
                         lower_order_final=True)
    ours = ours / (1.0 + float(sigmas[-1]) ** 2) ** 0.5  # diffusers ends in VP coordinates: x_vp = α x
    assert rel(ours, ref) <= TOL[dtype]


# --- class-conditional latent DiT with guidance (learned variance dropped) --------------------------

@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    out = {}
    for pred in PREDS:
        root = tiny_diffusers.latent_dit(tmp_path_factory.mktemp("dit-" + pred), prediction_type=pred)
        bare = diffusers.DiTTransformer2DModel.from_pretrained(root / "transformer").eval()
        out[pred] = (diffusers_model(path=str(root)), bare)
    return out


def guided_fn(call, cond, null, w, channels=None):
    """Classifier-free guidance on raw outputs, as diffusers pipelines do it ([uncond, cond] batch)."""
    def fn(x, t):
        raw = call(torch.cat([x, x]), t.expand(2 * x.shape[0]), torch.cat([null, cond]))
        raw = raw if channels is None else raw[:, :channels]
        u, c = raw.chunk(2)
        return c if w is None else u + w * (c - u)
    return fn


@pytest.mark.parametrize("pred,guidance,sampler", [(p, w, s) for p in PREDS for w in (None, 3.0)
                                                   for s in ("ddim", "dpm-solver++-2m")])
def test_dit_guidance(dit, pred, guidance, sampler):
    """DiT, class labels i mod 10, null class 10; the network's variance half is dropped before the target."""
    model, bare = dit[pred]
    assert model.num_classes == 10 and model.condition.has_null
    labels = model.condition.for_indices(list(range(BATCH)), model.device)
    null = torch.full_like(labels, 10)
    call = lambda x, t, y: bare(x, timestep=t, class_labels=y, return_dict=False)[0]  # noqa: E731
    fn = guided_fn(call, labels, null, guidance, channels=4)
    if sampler == "ddim":
        g = grid(model, "leading")
        sched = scheduler_for("DDIMScheduler", pred, clip_sample=False, set_alpha_to_one=True)
        kw = {}
    else:
        g = grid(model, "trailing")
        sched = scheduler_for("DPMSolverMultistepScheduler", pred, algorithm_type="dpmsolver++", solver_order=2,
                              final_sigmas_type="zero", lower_order_final=True, timestep_spacing="trailing")
        kw = {"lower_order_final": True}
    sched.set_timesteps(STEPS)
    x_vp, x_sigma = vp_start(model, g.sigmas, torch.float32)
    ref = run_diffusers(sched, fn, x_vp)
    ours = run_diffbench(model, sampler, x_sigma, g.sigmas, labels=labels, guidance=guidance, **kw)
    assert rel(ours, ref) <= TOL[torch.float32]


# --- text-conditioned UNet2DConditionModel with a CLIP text encoder ---------------------------------

PROMPTS = ["a red cat", "two dogs", "blue sky"]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    from transformers import AutoTokenizer, CLIPTextModel

    out = {}
    tmp = tmp_path_factory.mktemp("prompts")
    (tmp / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    for pred in PREDS:
        root = tiny_diffusers.text_unet(tmp_path_factory.mktemp("sd-" + pred), prediction_type=pred)
        bare = diffusers.UNet2DConditionModel.from_pretrained(root / "unet").eval()
        tok = AutoTokenizer.from_pretrained(root / "tokenizer")
        enc = CLIPTextModel.from_pretrained(root / "text_encoder").eval()

        def encode(texts, tok=tok, enc=enc):
            ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            with torch.inference_mode():
                return enc(ids)[0]

        out[pred] = (diffusers_model(path=str(root), prompts=str(tmp / "prompts.txt")), bare, encode)
    return out


@pytest.mark.parametrize("pred,guidance,sampler", [(p, w, s) for p in PREDS for w in (None, 5.0)
                                                   for s in ("ddim", "euler")])
def test_text_guidance(text, pred, guidance, sampler):
    """Prompt of sample i = line i mod 3, guidance against the empty prompt, as StableDiffusionPipeline."""
    model, bare, encode = text[pred]
    idx = list(range(BATCH + 1))  # 9 samples over 3 prompts: each prompt three times
    cond = model.condition.for_indices(idx, model.device)
    ref_cond = encode([PROMPTS[i % 3] for i in idx])
    assert torch.equal(cond, ref_cond)
    null = encode([""]).expand(len(idx), -1, -1)
    call = lambda x, t, c: bare(x, t, encoder_hidden_states=c, return_dict=False)[0]  # noqa: E731
    fn = guided_fn(call, ref_cond, null, guidance)
    spacing = "leading" if sampler == "ddim" else "trailing"
    g = grid(model, spacing)
    sd = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    if sampler == "ddim":
        sched = scheduler_for("DDIMScheduler", pred, clip_sample=False, set_alpha_to_one=True, **sd)
    else:
        sched = scheduler_for("EulerDiscreteScheduler", pred, timestep_spacing="trailing", **sd)
    sched.set_timesteps(STEPS)
    eps = initial_noise(0, idx, model.shape)
    if sampler == "ddim":
        x_ref, x_ours = eps, eps * (1.0 + float(g.sigmas[0]) ** 2) ** 0.5
    else:
        x_ref = x_ours = eps * sched.init_noise_sigma
    ref = run_diffusers(sched, fn, x_ref)
    ours = run_diffbench(model, sampler, x_ours, g.sigmas, labels=cond, guidance=guidance)
    assert rel(ours, ref) <= TOL[torch.float32]


# --- flow matching with a shift -----------------------------------------------------------------

@pytest.mark.parametrize("shift", (1.0, 3.0))
def test_flow_euler(tmp_path, shift):
    """euler on the flow model = FlowMatchEulerDiscreteScheduler(shift) from the same s: its flow Euler
    step x' = (s'/s) x + (1 - s'/s) D is σ-space Euler, rewritten; diffusers starts at s = 1 (σ = ∞),
    so it is handed diffbench's unshifted grid through ``sigmas=`` and shifts it itself."""
    root = tmp_path / "flow"
    unet = tiny_diffusers.unet(root)
    tiny_diffusers.scheduler(root, "FlowMatchEulerDiscreteScheduler", shift=shift)
    tiny_diffusers._index(root, "Pipeline", unet=("diffusers", "UNet2DModel"),
                          scheduler=("diffusers", "FlowMatchEulerDiscreteScheduler"))
    model = diffusers_model(path=str(root))
    assert model.target.name == "flow" and model.schedule.shift == shift
    g = grid(model, "linspace")
    u = [float(model.schedule.t_of_sigma(s)) for s in g.sigmas[:-1].tolist()]  # unshifted schedule time
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(sigmas=u)
    s_grid = g.sigmas[:-1] / (1 + g.sigmas[:-1])
    assert torch.allclose(sched.sigmas[:-1].double(), s_grid, rtol=1e-6)  # the same flow times s
    eps = initial_noise(0, range(BATCH), model.shape)
    x_s = eps * s_grid[0].item()  # x_s = s ε at the start (x0 term absent)
    ref = run_diffusers(sched, bare_fn(unet), x_s.clone())
    ours = run_diffbench(model, "euler", x_s / (1 - s_grid[0].item()), g.sigmas)
    assert rel(ours, ref) <= TOL[torch.float32]
