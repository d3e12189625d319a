"""The conformance kit: every built-in passes it, and deliberately broken components fail it for the right reason."""
from __future__ import annotations

import importlib.metadata

import inspect
import math
import re
import textwrap
from pathlib import Path

import pytest
import torch

from diffbench import testing
from diffbench.registry import default_registry
from diffbench.samplers import per_step, steps_of, to_d
from diffbench.schedulers import karras
from diffbench.targets import EpsTarget

pytest_plugins = ["pytester"]

BUILTINS = testing.components(default_registry(), distribution="diffbench")


# DDIM's quadratic selection is defined up to 29 steps at T = 1000 (beyond, it repeats timesteps and
# ddim-quadratic refuses); the kit's scheduler checks include 50 steps.
QUAD = "DDIM's quadratic timestep selection repeats timesteps beyond 29 steps; ddim-quadratic refuses them"
QUAD_XFAIL = {f"scheduler[ddim-quadratic]-{c}": QUAD for c in ("check_scheduler_length", "check_scheduler_ends_at_zero",
                                                              "check_scheduler_decreasing", "check_scheduler_range")}


@testing.parametrize_with_checks(BUILTINS, expected_failures=QUAD_XFAIL)
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
    comp = testing.component("sampler", heun_wrong_weights, nfe=per_step(2), order=2, stochastic=_never)
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

    failures = _failures(ancestral, stochastic=lambda **_: True, order=None)
    assert "modified the tensor returned by noise(0) in place" in failures["check_inputs_not_mutated"]


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


# --- stochastic configurations, noise, 1-step grids, non-finite output, exceptions ----------------------

def eta_sampler(use_global_rng=False, always_noise=False, never_noise=False):
    """An Euler/DDIM-η sampler (DDIM, Song et al. 2021, in σ-space) with one plantable fault."""
    from diffbench.samplers import ancestral_step

    def ddim_eta(denoiser, x, sigmas, *, noise=None, eta: float = 0.0):
        for k, s, sn in steps_of(sigmas):
            x0 = denoiser(x, s)
            down, up = ancestral_step(s, sn, eta)
            x = x0 + (down / s) * (x - x0)
            if never_noise:
                continue
            if up > 0.0 or (always_noise and sn > 0.0):
                x = x + up * (torch.randn_like(x) if use_global_rng else noise(k))
        return x
    return ddim_eta


def _eta_declarations(**extra):
    return {"nfe": per_step(1), "order": 1, "stochastic": lambda eta=0.0, **_: eta > 0,
            "stochastic_options": {"eta": 1.0}, **extra}


def _failures_of(fn, **declared) -> dict[str, str]:
    with pytest.raises(testing.CheckFailure) as info:
        testing.check_sampler(fn, **declared)
    return {r.id.rsplit("-", 1)[1]: r.message for r in info.value.results if r.status == "failed"}


def test_correct_stochastic_sampler_passes_and_runs_its_stochastic_configuration():
    comp = testing.component("sampler", eta_sampler(), **_eta_declarations())
    assert testing._configs(comp, None, None) == [{"eta": 0.0}, {"eta": 1.0}]
    assert {r.status for r in testing.check_sampler(comp)} == {"passed"}


def test_global_rng_in_the_stochastic_path_is_caught():
    """The bug the old kit missed: deterministic by default, torch.randn when η > 0."""
    failures = _failures_of(eta_sampler(use_global_rng=True), **_eta_declarations())
    assert set(failures) == {"check_determinism", "check_batch_invariance", "check_noise"}
    assert "options {eta=1.0}" in failures["check_determinism"]
    assert "depend on torch's global random state" in failures["check_noise"]


def test_stochastic_options_left_undeclared_fail_declarations():
    declared = {k: v for k, v in _eta_declarations().items() if k != "stochastic_options"}
    failures = _failures_of(eta_sampler(use_global_rng=True), **declared)
    assert set(failures) == {"check_declarations"}
    assert "stochastic(eta=1.0) is True but the sampler declares no stochastic_options" in failures[
        "check_declarations"]


