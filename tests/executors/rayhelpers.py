"""Test plugins for the executor tests that Ray worker processes import (tests/ and this folder go on their path)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from diffbench.hookspecs import hookimpl
from diffbench.registry import Registry, build_registry
from diffbench.samplers import per_step
from diffbench.samplers.euler import euler
from runhelpers import TestPlugin

_calls = 0  # sampler calls in this process


def _in_ray_task() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized() and ray.get_runtime_context().get_task_id() is not None


def dies_once(denoiser, x, sigmas, *, noise=None, marker: str = ""):
    """Euler; but the first Ray worker to sample a batch of a cell (a call after its untimed warm-up call)
    while no ``marker`` file exists writes its pid there and is killed by SIGKILL, mid-cell."""
    global _calls
    _calls += 1
    if marker and _calls >= 2 and _in_ray_task() and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return euler(denoiser, x, sigmas, noise=noise)


def dies_always(denoiser, x, sigmas, *, noise=None):
    """Euler, but a Ray worker that samples a batch of a cell (after its warm-up call) is killed by SIGKILL."""
    global _calls
    _calls += 1
    if _calls >= 2 and _in_ray_task():
        os.kill(os.getpid(), signal.SIGKILL)
    return euler(denoiser, x, sigmas, noise=noise)


def sleepy(denoiser, x, sigmas, *, noise=None, seconds: float = 0.3):
    """Euler after sleeping ``seconds`` per batch (a slow sampler for time limits)."""
    time.sleep(seconds)
    return euler(denoiser, x, sigmas, noise=noise)


def blocks(denoiser, x, sigmas, *, noise=None, marker: str = "", after: int = -1):
    """Euler; but in a Ray task (or, with ``after`` ≥ 0, on its call number ``after`` + 1 on in any process),
    first writes its pid to ``marker`` (a folder) and sleeps for ten minutes."""
    global _calls
    _calls += 1
    if marker and (_in_ray_task() if after < 0 else _calls > after):
        (Path(marker) / str(os.getpid())).write_text("")
        time.sleep(600)
    return euler(denoiser, x, sigmas, noise=noise)


class ExecutorPlugin:
    @hookimpl
    def diffbench_register(self, registry: Registry) -> None:
        registry.add("sampler", "dies-once", dies_once, order=1, nfe=per_step(1), stochastic=lambda **_: False)
        registry.add("sampler", "dies-always", dies_always, order=1, nfe=per_step(1), stochastic=lambda **_: False)
        registry.add("sampler", "sleepy", sleepy, order=1, nfe=per_step(1), stochastic=lambda **_: False)
        registry.add("sampler", "blocks", blocks, order=1, nfe=per_step(1), stochastic=lambda **_: False)


def executor_registry() -> Registry:
    """The runner tests' plugins plus ``dies-once``."""
    return build_registry(extra_plugins=[TestPlugin(), ExecutorPlugin()], autoload=False)
