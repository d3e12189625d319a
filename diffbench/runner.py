"""Run a suite: expand the grid, sample and score every cell, write each finished cell at once.

Each cell samples ``num_samples`` per seed from the same per-sample starting noise (sample i of
seed s depends only on (s, i)), so cells are paired. Timing covers sampling only, after a
warm-up call; metrics run after the clock stops. A cell that raises or produces non-finite
samples is recorded as failed and the run goes on; Ctrl-C keeps every finished cell.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import os
import shlex
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

import pandas as pd
import torch
from tqdm.auto import tqdm

from diffbench import plots, report
from diffbench.calibration import bare_network_times, counted_seconds_per_sample, cpu_reference_seconds
from diffbench.cell import CELL_FAILURES, metric_plan, now, sampling_call
from diffbench.denoiser import DiffusionModel, evaluations_per_call
from diffbench.devices import resolve_device, resolve_dtype
from diffbench.executors import Executor, Job, make_executor, placement
from diffbench.executors.shard import Shard, ShardDir, is_sharded, shard_names, shard_run_dir
from diffbench.metrics.base import MetricContext, grid_key
from diffbench.metrics.stream import MetricError
from diffbench.plan import Plan, check_batch_bytes, check_grid_size, check_plan
from diffbench.provenance import device_name, git_state, versions
from diffbench.registry import Registry, default_registry
from diffbench.results import (SCHEMA_VERSION, STATUS_FAILED, STATUS_OK, DamagedFileError, RunDir, cells_frame,
                               check_writable, find_run, read_json, write_atomic, write_json)
from diffbench.samplers import noise_draws
from diffbench.sampling import make_grid, resolve_options
from diffbench.suite import CellSpec, SamplerSpec, Suite, SuiteError, check_plugins, expand, load_suite
from diffbench.timelimit import TimeLimitExceeded, check_seconds, time_limit
from diffbench.trust import UntrustedCodeError, check_suite_code, code_trusted

DEFAULT_ROOT = Path("results")
CACHE_ENV = "DIFFBENCH_CACHE_DIR"


class RunInterrupted(Exception):
    """Ctrl-C during a run; every finished cell is on disk."""

    def __init__(self, run: RunDir, done: int, total: int, terminated: bool = False) -> None:
        super().__init__(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}: {done} of {total} cells kept "
                         f"in {run.path}; finish with --resume")
        self.run, self.done, self.total, self.terminated = run, done, total, terminated


@dataclass
class RunResult:
    """What a finished run left behind."""

    run: RunDir
    cells: pd.DataFrame
    ran: int
    skipped: int
    failed: int

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def failed_cells(self) -> int:
        """Cells of the suite whose record is not ok, this run's and kept ones alike."""
        return int((self.cells["status"] != STATUS_OK).sum()) if len(self.cells) else 0


# --- set-up ------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """Where metrics cache reference statistics: $DIFFBENCH_CACHE_DIR or ~/.cache/diffbench."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "diffbench")


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _run_dir(suite: Suite, out_dir: str | Path | None, resume: bool, root: Path,
             cache: Path | None = None) -> tuple[RunDir, bool]:
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


def _where(suite: Suite, out_dir: str | Path | None, resume: bool, root: Path,
           shard: Shard | None, cache: Path | None = None) -> tuple[RunDir, bool]:
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


def _claim(run: RunDir, fresh_default: bool) -> RunDir:
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


def load_models(suite: Suite, registry: Registry) -> dict[str, DiffusionModel]:
    """The suite's models by key, on its device and dtype; a bad option or device is a SuiteError."""
    try:
        device = resolve_device(suite.device)
    except ValueError as exc:
        raise SuiteError(f"device: {exc}") from None
    models = {}
    for i, spec in enumerate(suite.model):
        comp = registry.get("model", spec.name)
        where = "model" if len(suite.model) == 1 else f"model[{i}]"
        try:
            model = comp.obj(**resolve_options(comp, spec.options))
        except (*CELL_FAILURES, TimeLimitExceeded) as exc:  # a model that cannot load is a configuration error
            text = str(exc) if isinstance(exc, (ValueError, FileNotFoundError)) else f"{type(exc).__name__}: {exc}"
            text = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
            raise SuiteError(f"{where}: {spec.name!r} could not be loaded: {text}") from None
        if suite.reference is not None:
            model.dataset = suite.reference  # distribution metrics score against model.dataset
        models[spec.key] = model.to(device, resolve_dtype(suite.dtype, model.dtype))
    return models


