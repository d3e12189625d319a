"""One sampling call: model × sampler × scheduler × steps over seeded per-sample noise."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffbench.denoiser import DiffusionModel, NetworkCounter, SigmaDenoiser, evaluations_per_call
from diffbench.devices import resolve_device, resolve_dtype, synchronize
from diffbench.registry import BUILTIN_PLUGIN, Component, Registry, default_registry
from diffbench.schedulers import StepGrid, materialize
from diffbench.seeding import StepNoise, initial_noise


def resolve_options(component: Component, given: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults of ``component`` overridden by ``given``; unknown options are a ValueError."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(component.options))
    if unknown:
        allowed = ", ".join(sorted(component.options)) or "none"
        raise ValueError(f"{component.kind} {component.name!r} has no option {unknown[0]!r}; options: {allowed}")
    return {**component.options, **given}


@dataclass
class SampleResult:
    """Samples and what it took to make them: measured NFE, the grid, every option, timings."""

    samples: Tensor  # (num_samples, *shape), on the CPU
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

    @property
    def seconds_per_sample(self) -> float:
        return self.sample_seconds / max(len(self.samples), 1)

    @property
    def network_share(self) -> float:
        return self.network_seconds / self.sample_seconds if self.sample_seconds > 0 else float("nan")


class SamplerOutputError(ValueError):
    """A sampler's batch is not finite samples of the model's shape and dtype, or it miscounts its NFE."""


def check_batch(x: Any, rows: int, model: DiffusionModel, sampler: str, first: int) -> None:
    """Raise SamplerOutputError unless ``x`` is a finite (rows, *model.shape) tensor of the model's dtype."""
    where = f"sampler {sampler!r} (samples {first}..{first + rows - 1})"
    if not isinstance(x, Tensor):
        raise SamplerOutputError(f"{where} returned {type(x).__name__}, not a tensor")
    if tuple(x.shape) != (rows, *model.shape):
        raise SamplerOutputError(f"{where} returned shape {tuple(x.shape)}, expected {(rows, *model.shape)}")
    if x.dtype != model.dtype:
        raise SamplerOutputError(f"{where} returned dtype {str(x.dtype).replace('torch.', '')}, expected "
                                 f"{str(model.dtype).replace('torch.', '')}")
    bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
    if bad:
        raise SamplerOutputError(f"{where} returned non-finite samples: {bad} of {rows}")


def check_nfe(counted: float, declared: int, comp: Component) -> str | None:
    """A counted NFE that differs from the declared one: an error for a built-in, a warning for a plugin."""
    if counted == declared:
        return None
    text = (f"sampler {comp.name!r} made {counted:g} network evaluations per sample but declares {declared}")
    if comp.plugin == BUILTIN_PLUGIN:
        raise SamplerOutputError(text)
    return f"{text} (plugin {comp.plugin!r}; its cost axis uses the counted NFE)"


def make_grid(model: DiffusionModel, scheduler: str, steps: int, options: dict[str, Any] | None = None, *,
              quantize: bool = False, final_zero: bool = True,
              registry: Registry | None = None) -> tuple[StepGrid, dict[str, Any]]:
    """Materialise the σ list for ``model`` and return it with the resolved scheduler options."""
    comp = (registry or default_registry()).get("scheduler", scheduler)
    opts = resolve_options(comp, options)
    return materialize(comp.obj, model.schedule, steps, quantize=quantize, final_zero=final_zero, **opts), opts


def sample_labels(model: DiffusionModel, indices: list[int], conditional: bool) -> Tensor | None:
    """Class label of sample i is i mod num_classes (balanced, batch-independent); None if unconditional."""
    if model.num_classes is None or not conditional:
        return None
    return torch.tensor([i % model.num_classes for i in indices], dtype=torch.long, device=model.device)


