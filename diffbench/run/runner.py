"""Run a suite: expand the grid, sample and score every cell, write each finished cell at once.

Each cell samples ``num_samples`` per seed from the same per-sample starting noise (sample i of
seed s depends only on (s, i)), so cells are paired. Timing covers sampling only, after a
warm-up call; metrics run after the clock stops. A cell that raises or produces non-finite
samples is recorded as failed and the run goes on; Ctrl-C keeps every finished cell.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
from tqdm.auto import tqdm

from diffbench.core.denoiser import DiffusionModel
from diffbench.metrics.base import MetricContext
from diffbench.registry import Registry
from diffbench.run.calibration import bare_network_times, counted_seconds_per_sample, cpu_reference_seconds
from diffbench.run.closing import close_run
from diffbench.run.executors import Executor, Job, make_executor
from diffbench.run.outdir import DEFAULT_ROOT, choose_run_dir, claim_run_dir
from diffbench.run.preparation import Prepared, preflight
from diffbench.run.provenance import device_name, git_state, versions
from diffbench.run.record import now
from diffbench.run.rundir import (
    SCHEMA_VERSION,
    STATUS_OK,
    CellsCsv,
    DamagedFileError,
    RunDir,
    as_written,
    write_atomic,
    write_json,
)
from diffbench.run.shards import Shard
from diffbench.run.suite import CellSpec, Suite, SuiteError
from diffbench.util.text import error_line


class RunInterrupted(Exception):
    """Ctrl-C during a run; every finished cell is on disk."""

    def __init__(
        self, run: RunDir, done: int, total: int, records: list[dict[str, Any]] | None = None, terminated: bool = False
    ) -> None:
        super().__init__(
            f"{'terminated (SIGTERM)' if terminated else 'interrupted'}: {done} of {total} cells kept "
            f"in {run.path}; finish with --resume"
        )
        self.run, self.done, self.total, self.terminated = run, done, total, terminated
        self.records = records  # the suite's cell records kept (None: read them from the run directory)


@dataclass
class RunResult:
    """What a finished run left behind."""

    run: RunDir
    cells: pd.DataFrame
    ran: int
    skipped: int
    failed: int
    records: list[dict[str, Any]] = field(default_factory=list)  # this suite's cell records, as in cells.csv

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def failed_cells(self) -> int:
        """Cells of the suite whose record is not ok, this run's and kept ones alike."""
        return int((self.cells["status"] != STATUS_OK).sum()) if len(self.cells) else 0


# --- provenance --------------------------------------------------------------------------------


def calibrate(model: DiffusionModel, batch_size: int, repeats: int = 5) -> dict[str, Any]:
    """Bare network time on one batch: the per-machine yardstick speed comparisons divide by (median), and the
    network part of each cell's counted time (minimum: the call undisturbed by other processes)."""
    times = bare_network_times(model, batch_size, repeats=repeats)
    return {
        "network_seconds_per_call": statistics.median(times),
        "network_seconds_per_call_min": min(times),
        "batch_size": batch_size,
        "method": f"median (and minimum) of {repeats} bare network calls on one batch after 2 warm-up calls",
        "cpu_reference_seconds": cpu_reference_seconds(),
    }


