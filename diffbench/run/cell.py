"""One cell: stream every seed group's batches into the metrics' features, score once, build the record.

A failure (a plugin raises, samples are not finite) becomes the record's ``status``/``error``;
it is never raised, so the run goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from diffbench.core.denoiser import DiffusionModel
from diffbench.metrics.base import Batch, MetricContext, MetricValue, conventional_direction
from diffbench.metrics.stream import FeatureRows, MetricError, MetricPlan
from diffbench.registry import Component, Registry, resolve_options
from diffbench.run import calibration, drift, pictures
from diffbench.run.record import CellRecord, new_record, now
from diffbench.run.rundir import STATUS_FAILED, STATUS_OK, RunDir
from diffbench.run.sampling import SampleResult, SamplerOutputError, SamplingCall, SamplingSpec
from diffbench.run.saving import SampleSaver
from diffbench.run.suite import CellSpec, Suite
from diffbench.run.timelimit import TimeLimitExceeded
from diffbench.run.timelimit import time_limit as limit_time


def metric_direction(comp: Component, value_name: str) -> bool:
    """Whether larger values of a metric's output are better: the metric's ``higher_is_better`` (a bool
    or a mapping by value name), else the component's meta, else the naming convention (lower when none)."""
    declared = getattr(comp.obj, "higher_is_better", comp.meta.get("higher_is_better"))
    if isinstance(declared, dict):
        declared = declared.get(value_name)
    if isinstance(declared, bool):
        return declared
    return bool(conventional_direction(value_name))


def _aggregate(per_seed: list[dict[str, MetricValue]]) -> dict[str, MetricValue]:
    """One value per metric: the metric's own when one seed, else the mean with the spread across seeds."""
    if len(per_seed) == 1:
        return per_seed[0]
    out = {}
    for name in per_seed[0]:
        vals = [d[name].value for d in per_seed if name in d]
        k = len(vals)
        se = statistics.stdev(vals) / math.sqrt(k) if k > 1 else None
        out[name] = MetricValue(
            statistics.fmean(vals), se, f"standard error of the mean over {k} seed groups (std across groups / √{k})"
        )
    return out


def _block_minima(per_seed: list[dict[str, MetricValue]], directions: dict[str, bool]) -> dict[str, MetricValue]:
    """With several seed groups (blocks), the minimum over blocks of each lower-is-better value, as
    ``<name>-min-over-seeds`` (EDM reports FID as the minimum over three seed blocks): labelled, not an estimate."""
    if len(per_seed) < 2:
        return {}
    out = {}
    for name in per_seed[0]:
        if directions.get(name, True):
            continue
        vals = [d[name].value for d in per_seed if name in d]
        out[f"{name}-min-over-seeds"] = MetricValue(
            min(vals), None, f"minimum over {len(vals)} seed blocks (a selection, not an estimate; no uncertainty)"
        )
    return out


def sampling_spec(suite: Suite, cell: CellSpec, seed: int, num_samples: int, first_index: int = 0) -> SamplingSpec:
    """What one seed group of ``cell`` (or a slice of it from ``first_index``) draws."""
    return SamplingSpec(
        sampler=cell.sampler.name,
        steps=cell.steps,
        scheduler=cell.scheduler.name,
        sampler_options=cell.sampler.options,
        scheduler_options=cell.scheduler.options,
        quantize=cell.scheduler.quantize,
        final_zero=cell.scheduler.final_zero,
        num_samples=num_samples,
        seed=seed,
        first_index=first_index,
        batch_size=suite.batch_size,
        conditional=suite.conditional,
        guidance=cell.guidance,
        clip_x0=cell.sampler.clip_x0,
    )


def sampling_call(
    suite: Suite,
    cell: CellSpec,
    model: DiffusionModel,
    registry: Registry,
    seed: int,
    num_samples: int,
    progress: Callable[[int], None] | None = None,
    first_index: int = 0,
    noise_memo: dict | None = None,
) -> SamplingCall:
    """One seed group (or a slice of it from ``first_index``) of one cell, prepared to stream batch by batch
    (``noise_memo``: see ``SamplingCall``)."""
    return SamplingCall(
        model,
        sampling_spec(suite, cell, seed, num_samples, first_index),
        registry=registry,
        progress=progress,
        noise_memo=noise_memo,
    )


