"""The σ-space denoiser D(x, sigma) -> x0_hat that every sampler sees, with NFE counting.

A model's network works in its own coordinates (x_t = alpha x0 + sigma eps, time t, a
prediction target); ``SigmaDenoiser`` converts, counts every network evaluation per sample
(classifier-free guidance counts both halves) and accumulates the time spent in the network.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from diffbench.core.conditioning import ClassLabels
from diffbench.core.schedules import Coef, NoiseSchedule

Network = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


class Denoiser(Protocol):
    """What samplers call: x0_hat = denoiser(x, sigma) for a batch x at noise level sigma (float)."""

    def __call__(self, x: Tensor, sigma: float) -> Tensor: ...


@dataclass
class DiffusionModel:
    """A pretrained denoiser: raw network, its noise schedule and prediction target, data shape."""

    name: str
    network: Network  # raw(x_t, t, cond or None) -> target-space output
    schedule: NoiseSchedule
    target: Any  # a registered target: to_x0(out, x_t, coef) / from_x0(x0, x_t, coef)
    shape: tuple[int, ...]  # what the sampler moves (a latent shape for latent models)
    num_classes: int | None = None  # class-conditional when set; label num_classes = "no label"
    checkpoint_hash: str | None = None
    dataset: str | None = None  # reference dataset for distribution metrics
    data_range: tuple[float, float] = (-1.0, 1.0)
    info: dict[str, Any] = field(default_factory=dict)
    analytic: Any = None  # exact model (e.g. GaussianMixture) where the true score is known
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    # per-sample condition (conditioning.ClassLabels / Prompts); ClassLabels(num_classes) when None
    condition: Any = None
    # network time input from (σ, schedule time t), host floats; None: the schedule's t itself
    time_input: Callable[[float, float], float] | None = None
    # latent models: decoder(latents) -> samples, run after the timed sampling (never counted as NFE)
    decoder: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if self.condition is None and self.num_classes is not None:
            self.condition = ClassLabels(self.num_classes)
        if getattr(self.target, "needs_derivatives", False) and not self.schedule.has_derivatives:
            raise ValueError(
                f"target {self.target.name!r} needs a noise schedule with time derivatives; "
                f"{self.schedule.name!r} has none"
            )

    def to(self, device=None, dtype=None) -> "DiffusionModel":
        """Move the network (when it is a module) and record the device and dtype."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        if isinstance(self.network, torch.nn.Module):
            self.network.to(device=device, dtype=dtype)
        if self.analytic is not None and hasattr(self.analytic, "to"):
            self.analytic = self.analytic.to(device=device, dtype=dtype)
        self.device, self.dtype = device, dtype
        return self

    def placed(self, device=None, dtype=None) -> "DiffusionModel":
        """This model when it is on ``device`` in ``dtype`` already, else a converted copy (self unchanged)."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        if device == self.device and dtype == self.dtype:
            return self
        # one deepcopy of all keeps parts shared between them shared in the copy (an analytic model inside
        # the network; a decoder or text encoder that is a bound method of the network)
        network, analytic, decoder, condition = copy.deepcopy(
            (self.network, self.analytic, self.decoder, self.condition)
        )
        return dataclasses.replace(self, network=network, analytic=analytic, decoder=decoder, condition=condition).to(
            device, dtype
        )

    def network_time(self, sigma: float, t: float) -> float:
        """The time value the network is called with at noise level σ (schedule time t)."""
        return t if self.time_input is None else float(self.time_input(sigma, t))

    def identity(self) -> dict[str, Any]:
        cond = (
            self.condition.describe()
            if self.condition is not None and not isinstance(self.condition, ClassLabels)
            else {}
        )
        return {
            "model": self.name,
            "checkpoint_hash": self.checkpoint_hash,
            "target": self.target.name,
            **self.schedule.describe(),
            **cond,
            **self.info,
        }


class NetworkCounter:
    """Counts network rows evaluated and time inside the network for one batch of samples."""

    def __init__(self, batch_size: int | None = None, device: torch.device = torch.device("cpu")) -> None:
        self.batch_size = batch_size  # samples per batch; set from the first call when None
        self.rows = 0
        self.calls = 0
        self._cuda = device.type == "cuda"
        self._seconds = 0.0
        self._events: list[tuple[Any, Any]] = []
        self._call_seconds: list[float] = []
        # CPU time of the calling thread between consecutive calls: the sampler's and wrapper's own work,
        # without the time the thread waited for a core (robust to other processes on a shared machine)
        self.gap_seconds: list[float] = []
        self._left: float | None = None

    @property
    def nfe(self) -> float:
        """Network evaluations per sample."""
        return self.rows / self.batch_size if self.batch_size else 0.0

    def run(self, fn: Callable[..., Tensor], *args: Any) -> Tensor:
        self.calls += 1
        self.rows += args[0].shape[0]
        if self._left is not None:
            self.gap_seconds.append(time.thread_time() - self._left)
        t0 = time.perf_counter()
        if self._cuda:  # events, not syncs: the loop never waits for the device
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args)
            end.record()
            self._events.append((start, end))
        else:
            out = fn(*args)
            self._call_seconds.append(time.perf_counter() - t0)
            self._seconds += self._call_seconds[-1]
        self._left = time.thread_time()
        return out

    def _collect(self) -> None:
        if self._cuda and self._events:
            torch.cuda.synchronize()
            times = [s.elapsed_time(e) / 1000.0 for s, e in self._events]
            self._call_seconds += times
            self._seconds += sum(times)
            self._events.clear()

    def network_seconds(self) -> float:
        self._collect()
        return self._seconds

    def call_seconds(self) -> list[float]:
        """Time inside the network, per call (CUDA: device time from events)."""
        self._collect()
        return list(self._call_seconds)


def guided(guidance: float | None) -> bool:
    """Whether a guidance scale needs the unconditional half too (w = 1 is plain conditional sampling)."""
    return guidance is not None and guidance != 1.0


def evaluations_per_call(guidance: float | None) -> int:
    """Network evaluations per sample that one denoiser call makes at this guidance scale."""
    return 2 if guided(guidance) else 1


class NetworkOutputError(ValueError):
    """A network whose output is not a tensor of its input's shape (one line naming the model)."""


