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
