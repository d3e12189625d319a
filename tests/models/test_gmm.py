"""The analytic Gaussian mixture: exact denoiser, exact samples and the reference ODE solver vs truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffbench
from diffbench.models.gmm import GaussianMixture, gmm

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def mixture() -> GaussianMixture:
    return GaussianMixture.random(dim=3, components=4, seed=1)


def posterior_mean_brute_force(mix: GaussianMixture, x: np.ndarray, sigma: float) -> np.ndarray:
    """E[x0 | x] by Bayes' rule with explicit inverses (no eigendecomposition): an independent formula."""
    w, mu, cov = mix.weights.numpy(), mix.means.numpy(), mix.covs.numpy()
    d = x.shape[1]
    out = np.zeros_like(x)
    for b, xb in enumerate(x):
        logp, means = [], []
        for k in range(len(w)):
            c = cov[k] + sigma**2 * np.eye(d)
            r = xb - mu[k]
            logp.append(np.log(w[k]) - 0.5 * (r @ np.linalg.solve(c, r) + np.linalg.slogdet(c)[1]))
            means.append(mu[k] + cov[k] @ np.linalg.solve(c, r))
        p = np.exp(np.array(logp) - max(logp))
        out[b] = (p / p.sum()) @ np.array(means)
    return out


@pytest.mark.parametrize("sigma", [0.01, 0.3, 2.0, 50.0])
def test_denoiser_is_bayes_posterior_mean(mixture, sigma):
    x = mixture.sample(16, torch.Generator().manual_seed(0)) + sigma * torch.randn(16, 3, dtype=torch.float64)
    np.testing.assert_allclose(
        mixture.denoise(x, sigma).numpy(), posterior_mean_brute_force(mixture, x.numpy(), sigma), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("sigma", [0.05, 1.0, 10.0])
def test_tweedie_denoiser_is_x_plus_sigma2_score(mixture, sigma):
    comps = torch.distributions.MultivariateNormal(mixture.means, mixture.covs + sigma**2 * torch.eye(3))
    p_sigma = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(mixture.weights), comps)
    x = mixture.sample(8, torch.Generator().manual_seed(1)) + sigma * torch.randn(8, 3, dtype=torch.float64)
    x.requires_grad_(True)
    (score,) = torch.autograd.grad(p_sigma.log_prob(x).sum(), x)
    torch.testing.assert_close(mixture.denoise(x.detach(), sigma), x.detach() + sigma**2 * score, rtol=1e-9, atol=1e-9)


def test_per_sample_sigma(mixture):
    x = torch.randn(4, 3, dtype=torch.float64)
    sig = torch.tensor([0.1, 0.5, 1.0, 3.0], dtype=torch.float64)
    rows = torch.cat([mixture.denoise(x[i : i + 1], float(sig[i])) for i in range(4)])
    torch.testing.assert_close(mixture.denoise(x, sig), rows, rtol=1e-14, atol=1e-14)


def test_exact_samples_have_the_mixture_moments(mixture):
    n = 200_000
    s = mixture.sample(n, torch.Generator().manual_seed(3))
    w, mu, cov = mixture.weights, mixture.means, mixture.covs
    mean = w @ mu
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0)
    total_cov = second - torch.outer(mean, mean)
    # sample mean within 5 standard errors sqrt(var / n); sample covariance within 3% (SE ≈ 0.4%)
    assert bool(((s.mean(0) - mean).abs() < 5 * (total_cov.diagonal() / n).sqrt()).all())
    torch.testing.assert_close(torch.cov(s.T), total_cov, rtol=0.03, atol=0.03 * float(total_cov.abs().max()))


def gaussian_flow(mu, cov, x, sigma_from, sigma_to):
    """Closed-form probability-flow ODE solution for one Gaussian: each eigen-direction scales by
    sqrt((λ + σ_to²) / (λ + σ_from²)) around the mean."""
    lam, u = torch.linalg.eigh(cov)
    scale = ((lam + sigma_to**2) / (lam + sigma_from**2)).sqrt()
    return mu + ((x - mu) @ u) * scale @ u.T


def test_ode_solve_matches_the_closed_form_gaussian_flow():
    mix = GaussianMixture.random(dim=3, components=1, seed=4)
    x = 20.0 * torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    got = mix.ode_solve(x, 20.0, 0.01)
    torch.testing.assert_close(got, gaussian_flow(mix.means[0], mix.covs[0], x, 20.0, 0.01), rtol=0, atol=1e-9)


def test_ode_solve_needs_a_positive_end():
    mix = GaussianMixture.random()
    with pytest.raises(ValueError, match="singular at σ = 0"):
        mix.ode_solve(torch.zeros(1, 2, dtype=torch.float64), 1.0, 0.0)


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(weights=[0.5, 0.6]), "sum to 1"),
        (dict(covs=[[[1.0, 0.0], [0.0, -1.0]]] * 2), "positive definite"),
        (dict(means=[[0.0, 0.0]]), "do not agree"),
    ],
)
def test_invalid_mixtures_are_rejected(bad, match):
    spec = dict(weights=[0.5, 0.5], means=[[0.0, 0.0], [1.0, 1.0]], covs=[np.eye(2).tolist()] * 2)
    spec.update(bad)
    with pytest.raises(ValueError, match=match):
        GaussianMixture(spec["weights"], spec["means"], spec["covs"])


def test_explicit_mixture_and_identity():
    model = gmm(means=[[0.0, 0.0], [2.0, 0.0]], weights=[0.25, 0.75])
    assert model.analytic.components == 2 and torch.equal(model.analytic.covs[1], torch.eye(2, dtype=torch.float64))
    assert model.identity()["checkpoint_hash"] == model.analytic.fingerprint()
    assert gmm(seed=0).checkpoint_hash == gmm(seed=0).checkpoint_hash != gmm(seed=1).checkpoint_hash


def test_registered_as_a_model_and_float32_close_to_float64():
    model = diffbench.load_model("gmm", dim=2, components=3, seed=0)
    x = torch.randn(5, 2, dtype=torch.float64)
    ref = model.analytic.denoise(x, 0.7)
    model.to(dtype=torch.float32)
    out = model.analytic.denoise(x.float(), 0.7)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
