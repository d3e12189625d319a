"""The local executor: scoring overlapped with the next cell's sampling gives the records of the serial order."""

from __future__ import annotations

import time

import pytest
import torch
from runhelpers import grid, small, test_registry

from diffbench.api import run_suite
from diffbench.run.executors.local import LocalExecutor, available_cores
from diffbench.run.rundir import RunDir
from diffbench.run.suite import parse_suite

# what differs between two runs of the same cells whatever the order: times, dates, where it ran
VOLATILE = {
    "started",
    "finished",
    "sample_seconds",
    "seconds_per_sample",
    "network_seconds",
    "network_share",
    "metric_seconds",
    "network_seconds_per_call",
    "harness_seconds_per_call",
    "worker",
    "traceback",
    "harness",
    "timing",
    "counted_seconds_per_sample",
}  # timing probes and figures built from them


def _run(data, tmp_path, name, executor, registry=None):
    """``data`` run quietly into ``tmp_path / name`` by ``executor`` (the test plugins' registry by default)."""
    registry = registry or test_registry()[0]
    return run_suite(
        parse_suite(data, registry),
        tmp_path / name,
        registry=registry,
        progress=False,
        cache_dir=tmp_path / "cache",
        draw=False,
        executor=executor,
    )


def _records(path):
    out = {}
    for rec in RunDir(path).read_cells():
        rec = {k: v for k, v in rec.items() if k not in VOLATILE}
        rec["per_seed"] = [{k: v for k, v in s.items() if k not in VOLATILE} for s in rec["per_seed"]]
        out[rec["cell_id"]] = rec
    return out


def test_overlapped_scoring_and_scoring_beside_the_probe_give_the_records_of_the_serial_order(tmp_path):
    data = small(
        metrics=["mean-norm", "trajectory-error", "solver-error"],
        num_samples=16,
        batch_size=8,
        seeds=[0, 1],
        grid=grid(sampler=["euler", "heun", "ddpm", "broken"], steps=[2, 4]),
    )
    runs = {}
    for name, overlap, beside in (("serial", False, False), ("overlap", True, None), ("beside", False, True)):
        result = _run(data, tmp_path, name, LocalExecutor(overlap=overlap, probe_beside=beside))
        runs[name] = _records(result.path)
        manifest = RunDir(result.path).read_manifest()
        assert manifest["executor"]["overlap_scoring"] is overlap
        assert manifest["executor"]["probe_beside_scoring"] is (name == "beside")
    serial = runs["serial"]
    assert len(serial) == 8 and sum(r["status"] == "failed" for r in serial.values()) == 2  # broken fails its own
    for name in ("overlap", "beside"):
        assert runs[name].keys() == serial.keys()
        for cell_id, rec in serial.items():
            assert runs[name][cell_id] == rec, (name, cell_id)


def test_overlap_is_on_by_default_only_off_the_cpu():
    class Job:
        models = {"m": type("M", (), {"device": torch.device("cpu")})()}

    executor = LocalExecutor()
    info = executor.start(Job())
    assert info["overlap_scoring"] is False
    assert info["probe_beside_scoring"] is (available_cores() >= 2)


@pytest.mark.parametrize("beside", [False, True])
def test_a_sampler_that_hangs_in_the_harness_probe_fails_its_own_cell_at_the_time_limit(tmp_path, beside):
    """The probe runs under what is left of the cell's time limit, beside scoring or not: a sampler that
    hangs there fails its cell with the limit's message; the other cells are kept."""
    registry = test_registry()[0]
    calls = []

    def hangs_third_time(denoiser, x, sigmas, *, noise=None):
        """Euler's first step, then nothing; hangs from its third call (warm-up, the cell, the probe's)."""
        calls.append(1)
        if len(calls) >= 3:
            while True:
                time.sleep(0.01)
        for i in range(len(sigmas) - 1):
            x = x + (float(sigmas[i + 1]) - float(sigmas[i])) * (x - denoiser(x, float(sigmas[i]))) / float(sigmas[i])
        return x

    registry.add("sampler", "hangs", hangs_third_time, order=None, nfe=lambda s, **_: len(s) - 1, stochastic=None)
    data = small(time_limit=3, num_samples=32, grid=grid(sampler=["hangs", "euler"], steps=[3]))  # one batch
    result = _run(data, tmp_path, "run", LocalExecutor(probe_beside=beside), registry)
    records = {r["sampler_name"]: r for r in RunDir(result.path).read_cells()}
    assert records["hangs"]["status"] == "failed" and "time limit of 3 s exceeded" in records["hangs"]["error"]
    assert records["hangs"]["sample_seconds"] > 0  # what its sampling cost is kept
    assert records["euler"]["status"] == "ok" and records["euler"]["harness"]["ratio"] > 0
