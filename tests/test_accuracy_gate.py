"""The smoke suite's paired accuracy measure: a sampler that loses an order at the same NFE fails compare."""
from __future__ import annotations

import functools
import math

import pytest

from diffbench import builtin, compare
from diffbench.registry import Registry
from diffbench.runner import run_suite
from diffbench.samplers._common import steps_of, to_d
from diffbench.suite import parse_suite

pytestmark = pytest.mark.slow  # computes a trajectory reference (about 2000 network calls)


def euler_halves(denoiser, x, sigmas, *, noise=None, **options):
    """First order at Heun's NFE (2N - 1): two Euler steps through the geometric midpoint, one into σ = 0."""
    for _, s, sn in steps_of(sigmas):
        if sn > 0:
            mid = math.sqrt(s * sn)
            x = x + (mid - s) * to_d(x, s, denoiser(x, s))
            s = mid
        x = x + (sn - s) * to_d(x, s, denoiser(x, s))
    return x


class FirstOrderHeunRegistry(Registry):
    """The built-ins with 'heun' replaced by ``euler_halves`` (same name, options and declared NFE)."""

    def __init__(self, replace: bool) -> None:
        super().__init__()
        self.replace = replace
        self._plugin, self._distribution, self._version = "builtin", "diffbench", None
        builtin.diffbench_register(registry=self)

    def add(self, kind, name, obj, **meta):
        if self.replace and kind == "sampler" and name == "heun":
            obj = functools.wraps(obj)(euler_halves)
        return super().add(kind, name, obj, **meta)


SUITE = {"name": "order", "model": "digits-eps", "metrics": [{"name": "trajectory-error",
                                                             "options": {"max_samples": 32}}],
         "num_samples": 32, "batch_size": 32, "seeds": [0], "device": "cpu",
         "grid": {"sampler": ["heun"], "scheduler": ["karras"], "steps": [5, 10]}}


def test_loss_of_order_at_the_same_nfe_is_worse_on_trajectory_error(tmp_path):
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
