"""One cell across Ray tasks: index ranges on batch boundaries; gathered features scored once give the unsplit numbers."""
from __future__ import annotations

import yaml

from diffbench.executors.ray import RayExecutor
from diffbench.executors.split import describe_split, split_ranges
from diffbench.suite import load_suite, parse_suite
from diffbench.results import RunDir
from runhelpers import grid, small
from test_ray import ROOT, numbers, run


def test_ranges_cover_every_sample_once_on_batch_boundaries():
    for n, batch, parts in [(64, 16, 3), (100, 32, 2), (65, 8, 5), (7, 1, 7), (64, 16, 4)]:
        ranges = split_ranges(n, batch, parts)
        indices = [i for first, count in ranges for i in range(first, first + count)]
        assert indices == list(range(n))
        assert all(first % batch == 0 for first, _ in ranges)  # every batch the same as unsplit
        assert len(ranges) == parts
    assert split_ranges(64, 16, 3) == [(0, 32), (32, 16), (48, 16)]


def test_fewer_batches_than_parts_are_cut_inside_a_batch_and_said_in_one_line():
    """steps.yaml (1000 samples in one batch of 1000) with --cell-parts 4, as the docs show: 4 parts of 250."""
    for n, batch, parts in [(1000, 1000, 4), (10, 32, 4), (2000, 1000, 3), (3, 8, 8)]:
        ranges = split_ranges(n, batch, parts)
        assert [i for first, count in ranges for i in range(first, first + count)] == list(range(n))
        assert len(ranges) == min(parts, n)
        assert max(c for _, c in ranges) - min(c for _, c in ranges) <= 1
    assert split_ranges(1000, 1000, 4) == [(0, 250), (250, 250), (500, 250), (750, 250)]
    steps = load_suite(ROOT / "suites" / "steps.yaml")
    assert describe_split(steps, 4).startswith("--cell-parts 4: each seed group of 1000 samples runs as 4 parts of "
                                               "250, cut inside batches of 1000")
    assert describe_split(parse_suite(small(num_samples=3, batch_size=8)), 8) == (
        "--cell-parts 8: each seed group of 3 samples runs as 3 parts of 1 (not 8: a seed group has only 3 samples)")
    assert "\n" not in describe_split(steps, 4)


def test_a_cell_of_one_batch_split_in_four_gives_the_unsplit_numbers_on_an_exact_model(ray_instance, tmp_path):
    data = small(metrics=["mean-norm", "checksum"], num_samples=16, batch_size=16,
                 grid=grid(sampler=["heun"], steps=[3]))
    local = run(data, tmp_path / "local")
    split = run(data, tmp_path / "split", executor=RayExecutor(cell_parts=4))
    rec = RunDir(split.path).read_cells()[0]
    assert sorted((p["first_index"], p["count"]) for p in rec["worker"]["parts"]) == [(0, 4), (4, 4), (8, 4), (12, 4)]
    assert numbers(split.path) == numbers(local.path)  # the gmm model's exact denoiser rounds row by row


def test_a_split_cell_gives_the_unsplit_numbers(ray_instance, tmp_path):
    data = small(metrics=["mean-norm", "checksum"], seeds=[0, 1], batch_size=16,
                 grid=grid(sampler=["euler", "dpm-solver++-2m"], steps=[3]))
    local = run(data, tmp_path / "local")
    split = run(data, tmp_path / "split", executor=RayExecutor(cell_parts=3))
    assert len(numbers(split.path)) == 2 and numbers(split.path) == numbers(local.path)
    rec = RunDir(split.path).read_cells()[0]
    parts = rec["worker"]["parts"]
    assert sorted((p["seed"], p["first_index"]) for p in parts) == [(s, f) for s in (0, 1) for f in (0, 32, 48)]
    assert rec["sample_image"] and (split.path / "cells" / rec["sample_image"]).exists()
    assert RunDir(split.path).read_manifest()["executor"]["cell_parts"] == 3


def test_a_failing_part_fails_its_cell_only(ray_instance, tmp_path):
    data = small(batch_size=16, grid=grid(sampler=["broken", "euler"], steps=[2]))
    res = run(data, tmp_path / "r", executor=RayExecutor(cell_parts=2))
    status = res.cells.set_index("sampler")
    assert status.loc["euler", "status"] == "ok"
    assert status.loc["broken", "status"] == "failed"
    assert "RuntimeError: broken sampler exploded" in status.loc["broken", "error"]


def test_cell_parts_needs_the_ray_executor(tmp_path):
    from click.testing import CliRunner

    from diffbench.cli import cli

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small(grid=grid(sampler=["euler"], steps=[2]))))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "r"), "--cell-parts", "2"])
    assert result.exit_code == 2 and "--cell-parts needs --executor ray" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "r").exists()


def saved(path):
    """Every saved-samples file of a run: relative name → its arrays."""
    import numpy as np

    out = {}
    for f in sorted((path / "samples").rglob("*.npz")):
        with np.load(f, allow_pickle=False) as z:
            out[f.relative_to(path).as_posix()] = {k: z[k].tolist() for k in z.files}
    return out


def test_saved_samples_come_back_from_the_workers(ray_instance, tmp_path):
    data = small(save_samples="npz", batch_size=16, grid=grid(sampler=["euler"], steps=[2]))
    local = run(data, tmp_path / "local")
    whole = run(data, tmp_path / "ray", executor="ray")
    split = run(data, tmp_path / "split", executor=RayExecutor(cell_parts=3))
    assert len(saved(local.path)) == 4  # 64 samples in batches of 16: one file per batch
    assert saved(whole.path) == saved(local.path) and saved(split.path) == saved(local.path)
    records = [RunDir(r.path).read_cells()[0]["saved_samples"] for r in (local, whole, split)]
    assert records[0] == records[1] == records[2] == {"mode": "npz", "files": 4, "folder": records[0]["folder"]}


def test_combined_parts_report_the_unsplit_per_call_times():
    # part 1 (one batch) calls a network that sleeps 1 ms, part 2 (two batches) one that sleeps 6 ms: the cell's
    # median call is ≥ 6 ms (part 1 alone would say 1 ms), and its lists are every batch's, as unsplit
    import dataclasses
    import statistics
    import time

    from diffbench.cell import _summarise
    from diffbench.executors.split import combine_results
    from diffbench.sampling import sample
    from helpers import edm_model

    base = edm_model()

    def sleeping(seconds):
        def network(x, t, cond):
            time.sleep(seconds)
            return base.network(x, t, cond)
        return dataclasses.replace(base, network=network)

    parts = [sample(sleeping(0.001), "heun", steps=4, num_samples=16, first_index=0, batch_size=16),
             sample(sleeping(0.006), "heun", steps=4, num_samples=32, first_index=16, batch_size=16)]
    combined = combine_results(parts)
    calls_per_batch = 2 * 4 - 1  # Heun, no correction on the step into σ = 0
    assert combined.call_seconds == parts[0].call_seconds + parts[1].call_seconds
    assert len(combined.call_seconds) == 3 * calls_per_batch
    assert combined.gap_seconds == parts[0].gap_seconds + parts[1].gap_seconds
    assert len(combined.gap_seconds) == 3 * (calls_per_batch - 1)  # between the calls of each batch
    rec: dict = {}
    _summarise(rec, [combined])
    assert rec["network_seconds_per_call"] == statistics.median(combined.call_seconds) >= 0.006
