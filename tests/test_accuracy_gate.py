"""The smoke suite's paired accuracy measure: a sampler that loses an order at the same NFE fails compare."""
from __future__ import annotations

import functools

import pytest

from diffbench import builtin, compare
from diffbench.registry import Registry
from diffbench.runner import run_suite
from diffbench.samplers._common import steps_of, to_d
from diffbench.suite import parse_suite

pytestmark = pytest.mark.slow  # computes a trajectory reference (about 2000 network calls)


def heun_correction_dropped(denoiser, x, sigmas, *, noise=None, **options):
    """Heun's method with its correction evaluated but not used: Euler's first order at Heun's NFE (2N - 1)."""
    for _, s, sn in steps_of(sigmas):
        d = to_d(x, s, denoiser(x, s))
        x_next = x + (sn - s) * d
        if sn > 0:
            to_d(x_next, sn, denoiser(x_next, sn))  # the second evaluation, computed and dropped (the bug)
        x = x_next
    return x


class FirstOrderHeunRegistry(Registry):
    """The built-ins with 'heun' replaced by ``heun_correction_dropped`` (same name, options, declared NFE)."""

    def __init__(self, replace: bool) -> None:
        super().__init__()
        self.replace = replace
        self._plugin, self._distribution, self._version = "builtin", "diffbench", None
        builtin.diffbench_register(registry=self)

    def add(self, kind, name, obj, **meta):
        if self.replace and kind == "sampler" and name == "heun":
            obj = functools.wraps(obj)(heun_correction_dropped)
        return super().add(kind, name, obj, **meta)


SUITE = {"name": "order", "model": "digits-eps", "metrics": [{"name": "trajectory-error",
                                                             "options": {"max_samples": 32}}],
         "num_samples": 32, "batch_size": 32, "seeds": [0], "device": "cpu",
         "grid": {"sampler": ["heun"], "scheduler": ["karras"], "steps": [10]}}


def test_loss_of_order_at_the_same_nfe_is_worse_on_trajectory_error(tmp_path):
    """At 10 steps (19 NFE), where Heun is in its asymptotic range on digits-eps (smoke baseline: heun n=10
    0.054, euler n=10 0.076). At 5 steps Heun's error is larger than Euler's (0.64 vs 0.15; steps from σ = 157
    are far outside any order's range), so a first-order replacement there is better, not worse."""
    runs = {}
    for replace in (False, True):
        registry = FirstOrderHeunRegistry(replace)
        runs[replace] = run_suite(parse_suite(SUITE, registry), tmp_path / str(replace), registry=registry,
                                  progress=False, draw=False).path
    result = compare.compare(runs[False], runs[True], compare.Rule(time_tol=None, harness_tol=None))
    for cell in result.cells:
        checks = {c.what: c for c in cell.checks}
        assert checks["nfe"].verdict == compare.SAME  # the same cost
        assert checks["trajectory-error"].verdict == compare.WORSE, checks["trajectory-error"].describe()
