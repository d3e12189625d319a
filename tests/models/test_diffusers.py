"""The diffusers model: config mapping against closed forms, one-line errors, latent decoding, prompts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import tiny_diffusers  # noqa: E402

import diffbench  # noqa: E402
from diffbench.models.diffusers import (  # noqa: E402
    ConfigError,
    diffusers_model,
    schedule_from_config,
)
from diffbench.run.sampling import make_grid  # noqa: E402

T = 1000


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Tiny networks: threads only add contention on a shared 2-core machine."""


def vp_config(**kw):
    return {"_class_name": "DDPMScheduler", **tiny_diffusers.VP, **kw}


def test_import_diffbench_does_not_import_diffusers():
    code = (
        "import sys, diffbench, diffbench.builtin; diffbench.default_registry(); "
        "print([m for m in ('diffusers', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_diffusers_is_one_line_naming_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(ValueError, match=r'pip install "diffbench\[diffusers\]"') as err:
        diffusers_model(path=str(tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "beta_schedule,betas",
    [
        ("linear", np.linspace(1e-4, 0.02, T)),
        ("scaled_linear", np.linspace(0.00085**0.5, 0.012**0.5, T) ** 2),
    ],
)
def test_beta_schedules_match_closed_form(beta_schedule, betas):
    """ᾱ = Π(1 - β) in float64 vs diffusers' float32 arithmetic: equal to float32 rounding."""
    start, end = (1e-4, 0.02) if beta_schedule == "linear" else (0.00085, 0.012)
    sched, target, time_fn, info = schedule_from_config(
        vp_config(beta_schedule=beta_schedule, beta_start=start, beta_end=end)
    )
    np.testing.assert_allclose(sched.alphas_cumprod, np.cumprod(1 - betas), rtol=2e-5)
    assert target == "eps" and time_fn is None and info["beta_schedule"] == beta_schedule


def test_squaredcos_matches_nichol_dhariwal():
    sched, *_ = schedule_from_config(vp_config(beta_schedule="squaredcos_cap_v2"))
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(sched.alphas_cumprod[:-1], (f[1:] / f[0])[:-1], rtol=2e-5)
    # diffbench's own squaredcos schedule (for the python model) is the same table in float64
    np.testing.assert_allclose(
        diffbench.core.schedules.make_schedule("squaredcos").alphas_cumprod, sched.alphas_cumprod, rtol=2e-5
    )


def test_trained_betas_used_as_given():
    betas = np.linspace(2e-4, 0.03, 50)
    sched, *_ = schedule_from_config(vp_config(trained_betas=betas.tolist(), num_train_timesteps=50))
    np.testing.assert_allclose(sched.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-6)
    assert sched.num_steps == 50 and sched.name == "diffusers-trained-betas"


@pytest.mark.parametrize("beta_schedule,start,end", [("scaled_linear", 0.00085, 0.012), ("linear", 1e-4, 0.02)])
def test_zero_terminal_snr_rescale(beta_schedule, start, end):
    """Lin et al. 2024: √ᾱ shifted and scaled so √ᾱ_T = 0 with √ᾱ_0 kept. σ_T = ∞ becomes ᾱ_T = 2^-24 as in
    diffusers' Euler scheduler, or (linear β, where ᾱ_(T-1) < 2^-24) ᾱ_(T-1)²/ᾱ_(T-2), keeping ᾱ decreasing."""
    cfg = dict(prediction_type="v_prediction", beta_schedule=beta_schedule, beta_start=start, beta_end=end)
    plain, *_ = schedule_from_config(vp_config(**cfg))
    sched, target, _, info = schedule_from_config(vp_config(**cfg, rescale_betas_zero_snr=True))
    a_plain, a = np.sqrt(plain.alphas_cumprod), np.sqrt(sched.alphas_cumprod)
    assert a[0] == pytest.approx(a_plain[0], rel=1e-6)
    expect = (a_plain - a_plain[-1]) * a_plain[0] / (a_plain[0] - a_plain[-1])  # affine in the original √ᾱ
    np.testing.assert_allclose(a[:-1], expect[:-1], rtol=1e-3)
    ac = sched.alphas_cumprod
    terminal = 2.0**-24 if beta_schedule == "scaled_linear" else ac[-2] ** 2 / ac[-3]
    assert ac[-1] == terminal and np.all(np.diff(ac) < 0) and "terminal_alphas_cumprod" in info
    assert target == "v"


@pytest.mark.parametrize("pred,target", [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")])
def test_prediction_types(pred, target):
    assert schedule_from_config(vp_config(prediction_type=pred))[1] == target


def test_legacy_config_records_defaults():
    cfg = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear", "unknown": 3}
    _, target, _, info = schedule_from_config(cfg)
    assert target == "eps"
    assert info["config_defaults_used"] == {
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "trained_betas": None,
        "rescale_betas_zero_snr": False,
        "prediction_type": "epsilon",
    }
    assert "unknown" in info["config_keys_unused"]


@pytest.mark.parametrize(
    "cfg,field",
    [
        (vp_config(prediction_type="flow_prediction"), "prediction_type"),
        (vp_config(beta_schedule="nonsense"), "beta_schedule"),
        (
            {"_class_name": "EulerDiscreteScheduler", **tiny_diffusers.VP, "timestep_type": "continuous"},
            "timestep_type",
        ),
        ({"_class_name": "ScoreSdeVeScheduler"}, "_class_name"),
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}, "use_dynamic_shifting"),
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift_terminal": 0.1}, "shift_terminal"),
    ],
)
def test_unhonourable_values_are_one_line_errors_naming_the_field(cfg, field):
    with pytest.raises(ConfigError) as err:
        schedule_from_config(cfg, "scheduler/scheduler_config.json")
    msg = str(err.value)
    assert field in msg and "scheduler_config.json" in msg and "\n" not in msg


def test_flow_config_shift_and_network_time():
    sched, target, time_fn, _ = schedule_from_config(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
    )
    assert target == "flow" and sched.shift == 3.0
    # network time is the flow time s (shifted) times T: s = σ / (1 + σ)
    assert time_fn(1.0, 0.3) == pytest.approx(500.0)
    u = np.linspace(0.05, 0.95, 5)
    s = 3 * u / (1 + 2 * u)
    np.testing.assert_allclose(sched.sigma_of_t(u), s / (1 - s), rtol=1e-12)
    assert sched.sigma_max == pytest.approx(3.0 * 999)  # s = shift(1 - 1/T): one step below pure noise


def test_hub_id_offline_is_an_error_without_download(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="not in the local hub cache.*HF_HUB_OFFLINE"):
        diffusers_model(path="google/ddpm-cifar10-32", allow_download=True)


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="needs options.path"):
        diffusers_model()
    with pytest.raises(ValueError, match="not a diffusers model folder"):
        diffusers_model(path=str(tmp_path))
    root = tiny_diffusers.pixel_ddpm(tmp_path / "m")
    with pytest.raises(ValueError, match="not text-conditioned"):
        diffusers_model(path=str(root), prompts="p.txt")
    with pytest.raises(ValueError, match="num_class_embeds is null"):
        diffusers_model(path=str(root), num_classes=3)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(vp_config(prediction_type="bogus")))
    with pytest.raises(ConfigError, match="prediction_type='bogus'"):
        diffusers_model(path=str(root))


