"""Step schedulers: grid shape on every noise schedule, hand-derived training-timestep grids, quantisation."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers import SCHEDULES, edm_model

import diffbench
from diffbench.core.schedules import LinearVP, make_schedule
from diffbench.core.sigma_grids import SCHEDULERS, materialize

DISCRETE_ONLY = ("leading", "trailing")
T = 1000


def applicable():
    for scheduler in SCHEDULERS:
        for schedule in SCHEDULES:
            if scheduler in DISCRETE_ONLY and schedule not in ("linear", "scaled-linear"):
                continue
            yield scheduler, schedule


@pytest.mark.parametrize("scheduler,schedule", list(applicable()))
@pytest.mark.parametrize("steps", [1, 2, 10, 37])
def test_grid_shape(scheduler, schedule, steps):
    sched = make_schedule(schedule)
    grid = materialize(SCHEDULERS[scheduler], sched, steps)
    s = grid.sigmas
    assert s.dtype == torch.float64 and s.shape == (steps + 1,)
    assert s[-1] == 0 and bool((s[:-1] > s[1:]).all()) and bool(torch.isfinite(s).all())
    assert len(grid.timesteps) == steps and not grid.quantized
    np.testing.assert_allclose(grid.timesteps, sched.t_of_sigma(s[:-1].numpy()), rtol=1e-12)
    if scheduler in DISCRETE_ONLY:
        return
    # every other spacing starts at the model's largest σ and, with two or more steps, ends at its smallest
    assert math.isclose(float(s[0]), sched.sigma_max, rel_tol=1e-12)
    if steps > 1:
        assert math.isclose(float(s[-2]), sched.sigma_min, rel_tol=1e-12)


def training_timesteps(scheduler: str, steps: int, **options) -> list[float]:
    return materialize(SCHEDULERS[scheduler], LinearVP(), steps, **options).timesteps


def test_ten_steps_by_hand():
    assert training_timesteps("leading", 10) == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert training_timesteps("trailing", 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert training_timesteps("linspace", 10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]


def test_small_cases_by_hand():
    assert training_timesteps("linspace", 1) == [999]  # one step starts from pure noise, not from t = 0
    assert training_timesteps("linspace", 3) == [999, 500, 0]  # 499.5 rounds half to even
    assert training_timesteps("trailing", 3) == [999, 666, 332]  # round(666.67) - 1, round(333.33) - 1
    assert training_timesteps("leading", 3) == [666, 333, 0]  # stride 1000 // 3; never reaches 999
    assert training_timesteps("leading", 10, offset=1) == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]


def by_hand(scheduler: str, n: int) -> list[float]:
    """t_i from the exact rational value, ties half to even (Python's round on a Fraction)."""
    if scheduler == "leading":
        return [float((n - 1 - i) * (T // n)) for i in range(n)]
    if scheduler == "trailing":
        return [float(round(Fraction(T * (n - i), n)) - 1) for i in range(n)]
    return [float(round(Fraction((n - 1 - i) * (T - 1), n - 1))) for i in range(n)] if n > 1 else [T - 1.0]


@pytest.mark.parametrize("scheduler", ["leading", "trailing", "linspace"])
def test_every_step_count_matches_exact_rational_rounding(scheduler):
    # catches float artefacts: np.arange(T, 0, -T/N) gives N + 1 values for N = 61, and float
    # linspace/arange round some exact ties the wrong way (linspace N = 27, trailing N = 48)
    wrong = [n for n in range(1, T + 1) if training_timesteps(scheduler, n) != by_hand(scheduler, n)]
    assert not wrong, f"{scheduler}: step counts {wrong[:10]} differ from the exact grid"


def test_discrete_grids_are_the_training_sigmas():
    sched = LinearVP()
    grid = materialize(SCHEDULERS["trailing"], sched, 4)
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, T))
    expected = [math.sqrt((1 - ab[t]) / ab[t]) for t in (999, 749, 499, 249)]
    np.testing.assert_allclose(grid.sigmas[:-1].numpy(), expected, rtol=1e-12)


def three_edm_steps(name: str, **options) -> np.ndarray:
    """A 3-step grid on the EDM schedule (σ = t, σ in [0.002, 80])."""
    return materialize(SCHEDULERS[name], make_schedule("edm"), 3, **options).sigmas.numpy()


def test_continuous_grids_by_hand():
    np.testing.assert_allclose(
        materialize(SCHEDULERS["linspace"], make_schedule("edm"), 2).sigmas, [80, 0.002, 0], rtol=1e-14
    )
    three = three_edm_steps
    np.testing.assert_allclose(three("linspace"), [80, 40.001, 0.002, 0], rtol=1e-14)
    np.testing.assert_allclose(three("logsnr"), [80, math.sqrt(80 * 0.002), 0.002, 0], rtol=1e-14)
    np.testing.assert_allclose(three("quadratic"), [80, ((80**0.5 + 0.002**0.5) / 2) ** 2, 0.002, 0], rtol=1e-14)
    np.testing.assert_allclose(
        three("karras", rho=7.0), [80, ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7, 0.002, 0], rtol=1e-13
    )
    np.testing.assert_allclose(
        three("exponential", rho=2.0),
        [80, math.exp(math.log(0.002) + 0.25 * math.log(80 / 0.002)), 0.002, 0],
        rtol=1e-13,
    )


def test_quantize_snaps_to_the_nearest_training_sigma_and_is_recorded():
    sched = LinearVP()
    raw = materialize(SCHEDULERS["karras"], sched, 12)
    grid = materialize(SCHEDULERS["karras"], sched, 12, quantize=True)
    train = sched.sigmas
    for r, q, t in zip(raw.sigmas[:-1].tolist(), grid.sigmas[:-1].tolist(), grid.timesteps):
        nearest = int(np.abs(np.log(train) - math.log(r)).argmin())
        assert q == train[nearest] and t == nearest
    assert grid.quantized and grid.record()["quantized"] and grid.sigmas[-1] == 0
    model = diffbench.load_model("gmm", schedule="linear", target="eps")
    res = diffbench.sample(model, "euler", steps=12, scheduler="karras", quantize=True, num_samples=2)
    assert res.scheduler_options["quantize"] is True and res.grid.quantized
    assert torch.equal(res.grid.sigmas, grid.sigmas)


def test_quantize_too_many_steps_is_a_clear_error():
    with pytest.raises(ValueError, match="after quantisation"):
        materialize(SCHEDULERS["karras"], LinearVP(), 900, quantize=True)


@pytest.mark.parametrize("scheduler", DISCRETE_ONLY)
def test_discrete_only_spacings_reject_continuous_models(scheduler):
    with pytest.raises(ValueError, match=f"'{scheduler}' needs a discrete-time model; 'edm' is continuous"):
        materialize(SCHEDULERS[scheduler], make_schedule("edm"), 10)


def test_quantize_rejects_continuous_models():
    with pytest.raises(ValueError, match="quantize needs a discrete-time model; 'cosine' is continuous"):
        materialize(SCHEDULERS["karras"], make_schedule("cosine"), 10, quantize=True)


@pytest.mark.parametrize("scheduler", ["leading", "trailing", "linspace"])
def test_more_steps_than_training_timesteps_is_an_error(scheduler):
    with pytest.raises(ValueError, match="at most 1000 steps"):
        materialize(SCHEDULERS[scheduler], LinearVP(), T + 1)


def test_leading_offset_beyond_the_last_timestep_is_an_error():
    with pytest.raises(ValueError, match="offset 100 puts timesteps outside"):
        materialize(SCHEDULERS["leading"], LinearVP(), 10, offset=100)


def test_sigma_range_outside_the_training_range_is_an_error():
    # t(σ) clamps outside the training range: the network would silently see another σ
    with pytest.raises(ValueError, match="leaves the discrete model's training range"):
        materialize(SCHEDULERS["karras"], LinearVP(), 10, sigma_max=200.0)


@pytest.mark.parametrize("steps", [0, -1, 2.0])
def test_bad_step_counts(steps):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        materialize(SCHEDULERS["karras"], make_schedule("edm"), steps)


def test_unknown_scheduler_option_is_named():
    with pytest.raises(ValueError, match="scheduler 'karras' has no option 'rh'"):
        diffbench.make_grid(edm_model(), "karras", 10, {"rh": 7})


def test_final_zero_false_stops_at_the_smallest_positive_sigma():
    """steps + 1 points ending at the scheduler's σ_min: the same grid as N + 1 steps minus the step to 0."""
    from diffbench.core.schedules import make_schedule
    from diffbench.core.sigma_grids import karras, materialize

    schedule = make_schedule("edm")
    open_grid = materialize(karras, schedule, 10, final_zero=False, sigma_min=0.1, sigma_max=80.0)
    closed = materialize(karras, schedule, 11, sigma_min=0.1, sigma_max=80.0)
    assert open_grid.sigmas.shape == (11,)
    assert open_grid.sigmas[-1].item() == pytest.approx(0.1, rel=1e-12)
    assert torch.equal(open_grid.sigmas, closed.sigmas[:-1])
    assert len(open_grid.timesteps) == 11 and open_grid.record()["final_zero"] is False


def test_ddim_quadratic_is_the_ddim_codes_quad_selection():
    """t_i = int((linspace(0, √(0.8 T), N))²) as in DDIM's runner (skip_type 'quad'), run from the top."""
    from diffbench.core.schedules import make_schedule
    from diffbench.core.sigma_grids import ddim_quadratic, materialize

    sched = make_schedule("linear")
    for n in (10, 20):
        ddim_code = [int(s) for s in np.linspace(0, np.sqrt(1000 * 0.8), n) ** 2][::-1]
        assert [round(t) for t in materialize(ddim_quadratic, sched, n).timesteps] == ddim_code
    with pytest.raises(ValueError, match="repeats training timesteps.*at most 29 steps"):
        materialize(ddim_quadratic, sched, 30)
