"""FID from per-group float64 moments, with a first-order (linearised) delete-a-group jackknife standard error.

Samples are dealt into G groups by sample index and each group keeps its count n_g, Σx and Σxxᵀ in
float64, shifted by a fixed vector c for accuracy. A conditional model's samples are stratified by
condition (sample i gets label i mod K: each block of K consecutive indices holds every class once), so
the groups are dealt by block: sample i goes to group (i // K) mod G. Each group is then itself a
stratified subsample and leaving it out leaves the class mix as it was; dealing by i mod G instead
would put one class in each group (G a multiple of K), and the jackknife would measure the spread of
the class mix, which the design holds fixed (measured on the digits smoke cells: 3-8x the true
spread). K = 1 for unconditional models; the groups are the same whatever the batch size or the
split across workers. The totals give the sample mean μ and covariance Σ
(N − 1 normalisation), and the point FID against reference statistics (μr, Σr):

    FID(μ, Σ) = ‖μ − μr‖² + tr Σ + tr Σr − 2 tr (R Σ R)^½,   R = Σr^½,

with tr (RΣR)^½ = Σ √λ over the eigenvalues λ of M = RΣR (= tr √(Σ Σr), what torch-fidelity's
sqrtm computes).

The standard error is the delete-a-group jackknife (Quenouille/Tukey; Kott 2001, "The delete-a-group
jackknife", J. Official Statistics 17) with each leave-one-group-out FID replaced by its first-order
expansion around the full-sample point — the linear jackknife of Efron (1982, "The Jackknife, the
Bootstrap and Other Resampling Plans", ch. 6), which needs no new eigendecomposition per group.
The derivative of tr f(M) is tr(f'(M) dM) (Daleckii–Krein), so with M = V Λ Vᵀ

    dFID = 2 (μ − μr)·dμ + ⟨B, dΣ⟩,   B = I − R V Λ^-½ Vᵀ R,

where ⟨·,·⟩ is the Frobenius product. Leaving out group g changes (μ, Σ) by (Δμ_g, ΔΣ_g), computed
exactly from the group's moments, L_g = 2 (μ − μr)·Δμ_g + ⟨B, ΔΣ_g⟩, and the jackknife variance is
the delete-m jackknife's for groups of unequal size n_g (Busing, Meijer & van der Leeden 1999,
Statistics and Computing 9), with θ_(g) = FID + L_g, h_g = N / n_g, pseudo-values
p_g = h_g FID − (h_g − 1) θ_(g) and θ_J = G FID − Σ_g (1 − n_g/N) θ_(g):

    v = (1/G) Σ_g (p_g − θ_J)² / (h_g − 1),

which is (G − 1)/G · Σ_g (L_g − L̄)² when the groups are equal.

Each L_g costs O(D²) from the stored moments (⟨B, Σxxᵀ_g⟩ and s_gᵀ B s_g), so the s.e. adds to the
point FID only the eigenvectors of M and two D × D products. Eigenvalues of M at or below
``EIG_FLOOR`` × the largest are treated as zero (their directions get no derivative: leaving samples
out keeps Σ's range inside the full sample's, so they do not move to first order).

Limits: where FID's linear term vanishes (samples from the reference distribution itself, FID ≈ 0)
its spread is second order in the noise and the jackknife, biased upward (Efron & Stein 1981),
overstates it (by about a third in tests/metrics/test_frechet.py). The
jackknife variance has G − 1 degrees of freedom: the s.e. itself scatters by about 1/√(2(G − 1))
(16 % at G = 20). Only the sample side is uncertain: the reference statistics are taken as fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EIG_FLOOR = 1e-12


@dataclass
class GroupMoments:
    """Per-group count, Σ(x − shift) and Σ(x − shift)(x − shift)ᵀ in float64; sample i in group (i // period) mod G."""

    shift: np.ndarray  # (D,)
    count: np.ndarray  # (G,)
    sums: np.ndarray  # (G, D)
    outer: np.ndarray  # (G, D, D)
    period: int = 1  # consecutive indices holding each condition once (conditioning.condition_period)

    @classmethod
    def empty(cls, dim: int, groups: int, shift: np.ndarray | None = None, period: int = 1) -> "GroupMoments":
        shift = np.zeros(dim) if shift is None else np.asarray(shift, dtype=np.float64)
        return cls(shift, np.zeros(groups), np.zeros((groups, dim)), np.zeros((groups, dim, dim)), int(period))

    @classmethod
    def of_rows(cls, rows, groups: int, indices=None, period: int = 1) -> "GroupMoments":
        """Moments of ``rows`` (N × D, any float dtype; row i has sample index ``indices[i]``, default i)."""
        x = np.asarray(rows)
        moments = cls.empty(x.shape[1], groups, x[: min(len(x), 1000)].astype(np.float64).mean(0), period)
        moments.add(x, np.arange(len(x)) if indices is None else np.asarray(indices))
        return moments

    @property
    def groups(self) -> int:
        return len(self.count)

    def add(self, rows, indices) -> None:
        """Add a batch of rows with their sample indices (one float64 Gram matrix per group present)."""
        x, g = np.asarray(rows), (np.asarray(indices) // self.period) % self.groups
        for k in np.unique(g):
            xk = x[g == k].astype(np.float64) - self.shift
            self.count[k] += len(xk)
            self.sums[k] += xk.sum(0)
            self.outer[k] += xk.T @ xk

    def totals(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(N, mean, covariance with N − 1 normalisation) of all rows."""
        n = int(self.count.sum())
        s, xx = self.sums.sum(0), self.outer.sum(0)
        return n, self.shift + s / n, (xx - np.outer(s, s) / n) / (n - 1)


@dataclass(frozen=True)
class ReferenceRoot:
    """Reference statistics with Σr^½ (from one eigendecomposition, reused by every cell)."""

    mu: np.ndarray
    sigma: np.ndarray
    root: np.ndarray

    @classmethod
    def of(cls, stats: dict[str, np.ndarray]) -> "ReferenceRoot":
        sigma = np.asarray(stats["sigma"], dtype=np.float64)
        lam, vec = np.linalg.eigh(sigma)
        root = (vec * np.sqrt(np.clip(lam, 0, None))) @ vec.T
        return cls(np.asarray(stats["mu"], dtype=np.float64), sigma, root)


def fid_of(mu: np.ndarray, sigma: np.ndarray, ref: ReferenceRoot, vectors: bool = False):
    """FID of (mu, sigma) against ``ref``; with ``vectors`` also the eigenpairs of M = RΣR."""
    m = ref.root @ sigma @ ref.root
    if vectors:
        lam, vec = np.linalg.eigh(m)
    else:
        lam, vec = np.linalg.eigvalsh(m), None
    value = float(
        ((mu - ref.mu) ** 2).sum() + np.trace(sigma) + np.trace(ref.sigma) - 2 * np.sqrt(np.clip(lam, 0, None)).sum()
    )
    return (value, lam, vec) if vectors else value


def fid_with_jackknife(moments: GroupMoments, ref: ReferenceRoot) -> tuple[float, float]:
    """Point FID from the totals and its linearised delete-a-group jackknife s.e. (see the module docstring)."""
    n, mu, sigma = moments.totals()
    value, lam, vec = fid_of(mu, sigma, ref, vectors=True)
    keep = lam > EIG_FLOOR * max(float(lam.max()), 0.0)
    w = ref.root @ vec[:, keep]
    b = np.eye(len(mu)) - (w / np.sqrt(lam[keep])) @ w.T
    grad_mu = 2 * (mu - ref.mu)
    s, xx = moments.sums.sum(0), moments.outer.sum(0)
    b_xx = float(np.vdot(b, xx))
    b_xx_g = np.einsum("gij,ij->g", moments.outer, b)
    n_out = n - moments.count  # samples left when group g is out
    s_out = s - moments.sums  # (G, D)
    mu_out = moments.shift + s_out / n_out[:, None]
    b_sigma_out = (b_xx - b_xx_g - np.einsum("gi,ij,gj->g", s_out, b, s_out) / n_out) / (n_out - 1)
    linear = (mu_out - mu) @ grad_mu + b_sigma_out - float(np.vdot(b, sigma))
    return value, delete_a_group_se(value, value + linear, moments.count)


def delete_a_group_se(full: float, left_out: np.ndarray, sizes: np.ndarray) -> float:
    """Delete-m jackknife s.e. for groups of unequal size (Busing, Meijer & van der Leeden 1999).

    ``full`` is the estimate on all samples, ``left_out[g]`` the estimate without group g of ``sizes[g]``
    samples; equal groups give the usual (G − 1)/G · Σ (θ_(g) − θ̄)².
    """
    left_out, sizes = np.asarray(left_out, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
    n, g = sizes.sum(), len(sizes)
    h = n / sizes
    pseudo = h * full - (h - 1) * left_out
    centre = g * full - ((1 - sizes / n) * left_out).sum()
    return float(np.sqrt(((pseudo - centre) ** 2 / (h - 1)).sum() / g))


def exact_jackknife(moments: GroupMoments, ref: ReferenceRoot) -> float:
    """The delete-a-group jackknife s.e. with every leave-one-out FID recomputed (G eigenproblems; for tests)."""
    n, s, xx = int(moments.count.sum()), moments.sums.sum(0), moments.outer.sum(0)
    fids = []
    for k in range(moments.groups):
        n_k, s_k = n - moments.count[k], s - moments.sums[k]
        sigma_k = (xx - moments.outer[k] - np.outer(s_k, s_k) / n_k) / (n_k - 1)
        fids.append(fid_of(moments.shift + s_k / n_k, sigma_k, ref))
    _, mu, sigma = moments.totals()
    return delete_a_group_se(fid_of(mu, sigma, ref), np.array(fids), moments.count)


def bootstrap_draws(n: int, period: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of one bootstrap resample of n samples, drawn with replacement within each stratum.

    Stratum c holds the samples i with i mod ``period`` = c (one condition each; ``period`` 1: one
    stratum, the plain bootstrap) and keeps its size, as the sampling design does.
    """
    if period == 1:
        return rng.integers(0, n, n)
    return np.concatenate([rng.choice(np.arange(c, n, period), len(range(c, n, period))) for c in range(period)])


def bootstrap_fids(rows, ref: ReferenceRoot, resamples: int, seed: int, device="cpu", chunk: int = 8,
                   period: int = 1) -> np.ndarray:
    """FID of ``resamples`` bootstrap resamples of ``rows`` (N × D) as weighted moments on ``device`` (float64).

    Resample b is ``bootstrap_draws(N, period, np.random.default_rng(seed))`` (the draws the CPU
    bootstrap makes, so both give the same resamples); its covariance is Xcᵀ diag(w_b) Xc − N δδᵀ over
    N − 1 with w_b the draw counts, Xc the centred rows and δ the resample's mean shift, and the
    eigenvalues of R Σ_b R are computed ``chunk`` resamples at a time.
    """
    import torch

    x = torch.as_tensor(np.asarray(rows), dtype=torch.float64, device=device)
    n = len(x)
    mu = x.mean(0)
    xc = x - mu
    root = torch.as_tensor(ref.root, device=device)
    mu_ref = torch.as_tensor(ref.mu, device=device)
    tr_ref = float(np.trace(ref.sigma))
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, resamples, chunk):
        counts = np.stack(
            [np.bincount(bootstrap_draws(n, period, rng), minlength=n) for _ in range(min(chunk, resamples - start))]
        )
        w = torch.as_tensor(counts, dtype=torch.float64, device=device)
        delta = w @ xc / n  # (c, D)
        sigma = torch.stack([xc.T @ (xc * wb[:, None]) for wb in w])
        sigma = (sigma - n * delta[:, :, None] * delta[:, None, :]) / (n - 1)
        lam = torch.linalg.eigvalsh(root @ sigma @ root)
        fid = (
            ((mu + delta - mu_ref) ** 2).sum(1)
            + sigma.diagonal(dim1=1, dim2=2).sum(1)
            + tr_ref
            - 2 * lam.clamp(min=0).sqrt().sum(1)
        )
        out.append(fid.cpu().numpy())
    return np.concatenate(out)


def fid_with_moments(moments: GroupMoments, ref: ReferenceRoot) -> float:
    """Point FID from the moments' totals, computed as ``fid_with_jackknife`` computes it (the same bits)."""
    _, mu, sigma = moments.totals()
    return fid_of(mu, sigma, ref, vectors=True)[0]
