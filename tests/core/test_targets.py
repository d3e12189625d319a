"""Prediction targets: definitions and round trips eps ↔ x0 ↔ v ↔ flow under every noise schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import CONTINUOUS, DISCRETE, SCHEDULES

from diffbench.core.schedules import Coef, make_schedule
from diffbench.core.targets import TARGETS
from diffbench.models.gmm import gmm

# |x| ≤ ~5 and σ/α ≤ 160: one division by α costs at most ~1e-16 · 160 · 5 ≈ 1e-13
ROUNDING = 1e-12


def targets_for(schedule: str) -> list[str]:
    return [n for n in TARGETS if schedule in CONTINUOUS or n != "flow"]


def states(schedule: str, n_times: int = 9):
    """(x0, eps, x_t, Coef) over times spanning the schedule, coefficients as float64 columns."""
    sched = make_schedule(schedule)
    t = np.linspace(sched.t_min, sched.t_max, n_times)
    c = sched.coef(t)
    coef = Coef(
        *(
            torch.as_tensor(np.broadcast_to(v, t.shape).copy(), dtype=torch.float64)[:, None]
            for v in (c.alpha, c.sigma, c.dalpha, c.dsigma)
        )
    )
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(n_times, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(n_times, 3, generator=gen, dtype=torch.float64)
    return x0, eps, coef.alpha * x0 + coef.sigma * eps, coef


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_targets_are_what_they_say(schedule):
    x0, eps, x_t, c = states(schedule)
    expected = {"eps": eps, "x0": x0, "v": c.alpha * eps - c.sigma * x0, "flow": c.dalpha * x0 + c.dsigma * eps}
    for name in targets_for(schedule):
        torch.testing.assert_close(TARGETS[name].from_x0(x0, x_t, c), expected[name], rtol=0, atol=ROUNDING)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_round_trip_through_every_target(schedule):
    x0, _, x_t, c = states(schedule)
    for name in targets_for(schedule):
        t = TARGETS[name]
        torch.testing.assert_close(t.to_x0(t.from_x0(x0, x_t, c), x_t, c), x0, rtol=0, atol=ROUNDING)
    # and a chain eps → x0 → v → x0 → flow → x0, converting between targets through x0
    names = targets_for(schedule)
    out = TARGETS["eps"].from_x0(x0, x_t, c)
    for src, dst in zip(["eps", *names], [*names, "x0"]):
        out = TARGETS[dst].from_x0(TARGETS[src].to_x0(out, x_t, c), x_t, c)
    torch.testing.assert_close(out, x0, rtol=0, atol=ROUNDING)


@pytest.mark.parametrize("schedule", DISCRETE)
def test_flow_target_on_a_discrete_schedule_is_a_clear_error(schedule):
    # discrete VP schedules define σ only at training timesteps: no dσ/dt, so no velocity
    sched = make_schedule(schedule)
    c = sched.coef(500.0)
    x = torch.zeros(2, 3, dtype=torch.float64)
    for convert in (TARGETS["flow"].to_x0, TARGETS["flow"].from_x0):
        with pytest.raises(ValueError, match="'flow' target needs dalpha/dt and dsigma/dt"):
            convert(x, x, c)
    with pytest.raises(
        ValueError, match=f"target 'flow' needs a noise schedule with time derivatives; '{schedule}' has none"
    ):
        gmm(schedule=schedule, target="flow")
