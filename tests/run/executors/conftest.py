"""A local Ray instance with 2 CPU workers, started once (5-10 s) for every executor test module that asks for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def ray_instance():
    ray = pytest.importorskip("ray")
    paths = [str(HERE), str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]  # this folder and tests/
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="warning",
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}},
    )
    yield ray
    ray.shutdown()
