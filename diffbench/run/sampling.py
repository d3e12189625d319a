"""One sampling call: model × sampler × scheduler × steps over seeded per-sample noise."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor

from diffbench.core.batch import Batch
from diffbench.core.denoiser import (
    DiffusionModel,
    NetworkCounter,
    SigmaDenoiser,
    evaluations_per_call,
)
from diffbench.core.noise import StepNoise, initial_noise
from diffbench.core.sigma_grids import StepGrid, materialize
from diffbench.registry import (
    BUILTIN_PLUGIN,
    Component,
    Registry,
    default_registry,
    resolve_options,
)
from diffbench.samplers import noise_draws
from diffbench.util.devices import resolve_device, resolve_dtype, synchronize
from diffbench.util.memory import release_free_memory


@dataclass
class SampleResult:
    """Samples and what it took to make them: measured NFE, the grid, every option, timings."""

    samples: Tensor | None  # (num_samples, *shape) on the CPU; None when streamed (sample_batches)
    labels: Tensor | None
    nfe: float  # network evaluations per sample, counted
    declared_nfe: int  # what the sampler declares per denoiser call sequence (× 2 with guidance)
    grid: StepGrid
    sampler: str
    sampler_options: dict[str, Any]
    scheduler: str
    scheduler_options: dict[str, Any]
    sample_seconds: float
    network_seconds: float
    meta: dict[str, Any] = field(default_factory=dict)
    decode_seconds: float | None = None  # latent models: decoding after the timed sampling; None: no decoder
    call_seconds: list[float] = field(default_factory=list)  # time inside the network, per call
    gap_seconds: list[float] = field(default_factory=list)  # thread CPU time between consecutive calls (harness)

    @property
    def seconds_per_sample(self) -> float:
        return self.sample_seconds / max(int(self.meta.get("num_samples") or 0), 1)

    @property
    def network_share(self) -> float:
        return self.network_seconds / self.sample_seconds if self.sample_seconds > 0 else float("nan")


@dataclass(frozen=True)
class SamplingSpec:
    """What one sampling call draws: sampler × scheduler × steps, the options, and which samples.

    The one description of a call that the cell hands to sampling; ``sample()`` and ``sample_batches()``
    build it from their keywords. Device, dtype, registry and progress say where and how it runs, not what
    it draws, so they are arguments of the call, not fields here."""

    sampler: str = "euler"
    steps: int = 10  # scheduler steps (the σ grid has steps + 1 entries with the final 0)
    scheduler: str = "karras"
    sampler_options: dict[str, Any] | None = None  # over the sampler's defaults
    scheduler_options: dict[str, Any] | None = None  # over the scheduler's defaults
    quantize: bool = False  # snap σ to the model's trained timesteps (discrete models)
    final_zero: bool = True  # end the grid at σ = 0
    num_samples: int = 16
    seed: int = 0  # sample i starts from noise seeded by (seed, first_index + i)
    first_index: int = 0
    batch_size: int = 256
    conditional: bool = True  # use the model's condition (labels, prompts) where it has one
    guidance: float | None = None  # classifier-free guidance scale; None: no guidance
    clip_x0: bool = False  # clip the denoised estimate to the data range


class SamplerOutputError(ValueError):
    """A sampler's batch is not finite samples of the model's shape and dtype, or it miscounts its NFE."""


def check_batch(x: Any, rows: int, model: DiffusionModel, sampler: str, first: int) -> None:
    """Raise SamplerOutputError unless ``x`` is a finite (rows, *model.shape) tensor of the model's dtype and device."""
    where = f"sampler {sampler!r} (samples {first}..{first + rows - 1})"
    if not isinstance(x, Tensor):
        raise SamplerOutputError(f"{where} returned {type(x).__name__}, not a tensor")
    if tuple(x.shape) != (rows, *model.shape):
        raise SamplerOutputError(f"{where} returned shape {tuple(x.shape)}, expected {(rows, *model.shape)}")
    if x.dtype != model.dtype:
        raise SamplerOutputError(
            f"{where} returned dtype {str(x.dtype).replace('torch.', '')}, expected "
            f"{str(model.dtype).replace('torch.', '')}"
        )
    if x.device.type != model.device.type:  # the type only: 'cuda' and 'cuda:0' are one device
        raise SamplerOutputError(f"{where} returned a tensor on {x.device}, expected {model.device}")
    bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
    if bad:
        raise SamplerOutputError(f"{where} returned non-finite samples: {bad} of {rows}")


def nfe_mismatch(counted: float, declared: int, comp: Component) -> str | None:
    """A counted NFE that differs from the declared one: an error for a built-in, a warning for a plugin."""
    if counted == declared:
        return None
    text = f"sampler {comp.name!r} made {counted:g} network evaluations per sample but declares {declared}"
    if comp.plugin == BUILTIN_PLUGIN:
        raise SamplerOutputError(text)
    return f"{text} (plugin {comp.plugin!r}; its cost axis uses the counted NFE)"


