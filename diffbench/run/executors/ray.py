"""The Ray executor: one Ray task per cell on a local instance or a cluster; the driver writes the results.

Each task loads the suite's models in its worker process (once per process and run, on the device
the worker sees: Ray gives a ``num_gpus=1`` task its own GPU), warms each up untimed with the run's own
warm-up (``preparation.warm_up``, sampling only: the driver's preparation checked the metrics), runs the cell
with torch limited to the task's CPUs, and returns the record with its sample picture as bytes.
A worker process that dies is retried by Ray (``max_retries``); a Python error inside a cell is the
cell's recorded failure and is not retried (Ray's ``retry_exceptions`` stays off).

With ``cell_parts=K`` every cell is instead split into K sample-index ranges per seed group, one
task each (``diffbench.run.executors.split``): the tasks return feature rows, and the driver gathers
them and scores each metric once, so one big cell uses K workers and gives the unsplit numbers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import traceback
import uuid
from dataclasses import replace
from typing import Any, Iterator

from diffbench.run.cell import CELL_FAILURES, CellError, run_cell
from diffbench.run.executors import ExecutorError, Finished, Job
from diffbench.run.executors.local import worker_info
from diffbench.run.executors.split import Part, cell_parts, describe_split, gather, sample_part
from diffbench.run.preparation import load_models, warm_up
from diffbench.run.record import failed_record
from diffbench.run.rundir import RunDir
from diffbench.run.suite import CellSpec, expand
from diffbench.run.timelimit import TimeLimitExceeded, time_limit
from diffbench.util.text import error_line

INSTALL = 'pip install "diffbench[ray]"'
MAX_RETRIES = 3  # Ray's default for tasks: a worker that dies is retried this many times
REACH_SECONDS = 10.0  # an --address whose port does not accept a TCP connection within this fails at once


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


def _worker_model(payload: dict[str, Any], cell: CellSpec, threads: int) -> Any:
    """Set the worker up for ``cell``: torch threads, working directory, the model loaded once and warmed once
    (``preparation.warm_up``, starting with ``cell``'s sampler)."""
    import torch

    torch.set_num_threads(threads)
    if os.path.isdir(payload["cwd"]):  # same machine or shared file system: relative paths in the suite work
        os.chdir(payload["cwd"])
    suite, registry = payload["suite"], payload["registry"]
    if _STATE.get("token") != payload["token"]:
        _STATE.clear()
        _STATE.update(token=payload["token"], models=load_models(suite, registry), warmed=set())
    model = _STATE["models"][cell.model.key]
    if cell.model.key not in _STATE["warmed"]:  # first-call costs stay out of the cell's time, as locally
        others = [c for c in expand(suite) if c.model.key == cell.model.key and c.cell_id != cell.cell_id]
        warm_up(suite, [cell, *others], model, registry)
        _STATE["warmed"].add(cell.model.key)
    return model


def _worker_info(record: dict[str, Any], threads: int) -> dict[str, Any]:
    import ray

    return worker_info(
        "ray",
        record,
        node_id=ray.get_runtime_context().get_node_id(),
        gpu_ids=[str(g) for g in ray.get_gpu_ids()],
        threads=threads,
    )


def _files(scratch: RunDir) -> dict[str, bytes]:
    """Every file a cell wrote into its scratch run directory (picture, saved samples) by relative path."""
    return {
        p.relative_to(scratch.path).as_posix(): p.read_bytes() for p in sorted(scratch.path.rglob("*")) if p.is_file()
    }


def run_cell_task(payload: dict[str, Any], cell: CellSpec, threads: int) -> dict[str, Any]:
    """Ray task body: one cell, start to finish, in a worker process; returns its record and files."""
    suite, registry = payload["suite"], payload["registry"]
    model = _worker_model(payload, cell, threads)
    context = replace(payload["context"], device=model.device, info={})
    with tempfile.TemporaryDirectory(prefix="diffbench-cell-") as tmp:
        scratch = RunDir(tmp)  # the worker never writes the run directory; its files travel as bytes
        record = run_cell(suite, cell, model, registry, context, scratch, _NoBar(), time_limit=suite.time_limit)
        files = _files(scratch)
    record["worker"] = _worker_info(record, threads)
    return {"record": record, "files": files, "metric_info": context.info}


def sample_part_task(payload: dict[str, Any], cell: CellSpec, part: Part, threads: int) -> dict[str, Any]:
    """Ray task body: one index range of one cell's seed group, sampled into feature rows (an error is returned)."""
    suite, registry = payload["suite"], payload["registry"]
    model = _worker_model(payload, cell, threads)
    context = replace(payload["context"], device=model.device, info={})
    try:
        with tempfile.TemporaryDirectory(prefix="diffbench-part-") as tmp, time_limit(suite.time_limit):
            scratch = RunDir(tmp)
            out = sample_part(suite, cell, model, registry, context, part, scratch)
            out["files"] = _files(scratch)
    except (*CELL_FAILURES, TimeLimitExceeded) as exc:  # the cell's failure, recorded by the driver
        return {
            "part": part,
            "error": str(exc) if isinstance(exc, TimeLimitExceeded) else error_line(exc),
            "traceback": traceback.format_exc(),
        }
    out.update(metric_info=context.info, worker=_worker_info({"device": str(model.device)}, threads))
    return out


# --- driver side -------------------------------------------------------------------------------


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set within the block where the user has not set them."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def check_reachable(address: str | None, timeout: float = REACH_SECONDS) -> None:
    """ExecutorError unless ``address`` (``host:port`` or ``ray://host:port``) accepts a TCP connection within
    ``timeout`` seconds; Ray's own connect retries for minutes on an address where nothing listens.
    None, 'auto' and 'local' are Ray's to resolve (it fails at once when no cluster is found)."""
    if address is None or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ExecutorError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError, OverflowError) as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (getattr(exc, "strerror", None) or str(exc))
        raise ExecutorError(
            f"--address {address}: no Ray cluster answers there ({reason}; waited at most {timeout:g} s)"
        ) from None


