"""Error-controlled solutions of the probability-flow ODE: Dormand–Prince 5(4) in log σ, one step size per sample.

In u = log σ the ODE dx/dσ = (x − D(x, σ))/σ reads dx/du = x − D(x, e^u), whose Jacobian I − ∂D/∂x has
eigenvalues in [0, 1] for a well-behaved denoiser: not stiff, so an explicit embedded Runge–Kutta pair
with step-size control solves it to a tolerance in a few hundred evaluations (Dormand & Prince 1980, the
pair of DOPRI5 and scipy's RK45; controller and error norm of Hairer, Nørsett & Wanner, Solving ODEs I,
II.4). Every sample carries its own u, step size and error norm, so a sample's solution never depends on
which samples are solved beside it (rows are batched only to share network calls).

One solve serves every σ at which a cell's grid stops (its last positive σ): the trajectory runs from
σ_start to the floor (the model's smallest σ, or a lower target), and the solution at each other target
comes from a side step of the accepted step that crosses it, taken from the same accepted point; the
main trajectory is never changed by a side step. So the solution at a target does not depend on which
other targets were asked for, and one solve costs the trajectory plus 6 evaluations per extra target.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from torch import Tensor

METHODS = {
    "dopri5": "Dormand–Prince 5(4) in log σ, per-sample step control",
    "dop853": "Dormand–Prince 8(5,3) in log σ, per-sample step control",
}
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 5.0


class Tableau:
    """An explicit embedded Runge–Kutta pair: nodes, stage rows, solution weights and the error estimate."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "dopri5":  # Dormand & Prince (1980); the 7th stage is the solution (FSAL)
            self.c = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
            self.a = (
                (),
                (1 / 5,),
                (3 / 40, 9 / 40),
                (44 / 45, -56 / 15, 32 / 9),
                (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
                (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
            )
            self.b = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
            b4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
            self.e5 = tuple(x - y for x, y in zip(self.b + (0.0,), b4))
            self.e3, self.order = None, 4
        elif name == "dop853":  # Dormand & Prince (Hairer, Nørsett & Wanner I, II.10); scipy's coefficients
            from scipy.integrate._ivp import dop853_coefficients as d

            n = d.N_STAGES
            self.c = tuple(float(v) for v in d.C[:n])
            self.a = tuple(tuple(float(v) for v in d.A[i, :i]) for i in range(n))
            self.b = tuple(float(v) for v in d.B)
            self.e5, self.e3, self.order = tuple(float(v) for v in d.E5), tuple(float(v) for v in d.E3), 7
        else:
            raise ValueError(f"unknown method {name!r}; methods: {', '.join(METHODS)}")

    @property
    def evaluations_per_step(self) -> int:
        return len(self.c)  # the stages after the first, and f at the new point (the next step's first stage)

    def error_norm(self, ks: list[Tensor], h: Tensor, x: Tensor, y: Tensor, rtol: float, atol: float) -> Tensor:
        """Scaled RMS error per row (DOP853: Hairer's combination of the 5th- and 3rd-order estimates)."""
        scale = atol + rtol * torch.maximum(x.abs(), y.abs())

        def rms(weights) -> Tensor:
            err = sum(w * k for w, k in zip(weights, ks) if w != 0.0) / scale
            return err.flatten(1).square().mean(1)

        e5 = rms(self.e5)
        if self.e3 is None:
            return h.abs() * e5.sqrt()
        denom = e5 + 0.01 * rms(self.e3)
        return h.abs() * e5 / torch.where(denom > 0, denom, torch.ones_like(denom)).sqrt()


# denoise(x, sigmas, rows) -> D(x_i, σ_i) for each row; rows[i] is the sample row i belongs to
PerSampleDenoiser = Callable[[Tensor, Tensor, Tensor], Tensor]


def solve_to_targets(
    denoise: PerSampleDenoiser,
    x: Tensor,
    sigma_start: float,
    targets: list[float],
    *,
    rtol: float,
    atol: float,
    max_steps: int = 10_000,
    first_step: float | None = None,
    method: str = "dopri5",
) -> tuple[dict[float, Tensor], dict[str, Any]]:
    """x(σ) of the probability-flow ODE from ``x`` at σ_start, at every σ in ``targets`` (each 0 < σ < σ_start).

    Returns {σ: solution (float64, like x)} and {nfe_per_sample (mean), nfe_max, steps (mean accepted),
    rejected (mean), seconds, method, rtol, atol}. ValueError when a sample needs more than ``max_steps``.
    """
    t0 = time.perf_counter()
    tab = Tableau(method)
    targets = sorted({float(s) for s in targets}, reverse=True)
    if not targets or not (0 < targets[-1] and targets[0] < sigma_start):
        raise ValueError(f"targets must lie in (0, {sigma_start:g}), got {targets}")
    n = len(x)
    x = x.detach().to(torch.float64).clone()
    dev = x.device
    u_targets = torch.tensor([math.log(s) for s in targets], dtype=torch.float64)
    u_floor = float(u_targets[-1])
    u = torch.full((n,), math.log(sigma_start), dtype=torch.float64)
    span = math.log(sigma_start) - u_floor
    h = torch.full((n,), -(first_step if first_step is not None else span / 100), dtype=torch.float64)
    nxt = torch.zeros(n, dtype=torch.long)  # index of each sample's next target
    steps = torch.zeros(n, dtype=torch.long)
    rejected = torch.zeros(n, dtype=torch.long)
    nfe = torch.zeros(n, dtype=torch.long)
    out: dict[float, Tensor] = {s: torch.empty_like(x) for s in targets}
    all_rows = torch.arange(n)

    def f(xs: Tensor, us: Tensor, rows: Tensor, rows_dev: Tensor) -> Tensor:
        nfe.index_add_(0, rows, torch.ones_like(rows))
        return xs - denoise(xs, us.exp(), rows_dev)

    k1 = f(x, u, all_rows, all_rows.to(dev))
    active = all_rows
    while len(active):
        ua, ha = u[active], h[active]
        landing = ha <= u_floor - ua  # never step past the floor: land on it exactly
        ha = torch.where(landing, u_floor - ua, ha)
        # side steps: every target strictly inside this step, taken from the same point
        side_s, side_t = [], []
        for j in range(len(targets) - 1):
            cross = (ua > u_targets[j]) & (ua + ha <= u_targets[j]) & (nxt[active] <= j)
            if bool(cross.any()):
                side_s.append(torch.nonzero(cross).flatten())
                side_t.append(torch.full((int(cross.sum()),), j, dtype=torch.long))
        side_pos = torch.cat(side_s) if side_s else torch.zeros(0, dtype=torch.long)
        side_tgt = torch.cat(side_t) if side_t else torch.zeros(0, dtype=torch.long)
        pos = torch.cat([torch.arange(len(active)), side_pos])  # positions in ``active`` of every row
        rows = active[pos]
        rows_dev = rows.to(dev)  # once a step, not once a stage
        hh = torch.cat([ha, u_targets[side_tgt] - ua[side_pos]])
        hx = hh.to(dev).view((-1,) + (1,) * (x.ndim - 1))
        x0, u0 = x[rows], u[rows]
        ks = [k1[rows]]
        for s in range(1, len(tab.c)):
            xs = x0 + hx * sum(a * k for a, k in zip(tab.a[s], ks) if a != 0.0)
            ks.append(f(xs, u0 + tab.c[s] * hh, rows, rows_dev))
        y = x0 + hx * sum(b * k for b, k in zip(tab.b, ks) if b != 0.0)
        ks.append(f(y, u0 + hh, rows, rows_dev))  # f at the new point: the next step's first stage
        norm = tab.error_norm(ks, hx.flatten(), x0, y, rtol, atol).cpu()
        m = len(active)
        ok = norm[:m] <= 1.0
        # side steps count only when their main step is accepted
        for r in torch.nonzero(ok[side_pos]).flatten().tolist() if len(side_pos) else []:
            i, j = int(side_pos[r]), int(side_tgt[r])
            out[targets[j]][active[i]] = y[m + r]
        acc = active[ok]
        x[acc], k1[acc] = y[:m][ok], ks[-1][:m][ok]
        u[acc] = torch.where(landing, torch.full_like(ua, u_floor), ua + ha)[ok]
        steps[acc] += 1
        rejected[active[~ok]] += 1
        factor = (SAFETY * norm[:m].clamp_min(1e-10) ** (-1 / (tab.order + 1))).clamp(MIN_FACTOR, MAX_FACTOR)
        factor = torch.where(ok, factor, factor.clamp_max(1.0))
        h[active] = ha * factor
        # targets passed by accepted steps; the floor is reached exactly
        for j in range(len(targets)):
            passed = ok & (u[active] <= u_targets[j]) & (nxt[active] <= j)
            if bool(passed.any()):
                nxt[active[passed]] = j + 1
        done = u[active] <= u_floor
        for i in torch.nonzero(done).flatten().tolist():
            out[targets[-1]][active[i]] = x[active[i]]
        if bool((steps[active] + rejected[active] > max_steps).any()):
            raise ValueError(
                f"trajectory reference needs more than max_steps {max_steps} steps for a sample "
                f"(rtol {rtol:g}, atol {atol:g}): the ODE is stiff or the denoiser not smooth in σ"
            )
        active = active[~done]
    return out, {
        "method": METHODS[method],
        "rtol": rtol,
        "atol": atol,
        "nfe_per_sample": float(nfe.double().mean()),
        "nfe_max": int(nfe.max()),
        "steps": float(steps.double().mean()),
        "rejected": float(rejected.double().mean()),
        "seconds": time.perf_counter() - t0,
    }