def base_manifest(
    suite: Suite, models: dict[str, DiffusionModel], registry: Registry, command: str | None
) -> dict[str, Any]:
    model = next(iter(models.values()))
    return {
        "schema_version": SCHEMA_VERSION,
        "suite": suite.name,
        "description": suite.description,
        "status": "running",
        "started": now(),
        "command": command if command is not None else shlex.join(sys.argv),
        "git": git_state(),
        "versions": versions(),
        "plugins": registry.plugin_versions(),
        "device": str(model.device),
        "device_name": device_name(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "models": {key: m.identity() for key, m in models.items()},
        "reference": suite.reference.record() if suite.reference else model.dataset,
        "num_samples": suite.num_samples,
        "batch_size": suite.batch_size,
        "seeds": suite.seeds,
        "metrics": {m.name: {"options": m.options} for m in suite.metrics},
    }


# --- the run -----------------------------------------------------------------------------------


def _finish(
    run: RunDir,
    manifest: dict[str, Any],
    status: str,
    t0: float,
    context: MetricContext,
    cells: list[CellSpec],
    records: dict[str, dict[str, Any]],
) -> pd.DataFrame:
    """Close the run from this suite's cell records (``closing.close_run``: cells.csv in grid order, the manifest).

    A shard (``run.owns_table`` false) closes only its own manifest: the shared table, plots and report
    are the merge's (``diffbench report RUN``), so shards never write the same file. Plots and the
    report are drawn above this layer (``diffbench.api``)."""
    return close_run(
        run,
        manifest,
        list(records.values()),
        total=len(cells),
        status=status,
        finished=now(),
        metric_info=context.info,
        wall_seconds=manifest.get("wall_seconds_before", 0.0) + time.perf_counter() - t0,
    )


def run_suite(
    suite: Suite | str | Path,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    registry: Registry | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    command: str | None = None,
    results_root: str | Path = DEFAULT_ROOT,
    time_limit: float | None = None,
    allow_large: bool = False,
    announce: Callable[[str], None] | None = None,
    executor: Executor | str | None = None,
    shard: Shard | str | None = None,
    trust_code: bool | None = None,
) -> RunResult:
    """Run every cell of ``suite`` into ``out_dir`` (default ``results/<suite>/<run-id>/``).

    With ``resume``, cells already finished with the same configuration are kept, not rerun
    (failed cells and cells whose record cannot be read are rerun). ``time_limit`` (seconds, overriding the
    suite's) fails a cell that
    takes longer. ``announce`` receives the plan and warnings as lines. ``executor`` computes the
    cells ('local', the default, 'ray', or an Executor); this process writes every record. ``shard``
    ('I/N') runs only shard I's cells into the shared ``out_dir`` under a lock of its own (see
    ``diffbench.run.shards``). ``trust_code=True`` lets the suite name code to import and run (a
    ``python`` model's factory; None: the DIFFBENCH_TRUST_CODE environment setting; see
    ``diffbench.util.trust``). Raises SuiteError for a suite that cannot run and RunDirError for
    an unusable or busy run directory (both before writing anything), and RunInterrupted on Ctrl-C,
    after saving everything finished.
    """
    say = announce or (lambda line: None)
    if isinstance(shard, str):
        try:
            shard = Shard.parse(shard)
        except ValueError as exc:
            raise SuiteError(str(exc)) from None
    executor = make_executor(executor or "local") if executor is None or isinstance(executor, str) else executor
    prep = preflight(
        suite,
        registry,
        out_dir=out_dir,
        resume=resume,
        results_root=results_root,
        cache_dir=cache_dir,
        time_limit=time_limit,
        allow_large=allow_large,
        shard=shard,
        trust_code=trust_code,
    )
    say(f"plan: {prep.plan.describe()}")
    run, resumed = choose_run_dir(prep.suite, out_dir, resume, Path(results_root), shard, prep.context.cache_dir)
    job = Job(prep.suite, prep.registry, prep.models, prep.context, run, progress)
    try:  # the executor starts before the run directory is made or locked: if it cannot, nothing is left behind
        executor_info = executor.start(job)
        if executor_info.get("cell_split"):
            say(executor_info["cell_split"])
        run = claim_run_dir(run, fresh_default=out_dir is None and not resumed)
        with _locked(run, shard):
            if out_dir is not None:  # another run may have written here since the check above
                run, resumed = choose_run_dir(
                    prep.suite, out_dir, resume, Path(results_root), shard, prep.context.cache_dir
                )
            job.run = run
            return _execute(
                prep, run, resumed, executor, executor_info, shard, progress=progress, command=command, say=say
            )
    finally:
        executor.close()  # a half-started Ray instance is stopped too


@contextlib.contextmanager
def _locked(run: RunDir, shard: Shard | None) -> Iterator[None]:
    """The run directory's locks: ``.lock`` exclusively for a whole run; shared, plus the shard's own, for a shard."""
    with run.lock(shared=shard is not None), run.lock(shard.lock_name) if shard else contextlib.nullcontext():
        yield


class Terminated(KeyboardInterrupt):
    """SIGTERM during a run: handled as Ctrl-C is (work in flight cancelled, every finished cell kept)."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[list[int]]:
    """Within the block, SIGTERM raises Terminated in the main thread (as SIGINT raises KeyboardInterrupt); the
    list yielded receives the signal's number (Ray's wait re-raises what a handler raised as KeyboardInterrupt)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def terminate(signum: int, frame: Any) -> None:
        received.append(signum)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _execute(
    prep: Prepared,
    run: RunDir,
    resumed: bool,
    executor: Executor,
    executor_info: dict[str, Any],
    shard: Shard | None,
    *,
    progress: bool,
    command: str | None,
    say: Callable[[str], None],
) -> RunResult:
    """The run proper, under the run directory's lock: the executor computes the cells, this writes them.

    Once the manifest is written it never stays 'running': Ctrl-C or SIGTERM close it as 'interrupted',
    any other exception as 'failed' with the error."""
    suite, cells, models, registry, context = prep.suite, prep.cells, prep.models, prep.registry, prep.context
    warned: set[str] = set()

    def damaged(exc: DamagedFileError) -> None:
        if str(exc) not in warned:
            warned.add(str(exc))
            say(f"warning: {exc}; rerunning its cell")

    kept = _records(run, cells, damaged) if resumed else []
    records = {r["cell_id"]: r for r in kept}  # this suite's records, kept in memory: the run closes from them
    changed: dict[str, list[str]] = {}
    done = {c.cell_id for c in cells if _finished(records.get(c.cell_id), c, models, changed)}
    for key, hashes in changed.items():
        say(
            f"warning: model {key!r}: its checkpoint changed since {len(hashes)} finished cell(s) were run "
            f"(sha256 {_short(hashes[0])} then, {_short(models[key].checkpoint_hash)} now); rerunning them"
        )
    todo = [c for c in cells if c.cell_id not in done]
    # cells.csv while the run goes: the kept cells, then each cell's row as it finishes (a shard writes none)
    table = CellsCsv(run.csv_path, [records[i] for i in sorted(done)]) if run.owns_table else None
    with _sigterm_interrupts() as sigterm:  # after the executor started: Ray's driver installs a handler of its own
        manifest = base_manifest(suite, models, registry, command)
        manifest.update(plan=prep.plan.as_dict(), time_limit=suite.time_limit, executor=executor_info)
        if shard is not None:
            manifest["shard"] = {
                "index": shard.index,
                "count": shard.count,
                "cells": len(cells),
                "network_evaluations": prep.plan.nfe,
            }
        if resumed:
            earlier = _earlier_manifest(run, say)
            manifest.update(
                started=earlier.get("started", manifest["started"]),
                resumed=earlier.get("resumed", 0) + 1,
                wall_seconds_before=earlier.get("wall_seconds", 0.0),
            )
        t0 = prep.warm_start
        ran = failed = 0
        outer = tqdm(
            total=len(cells),
            initial=len(done),
            desc=suite.name,
            unit="cell",
            disable=not progress,
            position=0,
            dynamic_ncols=True,
        )
        try:
            write_json(run.suite_path, suite.model_dump(mode="json"))
            run.write_manifest(manifest)  # from here on the run is resumable
            manifest["calibration"] = {key: calibrate(m, suite.batch_size) for key, m in models.items()}
            run.write_manifest(manifest)
            for finished in executor.run(todo):
                record = finished.record
                record.update(
                    counted_seconds_per_sample(record, manifest["calibration"].get(record.get("model")) or {})
                )
                for path, data in finished.files.items():  # files a worker made for the cell (picture, samples)
                    write_atomic(run.path / path, data)
                run.write_cell(record)
                records[record["cell_id"]] = as_written(record)
                if table is not None:
                    table.add(records[record["cell_id"]])
                ran += 1
                failed += record["status"] != STATUS_OK
                outer.update(1)
        except KeyboardInterrupt as exc:
            outer.close()
            executor.close()  # cancels work in flight
            # what is on disk: the interrupt may land between a cell's write and its entry in ``records``
            records = {r["cell_id"]: r for r in _records(run, cells, damaged)}
            if run.manifest_path.exists():
                _finish(run, manifest, "interrupted", t0, context, cells, records)
            raise RunInterrupted(
                run,
                len(records),
                len(cells),
                list(records.values()),
                terminated=isinstance(exc, Terminated) or bool(sigterm),
            ) from None
        except BaseException as exc:
            outer.close()
            executor.close()
            if run.manifest_path.exists():
                manifest["error"] = error_line(exc)
                with contextlib.suppress(Exception):  # the original error is what the user must see
                    _finish(run, manifest, "failed", t0, context, cells, records)
            raise
        finally:
            executor.close()
        outer.close()
        frame = _finish(run, manifest, "complete", t0, context, cells, records)
    return RunResult(run, frame, ran=ran, skipped=len(done), failed=failed, records=list(records.values()))


