"""What measuring costs at the FID protocol's scale (issue 18): FID, its s.e., KID and PRC at 50,000 × 2048.

Run with ``tox -e bench`` (``python -m pytest tests/benchmarks/test_measurement_cost.py -m benchmark
--benchmark-enable -s``) or as a script: ``python tests/benchmarks/test_measurement_cost.py [N D]``,
which prints every figure in one run. Features are synthetic (a ReLU of correlated Gaussians, the shape
and sign of Inception pool features): the cost of scoring depends on N and D, not on the images.
Everything is scored on one thread, as diffbench scores (``devices.one_thread``), through the shipped
metric classes; times per cell exclude what is computed once per reference and process (its
statistics, Σr^½, KID's reference-subset sums, PRC's reference radii), which are reported apart.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffbench.devices import one_thread
from diffbench.metrics import fidelity
from diffbench.metrics.base import MetricContext
from diffbench.metrics.reference import ReferenceData

pytestmark = pytest.mark.benchmark
N, D = 50_000, 2048


def synthetic_features(n: int, d: int, shift: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(0)) / d ** 0.5
    return torch.relu(torch.randn(n, d, generator=gen) @ mix + shift)


def _seconds(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def scoring_costs(n: int = N, d: int = D) -> dict[str, float]:
    """Seconds of each scoring step at n × d on one thread (one process, so the ratios share one load)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    gen, ref_rows = synthetic_features(n, d, 0.1, 1), synthetic_features(n, d, 0.0, 2)
    ref = ReferenceData(SimpleNamespace(stats=None), ref_rows, "synthetic")
    ctx = MetricContext(cache_dir=Path("."), seed=0)
    fid, kid, prc = fidelity.FID(), fidelity.KID(), fidelity.PRC()
    fid_opts = {k: v for k, v in fid.options.items() if k not in fidelity.FID.base_options}
    kid_opts = {k: v for k, v in kid.options.items() if k not in fidelity.KID.base_options}
    prc_opts = {k: v for k, v in prc.options.items() if k not in fidelity.PRC.base_options}
    out: dict[str, float] = {"n": n, "d": d}
    with one_thread():
        out["reference_stats_once"], stats = _seconds(ref.stats)
        out["torch_fidelity_point_fid"], want = _seconds(lambda: fid_statistics_to_metric(
            fid_features_to_statistics(gen.double()), stats, verbose=False)["frechet_inception_distance"])
        out["reference_root_once"], _ = _seconds(lambda: fidelity.reference_root(ref))
        out["point_fid"], point = _seconds(lambda: fid.score_features(gen, ref, ctx,
                                                                      **{**fid_opts, "se_method": "none"}))
        out["fid_with_se"], with_se = _seconds(lambda: fid.score_features(gen, ref, ctx, **fid_opts))
        assert abs(point["fid"].value - want) < 1e-6 * want and with_se["fid"].value == point["fid"].value
        out["kid_first_cell"], _ = _seconds(lambda: kid.score_features(gen, ref, ctx, **kid_opts))
        out["kid"], _ = _seconds(lambda: kid.score_features(gen, ref, ctx, **kid_opts))
        out["prc_first_cell"], _ = _seconds(lambda: prc.score_features(gen, ref, ctx, **prc_opts))
        out["prc"], _ = _seconds(lambda: prc.score_features(gen, ref, ctx, **prc_opts))
    out["fid_se_ratio"] = out["fid_with_se"] / out["point_fid"]
    out["kid_ratio"] = out["kid"] / out["point_fid"]
    out["prc_ratio"] = out["prc"] / out["point_fid"]
    out["fid"], out["fid_se"] = with_se["fid"].value, with_se["fid"].uncertainty
    return out


def scoring_lines(c: dict[str, float]) -> list[str]:
    return [
        f"scoring at N = {c['n']:,} × D = {c['d']} on one thread: point FID {c['point_fid']:.1f} s "
        f"(torch-fidelity's {c['torch_fidelity_point_fid']:.1f} s), FID with s.e. {c['fid_with_se']:.1f} s, "
        f"ratio {c['fid_se_ratio']:.2f} (FID {c['fid']:.3f} ± {c['fid_se']:.3f})",
        f"KID {c['kid']:.1f} s ({c['kid_ratio']:.2f}× point FID; first cell {c['kid_first_cell']:.1f} s), "
        f"PRC {c['prc']:.1f} s ({c['prc_ratio']:.2f}×; first cell {c['prc_first_cell']:.1f} s)",
        f"once per reference and process: statistics {c['reference_stats_once']:.1f} s, "
        f"Σr^½ {c['reference_root_once']:.1f} s",
    ]


@pytest.mark.benchmark(group="measurement cost at 50,000 × 2048")
def test_scoring_cost_at_the_fid_protocols_scale(benchmark, figures):
    costs = benchmark.pedantic(scoring_costs, rounds=1, iterations=1)
    benchmark.extra_info.update(costs)
    figures.extend(scoring_lines(costs))


SCRIPT_PARTS = [lambda args: scoring_lines(scoring_costs(*args))]


if __name__ == "__main__":
    sizes = tuple(int(a) for a in sys.argv[1:3])
    for part in SCRIPT_PARTS:
        for line in part(sizes):
            print(line, flush=True)
