"""trajectory-error of deis on digits-v at 50, 100, 200 steps, sampling in float32 and float64 (README figures).

Shows that the error floor near 3e-4 at ~100 NFE is not float32 rounding of the samplers. 8 samples, Karras σ.
Run: python scripts/trajectory_floor.py
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import diffbench
from diffbench.metrics.base import MetricContext
from diffbench.metrics.trajectory import TrajectoryError

model = diffbench.load_model("digits-v")
context = MetricContext(Path(tempfile.mkdtemp()))
for dtype in ("float32", "float64"):
    for steps in (50, 100, 200):
        res = diffbench.sample(model, "deis", steps=steps, num_samples=8, batch_size=8, dtype=dtype)
        value = TrajectoryError().compute(res.samples, model=model, result=res, context=context)["trajectory-error"]
        print(f"{dtype} deis {steps} steps: {value.value:.3g} ± {value.uncertainty:.2g}", flush=True)
