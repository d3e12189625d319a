"""Per-sample random streams: sample i's noise depends only on (seed, i)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffbench.core import noise as seeding
from diffbench.core.noise import StepNoise, initial_noise, stream_seed


def test_stream_seed_is_the_documented_hash_and_separates_its_inputs():
    seeds = {stream_seed(s, i, k) for s in range(3) for i in range(50) for k in range(2)}
    assert len(seeds) == 300 and all(0 <= v < 2**63 for v in seeds)
    # SeedSequence([seed, index, stream]) → two 32-bit words: changing this changes every sample's noise
    words = np.random.SeedSequence([7, 3, 0]).generate_state(2, np.uint32)
    assert stream_seed(7, 3, 0) == (int(words[0]) << 31) ^ int(words[1])


def test_initial_noise_of_sample_i_does_not_depend_on_its_batch():
    full = initial_noise(5, range(10), (3, 2))
    assert full.shape == (10, 3, 2)
    for i in range(10):
        assert torch.equal(initial_noise(5, [i], (3, 2))[0], full[i])
    assert torch.equal(initial_noise(5, [7, 2], (3, 2)), full[[7, 2]])
    assert not torch.equal(initial_noise(6, range(10), (3, 2)), full)


def test_noise_is_standard_normal():
    z = initial_noise(0, range(20_000), (2,), dtype=torch.float64)
    # mean within 5 SE (1/sqrt(40 000) = 0.005), variance within 5 SE (sqrt(2/40 000) ≈ 0.007)
    assert abs(float(z.mean())) < 0.025 and abs(float(z.var()) - 1) < 0.035


def test_step_noise_depends_only_on_seed_and_index():
    bank = StepNoise(1, range(6), (2,), num_steps=4)
    alone = StepNoise(1, [4], (2,), num_steps=4)
    for k in range(4):
        assert bank(k).shape == (6, 2)
        assert torch.equal(bank(k)[4], alone(k)[0])
    assert not torch.equal(bank(0), bank(1))
    # the step stream is not the starting-noise stream
    assert not torch.equal(bank(0), initial_noise(1, range(6), (2,)))


def test_step_noise_outside_the_steps_is_an_error():
    with pytest.raises(IndexError, match="step noise index 4 outside 0..3"):
        StepNoise(0, [0], (1,), num_steps=4)(4)


def count_rng_calls(monkeypatch) -> list[int]:
    calls = [0]
    real = torch.randn

    def randn(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(seeding.torch, "randn", randn)
    return calls


def test_one_rng_call_per_sample_for_the_whole_step_bank(monkeypatch):
    calls = count_rng_calls(monkeypatch)
    noise = StepNoise(0, range(5), (2,), num_steps=50)
    assert calls[0] == 0  # nothing drawn until a step needs it (deterministic samplers pay nothing)
    for k in range(50):
        noise(k)
    assert calls[0] == 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_dtype_and_device(dtype):
    z = initial_noise(0, range(3), (2,), dtype=dtype, device="cpu")
    assert z.dtype == dtype and z.device.type == "cpu"
    assert StepNoise(0, range(3), (2,), 2, dtype=dtype)(1).dtype == dtype


@pytest.mark.parametrize("shape", [(2,), (3, 5, 5), (1, 8, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_noise_does_not_depend_on_dtype(dtype, shape):
    # every dtype starts from the float64 draw, rounded once: a float32 suite and a float64 suite are paired
    z64 = initial_noise(3, range(4), shape, dtype=torch.float64)
    assert torch.equal(initial_noise(3, range(4), shape, dtype=dtype), z64.to(dtype))
    b64 = StepNoise(3, range(4), shape, 6, dtype=torch.float64)
    b = StepNoise(3, range(4), shape, 6, dtype=dtype)
    assert all(torch.equal(b(k), b64(k).to(dtype)) for k in range(6))
    # not a coincidence: from 16 values on, torch's float32 sampler gives other normals than its float64 one
    if dtype == torch.float32 and z64[0].numel() >= 16:
        gen = torch.Generator().manual_seed(seeding.stream_seed(3, 0, 0))
        assert not torch.equal(torch.randn(shape, generator=gen, dtype=torch.float32), z64[0].float())


@pytest.mark.parametrize("shape", [(2,), (3, 5, 5), (4, 4)])
def test_step_noise_of_step_k_does_not_depend_on_the_bank_size(shape):
    # checks the installed torch's CPU normal sampler: block k uses only its own padded run of uniforms
    short, long = StepNoise(2, range(3), shape, 3), StepNoise(2, range(3), shape, 40)
    assert all(torch.equal(short(k), long(k)) for k in range(3))


def test_repeated_draws_come_from_the_memo_equal_and_unshared(monkeypatch):
    calls = []
    real = seeding._draw
    monkeypatch.setattr(seeding, "_draw", lambda *a, **k: calls.append(a) or real(*a, **k))
    seeding._memo.clear()
    first = initial_noise(3, range(4), (2, 3), dtype=torch.float64)
    kept = first.clone()
    first.add_(1.0)  # a caller changing its tensor must not change the next caller's
    again = initial_noise(3, range(4), (2, 3), dtype=torch.float64)
    assert len(calls) == 1
    torch.testing.assert_close(again, kept, rtol=0, atol=0)
    bank = StepNoise(3, range(4), (2, 3), 5, dtype=torch.float64)
    torch.testing.assert_close(StepNoise(3, range(4), (2, 3), 5)(2), bank(2).float(), rtol=0, atol=0)
    assert len(calls) == 2  # one bank draw for both dtypes


def test_the_memo_keeps_at_most_its_bound(monkeypatch):
    monkeypatch.setattr(seeding, "MEMO_BYTES", 3 * 4 * 8 * 8)  # three draws of 4 × 8 float64 values
    seeding._memo.clear()
    for seed in range(5):
        initial_noise(seed, range(4), (8,))
    assert [key[0] for key in seeding._memo] == [2, 3, 4]  # the least recently used went first
    initial_noise(0, range(4), (1000,))  # larger than the bound: drawn, not kept
    assert [key[0] for key in seeding._memo] == [2, 3, 4]


def test_a_smaller_step_bank_is_served_from_a_kept_larger_one(monkeypatch):
    calls = []
    real = seeding._draw
    monkeypatch.setattr(seeding, "_draw", lambda *a, **k: calls.append(a) or real(*a, **k))
    seeding._memo.clear()
    large = StepNoise(1, range(3), (5,), 20, dtype=torch.float64)
    large(0)
    small = StepNoise(1, range(3), (5,), 7, dtype=torch.float64)
    assert all(torch.equal(small(k), large(k)) for k in range(7)) and len(calls) == 1
    seeding._memo.clear()  # and the same values when the small bank is drawn on its own
    assert all(torch.equal(StepNoise(1, range(3), (5,), 7, dtype=torch.float64)(k), large(k)) for k in range(7))
