"""DenoiserMLP's sinusoidal time embedding: DDPM's frequencies by default, chosen periods on request."""
import math

import torch

from diffbench.models.network import DenoiserMLP, timestep_embedding


def test_default_embedding_is_ddpms():
    t = torch.tensor([0.0, 1.0, 17.0, 999.0])
    freqs = torch.tensor([10000.0 ** (-k / 4) for k in range(4)])
    want = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(timestep_embedding(t, 8), want)


def test_periods_run_from_min_to_max_period():
    t = torch.linspace(0, 1000, 11, dtype=torch.float64)
    emb = timestep_embedding(t, 128, max_period=20000.0, min_period=200.0).double()
    # component k is cos(2π t / P_k) with P_k = 200 · 100^(k/64): the fastest repeats every 200 units
    torch.testing.assert_close(emb[:, 0], torch.cos(2 * math.pi * t / 200), atol=1e-5, rtol=0)
    slowest = 200 * 100 ** (63 / 64)
    torch.testing.assert_close(emb[:, 127], torch.sin(2 * math.pi * t / slowest), atol=1e-5, rtol=0)


def test_float64_times_are_embedded_in_float64():
    t = torch.tensor([0.3, 123.456789], dtype=torch.float64)
    emb = timestep_embedding(t, 8, max_period=20000.0, min_period=200.0)
    periods = 200.0 * 100.0 ** (torch.arange(4, dtype=torch.float64) / 4)
    want = torch.cat([torch.cos(2 * math.pi * t[:, None] / periods), torch.sin(2 * math.pi * t[:, None] / periods)], 1)
    assert emb.dtype == torch.float64
    torch.testing.assert_close(emb, want, atol=1e-14, rtol=0)


def test_network_uses_its_embedding_periods():
    torch.manual_seed(0)
    smooth = DenoiserMLP(time_min_period=200.0, time_max_period=20000.0)
    for block in smooth.blocks:  # blocks start as the identity; give the embedding a path to the output
        torch.nn.init.normal_(block.fc2.weight, std=0.05)
    ddpm = DenoiserMLP()
    ddpm.load_state_dict(smooth.state_dict())
    x, labels = torch.randn(2, 1, 8, 8), torch.tensor([3, 10])
    # one training step apart: DDPM's fastest component turns by 1 radian, the smooth one by 2π/200
    t0, t1 = torch.full((2,), 500.0), torch.full((2,), 501.0)
    smooth_change = (smooth(x, t1, labels) - smooth(x, t0, labels)).abs().max()
    ddpm_change = (ddpm(x, t1, labels) - ddpm(x, t0, labels)).abs().max()
    assert smooth_change < ddpm_change / 5
