"""Trajectory error for any model: distance to an error-controlled solution of the model's own probability-flow ODE.

For a deterministic sampler, each sample is compared with the reference solution of the same denoiser's
probability-flow ODE (same guidance, same clipping) from the same starting noise over the same σ range:
σ_0 → σ_last (the grid's last positive σ), followed, when the grid ends at σ = 0, by the same final step
every diffbench sampler takes there, x = D(x, σ_last). The reference is solved in float64 by
Dormand–Prince 5(4) in log σ with per-sample step control to ``rtol``/``atol``
(``diffbench.metrics.ode_reference``): on the Gaussian mixture its error against DOP853 at 1e-12 is
about the tolerance (tests/metrics/test_trajectory.py). On a network it is larger, by a factor the network
sets: against much tighter solves, about 27× the tolerance on the retrained digits-eps (2.7e-6 at the default
1e-7, 331 NFE a sample) and about 1200× on a random 28×28 UNet (3.6e-3 at 3e-6, against 1e-7). So choose
``rtol``/``atol`` from the errors the reference serves: its own error (``scripts/reference_accuracy.py``)
should be ≤ 1 % of the smallest trajectory-error it serves (suites/steps.yaml: 5e-9 for errors down to
5e-5; the 28×28 benchmark: 3e-6 for errors ≥ 0.4; README, "Solver accuracy"). ``method: dop853`` (8th
order) is there for smooth models: on digits-eps, whose D(x, σ) wiggles in σ, it needs more NFE than
the 5th-order pair at every tolerance, so dopri5 is the default. ``network_dtype: float32`` evaluates the
network (and its preconditioning) in float32 inside the float64 solve, for tolerances ≥ 1e-6: on the
mixture it meets its tolerance as float64 does, on the 28×28 UNet at
3e-6 its own error is the same (0.77 % against 0.78 % of the smallest error served) in 0.45–0.58× the
cells' sampling time (four runs) against float64's 1.74–2.23× (tests/benchmarks/test_measurement_cost.py; README).
float64 stays the default, since a float32 network cannot resolve the tolerances the digits suites need;
on CUDA float32 needs TF32 off.

One reference serves every cell from the same starting noise (model, seed, sample indices, σ_0, guidance,
clipping, labels): it runs to the model's smallest σ and stops, by side steps that never change its path,
at every σ_last the run's deterministic cells need (``MetricContext.grids``), so Karras and ``trailing``
grids of every step count share it. It is cached as safetensors (one tensor per stop) with a JSON sidecar;
a stop not in the cache re-solves the reference for all its stops. ``validate`` (``context.dry_run``)
checks that the model can be evaluated this way and never solves. A stochastic sampler has no ODE
solution to compare with: the metric is then absent, and the cell records why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Hashable

import torch
from torch import Tensor

from diffbench.core.denoiser import SigmaDenoiser
from diffbench.core.noise import initial_noise
from diffbench.metrics.base import Batch, MetricContext, MetricValue, StreamingMetric, grid_key
from diffbench.metrics.ode_reference import METHODS, Tableau, solve_to_targets
from diffbench.util import verified_cache
from diffbench.util.devices import one_thread, resolve_device, resolve_dtype

# Bounds on the solve (bounded sizes): steps per sample, and the tolerances the network's dtype can resolve
# (about 5,000 and 8 units of its rounding: float64's 2.2e-16, float32's 1.2e-7).
MAX_REFERENCE_STEPS = 1 << 16
NETWORK_DTYPES = {"float64": torch.float64, "float32": torch.float32}
MIN_REFERENCE_TOL = {"float64": 1e-12, "float32": 1e-6}
ABSENT_STOCHASTIC = (
    "trajectory-error absent: sampler {sampler!r} is stochastic with these options; "
    "there is no ODE trajectory to compare with"
)
# 1: one reference per σ range by step doubling; 2: one per starting point, a tensor per stop; 3: its stops and cost
# in the verified entry (the .json sidecar is for people only)
CACHE_FORMAT = 3


def per_sample_rms(a: Tensor, b: Tensor) -> Tensor:
    """RMS over each sample's elements of a - b (float64)."""
    return (a.to(torch.float64) - b.to(torch.float64)).flatten(1).square().mean(1).sqrt()