def sample(model: DiffusionModel, sampler: str = "euler", *, steps: int, scheduler: str = "karras",
           sampler_options: dict[str, Any] | None = None, scheduler_options: dict[str, Any] | None = None,
           quantize: bool = False, final_zero: bool = True, num_samples: int = 16, seed: int = 0, first_index: int = 0,
           batch_size: int = 256, conditional: bool = True, guidance: float | None = None,
           clip_x0: bool = False, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
           registry: Registry | None = None, progress=None) -> SampleResult:
    """Draw ``num_samples`` samples; sample i starts from noise seeded by (seed, first_index + i).

    ``progress`` is an optional callable(n_done) invoked after each batch. Each batch is checked:
    a result that is not finite samples of the model's shape and dtype, or a built-in sampler whose
    counted NFE differs from its declared NFE, raises SamplerOutputError; for a plugin sampler the
    NFE mismatch is a warning in ``meta["warnings"]``. ``device``/``dtype`` other than the model's
    sample a converted copy: the caller's model is left as it was.
    """
    registry = registry or default_registry()
    comp = registry.get("sampler", sampler)
    s_opts = resolve_options(comp, sampler_options)
    dev = resolve_device(device) if device is not None else model.device
    model = model.placed(dev, resolve_dtype(dtype, model.dtype))
    grid, sch_opts = make_grid(model, scheduler, steps, scheduler_options, quantize=quantize,
                               final_zero=final_zero, registry=registry)
    if guidance is not None and model.num_classes is None:
        raise ValueError(f"model {model.name!r} is unconditional; guidance needs a class-conditional model")
    if guidance is not None and not conditional:
        raise ValueError("guidance needs conditional=True (unconditional sampling has no labels to guide)")
    if batch_size < 1 or num_samples < 1:
        raise ValueError("num_samples and batch_size must be positive")

    stochastic = comp.meta.get("stochastic")  # optional for third-party samplers: unknown → maybe stochastic
    sigmas = grid.sigmas
    sigma_start = float(sigmas[0])
    declared = comp.meta["nfe"](sigmas, **s_opts) * evaluations_per_call(guidance)
    warnings: list[str] = []
    outs, all_labels, nfe_rows, sample_seconds, network_seconds = [], [], 0.0, 0.0, 0.0
    with torch.inference_mode():
        for start in range(0, num_samples, batch_size):
            idx = list(range(first_index + start, first_index + min(start + batch_size, num_samples)))
            labels = sample_labels(model, idx, conditional)
            counter = NetworkCounter(len(idx), dev)
            den = SigmaDenoiser(model, labels=labels, guidance=guidance, clip_x0=clip_x0, counter=counter)
            den.prepare(sigmas)  # σ → t conversions are grid set-up, not sampling time
            x = initial_noise(seed, idx, model.shape, device=dev, dtype=model.dtype) * sigma_start
            noise = StepNoise(seed, idx, model.shape, len(sigmas) - 1, device=dev, dtype=model.dtype)
            if stochastic is None or stochastic(**s_opts):
                noise(0)  # draw the bank before the clock starts: RNG set-up is not sampling time
            synchronize(dev)
            t0 = time.perf_counter()
            x = comp.obj(den, x, sigmas, noise=noise, **s_opts)
            synchronize(dev)
            sample_seconds += time.perf_counter() - t0
            network_seconds += counter.network_seconds()
            nfe_rows += counter.rows
            check_batch(x, len(idx), model, sampler, idx[0])
            warning = check_nfe(counter.rows / len(idx), declared, comp)
            if warning is not None and warning not in warnings:
                warnings.append(warning)
            outs.append(x.detach().to("cpu"))
            if labels is not None:
                all_labels.append(labels.cpu())
            if progress is not None:
                progress(len(idx))
    samples = torch.cat(outs)
    return SampleResult(
        samples=samples, labels=torch.cat(all_labels) if all_labels else None, nfe=nfe_rows / num_samples,
        declared_nfe=declared, grid=grid, sampler=sampler, sampler_options=s_opts, scheduler=scheduler,
        scheduler_options={**sch_opts, "quantize": quantize, "final_zero": final_zero}, sample_seconds=sample_seconds,
        network_seconds=network_seconds,
        meta={"seed": seed, "first_index": first_index, "num_samples": num_samples, "batch_size": batch_size,
              "guidance": guidance, "conditional": conditional, "clip_x0": clip_x0, "device": str(dev),
              "dtype": str(model.dtype).replace("torch.", ""), "warnings": warnings},
    )
