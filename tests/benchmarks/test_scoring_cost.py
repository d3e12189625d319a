"""Scale and scoring cost: peak RSS flat in the sample count; a whole steps.yaml run against its sampling time.

Run with ``tox -e bench`` or ``python -m pytest tests/benchmarks/test_scoring_cost.py -m benchmark
--benchmark-enable``. Each figure is stored in the benchmark's extra_info and printed at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffbench.api import run_suite
from diffbench.run.rundir import RunDir

pytestmark = pytest.mark.benchmark
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def peak_rss_mib(n: int, out: Path) -> float:
    done = subprocess.run(
        [sys.executable, str(HERE / "streaming_cell.py"), str(n), str(out)], check=True, capture_output=True, text=True
    )
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.benchmark(group="peak RSS of one cell (tiny 3×64×64 model, batch 500)")
def test_peak_rss_is_flat_in_the_sample_count(benchmark, figures, tmp_path):
    """A 20,000-sample cell against a 1,000-sample cell, each in a fresh process (ru_maxrss)."""
    small = peak_rss_mib(1000, tmp_path / "n1000")
    large = benchmark.pedantic(peak_rss_mib, args=(20000, tmp_path / "n20000"), rounds=1, iterations=1)
    ratio = large / small
    held = 20000 * 3 * 64 * 64 * 4 / 2**20  # what holding the samples in float32 would take
    benchmark.extra_info.update(
        {"peak_rss_mib_1000": small, "peak_rss_mib_20000": large, "ratio": ratio, "samples_if_held_mib": held}
    )
    figures.append(
        f"peak RSS: 1,000 samples {small:.0f} MiB, 20,000 samples {large:.0f} MiB, ratio {ratio:.2f} "
        f"(holding 20,000 samples would add {held:.0f} MiB)"
    )
    assert ratio < 1.5, ratio  # issue #11: within 1.5×


@pytest.mark.benchmark(group="whole run vs sampling time (suites/steps.yaml)")
def test_steps_suite_run_time_over_sampling_time(benchmark, figures, tmp_path):
    """run_suite on suites/steps.yaml: wall-clock / Σ sampling seconds, and where the rest goes.

    One run with the default reference cache (the digits reference extraction, ~1 s, happens once
    per cache folder).
    """
    suite = REPO / "suites" / "steps.yaml"
    result = benchmark.pedantic(
        run_suite, args=(suite, tmp_path / "run"), kwargs={"progress": False}, rounds=1, iterations=1
    )
    manifest = RunDir(result.path).read_manifest()
    cells = [json.loads(p.read_text()) for p in (result.path / "cells").glob("*.json")]
    sampling = sum(c["sample_seconds"] for c in cells)
    metrics = sum(c.get("metric_seconds") or 0.0 for c in cells)
    wall = manifest["wall_seconds"]
    benchmark.extra_info.update(
        {
            "wall_seconds": wall,
            "sampling_seconds": sampling,
            "metric_seconds": metrics,
            "ratio": wall / sampling,
            "cells": len(cells),
        }
    )
    figures.append(
        f"steps.yaml: wall {wall:.1f} s, sampling {sampling:.1f} s, metrics {metrics:.1f} s, "
        f"other {wall - sampling - metrics:.1f} s; wall/sampling = {wall / sampling:.2f}"
    )
