"""The cell record: one definition of what ``cells/<cell_id>.json`` holds, and where it is started.

A record is a plain JSON object on disk and a dict in memory (readers index it by key, and records of
older schema versions must still load); :class:`CellRecord` names and types every key. ``new_record``
starts one with every identity field set and every measured field empty; the cell fills the measured
fields (``diffbench.run.cell``) and the executor adds ``worker``. Nothing else writes a record.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypedDict

from diffbench.core.denoiser import DiffusionModel
from diffbench.registry import Registry
from diffbench.run.rundir import SCHEMA_VERSION, STATUS_FAILED
from diffbench.run.suite import CellSpec, Suite


class CellRecord(TypedDict, total=False):
    """One cell's record (``total=False``: a failed cell lacks what it never measured)."""

    # identity: what the cell is (set by new_record)
    schema_version: int  # SCHEMA_VERSION of the code that wrote the record (diffbench.run.rundir)
    cell_id: str  # stable id of the cell in its suite (file name under cells/)
    index: int  # position in the suite's grid order (rows of cells.csv follow it)
    config_hash: str  # hash of everything that determines the numbers; --resume keeps a cell when it matches
    suite: str  # the suite's name
    model: str  # the model entry's key (label or plugin name)
    sampler: str  # the sampler entry's key (label or plugin name)
    sampler_name: str  # the sampler plugin's registered name
    sampler_order: float | None  # the order the sampler declares (None: not declared)
    scheduler: str  # the scheduler entry's key (``<name>-q`` when quantised)
    scheduler_name: str  # the scheduler plugin's registered name
    steps: int  # scheduler steps
    guidance: float | None  # classifier-free guidance scale; None: no guidance
    seeds: list[int]  # seed groups, each of num_samples samples
    num_samples: int  # samples per seed group
    model_identity: dict[str, Any]  # the model's name, checkpoint hash, target, schedule
    config: dict[str, Any]  # the cell's configuration as hashed
    started: str  # ISO 8601 local time the cell started
    # outcome
    status: str  # "ok" or "failed"
    error: str | None  # one line saying why the cell failed; None when ok
    traceback: str  # the failure's traceback (failed cells only)
    warnings: list[str]  # e.g. a plugin sampler whose counted NFE differs from its declared NFE
    finished: str  # ISO 8601 local time the cell finished
    time_limit: float | None  # seconds the cell was allowed (None: no limit)
    # sampling, as the first seed group ran it
    sampler_options: dict[str, Any]  # every sampler option, defaults included, and clip_x0
    scheduler_options: dict[str, Any]  # every scheduler option, defaults included, quantize and final_zero
    grid: dict[str, Any]  # the materialised σ list and model times (StepGrid.record())
    declared_nfe: float | None  # network evaluations per sample the sampler declares (× 2 with guidance)
    device: str  # where the samples were drawn
    dtype: str  # the model's dtype
    batch_size: int  # samples per network batch
    conditional: bool  # whether the model's condition (labels, prompts) was used
    # measurements over all seed groups
    nfe: float | None  # network evaluations per sample, counted at the network
    sample_seconds: float | None  # sampling wall-clock, all seed groups
    seconds_per_sample: float | None  # sample_seconds / samples
    network_seconds: float | None  # time inside the network
    network_share: float | None  # network_seconds / sample_seconds (the rest is harness)
    network_seconds_per_call: float | None  # median time of one network call
    harness_seconds_per_call: float | None  # lower quartile of the harness CPU time between network calls
    decode_seconds: float  # latent models: decoding time, apart from sampling time
    metric_seconds: float | None  # feature extraction and scoring, apart from sampling time
    metrics: dict[str, dict[str, Any]]  # value name → value, uncertainty, method, higher_is_better
    per_seed: list[dict[str, Any]]  # per seed group: seed, nfe, timings, metric values
    sample_image: str | None  # file name of the cell's picture under cells/ (None: none drawn)
    drift_fingerprint: dict[str, Any] | None  # the first samples, reduced, to tell changed samples apart (run/drift.py)
    harness: dict[str, Any] | None  # the harness probe: CPU time per call in units of the CPU reference (calibration)
    saved_samples: dict[str, Any]  # with save_samples: mode, files and folder of the saved samples
    worker: dict[str, Any]  # where the cell ran: executor, host, process, device (set by the executor)


def now() -> str:
    """Local time with offset, to the second (ISO 8601)."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def new_record(suite: Suite, cell: CellSpec, model: DiffusionModel, registry: Registry) -> CellRecord:
    """A record of ``cell`` with its identity set, status failed and every measurement empty."""
    return CellRecord(
        schema_version=SCHEMA_VERSION,
        cell_id=cell.cell_id,
        index=cell.index,
        config_hash=cell.config_hash,
        suite=suite.name,
        model=cell.model.key,
        sampler=cell.sampler.key,
        sampler_name=cell.sampler.name,
        sampler_order=registry.get("sampler", cell.sampler.name).meta.get("order"),
        scheduler=cell.scheduler.key,
        scheduler_name=cell.scheduler.name,
        steps=cell.steps,
        guidance=cell.guidance,
        seeds=suite.seeds,
        num_samples=suite.num_samples,
        status=STATUS_FAILED,
        error=None,
        nfe=None,
        declared_nfe=None,
        sample_seconds=None,
        seconds_per_sample=None,
        network_seconds=None,
        network_share=None,
        metric_seconds=None,
        metrics={},
        per_seed=[],
        warnings=[],
        model_identity=model.identity(),
        config=cell.config,
        started=now(),
    )


def failed_record(suite: Suite, cell: CellSpec, model: DiffusionModel, registry: Registry, error: str) -> CellRecord:
    """The record of a cell that failed outside ``run_cell`` (e.g. its worker process was lost)."""
    rec = new_record(suite, cell, model, registry)
    rec.update(error=error, finished=now())
    return rec
