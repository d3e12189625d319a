"""Conformance kit for diffbench components (modelled on scikit-learn's ``check_estimator``).

``check_sampler``, ``check_scheduler`` and ``check_target`` run every check on one component and
raise ``CheckFailure`` listing what failed; ``parametrize_with_checks`` turns components into pytest
cases with ids such as ``sampler[heun]-check_order`` (select with ``-k``), with expected failures
declared as ``{check name or id: reason}`` (strict xfail). Samplers are checked against truth: the
exact denoiser of a Gaussian mixture and its float64 reference ODE solution.
"""
from __future__ import annotations

import difflib
import importlib.metadata as md
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from diffbench.denoiser import DiffusionModel, NetworkCounter, SigmaDenoiser
from diffbench.devices import one_thread
from diffbench.models.gmm import gmm
from diffbench.noise import EDM, SCHEDULES, Coef, NoiseSchedule
from diffbench.registry import (ENTRY_POINT_GROUP, Component, PluginError, Registry, default_registry,
                                normalize_distribution)
from diffbench.sampling import resolve_options
from diffbench.samplers import noise_draws
from diffbench.schedulers import karras, materialize
from diffbench.seeding import StepNoise, initial_noise

KIT_KINDS = ("sampler", "scheduler", "target")

# The analytic problem samplers are checked on, and the grid of the order check: Karras ρ = 7 from
# σ = 80 to 0.1 without the trailing 0, where every built-in shows its asymptotic slope on this mixture.
GMM = {"dim": 2, "components": 3, "seed": 0, "schedule": "edm"}
BATCH = 8
SEED = 0
ORDER_STEPS = (64, 128, 256)
ORDER_SIGMAS = (80.0, 0.1)
ORDER_TOLERANCE = 0.5  # the measured slope must round to the declared order
CONVERGENCE_TOLERANCE = 0.05  # RMS error at the finest grid; the mixture's data have unit scale
SCHEDULER_STEPS = (1, 2, 3, 10, 50)


class CheckFailure(AssertionError):
    """A component failed a conformance check; the message names the check and says why."""


class CheckSkipped(Exception):
    """A check does not apply to this component (e.g. the order of a sampler that declares none)."""


@dataclass(frozen=True)
class Check:
    """One check bound to one component; call it to run (pytest skips where it does not apply)."""

    component: Component
    name: str
    fn: Callable[..., None] = field(repr=False)
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.component.kind}[{self.component.name}]-{self.name}"

    def run(self) -> None:
        """Run the check; raises CheckFailure or CheckSkipped."""
        with one_thread():
            try:
                self.fn(self.component, **self.settings)
            except (CheckFailure, CheckSkipped) as exc:
                raise type(exc)(f"{self.name}: {exc}") from None
            except Exception as exc:
                raise CheckFailure(f"{self.name}: {self.component.kind} {self.component.name!r} raised "
                                   f"{type(exc).__name__}: {exc}") from exc

    def __call__(self) -> None:
        try:
            self.run()
        except CheckSkipped as exc:
            import pytest

            pytest.skip(str(exc))


@dataclass(frozen=True)
class CheckResult:
    id: str
    status: str  # passed, failed, skipped, xfailed (expected failure), xpassed (expected failure passed)
    message: str = ""


def _require(condition: bool, why: str) -> None:
    if not condition:
        raise CheckFailure(why)


def _fmt(options: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in options.items()) + "}"


# --- samplers -----------------------------------------------------------------------------

# The small grids every configuration runs on (steps, σ_min; None: Karras from 80 to 0.1, then 0).
GRIDS = ((1, None), (2, None), (5, None), (10, None), (1, ORDER_SIGMAS[1]), (5, ORDER_SIGMAS[1]))

Options = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]  # one option set or several


@dataclass
class _Run:
    out: Tensor
    x: Tensor  # the input, after the run
    x_before: Tensor  # a copy of the input taken before the run
    calls: list[tuple[Any, int]]  # (σ as passed, batch rows) per denoiser call
    last_denoised: Tensor | None
    nfe: float
    noise_given: list[tuple[int, Tensor, Tensor]]  # (k, tensor handed out by noise(k), its copy at the time)


class _Recorder:
    """The sampler's denoiser: an exact GMM SigmaDenoiser that records every call."""

    def __init__(self, inner: SigmaDenoiser) -> None:
        self.inner, self.calls, self.last = inner, [], None

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        self.calls.append((sigma, x.shape[0]))
        self.last = self.inner(x, sigma)
        return self.last


class _RecordingNoise:
    """StepNoise that keeps a copy of each batch it hands out, to detect in-place changes."""

    def __init__(self, noise: StepNoise) -> None:
        self.noise, self.given = noise, []

    def __call__(self, k: int) -> Tensor:
        out = self.noise(k)
        self.given.append((k, out, out.clone()))
        return out


def _model(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64) -> DiffusionModel:
    return gmm(**GMM).to(device, dtype)


def _grid(steps: int, sigma_min: float | None = None, *, sigma_max: float = ORDER_SIGMAS[0]) -> Tensor:
    """Karras grid from σ_max: ending at 0, or at ``sigma_min`` > 0 when given (without the 0)."""
    if sigma_min is None:
        return karras(EDM(), steps, sigma_min=ORDER_SIGMAS[1], sigma_max=sigma_max)
    return karras(EDM(), steps + 1, sigma_min=sigma_min, sigma_max=sigma_max)[:-1]


def _describe(sigmas: Tensor) -> str:
    end = "σ = 0" if float(sigmas[-1]) == 0.0 else f"σ = {float(sigmas[-1]):g}"
    return f"{len(sigmas) - 1} Karras steps from σ = {float(sigmas[0]):g} to {end}"


