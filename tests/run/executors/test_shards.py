"""Shards: a stable partition of the cells; shards 1/2 + 2/2 merged by `report` equal one run; no shared file
is written by two shards; the Slurm array script works as documented."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from rayhelpers import executor_registry
from runhelpers import grid, small
from test_ray import numbers, run

from diffbench import registry as registry_module
from diffbench.api import merge_shards as merge
from diffbench.api import run_suite
from diffbench.cli import cli
from diffbench.run.rundir import RunBusyError, RunDir, lock_is_held, read_json
from diffbench.run.shards import Shard
from diffbench.run.suite import SuiteError, expand, parse_suite

ROOT = Path(__file__).resolve().parents[3]
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
    assert sorted(p.name for p in out.iterdir()) == [".lock", ".lock-shard-1-of-2", "cells", "shards"]
    half = merge(out, executor_registry(), draw=False)
    assert sorted(half.missing) == sorted(set(numbers(whole.path)) - set(numbers(out)))
    assert len(half.missing) == 3 and RunDir(out).read_manifest()["status"] == "incomplete"
    assert set(RunDir(out).read_manifest()["missing_cells"]) == set(half.missing)

    second = run(data, out, shard="2/2")
    assert second.ran == 3
    merged = merge(out, executor_registry())
    assert merged.missing == [] and numbers(out) == numbers(whole.path)
    pd.testing.assert_frame_equal(
        RunDir(out).read_csv().drop(columns=TIMINGS), whole.run.read_csv().drop(columns=TIMINGS)
    )
    manifest = RunDir(out).read_manifest()
    assert manifest["status"] == "complete" and manifest["cells"] == {"total": 6, "ok": 6, "failed": 0, "missing": 0}
    assert set(manifest["sharded"]["shards"]) == {"1-of-2", "2-of-2"}
    assert {c["device"] for c in manifest["executor"]["cells"].values()} == {"cpu"}
    assert (out / "report.md").exists() and (out / "metric_vs_nfe.png").exists()
    assert "missing" not in (out / "report.md").read_text().lower()


def test_shards_from_different_checkpoints_are_not_merged(tmp_path):
    """A shard that ran on other weights (its records name another checkpoint hash) stops the merge in one line
    naming the model and both hashes; every record stays on disk."""
    data, out = small(grid=grid(sampler=["euler"], steps=[2, 4])), tmp_path / "shared"
    run(data, out, shard="1/2")
    run(data, out, shard="2/2")
    path = sorted((out / "cells").glob("*.json"))[0]
    record = json.loads(path.read_text())
    assert record["model_identity"]["checkpoint_hash"]  # the test model's weights have a hash
    record["model_identity"]["checkpoint_hash"] = "f" * 64
    path.write_text(json.dumps(record))
    mixed = r"model '.+' has cells from different checkpoints \(.*sha256 ffffffffffff… in 1 cell"
    with pytest.raises(SuiteError, match=mixed):
        merge(out, executor_registry(), draw=False)
    assert len(list((out / "cells").glob("*.json"))) == 2


def test_shards_keep_their_own_manifests_and_need_resume_to_rerun(tmp_path):
    data, out = small(grid=grid(sampler=["euler"], steps=[2, 4])), tmp_path / "shared"
    run(data, out, shard="1/2")
    run(data, out, shard="2/2")
    assert (out / "shards/1-of-2/manifest.json").exists() and (out / "shards/2-of-2/manifest.json").exists()
    m1 = yaml.safe_load((out / "shards/1-of-2/manifest.json").read_text())
    # dealt by counted work, largest first: shard 1 gets the 4-step cell (4 NFE × 64 samples), shard 2 the other
    assert m1["shard"] == {"index": 1, "count": 2, "cells": 1, "network_evaluations": 4 * 64}
    assert m1["status"] == "complete"
    with pytest.raises(SuiteError, match="shard 1/2 ran here already; pass --resume"):
        run(data, out, shard="1/2")
    again = run(data, out, shard="1/2", resume=True)
    assert again.ran == 0 and again.skipped == 1
    with pytest.raises(SuiteError, match="--shard needs --out"):
        run_suite(
            parse_suite(data, executor_registry()), None, registry=executor_registry(), shard="1/2", progress=False
        )
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

    def invoke(*a):
        return CliRunner().invoke(cli, [str(x) for x in a])

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
    suite = small(
        metrics=["solver-error"], num_samples=16, batch_size=16, grid=grid(sampler=["euler", "heun"], steps=[2])
    )
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "slurm-run"
    env = {**os.environ, "SLURM_ARRAY_TASK_COUNT": "2", "DIFFBENCH_CACHE_DIR": str(tmp_path / "cache")}
    for task in ("1", "2"):
        subprocess.run(
            ["bash", ROOT / "scripts" / "slurm-array.sh", path, out],
            check=True,
            cwd=tmp_path,
            env={**env, "SLURM_ARRAY_TASK_ID": task},
            capture_output=True,
        )
    subprocess.run(["diffbench", "report", out], check=True, cwd=tmp_path, env=env, capture_output=True)
    whole = run(suite, tmp_path / "whole")
    assert len(numbers(out)) == 2 and numbers(out) == numbers(whole.path)
    assert RunDir(out).read_manifest()["status"] == "complete"


# --- suites with include/exclude rules, resuming, re-sharding, other suites, balance (issue 19 item 8) ------------


def ruled(**overrides):
    """A steps.yaml-like suite: a grid trimmed by exclude and extended by include rules (one naming a scheduler
    that is not in the grid, one naming only steps)."""
    data = dict(
        metrics=["mean-norm", "checksum"],
        num_samples=16,
        batch_size=16,
        grid=grid(sampler=["euler", "heun", "dpm-solver++-2m"], steps=[2, 4]),
        exclude=[{"sampler": ["heun"]}],
        include=[{"sampler": "heun", "steps": [2, 3]}, {"sampler": ["euler"], "scheduler": "quadratic"}, {"steps": 5}],
    )
    return small(**{**data, **overrides})


@pytest.fixture(scope="module")
def ruled_whole(tmp_path_factory):
    return run(ruled(), tmp_path_factory.mktemp("ruled") / "whole")


def test_shards_of_a_suite_with_include_and_exclude_rules_merge_into_the_whole_run(ruled_whole, cli_registry, tmp_path):
    out = tmp_path / "shared"
    assert len(numbers(ruled_whole.path)) == 11

    def invoke(*a):
        return CliRunner().invoke(cli, [str(x) for x in a])

    run(ruled(), out, shard="1/2")
    partial = invoke("report", out)
    assert partial.exit_code == 1 and "cells missing" in partial.stderr, partial.stderr
    run(ruled(), out, shard="2/2")
    merged = invoke("report", out)
    assert merged.exit_code == 0, merged.stderr
    assert numbers(out) == numbers(ruled_whole.path) and RunDir(out).read_manifest()["status"] == "complete"
    rules = read_json(out / "suite.json")["include"]  # stored as written: no axis the rule does not name
    assert rules == [
        {"sampler": "heun", "steps": [2, 3]},
        {"sampler": ["euler"], "scheduler": "quadratic"},
        {"steps": 5},
    ]


def test_a_run_dir_written_by_an_older_diffbench_with_null_rule_axes_still_merges(ruled_whole, tmp_path):
    out = tmp_path / "shared"
    run(ruled(), out, shard="1/1")
    path = out / "shards" / "1-of-1" / "suite.json"
    data = read_json(path)
    axes = ("model", "sampler", "scheduler", "steps", "guidance")
    for kind in ("include", "exclude"):  # what the earlier model_dump wrote: every axis, unnamed ones null
        data[kind] = [{a: r.get(a) for a in axes} for r in data[kind]]
    path.write_text(json.dumps(data))
    assert merge(out, executor_registry(), draw=False).missing == []
    assert numbers(out) == numbers(ruled_whole.path)


def test_the_unsharded_resume_finishes_what_shards_left(ruled_whole, tmp_path):
    out = tmp_path / "shared"
    first = run(ruled(), out, shard="1/2")  # shard 2 never ran; nothing merged
    with pytest.raises(SuiteError, match="pass --resume"):
        run(ruled(), out)
    rest = run(ruled(), out, resume=True)  # the documented fallback: run SUITE --out RUN --resume
    assert rest.skipped == first.ran and rest.ran == 11 - first.ran
    assert numbers(out) == numbers(ruled_whole.path)
    merged = merge(out, executor_registry(), draw=False)
    assert merged.missing == [] and RunDir(out).read_manifest()["status"] == "complete"


def test_resharding_with_another_n_never_reruns_a_finished_cell(ruled_whole, tmp_path):
    out = tmp_path / "shared"
    first = run(ruled(), out, shard="1/2")
    before = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}
    ran = [run(ruled(), out, shard=f"{i}/3").ran for i in (1, 2, 3)]  # no --resume: a new N starts afresh
    assert sum(ran) == 11 - first.ran
    assert all((out / "cells" / name).read_bytes() == data for name, data in before.items())  # untouched
    assert merge(out, executor_registry(), draw=False).missing == []
    assert numbers(out) == numbers(ruled_whole.path)


def test_a_shard_of_another_suite_is_refused_when_it_starts(cli_registry, tmp_path):
    out = tmp_path / "shared"
    run(ruled(), out, shard="1/2")
    with pytest.raises(
        SuiteError,
        match=r"shards/1-of-2 ran suite 'small', not 'other'; every shard of a run "
        r"directory runs the same suite: choose another --out$",
    ):
        run(ruled(name="other"), out, shard="2/2")
    with pytest.raises(
        SuiteError,
        match=r"shards/1-of-2 ran another version of suite 'small' \(it differs at "
        r"num_samples\)",
    ):
        run(ruled(num_samples=8, batch_size=8), out, shard="2/2")
    assert not (out / "shards" / "2-of-2").exists()
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(ruled(grid=grid(sampler=["euler", "heun"], steps=[2, 4]))))
    refused = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--shard", "2/2", "--no-progress"])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1 and "differs at grid.sampler" in refused.stderr
    assert not (out / "shards" / "2-of-2").exists()
    assert run(ruled(), out, shard="2/2").ran > 0  # the same suite is welcome


def declared_nfe(sampler: str, steps: int) -> int:
    """Network evaluations per sample, from each algorithm's definition: Heun skips its correction at σ = 0."""
    return 2 * steps - 1 if sampler == "heun" else steps


