"""Shards: ``--shard I/N`` runs a stable subset of a suite's cells into a run directory shared by N processes.

For Slurm job arrays and any scheduler without Ray. Cells are sorted by cell id and dealt round-robin,
so shard I of N always gets the same cells of the same suite, and the shards together get each cell
exactly once. Shards share ``RUN/cells/`` (disjoint file names) and keep everything else apart:
shard I's manifest and suite are ``RUN/shards/I-of-N/``. Nothing writes ``RUN/cells.csv``,
``manifest.json``, plots or ``report.md`` until ``merge`` (``diffbench report RUN``) does, once the
shards are done; it lists the cells no shard has finished.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffbench.run.rundir import (
    LOCK_NAME,
    RunDir,
    check_writable,
    read_json,
    write_json,
)
from diffbench.run.suite import CellSpec, Suite, SuiteError

SHARDS_DIR = "shards"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based, as Slurm's SLURM_ARRAY_TASK_ID with --array=1-N) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """'I/N' with 1 ≤ I ≤ N; anything else is a ValueError saying so."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise ValueError(f"--shard {text!r}: expected I/N, e.g. 1/4")
        index, count = int(m.group(1)), int(m.group(2))
        if not 1 <= index <= count:
            raise ValueError(f"--shard {text!r}: I must be between 1 and N")
        return cls(index, count)

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def select(self, cells: list[CellSpec]) -> list[CellSpec]:
        """This shard's cells, in grid order: every N-th cell of the list sorted by cell id."""
        ids = sorted(c.cell_id for c in cells)[self.index - 1::self.count]
        mine = set(ids)
        return [c for c in cells if c.cell_id in mine]


class ShardDir(RunDir):
    """A shard's view of a shared run directory: shared ``cells/``, its own manifest and suite file."""

    owns_table = False

    def __init__(self, path: str | Path, shard: Shard) -> None:
        super().__init__(path)
        self.shard = shard
        self.state_dir = self.path / SHARDS_DIR / shard.name
        self.manifest_path = self.state_dir / "manifest.json"
        self.suite_path = self.state_dir / "suite.json"


def shard_run_dir(suite: Suite, out_dir: str | Path | None, resume: bool, shard: Shard) -> tuple[ShardDir, bool]:
    """Shard ``shard``'s directory in the shared run ``out_dir`` and whether it continues an earlier attempt."""
    if out_dir is None:
        raise SuiteError("--shard needs --out RUN: the run directory every shard of the suite shares")
    top, run = RunDir(out_dir), ShardDir(out_dir, shard)
    if top.exists():  # merged already (a merged run can take more shards) or an unsharded run
        earlier = top.read_manifest()
        if not earlier.get("sharded"):
            raise SuiteError(f"{top.path}: holds a run made without --shard; shards need a directory of their own")
        if earlier.get("suite") != suite.name:
            raise SuiteError(f"{top.path}: holds a run of suite {earlier.get('suite')!r}, not {suite.name!r}")
    if run.exists():
        if not resume:
            raise SuiteError(f"{run.path}: shard {shard.index}/{shard.count} ran here already; pass --resume to "
                             "continue it")
        earlier = run.read_manifest().get("suite")
        if earlier != suite.name:
            raise SuiteError(f"{run.path}: holds a run of suite {earlier!r}, not {suite.name!r}")
        return run, True
    check_writable(run.path, "--out")
    shared = {SHARDS_DIR, "cells"}
    if not top.exists() and any(p.name not in shared for p in _entries(run)):
        raise SuiteError(f"{run.path}: exists and is not a diffbench run directory; choose another --out")
    return run, False


