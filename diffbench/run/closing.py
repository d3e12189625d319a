"""Closing a run: cells.csv rewritten in grid order, and its manifest's status, end, metric directions, cell
counts and cell placements.

The one way a run is closed (``close_run``), whether its cells ran here (local executor), on Ray
workers, or in shards that ``diffbench report`` merges: every figure comes from the cell records of
the suite. While a run goes, cells.csv holds its rows in completion order (``rundir.CellsCsv``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from diffbench.run.rundir import STATUS_FAILED, STATUS_OK, RunDir, cells_frame


def placement(record: dict[str, Any]) -> dict[str, Any]:
    """Where a cell ran, for the manifest: executor, host and device (from the record's ``worker``)."""
    worker = record.get("worker") or {}
    return {"executor": worker.get("executor"), "host": worker.get("host"), "device": worker.get("device")}


def metric_directions(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Metric value name → whether higher is better and how it was estimated, as the records state them."""
    values: dict[str, dict[str, Any]] = {}
    for r in records:
        for name, m in r.get("metrics", {}).items():
            values.setdefault(name, {"higher_is_better": m.get("higher_is_better"), "method": m.get("method")})
    return values


def close_run(
    run: RunDir,
    manifest: dict[str, Any],
    records: list[dict[str, Any]],
    *,
    total: int,
    status: str,
    finished: str | None,
    wall_seconds: float | None,
    metric_info: dict[str, Any],
    missing: list[str] | None = None,
) -> pd.DataFrame:
    """Close ``run``: cells.csv rebuilt from ``records`` in grid order (atomically; only where the run directory
    owns the table: a shard leaves it to the merge) and ``manifest`` written closed with ``status``: end time,
    wall-clock seconds, metric directions, cell counts (``missing``: cells no shard finished, for a merge) and
    where each recorded cell ran. Returns the cells frame."""
    frame = run.write_csv(records) if run.owns_table else cells_frame(records)
    counts = {
        "total": total,
        "ok": int((frame["status"] == STATUS_OK).sum()),
        "failed": int((frame["status"] == STATUS_FAILED).sum()),
    }
    if missing is not None:
        counts["missing"] = len(missing)
    executor = {**(manifest.get("executor") or {}), "cells": {r["cell_id"]: placement(r) for r in records}}
    run.write_manifest(
        {
            **manifest,
            "status": status,
            "finished": finished,
            "wall_seconds": wall_seconds,
            "metric_info": metric_info,
            "metric_values": metric_directions(records),
            "cells": counts,
            "executor": executor,
        }
    )
    return frame
