"""Run a suite: expand the grid, sample and score every cell, write each finished cell at once.

Each cell samples ``num_samples`` per seed from the same per-sample starting noise (sample i of
seed s depends only on (s, i)), so cells are paired. Timing covers sampling only, after a
warm-up call; metrics run after the clock stops. A cell that raises or produces non-finite
samples is recorded as failed and the run goes on; Ctrl-C keeps every finished cell.
"""
from __future__ import annotations

import datetime as dt
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from diffbench import plots, report
from diffbench.calibration import bare_network_seconds
from diffbench.cell import metric_plan, now, run_cell, sampling_call
from diffbench.denoiser import DiffusionModel
from diffbench.devices import resolve_device, resolve_dtype
from diffbench.metrics.base import MetricContext
from diffbench.metrics.stream import MetricError
from diffbench.provenance import device_name, git_state, versions
from diffbench.registry import Registry, default_registry
from diffbench.results import STATUS_FAILED, STATUS_OK, RunDir, find_run, write_json
from diffbench.sampling import make_grid, resolve_options
from diffbench.suite import CellSpec, Suite, SuiteError, check_plugins, expand, load_suite

DEFAULT_ROOT = Path("results")
CACHE_ENV = "DIFFBENCH_CACHE_DIR"


class RunInterrupted(Exception):
    """Ctrl-C during a run; every finished cell is on disk."""

    def __init__(self, run: RunDir, done: int, total: int) -> None:
        super().__init__(f"interrupted: {done} of {total} cells kept in {run.path}; "
                         "finish with --resume")
        self.run, self.done, self.total = run, done, total


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


# --- set-up ------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """Where metrics cache reference statistics: $DIFFBENCH_CACHE_DIR or ~/.cache/diffbench."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "diffbench")


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _run_dir(suite: Suite, out_dir: str | Path | None, resume: bool, root: Path) -> tuple[RunDir, bool]:
    """The run directory and whether it continues an earlier run."""
    if out_dir is None:
        base = root / suite.name
        if resume:
            try:
                return find_run(base), True
            except FileNotFoundError:
                pass  # nothing to resume: start afresh
        run = RunDir(base / new_run_id())
        while run.path.exists():  # two runs in one second
            time.sleep(1)
            run = RunDir(base / new_run_id())
        return run, False
    run = RunDir(out_dir)
    if run.exists():
        if not resume:
            raise SuiteError(f"{run.path}: holds a run already; pass --resume to continue it or choose another --out")
        earlier = run.read_manifest().get("suite")
        if earlier != suite.name:
            raise SuiteError(f"{run.path}: holds a run of suite {earlier!r}, not {suite.name!r}")
        return run, True
    if run.path.exists() and any(run.path.iterdir()):
        raise SuiteError(f"{run.path}: exists and is not a diffbench run directory; choose another --out")
    return run, False


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
        except (ValueError, TypeError, FileNotFoundError) as exc:
            raise SuiteError(f"{where}: {spec.name!r} could not be loaded: {exc}") from None
        if suite.reference is not None:
            model.dataset = suite.reference  # distribution metrics score against model.dataset
        models[spec.key] = model.to(device, resolve_dtype(suite.dtype, model.dtype))
    return models


def _preflight(suite: Suite, cells: list[CellSpec], models: dict[str, DiffusionModel], registry: Registry) -> None:
    """Config problems that need the model (guidance on an unconditional model, grids it cannot take)."""
    keys = [s.key for s in suite.grid.scheduler]
    for cell in cells:
        model = models[cell.model.key]
        if cell.guidance is not None and model.num_classes is None:
            raise SuiteError(f"grid.guidance: model {cell.model.key!r} is unconditional; use guidance: [null]")
        if cell.guidance is not None and not suite.conditional:
            raise SuiteError("grid.guidance: guidance needs conditional: true")
        try:
            make_grid(model, cell.scheduler.name, cell.steps, cell.scheduler.options,
                      quantize=cell.scheduler.quantize, final_zero=cell.scheduler.final_zero,
                      registry=registry)
        except ValueError as exc:
            where = f"grid.scheduler[{keys.index(cell.scheduler.key)}]" if cell.scheduler.key in keys else "include"
            raise SuiteError(f"{where} ({cell.scheduler.key}, steps={cell.steps}){_on_model(suite, cell)}: "
                             f"{exc}") from None


