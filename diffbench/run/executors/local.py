"""The local executor: every cell in this process, one after another, with a per-sample progress bar.

With ``overlap`` a finished cell is scored on a second thread while the next cell samples: by default
when the models sample off the CPU (GPU sampling, CPU scoring), where the two do not compete for the
same cores. Sampling on the CPU is never overlapped (it would slow the sampling the table times);
there, with two cores or more, a cell's scoring runs beside its harness probe instead
(``cell.probe_and_score``): both are single-threaded (``devices.one_thread``, safe on several threads at
once). Scores depend only on a cell's feature rows, so the records are those of the serial order
(tests/run/executors/test_local.py compares them).
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

from tqdm.auto import tqdm

from diffbench.run.cell import SampledCell, probe_and_score, run_probe, sample_cell, score_cell
from diffbench.run.executors import Finished, Job
from diffbench.run.suite import CellSpec


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_info(executor: str, record: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Where a cell ran: executor, host, process and the device its samples were drawn on."""
    return {
        "executor": executor,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": record.get("device"),
        **extra,
    }


def cell_bar(job: Job, cell: CellSpec) -> tqdm:
    """The inner progress bar of one cell: samples over all its seeds, under the run's bar."""
    return tqdm(
        total=job.suite.num_samples * len(job.suite.seeds),
        desc=cell.cell_id.rsplit("-", 1)[0],
        unit="sample",
        leave=False,
        disable=not job.progress,
        position=1,
        dynamic_ncols=True,
    )


class LocalExecutor:
    """Cells one after another in the driver process (the default)."""

    name = "local"

    def __init__(self, overlap: bool | None = None, probe_beside: bool | None = None) -> None:
        self.job: Job | None = None
        self.overlap = overlap  # None: when any model samples off the CPU
        self.probe_beside = probe_beside  # None: when not overlapping and two cores are free

    def start(self, job: Job) -> dict[str, Any]:
        self.job = job
        if self.overlap is None:
            self.overlap = any(m.device.type != "cpu" for m in job.models.values())
        if self.probe_beside is None:  # a cell's probe and its scoring (a thread each) on two cores
            self.probe_beside = available_cores() >= 2
        self.probe_beside = self.probe_beside and not self.overlap  # only where sampling is on the CPU
        return {
            "name": self.name,
            "nodes": [socket.gethostname()],
            "overlap_scoring": self.overlap,
            "probe_beside_scoring": self.probe_beside,
        }

    def run(self, cells: list[CellSpec]) -> Iterator[Finished]:
        job = self.job
        assert job is not None, "start() first"
        if self.overlap:
            yield from self._overlapped(cells)
            return
        for cell in cells:
            with cell_bar(job, cell) as bar:
                sampled = self._sample(cell, bar)
                record = probe_and_score(sampled, job.suite, job.suite.time_limit, bar, beside=self.probe_beside)
            record["worker"] = worker_info(self.name, record)
            yield Finished(record)  # the picture is already in the run directory: this is the driver

    def _sample(self, cell: CellSpec, bar: tqdm) -> SampledCell:
        """The sampling half of ``run_cell`` for ``cell`` on this process (``score_cell`` is the other half)."""
        job = self.job
        return sample_cell(
            job.suite, cell, job.models[cell.model.key], job.registry, job.context, job.run, bar, job.suite.time_limit
        )

    def _overlapped(self, cells: list[CellSpec]) -> Iterator[Finished]:
        """Sample cell i+1 while cell i is scored on one worker thread; records come back in cell order."""
        job = self.job
        limit = job.suite.time_limit
        pending: Future | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffbench-scoring") as pool:
            try:
                for cell in cells:
                    with cell_bar(job, cell) as bar:
                        sampled = self._sample(cell, bar)
                    run_probe(sampled, limit)  # on this thread; the previous cell's scoring goes on meanwhile
                    if pending is not None:
                        yield self._finished(pending.result())
                    pending = pool.submit(score_cell, sampled, job.suite, limit)
                if pending is not None:
                    yield self._finished(pending.result())
                    pending = None
            finally:
                if pending is not None:
                    pending.cancel()

    def _finished(self, record: dict[str, Any]) -> Finished:
        record["worker"] = worker_info(self.name, record)
        return Finished(record)

    def close(self) -> None:
        self.job = None
