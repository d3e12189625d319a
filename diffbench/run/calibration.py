"""Machine calibration: the bare network's evaluation time, and harness overhead relative to it.

Speed comparisons across machines divide sampling time by the bare network time measured on the
same machine in the same run, so a baseline recorded elsewhere does not raise false alarms.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from diffbench.core.denoiser import DiffusionModel
from diffbench.util.devices import one_thread, synchronize


def _network_inputs(model: DiffusionModel, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *model.shape), generator=gen).to(model.device, model.dtype)
    t_net = model.network_time(1.0, float(model.schedule.t_of_sigma(1.0)))
    t = torch.full((batch_size,), t_net, device=model.device, dtype=model.dtype)
    labels = None
    if model.condition is not None:
        labels = model.condition.for_indices(list(range(batch_size)), model.device, model.dtype)
    return x, t, labels


def time_network_call(model: DiffusionModel, batch_size: int, inputs=None) -> float:
    """Seconds for one bare network evaluation at ``batch_size`` (device synchronised)."""
    x, t, labels = inputs or _network_inputs(model, batch_size)
    with torch.inference_mode():
        synchronize(model.device)
        t0 = time.perf_counter()
        model.network(x, t, labels)
        synchronize(model.device)
    return time.perf_counter() - t0


def bare_network_times(model: DiffusionModel, batch_size: int, *, repeats: int = 10, warmup: int = 2) -> list[float]:
    """Seconds of each of ``repeats`` bare network evaluations at ``batch_size`` after ``warmup`` calls."""
    inputs = _network_inputs(model, batch_size)
    for _ in range(warmup):
        time_network_call(model, batch_size, inputs)
    return [time_network_call(model, batch_size, inputs) for _ in range(repeats)]


def bare_network_seconds(model: DiffusionModel, batch_size: int, *, repeats: int = 10, warmup: int = 2) -> float:
    """Median seconds of one bare network evaluation at ``batch_size`` after ``warmup`` calls."""
    return statistics.median(bare_network_times(model, batch_size, repeats=repeats, warmup=warmup))


COUNTED_TIME_METHOD = (
    "counted NFE × (bare network call on one batch of the suite's batch_size: the minimum of "
    "the run's calibration calls + the cell's harness CPU time per call: lower quartile) / "
    "batch_size"
)
# Identical work (same NFE, same model and batch) gets the same network part exactly; the harness part is each
# sampler's own measured CPU time per call, so samplers doing the same arithmetic agree within its spread
# (tests/benchmarks/test_counted_time.py measures it).


def counted_seconds_per_sample(record: dict[str, Any], calibration: dict[str, Any]) -> dict[str, Any]:
    """A cell's time per sample a busy machine does not move: counted NFE × (calibrated bare network call +
    the cell's measured harness CPU time per call) / batch size, and how it was made; {} when it cannot be."""
    nfe, harness = record.get("nfe"), record.get("harness_seconds_per_call")
    bare, batch = calibration.get("network_seconds_per_call_min"), calibration.get("batch_size")
    if not nfe or harness is None or not bare or not batch:
        return {}
    return {
        "counted_seconds_per_sample": float(nfe) * (float(bare) + float(harness)) / batch,
        "timing": {
            "method": COUNTED_TIME_METHOD,
            "network_seconds_per_call": bare,
            "harness_seconds_per_call": harness,
            "batch_size": batch,
        },
    }


REFERENCE_SHAPE = (64, 256)  # 16384 float32 values: below torch's parallel grain, so one thread does the work
REFERENCE_OPS = 64
REFERENCE_PIECES = 16  # timed separately: pieces as short as the harness's gaps between network calls


def reference_work() -> Callable[[], float]:
    """A fixed piece of harness-like work (small elementwise tensor ops driven from Python); calling the
    returned function does it once and returns the median thread CPU seconds of its ``REFERENCE_PIECES``
    pieces (each ``REFERENCE_OPS / REFERENCE_PIECES`` ops), the same statistic the harness probe takes of
    the gaps between network calls, so both see load alike (a preemption spoils one piece, not the median)."""
    x = torch.linspace(-1.0, 1.0, REFERENCE_SHAPE[0] * REFERENCE_SHAPE[1]).reshape(REFERENCE_SHAPE)
    d = torch.full(REFERENCE_SHAPE, 0.5)
    per_piece = REFERENCE_OPS // REFERENCE_PIECES

    def work() -> float:
        y, pieces = x, []
        with torch.inference_mode():
            for piece in range(REFERENCE_PIECES):
                t0 = time.thread_time()
                for k in range(piece * per_piece, (piece + 1) * per_piece):
                    y = y + (0.001 * k) * (y - d)
                pieces.append(time.thread_time() - t0)
        return statistics.median(pieces)

    work()  # warm-up: allocator, dispatch caches
    return work


