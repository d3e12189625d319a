"""Helpers shared by the core tests: the reference GMM, its grids and starting points."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffbench.core.denoiser import DiffusionModel, SigmaDenoiser
from diffbench.core.noise import StepNoise, initial_noise
from diffbench.core.sigma_grids import karras
from diffbench.models.gmm import ExactNetwork, gmm
from diffbench.samplers import SAMPLERS, noise_draws

DIM = 2
CONTINUOUS = ("cosine", "ve", "edm", "flow")
DISCRETE = ("linear", "scaled-linear")
SCHEDULES = DISCRETE + CONTINUOUS


def edm_model(target: str = "eps", **options) -> DiffusionModel:
    """The reference model of the convergence tests: gmm dim=2 components=3 seed=0 under EDM."""
    return gmm(dim=DIM, components=3, seed=0, schedule="edm", target=target, **options)


def conditional_model(num_classes: int = 2) -> DiffusionModel:
    """A class-conditional GMM model (labels ignored by the network) for guidance and label tests."""
    base = edm_model("x0")
    net = ExactNetwork(base.analytic, base.schedule, base.target)
    return DiffusionModel(
        "gmm-cond",
        net,
        base.schedule,
        base.target,
        base.shape,
        num_classes=num_classes,
        analytic=base.analytic,
        dtype=torch.float64,
    )


def truncated_karras(model: DiffusionModel, steps: int, sigma_min: float = 0.1, sigma_max: float = 80.0) -> Tensor:
    """``steps`` Karras steps from σ_max to σ_min, without the trailing 0 (the ODE is smooth there)."""
    return karras(model.schedule, steps + 1, sigma_min=sigma_min, sigma_max=sigma_max)[:-1]


def start_points(n: int, sigma: float, seed: int = 0) -> Tensor:
    """n float64 starting points σ · N(0, I), sample i seeded by (seed, i)."""
    return initial_noise(seed, range(n), (DIM,), dtype=torch.float64) * sigma


def run(name: str, model: DiffusionModel, x: Tensor, sigmas: Tensor, *, seed: int = 0, **options) -> Tensor:
    """Run a built-in sampler directly on ``x`` over ``sigmas`` with per-sample step noise."""
    noise = StepNoise(
        seed, range(len(x)), x.shape[1:], noise_draws(SAMPLERS[name].declarations(), sigmas, options), dtype=x.dtype
    )
    with torch.inference_mode():
        return SAMPLERS[name].fn(SigmaDenoiser(model), x.clone(), sigmas, noise=noise, **options)


def fit_slope(steps, errors) -> float:
    """Convergence order: minus the least-squares slope of log(error) against log(steps)."""
    return -float(np.polyfit(np.log(np.asarray(steps, float)), np.log(np.asarray(errors, float)), 1)[0])