def _where(sigmas: Tensor, options: Mapping[str, Any]) -> str:
    return f"{_describe(sigmas)}, options {_fmt(options)}"


def _run(comp: Component, options: Mapping[str, Any], sigmas: Tensor, *, indices: Iterable[int] = range(BATCH),
         device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64, seed: int = SEED) -> _Run:
    """Sample from the kit's GMM with per-sample seeded noise, as diffbench.sample does.

    An exception, a non-Tensor or a non-finite output is reported here, as itself, naming the grid
    and options, before any check compares outputs.
    """
    model = _model(device, dtype)
    indices = list(indices)
    counter = NetworkCounter(len(indices), model.device)
    den = _Recorder(SigmaDenoiser(model, counter=counter))
    x = initial_noise(seed, indices, model.shape, device=model.device, dtype=dtype) * float(sigmas[0])
    x_before = x.clone()
    draws = noise_draws(comp.meta, sigmas, options)  # the sampler's noise(k) bank: steps × noise_per_step
    noise = _RecordingNoise(StepNoise(seed, indices, model.shape, draws, device=model.device, dtype=dtype))
    where = _where(sigmas, options)
    try:
        with torch.inference_mode():
            out = comp.obj(den, x, sigmas, noise=noise, **options)
    except Exception as exc:
        raise CheckFailure(f"{comp.kind} {comp.name!r} raised {type(exc).__name__}: {exc} ({where})") from exc
    _require(isinstance(out, Tensor), f"returned {type(out).__name__}, not a Tensor ({where})")
    bad = int((~torch.isfinite(out)).sum()) if out.is_floating_point() else 0
    _require(bad == 0, f"non-finite output: {bad} of {out.numel()} values are NaN or infinite ({where})")
    return _Run(out, x, x_before, den.calls, den.last, counter.nfe, noise.given)


def _stochastic(comp: Component, options: Mapping[str, Any]) -> bool | None:
    declared = comp.meta.get("stochastic")
    return None if declared is None else bool(declared(**options))


def _option_sets(options: Options) -> list[dict[str, Any]]:
    """The option sets given to the kit: one mapping, a sequence of them, or none (the defaults)."""
    if options is None or isinstance(options, Mapping):
        return [dict(options or {})]
    sets = [dict(o) for o in options]
    return sets or [{}]


def _order_options(comp: Component, options: Options, order_options: Mapping[str, Any] | None
                   ) -> dict[str, Any] | None:
    """The deterministic, full-order configuration the order check uses; None if there is none.

    Precedence: the kit's ``order_options``, then the sampler's ``order_options`` meta, then two
    conventions: ``lower_order_final`` is turned off, and when the options are stochastic each
    numeric option in turn is set to 0 until ``stochastic(**options)`` says False (η, churn).
    """
    explicit = {**comp.meta.get("order_options", {}), **(order_options or {})}
    opts = resolve_options(comp, {**_option_sets(options)[0], **explicit})
    if "lower_order_final" in comp.options and "lower_order_final" not in explicit:
        opts["lower_order_final"] = False
    if not _stochastic(comp, opts):
        return opts
    for key, value in opts.items():
        if key in explicit or isinstance(value, bool) or not isinstance(value, (int, float)) or value == 0:
            continue
        trial = {**opts, key: type(value)(0)}
        if not _stochastic(comp, trial):
            return trial
    return None


def _stochastic_options(comp: Component, options: Options) -> dict[str, Any] | None:
    """The stochastic configuration: the first option set with the declared ``stochastic_options``."""
    opts = resolve_options(comp, {**_option_sets(options)[0], **comp.meta.get("stochastic_options", {})})
    return opts if _stochastic(comp, opts) else None


def _configs(comp: Component, options: Options, order_options: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Every configuration the kit runs: each option set given (default: the defaults), the deterministic
    full-order one (the order check's) and the stochastic one (``stochastic_options``), without repeats."""
    out: list[dict[str, Any]] = []
    candidates = [resolve_options(comp, s) for s in _option_sets(options)]
    candidates += [_order_options(comp, options, order_options), _stochastic_options(comp, options)]
    for opts in candidates:
        if opts is not None and opts not in out:
            out.append(opts)
    return out


_REFERENCE: dict[tuple, Tensor] = {}
_ERRORS: dict[tuple, tuple[Any, list[float]]] = {}  # keyed by id(sampler): the value keeps it alive


def _reference() -> Tensor:
    """Exact ODE solution from σ = 80 to 0.1 for the kit's starting noise (cached per process)."""
    key = (tuple(GMM.items()), BATCH, SEED, ORDER_SIGMAS)
    if key not in _REFERENCE:
        model = _model()
        x = initial_noise(SEED, range(BATCH), model.shape, dtype=torch.float64) * ORDER_SIGMAS[0]
        _REFERENCE[key] = model.analytic.ode_solve(x, *ORDER_SIGMAS)
    return _REFERENCE[key]


def _errors(comp: Component, options: dict[str, Any]) -> list[float]:
    """RMS error against the exact solution at each of ORDER_STEPS (cached per sampler and options)."""
    key = (id(comp.obj), repr(sorted(options.items())), ORDER_STEPS)
    if key not in _ERRORS:
        ref = _reference()
        _ERRORS[key] = (comp.obj, [float((_run(comp, options, _grid(n, ORDER_SIGMAS[1])).out - ref)
                                         .square().mean().sqrt()) for n in ORDER_STEPS])
    return _ERRORS[key][1]


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.to(torch.float64) - b.to(torch.float64)).abs().max())


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def check_declarations(comp: Component, options: Options = None, order_options=None) -> None:
    """nfe(σ, **options) is an int and stochastic(**options) a bool in every configuration; a declared order
    has a deterministic configuration; options that make the sampler stochastic are declared."""
    for opts in _configs(comp, options, order_options):
        for sigmas in (_grid(5), _grid(5, ORDER_SIGMAS[1])):
            n = comp.meta["nfe"](sigmas, **opts)
            _require(isinstance(n, Integral) and not isinstance(n, bool) and n >= 0,
                     f"nfe(sigmas, **options) returned {n!r}; declare a non-negative int ({_where(sigmas, opts)})")
        if "stochastic" in comp.meta:
            s = comp.meta["stochastic"](**opts)
            _require(_is_bool(s), f"stochastic(**options) returned {s!r}; declare a bool (options {_fmt(opts)})")
    order = comp.meta.get("order")
    if order is not None:
        _require(_order_options(comp, options, order_options) is not None,
                 f"declares order {order} but is stochastic in every configuration the kit tried; "
                 "declare order_options= with the deterministic configuration")
    declared = comp.meta.get("stochastic_options")
    if declared is not None:
        _require(_stochastic_options(comp, options) is not None,
                 f"declares stochastic_options={_fmt(declared)} but stochastic(**options) is False with them")
    elif "stochastic" in comp.meta and not _stochastic(comp, resolve_options(comp, _option_sets(options)[0])):
        for key, value in comp.options.items():  # a numeric option that turns noise on, e.g. η = 1
            if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                    _stochastic(comp, {**comp.options, key: type(value)(1)}):
                raise CheckFailure(f"stochastic({key}={type(value)(1)!r}) is True but the sampler declares no "
                                   f"stochastic_options; declare stochastic_options={{{key!r}: ...}} so the kit "
                                   "tests its stochastic path")


