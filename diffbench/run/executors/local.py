"""The local executor: every cell in this process, one after another, with a per-sample progress bar."""

from __future__ import annotations

import os
import socket
from typing import Any, Iterator

from tqdm.auto import tqdm

from diffbench.run.cell import run_cell
from diffbench.run.executors import Finished, Job
from diffbench.run.suite import CellSpec


def worker_info(executor: str, record: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Where a cell ran: executor, host, process and the device its samples were drawn on."""
    return {
        "executor": executor,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": record.get("device"),
        **extra,
    }


class LocalExecutor:
    """Cells one after another in the driver process (the default)."""

    name = "local"

    def __init__(self) -> None:
        self.job: Job | None = None

    def start(self, job: Job) -> dict[str, Any]:
        self.job = job
        return {"name": self.name, "nodes": [socket.gethostname()]}

    def run(self, cells: list[CellSpec]) -> Iterator[Finished]:
        job = self.job
        assert job is not None, "start() first"
        total = job.suite.num_samples * len(job.suite.seeds)
        for cell in cells:
            with tqdm(
                total=total,
                desc=cell.cell_id.rsplit("-", 1)[0],
                unit="sample",
                leave=False,
                disable=not job.progress,
                position=1,
                dynamic_ncols=True,
            ) as bar:
                record = run_cell(
                    job.suite,
                    cell,
                    job.models[cell.model.key],
                    job.registry,
                    job.context,
                    job.run,
                    bar,
                    time_limit=job.suite.time_limit,
                )
            record["worker"] = worker_info(self.name, record)
            yield Finished(record)  # the picture is already in the run directory: this is the driver

    def close(self) -> None:
        self.job = None
