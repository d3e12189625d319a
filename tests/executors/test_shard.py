"""Shards: a stable partition of the cells; shards 1/2 + 2/2 merged by `report` equal one run; no shared file
is written by two shards; the Slurm array script works as documented."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from diffbench import registry as registry_module
from diffbench.cli import cli
from diffbench.executors.shard import Shard, merge
from diffbench.results import RunDir
from diffbench.runner import run_suite
from diffbench.suite import SuiteError, expand, parse_suite
from rayhelpers import executor_registry
from runhelpers import grid, small
from test_ray import numbers, run

ROOT = Path(__file__).resolve().parents[2]
TIMINGS = ["sample_seconds", "seconds_per_sample", "counted_seconds_per_sample", "network_share"]


def test_parse_and_partition():
    assert Shard.parse("2/3") == Shard(2, 3) and Shard.parse(" 1 / 1 ").name == "1-of-1"
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="--shard"):
            Shard.parse(bad)
    cells = expand(parse_suite(small(), executor_registry()))
    for n in (1, 2, 4, 7):
        parts = [Shard(i, n).select(cells) for i in range(1, n + 1)]
        ids = [c.cell_id for p in parts for c in p]
        assert sorted(ids) == sorted(c.cell_id for c in cells)  # each cell exactly once
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # dealt round-robin: balanced
    again = Shard(1, 2).select(list(reversed(cells)))
    assert {c.cell_id for c in again} == {c.cell_id for c in Shard(1, 2).select(cells)}  # grid order does not matter


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "r"
    return run(small(metrics=["mean-norm", "checksum"]), out)


def test_two_shards_merged_equal_one_run(whole, tmp_path):
    data, out = small(metrics=["mean-norm", "checksum"]), tmp_path / "shared"
    first = run(data, out, shard="1/2")
    assert first.ran == 3  # a lock of its own; nothing shared written yet:
    assert sorted(p.name for p in out.iterdir()) == [".lock-shard-1-of-2", "cells", "shards"]
    half = merge(out, executor_registry(), draw=False)
    assert sorted(half.missing) == sorted(set(numbers(whole.path)) - set(numbers(out)))
    assert len(half.missing) == 3 and RunDir(out).read_manifest()["status"] == "incomplete"
    assert set(RunDir(out).read_manifest()["missing_cells"]) == set(half.missing)

    second = run(data, out, shard="2/2")
    assert second.ran == 3
    merged = merge(out, executor_registry())
    assert merged.missing == [] and numbers(out) == numbers(whole.path)
    pd.testing.assert_frame_equal(RunDir(out).read_csv().drop(columns=TIMINGS),
                                  whole.run.read_csv().drop(columns=TIMINGS))
    manifest = RunDir(out).read_manifest()
    assert manifest["status"] == "complete" and manifest["cells"] == {"total": 6, "ok": 6, "failed": 0, "missing": 0}
    assert set(manifest["sharded"]["shards"]) == {"1-of-2", "2-of-2"}
    assert {c["device"] for c in manifest["executor"]["cells"].values()} == {"cpu"}
    assert (out / "report.md").exists() and (out / "metric_vs_nfe.png").exists()
    assert "missing" not in (out / "report.md").read_text().lower()


def test_shards_keep_their_own_manifests_and_need_resume_to_rerun(tmp_path):
    data, out = small(grid=grid(sampler=["euler"], steps=[2, 4])), tmp_path / "shared"
    run(data, out, shard="1/2")
    run(data, out, shard="2/2")
    assert (out / "shards/1-of-2/manifest.json").exists() and (out / "shards/2-of-2/manifest.json").exists()
    m1 = yaml.safe_load((out / "shards/1-of-2/manifest.json").read_text())
    assert m1["shard"] == {"index": 1, "count": 2, "cells": 1} and m1["status"] == "complete"
    with pytest.raises(SuiteError, match="shard 1/2 ran here already; pass --resume"):
        run(data, out, shard="1/2")
    again = run(data, out, shard="1/2", resume=True)
    assert again.ran == 0 and again.skipped == 1
    with pytest.raises(SuiteError, match="--shard needs --out"):
        run_suite(parse_suite(data, executor_registry()), None, registry=executor_registry(), shard="1/2",
                  progress=False)
    unsharded = tmp_path / "plain"
    run(data, unsharded)
    with pytest.raises(SuiteError, match="made without --shard"):
        run(data, unsharded, shard="1/2")


def test_a_merged_run_with_missing_cells_is_completed_by_resume(whole, tmp_path):
    data, out = small(metrics=["mean-norm", "checksum"]), tmp_path / "shared"
    run(data, out, shard="2/2")
    assert len(merge(out, executor_registry(), draw=False).missing) == 3
    filled = run(data, out, resume=True)  # the whole suite, without --shard: runs only what is missing
    assert filled.ran == 3 and filled.skipped == 3 and numbers(out) == numbers(whole.path)


@pytest.fixture
def cli_registry(monkeypatch):
    reg = executor_registry()
    monkeypatch.setattr(registry_module, "_default", reg)
    return reg


def test_report_command_merges_and_lists_missing_cells(cli_registry, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small(grid=grid(sampler=["euler", "heun"], steps=[2]))))
    out = tmp_path / "shared"
    invoke = lambda *a: CliRunner().invoke(cli, [str(x) for x in a])  # noqa: E731
    first = invoke("run", path, "--out", out, "--shard", "1/2", "--no-progress")
    assert first.exit_code == 0 and "diffbench report" in first.stdout
    partial = invoke("report", out)
    assert partial.exit_code == 1 and "1 cells missing" in partial.stderr and "gmm__" in partial.stderr
    assert invoke("run", path, "--out", out, "--shard", "2/2", "--no-progress").exit_code == 0
    done = invoke("report", out)
    assert done.exit_code == 0 and len(RunDir(out).read_csv()) == 2
    bad = invoke("run", path, "--out", out, "--shard", "3/2")
    assert bad.exit_code == 2 and "I must be between 1 and N" in bad.stderr and bad.stderr.count("\n") == 1
    nowhere = invoke("run", path, "--shard", "1/2")
    assert nowhere.exit_code == 2 and "--shard needs --out" in nowhere.stderr


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("diffbench") is None, reason="needs bash and the CLI")
def test_the_slurm_array_script_runs_each_shard_and_report_merges_them(tmp_path):
    """scripts/slurm-array.sh as Slurm would run it: array tasks 1 and 2 of 2, then `diffbench report`."""
    suite = small(metrics=["solver-error"], num_samples=16, batch_size=16, grid=grid(sampler=["euler", "heun"], steps=[2]))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "slurm-run"
    env = {**os.environ, "SLURM_ARRAY_TASK_COUNT": "2", "DIFFBENCH_CACHE_DIR": str(tmp_path / "cache")}
    for task in ("1", "2"):
        subprocess.run(["bash", ROOT / "scripts" / "slurm-array.sh", path, out], check=True, cwd=tmp_path,
                       env={**env, "SLURM_ARRAY_TASK_ID": task}, capture_output=True)
    subprocess.run(["diffbench", "report", out], check=True, cwd=tmp_path, env=env, capture_output=True)
    whole = run(suite, tmp_path / "whole")
    assert len(numbers(out)) == 2 and numbers(out) == numbers(whole.path)
    assert RunDir(out).read_manifest()["status"] == "complete"
