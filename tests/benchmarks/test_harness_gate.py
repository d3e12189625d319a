"""compare's harness gate under load: false alarms with a CPU-bound competitor on every core, and ×2 flagged.

The harness check reads one thing from each cell record: its harness probe (``cell.probe_harness``, taken
after the cell's sampling). Per model and sampler (20 Karras steps), the probe is taken once on the
machine as it is (the baseline), then a CPU-bound competitor is started on every core (one single-threaded
matmul loop per CPU, at this process's priority) and, while it runs, the probe is retaken UNCHANGED times
with unchanged code and SLOWED times with the sampler made to spend, before every network call, as much
CPU time again as the baseline probe measured (a harness twice as slow). Each retake is judged by
``compare.harness_check`` against the baseline, as compare judges two records. The summary prints the
measure, the false alarms and the share of ×2 cells flagged. (Whole runs of a suite under this project's
shared load take minutes each; the probe is all of a run that the harness check sees.)

    python -m pytest tests/benchmarks/test_harness_gate.py -m benchmark --benchmark-enable -s
"""
from __future__ import annotations

import contextlib
import functools
import os
import statistics
import subprocess
import sys
import time

import pytest

from diffbench import builtin, compare
from diffbench.calibration import HARNESS_METHOD, HARNESS_REPEATS
from diffbench.cell import probe_harness
from diffbench.registry import Registry
from diffbench.runner import load_models
from diffbench.suite import expand, parse_suite

pytestmark = pytest.mark.benchmark

SAMPLERS = ["euler", "heun", "dpm-solver++-2m"]
SUITES = {  # batch sizes where one network call costs ≈ 10 ms (digits) and ≈ 0.4 ms (GMM) on a quiet 2-core CPU
    "digits-eps": {"num_samples": 100, "batch_size": 100},
    "gmm": {"num_samples": 500, "batch_size": 500},
}
UNCHANGED = int(os.environ.get("DIFFBENCH_GATE_RUNS", "30"))
SLOWED = int(os.environ.get("DIFFBENCH_GATE_SLOWED", "10"))
COMPETITOR = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a = torch.tanh(a @ a)\n"


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


@contextlib.contextmanager
def competitor_on_every_core():
    """One CPU-bound single-threaded process per CPU, at this process's priority, for the block's duration."""
    procs = [subprocess.Popen([sys.executable, "-c", COMPETITOR]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(1.0)
        yield len(procs)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _probes(model: str, registry: Registry) -> dict[str, dict]:
    """Each sampler's harness probe, as run_cell records it."""
    suite = parse_suite({"name": f"gate-{model}", "model": model, "seeds": [0], "device": "cpu", **SUITES[model],
                         "grid": {"sampler": SAMPLERS, "scheduler": ["karras"], "steps": [20]}}, registry)
    models = load_models(suite, registry)
    return {cell.sampler.name: probe_harness(suite, cell, models[cell.model.key], registry, [])
            for cell in expand(suite)}


def _flags(base: dict[str, dict], run: dict[str, dict]) -> int:
    """Samplers whose retaken probe the harness check calls worse than the baseline probe."""
    return sum(compare.harness_check({"harness": base[s]}, {"harness": run[s]}, compare.Rule()).verdict
               == compare.WORSE for s in SAMPLERS)


@pytest.mark.parametrize("model", list(SUITES))
def test_harness_gate_under_load(model, benchmark, figures):
    base = _probes(model, SlowedRegistry({}))
    extra = {s: p["seconds_per_call"] for s, p in base.items()}
    with competitor_on_every_core() as competitors:
        unchanged = [_probes(model, SlowedRegistry({})) for _ in range(UNCHANGED)]
        slowed = [_probes(model, SlowedRegistry(extra)) for _ in range(SLOWED)]
        load = os.getloadavg()
    false = [_flags(base, r) for r in unchanged]
    flagged = [_flags(base, r) for r in slowed]
    change = {s: [r[s]["ratio"] / base[s]["ratio"] for r in unchanged] for s in SAMPLERS}
    ratios = [r[s]["ratio"] / base[s]["ratio"] for r in slowed for s in SAMPLERS]
    benchmark.pedantic(_flags, args=(base, slowed[0]), rounds=3)
    cells = len(SAMPLERS)
    info = {"model": model, "competitors": competitors, "load_average_1_5_15": [round(v, 1) for v in load],
            "harness_measure": HARNESS_METHOD.format(k=HARNESS_REPEATS), "harness_tol": compare.HARNESS_TOL,
            "baseline_probe_us_per_call": {s: round(1e6 * p["seconds_per_call"], 1) for s, p in base.items()},
            "unchanged_reruns": UNCHANGED, "false_alarm_cells": sum(false), "false_alarm_reruns": sum(f > 0 for f in false),
            "unchanged_ratio_range": {s: [round(min(v), 3), round(max(v), 3)] for s, v in change.items()},
            "slowed_reruns": SLOWED, "slowed_ratio_median": round(statistics.median(ratios), 2),
            "slowed_ratio_min": round(min(ratios), 2), "slowed_flagged_share": sum(flagged) / (SLOWED * cells)}
    benchmark.extra_info.update(info)
    figures.append(f"harness gate under load, {model} (batch {SUITES[model]['batch_size']}, 20 steps; "
                   f"{competitors} competing matmul processes; load average {load[0]:.1f} {load[1]:.1f} "
                   f"{load[2]:.1f} on {os.cpu_count()} CPUs; harness tolerance {100 * compare.HARNESS_TOL:g}%):")
    figures.append(f"  measure: {info['harness_measure']}")
    figures.append("  baseline probe per call: " + ", ".join(f"{s} {v} µs" for s, v in
                                                            info["baseline_probe_us_per_call"].items()))
    figures.append(f"  {UNCHANGED} unchanged reruns × {cells} cells: {info['false_alarm_cells']} cells flagged in "
                   f"{info['false_alarm_reruns']} reruns; probe ratio / baseline ratio, min–max: "
                   + ", ".join(f"{s} {a:.2f}–{b:.2f}" for s, (a, b) in info["unchanged_ratio_range"].items()))
    figures.append(f"  harness ×2 ({SLOWED} reruns × {cells} cells; measured ×{info['slowed_ratio_median']}, "
                   f"min ×{info['slowed_ratio_min']}): {100 * info['slowed_flagged_share']:.0f}% flagged")
