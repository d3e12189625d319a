"""The conformance kit: every built-in passes it, and deliberately broken components fail it for the right reason."""
from __future__ import annotations

import inspect
import math
import re
import textwrap

import pytest
import torch

from diffbench import testing
from diffbench.registry import default_registry
from diffbench.samplers import per_step
from diffbench.samplers._common import steps_of, to_d
from diffbench.schedulers import karras
from diffbench.targets import EpsTarget

pytest_plugins = ["pytester"]

BUILTINS = testing.components(default_registry(), distribution="diffbench")


@testing.parametrize_with_checks(BUILTINS)
def test_builtins_conform(check):
    check()


def test_every_builtin_is_checked():
    reg = default_registry()
    checked = {(c.kind, c.name) for c in BUILTINS}
    for kind in testing.KIT_KINDS:
        builtin = {(kind, n) for n in reg.names(kind) if reg.get(kind, n).distribution == "diffbench"}
        assert builtin and builtin <= checked


# --- deliberately wrong samplers: each fails the check that names its fault ---------------------------

def _never(**_):
    return False


def heun_wrong_weights(denoiser, x, sigmas, *, noise=None):
    """Heun with the trapezoid weights 0.5/0.5 replaced by 0.25/0.75: consistent, but first order."""
    for _, s, sn in steps_of(sigmas):
        d = to_d(x, s, denoiser(x, s))
        x_euler = x + (sn - s) * d
        x = x_euler if sn == 0.0 else x + (sn - s) * (0.25 * d + 0.75 * to_d(x_euler, sn, denoiser(x_euler, sn)))
    return x


def heun_no_half(denoiser, x, sigmas, *, noise=None):
    """Heun without the 1/2 of the trapezoid rule: inconsistent, converges to nothing."""
    for _, s, sn in steps_of(sigmas):
        d = to_d(x, s, denoiser(x, s))
        x_euler = x + (sn - s) * d
        x = x_euler if sn == 0.0 else x + (sn - s) * (d + to_d(x_euler, sn, denoiser(x_euler, sn)))
    return x


def euler(denoiser, x, sigmas, *, noise=None):
    """Plain Euler, correct: the control for the broken variants below."""
    for _, s, sn in steps_of(sigmas):
        x = x + (sn - s) * to_d(x, s, denoiser(x, s))
    return x


def _failures(fn, **declared) -> dict[str, str]:
    """Check name → message of every failed check of sampler ``fn``."""
    declared = {"nfe": per_step(1), "order": 1, "stochastic": _never, **declared}
    with pytest.raises(testing.CheckFailure) as info:
        testing.check_sampler(fn, **declared)
    return {r.id.rsplit("-", 1)[1]: r.message for r in info.value.results if r.status == "failed"}


def test_correct_bare_sampler_passes():
    results = testing.check_sampler(euler, nfe=per_step(1), order=1, stochastic=_never)
    assert {r.status for r in results} == {"passed"}
    assert {r.id for r in results} == {f"sampler[euler]-{n}" for n in testing.SAMPLER_CHECKS}


def test_wrong_heun_coefficient_fails_the_order_check():
    failures = _failures(heun_wrong_weights, nfe=per_step(2), order=2)
    assert set(failures) == {"check_order"}
    slope = float(re.match(r"check_order: measured slope (\S+), declared order 2 \(RMS errors", failures["check_order"])[1])
    assert 0.8 < slope < 1.2  # the wrong weights leave a first-order method


def test_measured_order_of_wrong_heun_is_one():
    comp = testing._component("sampler", heun_wrong_weights, None, {"nfe": per_step(2), "order": 2, "stochastic": _never})
    assert math.isclose(testing.measured_order(comp), 1.0, abs_tol=0.2)


def test_inconsistent_heun_fails_convergence():
    failures = _failures(heun_no_half, nfe=per_step(2), order=2)
    assert "check_convergence" in failures and "does not shrink" in failures["check_convergence"]


def test_wrong_nfe_declaration_fails_check_nfe():
    failures = _failures(heun_wrong_weights, nfe=per_step(1), order=1)
    assert re.match(r"check_nfe: counted 3 network evaluations per sample, declared 2 \(2 Karras steps from σ = 80 to σ = 0", failures["check_nfe"])


