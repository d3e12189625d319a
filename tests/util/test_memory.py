"""release_free_memory: glibc's malloc_trim where glibc is the C library."""

from __future__ import annotations

import platform

import pytest

from diffbench.util.memory import release_free_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_free_memory_calls_malloc_trim_on_glibc():
    assert release_free_memory() is True
