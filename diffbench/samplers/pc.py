"""Score-SDE predictor-corrector sampling (Song et al. 2021) in σ-space, where the VE SDE is the identity map."""
from __future__ import annotations

import math

from typing import Literal

from diffbench.samplers._common import require_noise, steps_of


def pc_noise_per_step(*, corrector_steps: int = 1, **_) -> int:
    """Fresh normal draws per step: one per Langevin corrector step and one for the predictor."""
    return int(corrector_steps) + 1


def pc_nfe(sigmas, *, corrector_steps: int = 1, **_) -> int:
    """corrector_steps + 1 evaluations per step."""
    return (int(corrector_steps) + 1) * (len(sigmas) - 1)


StepSize = Literal["snr", "snr-batch", "sigma"]


def pc(denoiser, x, sigmas, *, noise=None, snr: float = 0.16, corrector_steps: int = 1, step_size: StepSize = "snr"):
    """Predictor-corrector (Song et al. 2021, Alg. 2-4): Langevin corrector, then the reverse-diffusion predictor.

    At each σ_i: ``corrector_steps`` Langevin steps x += ε s + √(2ε) z, then the predictor
    x = x + (σ_i² - σ_{i+1}²) s + √(σ_i² - σ_{i+1}²) z, with the score s = (D(x, σ) - x)/σ². ``step_size``:
    'snr' (default) is Song et al.'s rule ε = 2 (snr ‖z‖/‖s‖)² with each sample's own norms (batch-independent);
    'snr-batch' is the same rule with the norms averaged over the batch, as Song et al.'s code and diffusers'
    ScoreSdeVeScheduler do it: a sample's result then depends on the other samples in its batch (it breaks
    diffbench's batch independence; use it to reproduce those codes); 'sigma' is the rule's value where
    ‖s‖² ≈ dim/σ², ε = 2 snr² σ², bounded where ‖s‖ is near 0 (close to a mode, which in low dimension visibly
    widens the samples of the 'snr' rules). The step into σ = 0 returns the predictor's mean, D(x, σ_i).
    """
    if corrector_steps < 0 or snr < 0:
        raise ValueError(f"pc needs corrector_steps ≥ 0 and snr ≥ 0, got {corrector_steps} and {snr}")
    if step_size not in ("snr", "snr-batch", "sigma"):
        raise ValueError(f"pc step_size must be 'snr', 'snr-batch' or 'sigma', got {step_size!r}")
    draw = require_noise(noise, "pc")
    per = corrector_steps + 1
    for k, s, sn in steps_of(sigmas):
        for j in range(corrector_steps):  # Langevin corrector (Alg. 4)
            score = (denoiser(x, s) - x) / (s * s)
            z = draw(k * per + j)
            if step_size == "sigma":
                eps = 2.0 * (snr * s) ** 2
                x = x + eps * score + math.sqrt(2.0 * eps) * z
                continue
            z_norm, s_norm = z.flatten(1).norm(dim=1), score.flatten(1).norm(dim=1)
            if step_size == "snr-batch":
                z_norm, s_norm = z_norm.mean(), s_norm.mean()
            eps = 2.0 * (snr * z_norm / s_norm) ** 2
            eps = eps.view(-1, *([1] * (x.ndim - 1))) if eps.ndim else eps
            x = x + eps * score + (2.0 * eps).sqrt() * z
        d2 = s * s - sn * sn  # reverse-diffusion predictor (Alg. 2 / eq. 47 for VE)
        x = x + d2 * ((denoiser(x, s) - x) / (s * s))
        if sn > 0.0:
            x = x + math.sqrt(d2) * draw(k * per + corrector_steps)
    return x
