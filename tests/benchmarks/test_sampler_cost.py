"""Harness cost per network call of every built-in sampler, beside k-diffusion's loop for the same method.

One run measures all samplers at batch 1 and 256 (20 Karras steps on digits' shape and linear-β schedule,
one thread, float32) and prints µs per network call, on a network that costs next to nothing (it returns
its input): diffbench's sampler through its SigmaDenoiser (σ → t conversions prepared as ``sample()`` does),
and k-diffusion's sampler through k-diffusion's own wrapper for a linear-β ε-model (``external.
DiscreteEpsDDPMDenoiser``), as its users run it; beside it, k-diffusion's loop alone on a σ-space denoiser that
returns its input and costs nothing (no wrapper at all: a lower bound for any k-diffusion model). Step noise is drawn beforehand on both sides. Each figure is
the fastest of interleaved repetitions (other processes only ever slow a run down). The target (issue 20): at
most half of k-diffusion's cost where k-diffusion has the method, at most 3× euler's otherwise.

    python tests/benchmarks/test_sampler_cost.py          # the table (docs/solvers.md)
    python -m pytest tests/benchmarks/test_sampler_cost.py -m benchmark   # the same, as a benchmark

k-diffusion is not a dependency: ``pip install --no-deps k-diffusion==0.1.1.post1 torchsde torchdiffeq
trampoline`` gives its sampling and external modules (its package __init__ imports training code; only those
two are loaded). Without it the k-diffusion column is empty.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import statistics
import sys
import time
import types
from typing import Any, Callable

import pytest
import torch

from diffbench.denoiser import DiffusionModel, NetworkCounter, SigmaDenoiser
from diffbench.noise import make_schedule
from diffbench.registry import default_registry
from diffbench.samplers import noise_draws
from diffbench.sampling import make_grid
from diffbench.seeding import StepNoise, initial_noise
from diffbench.targets import TARGETS

pytestmark = pytest.mark.benchmark
STEPS, BATCHES, SHAPE = 20, (1, 256), (1, 8, 8)
# diffbench sampler → (k-diffusion function, its keyword arguments) for the same method
K_DIFFUSION = {
    "euler": ("sample_euler", {}),
    "euler-ancestral": ("sample_euler_ancestral", {}),
    "heun": ("sample_heun", {}),
    "lms": ("sample_lms", {}),
    "dpm-solver-2": ("sample_dpm_2", {}),  # DPM-Solver-2 with r = 1/2 is k-diffusion's DPM-2 (x' = x + (σ'-σ) ε_mid)
    "dpm-solver++-2s": ("sample_dpmpp_2s_ancestral", {"eta": 0.0}),
    "dpm-solver++-2m": ("sample_dpmpp_2m", {}),
    "dpm-solver++-3m": ("sample_dpmpp_3m_sde", {"eta": 0.0}),
    "dpm-solver++-2m-sde": ("sample_dpmpp_2m_sde", {"solver_type": "midpoint"}),
}


def k_diffusion_modules():
    """(k_diffusion.sampling, k_diffusion.external) without the package's __init__ (training code), or None."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        return None
    if "k_diffusion" not in sys.modules:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
    try:
        return importlib.import_module("k_diffusion.sampling"), importlib.import_module("k_diffusion.external")
    except ImportError:
        return None


def free_model() -> DiffusionModel:
    return DiffusionModel("identity-x0", lambda x, t, labels: x, make_schedule("linear"), TARGETS["x0"], SHAPE)


def fastest_per_call(runs: list[Callable[[], int]], repeats: int) -> list[float]:
    """For each run, its fastest whole call's seconds divided by its network calls, the runs interleaved."""
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            t0 = time.perf_counter()
            calls = run()
            best[i] = min(best[i], (time.perf_counter() - t0) / calls)
    return best


def diffbench_run(name: str, batch: int) -> Callable[[], int]:
    comp = default_registry().get("sampler", name)
    model = free_model()
    grid, _ = make_grid(model, "karras", STEPS)
    idx = range(batch)
    x = initial_noise(0, idx, SHAPE) * float(grid.sigmas[0])
    noise = StepNoise(0, idx, SHAPE, noise_draws(comp.meta, grid.sigmas, comp.options))
    noise(0)
    counter = NetworkCounter(batch)
    den = SigmaDenoiser(model, counter=counter)
    den.prepare(grid.sigmas)

    def run() -> int:
        before = counter.calls
        comp.obj(den, x, grid.sigmas, noise=noise, **comp.options)
        return counter.calls - before
    return run