def test_mutating_x_fails():
    def mutating(denoiser, x, sigmas, *, noise=None):
        for _, s, sn in steps_of(sigmas):
            x.add_((sn - s) * to_d(x, s, denoiser(x, s)))
        return x

    assert "modified its input x in place" in _failures(mutating)["check_inputs_not_mutated"]


def test_mutating_noise_fails():
    def ancestral(denoiser, x, sigmas, *, noise=None):
        for k, s, sn in steps_of(sigmas):
            x = denoiser(x, s) if sn == 0.0 else x + (sn - s) * to_d(x, s, denoiser(x, s)) + 0.0 * noise(k).mul_(2)
        return x

    assert "modified the tensor returned by noise()" in _failures(ancestral)["check_inputs_not_mutated"]


def test_global_rng_fails_determinism_and_batch_invariance():
    def global_rng(denoiser, x, sigmas, *, noise=None):
        for _, s, sn in steps_of(sigmas):
            x = x + (sn - s) * to_d(x, s, denoiser(x, s))
            if sn > 0:
                x = x + 1e-3 * sn * torch.randn_like(x)
        return x

    failures = _failures(global_rng, stochastic=lambda **_: True, order=None)
    assert failures["check_determinism"].startswith("check_determinism: two runs with seed 0 differ by up to")
    assert "between a batch of 8 and the batch [5, 2]" in failures["check_batch_invariance"]


def test_batch_statistics_fail_batch_invariance():
    def centred(denoiser, x, sigmas, *, noise=None):
        x = euler(denoiser, x, sigmas)
        return x - 0.1 * x.mean(0)

    assert "check_batch_invariance" in _failures(centred, order=None)


def test_tensor_sigma_fails_denoiser_calls():
    def tensor_sigma(denoiser, x, sigmas, *, noise=None):
        for k in range(len(sigmas) - 1):
            x = x + (sigmas[k + 1] - sigmas[k]) * (x - denoiser(x, sigmas[k])) / sigmas[k]
        return x

    assert "passed σ as Tensor, not float" in _failures(tensor_sigma)["check_denoiser_calls"]


def test_dtype_change_fails():
    def upcasting(denoiser, x, sigmas, *, noise=None):
        return euler(denoiser, x, sigmas).double()

    msg = _failures(upcasting)["check_dtype_device"]
    assert "input (shape, dtype, device) ((8, 2), float32, cpu) came back as ((8, 2), float64, cpu)" in msg


def test_missing_last_step_fails_final_sigma_zero():
    def stops_short(denoiser, x, sigmas, *, noise=None):
        return euler(denoiser, x, sigmas[:-1]) if float(sigmas[-1]) == 0.0 else euler(denoiser, x, sigmas)

    failures = _failures(stops_short, nfe=lambda sigmas, **_: len(sigmas) - 1 - (float(sigmas[-1]) == 0.0))
    assert "the step into σ = 0 must return the denoised point" in failures["check_final_sigma_zero"]
    assert "check_one_step" in failures


def test_order_without_deterministic_configuration_fails_declarations():
    failures = _failures(euler, stochastic=lambda **_: True)
    assert "declares order 1 but is stochastic in every configuration" in failures["check_declarations"]


def test_stochastic_option_is_zeroed_for_the_order_check():
    comp = default_registry().get("sampler", "euler-ancestral")
    assert comp.meta["stochastic"](**comp.options)
    assert testing._order_options(comp, {}, None) == {**comp.options, "eta": 0.0}
    multistep = default_registry().get("sampler", "dpm-solver++-3m")
    assert testing._order_options(multistep, {}, None)["lower_order_final"] is False
    assert testing._order_options(multistep, {}, {"lower_order_final": True})["lower_order_final"] is True


# --- schedulers and targets --------------------------------------------------------------------------

def _scheduler_failures(fn, **kw) -> dict[str, str]:
    with pytest.raises(testing.CheckFailure) as info:
        testing.check_scheduler(fn, **kw)
    return {r.id.rsplit("-", 1)[1]: r.message for r in info.value.results if r.status == "failed"}


