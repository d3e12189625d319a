"""Per-sample random streams: sample i's noise depends only on (seed, i).

As in EDM's ``StackedRandomGenerator``, every sample has its own generator, so results do not
depend on batch size or on how samples are split across devices. Noise is drawn on the CPU and
moved to the device, so CPU and CUDA runs start from identical noise.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

_INITIAL, _STEPS = 0, 1


@lru_cache(maxsize=1 << 17)  # every cell of a suite draws the same samples' streams: hash each once
def stream_seed(seed: int, index: int, stream: int) -> int:
    """A 63-bit seed for (seed, sample index, stream) via NumPy's SeedSequence hashing."""
    state = np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _draw(seed: int, indices, shape, stream: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator(device="cpu")
    draw_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.empty((len(indices), *shape), dtype=draw_dtype)
    for row, i in enumerate(indices):
        gen.manual_seed(stream_seed(seed, i, stream))
        torch.randn(shape, generator=gen, dtype=draw_dtype, out=out[row])
    return out


def initial_noise(seed: int, indices, shape, *, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Standard normal starting noise of shape (len(indices), *shape)."""
    return _draw(seed, list(indices), tuple(shape), _INITIAL, dtype).to(device=device, dtype=dtype)


class StepNoise:
    """Noise for stochastic sampler steps: ``noise(k)`` is step k's standard normal batch.

    The whole bank (steps × batch) is drawn on first use with one RNG call per sample, so
    deterministic samplers pay nothing and stochastic ones make no RNG call inside the loop.
    """

    def __init__(self, seed: int, indices, shape, num_steps: int, *, device="cpu", dtype=torch.float32) -> None:
        self.seed, self.indices, self.shape = int(seed), list(indices), tuple(shape)
        self.num_steps, self.device, self.dtype = int(num_steps), device, dtype
        self._bank: torch.Tensor | None = None

    def __call__(self, k: int) -> torch.Tensor:
        if self._bank is None:
            bank = _draw(self.seed, self.indices, (self.num_steps, *self.shape), _STEPS, self.dtype)
            self._bank = bank.transpose(0, 1).to(device=self.device, dtype=self.dtype).contiguous()
        if not 0 <= k < self.num_steps:
            raise IndexError(f"step noise index {k} outside 0..{self.num_steps - 1}")
        return self._bank[k]
