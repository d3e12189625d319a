"""The σ-space denoiser: exact under every schedule and target, guidance by hand, NFE counting."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from helpers import CONTINUOUS, SCHEDULES

from diffbench.core.denoiser import DiffusionModel, NetworkCounter, SigmaDenoiser
from diffbench.core.schedules import make_schedule
from diffbench.core.targets import TARGETS
from diffbench.models.gmm import gmm

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("target", list(TARGETS))
def test_sigma_denoiser_is_the_exact_posterior_mean(schedule, target):
    if target == "flow" and schedule not in CONTINUOUS:
        pytest.skip("flow needs schedule derivatives (a clear error, tested in test_targets)")
    model = gmm(dim=3, components=4, seed=1, schedule=schedule, target=target)
    den = SigmaDenoiser(model)
    gen = torch.Generator().manual_seed(0)
    sched = model.schedule
    for sigma in np.geomspace(sched.sigma_min, sched.sigma_max, 7):
        x = model.analytic.sample(5, gen) + float(sigma) * torch.randn(5, 3, generator=gen, dtype=torch.float64)
        exact = model.analytic.denoise(x, float(sigma))
        # the σ → t → (α, σ) round trip of a discrete schedule is exact to ~1e-15 relative
        torch.testing.assert_close(den(x, float(sigma)), exact, rtol=1e-9, atol=1e-9)


def test_network_sees_alpha_x_and_t_of_sigma():
    seen = {}

    def network(x_t, t, labels):
        seen.update(x_t=x_t, t=t)
        return torch.zeros_like(x_t)

    sched = make_schedule("cosine")
    model = DiffusionModel("spy", network, sched, TARGETS["x0"], (2,), dtype=torch.float64)
    x = torch.ones(3, 2, dtype=torch.float64)
    SigmaDenoiser(model)(x, 2.0)
    t = float(sched.t_of_sigma(2.0))
    torch.testing.assert_close(seen["t"], torch.full((3,), t, dtype=torch.float64))
    torch.testing.assert_close(seen["x_t"], x / np.sqrt(1 + 2.0**2))  # α = 1/√(1+σ²) on a VP schedule


def label_model(num_classes: int = 3) -> DiffusionModel:
    """x0-prediction toy model whose output is the label value: x0_c = label, x0_u = num_classes."""

    def net(x_t, t, labels):
        return labels.to(x_t.dtype)[:, None].expand_as(x_t)

    return DiffusionModel(
        "labels", net, make_schedule("edm"), TARGETS["x0"], (2,), num_classes=num_classes, dtype=torch.float64
    )


@pytest.mark.parametrize("w", [0.0, 2.5, 7.0])
def test_guidance_by_hand_and_counted_twice(w):
    model = label_model()
    labels = torch.tensor([0, 1, 2, 1])
    counter = NetworkCounter(4)
    den = SigmaDenoiser(model, labels=labels, guidance=w, counter=counter)
    out = den(torch.zeros(4, 2, dtype=torch.float64), 1.0)
    uncond = 3.0  # the null label
    expected = uncond + w * (labels.double() - uncond)
    torch.testing.assert_close(out, expected[:, None].expand(4, 2))
    assert counter.nfe == 2 and counter.calls == 1


def test_guidance_one_is_the_conditional_model_with_one_evaluation():
    counter = NetworkCounter(2)
    labels = torch.tensor([1, 2])
    out = SigmaDenoiser(label_model(), labels=labels, guidance=1.0, counter=counter)(torch.zeros(2, 2), 1.0)
    torch.testing.assert_close(out, labels.float()[:, None].expand(2, 2))
    assert counter.nfe == 1


def test_unconditional_call_of_a_conditional_model_uses_the_null_label():
    out = SigmaDenoiser(label_model())(torch.zeros(2, 2, dtype=torch.float64), 1.0)
    assert bool((out == 3.0).all())


def test_guidance_without_labels_is_an_error():
    with pytest.raises(ValueError, match="guidance needs a condition"):
        SigmaDenoiser(label_model(), guidance=2.0)


def test_clip_x0_clamps_to_the_data_range():
    model = DiffusionModel(
        "big",
        lambda x_t, t, labels: 5 * torch.sign(x_t),
        make_schedule("edm"),
        TARGETS["x0"],
        (2,),
        data_range=(-1.0, 1.0),
    )
    x = torch.tensor([[3.0, -3.0]])
    assert torch.equal(SigmaDenoiser(model, clip_x0=True)(x, 1.0), torch.tensor([[1.0, -1.0]]))
    assert torch.equal(SigmaDenoiser(model)(x, 1.0), torch.tensor([[5.0, -5.0]]))


def test_counter_counts_rows_per_sample_and_time():
    counter = NetworkCounter()
    den = SigmaDenoiser(gmm(), counter=counter)
    x = torch.zeros(6, 2, dtype=torch.float64)
    for sigma in (3.0, 2.0, 1.0):
        den(x, sigma)
    assert (counter.batch_size, counter.calls, counter.rows, counter.nfe) == (6, 3, 18, 3.0)
    assert counter.network_seconds() > 0


def test_prepare_converts_the_grid_ahead_so_the_timed_loop_makes_no_schedule_calls(monkeypatch):
    model = gmm(schedule="linear")  # discrete VP: σ → t is an interpolation over the training steps
    x = torch.randn(4, *model.shape, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([2.0, 1.0, 0.5, 0.0])
    fresh, prepared = SigmaDenoiser(model), SigmaDenoiser(model)
    prepared.prepare(sigmas)

    def no_schedule_calls(*_):
        raise AssertionError("schedule evaluated inside the loop")

    expected = [fresh(x, s) for s in (2.0, 1.0, 0.5)]
    monkeypatch.setattr(model.schedule, "t_of_sigma", no_schedule_calls)
    for e, s in zip(expected, (2.0, 1.0, 0.5)):
        assert torch.equal(prepared(x, s), e)
    with pytest.raises(AssertionError, match="inside the loop"):
        prepared(x, 0.7)  # off the grid: converted on first use


def _spin(seconds: float) -> None:
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


def test_counter_times_the_harness_between_calls_in_thread_cpu_time():
    """Work between network calls counts as harness time; waiting (another process on the core) does not."""
    counter = NetworkCounter(2)
    x = torch.zeros(2, 3)
    counter.run(lambda v: v, x)
    _spin(0.004)  # the sampler's own arithmetic
    counter.run(lambda v: v, x)
    time.sleep(0.02)  # the thread waits: no CPU time
    counter.run(lambda v: v, x)
    busy, idle = counter.gap_seconds
    assert 0.004 <= busy < 0.004 + 0.002 and idle < 0.002
    assert len(counter.call_seconds()) == 3 and counter.network_seconds() == pytest.approx(sum(counter.call_seconds()))