def metric_plan(suite: Suite, model: DiffusionModel, registry: Registry, context: MetricContext) -> MetricPlan:
    """The suite's metrics on ``model``, their feature extractors built (MetricError names a metric that cannot)."""
    pairs = []
    for spec in suite.metrics:
        comp = registry.get("metric", spec.name)
        try:
            pairs.append((comp, resolve_options(comp, spec.options)))
        except ValueError as exc:
            raise MetricError(spec.name, exc) from exc
    return MetricPlan(pairs, model, context)


class CellError(Exception):
    """A cell's failure with a message that already says where (recorded without the class name)."""


# What a plugin may raise that fails only its cell: any exception, and SystemExit (a plugin calling
# sys.exit or argparse). KeyboardInterrupt is the user's Ctrl-C and stops the run.
CELL_FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit)


@dataclass
class SampledGroup:
    """One seed group of a cell, sampled: the metrics' feature rows, the preview picture's samples, the result."""

    rows: FeatureRows  # their ``extract_seconds``: time in the feature extractors (not sampling time)
    preview: torch.Tensor | None
    result: SampleResult


def stream_group(
    suite: Suite,
    cell: CellSpec,
    model: DiffusionModel,
    registry: Registry,
    plan: MetricPlan,
    seed: int,
    preview: bool,
    bar: Any = None,
    *,
    first_index: int = 0,
    num_samples: int | None = None,
    saver: SampleSaver | None = None,
) -> SampledGroup:
    """Sample a seed group (or ``num_samples`` of it from ``first_index``) batch by batch into feature rows
    (and into ``saver``'s files)."""
    call = sampling_call(
        suite,
        cell,
        model,
        registry,
        seed,
        num_samples or suite.num_samples,
        progress=bar.update if bar is not None else None,
        first_index=first_index,
    )
    rows, pictured = plan.rows(), Preview()
    for batch in call:  # each batch checked by the sampling call (shape, dtype, finite, NFE)
        rows.add_later(batch)  # the last batch's features: extracted when scoring reads the rows
        if saver is not None:
            saver.add(batch)
        if preview:
            pictured.add(batch)
    return SampledGroup(rows, pictured.samples(), call.result)


@dataclass
class SampledCell:
    """A cell whose seed groups are sampled and not yet scored: scoring may run on another thread meanwhile."""

    rec: dict[str, Any]
    groups: list[SampledGroup]
    plan: MetricPlan | None = None
    saver: SampleSaver | None = None
    seconds: float = 0.0  # wall-clock of the sampling phase (counts against the cell's time limit)
    failure: BaseException | None = None
    traceback: str | None = None
    probe: Callable[[list[str]], dict[str, Any] | None] | None = None  # the harness probe, once sampling succeeded

    def time_left(self, time_limit: float | None) -> float | None:
        """What the cell's time limit leaves after what it has spent (None: no limit)."""
        return None if time_limit is None else max(time_limit - self.seconds, 1e-3)


def run_cell(
    suite: Suite,
    cell: CellSpec,
    model: DiffusionModel,
    registry: Registry,
    context: MetricContext,
    run: RunDir,
    bar: Any,
    time_limit: float | None = None,
    groups: Callable[[int, MetricPlan], SampledGroup] | None = None,
) -> dict[str, Any]:
    """Sample every seed group of one cell, streaming batches into the metrics' features; score each group once.

    Samples are not kept: each batch goes through the feature extractors as it is produced (only the
    preview picture's first samples, and the samples of metrics in the in-memory form, are kept).
    Failures are recorded, not raised. ``time_limit`` (seconds) bounds sampling and scoring together;
    a cell past it is recorded as failed. ``groups(seed, plan)``, when given, supplies each seed
    group's sampled rows instead of sampling here (a cell split across workers, gathered).
    ``sample_cell`` then ``probe_and_score`` is the same in two parts.
    """
    sampled = sample_cell(suite, cell, model, registry, context, run, bar, time_limit, groups)
    return probe_and_score(sampled, suite, time_limit, bar)


