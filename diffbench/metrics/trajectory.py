"""Trajectory error for any model: distance to a converged solution of the model's own probability-flow ODE.

For a deterministic sampler, each sample is compared with the reference solution of the same denoiser's
probability-flow ODE (same guidance, same clipping) from the same starting noise over the same σ range:
σ_0 → σ_last (the grid's last positive σ), followed, when the grid ends at σ = 0, by the same final step
every diffbench sampler takes there, x = D(x, σ_last). The reference is DPM-Solver++(3M) with the corrected
third-order term on a Karras grid between those σ, its step count doubled until two successive solutions
agree to ``reference_tol`` (mean per-sample RMS) and that difference is at most half the one before it:
the finer solution is kept, and the difference bounds its error (the solver is then converging, at order
3 asymptotically, so the true error is smaller still). The second condition matters on real networks,
whose ODE can converge unevenly: on the digits models shipped before their retrain with a smooth time
embedding, successive differences stalled near 3e-4 from 128 to 1024 steps before falling at order 3 (DDPM's
sinusoidal time embedding made D(x, σ) oscillate in t; see scripts/trajectory_floor.py). Each doubling's
difference is kept in the reference's ``history``.
It is computed once per (model,
seed, sample indices, σ range, dtype, guidance, clipping, labels) and cached as safetensors with a JSON
sidecar. A stochastic sampler has no ODE solution to compare with: the metric is then absent, and the cell
records why.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Hashable

import torch
from torch import Tensor

from diffbench.core.denoiser import SigmaDenoiser
from diffbench.core.noise import initial_noise
from diffbench.metrics.base import Batch, MetricContext, MetricValue, StreamingMetric
from diffbench.samplers.dpm_solver_pp import dpmpp_3m_corrected
from diffbench.util import verified_cache
from diffbench.util.devices import resolve_device, resolve_dtype

# Bounds on the refinement: at most 2·MAX_REFERENCE_STEPS network evaluations per sample for one reference.
MAX_REFERENCE_STEPS = 1 << 16
MIN_REFERENCE_TOL = 1e-12
METHOD = (
    "dpm-solver++-3m-corrected on Karras σ (ρ = 7), steps doubled until successive solutions agree to "
    "reference_tol and their difference has at least halved"
)
ABSENT_STOCHASTIC = (
    "trajectory-error absent: sampler {sampler!r} is stochastic with these options; "
    "there is no ODE trajectory to compare with"
)


def reference_grid(sigma_start: float, sigma_end: float, steps: int, rho: float = 7.0) -> Tensor:
    """``steps`` Karras steps (Karras et al. 2022, eq. 5) from σ_start to σ_end > 0, both ends exact, no trailing 0."""
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    out = (sigma_start ** (1 / rho) + ramp * (sigma_end ** (1 / rho) - sigma_start ** (1 / rho))) ** rho
    out[0], out[-1] = sigma_start, sigma_end
    return out


def per_sample_rms(a: Tensor, b: Tensor) -> Tensor:
    """RMS over each sample's elements of a - b (float64)."""
    return (a.to(torch.float64) - b.to(torch.float64)).flatten(1).square().mean(1).sqrt()


def solve_reference(
    denoiser,
    x: Tensor,
    sigma_start: float,
    sigma_end: float,
    final_zero: bool,
    *,
    reference_tol: float = 1e-4,
    first_steps: int = 64,
    max_steps: int = 2048,
) -> tuple[Tensor, dict[str, Any]]:
    """The probability-flow ODE from ``x`` at σ_start to σ_end (then D(x, σ_end) when ``final_zero``), converged.

    Doubles the steps from ``first_steps`` until the mean per-sample RMS difference between successive
    solutions is ≤ ``reference_tol`` and at most half the previous difference; ValueError if
    ``max_steps`` is reached first. Returns the finer solution and {steps, nfe_per_sample,
    estimated_error, history ([steps, difference from the solution at half as many steps] per
    doubling), seconds, method}.
    """
    t0 = time.perf_counter()
    nfe, steps, coarse, history = 0, first_steps, None, []
    with torch.inference_mode():
        while True:
            fine = dpmpp_3m_corrected(
                denoiser, x, reference_grid(sigma_start, sigma_end, steps), lower_order_final=False
            )
            nfe += steps
            if coarse is not None:
                diff = float(per_sample_rms(fine, coarse).mean())
                history.append([steps, diff])
                if diff <= reference_tol and len(history) > 1 and diff <= history[-2][1] / 2:
                    break
                if steps >= max_steps:
                    raise ValueError(
                        f"trajectory-error reference did not converge by max_steps {max_steps}: "
                        "differences per doubling "
                        + ", ".join(f"{n}: {d:.2g}" for n, d in history)
                        + f" (per-sample RMS; reference_tol {reference_tol:g}, and each must halve)"
                    )
            coarse, steps = fine, steps * 2
        if final_zero:
            fine = denoiser(fine, sigma_end)
            nfe += 1
    return fine, {
        "steps": steps,
        "nfe_per_sample": nfe,
        "estimated_error": diff,
        "history": history,
        "seconds": time.perf_counter() - t0,
        "method": METHOD,
    }


