"""Speed benchmarks (tox -e bench): torch version and device in the machine info, derived figures at the end."""

from __future__ import annotations

import platform

import pytest
import torch

FIGURES: list[str] = []  # derived figures (µs per call, overhead), printed after the benchmark tables


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what the timings depend on besides the CPU: torch, its threads, the device."""
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["device"] = "cpu"  # every benchmark here runs on the CPU
    machine_info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    machine_info["platform"] = platform.platform()


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("diffbench figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture
def figures() -> list[str]:
    return FIGURES
