"""compare's harness-time gate on real runs: the smallest harness slowdown it flags, and its false alarms.

Each model's suite (three samplers, 20 Karras steps, no metrics) is run UNCHANGED times; every ordered
pair of those runs is one comparison of unchanged code (6 runs: 30 comparisons). Then the sampler loop
is slowed: before every network call the sampler spends (factor − 1) × the median harness time per call
measured in the unchanged runs of that sampler, as CPU work (the same code, names and options, so the
cells match). Each slowed run is compared with every unchanged run. The summary prints, per model, the
false alarms (harness and total-time checks) and, per factor, the share of slowed cells each check flags.

    python -m pytest tests/benchmarks/test_harness_gate.py -m benchmark --benchmark-enable -s
"""
from __future__ import annotations

import functools
import itertools
import os
import statistics
import time
from pathlib import Path

import pytest
import torch

from diffbench import builtin
from diffbench.analysis import compare
from diffbench.api import run_suite
from diffbench.registry import Registry
from diffbench.run.rundir import RunDir
from diffbench.run.suite import parse_suite

pytestmark = pytest.mark.benchmark

SAMPLERS = ["euler", "heun", "dpm-solver++-2m"]
SUITES = {  # batch sizes where one network call costs ≈ 10 ms (digits) and ≈ 0.4 ms (GMM) on a 2-core CPU
    "digits-eps": {"num_samples": 200, "batch_size": 100},
    "gmm": {"num_samples": 4000, "batch_size": 500},
}
UNCHANGED = int(os.environ.get("DIFFBENCH_GATE_RUNS", "6"))
FACTORS = (1.25, 1.5, 2.0, 3.0)
TOLERANCES = (0.5, 0.75, 1.0)  # harness tolerances evaluated on the same runs (compare's default: HARNESS_TOL)
SLOWED = 2  # runs per factor, each compared with every unchanged run


def _spin(seconds: float) -> None:
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


class SlowedRegistry(Registry):
    """The built-ins, with every sampler spending ``extra[name]`` CPU seconds before each network call."""

    def __init__(self, extra: dict[str, float]) -> None:
        super().__init__()
        self.extra = extra
        self._plugin, self._distribution, self._version = "builtin", "diffbench", None
        builtin.diffbench_register(registry=self)

    def add(self, kind, name, obj, **meta):
        if kind == "sampler" and self.extra.get(name):
            obj = self._slowed(obj, self.extra[name])
        return super().add(kind, name, obj, **meta)

    @staticmethod
    def _slowed(fn, seconds: float):
        @functools.wraps(fn)
        def sampler(denoiser, x, sigmas, **kw):
            def slow(x, sigma):
                _spin(seconds)
                return denoiser(x, sigma)
            return fn(slow, x, sigmas, **kw)
        return sampler


def _suite(model: str) -> dict:
    return {"name": f"gate-{model}", "model": model, "seeds": [0], "device": "cpu", **SUITES[model],
            "grid": {"sampler": SAMPLERS, "scheduler": ["karras"], "steps": [20]}}


def _run(model: str, out: Path, registry: Registry) -> Path:
    suite = parse_suite(_suite(model), registry)
    return run_suite(suite, out, registry=registry, progress=False, draw=False).path


def _harness(run: Path) -> dict[str, float]:
    return {r["sampler"]: r["harness_seconds_per_call"] for r in RunDir(run).read_cells()}


