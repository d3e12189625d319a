"""Run directories on disk: one JSON record per cell written atomically, cells.csv and manifest.json.

Layout of a run directory::

    manifest.json         what ran, where, with which versions; run status
    suite.json            the validated suite
    cells.csv             one row per cell (rebuilt from cells/ after every cell)
    cells/<cell-id>.json  a cell's record: σ list, timesteps, every option, per-seed numbers
    cells/<cell-id>.png   a sample grid (image models) or scatter (2-D models)
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

STATUS_OK, STATUS_FAILED = "ok", "failed"
ID_COLUMNS = ["suite", "cell_id", "model", "sampler", "scheduler", "steps", "nfe", "declared_nfe", "guidance",
              "seeds", "num_samples"]
TAIL_COLUMNS = ["sample_seconds", "seconds_per_sample", "network_share", "status", "error"]
UNCERTAINTY_SUFFIX = "_se"


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # including KeyboardInterrupt: never leave the temporary behind
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _json_safe(v: Any) -> Any:
    """NaN/inf become null so the files are strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def dumps(obj: Any) -> str:
    return json.dumps(_json_safe(obj), indent=2, default=str) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    write_atomic(path, dumps(obj))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def cell_row(record: dict[str, Any]) -> dict[str, Any]:
    """The cells.csv row of a cell record: identity, cost, each metric with its uncertainty, status."""
    row = {k: record.get(k) for k in ID_COLUMNS}
    row["seeds"] = ";".join(str(s) for s in record.get("seeds", []))
    for name, m in record.get("metrics", {}).items():
        row[name] = m.get("value")
        row[name + UNCERTAINTY_SUFFIX] = m.get("uncertainty")
    row.update({k: record.get(k) for k in TAIL_COLUMNS})
    return row


def cells_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell in grid order; metric columns in order of first appearance."""
    rows = [cell_row(r) for r in sorted(records, key=lambda r: r.get("index", 0))]
    metric_cols: list[str] = []
    for r in rows:
        metric_cols += [k for k in r if k not in ID_COLUMNS + TAIL_COLUMNS and k not in metric_cols]
    return pd.DataFrame(rows, columns=ID_COLUMNS + metric_cols + TAIL_COLUMNS)


def metric_names(frame: pd.DataFrame) -> list[str]:
    """Metric columns of a cells frame (those that have an uncertainty column beside them)."""
    return [c for c in frame.columns if c + UNCERTAINTY_SUFFIX in frame.columns]


class RunDir:
    """A run's output directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.cells_dir = self.path / "cells"
        self.manifest_path = self.path / "manifest.json"
        self.csv_path = self.path / "cells.csv"
        self.suite_path = self.path / "suite.json"

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def cell_path(self, cell_id: str, suffix: str = ".json") -> Path:
        return self.cells_dir / f"{cell_id}{suffix}"

    def write_cell(self, record: dict[str, Any]) -> None:
        write_json(self.cell_path(record["cell_id"]), record)

    def read_cell(self, cell_id: str) -> dict[str, Any] | None:
        path = self.cell_path(cell_id)
        return read_json(path) if path.exists() else None

    def read_cells(self) -> list[dict[str, Any]]:
        if not self.cells_dir.is_dir():
            return []
        return [read_json(p) for p in sorted(self.cells_dir.glob("*.json"))]

    def write_csv(self, records: list[dict[str, Any]] | None = None) -> pd.DataFrame:
        frame = cells_frame(self.read_cells() if records is None else records)
        write_atomic(self.csv_path, frame.to_csv(index=False))
        return frame

    def read_csv(self) -> pd.DataFrame:
        return pd.read_csv(self.csv_path, keep_default_na=False, na_values=[""])

    def read_manifest(self) -> dict[str, Any]:
        return read_json(self.manifest_path)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(self.manifest_path, manifest)


def find_run(path: str | Path) -> RunDir:
    """A run directory, or the newest run inside a suite's results folder; FileNotFoundError if none."""
    path = Path(path)
    if (path / "manifest.json").exists():
        return RunDir(path)
    if path.is_dir():
        runs = sorted(p for p in path.iterdir() if (p / "manifest.json").exists())
        if runs:
            return RunDir(runs[-1])
    raise FileNotFoundError(f"{path}: not a diffbench run directory (no manifest.json)")