def _earlier_manifest(run: RunDir, say: Callable[[str], None]) -> dict[str, Any]:
    """The manifest of the run being resumed; {} when it was never written or cannot be read."""
    if not run.manifest_path.exists():
        return {}  # killed before writing it
    try:
        return run.read_manifest()
    except DamagedFileError as exc:
        say(f"warning: {exc}; writing a new one")
        return {}


def _records(
    run: RunDir, cells: list[CellSpec], on_damaged: Callable[[DamagedFileError], None] | None = None
) -> list[dict[str, Any]]:
    """This suite's cell records (a resumed run may hold records of cells since changed); damaged ones skipped."""
    wanted = {c.cell_id for c in cells}
    return [r for r in run.read_cells(on_damaged=on_damaged or (lambda exc: None)) if r["cell_id"] in wanted]


def _finished(
    rec: dict[str, Any] | None,
    cell: CellSpec,
    models: dict[str, DiffusionModel] | None = None,
    changed: dict[str, list[str]] | None = None,
) -> bool:
    """Whether ``rec`` (the cell's kept record, None if none) is an ok record of the same configuration and, with
    ``models``, made with the same checkpoint content (a cell run before the checkpoint file changed is listed in
    ``changed`` and rerun)."""
    if rec is None or rec.get("status") != STATUS_OK or rec.get("config_hash") != cell.config_hash:
        return False
    if models is not None:
        identity = rec.get("model_identity")
        then = identity.get("checkpoint_hash") if isinstance(identity, dict) else None
        if then != models[cell.model.key].checkpoint_hash:
            (changed if changed is not None else {}).setdefault(cell.model.key, []).append(str(then))
            return False
    return True


def _short(sha: str | None) -> str:
    return "none" if sha in (None, "None") else str(sha)[:12]
