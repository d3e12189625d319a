"""Samplers' measured orders on the shipped digits models from 10 to 100 NFE (docs/solvers.md's table).

A light version of suites/accuracy.yaml + scripts/accuracy_orders.py: 8 samples (seed 0), float64, Karras σ,
trajectory-error against the model's own ODE solution (reference converged to 1e-6 per-sample RMS), at
about 10, 25, 50 and 100 counted NFE; the order is minus the least-squares slope of log error against
log NFE over those four, then the local orders between neighbours.
Run: python scripts/digits_orders.py [--models NAME ...] [--samplers NAME ...]
"""

from __future__ import annotations

import argparse
import inspect
import tempfile

import numpy as np
import torch

import diffbench
from diffbench.metrics.base import MetricContext
from diffbench.metrics.trajectory import METRICS
from diffbench.run.sampling import sample
from diffbench.samplers import SAMPLERS

# steps for about 10, 25, 50, 100 NFE: one evaluation a step, two (2N - 1), three (3N - 2)
STEPS = {1: (10, 25, 50, 100), 2: (6, 13, 25, 50), 3: (4, 9, 17, 34)}
EVALS = {"heun": 2, "dpm-solver-2": 2, "dpm-solver++-2s": 2, "dpm-solver-3": 3}
DEFAULT = [
    "euler",
    "heun",
    "dpm-solver++-2m",
    "dpm-solver++-3m",
    "dpm-solver++-3m-corrected",
    "dpm-solver-3",
    "deis",
    "lms",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["digits-eps", "digits-v", "digits-flow"])
    ap.add_argument("--samplers", nargs="+", default=DEFAULT)
    ap.add_argument("--num-samples", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    metric, cache = METRICS["trajectory-error"], tempfile.mkdtemp(prefix="digits-orders-")
    print("| model | sampler | declared | NFE | trajectory-error | order 10–100 NFE | local orders |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        model = diffbench.load_model(name)
        for sampler in args.samplers:
            full = "lower_order_final" in inspect.signature(SAMPLERS[sampler].fn).parameters
            opts = {"lower_order_final": False} if full else {}  # full order to the end
            nfe, err = [], []
            for steps in STEPS[EVALS.get(sampler, 1)]:
                res = sample(
                    model,
                    sampler,
                    steps=steps,
                    scheduler="karras",
                    sampler_options=opts,
                    num_samples=args.num_samples,
                    seed=0,
                    dtype="float64",
                )
                value = metric.compute(
                    res.samples,
                    model=model,
                    result=res,
                    context=MetricContext(cache_dir=cache),
                    rtol=1e-6,
                    atol=1e-6,
                    max_steps=8192,
                )
                nfe.append(res.nfe)
                err.append(value["trajectory-error"].value)
            x, y = np.log(nfe), np.log(err)
            fit = -np.polyfit(x, y, 1)[0]
            local = ", ".join(f"{v:.2f}" for v in -np.diff(y) / np.diff(x))
            print(
                f"| {name} | {sampler} | {SAMPLERS[sampler].order} | {', '.join(f'{n:g}' for n in nfe)} | "
                f"{err[0]:.1e} → {err[-1]:.1e} | {fit:.2f} | {local} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
