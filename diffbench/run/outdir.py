"""Where a run writes: the run directory that a suite, ``--out``, ``--resume`` and ``--shard`` pick."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from diffbench.run.rundir import (
    DamagedFileError,
    RunDir,
    check_writable,
    find_run,
    read_json,
)
from diffbench.run.shards import Shard, is_sharded, shard_names, shard_run_dir
from diffbench.run.suite import Suite, SuiteError

DEFAULT_ROOT = Path("results")


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _run_dir(
    suite: Suite, out_dir: str | Path | None, resume: bool, root: Path, cache: Path | None = None
) -> tuple[RunDir, bool]:
    """The run directory and whether it continues an earlier run (checks only: nothing is written).

    A fresh ``out_dir`` must be empty, except for the folder holding ``cache`` when the cache directory
    is inside it (the warm-up may already have written reference features there)."""
    if out_dir is None:
        base = root / suite.name
        check_writable(base, "results folder")
        if resume:
            try:
                return find_run(base), True
            except FileNotFoundError:
                pass  # nothing to resume: start afresh
        return RunDir(base / new_run_id()), False
    run = RunDir(out_dir)
    check_writable(run.path, "--out")
    if run.exists() or is_sharded(run.path):  # a run, or shards' shared directory (this finishes their cells)
        if not resume:
            raise SuiteError(f"{run.path}: holds a run already; pass --resume to continue it or choose another --out")
        earlier = _earlier_suite(run)
        if earlier != suite.name:
            raise SuiteError(f"{run.path}: holds a run of suite {earlier!r}, not {suite.name!r}")
        return run, True
    if not run.is_empty(ignore=cache):
        raise SuiteError(f"{run.path}: exists and is not a diffbench run directory; choose another --out")
    return run, False


def choose_run_dir(
    suite: Suite, out_dir: str | Path | None, resume: bool, root: Path, shard: Shard | None, cache: Path | None = None
) -> tuple[RunDir, bool]:
    """The run directory (a shard's view of it with ``shard``) and whether it continues an earlier run."""
    if shard is not None:
        return shard_run_dir(suite, out_dir, resume, shard)
    return _run_dir(suite, out_dir, resume, root, cache)


def _earlier_suite(run: RunDir) -> str | None:
    """The suite name of the run in ``run``: from its manifest, else its suite.json (killed before the manifest),
    else (shards that were never merged) the first shard's suite.json."""
    if not run.exists():
        names = shard_names(run.path)
        data = read_json(run.path / "shards" / names[0] / "suite.json") if names else None
        return data.get("name") if isinstance(data, dict) else None
    try:
        return run.read_manifest().get("suite")
    except (DamagedFileError, FileNotFoundError) as exc:
        data = read_json(run.suite_path) if run.suite_path.exists() else None
        if not isinstance(data, dict):
            raise exc
        return data.get("name")


def claim_run_dir(run: RunDir, fresh_default: bool) -> RunDir:
    """Create a new default run directory, under another run id if two runs start in the same second."""
    if not fresh_default:
        return run
    while True:
        try:
            run.path.mkdir(parents=True, exist_ok=False)
            return run
        except FileExistsError:
            time.sleep(1)
            run = RunDir(run.path.parent / new_run_id())