def sample_cell(
    suite: Suite,
    cell: CellSpec,
    model: DiffusionModel,
    registry: Registry,
    context: MetricContext,
    run: RunDir,
    bar: Any,
    time_limit: float | None = None,
    groups: Callable[[int, MetricPlan], SampledGroup] | None = None,
) -> SampledCell:
    """The sampling half of ``run_cell``: every seed group sampled into feature rows; a failure is kept, not raised."""
    rec = new_record(suite, cell, model, registry)
    rec["time_limit"] = time_limit
    out = SampledCell(rec, [])
    t0 = time.perf_counter()
    try:
        with limit_time(time_limit):
            out.plan = plan = metric_plan(suite, model, registry, context)
            out.saver = saver = SampleSaver(
                suite.save_samples, run.path / "samples" / cell.cell_id, tuple(model.data_range)
            )
            for seed in suite.seeds:
                first = seed == suite.seeds[0]
                group = (
                    groups(seed, plan)
                    if groups is not None
                    else stream_group(suite, cell, model, registry, plan, seed, first, bar, saver=saver)
                )
                out.groups.append(group)
                res = group.result
                rec["warnings"] += [w for w in res.meta.get("warnings", []) if w not in rec["warnings"]]
                if first:
                    _describe_sampling(rec, res)
                    rec["sample_image"] = _sample_picture(group.preview, model, run.cell_path(cell.cell_id, ".png"))
                    rec["drift_fingerprint"] = drift.fingerprint(group.preview)
            out.probe = functools.partial(probe_harness, suite, cell, model, registry)
    except (*CELL_FAILURES, TimeLimitExceeded) as exc:  # a plugin's failure is this cell's result, not the run's
        out.failure, out.traceback = exc, traceback.format_exc()
    out.seconds = time.perf_counter() - t0
    return out


def _take_probe(sampled: SampledCell, time_limit: float | None) -> tuple[Any, list[str], tuple | None]:
    """``sampled.probe`` once, under what is left of the cell's time limit: its figures, its warnings and, past
    the limit, the failure (named by the cell's limit, as in sampling) with its traceback."""
    probe, sampled.probe = sampled.probe, None
    warnings: list[str] = []
    try:
        with limit_time(sampled.time_left(time_limit)):
            return probe(warnings), warnings, None
    except TimeLimitExceeded:  # a sampler that hangs on a zero network
        return None, warnings, (TimeLimitExceeded(time_limit), traceback.format_exc())


def run_probe(sampled: SampledCell, time_limit: float | None = None) -> None:
    """The sampled cell's harness probe (``probe_harness``) under what is left of its time limit: the figures go
    to the record; a probe past the limit fails the cell."""
    if sampled.probe is None or sampled.failure is not None:
        return
    t0 = time.perf_counter()
    sampled.rec["harness"], warnings, failure = _take_probe(sampled, time_limit)
    sampled.rec["warnings"] += warnings
    if failure is not None:
        sampled.failure, sampled.traceback = failure
    sampled.seconds += time.perf_counter() - t0


def probe_and_score(
    sampled: SampledCell, suite: Suite, time_limit: float | None = None, bar: Any = None, *, beside: bool = False
) -> dict[str, Any]:
    """The rest of ``run_cell`` after ``sample_cell``: the harness probe (``run_probe``), then ``score_cell``.

    ``beside``: scoring runs on a second thread while this one probes. Both are single-threaded CPU work
    (``devices.one_thread``), so on two free cores the pair takes about the longer of the two. The probe
    reads thread CPU time, which another busy core hardly moves (tests/benchmarks/test_harness_gate.py
    checks the gate with a competitor on every core), and scores depend only on the feature rows: the
    record is the serial order's, except that a probe past the time limit fails a cell already scored.
    """
    if not beside or sampled.probe is None or sampled.failure is not None:
        run_probe(sampled, time_limit)
        return score_cell(sampled, suite, time_limit, bar)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffbench-scoring") as pool:
        scoring = pool.submit(score_cell, sampled, suite, time_limit, bar)
        harness, warnings, failure = _take_probe(sampled, time_limit)
        rec = scoring.result()
    rec["harness"] = harness
    rec["warnings"] += warnings
    if failure is not None and rec["status"] == STATUS_OK:
        fail_record(rec, *failure)
    return rec