def check_denoiser_calls(comp: Component, options: Options = None, order_options=None) -> None:
    """Every call passes the whole batch and σ as a finite positive Python float (no device sync)."""
    for opts in _configs(comp, options, order_options):
        sigmas = _grid(5)
        run = _run(comp, opts, sigmas)
        for k, (sigma, rows) in enumerate(run.calls):
            _require(isinstance(sigma, float), f"call {k} passed σ as {type(sigma).__name__}, not float: σ lives "
                     "on the host (iterate over sigmas.tolist()); a tensor σ costs a device sync per call "
                     f"({_where(sigmas, opts)})")
            _require(0.0 < sigma < math.inf, f"call {k} evaluated the denoiser at σ = {sigma!r} ({_where(sigmas, opts)})")
            _require(rows == BATCH, f"call {k} passed {rows} rows for a batch of {BATCH} ({_where(sigmas, opts)})")


def check_determinism(comp: Component, options: Options = None, order_options=None) -> None:
    """Two runs with the same seed give identical samples, in every configuration (the stochastic one too)."""
    sigmas = _grid(10)
    for opts in _configs(comp, options, order_options):
        a, b = _run(comp, opts, sigmas).out, _run(comp, opts, sigmas).out
        _require(torch.equal(a, b), f"two runs with seed {SEED} differ by up to {_max_diff(a, b):.3g} "
                 f"({_where(sigmas, opts)})")


def check_batch_invariance(comp: Component, options: Options = None, order_options=None) -> None:
    """Sample i's result does not depend on which other samples share its batch (every configuration)."""
    sigmas = _grid(10)
    subset = [5, 2]
    for opts in _configs(comp, options, order_options):
        full = _run(comp, opts, sigmas).out
        part = _run(comp, opts, sigmas, indices=subset).out
        for row, i in enumerate(subset):
            diff = _max_diff(part[row], full[i])
            _require(diff <= 1e-9 * (1.0 + float(full[i].abs().max())),
                     f"sample {i} differs by {diff:.3g} between a batch of {BATCH} and the batch {subset}: use only "
                     f"noise(k) for randomness (it is per sample) and no statistics across the batch "
                     f"({_where(sigmas, opts)})")


def check_noise(comp: Component, options: Options = None, order_options=None) -> None:
    """noise(k) is the only randomness, k is a step index, and noise is drawn exactly when
    stochastic(**options) says so (and then changes the samples with the seed)."""
    sigmas = _grid(10)
    for opts in _configs(comp, options, order_options):
        where = _where(sigmas, opts)
        runs = []
        for global_seed in (1, 2):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(global_seed)
                runs.append(_run(comp, opts, sigmas))
        a, b = runs
        _require(torch.equal(a.out, b.out), f"the samples depend on torch's global random state (up to "
                 f"{_max_diff(a.out, b.out):.3g} between two global seeds): draw randomness only through noise(k) "
                 f"({where})")
        steps = sorted({k for k, _, _ in a.noise_given})
        declared = _stochastic(comp, opts)
        if declared is not None:
            _require(not declared or steps, f"stochastic(**options) is True but the sampler never called noise(k): "
                     f"draw the noise through noise(k), or declare stochastic False for these options ({where})")
            _require(declared or not steps, f"called noise(k) at steps {steps} although stochastic(**options) is "
                     f"False: the runner draws the noise bank only for stochastic options; declare it ({where})")
        if steps:
            other = _run(comp, opts, sigmas, seed=SEED + 1).out
            _require(not torch.equal(other, _run(comp, opts, sigmas).out),
                     f"called noise(k) but the samples do not change with the seed of the noise ({where})")


def check_nfe(comp: Component, options: Options = None, order_options=None) -> None:
    """Counted network evaluations per sample equal the declared nfe(sigmas, **options) on every grid."""
    for opts in _configs(comp, options, order_options):
        for sigmas in (_grid(*g) for g in GRIDS):
            counted, declared = _run(comp, opts, sigmas).nfe, comp.meta["nfe"](sigmas, **opts)
            _require(counted == declared, f"counted {counted:g} network evaluations per sample, declared "
                     f"{declared} ({_where(sigmas, opts)})")


