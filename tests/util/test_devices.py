"""devices.one_thread on several threads at once: the BLAS limits hold while any thread is inside."""

from __future__ import annotations

import threading

import numpy  # noqa: F401 - loads the BLAS library whose limits are checked
import pytest
import torch
from threadpoolctl import threadpool_info

from diffbench.util.devices import one_thread


def blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["internal_api"] in ("openblas", "mkl", "blis")}


def test_blas_limits_hold_until_the_last_thread_leaves_and_torch_threads_are_per_thread():
    before, torch_before = blas_threads(), torch.get_num_threads()
    assert before, "no BLAS library found: the limits would be checked on nothing"
    if max(before) == 1:
        pytest.skip("BLAS runs one thread here: a limit of 1 cannot be told from it")
    entered, leave_first, left_first, seen = threading.Event(), threading.Event(), threading.Event(), {}

    def first() -> None:
        with one_thread():
            seen["first inside"] = torch.get_num_threads()
            entered.set()
            leave_first.wait(10)
        left_first.set()

    worker = threading.Thread(target=first)
    worker.start()
    assert entered.wait(10)
    with one_thread():
        assert torch.get_num_threads() == 1 and blas_threads() <= {1}
        leave_first.set()
        assert left_first.wait(10)
        assert blas_threads() <= {1}  # the other thread has left; this one is still inside
    worker.join(10)
    assert seen["first inside"] == 1
    assert blas_threads() == before and torch.get_num_threads() == torch_before


def _in_thread(fn) -> None:
    worker = threading.Thread(target=fn)
    worker.start()
    worker.join(10)


def test_a_thread_limits_blas_after_the_main_thread_has_and_the_last_one_out_restores_it():
    """threadpoolctl lets only the thread in control set a pthreads OpenBLAS's pool size: without one_thread
    releasing control, a scoring thread's limit after the main thread's was silently ignored, and a restore
    by a thread other than the one that set the limit left BLAS on one thread."""
    before = blas_threads()
    assert before, "no BLAS library found: the limits would be checked on nothing"
    if max(before) == 1:
        pytest.skip("BLAS runs one thread here: a limit of 1 cannot be told from it")
    with one_thread():  # the main thread first (as a probe does)
        assert blas_threads() == {1}
    assert blas_threads() == before
    seen = {}

    def alone() -> None:
        with one_thread():
            seen["worker alone"] = blas_threads()

    _in_thread(alone)
    assert seen["worker alone"] == {1} and blas_threads() == before
    entered, leave = threading.Event(), threading.Event()

    def last_out() -> None:
        with one_thread():
            entered.set()
            leave.wait(10)

    with one_thread():  # main sets the limit, the worker leaves last and restores it
        worker = threading.Thread(target=last_out)
        worker.start()
        assert entered.wait(10)
    assert blas_threads() == {1}  # the worker is still inside
    leave.set()
    worker.join(10)
    assert blas_threads() == before
