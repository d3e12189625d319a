"""The Ray executor on a local instance with 2 CPU workers: the local executor's numbers, cell by cell;
a worker killed mid-cell is retried; a plugin error fails its cell only; Ctrl-C and --resume."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rayhelpers import executor_registry
from runhelpers import grid, small

from diffbench.api import run_suite
from diffbench.run.executors.ray import RayExecutor
from diffbench.run.rundir import RunDir
from diffbench.run.runner import RunInterrupted
from diffbench.run.suite import parse_suite

ROOT = Path(__file__).resolve().parents[3]


def run(data, out, executor="local", registry=None, **kw):
    registry = registry or executor_registry()
    return run_suite(parse_suite(data, registry), out, registry=registry, progress=False,
                     cache_dir=out.parent / "cache", draw=False, executor=executor, **kw)


def numbers(path):
    """Everything a cell computed except its timings: status, counted NFE, metric values and errors, per seed."""
    out = {}
    for rec in RunDir(path).read_cells():
        out[rec["cell_id"]] = (rec["status"], rec["error"], rec["nfe"], rec["declared_nfe"], rec["metrics"],
                               [(s["seed"], s["nfe"], s["metrics"]) for s in rec["per_seed"]], rec.get("grid"))
    return out


def test_import_diffbench_does_not_import_ray():
    code = ("import sys, diffbench, diffbench.run.runner, diffbench.cli, diffbench.run.shards; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_without_ray_the_flag_is_a_one_line_error_naming_the_install(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from diffbench.cli import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small(grid=grid(sampler=["euler"], steps=[2]))))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "r"), "--executor", "ray"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert 'pip install "diffbench[ray]"' in result.stderr
    assert not (tmp_path / "r").exists()


def test_ray_gives_the_local_numbers_and_the_driver_writes_every_file(ray_instance, tmp_path):
    data = small(metrics=["mean-norm", "checksum"])
    local = run(data, tmp_path / "local")
    remote = run(data, tmp_path / "ray", executor="ray")
    assert len(numbers(remote.path)) == 6 and numbers(remote.path) == numbers(local.path)
    assert remote.ran == 6 and remote.failed == 0
    pictures = sorted(p.name for p in (remote.path / "cells").glob("*.png"))
    assert pictures == sorted(p.name for p in (local.path / "cells").glob("*.png")) and len(pictures) == 6
    manifest = RunDir(remote.path).read_manifest()
    ex = manifest["executor"]
    assert ex["name"] == "ray" and ex["per_cell"] == {"num_cpus": 1, "num_gpus": 0, "max_retries": 3}
    assert [n["resources"]["CPU"] for n in ex["nodes"]] == [2.0]
    assert set(ex["cells"]) == set(numbers(local.path)) and {c["device"] for c in ex["cells"].values()} == {"cpu"}
    workers = [r["worker"] for r in RunDir(remote.path).read_cells()]
    assert all(w["executor"] == "ray" and w["pid"] != os.getpid() and w["threads"] == 1 for w in workers)
    assert RunDir(local.path).read_manifest()["executor"]["name"] == "local"


def test_digits_smoke_cells_give_the_local_numbers_whole_or_split(ray_instance, tmp_path):
    """The smoke suite's model and metrics (digits-eps, FID and KID on digits-cnn features), fewer samples;
    also with each cell split across two tasks (features gathered, FID and KID scored once)."""
    data = yaml.safe_load((ROOT / "suites" / "smoke.yaml").read_text())
    data.update(num_samples=200, batch_size=100, grid={"sampler": ["ddim", "heun"], "scheduler": ["karras"],
                                                       "steps": [5]})
    local = run(data, tmp_path / "local")
    remote = run(data, tmp_path / "ray", executor="ray")
    assert numbers(remote.path) == numbers(local.path)
    assert all(set(rec["metrics"]) == {"fid", "kid"} for rec in RunDir(remote.path).read_cells())
    split = run(data, tmp_path / "split", executor=RayExecutor(cell_parts=2))  # each cell's 2 batches on 2 tasks
    assert numbers(split.path) == numbers(local.path)
    assert all(len(rec["worker"]["parts"]) == 2 for rec in RunDir(split.path).read_cells())


def test_a_worker_killed_mid_cell_is_retried_with_the_same_numbers(ray_instance, tmp_path):
    marker = tmp_path / "killed-pid"
    dies = {"name": "dies-once", "options": {"marker": str(marker)}}
    data = small(metrics=["mean-norm", "checksum"], grid=grid(sampler=[dies, "euler"], steps=[3]))
    local = run(data, tmp_path / "local")
    assert not marker.exists()  # the local run has no worker to kill
    remote = run(data, tmp_path / "ray", executor="ray")
    assert marker.exists(), "no worker was killed"
    killed = int(marker.read_text())
    assert numbers(remote.path) == numbers(local.path)
    rec = next(r for r in RunDir(remote.path).read_cells() if r["sampler"] == "dies-once")
    assert rec["status"] == "ok" and rec["worker"]["pid"] != killed


def test_a_cell_whose_worker_dies_on_every_attempt_fails_alone(ray_instance, tmp_path):
    data = small(grid=grid(sampler=["dies-always", "euler"], steps=[2]))
    res = run(data, tmp_path / "r", executor=RayExecutor(max_retries=1))
    status = res.cells.set_index("sampler")
    assert status.loc["euler", "status"] == "ok"
    assert status.loc["dies-always", "status"] == "failed"
    assert status.loc["dies-always", "error"].startswith("Ray worker lost 2 times: ")


def test_a_plugin_error_fails_its_cell_only(ray_instance, tmp_path):
    data = small(grid=grid(sampler=["broken", "euler", "nan"], steps=[2]))
    res = run(data, tmp_path / "r", executor="ray")
    status = res.cells.set_index("sampler")
    assert status.loc["euler", "status"] == "ok" and status.loc["euler", "mean-norm"] > 0
    assert status.loc["broken", "error"] == "RuntimeError: broken sampler exploded"
    assert status.loc["nan", "status"] == "failed" and "non-finite" in status.loc["nan", "error"]
    assert res.failed == 2
    assert numbers(res.path) == numbers(run(data, tmp_path / "local").path)  # the same errors as a local run
    rec = next(r for r in RunDir(res.path).read_cells() if r["sampler"] == "broken")
    assert "Traceback" in rec["traceback"] and rec["worker"]["executor"] == "ray"


def test_ctrl_c_keeps_finished_cells_and_resume_completes_them(ray_instance, tmp_path, monkeypatch):
    data = small(metrics=["mean-norm", "checksum"])
    writes = []
    original = RunDir.write_cell

    def interrupt_after_two(self, record):
        original(self, record)
        writes.append(record["cell_id"])
        if len(writes) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "write_cell", interrupt_after_two)
    with pytest.raises(RunInterrupted, match="interrupted: 2 of 6 cells kept"):
        run(data, tmp_path / "r", executor="ray")
    monkeypatch.setattr(RunDir, "write_cell", original)
    partial = RunDir(tmp_path / "r")
    assert partial.read_manifest()["status"] == "interrupted" and len(partial.read_cells()) == 2
    assert not list(partial.path.rglob("*.tmp"))
    resumed = run(data, tmp_path / "r", executor="ray", resume=True)
    assert resumed.skipped == 2 and resumed.ran == 4
    assert partial.read_manifest()["status"] == "complete"
    local = run(data, tmp_path / "local")
    assert numbers(partial.path) == numbers(local.path)


def test_the_per_cell_time_limit_holds_inside_a_ray_worker(ray_instance, tmp_path):
    # 8 batches of 0.3 s each: the warm-up's one batch fits in the limit, the cell's eight do not
    data = small(time_limit=1.0, batch_size=8, grid=grid(sampler=["sleepy"], steps=[2]))
    res = run(data, tmp_path / "r", executor="ray")
    rec = RunDir(res.path).read_cells()[0]
    assert rec["status"] == "failed" and "time limit of 1 s exceeded" in rec["error"]
    assert rec["time_limit"] == 1.0 and rec["worker"]["executor"] == "ray"
