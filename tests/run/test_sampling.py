"""One sampling call: determinism, batch independence, counted NFE, what is recorded, loop hygiene."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import conditional_model, edm_model, truncated_karras

import diffbench
from diffbench.core import noise as seeding
from diffbench.core.denoiser import DiffusionModel, NetworkCounter, SigmaDenoiser
from diffbench.hookspecs import hookimpl
from diffbench.registry import build_registry
from diffbench.run.sampling import sample, sample_batches
from diffbench.samplers import SAMPLERS, noise_draws

pytestmark = pytest.mark.usefixtures("single_thread")

ALL = sorted(SAMPLERS)
# a stochastic configuration of each sampler that has one, so step noise is exercised
STOCHASTIC = {"ddim": {"eta": 1.0}, "euler": {"churn_amount": 10.0}, "heun": {"churn_amount": 10.0}}


def draw(model, name, **kw):
    kw.setdefault("sampler_options", STOCHASTIC.get(name))
    return sample(model, name, steps=kw.pop("steps", 6), num_samples=kw.pop("num_samples", 13), **kw)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_is_bit_identical_and_batch_size_does_not_matter(name):
    model = edm_model("eps")
    ref = draw(model, name, seed=3, dtype="float32").samples
    assert ref.dtype == torch.float32 and ref.shape == (13, 2) and bool(torch.isfinite(ref).all())
    assert torch.equal(draw(model, name, seed=3, dtype="float32").samples, ref)
    for batch in (1, 7):
        assert torch.equal(draw(model, name, seed=3, dtype="float32", batch_size=batch).samples, ref), batch
    assert not torch.equal(draw(model, name, seed=4, dtype="float32").samples, ref)


@pytest.mark.parametrize("name", ["ddpm", "euler"])
def test_sample_i_depends_only_on_seed_and_i(name):
    model = edm_model("eps")
    whole = draw(model, name, num_samples=9, seed=2).samples
    part = draw(model, name, num_samples=4, first_index=5, seed=2, batch_size=3)
    assert torch.equal(part.samples, whole[5:9]) and part.meta["first_index"] == 5


def test_streamed_batches_are_the_samples_of_one_call_and_the_totals_match():
    model = conditional_model()
    whole = sample(model, "heun", steps=4, num_samples=10, seed=1, batch_size=4)
    call = sample_batches(model, "heun", steps=4, num_samples=10, seed=1, batch_size=4)
    assert call.result.samples is None and call.result.declared_nfe == whole.declared_nfe
    got = list(call)
    assert [len(b.samples) for b in got] == [4, 4, 2]
    assert torch.equal(torch.cat([b.indices for b in got]), torch.arange(10))
    assert torch.equal(torch.cat([b.samples for b in got]), whole.samples)
    assert torch.equal(torch.cat([b.labels for b in got]), whole.labels) and torch.equal(
        call.result.labels, whole.labels
    )
    assert call.result.nfe == whole.nfe == 7 and call.result.samples is None
    assert all(b.result is call.result and b.seed == 1 for b in got)


def test_a_bad_call_is_refused_before_any_sampling():
    with pytest.raises(ValueError, match="guidance needs a conditional model"):
        sample_batches(edm_model("eps"), "euler", steps=4, guidance=2.0)


@pytest.mark.parametrize("name", ALL)
def test_counted_nfe_equals_declared_nfe(name):
    model = edm_model("eps")
    res = draw(model, name, steps=7)
    assert res.nfe == res.declared_nfe == SAMPLERS[name].nfe(res.grid.sigmas)
    # and on a grid that stops above σ = 0 (no shortened last step)
    sigmas = truncated_karras(model, 7)
    counter = NetworkCounter(4)
    options = STOCHASTIC.get(name) or {}
    noise = seeding.StepNoise(
        0, range(4), (2,), noise_draws(SAMPLERS[name].declarations(), sigmas, options), dtype=torch.float64
    )
    x = seeding.initial_noise(0, range(4), (2,), dtype=torch.float64) * 80
    SAMPLERS[name].fn(SigmaDenoiser(model, counter=counter), x, sigmas, noise=noise, **options)
    assert counter.nfe == SAMPLERS[name].nfe(sigmas)


@pytest.mark.parametrize("steps", [1, 2, 10])
def test_heun_makes_2n_minus_1_calls_and_ddim_n(steps):
    model = edm_model("eps")
    assert draw(model, "heun", steps=steps, sampler_options={}).nfe == 2 * steps - 1
    assert draw(model, "ddim", steps=steps, sampler_options={}).nfe == steps


@pytest.mark.parametrize("name", ["euler", "heun", "dpm-solver-3", "dpm-solver++-2m"])
def test_guidance_doubles_counted_nfe(name):
    model = conditional_model()
    plain = draw(model, name, steps=5)
    guided = draw(model, name, steps=5, guidance=3.0)
    assert guided.nfe == guided.declared_nfe == 2 * plain.nfe == 2 * plain.declared_nfe
    assert draw(model, name, steps=5, guidance=1.0).nfe == plain.nfe  # w = 1 is the conditional model


def test_guidance_errors():
    with pytest.raises(ValueError, match="unconditional; guidance needs a conditional model"):
        sample(edm_model(), "euler", steps=3, guidance=2.0)
    with pytest.raises(ValueError, match="guidance needs conditional=True"):
        sample(conditional_model(), "euler", steps=3, guidance=2.0, conditional=False)


def test_labels_cycle_through_classes_independent_of_batches():
    res = sample(conditional_model(3), "euler", steps=2, num_samples=7, batch_size=2)
    assert res.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert sample(conditional_model(3), "euler", steps=2, num_samples=3, conditional=False).labels is None


def test_what_ran_is_recorded():
    res = sample(
        edm_model(),
        "dpm-solver++-2m",
        steps=4,
        scheduler="karras",
        scheduler_options={"rho": 5.0},
        num_samples=3,
        seed=9,
        dtype="float32",
    )
    expected = diffbench.make_grid(edm_model(), "karras", 4, {"rho": 5.0})[0]
    assert torch.equal(res.grid.sigmas, expected.sigmas)
    assert res.sampler_options == {"lower_order_final": "auto"}
    assert res.scheduler_options == {
        "rho": 5.0,
        "sigma_min": None,
        "sigma_max": None,
        "quantize": False,
        "final_zero": True,
    }
    assert res.meta["seed"] == 9 and res.meta["num_samples"] == 3 and res.meta["dtype"] == "float32"
    assert res.sample_seconds > 0 and 0 < res.network_share <= 1


def test_unknown_names_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="sampler 'ddim' has no option 'etta'; options: eta"):
        sample(edm_model(), "ddim", steps=3, sampler_options={"etta": 1.0})
    with pytest.raises(KeyError, match="unknown sampler 'eulr'"):
        sample(edm_model(), "eulr", steps=3)


def test_network_sees_the_sigma_the_update_uses_on_a_quantized_grid():
    # quantize snaps the grid; DPM-Solver-2's midpoints must reach the network unrounded, as the update uses them
    base = diffbench.load_model("gmm", schedule="linear", target="eps")
    seen: list[float] = []

    def network(x_t, t, labels):
        seen.append(float(t[0]))
        return base.network(x_t, t, labels)

    model = DiffusionModel("spy", network, base.schedule, base.target, base.shape, dtype=torch.float64)
    res = sample(model, "dpm-solver-2", steps=5, scheduler="karras", quantize=True, num_samples=2)
    sig = res.grid.sigmas.tolist()
    expected = []
    for s, sn in zip(sig[:-1], sig[1:]):
        expected.append(s)
        if sn > 0:
            expected.append(s * math.exp(-0.5 * math.log(s / sn)))  # λ midpoint, r1 = 1/2
    t_expected = [float(model.schedule.t_of_sigma(s)) for s in expected]
    assert seen == pytest.approx(t_expected, rel=1e-12)
    assert any(t != round(t) for t in seen) and all(t == round(t) for t in res.grid.timesteps)


def test_no_rng_call_inside_the_sampling_loop(monkeypatch):
    calls = [0]
    real = torch.randn

    def counting_randn(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("a sampler drew random numbers itself")

    monkeypatch.setattr(seeding.torch, "randn", counting_randn)
    for name in ("randn_like", "rand", "rand_like", "normal"):
        monkeypatch.setattr(torch, name, forbidden)
    monkeypatch.setattr(torch.Tensor, "normal_", forbidden)
    for steps in (3, 30):
        calls[0] = 0
        seeding._memo.clear()  # recent draws are kept: count a first draw
        sample(edm_model(), "ddpm", steps=steps, num_samples=5, batch_size=2)
        assert calls[0] == 2 * 5, f"{steps} steps: {calls[0]} RNG calls for 5 samples"  # start + step bank


@pytest.mark.parametrize("name", ALL)
def test_no_host_sync_inside_the_sampling_loop(monkeypatch, name):
    # σ list → host floats once before the loop; any other tensor → Python conversion is a device sync
    conversions = []
    for method in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu"):
        real = getattr(torch.Tensor, method)

        def spy(self, *args, _real=real, _name=method, **kwargs):
            conversions.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, spy)
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    noise_bank = torch.randn(
        noise_draws(SAMPLERS[name].declarations(), sigmas, STOCHASTIC.get(name) or {}), 3, 2, dtype=torch.float64
    )
    x = torch.randn(3, 2, dtype=torch.float64)
    SAMPLERS[name].fn(lambda x, s: 0.5 * x, x, sigmas, noise=lambda k: noise_bank[k], **(STOCHASTIC.get(name) or {}))
    assert conversions == ["tolist"]


def test_third_party_sampler_without_stochastic_declaration():
    class Plugin:
        @hookimpl
        def diffbench_register(self, registry):
            def identity(denoiser, x, sigmas, *, noise=None):
                return x

            registry.add("sampler", "identity", identity, nfe=lambda sigmas, **_: 0)

    reg = build_registry([Plugin()], autoload=False)
    res = sample(edm_model(), "identity", steps=3, num_samples=2, registry=reg)
    assert res.nfe == res.declared_nfe == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["heun", "ddpm"])
def test_cuda_matches_cpu_from_the_same_noise(name):
    # noise is drawn on the CPU per sample, so both devices start from, and step with, identical noise
    cpu = draw(edm_model("eps"), name, device="cpu", dtype="float64")
    cuda = draw(edm_model("eps"), name, device="cuda", dtype="float64")
    assert cuda.samples.device.type == "cpu" and cuda.meta["device"].startswith("cuda")
    torch.testing.assert_close(cuda.samples, cpu.samples, rtol=1e-9, atol=1e-9)
    assert cuda.nfe == cpu.nfe == cuda.declared_nfe and cuda.network_seconds > 0


def test_a_noise_memo_draws_each_batchs_noise_once_and_gives_the_same_samples(monkeypatch):
    """The harness probe repeats one call: with a shared memo the noise is drawn once, the samples are unchanged."""
    from diffbench.run import sampling as sampling_module
    from diffbench.run.sampling import SamplingCall, SamplingSpec

    model = edm_model("eps")
    spec = SamplingSpec("ddpm", steps=6, num_samples=10, batch_size=4)
    plain = torch.cat([b.samples for b in SamplingCall(model, spec)])
    draws = []
    real = sampling_module.initial_noise
    monkeypatch.setattr(sampling_module, "initial_noise", lambda *a, **k: draws.append(1) or real(*a, **k))
    memo: dict = {}
    for _ in range(3):
        again = torch.cat([b.samples for b in SamplingCall(model, spec, noise_memo=memo)])
        assert torch.equal(again, plain)
    assert len(draws) == 3 and sorted(memo) == [0, 4, 8]  # three batches, drawn in the first call only