class ReferenceCache:
    """References on disk: ``<dir>/<sha256 of the key>.safetensors`` (the tensor with its key and sha256,
    verified on load: ``diffbench.util.verified_cache``) + ``.json`` (key and cost, for people to read)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def digest(key: dict[str, Any]) -> str:
        return hashlib.sha256(_key_json(key).encode()).hexdigest()[:32]

    def load(self, key: dict[str, Any]) -> tuple[Tensor, dict[str, Any]] | None:
        """The cached reference for ``key``, or None (missing; unreadable, written for another key or not
        matching its recorded sha256, each with a warning naming the file)."""
        stem = self.directory / self.digest(key)
        entry = verified_cache.load(stem.with_suffix(".safetensors"), key=_key_json(key))
        if entry is None or "reference" not in entry.tensors:
            return None
        sidecar = stem.with_suffix(".json")
        try:
            info = json.loads(sidecar.read_text())
        except (OSError, ValueError, RecursionError) as exc:
            verified_cache.stderr_warning(
                f"cache file {str(sidecar)!r} is unreadable ({type(exc).__name__}); recomputing its reference"
            )
            return None
        if not isinstance(info, dict) or info.get("key") != json.loads(_key_json(key)):
            verified_cache.stderr_warning(
                f"cache file {str(sidecar)!r} was written for another key; recomputing its reference"
            )
            return None
        return entry.tensors["reference"], {**info, "sha256": entry.sha256}

    def save(self, key: dict[str, Any], reference: Tensor, info: dict[str, Any]) -> str:
        """Write atomically (temporary file, then rename): a crash never leaves a half-written reference.
        Returns the reference's sha256."""
        stem = self.directory / self.digest(key)
        sha = verified_cache.save(stem.with_suffix(".safetensors"), {"reference": reference}, key=_key_json(key))
        meta = {**info, "sha256": sha, "key": json.loads(_key_json(key))}
        tmp = stem.with_name(f".{stem.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(tmp, stem.with_suffix(".json"))
        return sha


def _key_json(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, default=str)


def reference_key(model, batch: Batch, settings: dict[str, Any]) -> dict[str, Any]:
    """Everything the reference for ``batch`` depends on."""
    res, sig = batch.result, batch.result.grid.sigmas
    positive = sig[sig > 0]
    idx = batch.indices.tolist()
    return {
        "model": model.identity(),
        "seed": batch.seed,
        "first_index": idx[0],
        "count": len(idx),
        "contiguous": idx == list(range(idx[0], idx[0] + len(idx))),
        "indices_sha": hashlib.sha256(json.dumps(idx).encode()).hexdigest()[:16],
        "sigma_start": float(sig[0]),
        "sigma_end": float(positive[-1]),
        "final_zero": float(sig[-1]) == 0.0,
        "dtype": res.meta["dtype"],
        "device_type": resolve_device(res.meta["device"]).type,
        "guidance": res.meta.get("guidance"),
        "clip_x0": res.meta.get("clip_x0", False),
        "conditional": res.meta.get("conditional"),
        "labels_sha": None
        if batch.labels is None
        else hashlib.sha256(json.dumps(batch.labels.tolist()).encode()).hexdigest()[:16],
        "method": METHOD,
        **settings,
    }


class TrajectoryRows:
    """Per batch: each sample's RMS distance to its cached (or freshly solved) reference; NaN when stochastic."""

    def __init__(self, model, context: MetricContext, settings: dict[str, Any], max_samples: int | None) -> None:
        self.model, self.context, self.settings, self.max_samples = model, context, settings, max_samples
        self.cache = ReferenceCache(Path(context.cache_dir) / "trajectory-references")
        self.key: Hashable = ("trajectory-error", json.dumps(settings, sort_keys=True), max_samples)

    def __call__(self, batch: Batch) -> Tensor:
        res = batch.result
        if res.meta.get("stochastic") is not False:
            reason = ABSENT_STOCHASTIC.format(sampler=res.sampler)
            if res.meta.get("stochastic") is None:
                reason = f"trajectory-error absent: sampler {res.sampler!r} does not declare whether it is stochastic"
            if reason not in res.meta.setdefault("warnings", []):
                res.meta["warnings"].append(reason)
            return torch.full((len(batch.samples),), math.nan, dtype=torch.float64)
        keep = (
            torch.ones(len(batch.indices), dtype=torch.bool)
            if self.max_samples is None
            else batch.indices < self.max_samples
        )
        out = torch.full((len(batch.samples),), math.inf, dtype=torch.float64)  # inf: not scored (max_samples)
        if bool(keep.any()):
            part = Batch(
                batch.samples[keep],
                batch.indices[keep],
                None if batch.labels is None else batch.labels[keep],
                batch.seed,
                batch.result,
            )
            out[keep] = per_sample_rms(part.samples, self.reference(part))
        return out

    def reference(self, batch: Batch) -> Tensor:
        key = reference_key(self.model, batch, self.settings)
        cached = self.cache.load(key)
        info_log = self.context.info.setdefault("trajectory_references", {})
        digest = self.cache.digest(key)
        if cached is not None:
            info_log.setdefault(digest, {**{k: v for k, v in cached[1].items() if k != "key"}, "from_cache": True})
            return cached[0]
        res = batch.result
        dev, dtype = resolve_device(res.meta["device"]), resolve_dtype(res.meta["dtype"])
        model = self.model.placed(dev, dtype)
        labels = None if batch.labels is None else batch.labels.to(dev)
        den = SigmaDenoiser(
            model, labels=labels, guidance=res.meta.get("guidance"), clip_x0=res.meta.get("clip_x0", False)
        )
        x = initial_noise(batch.seed, batch.indices.tolist(), model.shape, device=dev, dtype=dtype) * key["sigma_start"]
        ref, info = solve_reference(den, x, key["sigma_start"], key["sigma_end"], key["final_zero"], **self.settings)
        ref = ref.detach().cpu()
        info.update(
            samples=len(x),
            model=getattr(self.model, "name", None),
            sigma_start=key["sigma_start"],
            sigma_end=key["sigma_end"],
            final_zero=key["final_zero"],
        )
        info["sha256"] = self.cache.save(key, ref, info)
        info_log[digest] = {**info, "from_cache": False}
        return ref


class TrajectoryError(StreamingMetric):
    """Mean per-sample RMS distance to a converged solution of the model's own probability-flow ODE (any model).

    The metric is absent for a stochastic sampler (reason recorded in the cell's warnings).
    """

    name = "trajectory-error"
    options: dict[str, Any] = {"reference_tol": 1e-4, "first_steps": 64, "max_steps": 2048, "max_samples": None}
    option_help = {
        "reference_tol": "the reference ODE solution's steps double until successive solutions agree "
        "to this mean per-sample RMS",
        "first_steps": "steps of the reference's first solve",
        "max_steps": "most reference steps; a reference that has not converged by then fails the cell",
        "max_samples": "score only samples with index < max_samples (each reference costs ~1000-4000 "
        "NFE a sample); null: all",
    }
    option_types = {"max_samples": int | None}
    higher_is_better = False

    def features(
        self,
        *,
        model: Any,
        context: MetricContext,
        reference_tol: float = 1e-4,
        first_steps: int = 64,
        max_steps: int = 2048,
        max_samples: int | None = None,
    ) -> TrajectoryRows:
        """``max_samples``: score only samples with index < max_samples (the reference costs ~2000 NFE each)."""
        for key, value, kind in (
            ("reference_tol", reference_tol, (int, float)),
            ("first_steps", first_steps, int),
            ("max_steps", max_steps, int),
            ("max_samples", max_samples, (int, type(None))),
        ):
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(
                    f"trajectory-error {key} must be a number{' or null' if key == 'max_samples' else ''}"
                    f", got {value!r} (write 3.0e-4, not 3e-4, in YAML)"
                )
        if not (reference_tol > 0 and first_steps >= 1 and max_steps >= 2 * first_steps):
            raise ValueError("trajectory-error needs reference_tol > 0, first_steps ≥ 1 and max_steps ≥ 2·first_steps")
        if reference_tol < MIN_REFERENCE_TOL or max_steps > MAX_REFERENCE_STEPS:
            raise ValueError(
                f"trajectory-error needs reference_tol ≥ {MIN_REFERENCE_TOL:g} (float64 round-off "
                f"is not resolvable) and max_steps ≤ {MAX_REFERENCE_STEPS:,}; got {reference_tol:g} "
                f"and {max_steps:,}"
            )
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"trajectory-error max_samples must be ≥ 1 or null, got {max_samples}")
        return TrajectoryRows(
            model,
            context,
            {"reference_tol": reference_tol, "first_steps": first_steps, "max_steps": max_steps},
            max_samples,
        )

    def score(
        self, features: Tensor, *, model: Any, result: Any, context: MetricContext | None = None, **options: Any
    ) -> dict[str, MetricValue]:
        e = features.to(torch.float64).flatten()
        if bool(torch.isnan(e).any()):
            return {}  # stochastic: absent (the reason is in the cell's warnings)
        e = e[torch.isfinite(e)]  # samples beyond max_samples are not scored
        n = e.numel()
        if n == 0:
            return {}
        se = float(e.std()) / math.sqrt(n) if n > 1 else None
        tol = {**self.options, **options}["reference_tol"]
        return {
            "trajectory-error": MetricValue(
                float(e.mean()),
                se,
                f"standard error over {n} samples; reference converged to ≤ {tol:g} per-sample RMS ({METHOD})",
            )
        }


METRICS: dict = {"trajectory-error": TrajectoryError()}
