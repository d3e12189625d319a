"""Print every built-in deterministic sampler's measured convergence order on the exact GMM (README table).

Float64, 64 starting points, Karras σ 80 → 0.1 without the trailing 0, N = 64 ... 1024 steps; the order is
minus the least-squares slope of log(mean L2 error) against log N, the error against DOP853 at rtol 1e-12
(tests/samplers/test_convergence.py::test_declared_order_over_the_full_range asserts the same numbers).
Run: python scripts/sampler_orders.py [NAME ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import edm_model, fit_slope, run, start_points, truncated_karras  # noqa: E402
from samplers.test_convergence import DETERMINISTIC, ORDERED  # noqa: E402

from diffbench.samplers import SAMPLERS  # noqa: E402

STEPS = (64, 128, 256, 512, 1024)


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    model = edm_model("eps")
    x = start_points(64, 80.0)
    exact = model.analytic.ode_solve(x, 80.0, 0.1)
    print("| sampler | options | declared | measured |\n|---|---|---|---|")
    for name in names or ORDERED:
        opts = DETERMINISTIC.get(name, {})
        errors = [
            float((run(name, model, x, truncated_karras(model, n, 0.1, 80.0), **opts) - exact).norm(dim=1).mean())
            for n in STEPS
        ]
        print(f"| {name} | {opts or ''} | {SAMPLERS[name].order} | {fit_slope(STEPS, errors):.2f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
