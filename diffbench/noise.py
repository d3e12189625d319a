"""Noise schedules of pretrained models: x_t = alpha(t) x0 + sigma(t) eps.

Samplers work in σ-space, x = x_t / alpha, σ = sigma(t) / alpha(t); a schedule supplies the
map between its own time t and σ. All schedule arithmetic is float64 NumPy on the host: it
runs once per distinct σ, never on the device inside the sampling loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

ArrayLike = Any  # float or np.ndarray


@dataclass(frozen=True)
class Coef:
    """alpha, sigma and their time derivatives at one t (floats or broadcastable arrays)."""

    alpha: Any
    sigma: Any
    dalpha: Any = math.nan
    dsigma: Any = math.nan


class NoiseSchedule:
    """Base class: subclasses define alpha/sigma in their own time t and the σ ↔ t maps."""

    name: ClassVar[str] = ""
    discrete: ClassVar[bool] = False
    has_derivatives: ClassVar[bool] = True  # coef(t) gives dalpha/dt and dsigma/dt
    sigma_min: float
    sigma_max: float

    def sigma_of_t(self, t: ArrayLike) -> ArrayLike:
        raise NotImplementedError

    def t_of_sigma(self, sigma: ArrayLike) -> ArrayLike:
        raise NotImplementedError

    def coef(self, t: ArrayLike) -> Coef:
        raise NotImplementedError

    @property
    def t_min(self) -> float:
        return float(self.t_of_sigma(self.sigma_min))

    @property
    def t_max(self) -> float:
        return float(self.t_of_sigma(self.sigma_max))

    def describe(self) -> dict[str, Any]:
        return {"schedule": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


def _vp_coef(sig_ve: ArrayLike) -> Coef:
    alpha = 1.0 / np.sqrt(1.0 + np.square(sig_ve))
    return Coef(alpha, sig_ve * alpha)


MAX_TRAIN_STEPS = 100_000  # training timesteps of a discrete schedule (models ship 1000; 4000 at most)


def check_train_steps(steps: Any, where: str = "num_steps") -> int:
    """A discrete schedule's number of training timesteps: an int in [2, MAX_TRAIN_STEPS], else ValueError."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 2 <= steps <= MAX_TRAIN_STEPS:
        raise ValueError(f"{where} must be an integer from 2 to {MAX_TRAIN_STEPS:,}, got {steps!r}")
    return int(steps)


class DiscreteVP(NoiseSchedule):
    """DDPM-style VP schedule over ``num_steps`` training timesteps (Ho et al. 2020)."""

    discrete = True
    has_derivatives = False  # σ(t) is piecewise log-linear between timesteps: no useful derivative

    def __init__(self, betas: np.ndarray | None = None, *, alphas_cumprod: np.ndarray | None = None) -> None:
        """From a β table (ᾱ = cumprod(1 - β) in float64) or, exactly as given, from ᾱ itself."""
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("give exactly one of betas and alphas_cumprod")
        check_train_steps(len(betas if alphas_cumprod is None else alphas_cumprod), "the number of training timesteps")
        if alphas_cumprod is None:
            self.betas = np.asarray(betas, dtype=np.float64)
            self.alphas_cumprod = np.cumprod(1.0 - self.betas)
        else:
            self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
            self.betas = 1.0 - self.alphas_cumprod / np.concatenate([[1.0], self.alphas_cumprod[:-1]])
        if not (np.all(np.diff(self.alphas_cumprod) < 0) and 0 < self.alphas_cumprod[-1]
                and self.alphas_cumprod[0] < 1):
            raise ValueError("alphas_cumprod must decrease strictly inside (0, 1) (a zero terminal ᾱ is σ = ∞)")
        self.sigmas = np.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)
        self.log_sigmas = np.log(self.sigmas)
        self.num_steps = len(self.betas)
        self.timesteps = np.arange(self.num_steps)
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    def sigma_of_t(self, t: ArrayLike) -> ArrayLike:
        # log-σ linear interpolation between training timesteps (k-diffusion's DiscreteSchedule)
        return np.exp(np.interp(t, self.timesteps, self.log_sigmas))

    def t_of_sigma(self, sigma: ArrayLike) -> ArrayLike:
        return np.interp(np.log(sigma), self.log_sigmas, self.timesteps.astype(np.float64))

    def coef(self, t: ArrayLike) -> Coef:
        return _vp_coef(self.sigma_of_t(t))

    def quantize(self, sigma: ArrayLike) -> ArrayLike:
        """Nearest training σ (in log σ) for each σ > 0; σ = 0 stays 0."""
        sigma = np.asarray(sigma, dtype=np.float64)
        out = np.zeros_like(sigma)
        pos = sigma > 0
        idx = np.abs(np.log(sigma[pos])[:, None] - self.log_sigmas[None, :]).argmin(axis=1)
        out[pos] = self.sigmas[idx]
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "num_steps": self.num_steps,
                "beta_start": float(self.betas[0]), "beta_end": float(self.betas[-1])}


