"""Hook specifications of the ``diffbench`` pluggy project."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from diffbench.registry import Registry

PROJECT = "diffbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def diffbench_register(registry: Registry) -> None:
    """Add this plugin's samplers, schedulers, targets, models, datasets and metrics to ``registry``."""
