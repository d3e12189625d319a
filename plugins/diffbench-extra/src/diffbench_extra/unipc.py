"""UniPC, unified predictor–corrector (Zhao et al. 2023), data prediction, in σ-space.

Follows diffusers' ``UniPCMultistepScheduler`` (``predict_x0=True``): a multistep predictor UniP-p
and a corrector UniC-p that reuses the next step's denoiser call, so the corrected scheme has
order p + 1 at one call per step. With α = 1 in σ-space, h = λ_t - λ_s and λ = -log σ.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from diffbench.samplers import log_ratio, num_steps, steps_of

VARIANTS = ("bh1", "bh2")


def _weights(rks: list[float], h: float, variant: str, corrector: bool) -> tuple[list[float], float, float]:
    """ρ weights of the divided differences, φ₁ term and B(h) (Zhao et al. 2023, Alg. 2/3 with hh = -h)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    p = len(rks) + 1 if corrector else len(rks)
    if p == 0:
        return [], h_phi_1, b_h
    if p == 1:  # the paper's simplified one-term rule
        return [0.5], h_phi_1, b_h
    nodes = np.asarray([*rks, 1.0][:p])
    vander = np.stack([nodes**i for i in range(p)])
    b, h_phi_k, factorial = [], h_phi_1 / hh - 1.0, 1
    for i in range(1, p + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return np.linalg.solve(vander, np.asarray(b)).tolist(), h_phi_1, b_h


def _update(
    x: Tensor,
    m0: Tensor,
    s: float,
    t: float,
    older: list[tuple[Tensor, float]],
    variant: str,
    m_t: Tensor | None = None,
) -> Tensor:
    """UniP step from σ = s to t (``m_t`` None) or UniC correction of it with m_t = D at t.

    ``older``: (D, σ) of the steps before s, newest first; one per order above the first.
    """
    h = log_ratio(s, t)
    rks = [math.log(s / s_i) / h for _, s_i in older]  # (λ_i - λ_s) / h, negative
    diffs = [(m_i - m0) / r for (m_i, _), r in zip(older, rks)]
    corrector = m_t is not None
    if corrector:
        diffs.append(m_t - m0)
    rhos, h_phi_1, b_h = _weights(rks, h, variant, corrector)
    x = (t / s) * x - h_phi_1 * m0
    if diffs:
        x = x - b_h * sum(rho * d for rho, d in zip(rhos, diffs))
    return x


def unipc(
    denoiser,
    x,
    sigmas,
    *,
    noise=None,
    solver_order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
):
    """UniPC (Zhao et al. 2023): UniP-p predictor + UniC corrector, B(h) variant bh1/bh2, multistep."""
    if variant not in VARIANTS:
        raise ValueError(f"unipc variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if solver_order not in (1, 2, 3):
        raise ValueError(f"unipc solver_order must be 1, 2 or 3, got {solver_order!r}")
    n = num_steps(sigmas)
    history: list[tuple[Tensor, float]] = []  # (D, σ) newest first
    last: tuple[Tensor, float, int] | None = None  # (x, σ, order) where the previous prediction started
    for k, s, sn in steps_of(sigmas):
        m = denoiser(x, s)
        if sn == 0.0:
            x = m
            continue
        if corrector and last is not None:
            x_s, s_prev, order = last
            x = _update(x_s, history[0][0], s_prev, s, history[1:order], variant, m_t=m)
        history = [(m, s), *history][:solver_order]
        order = min(solver_order, len(history), (n - k) if lower_order_final else solver_order)
        last = (x, s, order)
        x = _update(x, m, s, sn, history[1:order], variant)
    return x