def test_pixel_model_identity_and_hash(tmp_path):
    root = tiny_diffusers.pixel_ddpm(tmp_path / "m")
    model = diffusers_model(path=str(root))
    ident = model.identity()
    assert ident["denoiser_class"] == "UNet2DModel" and ident["scheduler_class"] == "DDIMScheduler"
    assert model.shape == (3, 8, 8) and model.condition is None and model.decoder is None
    assert diffusers_model(path=str(root)).checkpoint_hash == model.checkpoint_hash
    tiny_diffusers.unet(root, seed=5)  # other weights, other hash
    assert diffusers_model(path=str(root)).checkpoint_hash != model.checkpoint_hash


def test_latent_model_decodes_after_sampling_untimed_and_uncounted(tmp_path):
    """DiT + VAE: samples are vae.decode(z / scaling_factor) of the sampled latents; NFE counts the DiT only."""
    from diffusers import AutoencoderKL

    root = tiny_diffusers.latent_dit(tmp_path / "dit")
    model = diffusers_model(path=str(root))
    assert model.shape == (4, 8, 8) and model.info["learned_variance_dropped"]
    res = diffbench.sample(model, "ddim", steps=4, scheduler="trailing", num_samples=3, guidance=2.0)
    assert res.samples.shape == (3, 3, 16, 16)
    assert res.nfe == 8 == res.declared_nfe and res.decode_seconds > 0
    latent_only = diffbench.DiffusionModel(**{**vars(model), "decoder": None})
    z = diffbench.sample(latent_only, "ddim", steps=4, scheduler="trailing", num_samples=3, guidance=2.0).samples
    assert z.shape == (3, 4, 8, 8) and latent_only.decoder is None
    vae = AutoencoderKL.from_pretrained(root / "vae").eval()
    with torch.inference_mode():
        ref = vae.decode(z / 0.5, return_dict=False)[0]
    torch.testing.assert_close(res.samples, ref, rtol=1e-5, atol=1e-6)