def check_dtype_device(comp: Component, options: Options = None, order_options=None) -> None:
    """The output keeps the input's shape, dtype and device (CUDA too when available)."""
    cases = [("cpu", torch.float32), ("cpu", torch.float64)]
    if torch.cuda.is_available():
        cases.append(("cuda", torch.float32))
    sigmas = _grid(5)
    for opts in _configs(comp, options, order_options):
        for device, dtype in cases:
            run = _run(comp, opts, sigmas, device=device, dtype=dtype)
            got, want = (run.out.shape, run.out.dtype, run.out.device), (run.x.shape, run.x.dtype, run.x.device)
            _require(got == want, "input (shape, dtype, device) {} came back as {} ({})".format(
                *(f"({tuple(s)}, {str(t).replace('torch.', '')}, {d})" for s, t, d in (want, got)),
                _where(sigmas, opts)))


def check_inputs_not_mutated(comp: Component, options: Options = None, order_options=None) -> None:
    """x, sigmas and the step noise the sampler is handed are left unchanged, on every grid (1 step too)."""
    for opts in _configs(comp, options, order_options):
        for sigmas in (_grid(*g) for g in GRIDS):
            where = _where(sigmas, opts)
            sigmas_before = sigmas.clone()
            run = _run(comp, opts, sigmas)
            _require(torch.equal(run.x, run.x_before),
                     f"modified its input x in place (max change {_max_diff(run.x, run.x_before):.3g}; {where})")
            _require(torch.equal(sigmas, sigmas_before), f"modified its input sigmas in place ({where})")
            for k, given, copy in run.noise_given:
                _require(torch.equal(given, copy), f"modified the tensor returned by noise({k}) in place; it is a "
                         f"view of the per-sample noise bank ({where})")


def _check_ends_denoised(comp: Component, opts: dict[str, Any], sigmas: Tensor) -> None:
    run = _run(comp, opts, sigmas)
    where = _where(sigmas, opts)
    if float(sigmas[-1]) == 0.0:
        _require(run.last_denoised is not None, f"never called the denoiser ({where})")
        if not comp.meta.get("final_denoised", True) and len(sigmas) > 2:  # declared: a multistep step into 0
            _require(bool(torch.isfinite(run.out).all()), f"non-finite output ({where})")
            return
        diff = _max_diff(run.out, run.last_denoised)
        _require(diff <= 1e-9 * (1.0 + float(run.last_denoised.abs().max())),
                 f"the step into σ = 0 must return the denoised point D(x, σ) of the last call; the output "
                 f"differs from it by {diff:.3g} ({where})")


def check_one_step(comp: Component, options: Options = None, order_options=None) -> None:
    """One step works: finite, and one step into σ = 0 returns D(x, σ_max)."""
    for opts in _configs(comp, options, order_options):
        for sigmas in (_grid(1), _grid(1, ORDER_SIGMAS[1])):
            _check_ends_denoised(comp, opts, sigmas)


def check_final_sigma_zero(comp: Component, options: Options = None, order_options=None) -> None:
    """Grids ending at σ = 0 work: finite output, and the last step returns the denoised point."""
    for opts in _configs(comp, options, order_options):
        for steps in (2, 5, 10):
            _check_ends_denoised(comp, opts, _grid(steps))


def _deterministic(comp: Component, options, order_options) -> dict[str, Any]:
    det = _order_options(comp, options, order_options)
    if det is None:
        raise CheckSkipped(f"{comp.name!r} is stochastic in every configuration the kit tried; "
                           "there is no ODE solution to compare with")
    return det


def _errors_text(errors: list[float]) -> str:
    return (f"RMS errors {', '.join(f'{e:.3g}' for e in errors)} at {', '.join(map(str, ORDER_STEPS))} steps "
            f"against the exact ODE solution, Karras σ {ORDER_SIGMAS[0]:g} → {ORDER_SIGMAS[1]:g}")


def check_convergence(comp: Component, options: Options = None, order_options=None) -> None:
    """The deterministic configuration converges to the exact ODE solution on the analytic GMM."""
    opts = _deterministic(comp, options, order_options)
    errors = _errors(comp, opts)
    why = f"{_errors_text(errors)}; options {_fmt(opts)}"
    _require(all(math.isfinite(e) for e in errors), f"non-finite error ({why})")
    shrinking = all(b < a / 1.5 or b < 1e-10 for a, b in zip(errors, errors[1:]))
    _require(shrinking, f"the error does not shrink as steps double ({why})")
    _require(errors[-1] <= CONVERGENCE_TOLERANCE,
             f"error {errors[-1]:.3g} at {ORDER_STEPS[-1]} steps exceeds {CONVERGENCE_TOLERANCE} ({why})")


def measured_order(comp: Component, options: Options = None, order_options=None) -> float:
    """Least-squares slope of log error against log steps over ORDER_STEPS (the kit's order estimate)."""
    errors = _errors(comp, _deterministic(comp, options, order_options))
    return float(-np.polyfit(np.log(ORDER_STEPS), np.log(errors), 1)[0])


def check_order(comp: Component, options: Options = None, order_options=None) -> None:
    """The measured convergence slope of the deterministic configuration rounds to the declared order."""
    order = comp.meta.get("order")
    if order is None:
        raise CheckSkipped(f"{comp.name!r} declares no order")
    opts = _deterministic(comp, options, order_options)
    slope = measured_order(comp, options, order_options)
    _require(abs(slope - order) < ORDER_TOLERANCE,
             f"measured slope {slope:.2f}, declared order {order} ({_errors_text(_errors(comp, opts))}, "
             f"without the trailing 0; options {_fmt(opts)})")