class LinearVP(DiscreteVP):
    """Linear-β VP schedule, β from 1e-4 to 0.02 (Ho et al. 2020)."""

    name = "linear"

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        num_steps = check_train_steps(num_steps)
        super().__init__(np.linspace(beta_start, beta_end, num_steps, dtype=np.float64))


class ScaledLinearVP(DiscreteVP):
    """Scaled-linear VP schedule, √β linear from √0.00085 to √0.012 (Rombach et al. 2022)."""

    name = "scaled-linear"

    def __init__(self, num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> None:
        num_steps = check_train_steps(num_steps)
        super().__init__(np.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=np.float64) ** 2)


class SquaredCosVP(DiscreteVP):
    """Discrete cosine VP, ᾱ(t) = f(t)/f(0), f = cos²(((t/T) + s)/(1 + s) · π/2), β ≤ 0.999 (Nichol & Dhariwal 2021)."""

    name = "squaredcos"

    def __init__(self, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> None:
        num_steps = check_train_steps(num_steps)
        f = np.cos((np.arange(num_steps + 1, dtype=np.float64) / num_steps + s) / (1 + s) * np.pi / 2) ** 2
        super().__init__(np.minimum(1.0 - f[1:] / f[:-1], max_beta))


class TrainedBetasVP(DiscreteVP):
    """Discrete VP from a given β table, one β per training timestep (as diffusers' ``trained_betas``)."""

    name = "trained-betas"

    def __init__(self, betas: list[float] | None = None) -> None:
        if not betas:
            raise ValueError("schedule 'trained-betas' needs betas: one β per training timestep")
        super().__init__(np.asarray(betas, dtype=np.float64))


class _Continuous(NoiseSchedule):
    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)


class CosineVP(_Continuous):
    """Cosine VP schedule alpha = cos(πt/2), sigma = sin(πt/2) (Nichol & Dhariwal 2021 form, s = 0)."""

    name = "cosine"

    def sigma_of_t(self, t):
        return np.tan(0.5 * np.pi * np.asarray(t, dtype=np.float64))

    def t_of_sigma(self, sigma):
        return 2.0 / np.pi * np.arctan(np.asarray(sigma, dtype=np.float64))

    def coef(self, t):
        a = 0.5 * np.pi * np.asarray(t, dtype=np.float64)
        return Coef(np.cos(a), np.sin(a), -0.5 * np.pi * np.sin(a), 0.5 * np.pi * np.cos(a))


class VE(_Continuous):
    """Variance-exploding schedule sigma(t) = σ_min (σ_max/σ_min)^t, t in [0, 1] (Song et al. 2021)."""

    name = "ve"

    def sigma_of_t(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** np.asarray(t, dtype=np.float64)

    def t_of_sigma(self, sigma):
        return np.log(np.asarray(sigma, dtype=np.float64) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def coef(self, t):
        s = self.sigma_of_t(t)
        return Coef(np.ones_like(s), s, np.zeros_like(s), s * math.log(self.sigma_max / self.sigma_min))


class EDM(_Continuous):
    """EDM schedule sigma(t) = t, alpha = 1 (Karras et al. 2022)."""

    name = "edm"

    def sigma_of_t(self, t):
        return np.asarray(t, dtype=np.float64)

    def t_of_sigma(self, sigma):
        return np.asarray(sigma, dtype=np.float64)

    def coef(self, t):
        t = np.asarray(t, dtype=np.float64)
        return Coef(np.ones_like(t), t, np.zeros_like(t), np.ones_like(t))


class RectifiedFlow(_Continuous):
    """Rectified flow x_s = (1 - s) x0 + s eps (Liu et al. 2023; Lipman et al. 2023), optional time shift.

    ``shift`` k ≠ 1 warps the schedule's own time t into the flow time s = k t / (1 + (k - 1) t)
    (Esser et al. 2024, SD3), so uniform-time step schedulers crowd steps at high noise as diffusers'
    ``FlowMatchEulerDiscreteScheduler(shift=k)`` does. The velocity a flow network predicts is
    dx/ds, so ``coef`` gives derivatives with respect to s, whatever the shift.
    """

    name = "flow"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, shift: float = 1.0) -> None:
        super().__init__(sigma_min, sigma_max)
        if not shift > 0:
            raise ValueError(f"flow shift must be positive, got {shift}")
        self.shift = float(shift)

    def flow_time(self, t):
        """s(t): the flow time (noise fraction) at schedule time t."""
        t = np.asarray(t, dtype=np.float64)
        return t if self.shift == 1.0 else self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def sigma_of_t(self, t):
        s = self.flow_time(t)
        return s / (1.0 - s)

    def t_of_sigma(self, sigma):
        sigma = np.asarray(sigma, dtype=np.float64)
        s = sigma / (1.0 + sigma)
        return s if self.shift == 1.0 else s / (self.shift - (self.shift - 1.0) * s)

    def coef(self, t):
        s = self.flow_time(t)
        return Coef(1.0 - s, s, -np.ones_like(s), np.ones_like(s))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **({"shift": self.shift} if self.shift != 1.0 else {})}