def test_latent_model_in_another_dtype_decodes_with_its_own_vae(tmp_path):
    """sample(dtype=float64) works on a converted copy: its VAE is the copy's, in float64 too."""
    model = diffusers_model(path=str(tiny_diffusers.latent_dit(tmp_path / "dit")))
    res = diffbench.sample(model, "euler", steps=2, scheduler="karras", num_samples=2, dtype="float64")
    assert res.samples.dtype == torch.float64 and model.dtype == torch.float32


def test_text_model_prompts_and_null(tmp_path):
    root = tiny_diffusers.text_unet(tmp_path / "sd")
    with pytest.raises(ValueError, match="needs options.prompts"):
        diffusers_model(path=str(root))
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="has no prompts"):
        diffusers_model(path=str(root), prompts=str(tmp_path / "empty.txt"))
    (tmp_path / "p.txt").write_text("a cat\n\nb dog\n")
    model = diffusers_model(path=str(root), prompts=str(tmp_path / "p.txt"))
    assert model.condition.prompts == ["a cat", "b dog"]
    cond = model.condition.for_indices([0, 1, 2], model.device)
    assert torch.equal(cond[0], cond[2]) and not torch.equal(cond[0], cond[1])
    null = model.condition.null(2, model.device)
    assert torch.equal(null[0], model.network.encode_text([""])[0])
    ident = model.identity()
    assert ident["conditioning"] == "text" and ident["num_prompts"] == 2
    # unconditional sampling of a text model runs the network on the empty prompt: one evaluation per step
    res = diffbench.sample(model, "euler", steps=3, scheduler="trailing", num_samples=2, conditional=False)
    assert res.nfe == 3 and torch.isfinite(res.samples).all()


def test_class_unet_without_null_label_refuses_guidance(tmp_path):
    root = tmp_path / "c"
    tiny_diffusers.unet(root, num_class_embeds=4)
    tiny_diffusers.scheduler(root, **tiny_diffusers.VP)
    tiny_diffusers._index(
        root, "DDPMPipeline", unet=("diffusers", "UNet2DModel"), scheduler=("diffusers", "DDIMScheduler")
    )
    model = diffusers_model(path=str(root))
    assert model.num_classes == 4 and not model.condition.has_null
    with pytest.raises(ValueError, match="no null condition"):
        diffbench.sample(model, "ddim", steps=2, scheduler="trailing", num_samples=2, guidance=2.0)
    # declaring label 3 as the trained null label: 3 classes sampled, guidance against label 3
    model = diffusers_model(path=str(root), num_classes=3)
    res = diffbench.sample(model, "ddim", steps=2, scheduler="trailing", num_samples=4, guidance=2.0)
    assert res.labels.tolist() == [0, 1, 2, 0] and res.nfe == 4


def test_grid_timesteps_are_training_indices(tmp_path):
    model = diffusers_model(path=str(tiny_diffusers.pixel_ddpm(tmp_path / "m")))
    g, _ = make_grid(model, "linspace", 10)
    assert [round(t) for t in g.timesteps] == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    np.testing.assert_allclose(g.timesteps, np.round(g.timesteps), atol=1e-9)
