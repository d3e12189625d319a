"""diffbench history: runs appended to SQLite, series read back, a planted step found at the run that made it."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from diffbench import drift, history
from diffbench.cli import cli
from diffbench.history import Point
from diffbench.results import RunDir

JITTER = [0.03, -0.05, 0.02, -0.01, 0.04, -0.03, 0.01, -0.02]  # within the recorded s.e. of 0.1


def make_run(path: Path, i: int, fid: float, *, shift: float = 0.0) -> Path:
    """Run ``i`` of a history: commit sha<i>, one cell with fid ± 0.1, NFE 10, a drift fingerprint."""
    run = RunDir(path)
    run.write_manifest({"suite": "smoke", "status": "complete", "schema_version": 2, "started": f"2026-12-0{i + 1}",
                        "git": {"sha": f"sha{i}" + "0" * 36, "dirty": False, "branch": "main"},
                        "device": "cpu", "versions": {"torch": "2"}})
    samples = torch.linspace(-1, 1, 64).reshape(4, 16) + shift
    run.write_cell({"cell_id": "m__euler__karras__n10__gnone-abc", "index": 0, "model": "m", "sampler": "euler",
                    "scheduler": "karras", "steps": 10, "guidance": None, "status": "ok", "nfe": 10.0,
                    "sample_seconds": 1.0 + 0.01 * i, "seconds_per_sample": 0.01,
                    "harness": {"ratio": 0.05}, "drift_fingerprint": drift.fingerprint(samples),
                    "metrics": {"fid": {"value": fid, "uncertainty": 0.1, "higher_is_better": False}}})
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Eight runs; fid steps up by 1.0 (10 s.e.) at run index 5 (commit sha5), samples move at index 3."""
    path = tmp_path / "h.sqlite"
    for i, j in enumerate(JITTER):
        run = make_run(tmp_path / f"run{i}", i, 10.0 + j + (1.0 if i >= 5 else 0.0), shift=0.5 if i >= 3 else 0.0)
        history.add(run, path)
    return path


def test_planted_step_is_found_at_the_run_that_made_it(db):
    found = {s.metric: s for s in history.series(db)}
    assert set(found) == {"fid", "nfe", "seconds_per_sample", "harness", "drift"}
    fid = found["fid"]
    assert [p.commit[:4] for p in fid.points] == [f"sha{i}" for i in range(8)]
    assert [p.se for p in fid.points] == [0.1] * 8
    [step] = fid.steps
    assert (step.commit[:4], step.run_id) == ("sha5", 6)
    assert step.before == pytest.approx(10.0 + sum(JITTER[:5]) / 5)
    assert step.after == pytest.approx(11.0 + sum(JITTER[5:]) / 3)
    assert not found["nfe"].steps and not found["harness"].steps
    # drift against the previous run: 0 except where the samples moved (sha3): one outlier, not a step
    assert [p.value == 0 for p in found["drift"].points] == [True, True, False, True, True, True, True]


def test_series_without_a_step_has_none():
    noise = [Point(i, f"c{i}", None, None, 5.0 + j, 0.1) for i, j in enumerate(JITTER)]
    assert history.change_points(noise) == []
    stepped = noise[:4] + [Point(p.run_id, p.commit, None, None, p.value + 0.5, 0.1) for p in noise[4:]]
    assert [s.commit for s in history.change_points(stepped)] == ["c4"]
    # without recorded s.e., the values' own scatter judges: a step of 0.5 against jitter of ~0.03
    bare = [Point(p.run_id, p.commit, None, None, p.value, None) for p in stepped]
    assert [s.commit for s in history.change_points(bare)] == ["c4"]
    # two steps: binary segmentation finds both
    two = stepped[:6] + [Point(p.run_id, p.commit, None, None, p.value - 2.0, 0.1) for p in stepped[6:]]
    two += [Point(8 + i, f"c{8 + i}", None, None, 3.5 + j, 0.1) for i, j in enumerate(JITTER[:3])]
    assert [s.commit for s in history.change_points(two)] == ["c4", "c6"]


def test_cli_add_show_json_plot_and_filters(tmp_path, db):
    runner = CliRunner()
    out = runner.invoke(cli, ["history", "add", str(make_run(tmp_path / "run8", 8, 11.0)), "--db", str(db)],
                        catch_exceptions=False)
    assert out.exit_code == 0 and "run #9 added" in out.stdout
    shown = runner.invoke(cli, ["history", "show", "--db", str(db), "--metric", "fid", "--cell", "m euler*",
                                "--plot", str(tmp_path / "trend.png")], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith("m euler karras n=10 · fid\n")
    assert "step at run #6 (commit sha5000000, 2026-12-06): 10.006 → 10.99 (z = 14.7)" in shown.stdout
    assert (tmp_path / "trend.png").stat().st_size > 1000
    data = json.loads(runner.invoke(cli, ["history", "show", "--db", str(db), "--json"]).stdout)
    assert {d["metric"] for d in data} == {"fid", "nfe", "seconds_per_sample", "harness", "drift"}
    assert runner.invoke(cli, ["history", "show", "--db", str(db), "--cell", "nothing*"]).stdout == "no series match\n"
    missing = runner.invoke(cli, ["history", "show", "--db", str(tmp_path / "none.sqlite")])
    assert missing.exit_code == 2 and "no history database" in missing.stderr


def test_rows_of_an_older_schema_stay_readable(tmp_path):
    """A database written before some columns existed: opening adds them; its rows read with NULLs there."""
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        INSERT INTO meta VALUES ('schema_version', '0');
        CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT, suite TEXT, commit_sha TEXT, date TEXT);
        INSERT INTO runs (path, suite, commit_sha, date) VALUES ('old', 'smoke', 'old0', '2026-01-01');
        CREATE TABLE cells (run_id INTEGER, cell_id TEXT, label TEXT, status TEXT, nfe REAL);
        INSERT INTO cells VALUES (1, 'm__euler__karras__n10__gnone-abc', 'm euler karras n=10', 'ok', 10.0);
        CREATE TABLE metric_values (run_id INTEGER, cell_id TEXT, metric TEXT, value REAL, se REAL);
        INSERT INTO metric_values VALUES (1, 'm__euler__karras__n10__gnone-abc', 'fid', 10.0, 0.1);
    """)
    con.close()
    history.add(make_run(tmp_path / "new", 1, 10.1), path)
    found = {s.metric: s for s in history.series(path)}
    assert [(p.commit[:4], p.value) for p in found["fid"].points] == [("old0", 10.0), ("sha1", 10.1)]
    assert [p.value for p in found["nfe"].points] == [10.0, 10.0]
    assert len(found["harness"].points) == 1  # the old row has no harness figure: NULL, left out
    assert sqlite3.connect(path).execute("SELECT value FROM meta").fetchone()[0] == str(history.SCHEMA_VERSION)


def test_a_newer_or_foreign_database_is_a_one_line_error(tmp_path):
    newer = tmp_path / "newer.sqlite"
    con = sqlite3.connect(newer)
    con.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT); "
                      "INSERT INTO meta VALUES ('schema_version', '99');")
    con.close()
    with pytest.raises(history.HistoryError, match="schema 99 is newer"):
        history.connect(newer)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(history.HistoryError, match="not a diffbench history database"):
        history.connect(junk)