def stop_name(sigma_end: float, final_zero: bool) -> str:
    """The tensor name of one stop in a cached reference: the state at σ_end, or D of it when the grid ends at 0."""
    return f"{'denoised' if final_zero else 'state'}@{float(sigma_end).hex()}"


def shared_sigma(sigma: float) -> float:
    """σ to 12 significant digits, as references are keyed and solved: grids that reach the same σ by different
    arithmetic (Karras's ρ-power against a schedule's table: 1e-15 apart) share one reference, where they made
    one each; 1e-12 of σ moves a solution far less than any tolerance a reference is solved to."""
    return float(f"{float(sigma):.12g}")


def grid_stops(sigmas: Any) -> tuple[float, float, bool]:
    """(σ_0, last positive σ, whether the grid ends at 0) of a σ grid, each σ as ``shared_sigma``."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64)
    positive = sig[sig > 0]
    return shared_sigma(sig[0]), shared_sigma(positive[-1]), float(sig[-1]) == 0.0


def in_float64(den: SigmaDenoiser, dtype: torch.dtype = torch.float64) -> Callable[..., Tensor]:
    """``den.per_sample`` taking and giving float64: the network and its preconditioning run in ``dtype`` (the
    model must be placed in it), the solve around it stays float64."""
    if dtype == torch.float64:
        return den.per_sample

    def evaluate(x: Tensor, sigmas: Tensor, rows: Tensor | None = None) -> Tensor:
        return den.per_sample(x.to(dtype), sigmas, rows).to(torch.float64)

    return evaluate


def check_network_precision(dtype: torch.dtype, device: torch.device) -> None:
    """ValueError for a float32 network on CUDA while TF32 is allowed: PyTorch runs float32 convolutions (by
    default) and matmuls (when enabled) in TF32 there, whose ~1e-3 relative error no reference solved to 1e-6
    survives. The flags are process-wide, so the reference cannot switch them off for itself while a cell
    samples beside it."""
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    if dtype == torch.float32 and device.type == "cuda" and tf32:
        raise ValueError(
            "trajectory-error network_dtype float32 on CUDA needs TF32 off (torch.backends.cudnn.allow_tf32 and "
            "torch.backends.cuda.matmul.allow_tf32 False, from a plugin or your script); use float64 there"
        )


def solve_stops(
    denoise: Callable[..., Tensor],
    x: Tensor,
    sigma_start: float,
    floor: float,
    stops: set[tuple[float, bool]],
    *,
    rtol: float,
    atol: float,
    max_steps: int,
    method: str = "dopri5",
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The reference at every (σ_end, final_zero) stop, float64: one ODE solve to ``floor``, then D at the
    stops that end at 0. ``denoise(x, sigmas, rows)`` is D, float64 in and out (``in_float64``). Returns tensors
    by ``stop_name`` and the solve's cost."""
    states, info = solve_to_targets(
        denoise,
        x,
        sigma_start,
        sorted({s for s, _ in stops if not at_floor(s, floor)} | {floor}),
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        method=method,
    )
    out, finals = {}, 0
    rows = torch.arange(len(x))
    with torch.inference_mode():
        for sigma_end, final_zero in sorted(stops):
            state = states[floor if at_floor(sigma_end, floor) else sigma_end]
            if final_zero:
                state = denoise(state, torch.full((len(x),), sigma_end, dtype=torch.float64), rows)
                finals += 1
            out[stop_name(sigma_end, final_zero)] = state.detach().cpu()
    info["nfe_per_sample"] += finals
    return out, info