SAMPLER_CHECKS: dict[str, Callable[..., None]] = {fn.__name__: fn for fn in (
    check_declarations, check_denoiser_calls, check_determinism, check_batch_invariance, check_noise, check_nfe,
    check_dtype_device, check_inputs_not_mutated, check_one_step, check_final_sigma_zero,
    check_convergence, check_order)}


# --- schedulers ---------------------------------------------------------------------------

def _noise_schedules() -> list[NoiseSchedule]:
    return [cls() for cls in SCHEDULES.values()]


def _supported(comp: Component) -> list[NoiseSchedule]:
    discrete_only = comp.meta.get("discrete_only", False)
    return [s for s in _noise_schedules() if s.discrete or not discrete_only]


def _sigma_lists(comp: Component, options: Mapping[str, Any] | None
                 ) -> Iterator[tuple[str, Tensor, int, NoiseSchedule]]:
    """(where, σ list, steps, noise schedule) for every supported schedule and SCHEDULER_STEPS."""
    for opts in (resolve_options(comp, s) for s in _option_sets(options)):
        yield from _sigma_lists_for(comp, opts)


def _sigma_lists_for(comp: Component, opts: dict[str, Any]) -> Iterator[tuple[str, Tensor, int, NoiseSchedule]]:
    for schedule in _supported(comp):
        for steps in SCHEDULER_STEPS:
            where = f"noise schedule {schedule.name!r}, {steps} steps, options {_fmt(opts)}"
            try:
                out = comp.obj(schedule, steps, **opts)
            except Exception as exc:
                raise CheckFailure(f"raised {type(exc).__name__}: {exc} ({where})") from exc
            _require(isinstance(out, (Tensor, np.ndarray)), f"returned {type(out).__name__}, not a Tensor ({where})")
            yield where, torch.as_tensor(out, dtype=torch.float64), steps, schedule


def check_scheduler_length(comp: Component, options: Options = None) -> None:
    """A 1-D σ list of steps + 1 values, for several step counts including 1."""
    for where, sigmas, steps, _ in _sigma_lists(comp, options):
        _require(sigmas.ndim == 1 and len(sigmas) == steps + 1,
                 f"returned shape {tuple(sigmas.shape)}, expected ({steps + 1},) ({where})")


def check_scheduler_ends_at_zero(comp: Component, options: Options = None) -> None:
    """The last σ is exactly 0."""
    for where, sigmas, _, _ in _sigma_lists(comp, options):
        _require(float(sigmas[-1]) == 0.0, f"last σ is {float(sigmas[-1])!r}, not 0 ({where})")


def check_scheduler_decreasing(comp: Component, options: Options = None) -> None:
    """σ is finite and strictly decreasing."""
    for where, sigmas, _, _ in _sigma_lists(comp, options):
        _require(bool(torch.isfinite(sigmas).all()), f"non-finite σ ({where})")
        bad = (sigmas[1:] >= sigmas[:-1]).nonzero()
        _require(len(bad) == 0, f"σ is not strictly decreasing at index {int(bad[0]) + 1 if len(bad) else 0}: "
                 f"{sigmas.tolist()[:12]} ({where})")


def check_scheduler_range(comp: Component, options: Options = None) -> None:
    """Every σ > 0 lies within the noise schedule's [σ_min, σ_max]."""
    for where, sigmas, _, schedule in _sigma_lists(comp, options):
        positive = sigmas[sigmas > 0]
        lo, hi = schedule.sigma_min * (1 - 1e-9), schedule.sigma_max * (1 + 1e-9)
        _require(len(positive) > 0 and float(positive.min()) >= lo and float(positive.max()) <= hi,
                 f"σ from {float(positive.max()) if len(positive) else 'none'} down to "
                 f"{float(positive.min()) if len(positive) else 'none'} leaves the model's range "
                 f"[{schedule.sigma_min:g}, {schedule.sigma_max:g}] ({where})")


def check_scheduler_schedules(comp: Component, options: Options = None) -> None:
    """diffbench's materialize accepts the grids on every supported noise schedule; a scheduler declared
    discrete_only refuses continuous ones with a ValueError."""
    for opts in (resolve_options(comp, s) for s in _option_sets(options)):
        for schedule in _supported(comp):
            where = f"noise schedule {schedule.name!r}, 10 steps, options {_fmt(opts)}"
            try:
                grid = materialize(comp.obj, schedule, 10, **opts)
            except ValueError as exc:
                raise CheckFailure(f"materialize rejected its grid: {exc} ({where})") from None
            _require(all(math.isfinite(t) for t in grid.timesteps),
                     f"σ maps to non-finite model times {grid.timesteps} ({where})")
        if not comp.meta.get("discrete_only", False):
            continue
        for schedule in _noise_schedules():
            if schedule.discrete:
                continue
            try:
                comp.obj(schedule, 10, **opts)
            except ValueError:
                continue
            raise CheckFailure(f"declared discrete_only but accepted the continuous noise schedule "
                               f"{schedule.name!r}; raise ValueError naming the problem (options {_fmt(opts)})")


SCHEDULER_CHECKS: dict[str, Callable[..., None]] = {fn.__name__: fn for fn in (
    check_scheduler_length, check_scheduler_ends_at_zero, check_scheduler_decreasing, check_scheduler_range,
    check_scheduler_schedules)}


# --- targets ------------------------------------------------------------------------------

def _coefs() -> Iterator[tuple[str, float, Coef]]:
    """Host-float coefficients at σ_min, the geometric middle and σ_max of every noise schedule."""
    for schedule in _noise_schedules():
        lo, hi = schedule.sigma_min, schedule.sigma_max
        for sigma in (lo, math.sqrt(lo * hi), hi):
            c = schedule.coef(schedule.t_of_sigma(sigma))
            yield f"noise schedule {schedule.name!r} at σ = {sigma:.4g}", sigma, Coef(
                *(float(v) for v in (c.alpha, c.sigma, c.dalpha, c.dsigma)))