def k_diffusion_run(modules, name: str, batch: int, wrapped: bool = True) -> Callable[[], int]:
    """k-diffusion's sampler for ``name``: through its DiscreteEpsDDPMDenoiser, or (``wrapped=False``) on a bare
    σ-space denoiser D(x, σ) = x, its sampling loop alone."""
    sampling, external = modules
    fn_name, kwargs = K_DIFFUSION[name]
    fn = getattr(sampling, fn_name)
    model_schedule = free_model().schedule
    grid, _ = make_grid(free_model(), "karras", STEPS)
    sigmas = grid.sigmas.to(torch.float32)
    x = initial_noise(0, range(batch), SHAPE) * float(sigmas[0])
    bank = [torch.randn((batch, *SHAPE)) for _ in range(STEPS)]
    calls = [0]

    class Eps(torch.nn.Module):  # the network: ε = 0, next to free (D(x, σ) = x through the wrapper)
        def forward(self, x, t):
            calls[0] += 1
            return torch.zeros_like(x)

    def bare(x, sigma, **_):
        calls[0] += 1
        return x

    alphas_cumprod = torch.as_tensor(model_schedule.alphas_cumprod, dtype=torch.float32)
    model = external.DiscreteEpsDDPMDenoiser(Eps(), alphas_cumprod, quantize=False) if wrapped else bare

    takes_noise = "noise_sampler" in inspect.signature(fn).parameters  # through torch.no_grad's wrapper

    def run() -> int:
        calls[0] = 0
        draws = iter(bank)
        noise = {"noise_sampler": lambda s, sn: next(draws)} if takes_noise else {}
        fn(model, x, sigmas, disable=True, **noise, **kwargs)
        return calls[0]
    return run


def measure(repeats: int = 30) -> list[dict[str, Any]]:
    """One row per (sampler, batch): µs per call for diffbench and k-diffusion, ratios and the target."""
    modules = k_diffusion_modules()
    names = sorted(c.name for c in default_registry() if c.kind == "sampler" and c.plugin == "builtin")
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for batch in BATCHES:
                euler = None
                for name in ["euler", *[n for n in names if n != "euler"]]:
                    runs = [diffbench_run(name, batch)]
                    if modules is not None and name in K_DIFFUSION:
                        runs += [k_diffusion_run(modules, name, batch), k_diffusion_run(modules, name, batch, False)]
                    for run in runs:  # warm-up
                        run()
                    best = [1e6 * t for t in fastest_per_call(runs, repeats)]
                    ours, theirs, loop = best[0], (best[1] if len(best) > 1 else None), (best[2] if len(best) > 2 else None)
                    euler = ours if name == "euler" else euler
                    limit, against = (0.5 * theirs, "½ k-diffusion") if theirs is not None else (3 * euler, "3× euler")
                    rows.append({"sampler": name, "batch": batch, "diffbench_us": ours, "k_diffusion_us": theirs,
                                 "ratio_k_diffusion": ours / theirs if theirs else None, "k_diffusion_loop_us": loop,
                                 "ratio_k_diffusion_loop": ours / loop if loop else None, "ratio_euler": ours / euler,
                                 "target": against, "meets": ours <= limit})
    finally:
        torch.set_num_threads(threads)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def cell(v, fmt):
        return fmt.format(v) if v is not None else "—"

    lines = ["| sampler | batch | diffbench µs/call | k-diffusion µs/call | ÷ k-diffusion | k-diffusion loop alone µs/call "
             "| ÷ loop alone | ÷ euler | target | meets |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['batch']} | {r['diffbench_us']:.1f} | {cell(r['k_diffusion_us'], '{:.1f}')} "
                     f"| {cell(r['ratio_k_diffusion'], '{:.2f}')} | {cell(r['k_diffusion_loop_us'], '{:.1f}')} "
                     f"| {cell(r['ratio_k_diffusion_loop'], '{:.2f}')} | {r['ratio_euler']:.2f} | {r['target']} "
                     f"| {'yes' if r['meets'] else 'NO'} |")
    return "\n".join(lines)


@pytest.mark.benchmark(group="harness cost per network call, every sampler beside k-diffusion")
def test_sampler_cost_per_call(benchmark, figures):
    rows = benchmark.pedantic(measure, rounds=1, iterations=1)
    assert len(rows) == 2 * len([c for c in default_registry() if c.kind == "sampler" and c.plugin == "builtin"])
    benchmark.extra_info["rows"] = rows
    figures.extend(table(rows).splitlines())


if __name__ == "__main__":
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"torch {torch.__version__}, 1 thread, {STEPS} Karras steps, load average {' '.join(load)}")
    print(table(measure()))