def test_noise_use_must_match_the_declaration():
    drawn_when_deterministic = _failures_of(eta_sampler(always_noise=True), **_eta_declarations())
    assert set(drawn_when_deterministic) == {"check_noise"}
    assert re.search(r"called noise\(k\) at steps \[0, .*\] although stochastic\(\*\*options\) is False: .*"
                     r"options \{eta=0.0\}", drawn_when_deterministic["check_noise"])
    never_drawn = _failures_of(eta_sampler(never_noise=True), **_eta_declarations())
    assert set(never_drawn) == {"check_noise"}
    assert "stochastic(**options) is True but the sampler never called noise(k)" in never_drawn["check_noise"]
    assert "options {eta=1.0}" in never_drawn["check_noise"]


def test_declared_stochastic_options_that_are_not_stochastic_fail():
    failures = _failures_of(eta_sampler(), **_eta_declarations(stochastic_options={"eta": 0.0}))
    assert "declares stochastic_options={eta=0.0} but stochastic(**options) is False" in failures[
        "check_declarations"]


def test_mutation_on_a_one_step_grid_is_caught():
    def mutates_on_one_step(denoiser, x, sigmas, *, noise=None):
        if len(sigmas) == 2:
            x.mul_(1.0)  # an in-place op that leaves values unchanged is fine; this one is not
            x.add_(0.5)
            return euler(denoiser, x - 0.5, sigmas)
        return euler(denoiser, x, sigmas)

    failures = _failures(mutates_on_one_step)
    assert set(failures) == {"check_inputs_not_mutated"}
    assert "modified its input x in place (max change 0.5; 1 Karras steps from σ = 80 to σ = 0" in failures[
        "check_inputs_not_mutated"]


def test_non_finite_output_is_reported_as_itself():
    def nan_on_long_grids(denoiser, x, sigmas, *, noise=None):
        out = euler(denoiser, x, sigmas)
        return out * float("nan") if len(sigmas) > 6 else out

    failures = _failures(nan_on_long_grids)
    assert failures["check_determinism"] == ("check_determinism: non-finite output: 16 of 16 values are NaN or "
                                             "infinite (10 Karras steps from σ = 80 to σ = 0, options {})")
    assert all("differ" not in m and "non-finite output" in m for m in failures.values())


def test_an_exception_names_the_grid():
    def fails_on_one_step(denoiser, x, sigmas, *, noise=None):
        if len(sigmas) == 2:
            raise ZeroDivisionError("no room for a second stage")
        return euler(denoiser, x, sigmas)

    msg = _failures(fails_on_one_step)["check_one_step"]
    assert msg == ("check_one_step: sampler 'fails_on_one_step' raised ZeroDivisionError: no room for a second "
                   "stage (1 Karras steps from σ = 80 to σ = 0, options {})")


def test_several_option_sets_are_each_checked():
    def wrong_nfe_for_big_gain(denoiser, x, sigmas, *, noise=None, gain: float = 1.0):
        if gain > 2:  # an extra evaluation the declaration does not count
            denoiser(x, float(sigmas[0]))
        return euler(denoiser, x, sigmas)

    assert {r.status for r in testing.check_sampler(wrong_nfe_for_big_gain, nfe=per_step(1), order=1,
                                                    stochastic=_never, options=[{}, {"gain": 2.0}])} == {"passed"}
    failures = _failures(wrong_nfe_for_big_gain, options=[{"gain": 2.0}, {"gain": 3.0}])
    assert "options {gain=3.0}" in failures["check_nfe"]
    with pytest.raises(ValueError, match="has no option 'gian'"):
        testing.check_sampler(wrong_nfe_for_big_gain, nfe=per_step(1), options=[{"gian": 3.0}])


# --- selecting components: never a vacuous pass ---------------------------------------------------------

