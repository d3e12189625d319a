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

import functools
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffbench.metrics import fidelity
from diffbench.metrics.base import MetricContext
from diffbench.metrics.reference import ReferenceData
from diffbench.util.devices import one_thread

pytestmark = pytest.mark.benchmark
N, D = 50_000, 2048


def synthetic_features(n: int, d: int, shift: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(0)) / d**0.5
    return torch.relu(torch.randn(n, d, generator=gen) @ mix + shift)


def _seconds(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def scoring_costs(n: int = N, d: int = D) -> dict[str, float]:
    """Seconds of each scoring step at n × d on one thread (one process, so the ratios share one load)."""
    from torch_fidelity.metric_fid import (
        fid_features_to_statistics,
        fid_statistics_to_metric,
    )

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
        out["torch_fidelity_point_fid"], want = _seconds(
            lambda: fid_statistics_to_metric(fid_features_to_statistics(gen.double()), stats, verbose=False)[
                "frechet_inception_distance"
            ]
        )
        out["reference_root_once"], _ = _seconds(lambda: fidelity.reference_root(ref))
        out["point_fid"], point = _seconds(
            lambda: fid.score_features(gen, ref, ctx, **{**fid_opts, "se_method": "none"})
        )
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


# --- the main job and its trajectory references (i18b) ------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
STEPS = REPO / "suites" / "steps.yaml"


def _cells(result) -> list[dict]:
    from diffbench.run.rundir import RunDir

    return [c for c in RunDir(result.path).read_cells() if c.get("status") == "ok"]


def _reference_figures(result) -> dict[str, float]:
    """Reference NFE computed in this run (Σ over references of NFE a sample × samples) and seconds."""
    from diffbench.run.rundir import RunDir

    refs = (RunDir(result.path).read_manifest().get("metric_info") or {}).get("trajectory_references") or {}
    fresh = [r for r in refs.values() if not r.get("from_cache")]
    return {
        "references": len(refs),
        "reference_nfe": sum(r["nfe"] for r in fresh),
        "reference_seconds": sum(r["seconds"] for r in fresh),
    }


def _served_cell_nfe(cells: list[dict], scored: int) -> float:
    """Sample-NFE of what the references serve: the deterministic cells' NFE over the samples they score."""
    return sum(
        c["nfe"] * min(c["num_samples"], scored) * len(c["seeds"])
        for c in cells
        if (c.get("metrics") or {}).get("trajectory-error") is not None
    )


def reference_error(
    model, tol: float, tight: tuple[str, float], n: int = 2, network_dtype: str = "float64"
) -> dict[str, float]:
    """The reference's own error, as trajectory-error solves it (dopri5 at ``tol``, the network in
    ``network_dtype``, one thread) from the first ``n`` starting points of seed 0 over the Karras σ range to σ_min
    then D (the stop of every Karras cell), against a much tighter float64 solve (``tight``: method, tolerance):
    mean per-sample RMS distance, and both NFE."""
    from diffbench.core.denoiser import SigmaDenoiser
    from diffbench.core.noise import initial_noise
    from diffbench.metrics.trajectory import (
        NETWORK_DTYPES,
        grid_stops,
        in_float64,
        model_floor,
        per_sample_rms,
        solve_stops,
    )
    from diffbench.run.sampling import make_grid

    network = NETWORK_DTYPES[network_dtype]
    start = grid_stops(make_grid(model, "karras", 10)[0].sigmas)[0]
    floor = model_floor(model)
    x = (initial_noise(0, range(n), model.shape, dtype=torch.float32) * start).double()
    stop, out = {(floor, True)}, {}
    with one_thread():
        for name, method, rtol, dtype in (("run", "dopri5", tol, network), ("tight", *tight, torch.float64)):
            denoise = in_float64(SigmaDenoiser(model.placed("cpu", dtype)), dtype)
            sol, info = solve_stops(
                denoise, x, start, floor, stop, rtol=rtol, atol=rtol, max_steps=60_000, method=method
            )
            out[name], out[f"{name}_nfe_per_sample"] = next(iter(sol.values())), info["nfe_per_sample"]
    return {
        "reference_error": float(per_sample_rms(out["run"], out["tight"]).mean()),
        "reference_tol": tol,
        "tight": f"{tight[0]} at {tight[1]:g}",
        "tight_nfe_per_sample": out["tight_nfe_per_sample"],
        "error_samples": n,
    }


def _smallest_served(cells: list[dict]) -> float:
    return min(c["metrics"]["trajectory-error"]["value"] for c in cells if "trajectory-error" in (c["metrics"] or {}))


def steps_costs(work: Path, suite: Path = STEPS) -> dict[str, float]:
    """suites/steps.yaml twice into one cache, each as users run it (``diffbench run``, a fresh process): the first
    computes the references (their NFE against the cells' sample-NFE), the second finds them cached (its whole
    wall-clock, start-up and plots included, over its summed sampling time)."""
    import json
    import os
    import subprocess

    from diffbench.run.rundir import RunDir

    env = {**os.environ, "DIFFBENCH_CACHE_DIR": str(work / "cache")}

    def run(name: str) -> tuple[Path, float]:
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from diffbench.cli import main; main()",
                "run",
                str(suite),
                "--out",
                str(work / name),
            ]
            + ["--no-progress"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        return work / name, time.perf_counter() - t0

    first, first_wall = run("first")
    cells = _cells(SimpleNamespace(path=first))
    scored = json.loads((first / "suite.json").read_text())
    options = next((m.get("options") or {} for m in scored["metrics"] if m["name"] == "trajectory-error"), {})
    max_samples = options.get("max_samples")
    out = {
        "cell_nfe": sum(c["nfe"] * c["num_samples"] * len(c["seeds"]) for c in cells),
        "served_cell_nfe": _served_cell_nfe(cells, max_samples or scored["num_samples"]),
        "cell_sampling_seconds_first": sum(c["sample_seconds"] for c in cells),
        "first_wall_seconds": first_wall,
        **_reference_figures(SimpleNamespace(path=first)),
    }
    second, wall = run("second")
    cells = _cells(SimpleNamespace(path=second))
    sampling = sum(c["sample_seconds"] for c in cells)
    manifest = RunDir(second).read_manifest()
    probes = [(c.get("harness") or {}).get("probe_seconds") or 0.0 for c in cells]
    metrics = [c.get("metric_seconds") or 0.0 for c in cells]
    beside = bool(manifest["executor"].get("probe_beside_scoring"))
    out.update(
        wall_seconds=wall,
        run_wall_seconds=manifest["wall_seconds"],
        sampling_seconds=sampling,
        metric_seconds=sum(metrics),
        probe_seconds=sum(probes),
        probe_beside_scoring=beside,
        # what the two cost the run: side by side, the longer of each cell's pair; else both
        scoring_and_probe_seconds=sum(map(max, probes, metrics)) if beside else sum(probes) + sum(metrics),
        ratio=wall / sampling,
        cells=len(cells),
    )
    from diffbench.metrics.trajectory import TrajectoryError
    from diffbench.models.digits import digits_eps

    tol = options.get("rtol", TrajectoryError.options["rtol"])
    out.update(reference_error(digits_eps(), tol, ("dopri5", 1e-10)), smallest_served=_smallest_served(cells))
    out["reference_error_ratio"] = out["reference_error"] / out["smallest_served"]
    return out


MNIST_LIKE_TOL = 3e-6  # chosen from this network's errors (≥ 0.4 at 100 NFE): the reference's own is ≤ 1 % of them


def mnist_like_costs(
    work: Path, num_samples: int = 8, tol: float = MNIST_LIKE_TOL, network_dtype: str = "float32"
) -> dict[str, float]:
    """steps.yaml's grid on a random 28×28 network (tests/benchmarks/mnist_like.py, linear-β ε-prediction),
    every sample scored by trajectory-error at rtol = atol = ``tol`` with the network in ``network_dtype``: the
    reference's NFE and seconds against the cells' sampling, and its own error (against a float64 dopri5 solve at
    1e-7, the default) over the smallest error it serves."""
    import yaml

    from diffbench.api import run_suite
    from diffbench.run.suite import parse_suite

    data = yaml.safe_load(STEPS.read_text())
    data.update(
        name="steps-mnist-like",
        num_samples=num_samples,
        batch_size=num_samples,
        device="cpu",
        model={"name": "python", "options": {"factory": "mnist_like:random_unet28", "shape": [1, 28, 28]}},
        metrics=[{"name": "trajectory-error", "options": {"rtol": tol, "atol": tol, "network_dtype": network_dtype}}],
    )
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    result = run_suite(
        parse_suite(data),
        work / f"mnist-like-{network_dtype}",
        progress=False,
        cache_dir=work / f"cache-28-{network_dtype}",
        draw=False,
        trust_code=True,
    )
    cells = _cells(result)
    served = [c for c in cells if (c.get("metrics") or {}).get("trajectory-error") is not None]
    out = {
        "cell_nfe": sum(c["nfe"] * c["num_samples"] for c in cells),
        "served_cell_nfe": _served_cell_nfe(cells, num_samples),
        "sampling_seconds": sum(c["sample_seconds"] for c in cells),
        "served_sampling_seconds": sum(c["sample_seconds"] for c in served),
        "samples": num_samples,
        "network_dtype": network_dtype,
        **_reference_figures(result),
    }
    out.update(
        nfe_ratio=out["reference_nfe"] / out["cell_nfe"],
        served_nfe_ratio=out["reference_nfe"] / out["served_cell_nfe"],
        seconds_ratio=out["reference_seconds"] / out["sampling_seconds"],
    )
    from diffbench.models.python import python_model

    net = python_model(factory="mnist_like:random_unet28", shape=[1, 28, 28])
    out.update(reference_error(net, tol, ("dopri5", 1e-7), network_dtype=network_dtype))
    out["smallest_served"] = _smallest_served(cells)
    out["reference_error_ratio"] = out["reference_error"] / out["smallest_served"]
    out["default_tol_nfe_ratio"] = out["tight_nfe_per_sample"] * num_samples * out["references"] / out["cell_nfe"]
    return out


def steps_lines(c: dict[str, float]) -> list[str]:
    return [
        f"steps.yaml, references cached: `diffbench run` wall {c['wall_seconds']:.1f} s (start-up and plots "
        f"included; the run's own clock {c['run_wall_seconds']:.1f} s), sampling {c['sampling_seconds']:.1f} s, "
        f"metrics {c['metric_seconds']:.1f} s and harness probes {c['probe_seconds']:.1f} s "
        f"({'side by side' if c['probe_beside_scoring'] else 'one after the other'}: "
        f"{c['scoring_and_probe_seconds']:.1f} s of the run), other in the run "
        f"{c['run_wall_seconds'] - c['sampling_seconds'] - c['scoring_and_probe_seconds']:.1f} s, "
        f"start-up and plots {c['wall_seconds'] - c['run_wall_seconds']:.1f} s; whole run / sampling = "
        f"{c['ratio']:.2f} ({c['cells']} cells)",
        f"steps.yaml references: {c['references']} computed with {c['reference_nfe']:,.0f} NFE in "
        f"{c['reference_seconds']:.1f} s, against the cells' {c['cell_nfe']:,.0f} sample-NFE "
        f"({c['reference_nfe'] / c['cell_nfe']:.3f}×) and the {c['served_cell_nfe']:,.0f} sample-NFE of the "
        f"scored samples of the cells they serve ({c['reference_nfe'] / c['served_cell_nfe']:.2f}×); "
        f"first run {c['first_wall_seconds']:.1f} s, sampling {c['cell_sampling_seconds_first']:.1f} s",
        _error_line("steps.yaml", c),
    ]


def _error_line(what: str, c: dict[str, float]) -> str:
    return (
        f"{what} reference at {c['reference_tol']:g}: own error {c['reference_error']:.2e} against {c['tight']} "
        f"({c['error_samples']} samples), {100 * c['reference_error_ratio']:.2f} % of the smallest trajectory-error "
        f"it serves ({c['smallest_served']:.3g})"
    )


def mnist_like_lines(c: dict[str, float]) -> list[str]:
    return [
        f"28×28 random UNet, steps.yaml's grid, {c['samples']} samples all scored, network in the reference "
        f"{c['network_dtype']}: reference "
        f"{c['reference_nfe']:,.0f} NFE against the cells' {c['cell_nfe']:,.0f} ({c['nfe_ratio']:.2f}×) and the "
        f"deterministic cells' {c['served_cell_nfe']:,.0f} it serves ({c['served_nfe_ratio']:.2f}×); "
        f"{c['reference_seconds']:.1f} s against {c['sampling_seconds']:.1f} s of sampling "
        f"({c['seconds_ratio']:.2f}×); at the default 1e-7 the reference would take "
        f"{c['tight_nfe_per_sample']:.0f} NFE a sample ({c['default_tol_nfe_ratio']:.2f}× the cells')",
        _error_line(f"28×28 ({c['network_dtype']} network)", c),
    ]


@pytest.mark.benchmark(group="the main job: whole run against sampling, references cached")
def test_steps_suite_whole_run_over_sampling_and_reference_cost(benchmark, figures, tmp_path):
    costs = benchmark.pedantic(steps_costs, args=(tmp_path,), rounds=1, iterations=1)
    benchmark.extra_info.update(costs)
    figures.extend(steps_lines(costs))


@pytest.mark.benchmark(group="trajectory references on a 28×28 model")
@pytest.mark.parametrize("network_dtype", ["float32", "float64"])
def test_reference_cost_on_a_28x28_model(benchmark, figures, tmp_path, network_dtype):
    costs = benchmark.pedantic(
        mnist_like_costs, args=(tmp_path, 8, MNIST_LIKE_TOL, network_dtype), rounds=1, iterations=1
    )
    benchmark.extra_info.update(costs)
    figures.extend(mnist_like_lines(costs))


def _in_temp(make, lines):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return lines(make(Path(tmp)))


SCRIPT_PARTS = [
    lambda args: scoring_lines(scoring_costs(*args)),
    lambda args: _in_temp(steps_costs, steps_lines),
    lambda args: _in_temp(mnist_like_costs, mnist_like_lines),
    lambda args: _in_temp(functools.partial(mnist_like_costs, network_dtype="float64"), mnist_like_lines),
]


if __name__ == "__main__":
    sizes = tuple(int(a) for a in sys.argv[1:3])
    for part in SCRIPT_PARTS:
        for line in part(sizes):
            print(line, flush=True)
