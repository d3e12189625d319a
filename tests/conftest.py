"""Shared fixtures; plain helpers live in tests/helpers.py (tests/ is on sys.path via this conftest)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def single_thread():
    """Run torch on one thread: the tiny GMM tensors gain nothing from threads, and on a loaded
    2-core machine OpenMP spinning makes each op 10-20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