def test_broken_schedulers_fail():
    def no_zero(schedule, steps):
        return karras(schedule, steps)[:-1]

    def rising(schedule, steps):
        return karras(schedule, steps).flip(0)

    def too_high(schedule, steps):
        return karras(schedule, steps) * 1.5

    assert set(_scheduler_failures(no_zero)) >= {"check_scheduler_length", "check_scheduler_ends_at_zero"}
    assert "not strictly decreasing" in _scheduler_failures(rising)["check_scheduler_decreasing"]
    assert "leaves the model's range" in _scheduler_failures(too_high)["check_scheduler_range"]
    assert "declared discrete_only but accepted" in _scheduler_failures(karras, discrete_only=True)[
        "check_scheduler_schedules"]


def test_broken_targets_fail():
    class SignError(EpsTarget):
        def from_x0(self, x0, x_t, c):
            return (x_t + c.alpha * x0) / c.sigma

    class Clamped(EpsTarget):
        def to_x0(self, out, x_t, c):
            return super().to_x0(out.clamp(-2, 2), x_t, c)

    with pytest.raises(testing.CheckFailure, match=r"check_target_round_trip: to_x0\(from_x0\(x0\)\) differs"):
        testing.check_target(SignError())
    with pytest.raises(testing.CheckFailure, match=r"check_target_affine: to_x0 is not affine"):
        testing.check_target(Clamped())


# --- the pytest side: ids, -k selection, expected failures ---------------------------------------------

def test_ids_and_unknown_keys():
    checks = testing.generate_checks(["sampler:heun", "scheduler:karras", "target:v"])
    assert "sampler[heun]-check_order" in {c.id for c in checks}
    assert "scheduler[karras]-check_scheduler_range" in {c.id for c in checks}
    with pytest.raises(ValueError, match="check_ordr"):
        testing.parametrize_with_checks(["sampler:heun"], expected_failures={"check_ordr": "typo"})
    with pytest.raises(ValueError, match="sampler\\[hune\\]"):
        testing.parametrize_with_checks(["sampler:heun"], order_options={"sampler[hune]": {}})


def test_run_checks_expected_failures():
    comp = testing._component("sampler", heun_wrong_weights, None, {"nfe": per_step(2), "order": 2, "stochastic": _never})
    checks = [c for c in testing.generate_checks([comp]) if c.name in ("check_order", "check_nfe")]
    results = testing.run_checks(checks, {"check_order": "wrong weights, kept as a demonstration"})
    assert [(r.id.split("-")[-1], r.status) for r in results] == [("check_nfe", "passed"), ("check_order", "xfailed")]
    with pytest.raises(testing.CheckFailure, match="expected to fail .* but passed"):
        testing.run_checks(checks, {"check_nfe": "not actually failing"})


def test_parametrize_in_pytest(pytester):
    pytester.makepyfile(textwrap.dedent("""
        from diffbench import testing
        from diffbench.samplers import per_step
        from diffbench.samplers._common import steps_of, to_d

    """) + inspect.getsource(heun_wrong_weights) + textwrap.dedent("""

        comp = testing._component("sampler", heun_wrong_weights, None,
                                  {"nfe": per_step(2), "order": 2, "stochastic": lambda **_: False})

        @testing.parametrize_with_checks([comp, "sampler:ddpm"],
                                         expected_failures={"sampler[heun_wrong_weights]-check_order": "demo"})
        def test_kit(check):
            check()
    """))
    # -k takes a full id (brackets included) or a check name
    result = pytester.runpytest_inprocess("-k", "sampler[heun_wrong_weights]-check_nfe or check_order", "-v", "-rs",
                                          "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, xfailed=1, skipped=1)
    result.stdout.fnmatch_lines_random([
        "*test_kit[[]sampler[[]heun_wrong_weights[]]-check_nfe[]] PASSED*",
        "*test_kit[[]sampler[[]heun_wrong_weights[]]-check_order[]] XFAIL*",
        "*check_order: 'ddpm' declares no order*",
    ])
