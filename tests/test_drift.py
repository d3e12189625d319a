"""Paired drift: the fingerprint's arithmetic, and compare flagging Euler's step scaled by 0.99 (unchanged code is not)."""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diffbench import builtin, compare, drift
from diffbench.cli import cli
from diffbench.compare import CHANGED, SAME
from diffbench.registry import Registry
from diffbench.runner import run_suite
from diffbench.samplers._common import steps_of, to_d
from diffbench.suite import parse_suite


def test_fingerprint_keeps_the_first_samples_and_evenly_spaced_coordinates():
    x = torch.arange(40 * 3000, dtype=torch.float64).reshape(40, 3, 1000)
    fp = drift.fingerprint(x)
    assert (fp["samples"], fp["coordinates"], fp["of"], fp["dtype"]) == (16, 1024, 3000, "float32")
    kept = drift.values(fp)
    assert kept.shape == (16, 1024)
    assert kept[0, 0] == 0 and kept[0, -1] == 2999 and kept[15, 0] == 15 * 3000  # both ends of each sample
    small = drift.fingerprint(torch.ones(4, 2))
    assert (small["samples"], small["coordinates"]) == (4, 2)
    assert drift.fingerprint(None) is None


def test_relative_rms_change_is_the_norm_of_the_difference_over_the_norm_of_the_baseline():
    rng = np.random.default_rng(0)
    b = torch.from_numpy(rng.standard_normal((16, 64)))
    delta = torch.from_numpy(rng.standard_normal((16, 64)))
    r = b + 0.01 * delta
    want = float(torch.linalg.norm(r.float().double() - b.float().double()) / torch.linalg.norm(b.float().double()))
    assert drift.relative_rms_change(drift.fingerprint(b), drift.fingerprint(r)) == pytest.approx(want, rel=1e-12)
    assert drift.relative_rms_change(drift.fingerprint(b), drift.fingerprint(b)) == 0.0
    with pytest.raises(ValueError, match="different sample sizes"):
        drift.relative_rms_change(drift.fingerprint(b), drift.fingerprint(b[:, :32]))
    with pytest.raises(ValueError, match="malformed"):
        drift.values({"samples": 2, "coordinates": 3, "data": "not base64!"})


def euler_scaled(denoiser, x, sigmas, *, noise=None, scale: float = 0.99, **options):
    """Euler's method with every step scaled by ``scale``: a 1 % coefficient bug."""
    for _, s, sn in steps_of(sigmas):
        x = x + scale * (sn - s) * to_d(x, s, denoiser(x, s))
    return x


class ScaledEulerRegistry(Registry):
    """The built-ins with 'euler' replaced by ``euler_scaled`` (same name, options and declared NFE)."""

    def __init__(self) -> None:
        super().__init__()
        self._plugin, self._distribution, self._version = "builtin", "diffbench", None
        builtin.diffbench_register(registry=self)

    def add(self, kind, name, obj, **meta):
        if kind == "sampler" and name == "euler":
            obj = functools.wraps(obj)(euler_scaled)
        return super().add(kind, name, obj, **meta)


def builtin_registry() -> Registry:
    registry = Registry()
    registry._plugin, registry._distribution, registry._version = "builtin", "diffbench", None
    builtin.diffbench_register(registry=registry)
    return registry


SUITE = {"name": "drift", "model": "digits-eps", "num_samples": 32, "batch_size": 32, "seeds": [0], "device": "cpu",
         "grid": {"sampler": ["euler", "heun"], "scheduler": ["karras"], "steps": [10]}}


def run(path: Path, registry: Registry) -> Path:
    return run_suite(parse_suite(SUITE, registry), path, registry=registry, progress=False, draw=False).path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drift")
    return {"base": run(tmp / "base", builtin_registry()), "again": run(tmp / "again", builtin_registry()),
            "scaled": run(tmp / "scaled", ScaledEulerRegistry())}


def drift_checks(base: Path, run: Path) -> dict[str, compare.Check]:
    return {cell.label: next(c for c in cell.checks if c.what == "drift")
            for cell in compare.compare(base, run, compare.Rule(time_tol=None, harness_tol=None)).cells}


def test_rerunning_unchanged_code_does_not_drift(runs):
    checks = drift_checks(runs["base"], runs["again"])
    assert {label: (c.delta, c.verdict) for label, c in checks.items()} == {
        "euler karras n=10": (0.0, SAME), "heun karras n=10": (0.0, SAME)}


def test_euler_step_scaled_by_0_99_is_changed_and_exits_4(runs):
    checks = drift_checks(runs["base"], runs["scaled"])
    euler, heun = checks["euler karras n=10"], checks["heun karras n=10"]
    assert euler.verdict == CHANGED and euler.delta > 10 * drift.FLOOR  # far beyond round-off (~1e-2 here)
    assert heun.verdict == SAME and heun.delta == 0.0
    out = CliRunner().invoke(cli, ["compare", str(runs["base"]), str(runs["scaled"]), "--time-tol", "off",
                                   "--harness-tol", "off"], catch_exceptions=False)
    assert out.exit_code == 4, out.output
    assert "CHANGED: samples of 1 cell(s) moved beyond round-off" in out.stdout
    assert "euler karras n=10: drift: the first 16 samples moved by" in out.stdout
    off = CliRunner().invoke(cli, ["compare", str(runs["base"]), str(runs["scaled"]), "--time-tol", "off",
                                   "--harness-tol", "off", "--drift-floor", "off"], catch_exceptions=False)
    assert off.exit_code == 0


def test_a_regression_outranks_a_change(runs, tmp_path):
    """A cell that is worse and drifted is 'worse' (exit 1), not 'changed'."""
    cell = compare.CellComparison("c", "c", [compare.Check("drift", 0.0, 1.0, 1.0, 1e-4, CHANGED),
                                             compare.Check("nfe", 10, 11, 1, 1e-8, compare.WORSE)])
    assert cell.verdict == compare.WORSE
    assert math.isinf(drift.relative_rms_change(drift.fingerprint(torch.zeros(2, 2)),
                                                drift.fingerprint(torch.ones(2, 2))))