def _entries(run: RunDir) -> list[Path]:
    """What is in the run directory besides lock files and temporaries."""
    if not run.path.is_dir():
        return []
    return [p for p in run.path.iterdir() if not (p.name.startswith(LOCK_NAME) or (p.name.startswith(".") and ".tmp" in p.name))]


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a run directory that shards wrote into."""
    return any((Path(path) / SHARDS_DIR).glob("*/manifest.json"))


# --- merge -------------------------------------------------------------------------------------

@dataclass
class Merged:
    """The outcome of merging a sharded run: the run directory, its table and the cells no shard finished."""

    run: RunDir
    frame: Any
    missing: list[str]
    records: list[dict[str, Any]]  # the suite's cell records, as in cells.csv


def _time(stamp: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(stamp) if stamp else None
    except ValueError:
        return None


def merge(path: str | Path, registry: Any = None) -> Merged:
    """Merge the shards in ``path``: manifest.json, suite.json and cells.csv for the whole suite.

    The suite is taken from the shards' own copies (they must agree). Cells that no shard finished
    are listed in the manifest (``missing_cells``); the run's status is ``complete`` only when every
    cell has a record and every shard finished. Plots and report: ``diffbench.api.merge_shards``.
    """
    from diffbench.registry import default_registry
    from diffbench.run.suite import parse_suite

    root = Path(path)
    states = sorted((root / SHARDS_DIR).glob("*/manifest.json"))
    if not states:
        raise FileNotFoundError(f"{root}: no shard manifests under {SHARDS_DIR}/ (not a sharded run)")
    manifests = {p.parent.name: read_json(p) for p in states}
    suites = {name: read_json(root / SHARDS_DIR / name / "suite.json") for name in manifests}
    distinct = {str(sorted(s.items())) for s in suites.values()}
    if len(distinct) > 1:
        raise SuiteError(f"{root}: the shards ran different suites ({', '.join(sorted(suites))}); "
                         "merge only shards of one suite")
    suite_data = next(iter(suites.values()))
    suite = parse_suite(suite_data, registry or default_registry(), source=str(root / "suite.json"))
    run = RunDir(root)
    with run.lock():  # no unsharded run writes here while the merge does
        return _merge(run, suite, suite_data, manifests)


def _merge(run: RunDir, suite: Suite, suite_data: dict[str, Any], manifests: dict[str, dict[str, Any]]) -> Merged:
    from diffbench.run.closing import closed_manifest
    from diffbench.run.suite import expand

    cells = expand(suite)
    wanted = {c.cell_id: c.config_hash for c in cells}
    damaged: list[str] = []
    records = [r for r in run.read_cells(on_damaged=lambda exc: damaged.append(str(exc)))
               if wanted.get(r["cell_id"]) == r.get("config_hash")]
    present = {r["cell_id"] for r in records}
    missing = [c.cell_id for c in cells if c.cell_id not in present]

    first = manifests[min(manifests, key=lambda n: tuple(int(x) for x in n.split("-of-")))]
    starts = [t for t in (_time(m.get("started")) for m in manifests.values()) if t is not None]
    ends = [t for t in (_time(m.get("finished")) for m in manifests.values()) if t is not None]
    info: dict[str, Any] = {}
    for m in manifests.values():
        info.update(m.get("metric_info") or {})
    frame = run.write_csv(records)
    all_done = all(m.get("status") == "complete" for m in manifests.values())
    manifest = {
        **{k: v for k, v in first.items() if k not in ("shard", "cells", "resumed", "wall_seconds_before")},
        "started": min(starts).isoformat() if starts else first.get("started"),
        "missing_cells": missing, "damaged_records": damaged,
        "sharded": {"shards": {name: {k: m.get(k) for k in ("status", "started", "finished", "wall_seconds",
                                                            "command", "executor", "cells")}
                               for name, m in manifests.items()},
                    "shard_seconds": sum(m.get("wall_seconds") or 0.0 for m in manifests.values())},
        "executor": {"name": "shards"},
    }
    write_json(run.suite_path, suite_data)
    run.write_manifest(closed_manifest(
        manifest, records, frame, total=len(cells), status="complete" if all_done and not missing else "incomplete",
        finished=max(ends).isoformat() if ends else None, metric_info=info, missing=missing,
        wall_seconds=(max(ends) - min(starts)).total_seconds() if starts and ends else None))
    return Merged(run, frame, missing, records)
