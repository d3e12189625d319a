"""FID/KID/PRC through torch-fidelity with digits-cnn, the reference cache, offline errors, class accuracy."""
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffbench.datasets import digits
from diffbench.metrics import digits_cnn, extractors, fidelity, reference
from diffbench.metrics.base import MetricContext
from diffbench.metrics.fidelity import METRICS, MetricUnavailable

DIGITS_MODEL = SimpleNamespace(name="stub", dataset="digits", data_range=(-1.0, 1.0))


@pytest.fixture
def context(tmp_path):
    return MetricContext(cache_dir=tmp_path / "cache", seed=0)


@pytest.fixture
def no_network(monkeypatch):
    """Any socket use or torch.hub download fails the test instead of hanging."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def compute(metric, samples, context, result=None, **options):
    return METRICS[metric].compute(samples, model=DIGITS_MODEL, result=result, context=context, **options)


def noisy(images, std):
    """Images with fixed Gaussian noise of ``std`` added (clipped to the data range)."""
    gen = torch.Generator().manual_seed(0)
    return (images + std * torch.randn(images.shape, generator=gen)).clamp(-1, 1)


def test_fid_of_the_reference_against_itself_is_zero(context):
    v = compute("fid", digits("train").images, context, se_method="bootstrap", bootstrap=10)["fid"]
    assert abs(v.value) < 1e-6
    assert v.uncertainty is not None and "bootstrap" in v.method


def test_fid_and_kid_grow_with_a_shift_of_the_distribution(context):
    test = digits("test").images
    fid = [compute("fid", noisy(test, s), context, se_method="bootstrap", bootstrap=20)["fid"] for s in (0.0, 0.3, 0.6)]
    kid = [compute("kid", noisy(test, s), context, subsets=20)["kid"] for s in (0.0, 0.3, 0.6)]
    # the held-out split is close to the reference; each step of noise lands far outside the error bars
    assert fid[0].value + 3 * fid[0].uncertainty < fid[1].value
    assert fid[1].value + 3 * fid[1].uncertainty < fid[2].value
    assert abs(kid[0].value) < 3 * kid[0].uncertainty
    assert kid[0].value + 3 * kid[0].uncertainty < kid[1].value
    assert kid[1].value + 3 * kid[1].uncertainty < kid[2].value


def test_fid_matches_torch_fidelity_and_fast_bootstrap_formula(context):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    ext = fidelity.resolve_extractor("digits-cnn", None, "fid")
    gen = fidelity.extract_features(digits("test").images, (-1.0, 1.0), ext)
    ref, _ = fidelity.reference_features("digits", "train", ext, context)
    stats = [fid_features_to_statistics(f) for f in (gen, ref)]  # torch-fidelity's own float32 path
    expected = fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    v = compute("fid", digits("test").images, context, se_method="none")["fid"]
    assert v.value == pytest.approx(expected, rel=1e-4) and v.uncertainty is None
    ref_stats = fid_features_to_statistics(ref.double())
    assert fidelity._fid_against(ref_stats)(gen.double().numpy()) == pytest.approx(expected, rel=1e-4)


def test_kid_and_prc_values_carry_uncertainty_and_method(context):
    out = compute("prc", digits("train").images, context)
    assert out["precision"].value == 1.0 and out["recall"].value == 1.0
    kid = compute("kid", digits("test").images, context, subsets=20)["kid"]
    assert kid.uncertainty > 0 and "20 subsets of 150" in kid.method  # half the smaller set
    assert context.info["kid_subset_size"] == 150


def test_context_records_what_was_used(context):
    compute("fid", digits("test").images, context, se_method="none")
    info = context.info
    assert info["feature_extractor"] == "digits-cnn" and info["feature_layer"] == "128"
    assert info["feature_extractor_hash"] == digits_cnn.load_classifier()[1]
    assert info["num_samples"] == 300 and info["reference_size"] == 1497 and info["reference_split"] == "train"
    assert len(info["reference_hash"]) == 64 and "none" in info["resize"] and "255" in info["uint8_mapping"]


def test_second_evaluation_extracts_no_reference_features(context, monkeypatch):
    calls = []
    real = extractors.extract_features
    monkeypatch.setattr(extractors, "extract_features",
                        lambda images, *a, **k: calls.append(len(images)) or real(images, *a, **k))
    reference.clear_memo()
    first = compute("fid", digits("test").images, context, se_method="none")["fid"]
    assert calls == [300, 256, 256, 256, 256, 256, 217]  # samples, then the reference in batches (cache miss)
    assert len(list(context.cache_dir.glob("ref-digits-train-digits-cnn-*.safetensors"))) == 1
    hash_first = context.info["reference_hash"]

    reference.clear_memo()  # a later process: only the disk cache remains
    calls.clear()
    fresh = MetricContext(cache_dir=context.cache_dir, seed=0)  # e.g. a later run
    second = compute("fid", digits("test").images.clone(), fresh, se_method="none")["fid"]
    assert calls == [300]  # only the new samples
    assert second.value == pytest.approx(first.value) and fresh.info["reference_hash"] == hash_first


def test_uint8_mapping_round_trips_digits():
    x = digits("all").images
    u = digits_cnn.to_uint8(x)
    assert u.dtype == torch.uint8 and (digits_cnn.from_uint8(u) - x).abs().max() <= 1 / 255 + 1e-6
    assert digits_cnn.to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


def test_digits_cnn_registered_with_torch_fidelity():
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    digits_cnn.register_with_torch_fidelity()
    digits_cnn.register_with_torch_fidelity()  # idempotent
    ext = create_feature_extractor("digits-cnn", ["128", "logits"], cuda=False, verbose=False)
    assert FEATURE_EXTRACTORS_REGISTRY["digits-cnn"] is type(ext)
    feats, logits = ext(digits_cnn.to_uint8(digits("test").images[:8]))
    assert feats.shape == (8, 128) and logits.shape == (8, 10)
    with pytest.raises(ValueError, match="uint8"):
        ext(digits("test").images[:8])


def test_inception_without_offline_weights_is_a_one_line_error(context, monkeypatch, tmp_path, no_network):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    rgb_model = SimpleNamespace(name="rgb", dataset="some-rgb-set", data_range=(-1.0, 1.0))
    samples = torch.zeros(4, 3, 32, 32)
    for metric in ("fid", "kid", "prc"):  # inception-v3-compat is the default off digits
        with pytest.raises(MetricUnavailable) as err:
            METRICS[metric].compute(samples, model=rgb_model, result=None, context=context)
        msg = str(err.value)
        assert "\n" not in msg and "inception-v3-compat" in msg and "weights_path=" in msg
    with pytest.raises(MetricUnavailable, match="does not exist") as err:
        compute("fid", samples, context, extractor="inception-v3-compat", weights_path=str(tmp_path / "nope.pth"))
    assert "\n" not in str(err.value)


def test_unknown_extractor_and_model_without_dataset_are_one_line_errors(context):
    with pytest.raises(MetricUnavailable, match="unknown feature extractor 'nope'"):
        compute("fid", digits("test").images, context, extractor="nope")
    gmm_like = SimpleNamespace(name="gmm", dataset=None, data_range=(-1.0, 1.0))
    with pytest.raises(MetricUnavailable, match="model 'gmm' has none"):
        METRICS["kid"].compute(torch.zeros(4, 2), model=gmm_like, result=None, context=context)


def test_class_accuracy_of_real_test_images(context):
    test = digits("test")
    v = METRICS["class-accuracy"].compute(test.images, model=DIGITS_MODEL, result=SimpleNamespace(labels=test.labels),
                                          context=context)["class-accuracy"]
    assert v.value >= 0.97  # the shipped classifier's test accuracy
    assert v.uncertainty == pytest.approx(np.sqrt(v.value * (1 - v.value) / 300))
    wrong = METRICS["class-accuracy"].compute(test.images, model=DIGITS_MODEL,
                                              result=SimpleNamespace(labels=(test.labels + 1) % 10), context=context)
    assert wrong["class-accuracy"].value < 0.05


def test_class_accuracy_needs_labels(context):
    with pytest.raises(MetricUnavailable, match="class-conditional"):
        METRICS["class-accuracy"].compute(digits("test").images, model=DIGITS_MODEL,
                                          result=SimpleNamespace(labels=None), context=context)


def test_metrics_are_registered():
    from diffbench.registry import build_registry

    reg = build_registry(autoload=False)
    assert {"fid", "kid", "prc", "class-accuracy"} <= set(reg.names("metric"))
    assert reg.get("metric", "kid").options["subsets"] == 100
    assert METRICS["prc"].higher_is_better and METRICS["class-accuracy"].higher_is_better
    assert not METRICS["fid"].higher_is_better and not METRICS["kid"].higher_is_better


@pytest.mark.parametrize("gram_limit", [fidelity.GRAM_LIMIT, 0], ids=["whole-gram", "by-subset"])
@pytest.mark.parametrize("subset_size", [150, 300])
def test_kid_from_whole_gram_matrices_equals_torch_fidelity(context, subset_size, gram_limit, monkeypatch):
    """Both KID paths (whole Gram matrices for small sets, subset by subset for large) equal torch-fidelity."""
    monkeypatch.setattr(fidelity, "GRAM_LIMIT", gram_limit)
    from torch_fidelity.metric_kid import kid_features_to_metric

    from diffbench.metrics.reference import ReferenceData

    ext = fidelity.resolve_extractor("digits-cnn", None, "kid")
    gen = fidelity.extract_features(noisy(digits("test").images, 0.3), (-1.0, 1.0), ext)
    ref_feats, _ = fidelity.reference_features("digits", "train", ext, context)
    want = kid_features_to_metric(gen, ref_feats, kid_subsets=20, kid_subset_size=subset_size, rng_seed=3,
                                  verbose=False)
    ref = ReferenceData(None, ref_feats, "x")
    mean, std = fidelity.kid_subsets(gen, ref, 20, subset_size, 3)
    # the same subsets and formula; float32 kernel entries summed in float64 (torch-fidelity sums in float32)
    assert mean == pytest.approx(want["kernel_inception_distance_mean"], rel=1e-5)
    assert std == pytest.approx(want["kernel_inception_distance_std"], rel=1e-4)


def test_scores_do_not_depend_on_the_callers_thread_count(context):
    """A Ray worker runs one thread, a local run two: FID (with its bootstrap s.e.) and KID must agree exactly."""
    from threadpoolctl import threadpool_limits

    images = noisy(digits("test").images, 0.3)
    threads, out = torch.get_num_threads(), []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with threadpool_limits(limits=n):
                out.append({name: compute(name, images, context)[name] for name in ("fid", "kid")})
    finally:
        torch.set_num_threads(threads)
    assert out[0] == out[1] and out[0]["fid"].uncertainty > 0


def test_fid_with_fewer_samples_than_dimensions_equals_the_full_eigenproblem():
    """n − 1 < D: the n × n form gives the D × D form's value (random features, D = 300, n = 40, and a
    resample with repeated rows). The D × D form's ~260 zero eigenvalues come out as ±rounding, whose
    clipped square roots add ~1e-7 each; the exact value leaves them out."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((300, 300)) / 20
    stats = {"mu": rng.standard_normal(300) * 0.1, "sigma": a @ a.T + 0.05 * np.eye(300)}
    lam, vec = np.linalg.eigh(stats["sigma"])
    root = (vec * np.sqrt(lam)) @ vec.T
    gen = rng.standard_normal((40, 300)) * 0.5 + 0.2
    for rows in (gen, gen[[0, 0, 1, 2, 3, 3, 3, *range(4, 40)]]):
        sigma = np.cov(rows, rowvar=False)
        ev = np.linalg.eigvalsh(root @ sigma @ root)
        exact = (((rows.mean(0) - stats["mu"]) ** 2).sum() + np.trace(sigma) + np.trace(stats["sigma"])
                 - 2 * np.sqrt(ev[ev > 1e-9 * ev.max()]).sum())
        assert (ev > 1e-9 * ev.max()).sum() <= len(np.unique(rows, axis=0)) - 1  # rank n − 1 at most
        assert fidelity._fid_against(stats)(rows) == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("max_samples", [100_000, 700])