def score_cell(sampled: SampledCell, suite: Suite, time_limit: float | None = None, bar: Any = None) -> dict[str, Any]:
    """The scoring half of ``run_cell``: each seed group scored once, the record finished (failures recorded)."""
    rec, results = sampled.rec, [g.result for g in sampled.groups]
    left = sampled.time_left(time_limit)
    try:
        if sampled.failure is not None:
            raise sampled.failure
        with limit_time(left):
            plan, scores, directions = sampled.plan, [], {}
            metric_s = 0.0
            for seed, group in zip(suite.seeds, sampled.groups):
                res = group.result
                if bar is not None:
                    bar.set_postfix_str("metrics")
                values: dict[str, MetricValue] = {}
                group.rows.flush()
                t0 = time.perf_counter()
                scored = plan.score(group.rows, res)
                metric_s += time.perf_counter() - t0
                rec["metric_seconds"] = metric_s + sum(g.rows.extract_seconds for g in sampled.groups)
                for planned, out in scored:
                    values.update(out)
                    directions.update({name: metric_direction(planned.component, name) for name in out})
                scores.append(values)
                rec["warnings"] += [w for w in res.meta.get("warnings", []) if w not in rec["warnings"]]
                rec["per_seed"].append(
                    {
                        "seed": seed,
                        "nfe": res.nfe,
                        "sample_seconds": res.sample_seconds,
                        "network_seconds": res.network_seconds,
                        **({"decode_seconds": res.decode_seconds} if res.decode_seconds is not None else {}),
                        "metrics": {k: vars(v) for k, v in values.items()},
                    }
                )
                if bar is not None:
                    bar.set_postfix_str("")
            _summarise(rec, results)
            values = {**_aggregate(scores), **_block_minima(scores, directions)}
            rec["metrics"] = {
                name: {**vars(v), "higher_is_better": directions.get(name, False)} for name, v in values.items()
            }
            if sampled.saver is not None and sampled.saver.files:
                rec["saved_samples"] = {
                    "mode": suite.save_samples,
                    "files": sampled.saver.files,
                    "folder": f"samples/{rec['cell_id']}",
                }
            rec["status"] = STATUS_OK
    except (*CELL_FAILURES, TimeLimitExceeded) as exc:  # a plugin's failure is this cell's result, not the run's
        if results:
            _summarise(rec, results)  # what sampling cost is still worth keeping
        fail_record(rec, exc, sampled.traceback if exc is sampled.failure else traceback.format_exc())
    rec["finished"] = now()
    return rec


def fail_record(rec: CellRecord, exc: BaseException, trace: str | None) -> None:
    """Mark a cell's record failed by ``exc``: no metrics, a one-line error, the traceback."""
    rec["status"], rec["metrics"] = STATUS_FAILED, {}
    known = (CellError, MetricError, SamplerOutputError, TimeLimitExceeded)
    text = str(exc) if isinstance(exc, known) else f"{type(exc).__name__}: {exc}"
    rec["error"] = text.splitlines()[0] if text else type(exc).__name__
    rec["traceback"] = trace


def _describe_sampling(rec: CellRecord, res: SampleResult) -> None:
    rec.update(
        {
            "sampler_options": {**res.sampler_options, "clip_x0": res.meta["clip_x0"]},
            "scheduler_options": res.scheduler_options,
            "grid": res.grid.record(),
            "declared_nfe": res.declared_nfe,
            "device": res.meta["device"],
            "dtype": res.meta["dtype"],
            "batch_size": res.meta["batch_size"],
            "conditional": res.meta["conditional"],
        }
    )