def _preflight(suite: Suite, cells: list[CellSpec], models: dict[str, DiffusionModel], registry: Registry,
               allow_large: bool = False, grids: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, float]:
    """Config problems that need the model (guidance on an unconditional model, grids it cannot take, a
    batch's noise too large); returns each cell's declared network evaluations over all its samples, and
    adds the σ grid of every deterministic cell to ``grids`` (by ``grid_key`` of its model)."""
    keys = [s.key for s in suite.grid.scheduler]
    work: dict[str, float] = {}
    grids = {} if grids is None else grids
    for cell in cells:
        model = models[cell.model.key]
        if cell.guidance is not None and model.condition is None:
            raise SuiteError(f"grid.guidance: model {cell.model.key!r} is unconditional; use guidance: [null]")
        if cell.guidance is not None and not suite.conditional:
            raise SuiteError("grid.guidance: guidance needs conditional: true")
        try:
            grid, _ = make_grid(model, cell.scheduler.name, cell.steps, cell.scheduler.options,
                                quantize=cell.scheduler.quantize, final_zero=cell.scheduler.final_zero,
                                registry=registry)
        except CELL_FAILURES as exc:
            where = f"grid.scheduler[{keys.index(cell.scheduler.key)}]" if cell.scheduler.key in keys else "include"
            text = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            raise SuiteError(f"{where} ({cell.scheduler.key}, steps={cell.steps}){_on_model(suite, cell)}: "
                             f"{text}") from None
        comp = registry.get("sampler", cell.sampler.name)
        options = resolve_options(comp, cell.sampler.options)
        try:
            per_sample = comp.meta["nfe"](grid.sigmas, **options) * evaluations_per_call(cell.guidance)
        except CELL_FAILURES:
            per_sample = len(grid.sigmas) * evaluations_per_call(cell.guidance)  # the cell will record the bug
        work[cell.cell_id] = float(per_sample) * suite.num_samples * len(suite.seeds)
        stochastic = comp.meta.get("stochastic")
        try:
            bank = noise_draws(comp.meta, grid.sigmas, options) if stochastic is None or stochastic(**options) else 0
        except CELL_FAILURES:
            bank = len(grid.sigmas) - 1  # the cell will record the bug
        try:
            deterministic = stochastic is not None and not stochastic(**options)
        except CELL_FAILURES:
            deterministic = False
        if deterministic:
            grids.setdefault(grid_key(model), []).append(
                {"sigmas": grid.sigmas.tolist(), "guidance": cell.guidance, "clip_x0": cell.sampler.clip_x0})
        # what one batch draws before its first network call: starting noise, and the step-noise bank
        # (steps × the sampler's draws per step: pc and restart draw several)
        rows = min(suite.batch_size, suite.num_samples)
        size = math.prod(model.shape) * torch.empty((), dtype=model.dtype).element_size()
        check_batch_bytes(rows * size * (1 + bank), "batch_size × grid.steps", allow_large)
    return work


TRY_SAMPLES = 2  # the batch on which preflight tries each model and each sampler's option values


def _try_batch(suite: Suite, cell: CellSpec, model: DiffusionModel, registry: Registry) -> BaseException | None:
    """What sampling one batch of TRY_SAMPLES of ``cell`` raises (None when it samples)."""
    try:
        with time_limit(suite.time_limit):
            for _ in sampling_call(suite, cell, model, registry, suite.seeds[0], min(TRY_SAMPLES, suite.num_samples)):
                pass
    except (*CELL_FAILURES, TimeLimitExceeded) as exc:
        return exc
    return None