SCHEDULES: dict[str, type[NoiseSchedule]] = {
    cls.name: cls for cls in (LinearVP, ScaledLinearVP, SquaredCosVP, CosineVP, VE, EDM, RectifiedFlow)
}
# Schedules without a default form (they need their table): buildable by name, not iterated by the kit.
TABLE_SCHEDULES: dict[str, type[NoiseSchedule]] = {TrainedBetasVP.name: TrainedBetasVP}


def make_schedule(name: str, **options: Any) -> NoiseSchedule:
    """Build a noise schedule by name: linear, scaled-linear, squaredcos, trained-betas, cosine, ve, edm, flow."""
    try:
        cls = {**SCHEDULES, **TABLE_SCHEDULES}[name]
    except KeyError:
        raise ValueError(f"unknown noise schedule {name!r}; available: {', '.join([*SCHEDULES, *TABLE_SCHEDULES])}"
                         ) from None
    return cls(**options)


# One line per schedule option ('diffbench plugins python' prints them; docs/models.md maps checkpoints to them).
SCHEDULE_OPTION_HELP: dict[str, str] = {
    "num_steps": "training timesteps T: the β table has T entries, t = 0 .. T-1",
    "beta_start": "β at t = 0",
    "beta_end": "β at t = T-1",
    "s": "offset s of the cosine ᾱ (Nichol & Dhariwal 2021)",
    "max_beta": "cap on each β",
    "betas": "the β table as trained, one entry per timestep t = 0 .. len-1 (a (T+1)-entry table keeps "
             "index = the training code's t)",
    "sigma_min": "smallest σ the model was trained on",
    "sigma_max": "largest σ the model was trained on",
    "shift": "time shift k of a flow schedule (SD3): s = k t / (1 + (k - 1) t)",
}


def schedule_options(name: str) -> dict[str, tuple[Any, Any]]:
    """Schedule ``name``'s options: option → (annotated type, default)."""
    cls = {**SCHEDULES, **TABLE_SCHEDULES}.get(name)
    if cls is None:
        raise ValueError(f"unknown noise schedule {name!r}; available: {', '.join([*SCHEDULES, *TABLE_SCHEDULES])}")
    import inspect
    import typing

    hints = typing.get_type_hints(cls.__init__)
    return {p.name: (hints.get(p.name, Any), p.default) for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self"}


def _fits(value: Any, tp: Any) -> bool:
    import typing

    if tp is Any:
        return True
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typing.get_origin(tp) is list:
        return isinstance(value, list) and all(_fits(v, args[0] if args else Any) for v in value)
    return isinstance(value, tp) if isinstance(tp, type) else True


def check_schedule_options(name: str, options: dict[str, Any]) -> None:
    """One-line ValueError for an unknown option name (listing the allowed ones) or a value of the wrong type."""
    allowed = schedule_options(name)
    for key, value in options.items():
        if key not in allowed:
            raise ValueError(f"schedule {name!r} has no option {key!r}; allowed: {', '.join(allowed) or 'none'}")
        tp = allowed[key][0]
        if not _fits(value, tp):
            from diffbench.text import type_name

            raise ValueError(f"schedule {name!r} option {key!r} must be {type_name(tp)}, got {value!r}")


def _json_type(tp: Any) -> dict[str, Any]:
    import typing

    if tp is type(None):
        return {"type": "null"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if typing.get_origin(tp) is list:
        args = typing.get_args(tp)
        return {"type": "array", **({"items": _json_type(args[0])} if args else {})}
    args = typing.get_args(tp)
    if args:
        return {"anyOf": [_json_type(a) for a in args]}
    return {}


def schedule_options_json_schema() -> dict[str, Any]:
    """JSON Schema of a ``schedule_options`` block: the options of one of the schedules, no others."""
    return {"anyOf": [{"title": f"{name} schedule options", "type": "object", "additionalProperties": False,
                       "properties": {k: {**_json_type(tp), "default": default,
                                          "description": SCHEDULE_OPTION_HELP.get(k, "")}
                                      for k, (tp, default) in schedule_options(name).items()}}
                      for name in (*SCHEDULES, *TABLE_SCHEDULES)]}