def test_distribution_names_match_as_pip_matches_them():
    reg = default_registry()
    assert {c.name for c in testing.components(reg, distribution="DiffBench")} == {c.name for c in BUILTINS}
    assert not testing.components(reg, distribution="diffbench").problems()
    typo = testing.components(reg, distribution="difbench")
    assert typo == [] and typo.problems() == [
        "no components selected (kinds sampler, scheduler, target, distribution 'difbench'); no installed "
        "distribution is called 'difbench' (names match ignoring case and '-', '_', '.'); installed: "
        + ", ".join(sorted(testing._installed_distributions(reg))) + "; did you mean 'diffbench'?"]


def test_an_installed_distribution_without_the_entry_point_is_named_as_such():
    """A misspelt entry-point group: the distribution is installed, its 'diffbench' entry point is missing."""
    reg = default_registry()
    groups = sorted({ep.group for ep in importlib.metadata.distribution("pytest").entry_points})
    chosen = testing.components(reg, distribution="pytest")
    assert chosen == [] and chosen.problems() == [
        "no components selected (kinds sampler, scheduler, target, distribution 'pytest'); distribution 'pytest' "
        f"is installed but declares no entry point in group 'diffbench' (its entry-point groups: {', '.join(groups)}); "
        "add [project.entry-points.diffbench] to its pyproject.toml and reinstall it"]


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
    comp = testing.component("sampler", heun_wrong_weights, nfe=per_step(2), order=2, stochastic=_never)
    checks = [c for c in testing.generate_checks([comp]) if c.name in ("check_order", "check_nfe")]
    results = testing.run_checks(checks, {"check_order": "wrong weights, kept as a demonstration"})
    assert [(r.id.split("-")[-1], r.status) for r in results] == [("check_nfe", "passed"), ("check_order", "xfailed")]
    with pytest.raises(testing.CheckFailure, match="expected to fail .* but passed"):
        testing.run_checks(checks, {"check_nfe": "not actually failing"})


def test_parametrize_in_pytest(pytester):
    pytester.makepyfile(textwrap.dedent("""
        from diffbench import testing
        from diffbench.samplers import per_step, steps_of, to_d

    """) + inspect.getsource(heun_wrong_weights) + textwrap.dedent("""

        comp = testing.component("sampler", heun_wrong_weights, nfe=per_step(2), order=2,
                                 stochastic=lambda **_: False)

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


def _guide_snippet() -> str:
    """The conformance test the plugin guide tells authors to write."""
    guide = (Path(__file__).resolve().parents[1] / "docs" / "plugin-guide.md").read_text()
    section = guide[guide.index("## Testing with the conformance kit"):]
    return re.search(r"```python\n(.*?)```", section, flags=re.S)[1]


def test_the_guide_snippet_fails_on_a_misspelled_distribution(pytester):
    snippet = _guide_snippet()
    assert 'distribution="diffbench-mysamplers"' in snippet
    pytester.makepyfile(snippet.replace("diffbench-mysamplers", "diffbench-extar"))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_conformance[[]selection-empty[]]*",
                                 "*no installed distribution is called 'diffbench-extar'*did you mean*"])


def test_the_guide_snippet_fails_when_the_plugin_failed_to_register(pytester):
    """A distribution whose plugin raises in diffbench_register: its error is the failing test's message."""
    pytester.makepyfile(broken_plugin="""
        from diffbench.hookspecs import hookimpl

        def sampler(denoiser, x, sigmas, *, noise=None):
            return x

        @hookimpl
        def diffbench_register(registry):
            registry.add("sampler", "broken", sampler, nfe=lambda sigmas, **_: 0, orders=2)
    """)
    info = pytester.mkdir("diffbench_mysamplers-0.1.dist-info")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: diffbench-mysamplers\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[diffbench]\nmysamplers = broken_plugin\n")
    pytester.makepyfile(test_kit=_guide_snippet())
    pytester.syspathinsert()
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:randomly", "test_kit.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*CheckFailure: plugin failed to load or register: plugin 'mysamplers' "
                                 "(diffbench-mysamplers): registration failed: sampler 'broken': unknown "
                                 "declaration 'orders'*",
                                 "*FAILED test_kit.py::test_conformance[[]selection-plugin-errors[]]*"])
