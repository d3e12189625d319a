"""Improved PNDM: Adams–Bashforth on the σ-space probability-flow ODE (Zhang & Chen 2023, DEIS).

Follows k-diffusion's ``sample_ipndm`` / ``sample_ipndm_v``: the derivative d = (x - D(x, σ)) / σ
of the last steps is combined by an explicit multistep rule, warming up from Euler. One
denoiser call per step. As everywhere in diffbench, the step into σ = 0 is the first-order
limit x = D(x, σ) (k-diffusion keeps the multistep rule there).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from torch import Tensor

from diffbench.samplers import steps_of, to_d

# Adams–Bashforth weights for equal steps, newest derivative first.
_FIXED = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}

Weights = Callable[[Sequence[float], float], Sequence[float]]


def fixed_weights(nodes: Sequence[float], sigma_next: float) -> Sequence[float]:
    """Equal-step Adams–Bashforth weights whatever the actual spacing (k-diffusion's ipndm)."""
    return _FIXED[len(nodes)]


def variable_weights(nodes: Sequence[float], sigma_next: float) -> Sequence[float]:
    """Adams–Bashforth weights for the actual σ nodes: ∫ of each Lagrange basis over the step / h."""
    nodes_arr = np.asarray(nodes, dtype=np.float64)
    s = float(nodes_arr[0])
    h = float(sigma_next) - s
    weights = []
    for j in range(len(nodes_arr)):
        others = np.delete(nodes_arr, j)
        basis = np.poly1d(np.poly(others - s)) / float(np.prod(nodes_arr[j] - others))  # in τ = σ - σ_k
        weights.append(float(np.polyint(basis)(h)) / h)
    return weights


def _adams_bashforth(denoiser, x: Tensor, sigmas, max_order: int, weights: Weights) -> Tensor:
    if not 1 <= max_order <= 4:
        raise ValueError(f"ipndm max_order must be 1, 2, 3 or 4, got {max_order!r}")
    history: list[tuple[Tensor, float]] = []  # (d, σ) of previous steps, newest first
    for _, s, sn in steps_of(sigmas):
        denoised = denoiser(x, s)
        if sn == 0.0:
            x = denoised
            continue
        history = [(to_d(x, s, denoised), s), *history][:max_order]
        w = weights([node for _, node in history], sn)
        x = x + (sn - s) * sum(wj * dj for wj, (dj, _) in zip(w, history))
    return x


def ipndm(denoiser, x, sigmas, *, noise=None, max_order: int = 4):
    """iPNDM (Zhang & Chen 2023, DEIS): equal-step Adams–Bashforth on dx/dσ, lower-order warm-up."""
    return _adams_bashforth(denoiser, x, sigmas, max_order, fixed_weights)


def ipndm_v(denoiser, x, sigmas, *, noise=None, max_order: int = 4):
    """iPNDM-v (Zhang & Chen 2023, DEIS; k-diffusion): variable-step Adams–Bashforth on dx/dσ."""
    return _adams_bashforth(denoiser, x, sigmas, max_order, variable_weights)
