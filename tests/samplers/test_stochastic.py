"""Stochastic samplers converge in distribution to the exact GMM.

Distance: the energy distance V-statistic E(X, Y) = 2·mean|X-Y| - mean|X-X'| - mean|Y-Y'| between the
sampler's n outputs and n exact samples (GaussianMixture.sample). Its pure Monte-Carlo level is known:
for two independent exact sets the diagonal zeros of the within-set means give E[E] = 2δ/n with
δ = E|X - X'|, estimated here from 100 000 independent exact pairs. Under that null, n·E tends to a weighted sum of
χ²₁ variables, and Székely & Bakirov (2003) bound its tail at any mean: P(E > q·E[E]) ≤ α with
q = χ²₁ quantile at 1 - α (valid for α ≤ 0.215). So BOUND = 6.63·2δ/n is exceeded by a perfect sampler
with probability ≤ 1%. Each sampler must be inside BOUND with many steps (its own discretisation bias is
small there) and outside it with 5 steps (measurably worse than Monte-Carlo noise).
"""

from __future__ import annotations

import pytest
import torch
from helpers import edm_model

import diffbench
from diffbench.registry import resolve_options

pytestmark = pytest.mark.usefixtures("single_thread")

N_SAMPLES, FEW, MANY = 2000, 5, 200
CHI2_1_Q99 = 6.635
CASES = [
    ("ddpm", {}),
    ("ddim", {"eta": 1.0}),
    ("euler-ancestral", {"eta": 1.0}),
    ("dpm-solver++-2m-sde", {"eta": 1.0}),
    ("euler", {"churn_amount": 40.0}),
    ("heun", {"churn_amount": 40.0}),
]


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance V-statistic between two point sets (rows)."""
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


@pytest.fixture(scope="module")
def reference():
    """The model, n exact samples and the 1% Monte-Carlo bound of the energy distance at size n."""
    model = edm_model("x0")
    gen = torch.Generator().manual_seed(2024)
    exact = model.analytic.sample(N_SAMPLES, gen)
    pairs = model.analytic.sample(200_000, gen).reshape(2, 100_000, -1)
    delta = float((pairs[0] - pairs[1]).norm(dim=1).mean())  # E|X - X'|, relative SE ~0.2%
    return model, exact, CHI2_1_Q99 * 2 * delta / N_SAMPLES


def distance(reference, name: str, options: dict, steps: int) -> float:
    model, exact, _ = reference
    res = diffbench.sample(
        model,
        name,
        steps=steps,
        scheduler="karras",
        sampler_options=options,
        num_samples=N_SAMPLES,
        batch_size=N_SAMPLES,
        seed=11,
    )
    return energy_distance(res.samples, exact)


def test_bound_matches_the_monte_carlo_level_of_exact_sample_sets(reference):
    # the derived mean 2δ/n against the average over independent exact pairs (SE of that average ≈ 15%)
    model, _, bound = reference
    gen = torch.Generator().manual_seed(99)
    null = [
        energy_distance(model.analytic.sample(N_SAMPLES, gen), model.analytic.sample(N_SAMPLES, gen)) for _ in range(12)
    ]
    mean = sum(null) / len(null)
    assert 0.6 < mean / (bound / CHI2_1_Q99) < 1.4
    assert max(null) < bound


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}{o}" for n, o in CASES])
def test_converges_in_distribution(reference, name, options):
    comp = diffbench.default_registry().get("sampler", name)
    assert comp.meta["stochastic"](**resolve_options(comp, options)), "not a stochastic configuration"
    bound = reference[2]
    few, many = distance(reference, name, options, FEW), distance(reference, name, options, MANY)
    assert many < bound, f"{name} with {MANY} steps: energy distance {many:.2e} above the 1% bound {bound:.2e}"
    assert few > bound, f"{name} with {FEW} steps: {few:.2e} not measurably worse than the bound {bound:.2e}"
