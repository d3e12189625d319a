"""One cell across several workers: sample-index ranges sampled apart, features gathered, metrics scored once.

EDM's multi-GPU sharding of one FID evaluation, on any executor: a seed group of ``num_samples``
samples is cut into ``parts`` index ranges on batch boundaries, so every batch holds the same
samples as in the unsplit cell (sample i's noise depends only on (seed, i), and the network sees
the same batch, so not even BLAS rounding differs). A seed group with fewer batches than parts is
cut inside its batches instead (same samples and noise; smaller network batches). Each part streams its
batches through the
metrics' feature extractors and returns the rows with their sample indices; the gathered rows
are concatenated in sample-index order and each metric is scored once, as ``run_cell`` does for
an unsplit cell. Counted NFE, sampling and network seconds add up over the parts.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from diffbench.cell import SampledGroup, metric_plan, stream_group
from diffbench.denoiser import DiffusionModel
from diffbench.metrics.base import MetricContext
from diffbench.metrics.stream import MetricPlan
from diffbench.registry import Registry
from diffbench.results import RunDir
from diffbench.sampling import SampleResult
from diffbench.saving import SampleSaver
from diffbench.suite import CellSpec, Suite


@dataclasses.dataclass(frozen=True)
class Part:
    """Samples ``first_index`` … ``first_index + count − 1`` of seed group ``seed``."""

    seed: int
    first_index: int
    count: int


def split_ranges(num_samples: int, batch_size: int, parts: int) -> list[tuple[int, int]]:
    """(first_index, count) of ``parts`` ranges covering 0 … num_samples − 1 (fewer only when there are fewer
    samples): cut on batch boundaries when there are at least ``parts`` batches, else into ranges whose
    sizes differ by at most one sample (each then smaller than a batch)."""
    batches = math.ceil(num_samples / batch_size)
    if parts > batches:
        k = max(1, min(parts, num_samples))
        sizes = [num_samples // k + (j < num_samples % k) for j in range(k)]
        return [(sum(sizes[:j]), n) for j, n in enumerate(sizes)]
    k = max(1, parts)
    out, b = [], 0
    for j in range(k):  # k runs of whole batches, lengths differing by at most one batch
        n = batches // k + (j < batches % k)
        first = b * batch_size
        out.append((first, min(num_samples, (b + n) * batch_size) - first))
        b += n
    return out


def describe_split(suite: Suite, parts: int) -> str:
    """One line on how ``--cell-parts`` cuts the suite's seed groups (and why into fewer parts, when it must)."""
    ranges = split_ranges(suite.num_samples, suite.batch_size, parts)
    sizes = sorted({n for _, n in ranges})
    size = f"{sizes[0]}-{sizes[-1]}" if len(sizes) > 1 else str(sizes[0])
    line = f"--cell-parts {parts}: each seed group of {suite.num_samples} samples runs as {len(ranges)} parts of {size}"
    if len(ranges) < parts:
        return f"{line} (not {parts}: a seed group has only {suite.num_samples} samples)"
    if math.ceil(suite.num_samples / suite.batch_size) < parts:
        return (f"{line}, cut inside batches of {suite.batch_size} (fewer batches than parts): the samples and noise "
                "are the unsplit cell's; the network sees smaller batches, which may round differently in the last "
                "bits, as any batch_size does")
    return f"{line} on batch boundaries (the unsplit cell's batches)"


def cell_parts(suite: Suite, parts: int) -> list[Part]:
    """Every part of one cell: each seed group cut into ``parts`` ranges."""
    return [Part(seed, first, count) for seed in suite.seeds
            for first, count in split_ranges(suite.num_samples, suite.batch_size, parts)]


def sample_part(suite: Suite, cell: CellSpec, model: DiffusionModel, registry: Registry, context: MetricContext,
                part: Part, run: RunDir) -> dict[str, Any]:
    """Sample one part and extract its feature rows; returns plain, picklable data (``gather`` joins them).

    Samples the suite asks to save (``save_samples``) are written under ``run`` as a whole cell would.
    """
    plan = metric_plan(suite, model, registry, context)
    preview = part.seed == suite.seeds[0] and part.first_index == 0  # the cell's picture: seed group 1's first samples
    saver = SampleSaver(suite.save_samples, run.path / "samples" / cell.cell_id, tuple(model.data_range))
    group = stream_group(suite, cell, model, registry, plan, part.seed, preview, first_index=part.first_index,
                         num_samples=part.count, saver=saver)
    return {"part": part, "rows": group.rows.export(), "preview": group.preview, "result": group.result,
            "saved": saver.files}


def combine_results(results: list[SampleResult]) -> SampleResult:
    """The SampleResult of one seed group from those of its parts (in index order): NFE and times add up.

    The per-call network times and harness gaps are each batch's own (one counter per batch, and parts are cut
    on batch boundaries), so joining the parts' lists gives exactly the lists of the unsplit cell.
    """
    counts = [int(r.meta["num_samples"]) for r in results]
    n = sum(counts)
    rows = sum(round(r.nfe * c) for r, c in zip(results, counts))  # network evaluations are whole rows
    labels = [r.labels for r in results if r.labels is not None]
    warnings = [w for r in results for w in r.meta.get("warnings", [])]
    first = results[0]
    decode = [r.decode_seconds for r in results if r.decode_seconds is not None]
    return dataclasses.replace(
        first, nfe=rows / n, labels=torch.cat(labels) if labels else None,
        sample_seconds=sum(r.sample_seconds for r in results), network_seconds=sum(r.network_seconds for r in results),
        decode_seconds=sum(decode) if decode else None,
        call_seconds=[t for r in results for t in r.call_seconds],
        gap_seconds=[t for r in results for t in r.gap_seconds],
        meta={**first.meta, "num_samples": n, "warnings": list(dict.fromkeys(warnings)), "parts": len(results),
              "devices": sorted({str(r.meta.get("device")) for r in results})})


def gather(plan: MetricPlan, outputs: list[dict[str, Any]]) -> SampledGroup:
    """One seed group's rows, preview and result from its parts' ``sample_part`` outputs."""
    outputs = sorted(outputs, key=lambda o: o["part"].first_index)
    rows = plan.rows()
    for out in outputs:
        rows.absorb(out["rows"])
    preview = next((o["preview"] for o in outputs if o["preview"] is not None), None)
    return SampledGroup(rows, preview, combine_results([o["result"] for o in outputs]))