class Preview:
    """The samples the cell's picture shows: the first ``pictures.MAX_PREVIEW`` images, or every 2-D point."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []
        self.count = 0

    def add(self, batch: Batch) -> None:
        x = batch.samples
        if x.ndim != 2:  # a scatter of points shows them all (a few bytes each), a grid the first images
            x = x[: max(pictures.MAX_PREVIEW - self.count, 0)]
        if len(x):
            self.parts.append(x)
            self.count += len(x)

    def samples(self) -> torch.Tensor | None:
        return torch.cat(self.parts) if self.parts else None


def _summarise(rec: CellRecord, results: list[SampleResult]) -> None:
    """Counted NFE and timings over the seed groups sampled so far."""
    n = sum(int(r.meta["num_samples"]) for r in results)
    sample_s = sum(r.sample_seconds for r in results)
    network_s = sum(r.network_seconds for r in results)
    calls = [t for r in results for t in r.call_seconds]
    gaps = [t for r in results for t in r.gap_seconds]
    rec.update(
        {
            "nfe": statistics.fmean(r.nfe for r in results),
            "sample_seconds": sample_s,
            "seconds_per_sample": sample_s / n,
            "network_seconds": network_s,
            "network_share": network_s / sample_s if sample_s > 0 else None,
            "network_seconds_per_call": statistics.median(calls) if calls else None,
            "harness_seconds_per_call": harness_per_call(gaps),
        }
    )
    if results[0].decode_seconds is not None:  # latent models: decoding time, apart from sampling time
        rec["decode_seconds"] = sum(r.decode_seconds for r in results)


def harness_per_call(gaps: list[float]) -> float | None:
    """Harness CPU seconds per network call: the lower quartile of the sampling thread's CPU time between
    consecutive calls (compare's harness check). A low quantile, because on a shared machine other processes
    slow whole stretches of a cell (cache, sibling hyperthread) and only ever upwards."""
    if len(gaps) < 2:
        return gaps[0] if gaps else None
    return statistics.quantiles(gaps, n=4, method="inclusive")[0]


class EnoughGaps(BaseException):
    """The harness probe has timed the gaps it needs from this call: stops the sampler (a BaseException, so a
    sampler's ``except Exception`` does not swallow it)."""


def probe_harness(
    suite: Suite, cell: CellSpec, model: DiffusionModel, registry: Registry, warnings: list[str]
) -> dict[str, Any] | None:
    """The cell's sampler on its grid, options and batch size with a zero network, timed by
    ``calibration.harness_probe`` (outside the cell's timed sampling); None, with a warning, if it fails.

    A repetition needs ``calibration.MIN_GAPS`` gaps: a call stops at the network call after the last
    gap it needs (a 100-step sampler is timed on its first 16 steps, not run to the end 12 times)."""
    calls = 0

    def zero_network(x: torch.Tensor, t: torch.Tensor, labels: Any) -> torch.Tensor:
        """A network that costs next to nothing: the probe's stand-in for the model's."""
        nonlocal calls
        calls += 1
        if calls > calibration.MIN_GAPS:
            raise EnoughGaps
        return torch.zeros_like(x)

    probe_model = dataclasses.replace(model, network=zero_network, decoder=None)
    rows = min(suite.batch_size, suite.num_samples)
    t0 = time.perf_counter()
    try:
        # one prepared call, iterated once per timing: grid, options and noise are set up once, outside every gap
        call = sampling_call(suite, cell, probe_model, registry, suite.seeds[0], rows, noise_memo={})

        def gaps() -> list[float]:
            nonlocal calls
            calls = 0
            try:
                for _ in call:
                    pass
            except EnoughGaps:
                pass
            return list(call.counter.gap_seconds)

        probe = calibration.harness_probe(gaps)
    except CELL_FAILURES as exc:  # e.g. a plugin sampler that cannot take a zero network's output
        warnings.append(f"harness probe failed ({type(exc).__name__}: {exc}); harness not measured")
        return None
    if probe is not None:
        probe["probe_seconds"] = time.perf_counter() - t0  # what the probe cost (wall-clock), not what it measures
    return probe


def _sample_picture(samples: torch.Tensor | None, model: DiffusionModel, path: Path) -> str | None:
    """Save a picture of the cell's samples; a plotting problem never fails the cell."""
    if samples is None:
        return None
    try:
        reference = None
        if model.analytic is not None and hasattr(model.analytic, "sample") and samples.ndim == 2:
            reference = model.analytic.sample(len(samples), generator=torch.Generator().manual_seed(0))
        written = pictures.save_samples(samples, path, data_range=model.data_range, reference=reference)
    except Exception as exc:
        print(f"diffbench: warning: no sample picture for {path.stem}: {exc}", file=sys.stderr)
        return None
    return written.name if written is not None else None