def cpu_reference_seconds(repeats: int = 15) -> float:
    """Median over repeats of ``reference_work`` (CPU seconds per piece): the machine's CPU yardstick, in the manifest.

    Thread CPU time leaves out the time the thread waited for a core, so other processes on a shared
    machine move it much less than wall-clock time.
    """
    work = reference_work()
    return statistics.median(work() for _ in range(repeats))


HARNESS_REPEATS = 11
MIN_GAPS = REFERENCE_PIECES  # gaps per repetition: as many as the reference has pieces
HARNESS_METHOD = (
    "cpu-time: the sampler on the cell's grid, batch size and options with a zero network, one "
    "torch thread; median thread CPU time between calls (per repetition a call's first 16, or whole "
    "calls of a shorter sampler until at least 16), minimum over {k} "
    "repetitions, divided by the minimum of the same statistic of a fixed CPU reference work "
    "(16 pieces of 4 small tensor ops) timed between them"
)


def harness_probe(gaps_of_one_call: Callable[[], list[float]], repeats: int = HARNESS_REPEATS) -> dict[str, Any] | None:
    """The harness's CPU time per network call in units of the CPU reference, measured in the same moments.

    ``gaps_of_one_call()`` runs the sampler once (with a near-free network) and returns the thread CPU
    seconds between its consecutive network calls. Each repetition times the reference work, then the
    call (median over its gaps); the minimum over repetitions of each is the least disturbed reading, and
    their ratio cancels what slows both alike (a slower machine, a busy core, lower clocks). One torch
    thread, so the figure does not depend on the machine's core count or on a thread pool's spinning.
    None when the sampler makes fewer than two network calls (no gap to time).
    """
    with one_thread():
        work = reference_work()
        if len(gaps_of_one_call()) < 1:  # warm-up, and whether there is anything to time
            return None
        refs, probes = [], []
        for _ in range(repeats):
            refs.append(work())
            gaps: list[float] = []
            while len(gaps) < MIN_GAPS:  # a 5-step sampler has 4 gaps a call: several calls per repetition
                gaps += gaps_of_one_call()
            probes.append(statistics.median(gaps))
    seconds, ref = min(probes), min(refs)
    return {
        "method": "cpu-time",
        "seconds_per_call": seconds,
        "reference_seconds": ref,
        "ratio": seconds / ref,
        "repeats": repeats,
        "spread": max(probes) / seconds if seconds > 0 else None,
    }


@dataclass(frozen=True)
class Overhead:
    """Harness overhead: sampling wall-clock / (NFE × bare network time) − 1, per repetition."""

    ratios: list[float]
    bare_seconds: list[float]
    sample_seconds: list[float]
    nfe: float

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    def as_dict(self) -> dict[str, Any]:
        return {
            "overhead_median": self.median,
            "ratios": self.ratios,
            "nfe": self.nfe,
            "bare_seconds_median": statistics.median(self.bare_seconds),
            "sample_seconds_median": statistics.median(self.sample_seconds),
        }


def harness_overhead(
    model: DiffusionModel,
    sampler: str = "euler",
    *,
    steps: int = 20,
    batch_size: int = 256,
    repeats: int = 10,
    scheduler: str = "karras",
    **sample_kwargs: Any,
) -> Overhead:
    """Interleave bare-network timings with full sampling calls; each repetition pairs the two.

    The bare time of a repetition is the mean of NFE calls made right before its sampling call, so
    both sides see the same machine state (thermal, other load) and are the same statistic: a total
    over NFE calls (a median of the bare calls would drop the slow tail that the sampling total keeps,
    and read load spikes as harness overhead).
    """
    from diffbench.run.sampling import sample

    kw = dict(steps=steps, scheduler=scheduler, num_samples=batch_size, batch_size=batch_size, **sample_kwargs)
    first = sample(model, sampler, **kw)  # warm-up, and the NFE this configuration makes
    nfe = first.nfe
    inputs = _network_inputs(model, batch_size)
    ratios, bares, samples = [], [], []
    for _ in range(repeats):
        bare = statistics.fmean(time_network_call(model, batch_size, inputs) for _ in range(max(3, round(nfe))))
        res = sample(model, sampler, **kw)
        ratios.append(res.sample_seconds / (nfe * bare) - 1.0)
        bares.append(bare)
        samples.append(res.sample_seconds)
    return Overhead(ratios, bares, samples, nfe)
