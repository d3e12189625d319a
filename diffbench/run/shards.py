"""Shards: ``--shard I/N`` runs a stable subset of a suite's cells into a run directory shared by N processes.

For Slurm job arrays and any scheduler without Ray. Cells are dealt by counted work (each cell's
planned network evaluations over every sample, largest first, each to the shard with the least work so
far; ties by cell id), so shard I of N always gets the same cells of the same suite, the shards'
planned work differs by at most one cell's, and the shards together get each cell exactly once.
Shards share ``RUN/cells/`` (disjoint file names) and keep everything else apart: shard I's
manifest and suite are ``RUN/shards/I-of-N/``. Every shard of a directory must run the same suite
(checked when a shard starts); a cell finished by any shard, under any N, is never rerun. Nothing
writes ``RUN/cells.csv``, ``manifest.json``, plots or ``report.md`` until ``merge`` (``diffbench
report RUN``) does; it lists the cells no shard has finished. Locks: a shard holds ``RUN/.lock``
shared and ``RUN/.lock-shard-I-of-N`` exclusively; an unsharded run holds ``RUN/.lock`` exclusively.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from diffbench.run.rundir import (
    LOCK_NAME,
    DamagedFileError,
    RunDir,
    check_writable,
    lock_is_held,
    read_json,
    write_json,
)
from diffbench.run.suite import CellSpec, Suite, SuiteError, stored_suite_data

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

    def select(self, cells: list[CellSpec], work: Mapping[str, float] | None = None) -> list[CellSpec]:
        """This shard's cells, in grid order. ``work`` (cell id → planned network evaluations over every
        sample; equal when not given) deals them: largest first (ties by cell id), each to the shard
        with the least work so far (ties: the lowest index)."""
        return [c for c in cells if c.cell_id in deal(cells, self.count, work)[self.index - 1]]

    @property
    def lock_name(self) -> str:
        return f"{LOCK_NAME}-shard-{self.name}"


SHARD_NAME = re.compile(r"^(\d+)-of-(\d+)$")


def deal(cells: list[CellSpec], count: int, work: Mapping[str, float] | None = None) -> list[set[str]]:
    """The cell ids of each of ``count`` shards, dealt by ``work`` (see ``Shard.select``); deterministic."""
    weight = {c.cell_id: round(float(work[c.cell_id])) if work is not None else 1 for c in cells}
    loads, shards = [0] * count, [set() for _ in range(count)]
    for cell_id in sorted(weight, key=lambda i: (-weight[i], i)):
        k = min(range(count), key=lambda j: (loads[j], j))
        loads[k] += weight[cell_id]
        shards[k].add(cell_id)
    return shards


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
    """Shard ``shard``'s directory in the shared run ``out_dir`` and whether it continues earlier work (its own
    attempt, or cells other shards finished in the shared ``cells/``, which it keeps)."""
    if out_dir is None:
        raise SuiteError("--shard needs --out RUN: the run directory every shard of the suite shares")
    top, run = RunDir(out_dir), ShardDir(out_dir, shard)
    if top.exists() and not is_sharded(top.path):
        raise SuiteError(f"{top.path}: holds a run made without --shard; shards need a directory of their own")
    check_same_suite(top, suite.model_dump(mode="json"))
    if run.exists():
        if not resume:
            raise SuiteError(
                f"{run.path}: shard {shard.index}/{shard.count} ran here already; pass --resume to continue it"
            )
        return run, True
    check_writable(run.path, "--out")
    shared = {SHARDS_DIR, "cells"}
    if not top.exists() and any(p.name not in shared for p in _entries(run)):
        raise SuiteError(f"{run.path}: exists and is not a diffbench run directory; choose another --out")
    return run, top.cells_dir.is_dir()


def shard_names(path: str | Path) -> list[str]:
    """The shards that started in run directory ``path`` (``I-of-N`` folders with a suite or manifest), in order."""
    folder = Path(path) / SHARDS_DIR
    if not folder.is_dir():
        return []
    names = [
        p.name
        for p in folder.iterdir()
        if SHARD_NAME.match(p.name) and p.is_dir() and ((p / "suite.json").exists() or (p / "manifest.json").exists())
    ]
    return sorted(names, key=lambda n: tuple(int(x) for x in SHARD_NAME.match(n).groups()))


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The YAML path of the first value that differs between two suites' data (None when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            where = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                return where
            found = _first_difference(a[key], b[key], where)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None if len(a) == len(b) else f"{path}[{min(len(a), len(b))}]"
    return None if a == b else path or "(top)"


def check_same_suite(top: RunDir, mine: dict[str, Any]) -> None:
    """SuiteError (one line) unless every suite already in the shared run directory is ``mine``: the shards'
    own copies and the merged or resumed run's ``suite.json``."""
    found = [(f"{SHARDS_DIR}/{n}", top.path / SHARDS_DIR / n / "suite.json") for n in shard_names(top.path)]
    found.append(("the run", top.suite_path))
    mine = stored_suite_data(mine)
    for who, path in found:
        if not path.exists():
            continue
        theirs = stored_suite_data(read_json(path))
        if not isinstance(theirs, dict):
            raise DamagedFileError(f"{path}: not a suite (not a JSON object)")
        where = _first_difference(theirs, mine)
        if where is None:
            continue
        name, other = mine.get("name"), theirs.get("name")
        what = (
            f"suite {other!r}, not {name!r}"
            if other != name
            else f"another version of suite {name!r} (it differs at {where})"
        )
        raise SuiteError(
            f"{top.path}: {who} ran {what}; every shard of a run directory runs the same suite: choose another --out"
        )


