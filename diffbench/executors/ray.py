"""The Ray executor: one Ray task per cell on a local instance or a cluster; the driver writes the results.

Each task loads the suite's models in its worker process (once per process and run, on the device
the worker sees: Ray gives a ``num_gpus=1`` task its own GPU), warms them up untimed, runs the cell
with torch limited to the task's CPUs, and returns the record with its sample picture as bytes.
A worker process that dies is retried by Ray (``max_retries``); a Python error inside a cell is the
cell's recorded failure and is not retried (Ray's ``retry_exceptions`` stays off).
"""
from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import replace
from typing import Any, Iterator

from diffbench.cell import failed_record, run_cell, sampling_call
from diffbench.executors import ExecutorError, Finished, Job
from diffbench.executors.local import worker_info
from diffbench.results import RunDir
from diffbench.suite import CellSpec

INSTALL = 'pip install "diffbench[ray]"'
MAX_RETRIES = 3  # Ray's default for tasks: a worker that dies is retried this many times


def import_ray() -> Any:
    """The ``ray`` module, or an ExecutorError naming the install command."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"--executor ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


# --- worker side -------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}  # this worker process's models for the current run: loaded and warmed once


class _NoBar:
    """The progress interface run_cell expects; a worker shows none (the driver counts cells)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "") -> None:
        pass


def _models(token: str, suite: Any, registry: Any) -> tuple[dict[str, Any], set[str]]:
    if _STATE.get("token") != token:
        from diffbench.runner import load_models

        _STATE.clear()
        _STATE.update(token=token, models=load_models(suite, registry), warmed=set())
    return _STATE["models"], _STATE["warmed"]


def run_cell_task(payload: dict[str, Any], cell: CellSpec, threads: int) -> dict[str, Any]:
    """Ray task body: one cell, start to finish, in a worker process; returns its record and files."""
    import ray
    import torch

    torch.set_num_threads(threads)
    if os.path.isdir(payload["cwd"]):  # same machine or shared file system: relative paths in the suite work
        os.chdir(payload["cwd"])
    suite, registry = payload["suite"], payload["registry"]
    models, warmed = _models(payload["token"], suite, registry)
    model = models[cell.model.key]
    if cell.model.key not in warmed:  # first-call costs stay out of the cell's time, as in the local run
        try:
            for _ in sampling_call(suite, cell, model, registry, suite.seeds[0], min(suite.batch_size, suite.num_samples)):
                pass
        except Exception:
            pass  # the cell itself will fail and record why
        warmed.add(cell.model.key)
    context = replace(payload["context"], device=model.device, info={})
    with tempfile.TemporaryDirectory(prefix="diffbench-cell-") as tmp:
        scratch = RunDir(tmp)  # the worker never writes the run directory; its files travel as bytes
        record = run_cell(suite, cell, model, registry, context, scratch, _NoBar(), time_limit=suite.time_limit)
        files = {p.name[len(cell.cell_id):]: p.read_bytes() for p in scratch.cells_dir.glob(f"{cell.cell_id}.*")
                 if p.suffix != ".json"}
    ctx = ray.get_runtime_context()
    record["worker"] = worker_info("ray", record, node_id=ctx.get_node_id(), gpu_ids=[str(g) for g in ray.get_gpu_ids()],
                                   threads=threads)
    return {"record": record, "files": files, "metric_info": context.info}


# --- driver side -------------------------------------------------------------------------------

class RayExecutor:
    """One Ray task per cell: ``num_gpus=1`` when the suite runs on CUDA, else ``cpus_per_cell`` CPUs."""

    name = "ray"

    def __init__(self, address: str | None = None, *, cpus_per_cell: int = 1, num_cpus: int | None = None,
                 max_retries: int = MAX_RETRIES) -> None:
        import_ray()  # before anything runs: a missing Ray is a usage error, not a failed run
        self.address, self.cpus_per_cell, self.num_cpus, self.max_retries = address, cpus_per_cell, num_cpus, max_retries
        self.job: Job | None = None
        self.pending: dict[Any, CellSpec] = {}
        self.owns_ray = False

    def start(self, job: Job) -> dict[str, Any]:
        ray = import_ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, num_cpus=self.num_cpus if self.address is None else None,
                         include_dashboard=False, logging_level="warning", log_to_driver=True)
            except Exception as exc:  # a wrong address, a cluster that is not up
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
                raise ExecutorError(f"could not start or reach {where}: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
            self.owns_ray = True
        self.job = job
        gpus = self._gpus_per_cell(job, ray)
        self.task = ray.remote(run_cell_task).options(
            num_cpus=self.cpus_per_cell, num_gpus=gpus, max_retries=self.max_retries, retry_exceptions=False)
        self.payload = ray.put({"token": uuid.uuid4().hex, "suite": job.suite, "registry": job.registry,
                                "context": job.context, "cwd": os.getcwd()})
        nodes = [{"host": n.get("NodeManagerHostname"), "node_id": n.get("NodeID"),
                  "resources": {k: v for k, v in n.get("Resources", {}).items() if k in ("CPU", "GPU", "memory")}}
                 for n in ray.nodes() if n.get("Alive")]
        return {"name": self.name, "address": self.address or "local instance", "ray": ray.__version__,
                "nodes": nodes, "per_cell": {"num_cpus": self.cpus_per_cell, "num_gpus": gpus,
                                             "max_retries": self.max_retries}}

    def _gpus_per_cell(self, job: Job, ray: Any) -> int:
        """1 when the suite asks for CUDA (or 'auto' on a cluster that has GPUs), else 0."""
        device = str(job.suite.device)
        if device.startswith("cuda"):
            return 1
        return int(device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)

    def run(self, cells: list[CellSpec]) -> Iterator[Finished]:
        ray = import_ray()
        assert self.job is not None, "start() first"
        self.pending = {self.task.remote(self.payload, cell, self.cpus_per_cell): cell for cell in cells}
        while self.pending:
            done, _ = ray.wait(list(self.pending), num_returns=1)
            for ref in done:
                cell = self.pending.pop(ref)
                yield self._collect(ray, ref, cell)

    def _collect(self, ray: Any, ref: Any, cell: CellSpec) -> Finished:
        job = self.job
        try:
            out = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # an error outside run_cell (loading the model in the worker)
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            error = f"in the Ray worker: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
        except ray.exceptions.RayError as exc:  # the worker died on every attempt
            error = (f"Ray worker lost {self.max_retries + 1} times: {type(exc).__name__}: "
                     f"{str(exc).splitlines()[0] if str(exc) else ''}")
        else:
            job.context.info.update(out["metric_info"])
            return Finished(out["record"], out["files"])
        record = failed_record(job.suite, cell, job.models[cell.model.key], job.registry, error)
        record["worker"] = {"executor": self.name, "host": None, "device": None}
        return Finished(record)

    def close(self) -> None:
        if self.pending:
            ray = import_ray()
            for ref in self.pending:
                ray.cancel(ref, force=True)
            self.pending = {}
        if self.owns_ray:
            import_ray().shutdown()
            self.owns_ray = False
        self.job = None
