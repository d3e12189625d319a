"""Preparing a run: every check before anything is written, the models loaded, the warm-up.

Executors (local, Ray) load models through :func:`load_models` and warm them up through :func:`warm_up`;
the runner calls :func:`preflight`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import torch

from diffbench.core.denoiser import DiffusionModel, evaluations_per_call
from diffbench.metrics.base import MetricContext, grid_key
from diffbench.metrics.stream import MetricError
from diffbench.registry import Registry, default_registry, resolve_options
from diffbench.run.cell import CELL_FAILURES, metric_plan, sampling_call
from diffbench.run.outdir import choose_run_dir
from diffbench.run.plan import Plan, check_batch_bytes, check_grid_size, check_plan
from diffbench.run.rundir import (
    check_writable,
)
from diffbench.run.sampling import make_grid
from diffbench.run.shards import Shard
from diffbench.run.suite import CellSpec, SamplerSpec, Suite, SuiteError, check_plugins, expand, load_suite
from diffbench.run.timelimit import TimeLimitExceeded, check_seconds, time_limit
from diffbench.samplers import noise_draws
from diffbench.util.devices import resolve_device, resolve_dtype
from diffbench.util.text import error_line
from diffbench.util.trust import UntrustedCodeError, check_suite_code, code_trusted

CACHE_ENV = "DIFFBENCH_CACHE_DIR"


def default_cache_dir() -> Path:
    """Where metrics cache reference statistics: $DIFFBENCH_CACHE_DIR or ~/.cache/diffbench."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "diffbench")


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


def check_cells(
    suite: Suite,
    cells: list[CellSpec],
    models: dict[str, DiffusionModel],
    registry: Registry,
    allow_large: bool = False,
    grids: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, float]:
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
            grid, _ = make_grid(
                model,
                cell.scheduler.name,
                cell.steps,
                cell.scheduler.options,
                quantize=cell.scheduler.quantize,
                final_zero=cell.scheduler.final_zero,
                registry=registry,
            )
        except CELL_FAILURES as exc:
            where = f"grid.scheduler[{keys.index(cell.scheduler.key)}]" if cell.scheduler.key in keys else "include"
            text = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            raise SuiteError(
                f"{where} ({cell.scheduler.key}, steps={cell.steps}){_on_model(suite, cell)}: {text}"
            ) from None
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
                {"sigmas": grid.sigmas.tolist(), "guidance": cell.guidance, "clip_x0": cell.sampler.clip_x0}
            )
        # what one batch draws before its first network call: starting noise, and the step-noise bank
        # (steps × the sampler's draws per step: pc and restart draw several)
        rows = min(suite.batch_size, suite.num_samples)
        size = math.prod(model.shape) * torch.empty((), dtype=model.dtype).element_size()
        check_batch_bytes(rows * size * (1 + bank), "batch_size × grid.steps", allow_large)
    return work


def _on_model(suite: Suite, cell: CellSpec) -> str:
    """' on model X' in messages, where the suite has several."""
    return f" on model {cell.model.key!r}" if len(suite.model) > 1 else ""


def warm_up(
    suite: Suite,
    cells: list[CellSpec],
    model: DiffusionModel,
    registry: Registry,
    context: MetricContext | None = None,
) -> None:
    """One untimed full-batch sampling call on ``model``, with the first of ``cells``' samplers that samples,
    so first-call costs stay out of every cell's time. The one warm-up: the run's preparation calls it
    once per model, and so does each Ray worker process, once per model and run, before its first cell.

    With ``context`` (the run's preparation), every metric is set up first and scores the warm-up batch:
    a metric that cannot run on this model (no reference dataset, extractor weights missing, not
    analytic, or any other exception) is a configuration error found before anything is written,
    rather than the same failure in every cell; scoring the warm-up batch also fills the
    reference-feature cache. Without it (a worker, whose driver has made those checks) it only samples.
    A sampler that fails here fails its own cells later; the warm-up moves on to the next sampler.
    """
    plan = None
    if context is not None:
        try:
            plan = metric_plan(suite, model, registry, context)
        except MetricError as exc:
            _metric_config_error(suite, cells[0], exc)
    tried = set()
    for cell in cells:
        if cell.sampler.key in tried:
            continue
        tried.add(cell.sampler.key)
        rows = plan.rows() if plan is not None else None
        try:
            with time_limit(suite.time_limit):
                call = sampling_call(
                    suite, cell, model, registry, suite.seeds[0], min(suite.batch_size, suite.num_samples)
                )
                for batch in call:
                    if rows is not None:
                        rows.add(batch)
        except MetricError as exc:
            _metric_config_error(suite, cell, exc)
        except (*CELL_FAILURES, TimeLimitExceeded):
            continue  # the cell itself will fail and record why
        if plan is None:
            return
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
    raise SuiteError(
        f"{where}{_on_model(suite, cell)}: {text.splitlines()[0] if text else type(orig).__name__}"
    ) from None


