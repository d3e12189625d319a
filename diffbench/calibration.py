"""Machine calibration: the bare network's evaluation time, and harness overhead relative to it.

Speed comparisons across machines divide sampling time by the bare network time measured on the
same machine in the same run, so a baseline recorded elsewhere does not raise false alarms.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from diffbench.denoiser import DiffusionModel
from diffbench.devices import synchronize


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


COUNTED_TIME_METHOD = ("counted NFE × (bare network call on one batch of the suite's batch_size: the minimum of "
                       "the run's calibration calls + the cell's harness CPU time per call: lower quartile) / "
                       "batch_size")
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
    return {"counted_seconds_per_sample": float(nfe) * (float(bare) + float(harness)) / batch,
            "timing": {"method": COUNTED_TIME_METHOD, "network_seconds_per_call": bare,
                       "harness_seconds_per_call": harness, "batch_size": batch}}


REFERENCE_SHAPE = (64, 256)  # 16384 float32 values: below torch's parallel grain, so one thread does the work
REFERENCE_OPS = 64


def cpu_reference_seconds(repeats: int = 15) -> float:
    """Median CPU time of this thread for a fixed piece of harness-like work (small elementwise tensor ops
    driven from Python): the yardstick compare divides harness time by to compare machines.

    Thread CPU time leaves out the time the thread waited for a core, so other processes on a shared
    machine move it much less than wall-clock time.
    """
    x = torch.linspace(-1.0, 1.0, REFERENCE_SHAPE[0] * REFERENCE_SHAPE[1]).reshape(REFERENCE_SHAPE)
    d = torch.full(REFERENCE_SHAPE, 0.5)

    def work() -> float:
        y = x
        t0 = time.thread_time()
        for k in range(REFERENCE_OPS):
            y = y + (0.001 * k) * (y - d)
        return time.thread_time() - t0

    with torch.inference_mode():
        work()  # warm-up: allocator, dispatch caches
        return statistics.median(work() for _ in range(repeats))


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
        return {"overhead_median": self.median, "ratios": self.ratios, "nfe": self.nfe,
                "bare_seconds_median": statistics.median(self.bare_seconds),
                "sample_seconds_median": statistics.median(self.sample_seconds)}


def harness_overhead(model: DiffusionModel, sampler: str = "euler", *, steps: int = 20, batch_size: int = 256,
                     repeats: int = 10, scheduler: str = "karras", **sample_kwargs: Any) -> Overhead:
    """Interleave bare-network timings with full sampling calls; each repetition pairs the two.

    The bare time of a repetition is the mean of NFE calls made right before its sampling call, so
    both sides see the same machine state (thermal, other load) and are the same statistic: a total
    over NFE calls (a median of the bare calls would drop the slow tail that the sampling total keeps,
    and read load spikes as harness overhead).
    """
    from diffbench.sampling import sample

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
