"""Speed of the harness itself: per-call cost with a near-free network, overhead on digits-eps, one cell end to end.

Run with ``tox -e bench`` (benchmarks are deselected from the default test run). Figures derived
from the timings (µs per network call, overhead %) are printed after the tables and stored in
each benchmark's extra_info.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from diffbench.api import run_suite
from diffbench.core.denoiser import DiffusionModel, NetworkCounter, SigmaDenoiser
from diffbench.core.noise import StepNoise, initial_noise
from diffbench.core.schedules import make_schedule
from diffbench.core.targets import TARGETS
from diffbench.registry import default_registry
from diffbench.run.calibration import harness_overhead
from diffbench.run.sampling import make_grid

pytestmark = pytest.mark.benchmark
BATCH, STEPS = 256, 20
REPO = Path(__file__).resolve().parents[2]
BUILTIN_SAMPLERS = sorted(c.name for c in default_registry() if c.kind == "sampler" and c.plugin == "builtin")


def free_model() -> DiffusionModel:
    """A near-free network: returns its input as the x0 prediction, on digits' shape and noise schedule."""
    return DiffusionModel("identity-x0", lambda x, t, labels: x, make_schedule("linear"), TARGETS["x0"], (1, 8, 8))


@pytest.mark.benchmark(group="per-call harness cost (near-free network, batch 256, 20 steps)")
@pytest.mark.parametrize("sampler", BUILTIN_SAMPLERS)
def test_per_call_harness_cost(benchmark, figures, sampler):
    """The sampling loop exactly as sample() times it: a fresh prepared SigmaDenoiser, noise drawn beforehand."""
    registry = default_registry()
    comp = registry.get("sampler", sampler)
    model = free_model()
    grid, _ = make_grid(model, "karras", STEPS, registry=registry)
    idx = range(BATCH)
    x = initial_noise(0, idx, model.shape) * float(grid.sigmas[0])
    noise = StepNoise(0, idx, model.shape, len(grid.sigmas) - 1)
    noise(0)

    def fresh_denoiser():
        den = SigmaDenoiser(model, counter=NetworkCounter(BATCH))
        den.prepare(grid.sigmas)
        return (den, x, grid.sigmas), {"noise": noise, **comp.options}

    with torch.inference_mode():
        args, kwargs = fresh_denoiser()
        out = comp.obj(*args, **kwargs)
        calls = args[0].counter.calls
        benchmark.pedantic(comp.obj, setup=fresh_denoiser, rounds=300, warmup_rounds=10)
    assert torch.isfinite(out).all() and calls == comp.meta["nfe"](grid.sigmas, **comp.options)
    if benchmark.stats:
        us = benchmark.stats.stats.median / calls * 1e6
        benchmark.extra_info.update(calls=calls, us_per_call_median=us, batch_size=BATCH, steps=STEPS)
        figures.append(f"per-call harness cost {sampler:>20}: {us:6.1f} µs per network call ({calls} calls)")


@pytest.mark.benchmark(group="overhead on digits-eps (batch 256, 20 steps)")
@pytest.mark.parametrize("sampler", ["euler", "heun", "dpm-solver++-2m"])
def test_overhead_digits_eps(benchmark, figures, sampler):
    """calibration.harness_overhead: 10 interleaved repetitions of bare-network time vs sampling time."""
    model = default_registry().get("model", "digits-eps").obj()
    result = benchmark.pedantic(
        harness_overhead,
        args=(model, sampler),
        rounds=1,
        iterations=1,
        kwargs={"steps": STEPS, "batch_size": BATCH, "repeats": 10},
    )
    assert len(result.ratios) == 10 and result.nfe > 0
    benchmark.extra_info.update(result.as_dict())
    figures.append(
        f"overhead on digits-eps {sampler:>16}: median {100 * result.median:+.2f}% over 10 interleaved "
        f"repetitions (bare call {1e3 * result.as_dict()['bare_seconds_median']:.2f} ms, NFE {result.nfe:g})"
    )


@pytest.mark.benchmark(group="one cell end to end (smoke suite's euler n=10: sampling and metrics)")
def test_one_cell_end_to_end(benchmark, tmp_path):
    """run_suite on a one-cell copy of suites/smoke.yaml, metrics included, plots off; cache warmed first."""
    data = yaml.safe_load((REPO / "suites" / "smoke.yaml").read_text())
    data["grid"].update(sampler=["euler"], steps=[10])
    suite = tmp_path / "one-cell.yaml"
    suite.write_text(yaml.safe_dump(data))
    rounds = iter(range(100))

    def fresh_dir():
        return (suite,), {
            "out_dir": tmp_path / f"run{next(rounds)}",
            "progress": False,
            "draw": False,
            "cache_dir": tmp_path / "cache",
        }

    result = benchmark.pedantic(run_suite, setup=fresh_dir, rounds=3, warmup_rounds=1)
    assert result.ran == 1 and result.failed == 0