def test_shards_are_balanced_by_counted_work_not_by_cell_count():
    from diffbench.registry import default_registry
    from diffbench.run.suite import load_suite

    # smoke.yaml: 36,500 network evaluations; dealt round-robin by cell id shard 1 got 24,500 of them
    cells = expand(load_suite(ROOT / "suites" / "smoke.yaml", default_registry()))
    work = {c.cell_id: declared_nfe(c.sampler.name, c.steps) * 500 for c in cells}
    assert sum(work.values()) == 36_500
    for n in (2, 3, 4):
        loads = [sum(work[c.cell_id] for c in Shard(i, n).select(cells, work)) for i in range(1, n + 1)]
        assert sum(loads) == 36_500 and sorted(
            c.cell_id for i in range(1, n + 1) for c in Shard(i, n).select(cells, work)
        ) == sorted(work)
        assert max(loads) - min(loads) <= max(work.values())  # least-loaded first: within one cell's work
    assert [sum(work[c.cell_id] for c in Shard(i, 2).select(cells, work)) for i in (1, 2)] == [19_500, 17_000]


def test_each_shard_plans_its_dealt_share_of_the_counted_work(tmp_path):
    from diffbench.run.preparation import preflight

    data = small(num_samples=4, batch_size=4, grid=grid(sampler=["euler", "heun"], steps=[1, 2, 4, 8, 16, 32]))
    reg = executor_registry()
    whole = preflight(parse_suite(data, reg), reg, cache_dir=tmp_path).plan.nfe
    cell_work = [declared_nfe(s, n) * 4 for s in ("euler", "heun") for n in (1, 2, 4, 8, 16, 32)]
    assert whole == sum(cell_work)
    for n in (2, 3):
        loads = [
            preflight(parse_suite(data, reg), reg, cache_dir=tmp_path, shard=Shard(i, n)).plan.nfe
            for i in range(1, n + 1)
        ]
        assert sum(loads) == whole and max(loads) - min(loads) <= max(cell_work)


# --- locks of a shared run directory (issue 19 item 7) --------------------------------------------------------------


def test_a_whole_run_and_a_shard_never_run_in_one_directory_at_once(tmp_path):
    out = tmp_path / "shared"
    run(ruled(), out, shard="1/2")
    with RunDir(out).lock(shared=True), RunDir(out).lock(".lock-shard-2-of-2"):  # shard 2/2 is running
        with pytest.raises(RunBusyError, match=rf"^{out}: in use by diffbench shard 2-of-2 of a sharded run; wait "):
            run(ruled(), out, resume=True)
        assert run(ruled(), out, shard="1/2", resume=True).ran == 0  # another shard may run beside it
        assert merge(out, executor_registry(), draw=False).run.read_manifest()["running_shards"] == ["2-of-2"]
    with RunDir(out).lock():  # a whole run (or a merge) holds the directory
        with pytest.raises(RunBusyError, match=r"in use by another diffbench run \(pid \d+, \.lock\)"):
            run(ruled(), out, shard="2/2")
    assert not lock_is_held(out / ".lock") and not lock_is_held(out / ".lock-shard-1-of-2")