def make_grid(
    model: DiffusionModel,
    scheduler: str,
    steps: int,
    options: dict[str, Any] | None = None,
    *,
    quantize: bool = False,
    final_zero: bool = True,
    registry: Registry | None = None,
) -> tuple[StepGrid, dict[str, Any]]:
    """Materialise the σ list for ``model`` and return it with the resolved scheduler options."""
    comp = (registry or default_registry()).get("scheduler", scheduler)
    opts = resolve_options(comp, options)
    return materialize(comp.obj, model.schedule, steps, quantize=quantize, final_zero=final_zero, **opts), opts


def sample_labels(model: DiffusionModel, indices: list[int], conditional: bool) -> Tensor | None:
    """Sample i's condition: class label i mod num_classes, or prompt i mod count encoded; None if unconditional."""
    if model.condition is None or not conditional:
        return None
    return model.condition.for_indices(indices, model.device, model.dtype)


def decode_latents(model: DiffusionModel, x: Tensor) -> tuple[Tensor, float]:
    """A latent model's decoded samples and the seconds decoding took (device synchronised)."""
    synchronize(model.device)
    t0 = time.perf_counter()
    out = model.decoder(x)
    synchronize(model.device)
    return out, time.perf_counter() - t0


class SamplingCall:
    """One prepared sampling call; iterating it samples batch by batch and yields each ``Batch``.

    Everything that can be wrong with the call (unknown sampler or option, a grid the model cannot
    take, guidance without labels) raises ValueError here, before any sampling. While iterating,
    ``result`` (a SampleResult with ``samples`` None) accumulates counted NFE, timings and labels;
    it is complete once the iterator is exhausted. Only sampling itself is timed: whatever the
    consumer does with a batch between iterations (feature extraction, checks, saving) is not.

    Each batch is checked before it is yielded: a result that is not finite samples of the model's
    shape and dtype, or a built-in sampler whose counted NFE differs from its declared NFE, raises
    SamplerOutputError; for a plugin sampler the NFE mismatch is a warning in ``meta["warnings"]``.
    ``device``/``dtype`` other than the model's sample a converted copy: the caller's model is left
    as it was.
    """

    def __init__(
        self,
        model: DiffusionModel,
        spec: SamplingSpec,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        registry: Registry | None = None,
        progress=None,
        noise_memo: dict[int, tuple[torch.Tensor, StepNoise]] | None = None,
    ) -> None:
        sampler, steps, scheduler, guidance = spec.sampler, spec.steps, spec.scheduler, spec.guidance
        num_samples, batch_size, conditional = spec.num_samples, spec.batch_size, spec.conditional
        sampler_options, scheduler_options = spec.sampler_options, spec.scheduler_options
        registry = registry or default_registry()
        self.component = comp = registry.get("sampler", sampler)
        s_opts = resolve_options(comp, sampler_options)
        self.device = dev = resolve_device(device) if device is not None else model.device
        model = model.placed(dev, resolve_dtype(dtype, model.dtype))
        grid, sch_opts = make_grid(
            model,
            scheduler,
            steps,
            scheduler_options,
            quantize=spec.quantize,
            final_zero=spec.final_zero,
            registry=registry,
        )
        if guidance is not None and model.condition is None:
            raise ValueError(f"model {model.name!r} is unconditional; guidance needs a conditional model")
        if guidance is not None and not getattr(model.condition, "has_null", True):
            raise ValueError(f"model {model.name!r} has no null condition (label {model.num_classes}) to guide against")
        if guidance is not None and not conditional:
            raise ValueError("guidance needs conditional=True (unconditional sampling has no condition to guide)")
        if batch_size < 1 or num_samples < 1:
            raise ValueError("num_samples and batch_size must be positive")
        self.model, self.progress, self.spec = model, progress, spec
        # each batch's starting noise and step-noise bank, kept across calls of the same spec (the harness
        # probe repeats a call many times and times only what happens between network calls)
        self.noise_memo = noise_memo
        self.counter: NetworkCounter | None = None  # the batch being sampled's counter (the probe reads its gaps)
        self.sampler_options = s_opts
        declared = comp.meta["nfe"](grid.sigmas, **s_opts) * evaluations_per_call(guidance)
        self.result = SampleResult(
            samples=None,
            labels=None,
            nfe=0.0,
            declared_nfe=declared,
            grid=grid,
            sampler=sampler,
            sampler_options=s_opts,
            scheduler=scheduler,
            scheduler_options={**sch_opts, "quantize": spec.quantize, "final_zero": spec.final_zero},
            sample_seconds=0.0,
            network_seconds=0.0,
            decode_seconds=0.0 if model.decoder is not None else None,
            meta={
                "seed": spec.seed,
                "first_index": spec.first_index,
                "num_samples": num_samples,
                "batch_size": batch_size,
                "guidance": guidance,
                "conditional": conditional,
                "clip_x0": spec.clip_x0,
                "device": str(dev),
                "dtype": str(model.dtype).replace("torch.", ""),
                "warnings": [],
                # whether these options draw noise (None: the sampler does not declare it)
                "stochastic": None if comp.meta.get("stochastic") is None else bool(comp.meta["stochastic"](**s_opts)),
            },
        )

    def __iter__(self) -> Iterator[Batch]:
        model, dev, res, comp, s_opts = self.model, self.device, self.result, self.component, self.sampler_options
        spec = self.spec
        stochastic = comp.meta.get("stochastic")  # optional for third-party samplers: unknown → maybe stochastic
        sigmas = res.grid.sigmas
        sigma_start = float(sigmas[0])
        labels_seen, nfe_rows = [], 0.0
        with torch.inference_mode():
            for start in range(0, spec.num_samples, spec.batch_size):
                if start:  # pages freed by earlier batches go back to the OS: RSS stays flat in N (not timed)
                    release_free_memory()
                first = spec.first_index + start
                idx = list(range(first, spec.first_index + min(start + spec.batch_size, spec.num_samples)))
                labels = sample_labels(model, idx, spec.conditional)
                self.counter = counter = NetworkCounter(len(idx), dev)
                den = SigmaDenoiser(model, labels=labels, guidance=spec.guidance, clip_x0=spec.clip_x0, counter=counter)
                den.prepare(sigmas)  # σ → t conversions are grid set-up, not sampling time
                drawn = None if self.noise_memo is None else self.noise_memo.get(start)
                if drawn is None:
                    z = initial_noise(spec.seed, idx, model.shape, device=dev, dtype=model.dtype)
                    noise = StepNoise(
                        spec.seed,
                        idx,
                        model.shape,
                        noise_draws(comp.meta, sigmas, s_opts),
                        device=dev,
                        dtype=model.dtype,
                    )
                    if stochastic is None or stochastic(**s_opts):
                        noise(0)  # draw the bank before the clock starts: RNG set-up is not sampling time
                    if self.noise_memo is not None:
                        self.noise_memo[start] = (z, noise)
                else:
                    z, noise = drawn
                x = z * sigma_start
                synchronize(dev)
                t0 = time.perf_counter()
                x = comp.obj(den, x, sigmas, noise=noise, **s_opts)
                synchronize(dev)
                res.sample_seconds += time.perf_counter() - t0
                res.network_seconds += counter.network_seconds()
                res.call_seconds += counter.call_seconds()
                res.gap_seconds += counter.gap_seconds
                nfe_rows += counter.rows
                res.nfe = nfe_rows / (start + len(idx))
                check_batch(x, len(idx), model, res.sampler, idx[0])
                warning = nfe_mismatch(counter.rows / len(idx), res.declared_nfe, comp)
                if warning is not None and warning not in res.meta["warnings"]:
                    res.meta["warnings"].append(warning)
                if model.decoder is not None:  # after the clock and the checks: neither sampling time nor NFE
                    x, seconds = decode_latents(model, x)
                    res.decode_seconds += seconds
                cpu_labels = labels.cpu() if labels is not None and model.num_classes is not None else None
                if cpu_labels is not None:
                    labels_seen.append(cpu_labels)
                    res.labels = torch.cat(labels_seen)
                if self.progress is not None:
                    self.progress(len(idx))
                yield Batch(x.detach().to("cpu"), torch.arange(first, first + len(idx)), cpu_labels, spec.seed, res)


