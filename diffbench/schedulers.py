"""Step schedulers: the descending σ sequence a sampler visits, N steps ending at σ = 0.

Every scheduler has the signature ``fn(schedule, steps, **options) -> Tensor`` (float64, length
steps + 1, last entry 0). ``materialize`` adds what is shared: validation, optional
quantisation to training timesteps on discrete models, and the recorded timesteps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from diffbench.noise import DiscreteVP, NoiseSchedule


def _with_zero(sigmas: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.append(np.asarray(sigmas, dtype=np.float64), 0.0))


def _range(schedule: NoiseSchedule, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    lo = schedule.sigma_min if sigma_min is None else float(sigma_min)
    hi = schedule.sigma_max if sigma_max is None else float(sigma_max)
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={lo}, sigma_max={hi}")
    if schedule.discrete and not schedule.sigma_min <= lo < hi <= schedule.sigma_max:
        # outside the training range t(σ) clamps, so the network would silently see another σ
        raise ValueError(f"σ range [{lo:g}, {hi:g}] leaves the discrete model's training range "
                         f"[{schedule.sigma_min:g}, {schedule.sigma_max:g}]")
    return lo, hi


def _require_discrete(schedule: NoiseSchedule, spacing: str, steps: int) -> DiscreteVP:
    if not isinstance(schedule, DiscreteVP):
        raise ValueError(f"scheduler {spacing!r} needs a discrete-time model; {schedule.name!r} is continuous "
                         "(use linspace, karras, logsnr, quadratic or exponential)")
    if steps > schedule.num_steps:
        raise ValueError(f"scheduler {spacing!r} allows at most {schedule.num_steps} steps "
                         f"(the model's training timesteps), got {steps}")
    return schedule


def linspace(schedule: NoiseSchedule, steps: int, *, t_min: float | None = None,
             t_max: float | None = None) -> torch.Tensor:
    """Uniform time, endpoints included: t = linspace(t_max, t_min, N) (DDIM/diffusers 'linspace')."""
    if isinstance(schedule, DiscreteVP):
        sched = _require_discrete(schedule, "linspace", steps)
        lo, hi = _trained_range(sched, t_min, t_max)
        if steps > hi - lo + 1:
            raise ValueError(f"scheduler 'linspace' allows at most {hi - lo + 1} steps between t_min={lo} and "
                             f"t_max={hi}, got {steps}")
        # lo + round(i (hi-lo) / (N-1)) on the exact quotient (one division, so ties go half-to-even as on paper;
        # diffusers' float linspace rounds a few ties the other way, e.g. N = 27); one step starts at t_max
        i = np.arange(steps - 1, -1, -1)
        t = lo + np.round(i * (hi - lo) / (steps - 1)) if steps > 1 else np.array([float(hi)])
    else:
        lo = schedule.t_min if t_min is None else float(t_min)
        hi = schedule.t_max if t_max is None else float(t_max)
        if not schedule.t_min <= lo < hi <= schedule.t_max:
            raise ValueError(f"linspace needs t_min < t_max inside the model's time range [{schedule.t_min:g}, "
                             f"{schedule.t_max:g}], got t_min={lo:g}, t_max={hi:g}")
        t = np.linspace(hi, lo, steps)
    return _with_zero(schedule.sigma_of_t(t))


def _trained_range(sched: DiscreteVP, t_min: float | None, t_max: float | None) -> tuple[int, int]:
    """First and last training timestep a grid may use (integers inside 0 .. T-1)."""
    lo = 0 if t_min is None else t_min
    hi = sched.num_steps - 1 if t_max is None else t_max
    for name, v in (("t_min", lo), ("t_max", hi)):
        if float(v) != int(v) or not 0 <= v <= sched.num_steps - 1:
            raise ValueError(f"{name} must be a training timestep, an integer in 0..{sched.num_steps - 1}, got {v}")
    if not lo < hi:
        raise ValueError(f"need t_min < t_max, got t_min={lo}, t_max={hi}")
    return int(lo), int(hi)


def leading(schedule: NoiseSchedule, steps: int, *, offset: int = 0) -> torch.Tensor:
    """Uniform training timesteps from 0 by stride T // N (DDIM 'leading'; never reaches t = T - 1)."""
    sched = _require_discrete(schedule, "leading", steps)
    stride = sched.num_steps // steps
    t = (np.arange(steps) * stride + offset)[::-1]
    if not (0 <= offset and t[0] < sched.num_steps):
        raise ValueError(f"leading offset {offset} puts timesteps outside 0..{sched.num_steps - 1}")
    return _with_zero(sched.sigma_of_t(t.astype(np.float64)))