def test_prc_equals_torch_fidelity_on_the_same_rows(context, max_samples):
    """Within max_samples: torch-fidelity's precision/recall on all rows; beyond: on the recorded-size subsets
    (the same seeded draws), so memory and cost stay bounded whatever the sample count."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    from diffbench.metrics.reference import ReferenceData

    ext = fidelity.resolve_extractor("digits-cnn", None, "prc")
    gen = fidelity.extract_features(noisy(digits("test").images, 0.3), (-1.0, 1.0), ext)
    ref_feats, _ = fidelity.reference_features("digits", "train", ext, context)
    ref = ReferenceData(SimpleNamespace(stats=None), ref_feats, "x")
    out = fidelity.PRC().score_features(gen, ref, context, neighborhood=3, max_samples=max_samples)
    x = fidelity._bounded_subset(gen, max_samples, context.seed)
    y = fidelity._bounded_subset(ref_feats, max_samples, context.seed + 1)
    assert context.info["prc_sizes"] == [len(x), len(y)] == [min(len(gen), max_samples), min(len(ref_feats), max_samples)]
    want = prc_features_to_metric(x, y, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    # distances computed in other block shapes may round a tie differently: at most one row either way
    assert out["precision"].value == pytest.approx(want["precision"], abs=1.01 / len(x))
    assert out["recall"].value == pytest.approx(want["recall"], abs=1.01 / len(y))
    assert 0 < out["precision"].value < 1 and 0 < out["recall"].value < 1
