"""save_samples writes exactly the samples the cell drew; seed blocks report their minimum, labelled."""

from __future__ import annotations

import numpy as np
import pytest
from runhelpers import small, test_registry

import diffbench
from diffbench.api import run_suite
from diffbench.metrics import digits_cnn
from diffbench.run.suite import parse_suite


def digits_suite(**overrides):
    return small(
        model={"name": "digits-eps"},
        metrics=["mean-norm"],
        num_samples=10,
        batch_size=4,
        grid={"sampler": ["euler"], "steps": [2]},
        **overrides,
    )


def run(data, tmp_path):
    reg, _ = test_registry()
    return run_suite(
        parse_suite(data, reg), tmp_path / "run", registry=reg, progress=False, cache_dir=tmp_path / "cache", draw=False
    )


def reference_samples(seed):
    model = diffbench.load_model("digits-eps")
    return diffbench.sample(model, "euler", steps=2, num_samples=10, seed=seed, batch_size=4, device="cpu").samples


def test_npz_and_png_hold_the_cells_samples_batch_by_batch(tmp_path):
    res = run(digits_suite(save_samples="npz", seeds=[0, 3]), tmp_path / "npz")
    cell = res.cells["cell_id"].iloc[0]
    folder = res.path / "samples" / cell
    for seed in (0, 3):
        files = sorted(folder.glob(f"seed{seed}-*.npz"))
        assert [f.name for f in files] == [
            f"seed{seed}-000000-000003.npz",
            f"seed{seed}-000004-000007.npz",
            f"seed{seed}-000008-000009.npz",
        ]
        got = np.concatenate([np.load(f, allow_pickle=False)["samples"] for f in files])
        assert np.array_equal(got, reference_samples(seed).numpy())
    png = run(digits_suite(save_samples="png"), tmp_path / "png")
    from PIL import Image

    pngs = sorted((png.path / "samples" / png.cells["cell_id"].iloc[0] / "seed0").glob("*.png"))
    assert len(pngs) == 10
    want = digits_cnn.to_uint8(reference_samples(0))[:, 0].numpy()
    assert np.array_equal(np.stack([np.asarray(Image.open(p)) for p in pngs]), want)
    assert not (run(digits_suite(), tmp_path / "none").path / "samples").exists()


def test_seed_blocks_report_the_mean_with_its_error_and_the_minimum_labelled(tmp_path):
    res = run(digits_suite(seeds=[0, 1, 2]), tmp_path)
    import json

    rec = json.loads(next((res.path / "cells").glob("*.json")).read_text())
    per_block = [p["metrics"]["mean-norm"]["value"] for p in rec["per_seed"]]
    assert rec["metrics"]["mean-norm"]["value"] == pytest.approx(np.mean(per_block), rel=1e-15)
    assert rec["metrics"]["mean-norm"]["uncertainty"] == pytest.approx(np.std(per_block, ddof=1) / np.sqrt(3))
    low = rec["metrics"]["mean-norm-min-over-seeds"]
    assert (
        low["value"] == min(per_block) and low["uncertainty"] is None and "minimum over 3 seed blocks" in low["method"]
    )
