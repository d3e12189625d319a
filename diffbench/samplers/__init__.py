"""Built-in samplers. Each is ``fn(denoiser, x, sigmas, *, noise=None, **options) -> x``.

``SAMPLERS`` maps the registered name to the function and its declarations: the ODE order
when the options make it deterministic, whether given options make it stochastic, the
network evaluations per sample it makes for a σ list, and the options under which it is
stochastic (the conformance kit's stochastic run).

The helpers a sampler (built-in or a plugin's) should use are public here: ``steps_of``,
``to_d``, ``log_ratio``, ``ancestral_step``, ``churn``, ``require_noise``, ``num_steps``,
``ends_at_zero``, and the NFE declaration ``per_step``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from diffbench.samplers._common import (ancestral_step, churn, ends_at_zero, log_ratio, num_steps, require_noise,
                                        steps_of, to_d)
from diffbench.samplers.ancestral import ddim, ddpm, euler_ancestral
from diffbench.samplers.deis import deis
from diffbench.samplers.dpm_solver import dpm_solver_1, dpm_solver_2, dpm_solver_3
from diffbench.samplers.dpm_solver_pp import dpmpp_2m, dpmpp_2m_sde, dpmpp_2s, dpmpp_3m, dpmpp_3m_corrected
from diffbench.samplers.euler import euler, heun
from diffbench.samplers.lms import lms
from diffbench.samplers.pc import pc, pc_nfe, pc_noise_per_step
from diffbench.samplers.pndm import pndm, pndm_nfe
from diffbench.samplers.restart import restart, restart_nfe, restart_noise_per_step


__all__ = ["SAMPLERS", "SamplerInfo", "ancestral_step", "churn", "ends_at_zero", "log_ratio", "num_steps",
           "per_step", "require_noise", "steps_of", "to_d"]


def per_step(calls: int) -> Callable[..., int]:
    """Declared NFE for ``calls`` evaluations per step, one fewer on the step into σ = 0."""
    def nfe(sigmas, **_: Any) -> int:
        return calls * num_steps(sigmas) - (calls - 1) * ends_at_zero(sigmas)
    return nfe


def noise_draws(meta: dict[str, Any], sigmas, options: dict[str, Any]) -> int:
    """Size of the step-noise bank a sampler needs: steps × its ``noise_per_step(**options)`` declaration (1)."""
    per = meta.get("noise_per_step")
    return num_steps(sigmas) * (int(per(**options)) if callable(per) else 1)


def _never(**_: Any) -> bool:
    return False


def _when_positive(option: str) -> Callable[..., bool]:
    def stochastic(**options: Any) -> bool:
        return float(options.get(option, 0.0)) > 0.0
    return stochastic


@dataclass(frozen=True)
class SamplerInfo:
    fn: Callable[..., Any]
    order: int | None  # convergence order of the deterministic configuration
    nfe: Callable[..., int]
    stochastic: Callable[..., bool]
    stochastic_options: dict[str, Any] | None = None  # options that make it stochastic, when its defaults don't
    noise_per_step: Callable[..., int] | None = None  # noise(k) draws per step, when more than one
    final_denoised: bool = True  # the step into σ = 0 returns D(x, σ) (false: a multistep step down to 0)

    def declarations(self, name: str = "") -> dict[str, Any]:
        """The ``registry.add`` keywords (see diffbench.registry.DECLARATIONS)."""
        out = {"order": self.order, "nfe": self.nfe, "stochastic": self.stochastic,
               "option_help": option_help(self.fn, name)}
        if self.stochastic_options is not None:
            out["stochastic_options"] = self.stochastic_options
        if self.noise_per_step is not None:
            out["noise_per_step"] = self.noise_per_step
        if not self.final_denoised:
            out["final_denoised"] = False
        return out


SAMPLERS: dict[str, SamplerInfo] = {
    "ddpm": SamplerInfo(ddpm, None, per_step(1), lambda **_: True),
    "ddim": SamplerInfo(ddim, 1, per_step(1), _when_positive("eta"), {"eta": 1.0}),
    "euler": SamplerInfo(euler, 1, per_step(1), _when_positive("churn_amount"), {"churn_amount": 1.0}),
    "euler-ancestral": SamplerInfo(euler_ancestral, 1, per_step(1), _when_positive("eta")),
    "heun": SamplerInfo(heun, 2, per_step(2), _when_positive("churn_amount"), {"churn_amount": 1.0}),
    "dpm-solver-1": SamplerInfo(dpm_solver_1, 1, per_step(1), _never),
    "dpm-solver-2": SamplerInfo(dpm_solver_2, 2, per_step(2), _never),
    "dpm-solver-3": SamplerInfo(dpm_solver_3, 3, per_step(3), _never),
    "dpm-solver++-2s": SamplerInfo(dpmpp_2s, 2, per_step(2), _never),
    "dpm-solver++-2m": SamplerInfo(dpmpp_2m, 2, per_step(1), _never),
    "dpm-solver++-3m": SamplerInfo(dpmpp_3m, 2, per_step(1), _never),  # as published: see its docstring
    "dpm-solver++-3m-corrected": SamplerInfo(dpmpp_3m_corrected, 3, per_step(1), _never),
    "dpm-solver++-2m-sde": SamplerInfo(dpmpp_2m_sde, 2, per_step(1), _when_positive("eta")),
    "lms": SamplerInfo(lms, 4, per_step(1), _never, final_denoised=False),  # order=p converges at order p
    "deis": SamplerInfo(deis, 3, per_step(1), _never),  # the default order=3
    "pc": SamplerInfo(pc, None, pc_nfe, lambda **_: True, noise_per_step=pc_noise_per_step),
    # uniform-grid Adams-Bashforth weights: order 2 on Karras σ (measured)
    "pndm": SamplerInfo(pndm, 2, pndm_nfe, _never, final_denoised=False),
    "restart": SamplerInfo(restart, 2, restart_nfe, _when_positive("restart_times"),
                           noise_per_step=restart_noise_per_step),  # order: of Heun, with restart_times = 0
}


# One line per option ('diffbench plugins NAME' prints them): shared meanings, then per-sampler ones.
OPTION_HELP: dict[str, str] = {
    "eta": "noise scale η of each step: 0 deterministic, 1 the ancestral (DDPM-like) amount",
    "s_noise": "multiplies the fresh noise each step adds (EDM's S_noise)",
    "lower_order_final": "lower the order of the last steps: true, false or 'auto' (below 15 steps, diffusers' rule)",
    "churn_amount": "EDM stochastic churn S_churn (Karras et al. 2022, Alg. 2); 0: deterministic",
    "s_tmin": "churn only where σ ≥ s_tmin (EDM S_tmin)",
    "s_tmax": "churn only where σ ≤ s_tmax (EDM S_tmax); null: no upper bound",
    "solver_type": "second-order step form as diffusers names it: 'midpoint' (Lu et al.) or 'heun'",
}
SAMPLER_OPTION_HELP: dict[str, dict[str, str]] = {
    "ddpm": {"variance": "step variance: 'posterior' (β̃_t, Ho et al. eq. 7) or 'beta' (β_t)"},
    "deis": {"order": "polynomial order 1-3 of the ε extrapolation (tAB-DEIS)"},
    "lms": {"order": "linear multistep order: points of the Lagrange polynomial in σ"},
    "dpm-solver++-2s": {"r": "where the intermediate evaluation sits, as a fraction r of the step in λ"},
    "dpm-solver-2": {"r1": "intermediate point at λ_s + r1 h"},
    "dpm-solver-3": {"r1": "first intermediate point at λ_s + r1 h", "r2": "second intermediate point at λ_s + r2 h"},
    "pc": {"snr": "Langevin corrector signal-to-noise ratio r (Song et al. 2021)",
           "corrector_steps": "Langevin corrector steps per σ",
           "step_size": "corrector step rule: 'sigma' (per σ, batch-independent) or 'snr' (Song et al.'s, from norms)"},
    "pndm": {"prk_warmup": "start with 3 pseudo Runge-Kutta steps (diffusers' PNDM); false: PLMS from the start",
             "midpoint": "where Runge-Kutta half-steps evaluate: 'timestep' (t − ⌊δ/2⌋, diffusers), 'sigma' "
                         "(√(σσ')), 'auto' (the first on discrete models)"},
    "restart": {"t_min": "restart interval's low end: the grid σ nearest it", "t_max": "σ the restarts climb back to",
                "restart_points": "σ points of each restart segment, both ends included (the authors' N_restart: "
                                  "N_restart − 1 Heun steps)",
                "restart_times": "restarts at the interval (0: plain Heun)",
                "restart_gamma": "the authors' restart_gamma: each restart-segment step in [s_tmin, s_tmax] first "
                                 "raises σ to σ(1 + γ) with fresh noise"},
}


def option_help(fn: Callable[..., Any], name: str) -> dict[str, str]:
    """The help line of each keyword option of sampler ``fn`` (registered as ``name``) that has one."""
    import inspect

    params = [p.name for p in inspect.signature(fn).parameters.values()
              if p.kind is p.KEYWORD_ONLY and p.name not in ("noise", "cond")]
    table = {**OPTION_HELP, **SAMPLER_OPTION_HELP.get(name, {})}
    return {p: table[p] for p in params if p in table}