def static_checks(
    suite: Suite | str | Path,
    registry: Registry | None = None,
    *,
    time_limit: float | None = None,
    allow_large: bool = False,
    trust_code: bool | None = None,
) -> tuple[Suite, list[CellSpec]]:
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


def preflight(
    suite: Suite | str | Path,
    registry: Registry | None = None,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    results_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    time_limit: float | None = None,
    allow_large: bool = False,
    shard: Shard | None = None,
    trust_code: bool | None = None,
    dry_run: bool = False,
) -> Prepared:
    """Every check a run makes before it writes anything, in the order a run makes them.

    The suite file (strict values, bounded YAML), the plugins and their options, the grid's size and
    that it is not empty, the output and cache directories (when ``results_root`` is given: as a run
    would use them), the models (device, sizes), every cell's σ grid on its model, guidance on
    conditional models only, the plan's limits, a warm-up that samples one batch per model and
    tries every metric on it, then one batch of 2 through each model and each sampler given options. Raises
    SuiteError (or RunDirError) with a one-line message. With
    ``shard``, only that shard's cells (and its view of the shared run directory). ``trust_code``: see
    ``static_checks``. ``dry_run`` (validate): metrics check that they can run but compute no costly
    reference (the plan states what they would cost).
    """
    registry = registry or default_registry()
    suite, cells = static_checks(suite, registry, time_limit=time_limit, allow_large=allow_large, trust_code=trust_code)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if results_root is not None:
        choose_run_dir(suite, out_dir, resume, Path(results_root), shard, cache)
    if suite.metrics:
        check_writable(cache, "cache directory")
    models = load_models(suite, registry)
    grids: dict[str, list[dict[str, Any]]] = {}
    # every cell's, so shards deal them alike; the grids of the whole suite, also in a shard: a reference
    # serves the same stops whichever shard solves it
    work = check_cells(suite, cells, models, registry, allow_large, grids)
    if shard is not None:
        cells = shard.select(cells, work)
    plan = Plan(len(cells), len(suite.seeds), suite.num_samples, sum(work[c.cell_id] for c in cells))
    check_plan(plan, allow_large)
    device = next(iter(models.values())).device
    context = MetricContext(
        cache_dir=cache, device=device, seed=suite.seeds[0], info={}, registry=registry, grids=grids, dry_run=dry_run
    )
    plan = _reference_plan(suite, cells, models, registry, context, plan)
    warm_start = time.perf_counter()
    for key, model in models.items():
        warm_up(suite, [c for c in cells if c.model.key == key], model, registry, context)
    _try_models_and_options(suite, expand(suite), models, registry)  # after the metrics' set-up: data first
    return Prepared(suite, cells, models, plan, context, registry, warm_start)


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


def _try_models_and_options(
    suite: Suite, cells: list[CellSpec], models: dict[str, DiffusionModel], registry: Registry
) -> None:
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
                cond = (
                    f", guidance {cell.guidance:g}"
                    if guided
                    else (", class-conditional" if suite.conditional and model.condition is not None else "")
                )
                raise SuiteError(
                    f"{where}: {cell.model.name!r} fails on a batch of "
                    f"{min(TRY_SAMPLES, suite.num_samples)} samples of shape {tuple(model.shape)}{cond}: "
                    f"{error_line(exc)}"
                )
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
            raise SuiteError(
                f"{place} ({spec.key}){_on_model(suite, cell)}: options {given} fail on a batch of "
                f"{min(TRY_SAMPLES, suite.num_samples)} samples where the defaults do not: "
                f"{error_line(exc)}"
            )


def _reference_plan(
    suite: Suite,
    cells: list[CellSpec],
    models: dict[str, DiffusionModel],
    registry: Registry,
    context: MetricContext,
    plan: Plan,
) -> Plan:
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
                costs.append(
                    estimate(
                        model=model,
                        context=context,
                        num_samples=suite.num_samples,
                        seeds=suite.seeds,
                        batch_size=suite.batch_size,
                        **options,
                    )
                )
            except CELL_FAILURES:
                continue  # the warm-up names a metric that cannot run
    if not costs:
        return plan
    known = [c["nfe"] for c in costs if c["nfe"] is not None]
    return replace(
        plan,
        references=sum(c["references"] for c in costs),
        references_cached=sum(c["cached"] for c in costs),
        reference_nfe=sum(known) if len(known) == len(costs) else None,
        reference_note="; ".join(sorted({c["how"] for c in costs})),
    )
