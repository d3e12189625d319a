"""A history of runs in one SQLite file, and the commits where a series stepped.

``add`` appends a run directory's cells (commit, branch, date, machine, device, versions; per cell NFE,
time, harness, drift fingerprint and every metric with its standard error). ``series`` reads them back
per (cell, metric) in the order the runs were added, and ``change_points`` finds where a series stepped:

Binary segmentation with a two-sample z test. For a window of values v_i with standard errors s_i, every
split into a left and a right part (each at least ``MIN_SEGMENT`` long) is scored by

    z = |mean_L − mean_R| / √(var_L + var_R),   var = max(Σ s_i² / n², scatter² / n)

the difference of the two parts' means over its standard error, where each mean's variance is the larger
of what the recorded standard errors say and what the values' own scatter says (so a metric recorded
without s.e., or whose s.e. understates run-to-run noise, is judged by its scatter). The best split is a
step when z > ``Z_STEP`` (default 4: with tens of candidate splits per series, a false step in a series of
pure noise is rare, ~1e-4 per candidate, and a real step of several standard errors is still found);
both parts are then searched again. This is the classic binary segmentation (Scott & Knott 1974; Bencher
and asv use related step detectors) with the test statistic a reader of diffbench already knows from
``compare``: combined standard errors.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import json
import math
import os
import platform
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffbench import drift
from diffbench.results import STATUS_OK, find_run

SCHEMA_VERSION = 1
DEFAULT_DB = "diffbench-history.sqlite"
Z_STEP = 4.0
MIN_SEGMENT = 2

# Columns of each table: name → SQL type. A later schema adds columns here (and a migration step if a value
# must be derived); opening an older file adds the missing columns, so old rows stay readable (NULL there).
TABLES: dict[str, dict[str, str]] = {
    "runs": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "path": "TEXT", "suite": "TEXT", "commit_sha": "TEXT",
             "dirty": "INTEGER", "branch": "TEXT", "date": "TEXT", "added": "TEXT", "machine": "TEXT",
             "device": "TEXT", "versions": "TEXT", "record_schema": "INTEGER"},
    "cells": {"run_id": "INTEGER", "cell_id": "TEXT", "label": "TEXT", "status": "TEXT", "steps": "INTEGER",
              "nfe": "REAL", "sample_seconds": "REAL", "seconds_per_sample": "REAL", "harness_ratio": "REAL",
              "harness_seconds_per_call": "REAL", "drift_fingerprint": "TEXT"},
    "metric_values": {"run_id": "INTEGER", "cell_id": "TEXT", "metric": "TEXT", "value": "REAL", "se": "REAL",
                      "higher_is_better": "INTEGER"},
}
CELL_SERIES = {"nfe": "nfe", "seconds_per_sample": "seconds_per_sample", "harness": "harness_ratio"}


class HistoryError(ValueError):
    """A history database or run that cannot be used; the message is one line."""


def connect(db: str | Path) -> sqlite3.Connection:
    """Open (creating or upgrading) a history database; HistoryError for a file that is not one, or is newer."""
    try:
        con = sqlite3.connect(str(db))
        con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise HistoryError(f"{db}: history schema {version} is newer than this diffbench's ({SCHEMA_VERSION}); "
                               "upgrade diffbench to read it")
        for table, columns in TABLES.items():
            con.execute(f"CREATE TABLE IF NOT EXISTS {table} ("
                        + ", ".join(f"{c} {t}" for c, t in columns.items()) + ")")
            have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
            for name, sql_type in columns.items():
                if name not in have:  # a column a later schema added: old rows read NULL
                    con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type.replace(' PRIMARY KEY', '')}")
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        con.commit()
        return con
    except sqlite3.DatabaseError as exc:
        raise HistoryError(f"{db}: not a diffbench history database ({exc})") from None


def _label(rec: dict[str, Any]) -> str:
    text = f"{rec.get('model')} {rec.get('sampler')} {rec.get('scheduler')} n={rec.get('steps')}"
    return text + (f" w={rec['guidance']:g}" if rec.get("guidance") is not None else "")


def _branch() -> str | None:
    for var in ("GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_REF_NAME"):
        if os.environ.get(var):
            return os.environ[var]
    return None


def add(run_dir: str | Path, db: str | Path, *, branch: str | None = None, machine: str | None = None) -> int:
    """Append a finished run's cells to the history ``db``; returns the run's id in the database."""
    try:
        run = find_run(run_dir)
        manifest, records = run.read_manifest(), run.read_cells()
    except (FileNotFoundError, ValueError) as exc:
        raise HistoryError(str(exc)) from None
    if not records:
        raise HistoryError(f"{run.path}: no cell records")
    git = manifest.get("git") or {}
    con = connect(db)
    with con:
        cur = con.execute(
            "INSERT INTO runs (path, suite, commit_sha, dirty, branch, date, added, machine, device, versions, "
            "record_schema) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (str(run.path), manifest.get("suite"), git.get("sha"), git.get("dirty"),
             branch or git.get("branch") or _branch(), manifest.get("started"),
             dt.datetime.now().astimezone().isoformat(timespec="seconds"),
             machine or manifest.get("machine") or platform.node(),
             " ".join(str(v) for v in (manifest.get("device"), manifest.get("device_name")) if v),
             json.dumps({**(manifest.get("versions") or {}), "plugins": manifest.get("plugins") or {}}),
             manifest.get("schema_version", 1)))
        run_id = cur.lastrowid
        for rec in sorted(records, key=lambda r: r.get("index", 0)):
            harness = rec.get("harness") or {}
            fp = rec.get("drift_fingerprint")
            con.execute("INSERT INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (run_id, rec["cell_id"], _label(rec), rec.get("status"), rec.get("steps"), rec.get("nfe"),
                         rec.get("sample_seconds"), rec.get("seconds_per_sample"), harness.get("ratio"),
                         rec.get("harness_seconds_per_call"), json.dumps(fp) if fp else None))
            if rec.get("status") != STATUS_OK:
                continue
            metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
            for name, m in metrics.items():
                if not isinstance(m, dict):
                    continue
                con.execute("INSERT INTO metric_values VALUES (?, ?, ?, ?, ?, ?)",
                            (run_id, rec["cell_id"], name, m.get("value"), m.get("uncertainty"),
                             m.get("higher_is_better")))
    con.close()
    return run_id


@dataclass
class Point:
    run_id: int
    commit: str | None
    date: str | None
    branch: str | None
    value: float
    se: float | None


@dataclass
class Step:
    """A change point: the series moved from ``before`` to ``after`` at run ``run_id`` (the first run after)."""

    index: int
    run_id: int
    commit: str | None
    date: str | None
    before: float
    after: float
    z: float


@dataclass
class Series:
    cell: str
    label: str
    metric: str
    points: list[Point]
    steps: list[Step] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"cell": self.cell, "label": self.label, "metric": self.metric,
                "points": [asdict(p) for p in self.points], "steps": [asdict(s) for s in self.steps]}


def _mean_and_variance(points: list[Point]) -> tuple[float, float]:
    n = len(points)
    values = [p.value for p in points]
    mean = sum(values) / n
    recorded = sum(p.se ** 2 for p in points if p.se is not None) / n ** 2
    scatter = sum((v - mean) ** 2 for v in values) / (n - 1) / n if n > 1 else 0.0
    return mean, max(recorded, scatter)


def split_z(points: list[Point], k: int) -> float:
    """The two-sample z of splitting ``points`` before index ``k`` (module docstring)."""
    (ml, vl), (mr, vr) = _mean_and_variance(points[:k]), _mean_and_variance(points[k:])
    if ml == mr:
        return 0.0
    return abs(ml - mr) / math.sqrt(vl + vr) if vl + vr > 0 else math.inf


def change_points(points: list[Point], z_step: float = Z_STEP, min_segment: int = MIN_SEGMENT) -> list[Step]:
    """Binary segmentation: where the series stepped, with the means before and after and the z of the split."""
    steps: list[Step] = []

    def search(lo: int, hi: int) -> None:
        window = points[lo:hi]
        candidates = [(split_z(window, k), k) for k in range(min_segment, len(window) - min_segment + 1)]
        if not candidates:
            return
        z, k = max(candidates, key=lambda c: (c[0], -c[1]))
        if z <= z_step:
            return
        first = window[k]
        steps.append(Step(lo + k, first.run_id, first.commit, first.date, _mean_and_variance(window[:k])[0],
                          _mean_and_variance(window[k:])[0], z))
        search(lo, lo + k)
        search(lo + k, hi)

    search(0, len(points))
    return sorted(steps, key=lambda s: s.index)


def series(db: str | Path, cell: str | None = None, metric: str | None = None, *, z_step: float = Z_STEP,
           min_segment: int = MIN_SEGMENT) -> list[Series]:
    """Every (cell, metric) series in ``db`` (cells matching the glob ``cell`` by label or id, metric named
    ``metric``), runs in the order they were added, with their change points. 'drift' is each run's relative
    RMS change of the first samples against the previous run's."""
    if not Path(db).is_file():
        raise HistoryError(f"{db}: no history database (create one with 'diffbench history add RUN --db {db}')")
    con = connect(db)
    runs = {r[0]: r[1:] for r in con.execute("SELECT id, commit_sha, date, branch FROM runs")}
    rows: dict[tuple[str, str], list[tuple[int, float, float | None]]] = {}
    labels: dict[str, str] = {}
    for run_id, cid, name, value, se in con.execute(
            "SELECT run_id, cell_id, metric, value, se FROM metric_values ORDER BY run_id"):
        rows.setdefault((cid, name), []).append((run_id, value, se))
    previous: dict[str, dict[str, Any]] = {}
    for run_id, cid, label, status, *values, fp in con.execute(
            "SELECT run_id, cell_id, label, status, " + ", ".join(CELL_SERIES.values())
            + ", drift_fingerprint FROM cells ORDER BY run_id"):
        labels[cid] = label
        if status != STATUS_OK:
            continue
        for name, value in zip(CELL_SERIES, values):
            if value is not None:
                rows.setdefault((cid, name), []).append((run_id, value, None))
        if fp:
            fingerprint = json.loads(fp)
            if cid in previous:
                try:
                    rows.setdefault((cid, "drift"), []).append(
                        (run_id, drift.relative_rms_change(previous[cid], fingerprint), None))
                except ValueError:
                    pass
            previous[cid] = fingerprint
    con.close()
    out = []
    for (cid, name), values in sorted(rows.items(), key=lambda kv: (labels.get(kv[0][0], kv[0][0]), kv[0][1])):
        label = labels.get(cid, cid)
        if cell and not (fnmatch.fnmatch(label, cell) or fnmatch.fnmatch(cid, cell)):
            continue
        if metric and name != metric:
            continue
        points = [Point(run_id, *runs[run_id][:2], runs[run_id][2], v, se) for run_id, v, se in values
                  if v is not None and math.isfinite(v)]
        out.append(Series(cid, label, name, points, change_points(points, z_step, min_segment)))
    return out


