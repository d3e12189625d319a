"""The Ray executor on a local instance with 2 CPU workers: the local executor's numbers, cell by cell;
a worker killed mid-cell is retried; a plugin error fails its cell only; Ctrl-C and --resume."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffbench.executors.ray import RayExecutor
from diffbench.results import RunDir
from diffbench.runner import RunInterrupted, run_suite
from diffbench.suite import parse_suite
from rayhelpers import executor_registry
from runhelpers import grid, small

ROOT = Path(__file__).resolve().parents[2]


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
    code = ("import sys, diffbench, diffbench.runner, diffbench.cli, diffbench.executors.shard; "
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
    data.update(metrics=["fid", "kid"], num_samples=200, batch_size=100, grid={"sampler": ["ddim", "heun"], "scheduler": ["karras"],
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


# --- a shared run directory on Ray; unreachable addresses; SIGTERM (issue 19 items 7 and 8) ----------------------

def test_shards_of_a_suite_with_rules_on_ray_merge_into_the_local_run(ray_instance, tmp_path):
    from diffbench.executors.shard import merge
    from test_shard import ruled

    local = run(ruled(), tmp_path / "local")
    out = tmp_path / "shared"
    halves = [run(ruled(), out, executor="ray", shard=f"{i}/2") for i in (1, 2)]
    assert sum(h.ran for h in halves) == len(numbers(local.path)) == 11
    assert merge(out, executor_registry(), draw=False).missing == [] and numbers(out) == numbers(local.path)


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then closed."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_where_no_cluster_listens_fails_at_once_in_one_line(tmp_path, scheme):
    pytest.importorskip("ray")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small(grid=grid(sampler=["euler"], steps=[2]))))
    address = f"{scheme}127.0.0.1:{closed_port()}"
    # in a subprocess with a deadline: Ray's own connect would retry for minutes (a hang fails the test)
    command = [sys.executable, "-c", "from diffbench.cli import main; main()", "run", str(path),
               "--out", str(tmp_path / "r"), "--executor", "ray", "--address", address, "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"diffbench: error: --address {address}: no Ray cluster answers there (")
    assert not (tmp_path / "r").exists()


DRIVER = """
import sys
sys.path[:0] = {paths!r}
from diffbench import registry as registry_module
from rayhelpers import executor_registry
registry_module._default = executor_registry()
from diffbench.cli import main
main({args!r})
"""


def test_sigterm_stops_a_ray_run_and_its_workers_keeping_finished_cells(tmp_path):
    pytest.importorskip("ray")
    import signal
    import time

    from diffbench.results import lock_is_held

    marker = tmp_path / "workers"
    marker.mkdir()
    blocked = {"name": "blocks", "options": {"marker": str(marker)}}
    path = tmp_path / "s.yaml"
    data = small(num_samples=8, batch_size=8, grid=grid(sampler=["euler", blocked], steps=[2]))
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "r"
    here = Path(__file__).resolve().parent
    script = DRIVER.format(paths=[str(ROOT), str(here), str(here.parent)],
                           args=["run", str(path), "--out", str(out), "--executor", "ray", "--no-progress",
                                 "--cache-dir", str(tmp_path / "cache")])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(here), str(here.parent)])}
    driver = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(marker.iterdir()) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        workers = [int(p.name) for p in marker.iterdir()]
        assert workers, f"no worker started the blocking cell: {driver.stderr.read() if driver.poll() else ''}"
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 143, stderr
    assert "terminated (SIGTERM):" in stderr and "finish with --resume" in stderr
    manifest = RunDir(out).read_manifest()
    assert manifest["status"] == "interrupted" and not lock_is_held(out / ".lock")
    deadline = time.monotonic() + 60
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if os.path.exists(f"/proc/{pid}") and
                 "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[:1]]
        time.sleep(0.5)
    assert not alive, f"Ray workers {alive} still running after the driver stopped"


def test_sigterm_stops_a_local_run_keeping_finished_cells(tmp_path):
    """The local executor too: SIGTERM inside a cell closes the manifest as 'interrupted', exit 143, lock released."""
    import signal
    import time

    from diffbench.results import lock_is_held

    marker = tmp_path / "blocked"
    marker.mkdir()
    # call 1 is the option check before the run starts; call 2 is the cell (euler's cell runs first)
    blocked = {"name": "blocks", "options": {"marker": str(marker), "after": 1}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small(num_samples=8, batch_size=8, grid=grid(sampler=["euler", blocked], steps=[2]))))
    out = tmp_path / "r"
    here = Path(__file__).resolve().parent
    script = DRIVER.format(paths=[str(ROOT), str(here), str(here.parent)],
                           args=["run", str(path), "--out", str(out), "--no-progress", "--cache-dir", str(tmp_path)])
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(marker.iterdir()) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(marker.iterdir()), "the blocking cell never started"
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 143 and stderr.endswith("terminated (SIGTERM): 1 of 2 cells kept in "
                                                        f"{out}; finish with --resume\n"), stderr
    assert RunDir(out).read_manifest()["status"] == "interrupted" and not lock_is_held(out / ".lock")
    assert [r["sampler"] for r in RunDir(out).read_cells()] == ["euler"]