class RayExecutor:
    """One Ray task per cell (or ``cell_parts`` per seed group): ``num_gpus=1`` on CUDA, else ``cpus_per_cell`` CPUs."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        cpus_per_cell: int = 1,
        num_cpus: int | None = None,
        max_retries: int = MAX_RETRIES,
        cell_parts: int = 1,
    ) -> None:
        import_ray()  # before anything runs: a missing Ray is a usage error, not a failed run
        check_reachable(address)  # likewise an address where no cluster answers (bounded: REACH_SECONDS)
        if cell_parts < 1:
            raise ExecutorError(f"--cell-parts must be at least 1, got {cell_parts}")
        self.address, self.cpus_per_cell, self.num_cpus, self.max_retries = (
            address,
            cpus_per_cell,
            num_cpus,
            max_retries,
        )
        self.cell_parts = cell_parts
        self.job: Job | None = None
        self.pending: dict[Any, Any] = {}
        self.owns_ray = False

    def start(self, job: Job) -> dict[str, Any]:
        ray = import_ray()
        if not ray.is_initialized():
            try:
                # one connection attempt, not Ray's 20 (minutes on a port that answers but is not Ray's)
                env = {"RAY_gcs_server_port_wait_time_s": "1"} if self.address not in (None, "local") else {}
                with _environ(env):
                    ray.init(
                        address=self.address,
                        num_cpus=self.num_cpus if self.address is None else None,
                        include_dashboard=False,
                        logging_level="warning",
                        log_to_driver=True,
                    )
            except Exception as exc:  # a wrong address, a cluster that is not up
                with contextlib.suppress(Exception):
                    ray.shutdown()  # whatever ray.init started before it failed
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
                raise ExecutorError(f"could not start or reach {where}: {error_line(exc)}") from None
            self.owns_ray = True
        self.job = job
        gpus = self._gpus_per_cell(job, ray)
        options = dict(num_cpus=self.cpus_per_cell, num_gpus=gpus, max_retries=self.max_retries, retry_exceptions=False)
        self.cell_task = ray.remote(run_cell_task).options(**options)
        self.part_task = ray.remote(sample_part_task).options(**options)
        self.payload = ray.put(
            {
                "token": uuid.uuid4().hex,
                "suite": job.suite,
                "registry": job.registry,
                "context": job.context,
                "cwd": os.getcwd(),
            }
        )
        nodes = [
            {
                "host": n.get("NodeManagerHostname"),
                "node_id": n.get("NodeID"),
                "resources": {k: v for k, v in n.get("Resources", {}).items() if k in ("CPU", "GPU", "memory")},
            }
            for n in ray.nodes()
            if n.get("Alive")
        ]
        return {
            "name": self.name,
            "address": self.address or "local instance",
            "ray": ray.__version__,
            "nodes": nodes,
            "per_cell": {"num_cpus": self.cpus_per_cell, "num_gpus": gpus, "max_retries": self.max_retries},
            "cell_parts": self.cell_parts,
            **({"cell_split": describe_split(job.suite, self.cell_parts)} if self.cell_parts > 1 else {}),
        }

    def _gpus_per_cell(self, job: Job, ray: Any) -> int:
        """1 when the suite asks for CUDA (or 'auto' on a cluster that has GPUs), else 0."""
        device = str(job.suite.device)
        if device.startswith("cuda"):
            return 1
        return int(device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)

    def run(self, cells: list[CellSpec]) -> Iterator[Finished]:
        assert self.job is not None, "start() first"
        if self.cell_parts > 1:
            yield from self._run_split(cells)
            return
        ray = import_ray()
        self.pending = {self.cell_task.remote(self.payload, cell, self.cpus_per_cell): cell for cell in cells}
        while self.pending:
            done, _ = ray.wait(list(self.pending), num_returns=1)
            for ref in done:
                cell = self.pending.pop(ref)
                yield self._collect(ray, ref, cell)

    def _get(self, ray: Any, ref: Any) -> tuple[Any, str | None]:
        """A task's result, or None with the error: one outside the cell's code, or a worker lost every time."""
        try:
            return ray.get(ref), None
        except ray.exceptions.RayTaskError as exc:  # an error outside run_cell (loading the model in the worker)
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            return None, f"in the Ray worker: {error_line(cause)}"
        except ray.exceptions.RayError as exc:  # the worker died on every attempt
            return None, f"Ray worker lost {self.max_retries + 1} times: {error_line(exc)}"

    def _collect(self, ray: Any, ref: Any, cell: CellSpec) -> Finished:
        job = self.job
        out, error = self._get(ray, ref)
        if error is None:
            job.context.info.update(out["metric_info"])
            return Finished(out["record"], out["files"])
        record = failed_record(job.suite, cell, job.models[cell.model.key], job.registry, error)
        record["worker"] = {"executor": self.name, "host": None, "device": None}
        return Finished(record)

    def _run_split(self, cells: list[CellSpec]) -> Iterator[Finished]:
        """Every cell as ``cell_parts`` tasks per seed group; a cell is scored here once all its parts are in."""
        ray = import_ray()
        parts = {cell.cell_id: cell_parts(self.job.suite, self.cell_parts) for cell in cells}
        outputs: dict[str, list[dict[str, Any]]] = {cell.cell_id: [] for cell in cells}
        self.pending = {
            self.part_task.remote(self.payload, cell, part, self.cpus_per_cell): (cell, part)
            for cell in cells
            for part in parts[cell.cell_id]
        }
        while self.pending:
            done, _ = ray.wait(list(self.pending), num_returns=1)
            for ref in done:
                cell, part = self.pending.pop(ref)
                out, error = self._get(ray, ref)
                outputs[cell.cell_id].append(out if error is None else {"part": part, "error": error})
                if len(outputs[cell.cell_id]) == len(parts[cell.cell_id]):
                    yield self._score_split(cell, outputs.pop(cell.cell_id))

    def _score_split(self, cell: CellSpec, outputs: list[dict[str, Any]]) -> Finished:
        """The cell's record from its parts: run_cell with the gathered rows in place of its own sampling."""
        job = self.job
        for out in outputs:
            job.context.info.update(out.get("metric_info") or {})

        def groups(seed: int, plan: Any) -> Any:
            mine = [o for o in outputs if o["part"].seed == seed]
            failed = next((o for o in mine if "error" in o), None)
            if failed is not None:
                p = failed["part"]
                raise CellError(
                    f"samples {p.first_index}..{p.first_index + p.count - 1} of seed {seed}: {failed['error']}"
                )
            return gather(plan, mine)

        record = run_cell(
            job.suite,
            cell,
            job.models[cell.model.key],
            job.registry,
            job.context,
            job.run,
            _NoBar(),
            time_limit=job.suite.time_limit,
            groups=groups,
        )
        ran = [o for o in outputs if "worker" in o]
        record["worker"] = {
            "executor": self.name,
            "host": ",".join(sorted({o["worker"]["host"] for o in ran})) or None,
            "device": ",".join(sorted({str(o["worker"]["device"]) for o in ran})) or None,
            "parts": [
                {**o["worker"], "seed": o["part"].seed, "first_index": o["part"].first_index, "count": o["part"].count}
                for o in ran
            ],
        }
        failed_part = next((o for o in outputs if "traceback" in o), None)
        if failed_part is not None and record.get("traceback"):
            record["traceback"] += "\nIn the worker:\n" + failed_part["traceback"]
        saved = sum(o.get("saved", 0) for o in outputs)
        if saved and record["status"] == "ok":
            record["saved_samples"] = {
                "mode": job.suite.save_samples,
                "files": saved,
                "folder": f"samples/{cell.cell_id}",
            }
        files = {path: data for o in outputs for path, data in (o.get("files") or {}).items()}
        return Finished(record, files)  # the driver drew the picture into the run directory itself

    def close(self) -> None:
        if self.pending and not self.owns_ray:  # shutting down a Ray we started stops its tasks and workers
            ray = import_ray()
            # force-cancelling a task that has just finished trips a check inside Ray: only those still running
            _, running = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
            for ref in running:
                ray.cancel(ref, force=True)
        self.pending = {}
        if self.owns_ray:
            import_ray().shutdown()
            self.owns_ray = False
        self.job = None