def _target_cases(comp: Component, dtype=torch.float64) -> Iterator[tuple[str, float, Coef, Tensor, Tensor]]:
    """(where, σ, coef, x0, x_t) for each schedule point the target supports.

    A target may refuse a schedule whose coefficients are undefined (NaN derivatives) with a ValueError.
    """
    gen = torch.Generator().manual_seed(SEED)
    supported = 0
    for where, sigma, c in _coefs():
        x0 = torch.randn(BATCH, 3, generator=gen, dtype=torch.float64)
        x_t = c.alpha * x0 + c.sigma * torch.randn(BATCH, 3, generator=gen, dtype=torch.float64)
        undefined = any(math.isnan(v) for v in (c.dalpha, c.dsigma))
        try:
            out = comp.obj.from_x0(x0, x_t, c)
        except ValueError:
            if undefined:
                continue
            raise
        if undefined and not bool(torch.isfinite(out).all()):
            continue
        supported += 1
        yield where, sigma, c, x0.to(dtype), x_t.to(dtype)
    _require(supported > 0, "supports none of the built-in noise schedules")


def _round_off(dtype: torch.dtype, sigma: float, *tensors: Tensor) -> float:
    """Tolerance for 'exact up to rounding': a few ulps times the conditioning 1 + σ + 1/σ."""
    scale = 1.0 + max(float(t.abs().max()) for t in tensors)
    return 64 * torch.finfo(dtype).eps * (1.0 + sigma + 1.0 / sigma) * scale


def check_target_round_trip(comp: Component) -> None:
    """to_x0(from_x0(x0)) == x0 and from_x0(to_x0(out)) == out to rounding, under every noise schedule."""
    t = comp.obj
    for where, sigma, c, x0, x_t in _target_cases(comp):
        out = t.from_x0(x0, x_t, c)
        back = t.to_x0(out, x_t, c)
        tol = _round_off(torch.float64, sigma, x0, x_t, out)
        _require(_max_diff(back, x0) <= tol,
                 f"to_x0(from_x0(x0)) differs from x0 by {_max_diff(back, x0):.3g} > {tol:.2g} ({where})")
        raw = torch.randn_like(out)
        again = t.from_x0(t.to_x0(raw, x_t, c), x_t, c)
        _require(_max_diff(again, raw) <= tol,
                 f"from_x0(to_x0(out)) differs from out by {_max_diff(again, raw):.3g} > {tol:.2g} ({where})")


def check_target_affine(comp: Component) -> None:
    """to_x0 is affine in the network output (guidance may mix x0 estimates), from_x0 affine in x0."""
    t = comp.obj
    gen = torch.Generator().manual_seed(SEED + 1)
    for where, sigma, c, x0, x_t in _target_cases(comp):
        o1, o2 = (torch.randn(x0.shape, generator=gen, dtype=torch.float64) for _ in range(2))
        for a in (-1.5, 0.3, 3.0):
            for fn, name in ((t.to_x0, "to_x0"), (t.from_x0, "from_x0")):
                mixed = fn(a * o1 + (1 - a) * o2, x_t, c)
                affine = a * fn(o1, x_t, c) + (1 - a) * fn(o2, x_t, c)
                tol = 4 * _round_off(torch.float64, sigma, mixed, affine, x_t)
                _require(_max_diff(mixed, affine) <= tol, f"{name} is not affine: f(a u + (1-a) v) and "
                         f"a f(u) + (1-a) f(v) differ by {_max_diff(mixed, affine):.3g} for a = {a} ({where})")


def check_target_dtype(comp: Component) -> None:
    """float32 inputs with host-float coefficients give float32 outputs of the same shape."""
    t = comp.obj
    for where, _, c, x0, x_t in _target_cases(comp, torch.float32):
        for fn, name in ((t.to_x0, "to_x0"), (t.from_x0, "from_x0")):
            out = fn(x0, x_t, c)
            _require(out.dtype == torch.float32 and out.shape == x0.shape,
                     f"{name} turned float32 {tuple(x0.shape)} into {out.dtype} {tuple(out.shape)} ({where})")


TARGET_CHECKS: dict[str, Callable[..., None]] = {fn.__name__: fn for fn in (
    check_target_round_trip, check_target_affine, check_target_dtype)}

CHECKS: dict[str, dict[str, Callable[..., None]]] = {
    "sampler": SAMPLER_CHECKS, "scheduler": SCHEDULER_CHECKS, "target": TARGET_CHECKS}


# --- selecting components, generating and running checks ----------------------------------

class Selection(list):
    """The components ``components()`` chose, with what was asked for and the plugin errors that bear on it.

    ``parametrize_with_checks`` turns an empty selection, or one whose plugins failed to load or
    register, into a failing test that says why: an empty parameter set would pass with nothing checked.
    """

    def __init__(self, items: Iterable[Component], *, asked: str, errors: Sequence[PluginError] = (),
                 hint: str = "") -> None:
        super().__init__(items)
        self.asked, self.errors, self.hint = asked, list(errors), hint

    def problems(self) -> list[str]:
        """Why this selection cannot be trusted to have checked everything; empty when it can."""
        out = [f"plugin failed to load or register: {e}" for e in self.errors]
        if not self and not self.errors:  # the errors say why nothing was selected
            out.append(f"no components selected ({self.asked}){'; ' + self.hint if self.hint else ''}")
        return out