def _fmt(value: float, se: float | None) -> str:
    return f"{value:.6g}" + (f" ± {se:.2g}" if se is not None else "")


def text(found: list[Series]) -> str:
    """Each series: one line per run (commit, date, value ± s.e.), then the steps found."""
    if not found:
        return "no series match"
    lines = []
    for s in found:
        lines.append(f"{s.label} · {s.metric}")
        for p in s.points:
            lines.append(f"  #{p.run_id:<4} {(p.commit or '?')[:10]:<10}  {p.date or '?':<25}  {_fmt(p.value, p.se)}")
        if s.steps:
            lines += [f"  step at run #{st.run_id} (commit {(st.commit or '?')[:10]}, {st.date}): "
                      f"{st.before:.6g} → {st.after:.6g} (z = {st.z:.3g})" for st in s.steps]
        else:
            lines.append(f"  no step (z ≤ {Z_STEP:g})" if len(s.points) >= 2 * MIN_SEGMENT
                         else f"  too few runs for a step ({len(s.points)} < {2 * MIN_SEGMENT})")
    return "\n".join(lines)


def plot(found: list[Series], path: str | Path) -> Path:
    """One panel per metric: each cell's series against run number, ±1 s.e. bars, steps as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({s.metric for s in found})
    if not metrics:
        raise HistoryError("no series to plot")
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.6 * len(metrics)), squeeze=False)
    for ax, name in zip(axes[:, 0], metrics):
        for s in (s for s in found if s.metric == name):
            xs = [p.run_id for p in s.points]
            line = ax.errorbar(xs, [p.value for p in s.points], yerr=[p.se or 0.0 for p in s.points], marker="o",
                               ms=3, capsize=2, label=s.label)
            for st in s.steps:
                ax.axvline(st.run_id - 0.5, color=line[0].get_color(), ls="--", lw=1)
        ax.set_title(name)
        ax.set_xlabel("run (order added)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
