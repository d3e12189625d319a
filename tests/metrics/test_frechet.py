"""FID from per-group moments and its linearised jackknife s.e., checked against closed-form truth."""

import numpy as np
import pytest
import torch

from diffbench.metrics import frechet

D, N, REPEATS = 8, 2000, 300


def gaussian_case(seed=0, d=D, scale=1.0, shift=0.3):
    """Sample N(mu_g, sigma_g) against fixed reference N(0, I): the true FID in closed form."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    sigma_g, mu_g = scale * a @ a.T + 0.5 * np.eye(d), np.full(d, shift)
    ref = frechet.ReferenceRoot.of({"mu": np.zeros(d), "sigma": np.eye(d)})
    # with Σr = I: FID = ‖μg‖² + tr Σg + D − 2 tr Σg^½
    true = float(mu_g @ mu_g + np.trace(sigma_g) + d - 2 * np.sqrt(np.linalg.eigvalsh(sigma_g)).sum())
    return rng, mu_g, np.linalg.cholesky(sigma_g), ref, true


@pytest.mark.parametrize("d, n, scale, shift", [(D, N, 1.0, 0.3), (32, 800, 0.2, 0.1)], ids=["D8-N2000", "D32-N800"])
def test_jackknife_se_matches_the_spread_over_independent_repeats(d, n, scale, shift):
    """300 independent sample sets: the reported s.e. (RMS over repeats) is within ±20 % of the s.d. of the
    FID estimates. N/D = 250, and 25 as at the FID protocol's 50,000 × 2048. At D = 8 the mean estimate is
    also within 3 % of the closed-form FID (the estimator's bias, O(D²/N), is small there)."""
    rng, mu_g, chol, ref, true = gaussian_case(0, d, scale, shift)
    values, ses = [], []
    for _ in range(REPEATS):
        x = mu_g + rng.normal(size=(n, d)) @ chol.T
        value, se = frechet.fid_with_jackknife(frechet.GroupMoments.of_rows(x, 20), ref)
        values.append(value)
        ses.append(se)
    spread, reported = np.std(values, ddof=1), np.sqrt(np.mean(np.square(ses)))
    assert reported == pytest.approx(spread, rel=0.2), (reported, spread)
    if d == D:
        assert np.mean(values) == pytest.approx(true, rel=0.03)


def stratified_case(seed: int, k: int = 5, d: int = D, spread: float = 2.0):
    """Class-stratified Gaussian samples: sample i from component i mod k (as conditional models sample),
    components N(m_c, I) with means m_c spread apart; reference N(0, I) fixed."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * spread / np.sqrt(d)
    ref = frechet.ReferenceRoot.of({"mu": np.zeros(d), "sigma": np.eye(d)})
    return rng, means, ref


def stratified_draw(rng, means, n):
    return means[np.arange(n) % len(means)] + rng.normal(size=(n, means.shape[1]))


def test_jackknife_se_of_a_class_stratified_sample_matches_its_spread():
    """Conditional models sample class i mod K at index i: a stratified sample, whose FID spreads less than
    that of independent draws (the class mix is fixed). Over 300 stratified sample sets the jackknife with
    groups of whole class blocks is within ±20 % of the s.d. of FID; dealing groups by i mod G (one class
    per group, the former default) overstates it several times."""
    k, n = 5, 2000
    rng, means, ref = stratified_case(11, k)
    values, ses, by_index = [], [], []
    for _ in range(REPEATS):
        x = stratified_draw(rng, means, n)
        value, se = frechet.fid_with_jackknife(frechet.GroupMoments.of_rows(x, 20, period=k), ref)
        values.append(value)
        ses.append(se)
        by_index.append(frechet.fid_with_jackknife(frechet.GroupMoments.of_rows(x, 20), ref)[1])
    spread = np.std(values, ddof=1)
    assert np.sqrt(np.mean(np.square(ses))) == pytest.approx(spread, rel=0.2)
    assert np.sqrt(np.mean(np.square(by_index))) > 2 * spread


def test_stratified_bootstrap_matches_the_spread_and_keeps_each_stratum():
    k, n = 5, 1000
    draws = frechet.bootstrap_draws(n, k, np.random.default_rng(0))
    assert len(draws) == n and np.array_equal(np.bincount(draws % k), np.bincount(np.arange(n) % k))
    assert len(np.unique(draws)) < n  # with replacement
    rng, means, ref = stratified_case(12, k)
    values, ses = [], []

    def fid(r):
        return frechet.fid_of(r.mean(0), np.cov(r, rowvar=False), ref)

    for rep in range(150):
        x = stratified_draw(rng, means, n)
        values.append(fid(x))
        draws = np.random.default_rng(rep)
        ses.append(np.std([fid(x[frechet.bootstrap_draws(n, k, draws)]) for _ in range(50)], ddof=1))
    assert np.sqrt(np.mean(np.square(ses))) == pytest.approx(np.std(values, ddof=1), rel=0.2)


def test_delete_a_group_se_of_a_mean_is_the_unequal_group_formula():
    """For θ = the mean, the delete-m jackknife's pseudo-values are the group means, so its variance is
    (1/G) Σ_g (ȳ_g − ȳ)² n_g / (N − n_g) (Busing et al. 1999); equal groups give (G−1)/G Σ (θ_(g) − θ̄)²."""
    rng = np.random.default_rng(5)
    y, sizes = rng.normal(size=23), np.array([3, 5, 4, 6, 5])
    parts = np.split(y, np.cumsum(sizes)[:-1])
    left_out = np.array([(y.sum() - p.sum()) / (len(y) - len(p)) for p in parts])
    want = np.sqrt(np.mean([(p.mean() - y.mean()) ** 2 * len(p) / (len(y) - len(p)) for p in parts]))
    assert frechet.delete_a_group_se(y.mean(), left_out, sizes) == pytest.approx(want, rel=1e-12)
    equal = rng.normal(size=8)
    assert frechet.delete_a_group_se(3.0, equal, np.full(8, 10)) == pytest.approx(
        np.sqrt(7 / 8 * ((equal - equal.mean()) ** 2).sum()), rel=1e-12
    )


def test_linearised_jackknife_equals_the_exact_one_to_first_order():
    rng, mu_g, chol, ref, _ = gaussian_case(1)
    moments = frechet.GroupMoments.of_rows(mu_g + rng.normal(size=(N, D)) @ chol.T, 20)
    _, se = frechet.fid_with_jackknife(moments, ref)
    assert se == pytest.approx(frechet.exact_jackknife(moments, ref), rel=0.02)


def test_point_fid_equals_torch_fidelity_and_groups_follow_sample_indices():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng, mu_g, chol, ref, _ = gaussian_case(2)
    x = mu_g + rng.normal(size=(500, D)) @ chol.T
    want = fid_statistics_to_metric(
        {"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)}, {"mu": ref.mu, "sigma": ref.sigma}, verbose=False
    )["frechet_inception_distance"]
    whole = frechet.fid_with_jackknife(frechet.GroupMoments.of_rows(x, 10), ref)
    assert whole[0] == pytest.approx(want, rel=1e-10)
    # the same rows streamed in shuffled batches with their sample indices: the same groups, same numbers
    moments = frechet.GroupMoments.empty(D, 10, x[:1000].mean(0))
    order = rng.permutation(len(x))
    for part in np.array_split(order, 7):
        moments.add(x[part], part)
    assert frechet.fid_with_jackknife(moments, ref) == pytest.approx(whole, rel=1e-10)


def test_jackknife_is_conservative_where_fid_is_zero_to_first_order():
    """Samples from the reference itself: FID's spread is second order in the noise; the jackknife variance is
    then biased upward (Efron & Stein 1981), so the s.e. overstates the spread (here by about a third), never
    understates it."""
    rng = np.random.default_rng(3)
    ref = frechet.ReferenceRoot.of({"mu": np.zeros(D), "sigma": np.eye(D)})
    values, ses = [], []
    for _ in range(200):
        v, se = frechet.fid_with_jackknife(frechet.GroupMoments.of_rows(rng.normal(size=(N, D)), 20), ref)
        values.append(v)
        ses.append(se)
    assert 1.1 * np.std(values, ddof=1) < np.sqrt(np.mean(np.square(ses))) < 2 * np.std(values, ddof=1)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_batched_bootstrap_takes_the_cpu_bootstraps_resamples(device):
    """The weighted-moments bootstrap (the CUDA path) gives the FIDs of the very resamples the CPU path draws."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng, mu_g, chol, ref, _ = gaussian_case(4)
    x = mu_g + rng.normal(size=(300, D)) @ chol.T
    draws = np.random.default_rng(7)
    want = [
        frechet.fid_of(r.mean(0), np.cov(r, rowvar=False), ref)
        for r in (x[draws.integers(0, len(x), len(x))] for _ in range(11))
    ]
    got = frechet.bootstrap_fids(x, ref, 11, 7, device, chunk=4)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    draws = np.random.default_rng(8)
    within = [
        frechet.fid_of(r.mean(0), np.cov(r, rowvar=False), ref)
        for r in (x[frechet.bootstrap_draws(len(x), 7, draws)] for _ in range(5))
    ]
    np.testing.assert_allclose(frechet.bootstrap_fids(x, ref, 5, 8, device, chunk=2, period=7), within, rtol=1e-9)


def test_fid_value_is_the_same_bits_whatever_the_se_method(tmp_path):
    from types import SimpleNamespace

    from diffbench.metrics.base import MetricContext
    from diffbench.metrics.fidelity import FID
    from diffbench.metrics.reference import ReferenceData

    rng, mu_g, chol, _, _ = gaussian_case(5)
    gen = torch.from_numpy(mu_g + rng.normal(size=(400, D)) @ chol.T)
    ref = ReferenceData(SimpleNamespace(stats=None), torch.from_numpy(rng.normal(size=(500, D))), "x")
    ctx = MetricContext(cache_dir=tmp_path)
    values = {
        m: FID().score_features(gen, ref, ctx, se_method=m, groups=20, bootstrap=10)["fid"]
        for m in ("jackknife", "bootstrap", "none")
    }
    assert len({v.value for v in values.values()}) == 1
    assert values["none"].uncertainty is None and values["jackknife"].uncertainty > 0
    assert values["bootstrap"].uncertainty > 0


def test_fid_keeps_the_stratified_design_of_a_conditional_model(tmp_path):
    """With period K (a K-class model) the s.e. is the jackknife over whole blocks of K and the bootstrap draws
    within each class; the method says so; the value is the one without strata (up to the summation order of
    the groups' moments)."""
    from types import SimpleNamespace

    from diffbench.metrics.base import MetricContext
    from diffbench.metrics.fidelity import FID
    from diffbench.metrics.reference import ReferenceData

    rng, means, ref_root = stratified_case(13, 5)
    gen = torch.from_numpy(stratified_draw(rng, means, 400))
    ref = ReferenceData(SimpleNamespace(stats=None), torch.from_numpy(rng.normal(size=(500, D))), "x")
    ctx = MetricContext(cache_dir=tmp_path)
    jk = FID().score_features(gen, ref, ctx, se_method="jackknife", groups=20, bootstrap=10, period=5)["fid"]
    plain = FID().score_features(gen, ref, ctx, se_method="jackknife", groups=20, bootstrap=10)["fid"]
    root = frechet.ReferenceRoot.of(ref.stats())
    # the wiring: the metric passes the period to the estimator, whose s.e. is checked against the true spread
    # of stratified samples in test_jackknife_se_of_a_class_stratified_sample_matches_its_spread
    want = frechet.fid_with_jackknife(frechet.GroupMoments.of_rows(gen.numpy(), 20, period=5), root)
    assert (jk.value, jk.uncertainty) == pytest.approx(want, rel=1e-12)
    assert jk.value == pytest.approx(plain.value, rel=1e-12) and jk.uncertainty < plain.uncertainty / 2
    assert "5 conditions" in jk.method and "blocks of 5" in jk.method and "by sample index" in plain.method
    boot = FID().score_features(gen, ref, ctx, se_method="bootstrap", groups=20, bootstrap=10, period=5)["fid"]
    assert "within each condition" in boot.method
    # conditions that do not repeat (period ≥ N/2): independent samples
    lone = FID().score_features(gen, ref, ctx, se_method="jackknife", groups=20, bootstrap=10, period=300)["fid"]
    assert lone.uncertainty == plain.uncertainty and "independent samples" in lone.method


@pytest.mark.slow  # two runs of the smoke suite: ~80 s on a quiet 2-core machine
def test_jackknife_agrees_with_the_bootstrap_on_the_smoke_cells(tmp_path):
    """On the 8 digits cells of suites/smoke.yaml (500 samples of a 10-class model, 128 features) the jackknife
    s.e. is the 100-resample bootstrap's within the two estimates' own scatter (the jackknife's alone is
    about 16 % at 20 groups): every ratio within 0.6–1.6, their geometric mean within 0.75–1.33."""
    import importlib.util
    import math
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fid_se_agreement.py"
    spec = importlib.util.spec_from_file_location("fid_se_agreement", path)
    agreement = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agreement)
    ratios = [r["jackknife"] / r["bootstrap"] for r in agreement.se_by_method(tmp_path)]
    assert len(ratios) == 8 and all(0.6 < r < 1.6 for r in ratios), ratios
    assert 0.75 < math.exp(sum(map(math.log, ratios)) / len(ratios)) < 1.33, ratios
