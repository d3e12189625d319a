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


@pytest.mark.parametrize("d, n, scale, shift", [(D, N, 1.0, 0.3), (32, 800, 0.2, 0.1)],
                         ids=["D8-N2000", "D32-N800"])
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


def test_linearised_jackknife_equals_the_exact_one_to_first_order():
    rng, mu_g, chol, ref, _ = gaussian_case(1)
    moments = frechet.GroupMoments.of_rows(mu_g + rng.normal(size=(N, D)) @ chol.T, 20)
    _, se = frechet.fid_with_jackknife(moments, ref)
    assert se == pytest.approx(frechet.exact_jackknife(moments, ref), rel=0.02)


def test_point_fid_equals_torch_fidelity_and_groups_follow_sample_indices():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng, mu_g, chol, ref, _ = gaussian_case(2)
    x = mu_g + rng.normal(size=(500, D)) @ chol.T
    want = fid_statistics_to_metric({"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)},
                                    {"mu": ref.mu, "sigma": ref.sigma}, verbose=False)["frechet_inception_distance"]
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
    want = [frechet.fid_of(r.mean(0), np.cov(r, rowvar=False), ref)
            for r in (x[draws.integers(0, len(x), len(x))] for _ in range(11))]
    got = frechet.bootstrap_fids(x, ref, 11, 7, device, chunk=4)
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_fid_value_is_the_same_bits_whatever_the_se_method(tmp_path):
    from types import SimpleNamespace

    from diffbench.metrics.base import MetricContext
    from diffbench.metrics.fidelity import FID
    from diffbench.metrics.reference import ReferenceData

    rng, mu_g, chol, _, _ = gaussian_case(5)
    gen = torch.from_numpy(mu_g + rng.normal(size=(400, D)) @ chol.T)
    ref = ReferenceData(SimpleNamespace(stats=None), torch.from_numpy(rng.normal(size=(500, D))), "x")
    ctx = MetricContext(cache_dir=tmp_path)
    values = {m: FID().score_features(gen, ref, ctx, se_method=m, groups=20, bootstrap=10)["fid"]
              for m in ("jackknife", "bootstrap", "none")}
    assert len({v.value for v in values.values()}) == 1
    assert values["none"].uncertainty is None and values["jackknife"].uncertainty > 0
    assert values["bootstrap"].uncertainty > 0
