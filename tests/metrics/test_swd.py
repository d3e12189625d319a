"""Sliced Wasserstein distance on Laplacian-pyramid patches: checked against exact values and known effects."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.ndimage
import torch
from scipy.stats import wasserstein_distance

from diffbench.datasets import digits
from diffbench.metrics.base import Batch, MetricContext
from diffbench.metrics.swd import (PatchRows, SlicedWassersteinDistance, _blur, descriptors, laplacian_pyramid,
                                   pyr_down, pyr_up, random_directions, resolutions, sliced_wasserstein,
                                   wasserstein_1d)

FAST = {"directions": 64, "groups": 8}


def test_w1_of_unequal_sets_equals_scipy():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(101, 4, generator=g), torch.randn(37, 4, generator=g) * 2 + 0.3
    expected = [wasserstein_distance(a[:, i].numpy(), b[:, i].numpy()) for i in range(4)]
    np.testing.assert_allclose(wasserstein_1d(a, b).numpy(), expected, rtol=1e-12)


def test_w1_closed_forms_for_gaussians():
    """W1(N(0,1), N(μ,1)) = |μ|; W1(N(0,1), N(0,s²)) = |s − 1| √(2/π). Quantile samples: deterministic."""
    u = (torch.arange(30_000, dtype=torch.float64) + 0.5) / 30_000
    z = torch.special.ndtri(u)[:, None]
    assert float(wasserstein_1d(z, z + 0.7)) == pytest.approx(0.7, abs=1e-9)
    assert float(wasserstein_1d(z, 3 * z[::3])) == pytest.approx(2 * math.sqrt(2 / math.pi), rel=1e-3)


def test_sliced_distance_of_shifted_isotropic_gaussians():
    """Projected on a unit θ, a shift μ moves every point by θ·μ, so W1 = |θ·μ| per direction exactly; averaged
    over the sphere E|θ·μ| = |μ| Γ(d/2) / (√π Γ((d+1)/2))."""
    d = 5
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, d, generator=g, dtype=torch.float64)
    mu = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    dirs = random_directions(d, 20_000, seed=0)
    got = sliced_wasserstein(x, x + mu, dirs)
    assert got == pytest.approx(float((mu @ dirs).abs().mean()), rel=1e-9)
    expected = float(mu.norm()) * math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    assert got == pytest.approx(expected, rel=0.02)  # 20,000 directions: Monte Carlo s.e. about 0.5%


def test_pyramid_matches_the_authors_filters_and_reconstructs():
    x = torch.rand(2, 3, 28, 28, dtype=torch.float64)
    kernel = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0  # their pyr_down: scipy 'mirror' convolution
    down = scipy.ndimage.convolve(x.numpy(), kernel[None, None], mode="mirror")[:, :, ::2, ::2]
    np.testing.assert_allclose(pyr_down(x).numpy(), down, atol=1e-14)
    levels = laplacian_pyramid(x, 3)
    assert [tuple(t.shape[-2:]) for t in levels] == [(28, 28), (14, 14), (7, 7)]
    rebuilt = levels[-1]
    for band in reversed(levels[:-1]):
        rebuilt = band + pyr_up(rebuilt, tuple(band.shape[-2:]))
    torch.testing.assert_close(rebuilt, x, rtol=0, atol=1e-12)


def test_levels_for_any_size():
    assert resolutions(64, 16, 7) == [64, 32, 16]
    assert resolutions(28, 16, 7) == [28]
    assert resolutions(8, 16, 7) == [8]  # smaller than min_resolution: the image itself
    assert resolutions(6, 16, 7) == []


def test_patches_depend_on_sample_index_not_batch():
    x = torch.rand(6, 1, 28, 28)
    whole = descriptors(x, torch.arange(6), 3, 1, 7, 16)
    parts = torch.cat([descriptors(x[:2], torch.arange(2), 3, 1, 7, 16),
                       descriptors(x[2:], torch.arange(2, 6), 3, 1, 7, 16)])
    torch.testing.assert_close(whole, parts, rtol=0, atol=0)
    rows = PatchRows((-1.0, 1.0), 1, 7, 16)
    assert rows(Batch(x, torch.arange(6), None, 0)).shape == (6, 16 * 49)


def _model(shape=(1, 8, 8)):
    return SimpleNamespace(name="m", shape=shape, dataset="digits", data_range=(-1.0, 1.0))


def _swd(images, tmp_path, **options):
    out = SlicedWassersteinDistance().compute(images, model=_model(tuple(images.shape[1:])),
                                              context=MetricContext(Path(tmp_path)), **{**FAST, **options})
    return out["swd"]


def test_identical_set_is_zero_and_distortions_increase_it(tmp_path):
    """The reference set itself scores 0 (8×8: every patch position is used); the held-out split scores
    within noise of a mild perturbation of itself; blurring and strong noise move it up by many s.e."""
    train, test = digits("train").images, digits("test").images
    assert _swd(train, tmp_path).value == pytest.approx(0.0, abs=1e-9)
    g = torch.Generator().manual_seed(0)
    clean = _swd(test, tmp_path)
    noisy = _swd(test + 0.5 * torch.randn(test.shape, generator=g), tmp_path)
    blurred = _swd(_blur(test.double()).float(), tmp_path)
    assert clean.uncertainty > 0
    assert noisy.value > clean.value + 3 * math.hypot(clean.uncertainty, noisy.uncertainty)
    assert blurred.value > noisy.value
    assert "not comparable with Inception FID" in clean.method


def test_twenty_eight_pixel_images_and_refusals(tmp_path):
    """Any image size: 28×28 samples against 28×28 references; a size mismatch is one line."""
    from diffbench.metrics.extractors import MetricUnavailable, check_input_shape

    with pytest.raises(MetricUnavailable, match="takes 8×8 images \\(1 or 3 channels\\), not 1×28×28; for other sizes use metric 'swd'"):
        check_input_shape("digits-cnn", (1, 28, 28))
    with pytest.raises(MetricUnavailable, match="reference images are 1×8×8, samples 1×28×28"):
        _swd(torch.zeros(4, 1, 28, 28), tmp_path)