def _wall_harness(run: Path) -> dict[str, float]:
    """(sample_seconds − network_seconds) per network call: the wall-clock harness time compare does not use."""
    out = {}
    for r in RunDir(run).read_cells():
        calls = r["nfe"] * -(-r["num_samples"] // r["batch_size"])
        out[r["sampler"]] = (r["sample_seconds"] - r["network_seconds"]) / calls
    return out


def _spread(runs: list[Path], measure) -> dict[str, float]:
    values = {s: [measure(r)[s] for r in runs] for s in SAMPLERS}
    return {s: max(v) / min(v) if min(v) > 0 else float("inf") for s, v in values.items()}


def _flags(base: Path, run: Path) -> dict[str, int]:
    """Cells flagged worse by the total-time check and by the harness check at each tolerance."""
    out = {}
    for tol in TOLERANCES:
        result = compare.compare(base, run, compare.Rule(harness_tol=tol))
        checks = [c for cell in result.cells for c in cell.checks]
        out[tol] = sum(c.what == "harness" and c.verdict == compare.WORSE for c in checks)
        out["time"] = sum(c.what == "time" and c.verdict == compare.WORSE for c in checks)
    return out


THREADS = int(os.environ.get("DIFFBENCH_GATE_THREADS", "1"))


@pytest.fixture(autouse=True)
def torch_threads():
    """One torch thread by default (DIFFBENCH_GATE_THREADS): with two on a loaded 2-core machine, thread-pool
    spinning slowed whole cells at random, network and harness alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model", list(SUITES))
def test_harness_gate(model, tmp_path, benchmark, figures):
    unchanged = [_run(model, tmp_path / f"same-{i}", SlowedRegistry({})) for i in range(UNCHANGED)]
    pairs = list(itertools.permutations(unchanged, 2))
    false = [_flags(b, r) for b, r in pairs]
    h0 = {s: statistics.median(_harness(r)[s] for r in unchanged) for s in SAMPLERS}
    spread = _spread(unchanged, _harness)
    wall_spread = _spread(unchanged, _wall_harness)
    rows = []
    for factor in FACTORS:
        extra = {s: (factor - 1.0) * h0[s] for s in SAMPLERS}
        slowed = [_run(model, tmp_path / f"x{factor}-{i}", SlowedRegistry(extra)) for i in range(SLOWED)]
        measured = statistics.median(_harness(r)[s] / h0[s] for r in slowed for s in SAMPLERS)
        flags = [_flags(b, r) for b in unchanged for r in slowed]
        cells = len(flags) * len(SAMPLERS)
        rows.append((factor, measured, {k: sum(f[k] for f in flags) / cells for k in (*TOLERANCES, "time")}))
    benchmark.pedantic(compare.compare, args=pairs[0], rounds=3)  # the comparison itself, for the record
    load = os.getloadavg()
    alarms = {k: sum(f[k] for f in false) for k in (*TOLERANCES, "time")}
    info = {"model": model, "comparisons_unchanged": len(pairs), "cells_per_comparison": len(SAMPLERS),
            "false_alarm_cells": {str(k): v for k, v in alarms.items()},
            "false_alarm_comparisons": {str(t): sum(f[t] > 0 for f in false) for t in TOLERANCES},
            "harness_us_per_call": {s: round(1e6 * v, 1) for s, v in h0.items()},
            "harness_spread_unchanged": {s: round(v, 2) for s, v in spread.items()},
            "wall_clock_harness_spread_unchanged": {s: round(v, 2) for s, v in wall_spread.items()},
            "slowdowns": [{"factor": f, "measured_harness_ratio": round(m, 2),
                           "flagged_cells": {str(k): round(v, 3) for k, v in share.items()}} for f, m, share in rows],
            "load_average_1_5_15": [round(v, 1) for v in load], "torch_threads": THREADS}
    benchmark.extra_info.update(info)
    tols = ", ".join(f"{100 * t:g}%" for t in TOLERANCES)
    figures.append(f"harness gate, {model} ({SUITES[model]['batch_size']} per batch, 20 steps, {', '.join(SAMPLERS)}; "
                   f"{THREADS} torch thread(s); load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs):")
    figures.append(f"  harness per call (median of {UNCHANGED} unchanged runs): "
                   + ", ".join(f"{s} {1e6 * v:.1f} µs (max/min {spread[s]:.2f})" for s, v in h0.items()))
    figures.append("  max/min over the unchanged runs of the wall-clock (sampling − network) time per call, which "
                   "compare does not use: " + ", ".join(f"{s} {v:.2f}" for s, v in wall_spread.items()))
    figures.append(f"  unchanged code, {len(pairs)} comparisons × {len(SAMPLERS)} cells: cells flagged by the harness "
                   f"check at tolerance {tols}: " + ", ".join(str(alarms[t]) for t in TOLERANCES)
                   + " (comparisons with any: " + ", ".join(str(info["false_alarm_comparisons"][str(t)])
                                                             for t in TOLERANCES)
                   + f"); by the total-time check: {alarms['time']}")
    for f, m, share in rows:
        figures.append(f"  harness ×{f:g} (measured ×{m:.2f}): cells flagged by the harness check at {tols}: "
                       + ", ".join(f"{100 * share[t]:.0f}%" for t in TOLERANCES)
                       + f"; by the total-time check {100 * share['time']:.0f}%")