def _on_model(suite: Suite, cell: CellSpec) -> str:
    """' on model X' in messages, where the suite has several."""
    return f" on model {cell.model.key!r}" if len(suite.model) > 1 else ""


# --- provenance --------------------------------------------------------------------------------

def calibrate(model: DiffusionModel, batch_size: int, repeats: int = 5) -> dict[str, Any]:
    """Bare network time on one batch: the per-machine yardstick speed comparisons divide by."""
    seconds = bare_network_seconds(model, batch_size, repeats=repeats)
    return {"network_seconds_per_call": seconds, "batch_size": batch_size,
            "method": f"median of {repeats} bare network calls on one batch after 2 warm-up calls"}


def base_manifest(suite: Suite, models: dict[str, DiffusionModel], registry: Registry,
                  command: str | None) -> dict[str, Any]:
    model = next(iter(models.values()))
    return {
        "suite": suite.name, "description": suite.description, "status": "running",
        "started": now(),
        "command": command if command is not None else shlex.join(sys.argv),
        "git": git_state(), "versions": versions(), "plugins": registry.plugin_versions(),
        "device": str(model.device), "device_name": device_name(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "models": {key: m.identity() for key, m in models.items()},
        "reference": suite.reference or model.dataset, "num_samples": suite.num_samples,
        "batch_size": suite.batch_size, "seeds": suite.seeds,
        "metrics": {m.name: {"options": m.options} for m in suite.metrics},
    }


# --- the run -----------------------------------------------------------------------------------

def _warm_up(suite: Suite, cell: CellSpec, model: DiffusionModel, registry: Registry,
             context: MetricContext) -> None:
    """One untimed full-batch sampling call per model, so first-call costs stay out of every cell's time.

    Every metric is set up first (a metric that cannot run on this model — no reference dataset,
    extractor weights missing, not analytic — raises ValueError there or when scoring the warm-up
    batch), and that is a configuration error found before the grid runs rather than the same
    failure in every cell. Scoring the warm-up batch also fills the reference-feature cache.
    """
    try:
        plan = metric_plan(suite, model, registry, context)
    except MetricError as exc:
        _metric_config_error(suite, cell, exc)
        return  # a metric bug: every cell records it
    try:
        call = sampling_call(suite, cell, model, registry, suite.seeds[0], min(suite.batch_size, suite.num_samples))
        rows = plan.rows()
        for batch in call:
            rows.add(batch)
    except MetricError as exc:
        _metric_config_error(suite, cell, exc)
        return
    except Exception:
        return  # the cell itself will fail and record why
    try:
        plan.score(rows, call.result)
    except MetricError as exc:
        _metric_config_error(suite, cell, exc)


def _metric_config_error(suite: Suite, cell: CellSpec, exc: MetricError) -> None:
    """A metric's ValueError during the warm-up is a SuiteError naming the suite's metrics entry."""
    if isinstance(exc.original, ValueError):
        i = next(i for i, m in enumerate(suite.metrics) if m.name == exc.metric)
        raise SuiteError(f"metrics[{i}] ({exc.metric}){_on_model(suite, cell)}: {exc.original}") from None


def _finish(run: RunDir, manifest: dict[str, Any], status: str, t0: float, context: MetricContext,
            cells: list[CellSpec], draw: bool = True) -> pd.DataFrame:
    """Rebuild cells.csv from the cell records of this suite, close the manifest, draw plots, write the report."""
    records = _records(run, cells)
    frame = run.write_csv(records)
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
    run.write_manifest(manifest)
    try:
        files = plots.make_plots(frame, run.path, report.directions(manifest)) if draw else []
        report.write_report(run, frame, files)
    except Exception as exc:  # results are on disk already; a plotting bug must not hide them
        print(f"diffbench: warning: plots or report failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return frame


def run_suite(suite: Suite | str | Path, out_dir: str | Path | None = None, *, resume: bool = False,
              registry: Registry | None = None, progress: bool = True, cache_dir: str | Path | None = None,
              command: str | None = None, results_root: str | Path = DEFAULT_ROOT, draw: bool = True) -> RunResult:
    """Run every cell of ``suite`` into ``out_dir`` (default ``results/<suite>/<run-id>/``).

    With ``resume``, cells already finished with the same configuration are kept, not rerun
    (failed cells are retried). ``draw=False`` skips the run plots (the report is still written).
    Raises SuiteError for a suite that cannot run (before writing anything) and RunInterrupted on
    Ctrl-C, after saving everything finished.
    """
    registry = registry or default_registry()
    suite = load_suite(suite, registry) if isinstance(suite, (str, Path)) else check_plugins(suite, registry)
    cells = expand(suite)
    models = load_models(suite, registry)
    _preflight(suite, cells, models, registry)
    run, resumed = _run_dir(suite, out_dir, resume, Path(results_root))
    done = {c.cell_id for c in cells if resumed and _finished(run, c)}
    todo = [c for c in cells if c.cell_id not in done]
    device = next(iter(models.values())).device
    context = MetricContext(cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(), device=device,
                            seed=suite.seeds[0], info={})
    t0 = time.perf_counter()
    for key, model in models.items():  # before anything is written: a metric that cannot run leaves no run
        first = next((c for c in todo if c.model.key == key), None)
        if first is not None:
            _warm_up(suite, first, model, registry, context)

    manifest = base_manifest(suite, models, registry, command)
    if resumed:
        earlier = run.read_manifest()
        manifest.update(started=earlier.get("started", manifest["started"]), resumed=earlier.get("resumed", 0) + 1,
                        wall_seconds_before=earlier.get("wall_seconds", 0.0))
    run.path.mkdir(parents=True, exist_ok=True)
    write_json(run.suite_path, suite.model_dump(mode="json"))
    manifest["calibration"] = {key: calibrate(m, suite.batch_size) for key, m in models.items()}
    run.write_manifest(manifest)

    ran = failed = 0
    outer = tqdm(total=len(cells), initial=len(done), desc=suite.name, unit="cell", disable=not progress,
                 position=0, dynamic_ncols=True)
    try:
        for cell in todo:
            with tqdm(total=suite.num_samples * len(suite.seeds), desc=cell.cell_id.rsplit("-", 1)[0],
                      unit="sample", leave=False, disable=not progress, position=1, dynamic_ncols=True) as bar:
                record = run_cell(suite, cell, models[cell.model.key], registry, context, run, bar)
            run.write_cell(record)
            run.write_csv(_records(run, cells))
            ran += 1
            failed += record["status"] != STATUS_OK
            outer.update(1)
    except KeyboardInterrupt:
        outer.close()
        _finish(run, manifest, "interrupted", t0, context, cells, draw)
        # count what is on disk: the interrupt may land between a cell's write and ``ran += 1``
        raise RunInterrupted(run, len(_records(run, cells)), len(cells)) from None
    outer.close()
    frame = _finish(run, manifest, "complete", t0, context, cells, draw)
    return RunResult(run, frame, ran=ran, skipped=len(done), failed=failed)


def _records(run: RunDir, cells: list[CellSpec]) -> list[dict[str, Any]]:
    """This suite's cell records (a resumed run may hold records of cells since changed)."""
    wanted = {c.cell_id for c in cells}
    return [r for r in run.read_cells() if r["cell_id"] in wanted]


def _finished(run: RunDir, cell: CellSpec) -> bool:
    rec = run.read_cell(cell.cell_id)
    return rec is not None and rec.get("status") == STATUS_OK and rec.get("config_hash") == cell.config_hash
