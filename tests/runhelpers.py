"""Shared pieces for the suite/runner/report/CLI tests: tiny plugins and a small gmm suite."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from diffbench.hookspecs import hookimpl
from diffbench.metrics.base import MetricValue
from diffbench.registry import Registry, build_registry
from diffbench.samplers import per_step


class MeanNorm:
    """Mean sample norm with its standard error over samples (a cheap, deterministic metric)."""

    name = "mean-norm"
    options = {"scale": 1.0}

    def compute(self, samples, *, model, result, context, scale: float = 1.0, **_: Any) -> dict[str, MetricValue]:
        n = samples.flatten(1).norm(dim=1).double() * scale
        return {"mean-norm": MetricValue(float(n.mean()), float(n.std() / len(n) ** 0.5), "std / √n over samples")}


class Checksum:
    """Sum of all samples: equal sums mean equal samples, for pairing checks."""

    name = "checksum"
    options: dict[str, Any] = {}
    higher_is_better = True

    def compute(self, samples, **_: Any) -> dict[str, MetricValue]:
        return {"checksum": MetricValue(float(samples.double().sum()), None, "exact")}


class SlowMetric:
    """Sleeps, to show metric time stays out of sampling time."""

    name = "slow"
    options = {"seconds": 0.3}

    def compute(self, samples, *, seconds: float = 0.3, **_: Any) -> dict[str, MetricValue]:
        time.sleep(seconds)
        return {"slow": MetricValue(0.0, 0.0, "none")}


class Interrupter:
    """Raises KeyboardInterrupt on its n-th call (simulates Ctrl-C mid-run)."""

    name = "interrupter"
    options = {"after": 2}

    def __init__(self) -> None:
        self.calls = 0

    def compute(self, samples, *, after: int = 2, **_: Any) -> dict[str, MetricValue]:
        self.calls += 1
        if self.calls > after:
            raise KeyboardInterrupt
        return {"interrupter": MetricValue(0.0, 0.0, "none")}


class Picky:
    """Cannot run on the model (as FID on a model without a reference dataset), or has a bug (from its
    call number ``after`` + 1 on: ``after=1`` lets the runner's warm-up pass and fails every cell)."""

    name = "picky"
    options = {"bug": False, "after": 0}

    def __init__(self) -> None:
        self.calls = 0

    def compute(self, samples, *, bug: bool = False, after: int = 0, **_: Any) -> dict[str, MetricValue]:
        self.calls += 1
        if bug and self.calls > after:
            raise ZeroDivisionError("metric bug")
        if bug:
            return {"picky": MetricValue(0.0, None, "none")}
        raise ValueError("needs an image model")


def broken(denoiser, x, sigmas, *, noise=None):
    """A sampler whose plugin raises."""
    raise RuntimeError("broken sampler exploded")


def nan_sampler(denoiser, x, sigmas, *, noise=None):
    """A sampler whose output is NaN after one evaluation."""
    denoiser(x, float(sigmas[0]))
    return x * float("nan")


def start_noise(denoiser, x, sigmas, *, noise=None):
    """Returns the starting noise x / σ_0 after one evaluation (so samples show the pairing)."""
    denoiser(x, float(sigmas[0]))
    return x / float(sigmas[0])


class TestPlugin:
    """Registers the test components above."""

    def __init__(self) -> None:
        self.interrupter = Interrupter()

    @hookimpl
    def diffbench_register(self, registry: Registry) -> None:
        for metric in (MeanNorm(), Checksum(), SlowMetric(), Picky(), self.interrupter):
            registry.add("metric", metric.name, metric)
        one = dict(order=None, nfe=per_step(1), stochastic=lambda **_: False)
        registry.add("sampler", "broken", broken, **one)
        registry.add("sampler", "nan", nan_sampler, nfe=lambda s, **_: 1, order=None, stochastic=lambda **_: False)
        registry.add(
            "sampler", "start-noise", start_noise, nfe=lambda s, **_: 1, order=None, stochastic=lambda **_: False
        )


def test_registry() -> tuple[Registry, TestPlugin]:
    plugin = TestPlugin()
    return build_registry(extra_plugins=[plugin], autoload=False), plugin


test_registry.__test__ = False  # a helper, not a test

SMALL: dict[str, Any] = {
    "name": "small",
    "description": "tiny gmm grid for tests",
    "model": {"name": "gmm"},
    "metrics": ["mean-norm"],
    "num_samples": 64,
    "batch_size": 32,
    "seeds": [0],
    "device": "cpu",
    "grid": {"sampler": ["euler", "heun", "dpm-solver++-2m"], "scheduler": ["karras"], "steps": [2, 4]},
}


def small(**overrides: Any) -> dict[str, Any]:
    """A copy of the small suite with top-level keys replaced."""
    data = copy.deepcopy(SMALL)
    data.update(copy.deepcopy(overrides))
    return data


def grid(**overrides: Any) -> dict[str, Any]:
    """The small suite's grid with axes replaced."""
    return {**copy.deepcopy(SMALL["grid"]), **overrides}


def initial_checksum(seed: int, n: int, shape: tuple[int, ...], dtype=torch.float64) -> float:
    from diffbench.core.noise import initial_noise

    return float(initial_noise(seed, range(n), shape, dtype=dtype).double().sum())


def record(i, status="ok", **metrics):
    """A finished cell record by hand: cell i of a GMM suite with the given metric values (se = value / 10)."""
    return {
        "index": i,
        "cell_id": f"c{i}",
        "suite": "s",
        "model": "gmm",
        "sampler": "euler",
        "scheduler": "karras",
        "steps": 2 * (i + 1),
        "nfe": 2.0 * (i + 1),
        "declared_nfe": 2 * (i + 1),
        "guidance": None,
        "seeds": [0, 1],
        "num_samples": 10,
        "sample_seconds": 1.0,
        "seconds_per_sample": 0.05,
        "network_share": 0.9,
        "status": status,
        "error": None if status == "ok" else "boom",
        "metrics": {k: {"value": v, "uncertainty": v / 10, "method": "m"} for k, v in metrics.items()},
    }
