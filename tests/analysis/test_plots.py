"""Pareto front against brute force, run plots from a cells frame, per-cell sample pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from runhelpers import record

from diffbench.analysis.plots import (
    GUIDANCE_PLOT,
    NFE_PLOT,
    TIME_PLOT,
    make_plots,
    pareto_front,
)
from diffbench.run.pictures import save_samples, tile
from diffbench.run.rundir import cells_frame


def brute_front(cost, value):
    keep = []
    for i in range(len(cost)):
        dominated = any(
            cost[j] <= cost[i] and value[j] <= value[i] and (cost[j], value[j]) != (cost[i], value[i])
            for j in range(len(cost))
        )
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: cost[i])


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    cost, value = rng.random(30), rng.random(30)
    assert pareto_front(cost, value, higher_is_better=False).tolist() == brute_front(cost, value)
    assert pareto_front(cost, value, higher_is_better=True).tolist() == brute_front(cost, -value)


def test_pareto_front_small_case():
    cost = np.array([1.0, 2.0, 3.0, 4.0])
    fid = np.array([10.0, 5.0, 7.0, 1.0])
    assert pareto_front(cost, fid, False).tolist() == [0, 1, 3]
    assert pareto_front(cost, fid, True).tolist() == [0]


def frame(guidance=(None,)):
    recs = []
    for g in guidance:
        for i in range(4):
            r = record(len(recs), fid=10.0 / (i + 1), kid=0.1 / (i + 1))
            r.update(guidance=g, sampler="euler" if i % 2 else "heun", seconds_per_sample=0.01 * (i + 1))
            recs.append(r)
    recs.append(record(len(recs), status="failed"))
    return cells_frame(recs)


def test_make_plots_writes_pngs(tmp_path):
    files = make_plots(frame(), tmp_path, {"fid": False, "kid": False})
    assert [f.name for f in files] == [NFE_PLOT, TIME_PLOT]
    for f in files:
        with Image.open(f) as img:
            assert img.size[0] > 800  # two metric panels side by side


def test_guidance_plot_only_when_guidance_varies(tmp_path):
    files = make_plots(frame(guidance=(None, 2.0)), tmp_path)
    assert [f.name for f in files] == [NFE_PLOT, TIME_PLOT, GUIDANCE_PLOT]


def test_no_plot_without_finished_cells(tmp_path):
    assert make_plots(cells_frame([record(0, status="failed")]), tmp_path) == []


def test_image_samples_make_a_grid(tmp_path):
    images = torch.linspace(-1, 1, 100 * 64).reshape(100, 1, 8, 8)
    path = save_samples(images, tmp_path / "c.png")
    with Image.open(path) as img:
        # 10 × 10 images of 8 px with 1 px padding, upscaled by an integer factor
        assert img.size[0] == img.size[1] and img.size[0] % 91 == 0 and img.mode == "L"


def test_a_cell_picture_tiles_images_as_torchvisions_make_grid():
    import math

    from torchvision.utils import make_grid

    for n, c in [(1, 1), (1, 3), (2, 3), (7, 1), (10, 3), (100, 1)]:
        images = torch.rand(n, c, 5, 4, generator=torch.Generator().manual_seed(n))
        nrow = int(math.ceil(math.sqrt(n)))
        theirs = make_grid(images, nrow=nrow, padding=1, pad_value=1.0)  # grey images become 3 equal channels
        assert torch.equal(tile(images, nrow=nrow, padding=1, pad_value=1.0), theirs[:c]), (n, c)


def test_points_make_a_scatter_and_other_shapes_nothing(tmp_path):
    pts = torch.randn(200, 2, dtype=torch.float64)
    assert save_samples(pts, tmp_path / "p.png", reference=torch.randn(50, 2)).exists()
    assert save_samples(torch.randn(10, 3), tmp_path / "q.png") is None
    assert not (tmp_path / "q.png").exists()
