"""Exact denoiser of a Gaussian mixture and a float64 reference probability-flow ODE solver.

For p(x0) = Σ_k π_k N(μ_k, Σ_k), the noisy marginal at σ is Σ_k π_k N(μ_k, Σ_k + σ² I) and
E[x0 | x] = Σ_k w_k(x) (μ_k + Σ_k (Σ_k + σ² I)^{-1} (x - μ_k)), w_k the posterior weights.
Covariances are handled through their eigendecompositions, so every σ costs O(K d²).
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffbench.denoiser import DiffusionModel
from diffbench.noise import make_schedule
from diffbench.targets import TARGETS


class GaussianMixture:
    """Gaussian mixture with an exact denoiser, exact samples and a reference ODE solver."""

    def __init__(self, weights, means, covs, *, device="cpu", dtype=torch.float64) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.covs.shape != (k, d, d):
            raise ValueError("weights (K,), means (K, d) and covs (K, d, d) do not agree")
        if not torch.allclose(self.weights.sum(), torch.tensor(1.0, dtype=torch.float64)):
            raise ValueError("mixture weights must sum to 1")
        self.evals, self.evecs = torch.linalg.eigh(self.covs)
        if (self.evals <= 0).any():
            raise ValueError("covariances must be positive definite")
        self.dim, self.components = d, k
        self.device, self.dtype = torch.device(device), dtype
        self._cast()

    def _cast(self) -> None:
        kw = dict(device=self.device, dtype=self.dtype)
        self._w, self._mu = self.weights.to(**kw), self.means.to(**kw)
        self._lam, self._u = self.evals.to(**kw), self.evecs.to(**kw)

    def to(self, device=None, dtype=None) -> "GaussianMixture":
        self.device = torch.device(device) if device is not None else self.device
        self.dtype = dtype or self.dtype
        self._cast()
        return self

    @classmethod
    def random(cls, dim: int = 2, components: int = 3, seed: int = 0, scale: float = 1.0,
               min_std: float = 0.05, max_std: float = 0.4) -> "GaussianMixture":
        """A reproducible random mixture: means in [-scale, scale]^d, anisotropic covariances."""
        rng = np.random.default_rng(seed)
        means = rng.uniform(-scale, scale, size=(components, dim))
        covs = []
        for _ in range(components):
            q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
            std = rng.uniform(min_std, max_std, size=dim)
            covs.append(q @ np.diag(std**2) @ q.T)
        weights = rng.dirichlet(np.full(components, 2.0))
        return cls(weights, means, np.stack(covs))

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in (self.weights, self.means, self.covs):
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]

    def denoise(self, x: Tensor, sigma) -> Tensor:
        """E[x0 | x0 + σ ε = x] for x of shape (B, d); σ a float or a (B,) tensor."""
        x = x.to(self._mu.dtype)
        s2 = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1) ** 2  # (B|1,1,1)
        diff = x[:, None, :] - self._mu[None]  # (B, K, d)
        proj = torch.einsum("bkd,kde->bke", diff, self._u)  # coordinates in each eigenbasis
        var = self._lam[None] + s2  # (B|1, K, d)
        logp = -0.5 * ((proj**2 / var).sum(-1) + torch.log(var).sum(-1)) + torch.log(self._w)[None]
        # not torch.softmax: with contended CPU threads its kernel took ~8 ms on a (16, 3) batch, this ~10 µs
        resp = (logp - logp.amax(dim=1, keepdim=True)).exp()
        resp = resp / resp.sum(dim=1, keepdim=True)  # (B, K) posterior component weights
        shrink = proj * (self._lam[None] / var)  # Σ (Σ + σ² I)^{-1} (x - μ) in eigen-coordinates
        post_mean = self._mu[None] + torch.einsum("bke,kde->bkd", shrink, self._u)
        return (resp[..., None] * post_mean).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples from the mixture (float64, CPU)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scaled = self.evecs[comp] @ (self.evals[comp].sqrt() * z)[..., None]
        return self.means[comp] + scaled[..., 0]

    def ode_solve(self, x: Tensor, sigma_from: float, sigma_to: float, *, rtol: float = 1e-12,
                  atol: float = 1e-12) -> Tensor:
        """Reference solution of dx/dσ = (x - D(x, σ))/σ from σ_from to σ_to > 0 (DOP853 in log σ)."""
        from scipy.integrate import solve_ivp

        if not sigma_from > sigma_to > 0:
            raise ValueError("need sigma_from > sigma_to > 0 (the ODE is singular at σ = 0)")
        shape = x.shape
        x0 = x.detach().to("cpu", torch.float64).reshape(-1).numpy()
        mix = GaussianMixture(self.weights, self.means, self.covs)

        def rhs(log_sigma, y):
            xt = torch.from_numpy(y).reshape(shape)
            return (xt - mix.denoise(xt, float(np.exp(log_sigma)))).reshape(-1).numpy()

        sol = solve_ivp(rhs, (np.log(sigma_from), np.log(sigma_to)), x0, method="DOP853", rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"reference ODE solve failed: {sol.message}")
        return torch.from_numpy(sol.y[:, -1]).reshape(shape).to(device=x.device, dtype=x.dtype)


class ExactNetwork(torch.nn.Module):
    """The 'network' of an analytic model: the exact x0 expressed in the model's target and time."""

    def __init__(self, mixture: GaussianMixture, schedule, target) -> None:
        super().__init__()
        self.mixture, self.schedule, self.target = mixture, schedule, target

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        tt = t.detach().to("cpu", torch.float64).numpy()
        c = self.schedule.coef(tt)
        col = lambda v: torch.as_tensor(np.broadcast_to(v, tt.shape).copy(), dtype=x_t.dtype, device=x_t.device)[:, None]
        coef = type(c)(col(c.alpha), col(c.sigma), col(c.dalpha), col(c.dsigma))
        x0 = self.mixture.denoise(x_t / coef.alpha, coef.sigma[:, 0] / coef.alpha[:, 0]).to(x_t.dtype)
        return self.target.from_x0(x0, x_t, coef)