def _installed_distributions(registry: Registry) -> set[str]:
    """Distributions with a ``diffbench`` entry point or a registered component (loaded or not)."""
    names = {c.distribution for c in registry if c.distribution} | {e.distribution for e in registry.errors
                                                                   if e.distribution}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        if dist is not None:
            names.add(dist.metadata["Name"])
    return names


def _entry_point_groups(distribution: str) -> list[str] | None:
    """The entry-point groups an installed distribution declares; None when it is not installed."""
    try:
        dist = md.distribution(distribution)
    except md.PackageNotFoundError:
        return None
    return sorted({ep.group for ep in dist.entry_points})


def components(registry: Registry | None = None, *, kinds: Iterable[str] = KIT_KINDS,
               distribution: str | None = None, plugin: str | None = None) -> Selection:
    """The registry's components the kit can check, optionally only those of one distribution or plugin.

    Distribution names match as pip matches them (``My_Plugin`` selects ``my-plugin``); plugin names
    (the entry point's name) match exactly. The result also carries the load and registration
    errors of the plugins asked for (all plugins when no filter is given).
    """
    registry = registry or default_registry()
    kinds = tuple(kinds)
    want = normalize_distribution(distribution) if distribution is not None else None

    def of_dist(name: str | None) -> bool:
        return want is None or (name is not None and normalize_distribution(name) == want)

    chosen = [c for c in registry if c.kind in kinds and c.kind in CHECKS and of_dist(c.distribution)
              and (plugin is None or c.plugin == plugin)]
    errors = [e for e in registry.errors if of_dist(e.distribution) and (plugin is None or e.plugin == plugin)]
    asked = ", ".join([f"kinds {', '.join(kinds)}"] + ([f"distribution {distribution!r}"] if distribution else [])
                      + ([f"plugin {plugin!r}"] if plugin else []))
    hint = ""
    if distribution is not None and not chosen and not errors:
        installed = sorted(_installed_distributions(registry))
        groups = _entry_point_groups(distribution)
        if groups is not None and not any(normalize_distribution(n) == want for n in installed):
            hint = (f"distribution {distribution!r} is installed but declares no entry point in group "
                    f"{ENTRY_POINT_GROUP!r} (its entry-point groups: {', '.join(groups) or 'none'}); add "
                    f"[project.entry-points.{ENTRY_POINT_GROUP}] to its pyproject.toml and reinstall it")
        elif not any(normalize_distribution(n) == want for n in installed):
            close = difflib.get_close_matches(distribution, installed, n=1)
            hint = (f"no installed distribution is called {distribution!r} (names match ignoring case and "
                    f"'-', '_', '.'); installed: {', '.join(installed) or 'none'}"
                    + (f"; did you mean {close[0]!r}?" if close else ""))
        else:
            hint = f"distribution {distribution!r} registered no component of these kinds"
    elif plugin is not None and not chosen and not errors:
        plugins = sorted({c.plugin for c in registry})
        hint = f"no plugin is called {plugin!r}; plugins: {', '.join(plugins)}"
    return Selection(chosen, asked=asked, errors=errors, hint=hint)


def _label(comp: Component) -> str:
    return f"{comp.kind}[{comp.name}]"


def _resolve(item: Component | str, registry: Registry | None) -> Component:
    if isinstance(item, Component):
        return item
    if isinstance(item, str) and ":" in item:
        kind, name = item.split(":", 1)
        return (registry or default_registry()).get(kind, name)
    raise TypeError(f"expected a Component or 'kind:name', got {item!r}")


@dataclass(frozen=True)
class SelectionProblem:
    """A stand-in check for a selection that cannot be trusted: calling it fails with the reason."""

    id: str
    message: str
    name: str = "selection"

    def run(self) -> None:
        raise CheckFailure(self.message)

    def __call__(self) -> None:
        self.run()


def _problems(items: Any) -> list[str]:
    if isinstance(items, Selection):
        return items.problems()
    if isinstance(items, Registry):
        return components(items).problems()
    return []


def generate_checks(items: Iterable[Component | str] | Registry, *, options: Mapping[str, Options] | None = None,
                    order_options: Mapping[str, Mapping] | None = None,
                    registry: Registry | None = None) -> list[Check]:
    """Every check for every component; ``options`` / ``order_options`` keyed by 'kind[name]'.

    ``options`` gives one option set or a list of them per component; the kit runs each.
    """
    comps = components(items) if isinstance(items, Registry) else [_resolve(i, registry) for i in items]
    labels = {_label(c) for c in comps}
    for what, mapping in (("options", options), ("order_options", order_options)):
        unknown = sorted(set(mapping or {}) - labels)
        if unknown:
            raise ValueError(f"{what} for {unknown[0]!r}, which is not among the components checked; "
                             f"keys look like {sorted(labels)[:3]}")
    checks = []
    for comp in comps:
        if comp.kind not in CHECKS:
            raise ValueError(f"the kit has no checks for kind {comp.kind!r}; it checks {', '.join(CHECKS)}")
        settings: dict[str, Any] = {}
        if comp.kind in ("sampler", "scheduler"):
            sets = _option_sets((options or {}).get(_label(comp)))
            for s in sets:
                resolve_options(comp, s)  # an unknown option is an error here, not a failed check later
            settings["options"] = sets
        if comp.kind == "sampler":
            settings["order_options"] = (order_options or {}).get(_label(comp))
        checks += [Check(comp, name, fn, settings) for name, fn in CHECKS[comp.kind].items()]
    return checks