def _try_models_and_options(suite: Suite, cells: list[CellSpec], models: dict[str, DiffusionModel],
                            registry: Registry) -> None:
    """Sample one tiny batch as the run would: each model (through euler, at the suite's shape, conditioning and
    guidance) and each sampler given option values. A model that fails is a SuiteError; so are option values
    that fail where the sampler's defaults do not (a sampler that fails with its defaults too fails its own
    cells at run time, with the reason recorded)."""
    sampler_keys = [s.key for s in suite.grid.sampler]
    for i, (key, model) in enumerate(models.items()):
        mine = [c for c in cells if c.model.key == key]
        where = "model" if len(suite.model) == 1 else f"model[{i}]"
        for guided in (False, True):
            group = [c for c in mine if (c.guidance is not None) == guided]
            if not group:
                continue
            cell = min(group, key=lambda c: (c.steps, c.index))
            if ("sampler", "euler") in registry:  # the plainest sampler: a failure here is the model's
                cell = dataclasses.replace(cell, sampler=SamplerSpec(name="euler"))
            exc = _try_batch(suite, cell, model, registry)
            if exc is not None and not isinstance(exc, TimeLimitExceeded):
                cond = f", guidance {cell.guidance:g}" if guided else (", class-conditional" if suite.conditional
                                                                       and model.condition is not None else "")
                raise SuiteError(f"{where}: {cell.model.name!r} fails on a batch of "
                                 f"{min(TRY_SAMPLES, suite.num_samples)} samples of shape {tuple(model.shape)}{cond}: "
                                 f"{_first_line(exc)}")
        tried = set()
        for cell in sorted(mine, key=lambda c: (c.steps, c.index)):
            spec = cell.sampler
            if spec.key in tried or not (spec.options or spec.clip_x0):
                continue
            tried.add(spec.key)
            exc = _try_batch(suite, cell, model, registry)
            if exc is None or isinstance(exc, TimeLimitExceeded):
                continue
            plain = dataclasses.replace(cell, sampler=SamplerSpec(name=spec.name))
            if _try_batch(suite, plain, model, registry) is not None:
                continue  # the sampler fails whatever its options: its cells fail and record why
            place = f"grid.sampler[{sampler_keys.index(spec.key)}]" if spec.key in sampler_keys else "include"
            given = {**spec.options, **({"clip_x0": True} if spec.clip_x0 else {})}
            raise SuiteError(f"{place} ({spec.key}){_on_model(suite, cell)}: options {given} fail on a batch of "
                             f"{min(TRY_SAMPLES, suite.num_samples)} samples where the defaults do not: "
                             f"{_first_line(exc)}")


def _reference_plan(suite: Suite, cells: list[CellSpec], models: dict[str, DiffusionModel], registry: Registry,
                    context: MetricContext, plan: Plan) -> Plan:
    """``plan`` with what the metrics' shared references will cost (metrics with ``planned_cost``), nothing solved."""
    costs = []
    for spec in suite.metrics:
        comp = registry.get("metric", spec.name)
        estimate = getattr(comp.obj, "planned_cost", None)
        if not callable(estimate):
            continue
        options = resolve_options(comp, spec.options)
        for key, model in models.items():
            if not any(c.model.key == key for c in cells):
                continue
            try:
                costs.append(estimate(model=model, context=context, num_samples=suite.num_samples, seeds=suite.seeds,
                                      batch_size=suite.batch_size, **options))
            except CELL_FAILURES:
                continue  # the warm-up names a metric that cannot run
    if not costs:
        return plan
    known = [c["nfe"] for c in costs if c["nfe"] is not None]
    return replace(plan, references=sum(c["references"] for c in costs), references_cached=sum(c["cached"] for c in costs),
                   reference_nfe=sum(known) if len(known) == len(costs) else None,
                   reference_note="; ".join(sorted({c["how"] for c in costs})))


def _on_model(suite: Suite, cell: CellSpec) -> str:
    """' on model X' in messages, where the suite has several."""
    return f" on model {cell.model.key!r}" if len(suite.model) > 1 else ""


# --- provenance --------------------------------------------------------------------------------

def calibrate(model: DiffusionModel, batch_size: int, repeats: int = 5) -> dict[str, Any]:
    """Bare network time on one batch: the per-machine yardstick speed comparisons divide by (median), and the
    network part of each cell's counted time (minimum: the call undisturbed by other processes)."""
    times = bare_network_times(model, batch_size, repeats=repeats)
    return {"network_seconds_per_call": statistics.median(times), "network_seconds_per_call_min": min(times),
            "batch_size": batch_size,
            "method": f"median (and minimum) of {repeats} bare network calls on one batch after 2 warm-up calls",
            "cpu_reference_seconds": cpu_reference_seconds()}


