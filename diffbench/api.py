"""Run a suite, merge shards, draw a run's report: the entry points above running and analysis.

``diffbench.run`` computes and records cells and never imports ``diffbench.analysis``; these
functions run or merge, then draw the plots and write report.md from what was recorded.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from diffbench.analysis import plots, report
from diffbench.run import runner, shards
from diffbench.run.rundir import RunDir
from diffbench.run.runner import RunInterrupted, RunResult
from diffbench.run.shards import Merged


def draw_report(
    run: RunDir, frame: pd.DataFrame | None = None, records: list[dict[str, Any]] | None = None, *, draw: bool = True
) -> Path:
    """Draw the run's plots (``draw``) and write its report.md; returns the report's path.

    ``frame`` and ``records`` default to the run's cells.csv and cell records."""
    frame = run.read_csv() if frame is None else frame
    files = plots.make_plots(frame, run.path, report.directions(run.read_manifest())) if draw and len(frame) else []
    return report.write_report(run, frame, files, records)


def _report_after_run(
    run: RunDir, frame: pd.DataFrame | None, records: list[dict[str, Any]] | None, draw: bool
) -> None:
    """``draw_report`` after a run or merge: its results are on disk already, so a failure only warns."""
    try:
        draw_report(run, frame, records, draw=draw)
    except Exception as exc:  # a plotting bug must not hide computed results
        print(f"diffbench: warning: plots or report failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def run_suite(suite: Any, out_dir: str | Path | None = None, *, draw: bool = True, **options: Any) -> RunResult:
    """Run ``suite`` (``diffbench.run.runner.run_suite``'s arguments and options), then write its report.

    ``draw=False`` skips the plots (report.md is still written). A shard leaves plots and report to the
    merge (:func:`merge_shards`). On Ctrl-C the report covers the cells kept, then RunInterrupted is raised."""
    try:
        result = runner.run_suite(suite, out_dir, **options)
    except RunInterrupted as exc:
        if exc.run.owns_table:
            _report_after_run(exc.run, None, exc.records, draw)
        raise
    if result.run.owns_table:
        _report_after_run(result.run, result.cells, result.records, draw)
    return result


def merge_shards(path: str | Path, registry: Any = None, *, draw: bool = True) -> Merged:
    """Merge a sharded run (``diffbench.run.shards.merge``), then draw its plots and write report.md."""
    merged = shards.merge(path, registry)
    _report_after_run(merged.run, merged.frame, merged.records, draw)
    return merged
