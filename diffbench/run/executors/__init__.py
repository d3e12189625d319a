"""Executors: where a run's cells are computed. The runner submits cells and receives finished records.

The runner stays the one writer of a run directory: an executor returns each finished cell as a
``Finished`` (the cell record plus the bytes of the files a worker made for it: its sample picture,
saved samples) and the runner writes them atomically. ``local`` runs cells one after another in this process; ``ray``
runs one Ray task per cell (``diffbench[ray]``). Sample i's noise depends only on (seed, i), so the
executor changes where a cell is computed, never its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Protocol

if TYPE_CHECKING:
    from diffbench.core.denoiser import DiffusionModel
    from diffbench.metrics.base import MetricContext
    from diffbench.registry import Registry
    from diffbench.run.rundir import RunDir
    from diffbench.run.suite import CellSpec, Suite

EXECUTORS = ("local", "ray")


class ExecutorError(Exception):
    """An executor that cannot start (Ray missing, cluster unreachable): a one-line usage error."""


@dataclass
class Job:
    """What every cell of one run needs: the suite, the plugins, the driver's models, metric context, run dir."""

    suite: Suite
    registry: Registry
    models: dict[str, DiffusionModel]
    context: MetricContext
    run: RunDir
    progress: bool = True


@dataclass
class Finished:
    """One finished cell: its record and the files a worker made for it (path relative to the run dir → bytes:
    ``cells/<id>.png``, saved samples under ``samples/<id>/``), which the runner writes."""

    record: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


class Executor(Protocol):
    """Runs cells of a ``Job`` and yields each as it finishes (in any order); never writes the run dir."""

    name: str

    def start(self, job: Job) -> dict[str, Any]:
        """Prepare for ``job``; returns what the manifest records about the executor (name, nodes, ...)."""

    def run(self, cells: list[CellSpec]) -> Iterator[Finished]:
        """Compute ``cells``; yield every one of them exactly once, failed cells included."""

    def close(self) -> None:
        """Stop outstanding work and release resources (also after Ctrl-C)."""


def make_executor(name: str = "local", *, address: str | None = None, **options: Any) -> Executor:
    """An executor by name: 'local' (this process; ``overlap`` scores a cell while the next samples, default
    when sampling off the CPU) or 'ray' (one Ray task per cell; ``address`` of a cluster; ``cell_parts``
    splits each cell across that many tasks)."""
    if name == "local":
        if address is not None:
            raise ExecutorError("--address needs --executor ray")
        if options.get("cell_parts", 1) != 1:
            raise ExecutorError("--cell-parts needs --executor ray")
        from diffbench.run.executors.local import LocalExecutor

        return LocalExecutor(overlap=options.get("overlap"))
    if name == "ray":
        from diffbench.run.executors.ray import RayExecutor

        return RayExecutor(address=address, **options)
    raise ExecutorError(f"unknown executor {name!r}; executors: {', '.join(EXECUTORS)}")
