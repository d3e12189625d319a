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
