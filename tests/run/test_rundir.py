"""Atomic writes, cell records → cells.csv, run-directory lookup."""

from __future__ import annotations

import json
import math
import os

import pytest
from runhelpers import record

from diffbench.run import rundir as results
from diffbench.run.rundir import (
    CellsCsv,
    RunDir,
    RunDirError,
    cells_frame,
    find_run,
    metric_names,
    write_atomic,
)


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


def test_cells_frame_columns_and_order():
    frame = cells_frame([record(1, fid=3.0, kid=0.5), record(0, fid=4.0), record(2, status="failed")])
    assert list(frame.columns) == [
        "suite",
        "cell_id",
        "model",
        "sampler",
        "scheduler",
        "steps",
        "nfe",
        "declared_nfe",
        "guidance",
        "seeds",
        "num_samples",
        "fid",
        "fid_se",
        "kid",
        "kid_se",
        "sample_seconds",
        "seconds_per_sample",
        "counted_seconds_per_sample",
        "network_share",
        "status",
        "error",
    ]
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


def test_cells_csv_appends_a_row_per_cell_and_rewrites_only_for_a_new_column(tmp_path):
    run = RunDir(tmp_path / "run")
    table = CellsCsv(run.csv_path)
    finished = [record(2, fid=3.0), record(0, fid=4.0), record(3, status="failed"), record(1, fid=5.0, kid=0.5)]
    before, inode, rewrites = b"", None, 0
    for n, rec in enumerate(finished, 1):
        table.add(rec)
        text = run.csv_path.read_bytes()
        frame = run.read_csv()  # parseable after every cell
        assert list(frame["cell_id"]) == [r["cell_id"] for r in finished[:n]]  # completion order
        if n > 1 and run.csv_path.stat().st_ino == inode:  # appended: the old file is untouched, one line more
            assert text.startswith(before) and text[len(before) :].count(b"\n") == 1
        else:
            rewrites += 1
        before, inode = text, run.csv_path.stat().st_ino
    # the first row writes the file; c3 (no metrics: its columns are the file's) appends; c1's kid rewrites
    assert rewrites == 2
    assert metric_names(frame) == ["fid", "kid"]
    assert frame["kid"].isna().tolist() == [True, True, True, False]
    assert frame.loc[2, "status"] == "failed" and math.isnan(frame.loc[2, "fid"])
    assert frame.loc[0, "fid"] == 3.0 and frame.loc[3, "kid_se"] == pytest.approx(0.05)
    # closing rewrites it in grid order: the full rebuild
    closed = run.write_csv(finished)
    assert list(closed["cell_id"]) == ["c0", "c1", "c2", "c3"]
    assert run.csv_path.read_text() == cells_frame(finished).to_csv(index=False)


def test_cells_csv_starts_from_the_kept_cells_and_rewrites_a_cell_that_finishes_again(tmp_path):
    run = RunDir(tmp_path / "run")
    table = CellsCsv(run.csv_path, [record(1, fid=2.0), record(0, fid=1.0)])
    table.add(record(3, fid=4.0))
    assert list(run.read_csv()["cell_id"]) == ["c0", "c1", "c3"]
    table.add(record(2, fid=3.0))
    table.add(record(0, fid=9.0))  # the same cell again: replaced, not a second row
    frame = run.read_csv()
    assert list(frame["cell_id"]) == ["c1", "c3", "c2", "c0"] and frame["fid"].tolist() == [2.0, 4.0, 3.0, 9.0]


def test_find_run_takes_a_run_or_the_newest_in_a_folder(tmp_path):
    for name in ("20240101-000000", "20250101-000000"):
        RunDir(tmp_path / "suite" / name).write_manifest({"suite": "suite"})
    assert find_run(tmp_path / "suite").path.name == "20250101-000000"
    assert find_run(tmp_path / "suite" / "20240101-000000").path.name == "20240101-000000"
    with pytest.raises(FileNotFoundError, match="not a diffbench run directory"):
        find_run(tmp_path / "nothing")


def test_copy_results_leaves_out_locks_and_temporaries(tmp_path):
    from diffbench.run.rundir import copy_results

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
