"""Identical work, identical time: ddim and euler (one network call per step each) on digits-eps, as a run
records them. The counted time (NFE × calibrated bare call + measured harness CPU per call) against the
wall-clock time, as the spread |ddim − euler| / mean over step counts; run it on a busy machine to see the
wall-clock time follow the load while the counted time does not.

    python -m pytest tests/benchmarks/test_counted_time.py -m benchmark --benchmark-enable -s
"""
from __future__ import annotations

import pytest

from diffbench.registry import default_registry
from diffbench.results import RunDir
from diffbench.runner import run_suite
from diffbench.suite import parse_suite

pytestmark = pytest.mark.benchmark

STEPS = [5, 10, 20, 40]


def _spread(a: float, b: float) -> float:
    return abs(a - b) / ((a + b) / 2)


def test_identical_work_identical_counted_time(benchmark, figures, tmp_path):
    suite = parse_suite({"name": "same-work", "model": "digits-eps", "num_samples": 200, "batch_size": 100,
                         "device": "cpu", "grid": {"sampler": ["ddim", "euler"], "scheduler": ["karras"],
                                                   "steps": STEPS}}, default_registry())
    res = benchmark.pedantic(run_suite, args=(suite, tmp_path / "run"), kwargs={"progress": False, "draw": False},
                             rounds=1, iterations=1)
    recs = {(r["sampler"], r["steps"]): r for r in RunDir(res.path).read_cells()}
    counted, wall = [], []
    for n in STEPS:
        d, e = recs[("ddim", n)], recs[("euler", n)]
        assert d["nfe"] == e["nfe"]
        counted.append(_spread(d["counted_seconds_per_sample"], e["counted_seconds_per_sample"]))
        wall.append(_spread(d["seconds_per_sample"], e["seconds_per_sample"]))
    benchmark.extra_info.update(counted_spread=counted, wall_spread=wall)
    figures.append(f"ddim vs euler (identical work) on digits-eps, steps {STEPS}: |difference| / mean, counted time "
                   f"{', '.join(f'{100 * v:.2f}%' for v in counted)}; wall-clock "
                   f"{', '.join(f'{100 * v:.1f}%' for v in wall)}")
