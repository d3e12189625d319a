"""calibration.harness_overhead's arithmetic, with the clock replaced (no timed assertions)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from diffbench.models.gmm import gmm
from diffbench.run import calibration, sampling


def test_overhead_pairs_sampling_with_the_total_of_nfe_bare_calls(monkeypatch):
    """Bare calls of 1, 1, 1, 1 and 6 s (one load spike) and a 10 s sampling call of 5 NFE: overhead 0.

    A median of the bare calls (1 s) would call the spike 100 % harness overhead.
    """
    bare = itertools.cycle([1.0, 1.0, 1.0, 1.0, 6.0])
    monkeypatch.setattr(calibration, "time_network_call", lambda *a, **k: next(bare))
    monkeypatch.setattr(sampling, "sample", lambda *a, **k: SimpleNamespace(nfe=5.0, sample_seconds=10.0))
    result = calibration.harness_overhead(gmm(), "euler", steps=5, batch_size=4, repeats=3)
    assert result.ratios == [pytest.approx(0.0)] * 3 and result.median == pytest.approx(0.0)
    assert result.as_dict()["bare_seconds_median"] == pytest.approx(2.0) and result.nfe == 5.0


@pytest.mark.parametrize("steps, calls_a_repetition", [(100, 1), (5, 4)])
def test_the_probe_times_sixteen_gaps_a_repetition_stopping_long_samplers_early(monkeypatch, steps, calls_a_repetition):
    """A 100-step sampler is stopped after the gaps one repetition needs; a 5-step one (4 gaps) runs 4 whole calls."""
    from diffbench.registry import default_registry
    from diffbench.run.cell import probe_harness
    from diffbench.run.suite import expand, parse_suite

    seen = []
    real = calibration.harness_probe

    def counting(gaps_of_one_call, repeats=calibration.HARNESS_REPEATS):
        def counted():
            gaps = gaps_of_one_call()
            seen.append(len(gaps))
            return gaps

        return real(counted, repeats)

    monkeypatch.setattr(calibration, "harness_probe", counting)
    suite = parse_suite(
        {
            "name": "probe",
            "model": "gmm",
            "metrics": ["mean-norm"],
            "num_samples": 8,
            "batch_size": 8,
            "grid": {"sampler": ["euler"], "scheduler": ["karras"], "steps": [steps]},
        }
    )
    (cell,) = expand(suite)
    warnings: list[str] = []
    probe = probe_harness(suite, cell, gmm(), default_registry(), warnings)
    assert not warnings and probe["repeats"] == calibration.HARNESS_REPEATS
    per_call = min(steps - 1, calibration.MIN_GAPS)  # euler: one network call a step
    assert set(seen) == {per_call}  # the warm-up call and every timed one
    assert len(seen) == 1 + calibration.HARNESS_REPEATS * calls_a_repetition
