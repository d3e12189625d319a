"""One cell of a tiny random 3×64×64 model with a streaming metric, run in its own process for its peak RSS.

``python tests/benchmarks/streaming_cell.py N OUT`` runs N samples (batch 500, Euler, 2 steps) into OUT
and prints the process's peak resident set size in MiB. Used by test_scoring_cost.py.
"""

from __future__ import annotations

import resource
import sys

import torch

from diffbench.api import run_suite
from diffbench.core.denoiser import DiffusionModel
from diffbench.core.schedules import make_schedule
from diffbench.core.targets import TARGETS
from diffbench.hookspecs import hookimpl
from diffbench.metrics.base import MetricValue, StreamingMetric
from diffbench.registry import build_registry


def tiny_rgb64() -> DiffusionModel:
    """A randomly initialised one-layer conv 'denoiser' on 3×64×64 images (ε-prediction, linear β)."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    return DiffusionModel(
        "tiny-rgb64",
        lambda x, t, labels: net(x),
        make_schedule("linear"),
        TARGETS["eps"],
        (3, 64, 64),
        dtype=torch.float32,
    )


class PooledMean(StreamingMetric):
    """Mean of 4×4-pooled pixels: 48 numbers per sample, so rows stay small while samples would be 48 KiB."""

    name = "pooled-mean"
    options: dict = {}

    class Rows:
        key = ("pooled",)

        def __call__(self, batch):
            return torch.nn.functional.adaptive_avg_pool2d(batch.samples.float(), 4).flatten(1)

    def features(self, *, model, context, **options):
        return self.Rows()

    def score(self, features, *, model, result, context, **options):
        v = features.mean(1).double()
        return {"pooled-mean": MetricValue(float(v.mean()), float(v.std() / len(v) ** 0.5), "s.e. over samples")}


class Plugin:
    @hookimpl
    def diffbench_register(self, registry):
        registry.add("model", "tiny-rgb64", tiny_rgb64)
        registry.add("metric", "pooled-mean", PooledMean())


def main(n: int, out: str) -> None:
    torch.set_num_threads(1)
    registry = build_registry(extra_plugins=[Plugin()], autoload=False)
    suite = {
        "name": "rss",
        "model": "tiny-rgb64",
        "metrics": ["pooled-mean"],
        "num_samples": n,
        "batch_size": 500,
        "device": "cpu",
        "grid": {"sampler": ["euler"], "steps": [2]},
    }
    from diffbench.run.suite import parse_suite

    run_suite(
        parse_suite(suite, registry), out, registry=registry, progress=False, cache_dir=f"{out}-cache", draw=False
    )
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB → MiB


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
