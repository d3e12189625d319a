"""trajectory-error: agrees with the exact solver-error on the GMM, is absent for stochastic samplers,
caches its converged reference safely, and shows the samplers' orders on a real model (slow)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import edm_model, start_points

import diffbench
from diffbench.core.denoiser import SigmaDenoiser
from diffbench.metrics.base import MetricContext
from diffbench.metrics.exact import SolverError
from diffbench.metrics.trajectory import TrajectoryError, solve_reference

pytestmark = pytest.mark.usefixtures("single_thread")
TIGHT = {"reference_tol": 1e-7, "max_steps": 4096}


def _gmm():
    return edm_model("eps")


@pytest.mark.parametrize("final_zero", [False, True])
@pytest.mark.parametrize("sampler", ["euler", "dpm-solver++-3m"])
def test_agrees_with_solver_error_on_the_gmm(tmp_path, sampler, final_zero):
    model = _gmm()
    res = diffbench.sample(model, sampler, steps=8, num_samples=32, final_zero=final_zero, dtype="float64")
    ctx = MetricContext(tmp_path)
    traj = TrajectoryError().compute(res.samples, model=model, result=res, context=ctx, **TIGHT)["trajectory-error"]
    exact = SolverError().errors(res.samples, model=model, result=res)
    # per-sample RMS over the 2 coordinates = L2 / √2; the grid ending at 0: both take D(x, σ_last) vs the exact
    # flow to σ = 1e-6 then D, which differ by O(σ_last²) = 4e-6 here
    assert traj.value == pytest.approx(float(exact.mean()) / math.sqrt(2), rel=1e-5 if not final_zero else 1e-4)
    assert traj.uncertainty == pytest.approx(float(exact.std()) / math.sqrt(2) / math.sqrt(32), rel=1e-3)


def test_the_reference_error_is_within_its_tolerance():
    model = _gmm()
    den = SigmaDenoiser(model)
    x = start_points(16, 80.0)
    loose, info = solve_reference(den, x, 80.0, 0.1, False, reference_tol=1e-4)
    exact = model.analytic.ode_solve(x, 80.0, 0.1)
    rms = float((loose - exact).square().mean(1).sqrt().mean())
    assert rms <= info["estimated_error"] <= 1e-4
    assert info["nfe_per_sample"] == sum(info["steps"] // 2**k for k in range(8) if info["steps"] // 2**k >= 64)


def test_a_reference_that_does_not_converge_is_an_error():
    den = SigmaDenoiser(_gmm())
    with pytest.raises(ValueError, match=r"reference did not converge by max_steps 16: differences per doubling 16: "):
        solve_reference(den, start_points(4, 80.0), 80.0, 0.1, False, reference_tol=1e-12, first_steps=8, max_steps=16)


def test_reference_stops_only_once_the_differences_fall(monkeypatch):
    """Successive solutions that agree to the tolerance but stall (5e-4, then 4e-4) are not converged."""
    from diffbench.metrics import trajectory

    offsets = {64: 0.0, 128: 5e-4, 256: 9e-4, 512: 1e-3, 1024: 1e-3}  # differences 5e-4, 4e-4, 1e-4, 0
    monkeypatch.setattr(trajectory, "dpmpp_3m_corrected", lambda den, x, sigmas, **kw: x + offsets[len(sigmas) - 1])
    x = torch.zeros(3, 2, dtype=torch.float64)
    ref, info = trajectory.solve_reference(None, x, 80.0, 0.1, False, reference_tol=1e-3)
    assert info["steps"] == 512 and float(ref[0, 0]) == pytest.approx(1e-3)
    assert [n for n, _ in info["history"]] == [128, 256, 512]
    assert [d for _, d in info["history"]] == pytest.approx([5e-4, 4e-4, 1e-4])
    assert info["estimated_error"] == pytest.approx(1e-4) and info["nfe_per_sample"] == 64 + 128 + 256 + 512


def test_absent_for_a_stochastic_sampler_with_the_reason(tmp_path):
    model = _gmm()
    res = diffbench.sample(model, "ddpm", steps=4, num_samples=8)
    assert TrajectoryError().compute(res.samples, model=model, result=res, context=MetricContext(tmp_path)) == {}
    assert any("trajectory-error absent: sampler 'ddpm' is stochastic" in w for w in res.meta["warnings"])
    assert not (tmp_path / "trajectory-references").exists()  # no reference computed for it


def test_reference_is_cached_once_as_safetensors_and_json(tmp_path):
    model = _gmm()
    ctx = MetricContext(tmp_path)
    a = diffbench.sample(model, "euler", steps=6, num_samples=8, dtype="float64")
    b = diffbench.sample(model, "heun", steps=3, num_samples=8, dtype="float64")
    first = TrajectoryError().compute(a.samples, model=model, result=a, context=ctx)
    files = sorted(p.suffix for p in (tmp_path / "trajectory-references").iterdir())
    assert files == [".json", ".safetensors"]
    (entry,) = ctx.info["trajectory_references"].values()
    assert entry["from_cache"] is False and entry["seconds"] > 0 and entry["nfe_per_sample"] > 0
    ctx2 = MetricContext(tmp_path)
    again = TrajectoryError().compute(a.samples, model=model, result=a, context=ctx2)
    assert again == first and list(ctx2.info["trajectory_references"].values())[0]["from_cache"] is True
    TrajectoryError().compute(b.samples, model=model, result=b, context=ctx2)  # same σ range: same reference
    assert len(list((tmp_path / "trajectory-references").iterdir())) == 2
    # a sidecar written for another key is not trusted: the reference is recomputed
    sidecar = next((tmp_path / "trajectory-references").glob("*.json"))
    meta = json.loads(sidecar.read_text())
    meta["key"]["seed"] = 99
    sidecar.write_text(json.dumps(meta))
    ctx3 = MetricContext(tmp_path)
    assert TrajectoryError().compute(a.samples, model=model, result=a, context=ctx3) == first
    assert list(ctx3.info["trajectory_references"].values())[0]["from_cache"] is False


def test_max_samples_scores_only_the_first_samples(tmp_path):
    model = _gmm()
    res = diffbench.sample(model, "euler", steps=6, num_samples=12, dtype="float64")
    ctx = MetricContext(tmp_path)
    some = TrajectoryError().compute(res.samples, model=model, result=res, context=ctx, max_samples=5)
    exact = SolverError().errors(res.samples, model=model, result=res)[:5]
    assert some["trajectory-error"].value == pytest.approx(float(exact.mean()) / math.sqrt(2), rel=1e-4)
    assert "over 5 samples" in some["trajectory-error"].method


@pytest.mark.slow
@pytest.mark.parametrize(
    "sampler,order,steps",
    [("euler", 1, (20, 40, 80)), ("heun", 2, (20, 40, 80)), ("dpm-solver++-3m-corrected", 3, (10, 20, 40))],
)
def test_orders_on_a_real_model(tmp_path, sampler, order, steps):
    # digits-v, grid stopping at σ_min. Measured: euler and heun at their orders over 20-80 steps; the
    # third-order solver shows 3.1 from 20 to 40 steps and then flattens (80 steps: 3.3e-4, the error floor
    # near 3e-4 the README describes; it stays in float64 sampling too), so its range stops at 40
    model = diffbench.load_model("digits-v")
    ctx = MetricContext(tmp_path)
    errors = []
    for n in steps:
        res = diffbench.sample(model, sampler, steps=n, num_samples=16, batch_size=16, final_zero=False)
        errors.append(
            TrajectoryError().compute(res.samples, model=model, result=res, context=ctx)["trajectory-error"].value
        )
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.35, f"{sampler}: measured {slope:.2f}, errors {errors}"
