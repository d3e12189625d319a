"""Per-sample random streams: sample i's noise depends only on (seed, i).

As in EDM's ``StackedRandomGenerator``, every sample has its own generator, so results do not
depend on batch size or on how samples are split across devices. Noise is drawn on the CPU in
float64 and then cast and moved, so float16/32/64 and CPU/CUDA runs start from the same noise (up to
the cast's rounding), and step k's noise depends only on (seed, i, k), not on how many steps the
bank holds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache

import numpy as np
import torch

_INITIAL, _STEPS = 0, 1


@lru_cache(maxsize=1 << 17)  # every cell of a suite draws the same samples' streams: hash each once
def stream_seed(seed: int, index: int, stream: int) -> int:
    """A 63-bit seed for (seed, sample index, stream) via NumPy's SeedSequence hashing."""
    state = np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


DRAW_DTYPE = torch.float64  # every dtype casts this draw: noise does not depend on the run's dtype
BLOCK = 16  # torch's CPU normal sampler transforms uniforms in blocks of 16 (Box-Muller within a block)


def _padded(numel: int) -> int:
    """Elements drawn per block: ``numel`` rounded up to whole 16-blocks, so block k uses its own uniforms only."""
    return max(BLOCK, -(-numel // BLOCK) * BLOCK)


def _draw(seed: int, indices, shape, stream: int, blocks: int | None = None) -> torch.Tensor:
    """One float64 draw per sample: (len(indices), *shape), or (len(indices), blocks, *shape).

    With ``blocks``, each block is a padded row of one (blocks, padded) draw: torch's CPU sampler fills a
    tensor whose size is a multiple of 16 from consecutive uniforms, 16 at a time, so block k's values are
    the same whatever ``blocks`` is (tests/core/test_noise.py checks this against the installed torch).
    """
    gen = torch.Generator(device="cpu")
    numel = int(torch.Size(shape).numel())
    rows = 1 if blocks is None else int(blocks)
    width = numel if blocks is None else _padded(numel)
    out = torch.empty((len(indices), rows, numel), dtype=DRAW_DTYPE)
    for row, i in enumerate(indices):
        gen.manual_seed(stream_seed(seed, i, stream))
        out[row] = torch.randn((rows, width), generator=gen, dtype=DRAW_DTYPE)[:, :numel]
    return out.view(len(indices), *shape) if blocks is None else out.view(len(indices), rows, *shape)


MEMO_BYTES = 64 << 20  # recent draws kept (every cell of a suite starts from the same noise; a cell's harness
# probe draws its step noise again)
_memo: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_memo_lock = threading.Lock()


def _memo_draw(seed: int, indices, shape, stream: int, blocks: int | None = None) -> torch.Tensor:
    """``_draw`` in float64 through a memo of recent draws (least recently used dropped first); never modify it.

    Block k of a step bank does not depend on how many blocks were drawn, so a bank of fewer blocks is
    served from a kept larger one (the samplers of a suite share one bank, as its cells share one start)."""
    key = (int(seed), tuple(int(i) for i in indices), tuple(shape), stream, blocks is None)
    with _memo_lock:
        kept = _memo.get(key)
        if kept is not None and (blocks is None or kept.shape[1] >= blocks):
            _memo.move_to_end(key)
            return kept if blocks is None else kept[:, :blocks]
    drawn = _draw(key[0], key[1], key[2], stream, blocks)
    with _memo_lock:
        if drawn.numel() * drawn.element_size() <= MEMO_BYTES:
            _memo[key] = drawn
            _memo.move_to_end(key)
            while sum(t.numel() * t.element_size() for t in _memo.values()) > MEMO_BYTES:
                _memo.popitem(last=False)
    return drawn


def _cast(drawn: torch.Tensor, device, dtype: torch.dtype) -> torch.Tensor:
    out = drawn.to(device=device, dtype=dtype)
    return out.clone() if out.data_ptr() == drawn.data_ptr() else out  # never the memo's own tensor


def initial_noise(seed: int, indices, shape, *, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Standard normal starting noise of shape (len(indices), *shape): the float64 draw cast to ``dtype``."""
    return _cast(_memo_draw(seed, indices, shape, _INITIAL), device, dtype)


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
            bank = _memo_draw(self.seed, self.indices, self.shape, _STEPS, blocks=self.num_steps)
            self._bank = _cast(bank.transpose(0, 1), self.device, self.dtype).contiguous()
        if not 0 <= k < self.num_steps:
            raise IndexError(f"step noise index {k} outside 0..{self.num_steps - 1}")
        return self._bank[k]