def sample_batches(
    model: DiffusionModel,
    sampler: str = "euler",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    registry: Registry | None = None,
    progress=None,
    **spec: Any,
) -> SamplingCall:
    """A prepared sampling call (same arguments as ``sample``) to iterate batch by batch; see SamplingCall."""
    return SamplingCall(
        model, SamplingSpec(sampler, **spec), device=device, dtype=dtype, registry=registry, progress=progress
    )


def sample(
    model: DiffusionModel,
    sampler: str = "euler",
    *,
    steps: int,
    scheduler: str = "karras",
    sampler_options: dict[str, Any] | None = None,
    scheduler_options: dict[str, Any] | None = None,
    quantize: bool = False,
    final_zero: bool = True,
    num_samples: int = 16,
    seed: int = 0,
    first_index: int = 0,
    batch_size: int = 256,
    conditional: bool = True,
    guidance: float | None = None,
    clip_x0: bool = False,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    registry: Registry | None = None,
    progress=None,
) -> SampleResult:
    """Draw ``num_samples`` samples; sample i starts from noise seeded by (seed, first_index + i).

    ``progress`` is an optional callable(n_done) invoked after each batch. All samples are kept in
    memory (``result.samples``); ``sample_batches`` streams them instead. Each batch is checked
    (SamplerOutputError, NFE warnings in ``meta["warnings"]``) and ``device``/``dtype`` leave the
    caller's model as it was: see SamplingCall.
    """
    spec = SamplingSpec(
        sampler=sampler,
        steps=steps,
        scheduler=scheduler,
        sampler_options=sampler_options,
        scheduler_options=scheduler_options,
        quantize=quantize,
        final_zero=final_zero,
        num_samples=num_samples,
        seed=seed,
        first_index=first_index,
        batch_size=batch_size,
        conditional=conditional,
        guidance=guidance,
        clip_x0=clip_x0,
    )
    call = SamplingCall(model, spec, device=device, dtype=dtype, registry=registry, progress=progress)
    outs = [batch.samples for batch in call]
    call.result.samples = torch.cat(outs) if len(outs) > 1 else outs[0]
    return call.result