def _expected(checks: list[Check], expected_failures: Mapping[str, str] | None) -> dict[str, str]:
    """Check id → reason, from keys that are a check name (every component) or a full check id."""
    expected_failures = dict(expected_failures or {})
    names, ids = {c.name for c in checks}, {c.id for c in checks}
    unknown = sorted(set(expected_failures) - names - ids)
    if unknown:
        raise ValueError(f"expected failure {unknown[0]!r} names no check here; use a check name "
                         f"(e.g. 'check_order') or an id (e.g. {sorted(ids)[0]!r})" if ids else "no checks")
    out = {}
    for c in checks:
        reason = expected_failures.get(c.id, expected_failures.get(c.name))
        if reason is not None:
            out[c.id] = reason
    return out


def parametrize_with_checks(items: Iterable[Component | str] | Registry, *,
                            expected_failures: Mapping[str, str] | None = None,
                            options: Mapping[str, Options] | None = None,
                            order_options: Mapping[str, Mapping] | None = None,
                            registry: Registry | None = None):
    """A ``pytest.mark.parametrize`` over every check of every component, argument name ``check``.

    Ids read ``sampler[heun]-check_order``; expected failures become strict xfails. An empty
    selection, or plugins of the selection that failed to load or register, add a failing case
    (id ``selection-empty`` / ``selection-plugin-errors``) that shows why: never a silent pass.

        @parametrize_with_checks(components(distribution="my-dist"))
        def test_conformance(check):
            check()
    """
    import pytest

    items = items if isinstance(items, (Selection, Registry)) else list(items)
    checks = generate_checks(items, options=options, order_options=order_options, registry=registry)
    xfail = _expected(checks, expected_failures)
    params = [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, raises=CheckFailure, reason=xfail[c.id])]
                           if c.id in xfail else []) for c in checks]
    problems = _problems(items)
    if not checks and not problems:
        problems = ["no components selected (an empty list was given)"]
    errors = [p for p in problems if p.startswith("plugin failed")]
    if errors:
        params.append(pytest.param(SelectionProblem("selection-plugin-errors", "; ".join(errors)),
                                   id="selection-plugin-errors"))
    if len(errors) < len(problems) or (not checks and not errors):
        rest = [p for p in problems if p not in errors] or problems
        params.append(pytest.param(SelectionProblem("selection-empty", "; ".join(rest)), id="selection-empty"))
    return pytest.mark.parametrize("check", params)


def run_checks(checks: list[Check], expected_failures: Mapping[str, str] | None = None) -> list[CheckResult]:
    """Run ``checks``; raise CheckFailure listing unexpected failures and expected failures that passed.

    The raised CheckFailure carries every result as ``.results``.
    """
    xfail = _expected(checks, expected_failures)
    results = []
    for check in checks:
        try:
            check.run()
        except CheckSkipped as exc:
            results.append(CheckResult(check.id, "skipped", str(exc)))
        except CheckFailure as exc:
            results.append(CheckResult(check.id, "xfailed" if check.id in xfail else "failed", str(exc)))
        else:
            results.append(CheckResult(check.id, "xpassed" if check.id in xfail else "passed",
                                       f"{check.name}: expected to fail ({xfail[check.id]}) but passed"
                                       if check.id in xfail else ""))
    bad = [r for r in results if r.status in ("failed", "xpassed")]
    if bad:
        failure = CheckFailure(f"{len(bad)} of {len(results)} conformance checks failed:\n"
                               + "\n".join(f"  {r.id}: {r.message.split(': ', 1)[-1]}" for r in bad))
        failure.results = results
        raise failure
    return results


def component(kind: str, obj: Any, *, name: str | None = None, registry: Registry | None = None,
              **declarations: Any) -> Component:
    """A Component to check: a registered one (``obj`` its name), or ``obj`` validated as the registry would.

    ``declarations`` are the ``registry.add`` keywords (``nfe=``, ``order=``, ``stochastic=``, …);
    None values are left out.
    """
    if isinstance(obj, Component):
        return obj
    if isinstance(obj, str):
        return (registry or default_registry()).get(kind, obj)
    scratch = Registry()
    name = name or getattr(obj, "__name__", None) or getattr(obj, "name", None) or type(obj).__name__
    return scratch.add(kind, name, obj, **{k: v for k, v in declarations.items() if v is not None})


def check_sampler(sampler: str | Component | Callable, *, nfe: Callable | None = None, order: int | None = None,
                  stochastic: Callable | None = None, stochastic_options: Mapping[str, Any] | None = None,
                  options: Options = None, order_options: Mapping[str, Any] | None = None,
                  expected_failures: Mapping[str, str] | None = None,
                  registry: Registry | None = None) -> list[CheckResult]:
    """Run every sampler check on a registered sampler (by name) or a bare function with its declarations.

    ``options``: one option set or a list of them, each run besides the kit's own configurations.
    """
    comp = component("sampler", sampler, registry=registry, nfe=nfe, order=order, stochastic=stochastic,
                     stochastic_options=dict(stochastic_options) if stochastic_options is not None else None)
    label = _label(comp)
    checks = generate_checks([comp], options={label: options}, order_options={label: order_options}
                             if order_options is not None else None)
    return run_checks(checks, expected_failures)


def check_scheduler(scheduler: str | Component | Callable, *, discrete_only: bool | None = None,
                    options: Options = None, expected_failures: Mapping[str, str] | None = None,
                    registry: Registry | None = None) -> list[CheckResult]:
    """Run every scheduler check on a registered scheduler (by name) or a bare function."""
    comp = component("scheduler", scheduler, registry=registry, discrete_only=discrete_only)
    return run_checks(generate_checks([comp], options={_label(comp): options}), expected_failures)


def check_target(target: str | Component | Any, *, expected_failures: Mapping[str, str] | None = None,
                 registry: Registry | None = None) -> list[CheckResult]:
    """Run every target check on a registered target (by name) or an object with to_x0/from_x0."""
    comp = component("target", target, registry=registry)
    return run_checks(generate_checks([comp]), expected_failures)
