"""Accuracy and cost of trajectory-error's reference on a real model: each method/tolerance against a much tighter
solve.

Run: python scripts/reference_accuracy.py MODEL N [tight=METHOD,TOL] [METHOD,TOL[,float32] ...]   e.g.
     python scripts/reference_accuracy.py digits-eps 2 dop853,1e-6 dop853,1e-7 dopri5,1e-7
     python scripts/reference_accuracy.py digits-eps 4 tight=dop853,1e-11 dopri5,1e-7 dopri5,1e-8 dopri5,5e-9
     python scripts/reference_accuracy.py digits-eps 2 dopri5,1e-6 dopri5,1e-6,float32
Solves the probability-flow ODE of MODEL (float64, one CPU thread) from N starting points over its Karras
σ range with the tight solve (DOP853 at rtol = atol = 1e-9 unless given), then with each METHOD at TOL (the
network in float32 where the spec ends in ``,float32``: trajectory-error's ``network_dtype``), and prints NFE
per sample and the mean per-sample RMS distance to the tight solve. (README: "Solver accuracy on any model".)
Choose trajectory-error's options so this distance is ≤ 1 % of the smallest error it serves.
"""

from __future__ import annotations

import sys
import time

import torch

import diffbench
from diffbench.core.denoiser import SigmaDenoiser
from diffbench.core.noise import initial_noise
from diffbench.metrics.trajectory import NETWORK_DTYPES, in_float64, model_floor, per_sample_rms, solve_stops
from diffbench.run.sampling import make_grid


def main(name: str, n: int, specs: list[str]) -> None:
    tight_method, tight_tol = "dop853", 1e-9
    if specs and specs[0].startswith("tight="):
        tight_method, tol = specs[0].removeprefix("tight=").split(",")
        tight_tol, specs = float(tol), specs[1:]
    torch.set_num_threads(1)
    loaded = diffbench.load_model(name)
    model = loaded.placed("cpu", torch.float64)
    sigma_start, floor = float(make_grid(model, "karras", 10)[0].sigmas[0]), model_floor(model)
    x = (initial_noise(0, range(n), model.shape, dtype=torch.float32) * sigma_start).double()
    den = SigmaDenoiser(model)
    stop = {(floor, False)}
    tight, info = solve_stops(
        den.per_sample,
        x,
        sigma_start,
        floor,
        stop,
        rtol=tight_tol,
        atol=tight_tol,
        max_steps=100_000,
        method=tight_method,
    )
    print(f"{name}: tight solve ({tight_method}, {tight_tol:g}) {info['nfe_per_sample']:.0f} NFE a sample", flush=True)
    (key,) = tight
    for spec in specs:
        method, tol, *dtype = spec.split(",")
        network = NETWORK_DTYPES[dtype[0] if dtype else "float64"]
        denoise = in_float64(SigmaDenoiser(loaded.placed("cpu", network)), network)
        t0 = time.perf_counter()
        out, info = solve_stops(
            denoise, x, sigma_start, floor, stop, rtol=float(tol), atol=float(tol), max_steps=100_000, method=method
        )
        err = float(per_sample_rms(out[key], tight[key]).mean())
        print(
            f"{name} {spec.replace(',', ' ')}: {info['nfe_per_sample']:.0f} NFE a sample, error {err:.2e} "
            f"({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
