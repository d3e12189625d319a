"""The per-cell time limit: fires on the main thread and on worker threads, nests, cleans up after itself."""
from __future__ import annotations

import signal
import threading
import time

import pytest

from diffbench.timelimit import TimeLimitExceeded, check_seconds, time_limit


def spin(seconds: float) -> None:
    """Busy Python work (not one long C call), as a sampler's loop is."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_block_past_its_limit_is_stopped_on_the_main_thread():
    t0 = time.monotonic()
    with pytest.raises(TimeLimitExceeded, match="time limit of 0.2 s exceeded"):
        with time_limit(0.2):
            spin(5)
    assert time.monotonic() - t0 < 2
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL


def test_a_plugin_catching_exception_cannot_swallow_the_limit():
    def stubborn():
        try:
            spin(5)
        except Exception:  # noqa: BLE001 - the point of the test
            return "swallowed"

    with pytest.raises(TimeLimitExceeded):
        with time_limit(0.2):
            stubborn()


def test_a_block_within_its_limit_is_untouched_and_none_means_no_limit():
    with time_limit(5):
        spin(0.05)
    with time_limit(None):
        spin(0.05)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_an_inner_limit_never_extends_the_outer_one_and_the_outer_survives_it():
    with pytest.raises(TimeLimitExceeded, match="0.3 s"):
        with time_limit(0.3):
            with time_limit(10):  # longer than what is left outside: the outer one still fires
                spin(5)
    with pytest.raises(TimeLimitExceeded, match="0.4 s"):
        with time_limit(0.4):
            with time_limit(0.05):
                spin(0.01)  # the inner block ends in time
            spin(5)  # the outer limit is re-armed with what is left of it


def test_the_limit_works_off_the_main_thread():
    out = {}

    def worker():
        t0 = time.monotonic()
        try:
            with time_limit(0.2):
                spin(5)
        except TimeLimitExceeded as exc:
            out["exc"], out["took"] = exc, time.monotonic() - t0
        spin(0.4)  # nothing arrives after the block
        out["after"] = "ok"

    th = threading.Thread(target=worker)
    th.start()
    th.join(10)
    assert isinstance(out.get("exc"), TimeLimitExceeded) and out["took"] < 2 and out["after"] == "ok"


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "10", 1e300, 1e7 + 1])
def test_limits_must_be_positive_seconds_within_the_documented_bound(bad):
    with pytest.raises(ValueError, match="a time limit must be a number of seconds > 0 and at most 10,000,000"):
        check_seconds(bad)
    assert check_seconds(1e7) == 1e7