def trailing(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """Uniform training timesteps counted back from t = T - 1 (Lin et al. 2024 'trailing')."""
    sched = _require_discrete(schedule, "trailing", steps)
    # round(T (N - i) / N) - 1 on the exact quotient; diffusers' np.arange(T, 0, -T/N) returns N + 1
    # values for some N (61, 103, ...) and rounds some ties the other way (N = 48)
    t = np.round(sched.num_steps * (steps - np.arange(steps)) / steps) - 1
    return _with_zero(sched.sigma_of_t(t))


def ddim_quadratic(schedule: NoiseSchedule, steps: int, *, fraction: float = 0.8) -> torch.Tensor:
    """DDIM's quadratic timestep selection t_i = ⌊(i √(fraction·T) / (N-1))²⌋ (Song et al. 2021, code 'quad')."""
    sched = _require_discrete(schedule, "ddim-quadratic", steps)
    if not 0 < fraction <= 1:
        raise ValueError(f"ddim-quadratic fraction must be in (0, 1], got {fraction}")
    top = np.sqrt(fraction * sched.num_steps)
    t = np.floor(np.linspace(0.0, top, steps) ** 2)[::-1]
    if len(np.unique(t)) < steps:  # the DDIM code would take no-op steps between equal timesteps
        most = 1 + int(np.floor(top))  # (i·top/(N-1))² must grow by ≥ 1 from i = 0 to 1
        raise ValueError(f"ddim-quadratic at {steps} steps repeats training timesteps (the DDIM code takes no-op "
                         f"steps there); use at most {most} steps")
    return _with_zero(sched.sigma_of_t(t))


def karras(schedule: NoiseSchedule, steps: int, *, rho: float = 7.0,
           sigma_min: float | None = None, sigma_max: float | None = None) -> torch.Tensor:
    """σ uniform in σ^(1/ρ) (Karras et al. 2022, eq. 5)."""
    lo, hi = _range(schedule, sigma_min, sigma_max)
    ramp = np.linspace(0, 1, steps)
    return _with_zero((hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho)


def logsnr(schedule: NoiseSchedule, steps: int, *, sigma_min: float | None = None,
           sigma_max: float | None = None) -> torch.Tensor:
    """Uniform in log-SNR λ = -log σ (DPM-Solver's 'logSNR' spacing, Lu et al. 2022)."""
    lo, hi = _range(schedule, sigma_min, sigma_max)
    return _with_zero(np.exp(np.linspace(np.log(hi), np.log(lo), steps)))


def quadratic(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """Uniform in √t between t_max and t_min (DPM-Solver's 'time_quadratic', Lu et al. 2022)."""
    t = np.linspace(np.sqrt(schedule.t_max), np.sqrt(schedule.t_min), steps) ** 2
    return _with_zero(schedule.sigma_of_t(t))


def exponential(schedule: NoiseSchedule, steps: int, *, rho: float = 1.0, sigma_min: float | None = None,
                sigma_max: float | None = None) -> torch.Tensor:
    """Polyexponential: log σ = log σ_min + ramp^ρ (log σ_max - log σ_min) (k-diffusion; ρ = 1 equals logsnr)."""
    lo, hi = _range(schedule, sigma_min, sigma_max)
    ramp = np.linspace(1, 0, steps) ** rho
    return _with_zero(np.exp(np.log(lo) + ramp * (np.log(hi) - np.log(lo))))


SCHEDULERS: dict[str, Callable[..., torch.Tensor]] = {
    "linspace": linspace, "leading": leading, "trailing": trailing, "karras": karras,
    "logsnr": logsnr, "quadratic": quadratic, "exponential": exponential,
}


# One line per option ('diffbench plugins NAME' prints them).
OPTION_HELP: dict[str, dict[str, str]] = {
    "linspace": {"t_min": "first trained timestep, where the grid ends before σ = 0 (default the model's "
                          "t_min: 0 on discrete models; 1 gives round(linspace(T, 1, N)) on a (T+1)-entry table)",
                 "t_max": "last trained timestep, where the grid starts (default the model's t_max: T-1 on "
                          "discrete models)"},
    "leading": {"offset": "added to every timestep: diffusers' steps_offset (Stable Diffusion uses 1)"},
    "karras": {"rho": "ρ of σ^(1/ρ) spacing (EDM: 7)", "sigma_min": "smallest σ > 0 of the grid (default: "
               "the model's)", "sigma_max": "largest σ of the grid (default: the model's)"},
    "logsnr": {"sigma_min": "smallest σ > 0 of the grid (default: the model's)",
               "sigma_max": "largest σ of the grid (default: the model's)"},
    "exponential": {"rho": "ramp exponent ρ (1: uniform in log σ)", "sigma_min": "smallest σ > 0 of the grid "
                    "(default: the model's)", "sigma_max": "largest σ of the grid (default: the model's)"},
    "ddim-quadratic": {"fraction": "the grid tops out at t = fraction · T (DDIM's code: 0.8)"},
}


# Partial grids that do not start at the model's σ_max (DDIM's quadratic selection tops out at 0.8 T).
PARTIAL_SCHEDULERS: dict[str, Callable[..., torch.Tensor]] = {"ddim-quadratic": ddim_quadratic}


@dataclass(frozen=True)
class StepGrid:
    """A materialised grid: σ list, the model time of each σ, whether σ was quantised, whether it ends at 0."""

    sigmas: torch.Tensor  # float64, descending, last entry 0 unless final_zero is False
    timesteps: list[float]  # model time of each σ > 0 (training timesteps on discrete models)
    quantized: bool
    final_zero: bool = True

    def record(self) -> dict[str, Any]:
        return {"sigmas": self.sigmas.tolist(), "timesteps": self.timesteps, "quantized": self.quantized,
                "final_zero": self.final_zero}


def materialize(fn: Callable[..., torch.Tensor], schedule: NoiseSchedule, steps: int, *,
                quantize: bool = False, final_zero: bool = True, **options: Any) -> StepGrid:
    """Run scheduler ``fn`` and check its output; optionally snap σ to training timesteps.

    ``final_zero=False`` stops at the scheduler's smallest σ > 0 instead of stepping into σ = 0:
    the scheduler is asked for steps + 1 points and its trailing 0 is dropped. Convergence-order
    studies need it, because the step into σ = 0 is first order for every solver.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    sigmas = torch.as_tensor(fn(schedule, steps if final_zero else steps + 1, **options),
                             dtype=torch.float64).flatten()
    if quantize:
        if not schedule.discrete:
            raise ValueError(f"quantize needs a discrete-time model; {schedule.name!r} is continuous")
        sigmas = torch.from_numpy(schedule.quantize(sigmas.numpy()))
    if sigmas.shape[0] != steps + 1 + (not final_zero) or sigmas[-1] != 0:
        raise ValueError(f"scheduler returned {sigmas.shape[0]} values; expected {steps + 1 + (not final_zero)} "
                         "ending at 0")
    if not final_zero:
        sigmas = sigmas[:-1]
    if not bool((sigmas[:-1] > sigmas[1:]).all()):
        raise ValueError("scheduler σ values are not strictly decreasing"
                         + (" after quantisation (too many steps for the training grid?)" if quantize else ""))
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError("scheduler returned non-finite σ")
    positive = sigmas[:-1] if final_zero else sigmas
    timesteps = [float(v) for v in schedule.t_of_sigma(positive.numpy())]
    return StepGrid(sigmas, timesteps, quantize, final_zero)