class SigmaDenoiser:
    """σ-space view of a ``DiffusionModel`` with guidance, optional x0 clipping and NFE counting.

    guidance: None → conditional only (one evaluation); w → x0_u + w (x0_c - x0_u), two
    evaluations batched into one call. ``labels`` is the batch's condition (class labels, encoded
    prompts); None samples unconditionally, with the model's null condition. The network is
    evaluated at exactly the σ the sampler passes (quantising σ to training timesteps is done on
    the grid, never here, so the network and the update always use the same σ).
    """

    def __init__(
        self,
        model: DiffusionModel,
        *,
        labels: Tensor | None = None,
        guidance: float | None = None,
        clip_x0: bool = False,
        counter: NetworkCounter | None = None,
    ) -> None:
        if guidance is not None and labels is None:
            raise ValueError("guidance needs a condition (class labels or prompts)")
        self.model = model
        self.labels = labels
        self.guidance = guidance if guided(guidance) else None
        self.clip_x0 = clip_x0
        self.counter = counter or NetworkCounter(None, model.device)
        self._cache: dict[float, tuple[float, Coef]] = {}
        self._null: Tensor | None = None
        if self.guidance is not None:
            self._pair_labels = self._with_null(labels)

    def _with_null(self, labels: Tensor) -> Tensor:
        """``labels`` followed by as many null conditions: the batch classifier-free guidance evaluates."""
        null = self.model.condition.null(
            labels.shape[0], labels.device, labels.dtype if labels.is_floating_point() else None
        )
        return torch.cat([labels, null])

    def _time(self, sigma: float) -> tuple[float, Coef]:
        hit = self._cache.get(sigma)
        if hit is None:
            sched = self.model.schedule
            t = float(sched.t_of_sigma(sigma))
            c = sched.coef(t)
            hit = self._cache[sigma] = (
                self.model.network_time(sigma, t),
                Coef(*(float(v) for v in (c.alpha, c.sigma, c.dalpha, c.dsigma))),
            )
        return hit

    def _null_labels(self, x: Tensor) -> Tensor | None:
        """The null condition batch for unconditional sampling of a conditional model, built once."""
        if self.model.condition is None:
            return None
        if self._null is None or self._null.shape[0] != x.shape[0]:
            self._null = self.model.condition.null(x.shape[0], x.device, x.dtype)
        return self._null

    def prepare(self, sigmas: Any) -> None:
        """Convert every σ > 0 of a grid to network time and coefficients now, not inside the timed loop.

        Each conversion is a few NumPy scalar calls (~100 µs right after a large network call, as
        much as the rest of the harness per call); σ the sampler visits off the grid are converted
        on first use.
        """
        for sigma in torch.as_tensor(sigmas).tolist():
            if sigma > 0:
                self._time(sigma)

    def _checked(self, out: Any, x_t: Tensor) -> Tensor:
        """The network's output when it is a tensor of its input's shape; never broadcast, else NetworkOutputError."""
        if not isinstance(out, Tensor) or out.shape != x_t.shape:
            got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
            raise NetworkOutputError(
                f"model {self.model.name!r}: the network returned {got} for an input of shape "
                f"{tuple(x_t.shape)}; its output must have the input's shape (never broadcast)"
            )
        return out

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        sigma = float(sigma)
        if self.counter.batch_size is None:
            self.counter.batch_size = x.shape[0]
        t, c = self._time(sigma)
        return self._denoise(x, t, c, self.labels, self._pair_labels if self.guidance is not None else None)

    def per_sample(self, x: Tensor, sigmas: Tensor, rows: Tensor | None = None) -> Tensor:
        """D(x_i, σ_i), each row at its own σ; ``rows[i]``: which of the labels row i has (default: the i-th).

        Error-controlled trajectory references step every sample on its own (float64, so how rows are
        batched changes results only at float64 rounding)."""
        labels = self.labels if self.labels is None or rows is None else self.labels[rows.to(self.labels.device)]
        pair = None if self.guidance is None else self._with_null(labels)
        sig = sigmas.detach().to("cpu", torch.float64).numpy()
        sched = self.model.schedule
        t = np.asarray(sched.t_of_sigma(sig), dtype=np.float64)
        k = sched.coef(t)
        times = t if self.model.time_input is None else [self.model.network_time(a, b) for a, b in zip(sig, t)]
        shape = (-1,) + (1,) * (x.ndim - 1)

        def column(values) -> Tensor:
            values = np.broadcast_to(np.asarray(values, dtype=np.float64), sig.shape)
            return torch.tensor(values, dtype=x.dtype, device=x.device).view(shape)

        c = Coef(*(column(getattr(k, f)) for f in ("alpha", "sigma", "dalpha", "dsigma")))
        return self._denoise(x, column(times).view(-1), c, labels, pair)

    def _denoise(
        self, x: Tensor, t: float | Tensor, c: Coef, labels: Tensor | None, pair_labels: Tensor | None
    ) -> Tensor:
        """x0_hat at network time ``t`` (a float, or one per row) with coefficients ``c``."""
        x_t = x * c.alpha
        if self.guidance is None:
            labels = labels if labels is not None else self._null_labels(x)
            t_in = t if isinstance(t, Tensor) else torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
            out = self._checked(self.counter.run(self.model.network, x_t, t_in, labels), x_t)
            x0 = self.model.target.to_x0(out, x_t, c)
        else:
            x_pair = torch.cat([x_t, x_t])
            t_in = (
                torch.cat([t, t])
                if isinstance(t, Tensor)
                else torch.full((x_pair.shape[0],), t, device=x.device, dtype=x.dtype)
            )
            out = self._checked(self.counter.run(self.model.network, x_pair, t_in, pair_labels), x_pair)
            if isinstance(t, Tensor):
                c = Coef(*(torch.cat([v, v]) for v in (c.alpha, c.sigma, c.dalpha, c.dsigma)))
            x0_c, x0_u = self.model.target.to_x0(out, x_pair, c).chunk(2)
            x0 = torch.lerp(x0_u, x0_c, self.guidance)
        if self.clip_x0:
            x0 = x0.clamp(*self.model.data_range)
        return x0