def base_manifest(suite: Suite, models: dict[str, DiffusionModel], registry: Registry,
                  command: str | None) -> dict[str, Any]:
    model = next(iter(models.values()))
    return {
        "schema_version": SCHEMA_VERSION, "suite": suite.name, "description": suite.description,
        "status": "running",
        "started": now(),
        "command": command if command is not None else shlex.join(sys.argv),
        "git": git_state(), "versions": versions(), "plugins": registry.plugin_versions(),
        "device": str(model.device), "device_name": device_name(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "models": {key: m.identity() for key, m in models.items()},
        "reference": suite.reference.record() if suite.reference else model.dataset,
        "num_samples": suite.num_samples,
        "batch_size": suite.batch_size, "seeds": suite.seeds,
        "metrics": {m.name: {"options": m.options} for m in suite.metrics},
    }


# --- the run -----------------------------------------------------------------------------------

def _warm_up(suite: Suite, cells: list[CellSpec], model: DiffusionModel, registry: Registry,
             context: MetricContext) -> None:
    """One untimed full-batch sampling call per model, so first-call costs stay out of every cell's time.

    Every metric is set up first and scores the warm-up batch: a metric that cannot run on this model
    (no reference dataset, extractor weights missing, not analytic, or any other exception) is a
    configuration error found before anything is written, rather than the same failure in every cell.
    Scoring the warm-up batch also fills the reference-feature cache. A sampler that fails here fails
    its own cells later; the warm-up moves on to the next sampler.
    """
    try:
        plan = metric_plan(suite, model, registry, context)
    except MetricError as exc:
        _metric_config_error(suite, cells[0], exc)
    tried = set()
    for cell in cells:
        if cell.sampler.key in tried:
            continue
        tried.add(cell.sampler.key)
        rows = plan.rows()
        try:
            with time_limit(suite.time_limit):
                call = sampling_call(suite, cell, model, registry, suite.seeds[0],
                                     min(suite.batch_size, suite.num_samples))
                for batch in call:
                    rows.add(batch)
        except MetricError as exc:
            _metric_config_error(suite, cell, exc)
        except (*CELL_FAILURES, TimeLimitExceeded):
            continue  # the cell itself will fail and record why
        try:
            with time_limit(suite.time_limit):
                plan.score(rows, call.result)
        except MetricError as exc:
            _metric_config_error(suite, cell, exc)
        except TimeLimitExceeded as exc:
            raise SuiteError(f"metrics: scoring one warm-up batch ran past time_limit ({exc})") from None
        return


def _metric_config_error(suite: Suite, cell: CellSpec, exc: MetricError) -> NoReturn:
    """A metric failing during the warm-up, whatever it raised, is a SuiteError naming the suite's metrics entry."""
    i = next((i for i, m in enumerate(suite.metrics) if m.name == exc.metric), None)
    where = f"metrics[{i}] ({exc.metric})" if i is not None else f"metric {exc.metric!r}"
    orig = exc.original
    text = str(orig) if isinstance(orig, ValueError) else f"{type(orig).__name__}: {orig}"
    raise SuiteError(f"{where}{_on_model(suite, cell)}: {text.splitlines()[0] if text else type(orig).__name__}") \
        from None


def _finish(run: RunDir, manifest: dict[str, Any], status: str, t0: float, context: MetricContext,
            cells: list[CellSpec], draw: bool = True,
            on_damaged: Callable[[DamagedFileError], None] | None = None) -> pd.DataFrame:
    """Rebuild cells.csv from the cell records of this suite, close the manifest, draw plots, write the report.

    A shard (``ShardDir``) closes only its own manifest: the shared table, plots and report are the
    merge's (``diffbench report RUN``), so shards never write the same file.
    """
    records = _records(run, cells, on_damaged)
    sharded = isinstance(run, ShardDir)
    frame = cells_frame(records) if sharded else run.write_csv(records)
    values = {}
    for r in records:
        for name, m in r.get("metrics", {}).items():
            values.setdefault(name, {"higher_is_better": m.get("higher_is_better"), "method": m.get("method")})
    manifest.update({
        "status": status, "finished": now(),
        "wall_seconds": manifest.get("wall_seconds_before", 0.0) + time.perf_counter() - t0,
        "metric_info": context.info, "metric_values": values,
        "cells": {"total": len(cells), "ok": int((frame["status"] == STATUS_OK).sum()),
                  "failed": int((frame["status"] == STATUS_FAILED).sum())},
    })
    manifest.setdefault("executor", {})["cells"] = {r["cell_id"]: placement(r) for r in records}
    run.write_manifest(manifest)
    if sharded:
        return frame
    try:
        files = plots.make_plots(frame, run.path, report.directions(manifest)) if draw else []
        report.write_report(run, frame, files, records)
    except Exception as exc:  # results are on disk already; a plotting bug must not hide them
        print(f"diffbench: warning: plots or report failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return frame


@dataclass
class Prepared:
    """A suite past every pre-flight check: its cells, models (loaded, warmed up), plan and metric context."""

    suite: Suite
    cells: list[CellSpec]
    models: dict[str, DiffusionModel]
    plan: Plan
    context: MetricContext
    registry: Registry
    warm_start: float  # perf_counter() when the warm-up began (wall-clock counts from here)


def static_checks(suite: Suite | str | Path, registry: Registry | None = None, *, time_limit: float | None = None,
                  allow_large: bool = False, trust_code: bool | None = None) -> tuple[Suite, list[CellSpec]]:
    """The checks that need no model, data or weights: the suite file (strict values, bounded YAML), the
    plugins and their options, consent for any code the suite names (``trust_code``; None: the
    DIFFBENCH_TRUST_CODE environment setting), the time limit, the grid's size and that it is not empty.
    Returns the checked suite and its cells; raises SuiteError with a one-line message."""
    registry = registry or default_registry()
    suite = load_suite(suite, registry) if isinstance(suite, (str, Path)) else check_plugins(suite, registry)
    try:
        check_suite_code(suite, registry, code_trusted(trust_code))
    except UntrustedCodeError as exc:
        raise SuiteError(str(exc)) from None
    if time_limit is not None:
        try:
            suite = suite.model_copy(update={"time_limit": check_seconds(time_limit)})
        except ValueError as exc:
            raise SuiteError(f"--time-limit: {exc}") from None
    check_grid_size(suite, allow_large)
    cells = expand(suite)
    if not cells:
        raise SuiteError("grid: no cells are left after exclude and include")
    return suite, cells


def preflight(suite: Suite | str | Path, registry: Registry | None = None, *, out_dir: str | Path | None = None,
              resume: bool = False, results_root: str | Path | None = None, cache_dir: str | Path | None = None,
              time_limit: float | None = None, allow_large: bool = False, shard: Shard | None = None,
              trust_code: bool | None = None, dry_run: bool = False) -> Prepared:
    """Every check a run makes before it writes anything, in the order a run makes them.

    The suite file (strict values, bounded YAML), the plugins and their options, the grid's size and
    that it is not empty, the output and cache directories (when ``results_root`` is given: as a run
    would use them), the models (device, sizes), every cell's σ grid on its model, guidance on
    conditional models only, the plan's limits, a warm-up that samples one batch per model and
    tries every metric on it, then one batch of 2 through each model and each sampler given options. Raises SuiteError (or RunDirError) with a one-line message. With
    ``shard``, only that shard's cells (and its view of the shared run directory). ``trust_code``: see
    ``static_checks``. ``dry_run`` (validate): metrics check that they can run but compute no costly
    reference (the plan states what they would cost).
    """
    registry = registry or default_registry()
    suite, cells = static_checks(suite, registry, time_limit=time_limit, allow_large=allow_large,
                                 trust_code=trust_code)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if results_root is not None:
        _where(suite, out_dir, resume, Path(results_root), shard, cache)
    if suite.metrics:
        check_writable(cache, "cache directory")
    models = load_models(suite, registry)
    grids: dict[str, list[dict[str, Any]]] = {}
    # every cell's, so shards deal them alike; the grids of the whole suite, also in a shard: a reference
    # serves the same stops whichever shard solves it
    work = _preflight(suite, cells, models, registry, allow_large, grids)
    if shard is not None:
        cells = shard.select(cells, work)
    plan = Plan(len(cells), len(suite.seeds), suite.num_samples, sum(work[c.cell_id] for c in cells))
    check_plan(plan, allow_large)
    device = next(iter(models.values())).device
    context = MetricContext(cache_dir=cache, device=device, seed=suite.seeds[0], info={}, registry=registry,
                            grids=grids, dry_run=dry_run)
    plan = _reference_plan(suite, cells, models, registry, context, plan)
    warm_start = time.perf_counter()
    for key, model in models.items():
        _warm_up(suite, [c for c in cells if c.model.key == key], model, registry, context)
    _try_models_and_options(suite, expand(suite), models, registry)  # after the metrics' set-up: data first
    return Prepared(suite, cells, models, plan, context, registry, warm_start)


def run_suite(suite: Suite | str | Path, out_dir: str | Path | None = None, *, resume: bool = False,
              registry: Registry | None = None, progress: bool = True, cache_dir: str | Path | None = None,
              command: str | None = None, results_root: str | Path = DEFAULT_ROOT, draw: bool = True,
              time_limit: float | None = None, allow_large: bool = False,
              announce: Callable[[str], None] | None = None, executor: Executor | str | None = None,
              shard: Shard | str | None = None, trust_code: bool | None = None) -> RunResult:
    """Run every cell of ``suite`` into ``out_dir`` (default ``results/<suite>/<run-id>/``).

    With ``resume``, cells already finished with the same configuration are kept, not rerun
    (failed cells and cells whose record cannot be read are rerun). ``draw=False`` skips the run plots
    (the report is still written). ``time_limit`` (seconds, overriding the suite's) fails a cell that
    takes longer. ``announce`` receives the plan and warnings as lines. ``executor`` computes the
    cells ('local', the default, 'ray', or an Executor); this process writes every record. ``shard``
    ('I/N') runs only shard I's cells into the shared ``out_dir`` under a lock of its own (see
    ``diffbench.executors.shard``). ``trust_code=True`` lets the suite name code to import and run (a
    ``python`` model's factory; None: the DIFFBENCH_TRUST_CODE environment setting; see
    ``diffbench.trust``). Raises SuiteError for a suite that cannot run and RunDirError for
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
    prep = preflight(suite, registry, out_dir=out_dir, resume=resume, results_root=results_root,
                     cache_dir=cache_dir, time_limit=time_limit, allow_large=allow_large, shard=shard,
                     trust_code=trust_code)
    say(f"plan: {prep.plan.describe()}")
    run, resumed = _where(prep.suite, out_dir, resume, Path(results_root), shard, prep.context.cache_dir)
    job = Job(prep.suite, prep.registry, prep.models, prep.context, run, progress)
    try:  # the executor starts before the run directory is made or locked: if it cannot, nothing is left behind
        executor_info = executor.start(job)
        if executor_info.get("cell_split"):
            say(executor_info["cell_split"])
        run = _claim(run, fresh_default=out_dir is None and not resumed)
        with _locked(run, shard):
            if out_dir is not None:  # another run may have written here since the check above
                run, resumed = _where(prep.suite, out_dir, resume, Path(results_root), shard, prep.context.cache_dir)
            job.run = run
            return _execute(prep, run, resumed, executor, executor_info, shard, progress=progress, command=command,
                            draw=draw, say=say)
    finally:
        executor.close()  # a half-started Ray instance is stopped too


@contextlib.contextmanager
def _locked(run: RunDir, shard: Shard | None) -> Iterator[None]:
    """The run directory's locks: ``.lock`` exclusively for a whole run; shared, plus the shard's own, for a shard."""
    with run.lock(shared=shard is not None), (run.lock(shard.lock_name) if shard else contextlib.nullcontext()):
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


def _execute(prep: Prepared, run: RunDir, resumed: bool, executor: Executor, executor_info: dict[str, Any],
             shard: Shard | None, *, progress: bool, command: str | None, draw: bool,
             say: Callable[[str], None]) -> RunResult:
    """The run proper, under the run directory's lock: the executor computes the cells, this writes them.

    Once the manifest is written it never stays 'running': Ctrl-C or SIGTERM close it as 'interrupted',
    any other exception as 'failed' with the error."""
    suite, cells, models, registry, context = prep.suite, prep.cells, prep.models, prep.registry, prep.context
    warned: set[str] = set()

    def damaged(exc: DamagedFileError) -> None:
        if str(exc) not in warned:
            warned.add(str(exc))
            say(f"warning: {exc}; rerunning its cell")

    changed: dict[str, list[str]] = {}
    done = {c.cell_id for c in cells if resumed and _finished(run, c, damaged, models, changed)}
    for key, hashes in changed.items():
        say(f"warning: model {key!r}: its checkpoint changed since {len(hashes)} finished cell(s) were run "
            f"(sha256 {_short(hashes[0])} then, {_short(models[key].checkpoint_hash)} now); rerunning them")
    todo = [c for c in cells if c.cell_id not in done]
    with _sigterm_interrupts() as sigterm:  # after the executor started: Ray's driver installs a handler of its own
        manifest = base_manifest(suite, models, registry, command)
        manifest.update(plan=prep.plan.as_dict(), time_limit=suite.time_limit, executor=executor_info)
        if shard is not None:
            manifest["shard"] = {"index": shard.index, "count": shard.count, "cells": len(cells),
                                 "network_evaluations": prep.plan.nfe}
        if resumed:
            earlier = _earlier_manifest(run, say)
            manifest.update(started=earlier.get("started", manifest["started"]), resumed=earlier.get("resumed", 0) + 1,
                            wall_seconds_before=earlier.get("wall_seconds", 0.0))
        t0 = prep.warm_start
        ran = failed = 0
        outer = tqdm(total=len(cells), initial=len(done), desc=suite.name, unit="cell", disable=not progress,
                     position=0, dynamic_ncols=True)
        try:
            write_json(run.suite_path, suite.model_dump(mode="json"))
            run.write_manifest(manifest)  # from here on the run is resumable
            manifest["calibration"] = {key: calibrate(m, suite.batch_size) for key, m in models.items()}
            run.write_manifest(manifest)
            for finished in executor.run(todo):
                record = finished.record
                record.update(counted_seconds_per_sample(record, manifest["calibration"].get(record.get("model")) or {}))
                for path, data in finished.files.items():  # files a worker made for the cell (picture, samples)
                    write_atomic(run.path / path, data)
                run.write_cell(record)
                if not isinstance(run, ShardDir):
                    run.write_csv(_records(run, cells, damaged))
                ran += 1
                failed += record["status"] != STATUS_OK
                outer.update(1)
        except KeyboardInterrupt as exc:
            outer.close()
            executor.close()  # cancels work in flight
            if run.manifest_path.exists():
                _finish(run, manifest, "interrupted", t0, context, cells, draw, damaged)
            # count what is on disk: the interrupt may land between a cell's write and ``ran += 1``
            raise RunInterrupted(run, len(_records(run, cells, damaged)), len(cells),
                                 terminated=isinstance(exc, Terminated) or bool(sigterm)) from None
        except BaseException as exc:
            outer.close()
            executor.close()
            if run.manifest_path.exists():
                manifest["error"] = _first_line(exc)
                with contextlib.suppress(Exception):  # the original error is what the user must see
                    _finish(run, manifest, "failed", t0, context, cells, False, damaged)
            raise
        finally:
            executor.close()
        outer.close()
        frame = _finish(run, manifest, "complete", t0, context, cells, draw, damaged)
    return RunResult(run, frame, ran=ran, skipped=len(done), failed=failed)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _earlier_manifest(run: RunDir, say: Callable[[str], None]) -> dict[str, Any]:
    """The manifest of the run being resumed; {} when it was never written or cannot be read."""
    if not run.manifest_path.exists():
        return {}  # killed before writing it
    try:
        return run.read_manifest()
    except DamagedFileError as exc:
        say(f"warning: {exc}; writing a new one")
        return {}


def _records(run: RunDir, cells: list[CellSpec],
             on_damaged: Callable[[DamagedFileError], None] | None = None) -> list[dict[str, Any]]:
    """This suite's cell records (a resumed run may hold records of cells since changed); damaged ones skipped."""
    wanted = {c.cell_id for c in cells}
    return [r for r in run.read_cells(on_damaged=on_damaged or (lambda exc: None)) if r["cell_id"] in wanted]


def _finished(run: RunDir, cell: CellSpec, on_damaged: Callable[[DamagedFileError], None],
              models: dict[str, DiffusionModel] | None = None, changed: dict[str, list[str]] | None = None) -> bool:
    """Whether ``cell`` has an ok record of the same configuration and, with ``models``, made with the same
    checkpoint content (a cell run before the checkpoint file changed is listed in ``changed`` and rerun)."""
    try:
        rec = run.read_cell(cell.cell_id)
    except DamagedFileError as exc:
        on_damaged(exc)
        return False
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
