"""Atomic writes, cell records → cells.csv, run-directory lookup."""
from __future__ import annotations

import json
import math
import os

import pytest

from diffbench import results
from diffbench.results import RunDir, RunDirError, cells_frame, find_run, metric_names, write_atomic


def test_write_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_atomic(path, "old")
    write_atomic(path, b"new")
    assert path.read_text() == "new"
    assert os.listdir(path.parent) == ["a.json"]


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch, exc):
    path = tmp_path / "cell.json"
    write_atomic(path, "complete old record")

    def fail(*_):
        raise exc

    monkeypatch.setattr(results.os, "replace", fail)
    with pytest.raises(type(exc)):
        write_atomic(path, "x" * 100_000)
    assert path.read_text() == "complete old record"
    assert os.listdir(tmp_path) == ["cell.json"]


def test_interrupted_write_never_creates_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "new.json"
    real_fsync = os.fsync

    def interrupted(fd):
        real_fsync(fd)
        raise KeyboardInterrupt  # Ctrl-C after the bytes hit the temporary, before the rename

    monkeypatch.setattr(results.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "data")
    assert os.listdir(tmp_path) == []


def record(i, status="ok", **metrics):
    return {"index": i, "cell_id": f"c{i}", "suite": "s", "model": "gmm", "sampler": "euler", "scheduler": "karras",
            "steps": 2 * (i + 1), "nfe": 2.0 * (i + 1), "declared_nfe": 2 * (i + 1), "guidance": None, "seeds": [0, 1],
            "num_samples": 10, "sample_seconds": 1.0, "seconds_per_sample": 0.05, "network_share": 0.9,
            "status": status, "error": None if status == "ok" else "boom",
            "metrics": {k: {"value": v, "uncertainty": v / 10, "method": "m"} for k, v in metrics.items()}}


def test_cells_frame_columns_and_order():
    frame = cells_frame([record(1, fid=3.0, kid=0.5), record(0, fid=4.0), record(2, status="failed")])
    assert list(frame.columns) == [
        "suite", "cell_id", "model", "sampler", "scheduler", "steps", "nfe", "declared_nfe", "guidance", "seeds",
        "num_samples", "fid", "fid_se", "kid", "kid_se",
        "sample_seconds", "seconds_per_sample", "counted_seconds_per_sample", "network_share", "status", "error"]
    assert list(frame["cell_id"]) == ["c0", "c1", "c2"]
    assert frame.loc[0, "seeds"] == "0;1" and frame.loc[1, "kid_se"] == pytest.approx(0.05)
    assert math.isnan(frame.loc[0, "kid"]) and frame.loc[2, "error"] == "boom"
    assert metric_names(frame) == ["fid", "kid"]


def test_run_dir_round_trip_and_strict_json(tmp_path):
    run = RunDir(tmp_path / "run")
    rec = record(0, fid=float("nan"))
    run.write_cell(rec)
    text = run.cell_path("c0").read_text()
    assert json.loads(text)["metrics"]["fid"]["value"] is None  # NaN is not JSON
    assert "NaN" not in text
    run.write_csv()
    back = run.read_csv()
    assert back.loc[0, "cell_id"] == "c0" and back.loc[0, "steps"] == 2


def test_find_run_takes_a_run_or_the_newest_in_a_folder(tmp_path):
    for name in ("20240101-000000", "20250101-000000"):
        RunDir(tmp_path / "suite" / name).write_manifest({"suite": "suite"})
    assert find_run(tmp_path / "suite").path.name == "20250101-000000"
    assert find_run(tmp_path / "suite" / "20240101-000000").path.name == "20240101-000000"
    with pytest.raises(FileNotFoundError, match="not a diffbench run directory"):
        find_run(tmp_path / "nothing")


def test_copy_results_leaves_out_locks_and_temporaries(tmp_path):
    from diffbench.results import copy_results

    run = RunDir(tmp_path / "run")
    run.write_manifest({"suite": "s", "status": "complete"})
    run.write_cell({"cell_id": "a"})
    with run.lock():
        (run.path / ".lock-shard-1").write_text("1\n")
        (run.cells_dir / ".a.json.x.tmp.json").write_text("{")
        copied = copy_results(run.path, tmp_path / "baseline")
    assert sorted(map(str, copied)) == ["cells/a.json", "manifest.json"]
    assert sorted(p.name for p in (tmp_path / "baseline").rglob("*")) == ["a.json", "cells", "manifest.json"]
    with pytest.raises(RunDirError, match="exists; remove it first"):
        copy_results(run.path, tmp_path / "baseline")
    run.write_manifest({"suite": "s", "status": "running"})
    with pytest.raises(RunDirError, match="not 'complete'"):
        copy_results(run.path, tmp_path / "other")
