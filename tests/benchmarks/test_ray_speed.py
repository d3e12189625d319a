"""Speed of the Ray executor (tox -e bench): task overhead per cell, and suites/steps.yaml on 2 workers vs local.

Ray's own cost per cell: the round trip of one task that carries the run's payload and a cell and
returns a record-sized result (with a 20 kB picture), doing no work.

Overhead per cell end to end: tiny gmm cells (euler, 8 samples, a near-free metric) run end to end by the local
executor and by Ray with one task at a time (``cpus_per_cell=2`` on the 2-CPU instance, so nothing
runs in parallel), each at 5 and at 25 cells; the per-cell cost of an executor is the slope
(T25 − T5) / 20, so per-run set-up (starting tasks, loading the model once per worker) is not
counted as per-cell. Ray's overhead per cell = its slope − the local slope.

Speed-up: the whole main job, suites/steps.yaml, with the local executor (torch's default threads,
one cell at a time; and again with one torch thread) and with Ray on 2 workers of 1 CPU and 1
torch thread each, reference features cached. The machine's load average is recorded with every
timing: on a shared machine it moves them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from runhelpers import test_registry

from diffbench.api import run_suite
from diffbench.run.executors.ray import RayExecutor
from diffbench.run.suite import parse_suite

pytestmark = pytest.mark.benchmark
REPO = Path(__file__).resolve().parents[2]
MEDIANS: dict[tuple[str, int], float] = {}
STEPS_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    paths = [str(REPO / "tests"), str(REPO / "tests" / "benchmarks"), os.environ.get("PYTHONPATH", "")]
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="warning",
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}},
    )
    yield ray
    ray.shutdown()


def tiny_suite(cells: int) -> dict:
    return {
        "name": f"tiny{cells}",
        "model": "gmm",
        "metrics": ["mean-norm"],
        "num_samples": 8,
        "batch_size": 8,
        "seeds": [0],
        "device": "cpu",
        "grid": {"sampler": ["euler"], "scheduler": ["karras"], "steps": list(range(1, cells + 1))},
    }


def executor(name: str, cpus_per_cell: int):
    return "local" if name.startswith("local") else RayExecutor(cpus_per_cell=cpus_per_cell)


def _noop_cell(payload, cell, threads):
    """A Ray task that does no work: returns a record-sized dict for the cell it was given."""
    return {
        "record": {"cell_id": cell.cell_id, "config": cell.config, "per_seed": [{"metrics": {}}] * 4},
        "files": {".png": b"x" * 20_000},
        "metric_info": {},
    }


@pytest.mark.benchmark(group="Ray task round trip carrying one cell (no work)")
def test_task_round_trip(benchmark, figures, ray_instance):
    """Submit one task with the run's payload and a cell, wait for its record: Ray's own cost per cell."""
    registry, _ = test_registry()
    suite = parse_suite(tiny_suite(1), registry)
    from diffbench.run.suite import expand

    cell = expand(suite)[0]
    payload = ray_instance.put({"suite": suite, "registry": registry})
    task = ray_instance.remote(_noop_cell).options(num_cpus=1)
    ray_instance.get([task.remote(payload, cell, 1) for _ in range(4)])  # start the workers
    benchmark.pedantic(lambda: ray_instance.get(task.remote(payload, cell, 1)), rounds=200, warmup_rounds=10)
    benchmark.extra_info.update(load_average=os.getloadavg())
    figures.append(
        f"Ray task round trip carrying one cell: median {1e3 * benchmark.stats.stats.median:.2f} ms "
        f"(load average {os.getloadavg()[0]:.2f})"
    )


@pytest.mark.benchmark(group="Ray task overhead per cell (tiny gmm cells, one at a time)")
@pytest.mark.parametrize("name", ["local", "ray"])
@pytest.mark.parametrize("cells", [5, 25])
def test_task_overhead(benchmark, figures, ray_instance, tmp_path, name, cells):
    registry, _ = test_registry()
    suite = parse_suite(tiny_suite(cells), registry)
    rounds = iter(range(100))

    def fresh():
        return (suite, tmp_path / f"r{next(rounds)}"), {
            "registry": registry,
            "progress": False,
            "draw": False,
            "cache_dir": tmp_path / "cache",
            "executor": executor(name, cpus_per_cell=2),
        }

    result = benchmark.pedantic(run_suite, setup=fresh, rounds=7, warmup_rounds=1)
    assert result.ran == cells and result.failed == 0
    MEDIANS[name, cells] = benchmark.stats.stats.median
    benchmark.extra_info.update(cells=cells, load_average=os.getloadavg())
    if len(MEDIANS) == 4:
        slope = {n: (MEDIANS[n, 25] - MEDIANS[n, 5]) / 20 for n in ("local", "ray")}
        fixed = (MEDIANS["ray", 5] - 5 * slope["ray"]) - (MEDIANS["local", 5] - 5 * slope["local"])
        figures.append(
            f"Ray task overhead: {1e3 * (slope['ray'] - slope['local']):.1f} ms per cell "
            f"(local {1e3 * slope['local']:.1f} ms/cell, ray {1e3 * slope['ray']:.1f} ms/cell; "
            f"per-run set-up +{fixed:.2f} s); load average {os.getloadavg()[0]:.2f}"
        )


@pytest.mark.benchmark(group="suites/steps.yaml end to end: local vs Ray with 2 workers")
@pytest.mark.parametrize("name", ["local", "local-1-thread", "ray"])
def test_steps_suite(benchmark, figures, ray_instance, tmp_path, name):
    data = yaml.safe_load((REPO / "suites" / "steps.yaml").read_text())
    warm = {k: v for k, v in data.items() if k not in ("include", "exclude")}
    run_suite(
        parse_suite(
            {
                **warm,
                "num_samples": 8,
                "batch_size": 8,  # caches reference features, warms up
                "grid": {"sampler": ["euler"], "scheduler": ["karras"], "steps": [2]},
            }
        ),
        tmp_path / "warm",
        progress=False,
        draw=False,
    )
    before, threads = os.getloadavg(), torch.get_num_threads()
    if name == "local-1-thread":
        torch.set_num_threads(1)
    try:
        result = benchmark.pedantic(
            run_suite,
            args=(REPO / "suites" / "steps.yaml", tmp_path / "run"),
            kwargs={"progress": False, "draw": False, "executor": executor(name, 1)},
            rounds=1,
            iterations=1,
        )
    finally:
        torch.set_num_threads(threads)
    assert result.failed == 0 and result.ran == len(result.cells) > 0
    STEPS_SECONDS[name] = benchmark.stats.stats.median
    benchmark.extra_info.update(load_average_before=before, load_average_after=os.getloadavg())
    figures.append(
        f"steps.yaml with the {name} executor: {STEPS_SECONDS[name]:.1f} s "
        f"(load average {before[0]:.2f} before, {os.getloadavg()[0]:.2f} after)"
    )
    if "ray" in STEPS_SECONDS:
        for local in ("local", "local-1-thread"):
            if local in STEPS_SECONDS:
                figures.append(
                    f"steps.yaml speed-up, Ray 2 workers vs {local}: {STEPS_SECONDS[local] / STEPS_SECONDS['ray']:.2f}x"
                )
