"""Distribution metrics against every reference kind: folder == in-memory split, npz-stats == its folder."""
from __future__ import annotations

import pathlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffbench.datasets import DatasetError, digits
from diffbench.metrics import digits_cnn, extractors, fidelity, reference
from diffbench.metrics.base import MetricContext
from diffbench.metrics.fidelity import METRICS, MetricUnavailable
from diffbench.runner import run_suite
from diffbench.suite import SuiteError, parse_suite
from runhelpers import small, test_registry


def write_digit_pngs(folder: pathlib.Path, images: torch.Tensor) -> pathlib.Path:
    """Grey digits images in [-1, 1] as 8×8 PNGs through diffbench's uint8 mapping."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, u8 in enumerate(digits_cnn.to_uint8(images)[:, 0].numpy()):
        Image.fromarray(u8).save(folder / f"{i:04d}.png")
    return folder


def model_on(dataset) -> SimpleNamespace:
    return SimpleNamespace(name="stub", dataset=dataset, data_range=(-1.0, 1.0))


@pytest.fixture
def context(tmp_path):
    reference.clear_memo()
    return MetricContext(cache_dir=tmp_path / "cache", seed=0)


def fid(dataset, context, samples, **options):
    return METRICS["fid"].compute(samples, model=model_on(dataset), context=context, extractor="digits-cnn",
                                  se_method="none", **options)["fid"].value


def test_fid_against_an_image_folder_equals_fid_against_the_same_images_in_memory(tmp_path, context):
    folder = write_digit_pngs(tmp_path / "digits-test", digits("test").images)
    samples = digits("train").images[:200]
    in_memory = fid({"name": "digits", "split": "test"}, context, samples)
    from_folder = fid({"name": "image-folder", "options": {"path": str(folder)}}, context, samples)
    # same uint8 pixels; the PNGs are read as RGB and digits-cnn averages the 3 equal channels (float32 rounding)
    assert from_folder == pytest.approx(in_memory, rel=1e-6)
    assert context.info["reference_dataset"] == "image-folder" and context.info["reference_size"] == 300


def test_npz_stats_give_the_fid_of_the_folder_they_were_computed_from(tmp_path, context):
    from torch_fidelity.metric_fid import fid_features_to_statistics

    folder = write_digit_pngs(tmp_path / "ref", digits("test").images)
    ext = extractors.resolve_extractor("digits-cnn", None, "fid")
    feats, _ = reference_features_of(folder, ext, context)
    stats = fid_features_to_statistics(feats.double())  # float64 mean, covariance with N - 1: EDM's layout
    np.savez(tmp_path / "ref.npz", mu=stats["mu"], sigma=stats["sigma"])
    samples = digits("train").images[:200]
    from_folder = fid({"name": "image-folder", "options": {"path": str(folder)}}, context, samples)
    from_stats = fid({"name": "npz-stats", "options": {"path": str(tmp_path / "ref.npz")}}, context, samples)
    assert from_stats == pytest.approx(from_folder, rel=1e-6)
    boot = METRICS["fid"].compute(samples, model=model_on({"name": "npz-stats", "options": {"path": str(tmp_path / "ref.npz")}}),
                                  context=context, extractor="digits-cnn", se_method="bootstrap", bootstrap=5)["fid"]
    assert boot.value == pytest.approx(from_folder, rel=1e-6) and boot.uncertainty > 0


def reference_features_of(folder, ext, context):
    from diffbench.metrics.fidelity import reference_features

    return reference_features({"name": "image-folder", "options": {"path": str(folder)}}, None, ext, context)


def test_npz_stats_serve_fid_only_and_must_match_the_extractor_dimension(tmp_path, context):
    np.savez(tmp_path / "s64.npz", mu=np.zeros(64), sigma=np.eye(64))
    np.savez(tmp_path / "s128.npz", mu=np.zeros(128), sigma=np.eye(128))
    for metric in ("kid", "prc"):
        with pytest.raises(MetricUnavailable, match="holds FID statistics only"):
            METRICS[metric].features(model=model_on({"name": "npz-stats", "options": {"path": str(tmp_path / "s128.npz")}}),
                                     context=context, extractor="digits-cnn")
    with pytest.raises(DatasetError, match="holds 64-dimensional statistics; extractor 'digits-cnn' gives 128") as err:
        METRICS["fid"].features(model=model_on({"name": "npz-stats", "options": {"path": str(tmp_path / "s64.npz")}}),
                                context=context, extractor="digits-cnn")
    assert "\n" not in str(err.value)


def digits_suite(reference_spec, **overrides):
    return small(model={"name": "digits-eps"}, reference=reference_spec,
                 metrics=[{"name": "fid", "options": {"extractor": "digits-cnn", "se_method": "none"}}],
                 num_samples=16, batch_size=16, grid={"sampler": ["euler"], "steps": [2]}, **overrides)


def test_a_suite_names_an_image_folder_reference_and_the_manifest_records_it(tmp_path):
    folder = write_digit_pngs(tmp_path / "refs" / "test", digits("test").images[:40])
    reg, _ = test_registry()
    spec = {"name": "image-folder", "options": {"path": str(tmp_path / "refs")}, "split": "test"}
    res = run_suite(parse_suite(digits_suite(spec), reg), tmp_path / "run", registry=reg, progress=False, cache_dir=tmp_path / "c",
                    draw=False)
    assert res.failed == 0 and res.cells["fid"].notna().all()
    manifest = res.run.read_manifest()
    assert manifest["reference"]["name"] == "image-folder"
    info = manifest["metric_info"]
    assert info["reference_identity"]["path"] == str(folder.resolve()) and info["reference_size"] == 40
    assert info["feature_extractor"] == "digits-cnn" and info["feature_dim"] == 128


@pytest.mark.parametrize("spec, match", [
    ({"name": "image-folder", "options": {"path": "/no/such/folder"}}, "does not exist"),
    ({"name": "nope"}, "reference.name: unknown dataset 'nope'"),
    ({"name": "image-folder", "options": {"root": "x"}}, "reference.options.root: dataset 'image-folder' has no such option"),
])
def test_a_bad_reference_is_a_one_line_suite_error_before_any_sampling(tmp_path, spec, match, monkeypatch):
    import diffbench.cell

    monkeypatch.setattr(diffbench.cell, "sample_batches", lambda *a, **k: pytest.fail("sampled"))
    reg, _ = test_registry()
    with pytest.raises(SuiteError, match=match) as err:
        run_suite(parse_suite(digits_suite(spec), reg), tmp_path / "run", registry=reg, progress=False, cache_dir=tmp_path / "c")
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


def test_fid_inf_extrapolates_the_small_sample_bias_away(tmp_path, context):
    """Samples and reference from one Gaussian: FID at N is biased (to first order D/N from the mean and
    tr(E²)/4 with E[tr E²] = D(D+1)/N from the covariance); FID∞ is ~0 within its error."""
    d, n = 8, 2000
    gen = torch.from_numpy(np.random.default_rng(0).standard_normal((n, d)))
    np.savez(tmp_path / "exact.npz", mu=np.zeros(d), sigma=np.eye(d))  # the true distribution's statistics
    ref = reference.ReferenceData(open_npz(tmp_path / "exact.npz"), None, "exact")
    fid_n = fidelity.FID().score_features(gen, ref, context, se_method="none", groups=20, bootstrap=100)["fid"].value
    inf = fidelity.FIDInfinity().score_features(gen, ref, context, points=15, min_fraction=0.1)["fid-inf"]
    bias = d / n + d * (d + 1) / (4 * n)  # 0.013
    assert 0.5 * bias < fid_n < 2 * bias
    assert abs(inf.value) < 0.5 * fid_n and abs(inf.value) < 3 * inf.uncertainty  # the truth is 0
    assert context.info["fid_inf_sizes"][0] == 200 and context.info["fid_inf_sizes"][-1] == n


def open_npz(path):
    from diffbench.datasets import npz_stats

    return npz_stats(path=str(path))