MAX_COVARIANCE_ENTRIES = 1 << 26  # components × dim²: 512 MiB of float64 covariances


def check_size(dim: int, components: int) -> None:
    """A mixture small enough to build: ValueError before anything is allocated."""
    if dim < 1 or components < 1:
        raise ValueError(f"dim and components must be positive, got dim={dim}, components={components}")
    if components * dim * dim > MAX_COVARIANCE_ENTRIES:
        raise ValueError(f"dim={dim} with components={components} needs {components * dim * dim * 8 / 2**30:.3g} "
                         f"GiB of covariances (limit {MAX_COVARIANCE_ENTRIES * 8 / 2**30:g} GiB)")


def gmm(*, dim: int = 2, components: int = 3, seed: int = 0, schedule: str = "edm", target: str = "x0",
        means: list | None = None, covs: list | None = None, weights: list | None = None,
        sigma_min: float | None = None, sigma_max: float | None = None) -> DiffusionModel:
    """Analytic Gaussian-mixture model: exact denoiser under any noise schedule and target."""
    if means is None:
        check_size(dim, components)
    if means is not None:
        k = len(means)
        mix = GaussianMixture(weights if weights is not None else [1.0 / k] * k, means,
                              covs if covs is not None else [np.eye(len(means[0])).tolist()] * k)
    else:
        mix = GaussianMixture.random(dim=dim, components=components, seed=seed)
    sched_opts: dict[str, Any] = {}
    if schedule not in ("linear", "scaled-linear"):
        sched_opts = {k: v for k, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)) if v is not None}
    sched = make_schedule(schedule, **sched_opts)
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; available: {', '.join(TARGETS)}")
    tgt = TARGETS[target]
    return DiffusionModel(
        name="gmm", network=ExactNetwork(mix, sched, tgt), schedule=sched, target=tgt,
        shape=(mix.dim,), checkpoint_hash=mix.fingerprint(), dataset=None, data_range=(-float("inf"), float("inf")),
        info={"dim": mix.dim, "components": mix.components}, analytic=mix, dtype=torch.float64,
    )


gmm.option_help = {
    "dim": "dimension of the random mixture (when means is not given)",
    "components": "number of Gaussian components of the random mixture",
    "seed": "seed of the random mixture's means, covariances and weights",
    "schedule": "noise schedule the exact denoiser is presented under (edm, linear, cosine, ve, flow, ...)",
    "target": "prediction target the exact network outputs (x0, eps, v, flow)",
    "means": "explicit component means, a list of vectors (overrides dim/components/seed)",
    "covs": "explicit covariance matrices, one per mean (default: identity)",
    "weights": "explicit mixture weights, one per mean (default: equal)",
    "sigma_min": "smallest σ of a continuous schedule",
    "sigma_max": "largest σ of a continuous schedule",
}
gmm.option_types = {"means": list | None, "covs": list | None, "weights": list | None, "sigma_min": float | None,
                    "sigma_max": float | None}