class ReferenceCache:
    """References on disk: ``<dir>/<sha256 of the key>.safetensors`` (a tensor per stop, with the key, its stops and
    cost, verified on load: ``diffbench.util.verified_cache``) + ``.json`` (the same key, stops and cost, for people
    to read; never read back)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def digest(key: dict[str, Any]) -> str:
        return hashlib.sha256(_key_json(key).encode()).hexdigest()[:32]

    def load(self, key: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        """The cached stops and their stops and cost for ``key``, or None (missing; unreadable, written for another
        key or not matching its recorded hashes, each with a warning naming the file)."""
        entry = verified_cache.load((self.directory / self.digest(key)).with_suffix(".safetensors"), key=_key_json(key))
        if entry is None:
            return None
        return dict(entry.tensors), {**entry.info, "sha256": entry.sha256}

    def save(self, key: dict[str, Any], tensors: dict[str, Tensor], info: dict[str, Any]) -> str:
        """Write atomically (temporary file, then rename): a crash never leaves a half-written reference.
        Returns the file's sha256."""
        stem = self.directory / self.digest(key)
        sha = verified_cache.save(stem.with_suffix(".safetensors"), tensors, key=_key_json(key), info=info)
        meta = {**info, "sha256": sha, "key": json.loads(_key_json(key))}
        tmp = stem.with_name(f".{stem.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(tmp, stem.with_suffix(".json"))
        return sha

    def entries(self) -> list[dict[str, Any]]:
        """Every cached reference's key, stops and cost, read from its verified entry's header (its info checked
        against the recorded hash; the tensors are verified when the reference is used): for cost estimates."""
        out = []
        for path in sorted(self.directory.glob("*.safetensors")) if self.directory.is_dir() else []:
            read = verified_cache.read_info(path)
            if read is None:
                continue
            try:
                key = json.loads(read[0])
            except (ValueError, RecursionError):
                continue
            if isinstance(key, dict):
                out.append({**read[1], "key": key})
        return out


def _key_json(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, default=str)


def at_floor(sigma: float, floor: float) -> bool:
    """Whether a stop is the floor up to rounding (a Karras grid's σ_min computed through σ^(1/ρ))."""
    return sigma <= floor * (1 + 1e-9)


def model_floor(model: Any) -> float:
    """Where every reference of ``model`` stops: the smallest σ of its noise schedule."""
    return float(model.schedule.sigma_min)


def reference_key(model, batch: Batch, settings: dict[str, Any]) -> dict[str, Any]:
    """Everything the reference from ``batch``'s starting points depends on (not the stops: they share it)."""
    res = batch.result
    sigma_start, sigma_end, _ = grid_stops(res.grid.sigmas)
    idx = batch.indices.tolist()
    return {
        "format": CACHE_FORMAT,
        "model": model.identity(),
        "seed": batch.seed,
        "first_index": idx[0],
        "count": len(idx),
        "contiguous": idx == list(range(idx[0], idx[0] + len(idx))),
        "indices_sha": hashlib.sha256(json.dumps(idx).encode()).hexdigest()[:16],
        "sigma_start": sigma_start,
        "sigma_floor": shared_sigma(min(model_floor(model), sigma_end)),
        "dtype": res.meta["dtype"],
        "device_type": resolve_device(res.meta["device"]).type,
        "guidance": res.meta.get("guidance"),
        "clip_x0": res.meta.get("clip_x0", False),
        "conditional": res.meta.get("conditional"),
        "labels_sha": None
        if batch.labels is None
        else hashlib.sha256(json.dumps(batch.labels.tolist()).encode()).hexdigest()[:16],
        **settings,
    }


def reference_settings(rtol: float, atol: float, method: str, max_steps: int, network_dtype: str) -> dict[str, Any]:
    """What a reference is solved with, as its cache key records it: the network's dtype only when not float64,
    so references cached before it was an option still serve."""
    settings = {"rtol": float(rtol), "atol": float(atol), "method": method, "max_steps": max_steps}
    if network_dtype != "float64":
        settings["network_dtype"] = network_dtype
    return settings


SAME_PATH = ("rtol", "atol", "method", "network_dtype")  # the settings that fix a solve's path (max_steps bounds it)


def stop_groups(context: MetricContext, model: Any) -> dict[tuple, set[tuple[float, bool]]]:
    """The run's deterministic cells on ``model`` grouped by what one reference serves, (σ_0, guidance, clip_x0),
    each with the (σ_end, final_zero) stops its cells need."""
    groups: dict[tuple, set[tuple[float, bool]]] = {}
    for grid in context.grids.get(grid_key(model), []):
        start, end, zero = grid_stops(grid["sigmas"])
        groups.setdefault((start, grid.get("guidance"), grid.get("clip_x0", False)), set()).add((end, zero))
    return groups


def planned_stops(
    context: MetricContext, model: Any, sigma_start: float, guidance: float | None, clip_x0: bool
) -> set[tuple[float, bool]]:
    """The (σ_end, final_zero) stops of the run's deterministic cells on ``model`` from σ_start with this
    guidance and clipping."""
    return set(stop_groups(context, model).get((sigma_start, guidance, clip_x0), set()))


class TrajectoryRows:
    """Per batch: each sample's RMS distance to its cached (or freshly solved) reference; NaN when stochastic."""

    def __init__(self, model, context: MetricContext, settings: dict[str, Any], max_samples: int | None) -> None:
        self.model, self.context, self.settings, self.max_samples = model, context, settings, max_samples
        self.cache = ReferenceCache(Path(context.cache_dir) / "trajectory-references")
        self.key: Hashable = ("trajectory-error", json.dumps(settings, sort_keys=True), max_samples)
        self.network_dtype = NETWORK_DTYPES[settings.get("network_dtype", "float64")]
        self.solver = {k: v for k, v in settings.items() if k != "network_dtype"}  # solve_stops' options
        self._placed: dict[torch.device, Any] = {}  # the model in the network's dtype on each device (placed once)

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
            ref = self.reference(part)
            if ref is not None:
                out[keep] = per_sample_rms(part.samples, ref)
        return out

    def _denoiser(self, batch: Batch, x_dtype: torch.dtype) -> tuple[SigmaDenoiser, Tensor]:
        """The denoiser of this batch's cell, in the network's dtype, and its starting points (those the sampler
        started from) in float64."""
        res = batch.result
        dev = resolve_device(res.meta["device"])
        model = self._placed.get(dev)
        if model is None:
            model = self._placed[dev] = self.model.placed(dev, self.network_dtype)
        labels = None if batch.labels is None else batch.labels.to(dev)
        den = SigmaDenoiser(
            model, labels=labels, guidance=res.meta.get("guidance"), clip_x0=res.meta.get("clip_x0", False)
        )
        sigma_start = grid_stops(res.grid.sigmas)[0]
        # the same arithmetic, in the same dtype, as the sampler's starting point; then float64
        x = initial_noise(batch.seed, batch.indices.tolist(), model.shape, device=dev, dtype=x_dtype) * sigma_start
        return den, x.to(torch.float64)

    def reference(self, batch: Batch) -> Tensor | None:
        """The reference at this batch's stop; None in a dry run (validate), after checking the model can give it."""
        key = reference_key(self.model, batch, self.settings)
        sigma_start, sigma_end, final_zero = grid_stops(batch.result.grid.sigmas)
        want = stop_name(sigma_end, final_zero)
        digest = self.cache.digest(key)
        log = self.context.info.setdefault("trajectory_references", {})
        cached = self.cache.load(key)
        if cached is not None and want in cached[0]:
            log.setdefault(digest, {**{k: v for k, v in cached[1].items() if k != "key"}, "from_cache": True})
            return cached[0][want]
        den, x = self._denoiser(batch, resolve_dtype(batch.result.meta["dtype"]))
        check_network_precision(self.network_dtype, x.device)
        denoise = in_float64(den, self.network_dtype)
        if self.context.dry_run:  # validate: one evaluation at per-sample σ, no solve
            with torch.inference_mode():
                denoise(x[:1], torch.tensor([sigma_start], dtype=torch.float64), torch.arange(1))
            return None
        stops = {(sigma_end, final_zero)} | planned_stops(
            self.context,
            self.model,
            sigma_start,
            batch.result.meta.get("guidance"),
            batch.result.meta.get("clip_x0", False),
        )
        if cached is not None:  # keep what the cache had: one solve gives every stop the same values
            stops |= {tuple(s) for s in cached[1].get("stops", [])}
        # on one CPU thread, like scoring: its values are then the same in a local run and on a Ray worker; on a
        # busy machine OpenMP spinning made each call of digits-eps 25x slower (0.45 s against 0.018 s for 8
        # rows); and a float32 network on the sampling's two threads gained nothing in a run on the 28×28 UNet
        # (tests/benchmarks/reference_threads.py)
        with one_thread() if x.device.type == "cpu" else contextlib.nullcontext():
            tensors, info = solve_stops(denoise, x, sigma_start, key["sigma_floor"], stops, **self.solver)
        info.update(
            samples=len(x),
            model=getattr(self.model, "name", None),
            sigma_start=sigma_start,
            sigma_floor=key["sigma_floor"],
            stops=sorted([s, z] for s, z in stops),
            nfe=info["nfe_per_sample"] * len(x),
        )
        info["sha256"] = self.cache.save(key, tensors, info)
        log[digest] = {**info, "from_cache": False}
        return tensors[want]


class TrajectoryError(StreamingMetric):
    """Mean per-sample RMS distance to an error-controlled solution of the model's own probability-flow ODE (any model).

    The metric is absent for a stochastic sampler (reason recorded in the cell's warnings).
    """

    name = "trajectory-error"
    options: dict[str, Any] = {
        "rtol": 1e-7,
        "atol": 1e-7,
        "method": "dopri5",
        "max_steps": 10_000,
        "max_samples": None,
        "network_dtype": "float64",
    }
    option_help = {
        "rtol": "relative tolerance of the reference's error-controlled ODE solve (float64); choose it so the "
        "reference's own error is ≤ 1 % of the smallest error it serves (scripts/reference_accuracy.py)",
        "atol": "absolute tolerance of the reference's ODE solve",
        "method": "dopri5 (Dormand–Prince 5(4), default) or dop853 (8(5,3)), in log σ",
        "max_steps": "most steps (accepted and rejected) a sample's reference may take; more fails the cell",
        "max_samples": "score only samples with index < max_samples (a reference costs a few hundred to "
        "about 2000 NFE a sample, once for every cell from the same noise); null: all",
        "network_dtype": "float64 (default) or float32: the dtype the reference evaluates the network in (the solve "
        "stays float64). float32 is several times cheaper on CPUs and most GPUs and resolves tolerances ≥ 1e-6 (on "
        "CUDA only with TF32 off); check its own error against a float64 solve (scripts/reference_accuracy.py) "
        "before relying on it",
    }
    option_types = {"max_samples": int | None}
    higher_is_better = False

    def features(
        self,
        *,
        model: Any,
        context: MetricContext,
        rtol: float = 1e-7,
        atol: float = 1e-7,
        method: str = "dopri5",
        max_steps: int = 10_000,
        max_samples: int | None = None,
        network_dtype: str = "float64",
    ) -> TrajectoryRows:
        """``max_samples``: score only samples with index < max_samples (each reference sample costs a few
        hundred NFE, once for every cell from the same noise)."""
        for key, value, kind in (
            ("rtol", rtol, (int, float)),
            ("atol", atol, (int, float)),
            ("max_steps", max_steps, int),
            ("max_samples", max_samples, (int, type(None))),
        ):
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(
                    f"trajectory-error {key} must be a number{' or null' if key == 'max_samples' else ''}"
                    f", got {value!r} (write 1.0e-6, not 1e-6, in YAML)"
                )
        if method not in METHODS:
            raise ValueError(f"trajectory-error method must be one of {', '.join(METHODS)}, got {method!r}")
        if network_dtype not in NETWORK_DTYPES:
            raise ValueError(
                f"trajectory-error network_dtype must be one of {', '.join(NETWORK_DTYPES)}, got {network_dtype!r}"
            )
        if not (rtol > 0 and atol > 0 and max_steps >= 1):
            raise ValueError("trajectory-error needs rtol > 0, atol > 0 and max_steps ≥ 1")
        floor = MIN_REFERENCE_TOL[network_dtype]
        if min(rtol, atol) < floor or max_steps > MAX_REFERENCE_STEPS:
            raise ValueError(
                f"trajectory-error needs rtol, atol ≥ {floor:g} ({network_dtype} round-off "
                f"is not resolvable) and max_steps ≤ {MAX_REFERENCE_STEPS:,}; got {rtol:g}, {atol:g} "
                f"and {max_steps:,}"
            )
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"trajectory-error max_samples must be ≥ 1 or null, got {max_samples}")
        check_network_precision(NETWORK_DTYPES[network_dtype], getattr(model, "device", torch.device("cpu")))
        settings = reference_settings(rtol, atol, method, max_steps, network_dtype)
        return TrajectoryRows(model, context, settings, max_samples)

    def planned_cost(
        self,
        *,
        model: Any,
        context: MetricContext,
        num_samples: int,
        seeds: list[int],
        batch_size: int,
        rtol: float = 1e-7,
        atol: float = 1e-7,
        method: str = "dopri5",
        max_steps: int = 10_000,
        max_samples: int | None = None,
        network_dtype: str = "float64",
    ) -> dict[str, Any]:
        """What the run's references on ``model`` will cost, without solving anything: references (one per
        σ_0, guidance, clipping, seed and batch of scored samples), samples, and NFE estimated from earlier
        solves of the model in the cache; a reference cached with every stop it needs counts 0. ``nfe`` is
        None when the model was never solved at this tolerance."""
        groups = stop_groups(context, model)
        scored = num_samples if max_samples is None else min(num_samples, max_samples)
        identity = json.loads(json.dumps(model.identity(), sort_keys=True, default=str))
        wanted = reference_settings(rtol, atol, method, max_steps, network_dtype)
        earlier = [
            c
            for c in ReferenceCache(Path(context.cache_dir) / "trajectory-references").entries()
            if c["key"].get("model") == identity and all(c["key"].get(k) == wanted.get(k) for k in SAME_PATH)
        ]
        per_step = Tableau(method).evaluations_per_step
        path_nfe = [1 + per_step * (c["steps"] + c["rejected"]) for c in earlier if "steps" in c and "rejected" in c]
        mean_path = sum(path_nfe) / len(path_nfe) if path_nfe else None
        floor = model_floor(model)
        nfe, cached, references = 0.0, 0, 0
        for (start, guidance, clip), stops in groups.items():
            extra = per_step * sum(1 for end, _ in stops if not at_floor(end, floor)) + sum(
                1 for _, zero in stops if zero
            )
            for seed in seeds:
                references += -(-scored // batch_size)
                hit = any(
                    c["key"].get("seed") == seed
                    and c["key"].get("sigma_start") == start
                    and c["key"].get("guidance") == guidance
                    and c["key"].get("clip_x0") == clip
                    and {tuple(s) for s in c.get("stops", [])} >= stops
                    for c in earlier
                )
                if hit:
                    cached += -(-scored // batch_size)
                elif mean_path is not None:
                    nfe += (mean_path + extra) * scored
        unknown = mean_path is None and cached < references
        return {
            "references": references,
            "cached": cached,
            "samples": len(groups) * len(seeds) * scored,
            "nfe": None if unknown else nfe,
            "how": (
                "not known before this model's first solve (adaptive steps)"
                if unknown
                else f"estimated from {len(path_nfe)} earlier solve(s) of this model in the cache"
            ),
        }

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
        opts = {**self.options, **options}
        return {
            "trajectory-error": MetricValue(
                float(e.mean()),
                se,
                f"standard error over {n} samples; reference "
                f"by {METHODS[opts['method']]}, rtol {opts['rtol']:g}, atol {opts['atol']:g}"
                + ("" if opts["network_dtype"] == "float64" else f", network in {opts['network_dtype']}"),
            )
        }


METRICS: dict = {"trajectory-error": TrajectoryError()}
