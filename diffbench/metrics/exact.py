"""Exact solver error against the true probability-flow ODE solution (analytic models)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from diffbench.devices import resolve_dtype
from diffbench.metrics.base import MetricContext, MetricValue, SampleRows, StreamingMetric
from diffbench.models.gmm import GaussianMixture
from diffbench.seeding import initial_noise


def starting_points(model: Any, result: Any) -> Tensor:
    """Each sample's starting point x_0 = σ_max · noise(seed, i), rebuilt from ``result.meta`` (float64)."""
    meta = result.meta
    first, n = int(meta["first_index"]), int(meta["num_samples"])
    dtype = resolve_dtype(meta["dtype"])
    # the same arithmetic, in the same dtype, as diffbench.sampling.sample
    noise = initial_noise(int(meta["seed"]), range(first, first + n), model.shape, dtype=dtype)
    return (noise * float(result.grid.sigmas[0])).to(torch.float64)


def exact_endpoints(mixture: GaussianMixture, x: Tensor, sigma_from: float, sigma_to: float, *,
                    sigma_stop: float = 1e-6, rtol: float = 1e-12, atol: float = 1e-12,
                    chunk: int = 1024) -> Tensor:
    """The probability-flow ODE solution from ``x`` at ``sigma_from`` to ``sigma_to`` (float64, CPU).

    ``sigma_to = 0``: solve to ``sigma_stop`` = σ_s and return D(x(σ_s), σ_s). With D(x, σ) = x + σ² ∇log p_σ(x)
    (Tweedie) and x(σ) = x(0) - σ²/2 ∇log p_0(x(0)) + O(σ⁴) (p_σ is smooth in σ²), the result is off by
    σ_s²/2 |∇log p_0(x(0))| + O(σ_s⁴), and |∇log p_0(x)| ≤ max_k |Σ_k⁻¹ (x - μ_k)|. For the default
    mixtures |∇log p_0| ≤ ~50 at their samples: ≤ 2.5e-11 at σ_s = 1e-6 (measured 2e-11 against σ_s = 1e-7).
    """
    mix = GaussianMixture(mixture.weights, mixture.means, mixture.covs)  # float64 CPU copy, model untouched
    stop = sigma_to if sigma_to > 0 else sigma_stop
    x = x.detach().to("cpu", torch.float64)
    out = [mix.ode_solve(part, sigma_from, stop, rtol=rtol, atol=atol) for part in x.split(chunk)]
    end = torch.cat(out)
    return end if sigma_to > 0 else mix.denoise(end, stop)


def _mixture(model: Any) -> GaussianMixture:
    """The model's exact Gaussian mixture; ValueError when it has none."""
    mixture = getattr(model, "analytic", None)
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"solver-error needs an analytic model with an exact ODE solution; "
                         f"model {getattr(model, 'name', model)!r} has none")
    return mixture


def summarize(errors: Tensor) -> dict[str, MetricValue]:
    """Mean, RMS and max of per-sample errors; mean and RMS with their standard error over samples."""
    e = errors.to(torch.float64)
    n = e.numel()
    mean, rms = float(e.mean()), float(e.square().mean().sqrt())
    se_mean = se_rms = None
    if n > 1:
        se_mean = float(e.std()) / math.sqrt(n)
        # delta method: RMS = sqrt(mean e²), so se(RMS) = se(mean e²) / (2 RMS)
        se_rms = float(e.square().std()) / math.sqrt(n) / (2 * rms) if rms > 0 else 0.0
    how = f"standard error over {n} samples"
    return {
        "solver-error-mean": MetricValue(mean, se_mean, how),
        "solver-error-rms": MetricValue(rms, se_rms, how + " (delta method)"),
        "solver-error-max": MetricValue(float(e.max()), None, f"max over {n} samples; no standard error"),
    }


class SolverError(StreamingMetric):
    """Per-sample L2 distance between each sample and the exact ODE solution from its own starting noise.

    Needs an analytic model (``model.analytic`` a GaussianMixture): the reference is the probability-flow
    ODE solved by DOP853 in float64 from the sample's regenerated starting point to the grid's last σ.
    For a stochastic sampler it measures the distance to the deterministic flow, not a solver error.
    Its features are the samples themselves (analytic models are low-dimensional): the reference ODE is
    solved once on all of them, in the same chunks whatever the batch size.
    """

    name = "solver-error"
    options: dict[str, Any] = {"sigma_stop": 1e-6, "rtol": 1e-12, "atol": 1e-12}
    option_help = {"sigma_stop": "the exact ODE is solved down to this σ when the grid ends at 0",
                   "rtol": "relative tolerance of the DOP853 reference solve", "atol": "its absolute tolerance"}
    higher_is_better = False

    def features(self, *, model: Any, context: MetricContext, **options: Any) -> SampleRows:
        _mixture(model)
        return SampleRows()

    def score(self, features: Tensor, *, model: Any, result: Any, context: MetricContext | None = None,
              **options: Any) -> dict[str, MetricValue]:
        """{solver-error-mean, -rms, -max} of the samples ``features`` (the output of ``result``)."""
        opts = {**self.options, **options}
        return summarize(self.errors(features, model=model, result=result, **opts))

    def errors(self, samples: Tensor, *, model: Any, result: Any, sigma_stop: float = 1e-6,
               rtol: float = 1e-12, atol: float = 1e-12) -> Tensor:
        """Per-sample L2 errors (float64)."""
        mixture = _mixture(model)
        if result.meta.get("guidance") not in (None, 1.0):
            raise ValueError("solver-error compares with the unguided ODE; the run used guidance")
        if len(samples) != int(result.meta["num_samples"]):
            raise ValueError(f"got {len(samples)} samples for a run of {result.meta['num_samples']}")
        sigmas = result.grid.sigmas
        x_start = starting_points(model, result)
        exact = exact_endpoints(mixture, x_start, float(sigmas[0]), float(sigmas[-1]),
                                sigma_stop=sigma_stop, rtol=rtol, atol=atol)
        diff = samples.detach().to("cpu", torch.float64) - exact
        return diff.flatten(1).norm(dim=1)


METRICS: dict = {"solver-error": SolverError()}