def _entries(run: RunDir) -> list[Path]:
    """What is in the run directory besides lock files and temporaries."""
    if not run.path.is_dir():
        return []
    return [
        p
        for p in run.path.iterdir()
        if not (p.name.startswith(LOCK_NAME) or (p.name.startswith(".") and ".tmp" in p.name))
    ]


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a run directory that shards wrote into (or started to)."""
    return bool(shard_names(path))


def running_shards(path: str | Path) -> list[str]:
    """The shards of run directory ``path`` whose process is running now (it holds the shard's lock)."""
    prefix = f"{LOCK_NAME}-shard-"
    names = [p.name.removeprefix(prefix) for p in Path(path).glob(f"{prefix}*") if lock_is_held(p)]
    return sorted(
        (n for n in names if SHARD_NAME.match(n)), key=lambda n: tuple(map(int, SHARD_NAME.match(n).groups()))
    )


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
    names = [n for n in shard_names(root) if (root / SHARDS_DIR / n / "manifest.json").exists()]
    if not names:
        raise FileNotFoundError(f"{root}: no shard manifests under {SHARDS_DIR}/ (not a sharded run)")
    manifests = {n: read_json(root / SHARDS_DIR / n / "manifest.json") for n in names}
    for n, m in manifests.items():
        if not isinstance(m, dict):
            raise DamagedFileError(f"{root / SHARDS_DIR / n / 'manifest.json'}: not a run manifest (not a JSON object)")
    suites = {n: stored_suite_data(read_json(root / SHARDS_DIR / n / "suite.json")) for n in names}
    first_name = names[0]
    for name, data in suites.items():
        where = _first_difference(suites[first_name], data)
        if where is not None:
            raise SuiteError(
                f"{root}: the shards ran different suites ({first_name} and {name} differ at {where}); "
                "merge only shards of one suite"
            )
    suite_data = suites[first_name]
    suite = parse_suite(
        suite_data, registry or default_registry(), source=str(root / SHARDS_DIR / first_name / "suite.json")
    )
    run = RunDir(root)
    with run.lock(shared=True):  # no unsharded run writes here while the merge does (shards may go on)
        return _merge(run, suite, suite_data, manifests)


def check_one_checkpoint(run: RunDir, records: list[dict[str, Any]]) -> None:
    """SuiteError when cells of one model were computed from different checkpoints (shards run on other weights).

    Nothing is lost: every record stays on disk; ``--resume`` on the current weights reruns the stale cells.
    """
    hashes: dict[str, dict[str, int]] = {}
    for r in records:
        identity = r.get("model_identity")
        sha = identity.get("checkpoint_hash") if isinstance(identity, dict) else None
        if sha is not None:
            counts = hashes.setdefault(str(r.get("model")), {})
            counts[sha] = counts.get(sha, 0) + 1
    for model, counts in hashes.items():
        if len(counts) > 1:
            seen = ", ".join(f"sha256 {h[:12]}… in {n} cell{'s' if n > 1 else ''}" for h, n in sorted(counts.items()))
            raise SuiteError(
                f"{run.path}: model {model!r} has cells from different checkpoints ({seen}); not merged. "
                "Rerun the shards with --resume on one checkpoint (cells of another checkpoint are rerun)"
            )


def _merge(run: RunDir, suite: Suite, suite_data: dict[str, Any], manifests: dict[str, dict[str, Any]]) -> Merged:
    from diffbench.run.closing import close_run
    from diffbench.run.suite import expand

    cells = expand(suite)
    wanted = {c.cell_id: c.config_hash for c in cells}
    damaged: list[str] = []
    records = [
        r
        for r in run.read_cells(on_damaged=lambda exc: damaged.append(str(exc)))
        if wanted.get(r["cell_id"]) == r.get("config_hash")
    ]
    check_one_checkpoint(run, records)
    present = {r["cell_id"] for r in records}
    missing = [c.cell_id for c in cells if c.cell_id not in present]

    first = manifests[next(iter(manifests))]  # shard_names' order
    starts = [t for t in (_time(m.get("started")) for m in manifests.values()) if t is not None]
    ends = [t for t in (_time(m.get("finished")) for m in manifests.values()) if t is not None]
    info: dict[str, Any] = {}
    for m in manifests.values():
        info.update(m.get("metric_info") or {})
    running = running_shards(run.path)
    manifest = {
        **{k: v for k, v in first.items() if k not in ("shard", "cells", "resumed", "wall_seconds_before")},
        "started": min(starts).isoformat() if starts else first.get("started"),
        "missing_cells": missing,
        "damaged_records": damaged,
        "running_shards": running,
        "sharded": {
            "shards": {
                name: {
                    k: m.get(k)
                    for k in ("status", "started", "finished", "wall_seconds", "command", "executor", "cells")
                }
                for name, m in manifests.items()
            },
            "shard_seconds": sum(m.get("wall_seconds") or 0.0 for m in manifests.values()),
        },
        "executor": {"name": "shards"},
    }
    write_json(run.suite_path, suite_data)
    frame = close_run(
        run,
        manifest,
        records,
        total=len(cells),
        status="complete" if not missing and not running else "incomplete",
        finished=max(ends).isoformat() if ends else None,
        metric_info=info,
        missing=missing,
        wall_seconds=(max(ends) - min(starts)).total_seconds() if starts and ends else None,
    )
    return Merged(run, frame, missing, records)
