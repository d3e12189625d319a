"""A run's size before it starts: cells, samples, declared network evaluations, memory per batch.

A run states its plan before it samples, and a plan beyond any of the limits below needs an explicit
``allow_large=True`` (``--allow-large``): a typo such as ``num_samples: 10000000`` or a grid with
thousands of entries is an error naming the YAML path, not hours of work or gigabytes allocated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from diffbench.run.suite import Suite, SuiteError, axis_entries

MAX_CELLS = 10_000  # cells in one run
MAX_SAMPLES = 10_000_000  # samples over every cell and seed
MAX_NFE = 10_000_000_000  # network evaluations (per sample) over every sample
MAX_BATCH_BYTES = 8 << 30  # one batch's starting noise and step-noise bank
LARGE_FLAG = "--allow-large (allow_large=True in Python)"


@dataclass(frozen=True)
class Plan:
    """What a run will do, in cells, samples and declared network evaluations."""

    cells: int
    seeds: int
    num_samples: int
    nfe: float  # declared network evaluations over every sample of every cell
    references: int = 0  # shared trajectory references the metrics need (cached ones included)
    references_cached: int = 0
    reference_nfe: float | None = 0.0  # their network evaluations to compute, estimated; None: not known yet
    reference_note: str = ""  # how reference_nfe was estimated

    @property
    def samples(self) -> int:
        return self.cells * self.seeds * self.num_samples

    def describe(self) -> str:
        s = "s" if self.seeds != 1 else ""
        text = (
            f"{self.cells} cells × {self.seeds} seed{s} × {self.num_samples} samples = {self.samples:,} samples, "
            f"{self.nfe:,.0f} network evaluations (declared)"
        )
        if self.references:
            cost = "unknown" if self.reference_nfe is None else f"about {self.reference_nfe:,.0f}"
            text += (
                f"; {self.references} trajectory reference(s), {self.references_cached} cached: {cost} "
                f"network evaluations to compute ({self.reference_note})"
            )
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "cells": self.cells,
            "seeds": self.seeds,
            "num_samples": self.num_samples,
            "samples": self.samples,
            "network_evaluations": self.nfe,
            "references": self.references,
            "references_cached": self.references_cached,
            "reference_network_evaluations": self.reference_nfe,
            "reference_estimate": self.reference_note,
        }


def _too_large(what: str, limit: float) -> SuiteError:
    return SuiteError(f"{what} exceeds the limit of {limit:,.0f}; pass {LARGE_FLAG} to run it anyway")


def check_grid_size(suite: Suite, allow_large: bool = False) -> None:
    """Bound the number of cells before the grid is expanded (a product of axes grows fast)."""
    if allow_large:
        return
    axes = ("model", "sampler", "scheduler", "steps", "guidance")
    total = math.prod(len(axis_entries(suite, a)) for a in axes)
    for rule in suite.include:
        total += math.prod(len(rule.values(a) or axis_entries(suite, a)) for a in axes)
    if total > MAX_CELLS:
        raise _too_large(f"grid: {total:,} cells (before exclude)", MAX_CELLS)


def check_plan(plan: Plan, allow_large: bool = False) -> None:
    """SuiteError naming the YAML keys when the plan is beyond a limit and ``allow_large`` is not set."""
    if allow_large:
        return
    if plan.samples > MAX_SAMPLES:
        raise _too_large(f"num_samples × seeds × cells: {plan.samples:,} samples", MAX_SAMPLES)
    if plan.nfe > MAX_NFE:
        raise _too_large(f"grid.steps × num_samples × seeds × cells: {plan.nfe:,.0f} network evaluations", MAX_NFE)


def check_batch_bytes(nbytes: float, where: str, allow_large: bool = False) -> None:
    """SuiteError when one batch's noise would need more than MAX_BATCH_BYTES."""
    if nbytes > MAX_BATCH_BYTES and not allow_large:
        raise SuiteError(
            f"{where}: one batch needs {nbytes / 2**30:,.1f} GiB of noise (batch_size × steps × "
            f"sample size) beyond the limit of {MAX_BATCH_BYTES / 2**30:g} GiB; lower batch_size "
            f"or pass {LARGE_FLAG}"
        )
