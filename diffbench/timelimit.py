"""A wall-clock limit around a block of code: ``with time_limit(60): run_cell(...)``.

On the main thread the limit is a ``SIGALRM`` timer (``setitimer``); the handler raises
``TimeLimitExceeded`` in the block. On any other thread (a Ray worker's task thread, say) a watchdog
timer raises it in the block's thread with ``PyThreadState_SetAsyncExc``. Either way the exception
arrives between Python bytecodes: a single long-running C call (one huge network evaluation) finishes
before it lands, so the limit is exact to within one such call. ``TimeLimitExceeded`` derives from
``BaseException`` so a plugin's ``except Exception`` cannot swallow it. Limits nest: an inner block
never extends an outer one's deadline.
"""
from __future__ import annotations

import ctypes
import math
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator


class TimeLimitExceeded(BaseException):
    """The block ran past its time limit."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"time limit of {seconds:g} s exceeded")
        self.seconds = seconds


MAX_SECONDS = 10_000_000.0  # about 116 days: beyond it a limit is a typo (and overflows the timers)


def check_seconds(seconds: float | None) -> float | None:
    """``seconds`` if it is None or a number of seconds in (0, MAX_SECONDS], else ValueError."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"a time limit must be a number of seconds > 0 and at most {MAX_SECONDS:,.0f}, "
                         f"got {seconds!r}")
    return float(seconds)


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise TimeLimitExceeded in the block once ``seconds`` of wall-clock have passed; None: no limit."""
    seconds = check_seconds(seconds)
    if seconds is None:
        yield
        return
    if threading.current_thread() is threading.main_thread():
        with _alarm(seconds):
            yield
    else:
        with _watchdog(seconds):
            yield


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    start = time.monotonic()
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    if outer_left and outer_left < seconds:  # an enclosing limit ends first: leave its timer alone
        yield
        return

    def on_alarm(signum, frame):  # noqa: ARG001 - signal handler signature
        raise TimeLimitExceeded(seconds)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:  # give the enclosing limit what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-3))


@contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    target = threading.get_ident()
    lock = threading.Lock()
    state = {"active": True, "fired": False}

    def fire() -> None:
        with lock:
            if state["active"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target),
                                                           ctypes.py_object(_exceeded(seconds)))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            state["active"] = False
        timer.cancel()
        if state["fired"]:
            # the exception may still be pending if the block ended just as it fired: clear it here
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), None)


def _exceeded(seconds: float) -> type[TimeLimitExceeded]:
    """An exception class for SetAsyncExc (it takes a class, not an instance) carrying ``seconds``."""
    return type("TimeLimitExceeded", (TimeLimitExceeded,), {"__init__": lambda self: TimeLimitExceeded.__init__(
        self, seconds)})
