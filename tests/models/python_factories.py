"""Factories for the python-model tests: the exact GMM denoiser behind various network conventions."""
from __future__ import annotations

import math

import torch

from diffbench.models.gmm import ExactNetwork, GaussianMixture
from diffbench.noise import make_schedule
from diffbench.targets import TARGETS


def _exact(schedule: str, target: str) -> ExactNetwork:
    return ExactNetwork(GaussianMixture.random(dim=2, components=3, seed=0), make_schedule(schedule), TARGETS[target])


class Scaled(torch.nn.Module):
    """Takes t · scale (guided-diffusion's rescale_timesteps); optionally doubles its output channels."""

    def __init__(self, net, scale: float, learned_variance: bool) -> None:
        super().__init__()
        self.net, self.scale, self.learned_variance = net, scale, learned_variance

    def forward(self, x, t, cond=None):
        out = self.net(x, t / self.scale, cond)
        return torch.cat([out, torch.full_like(out, 1e6)], dim=1) if self.learned_variance else out


class FromSigma(torch.nn.Module):
    """An EDM-style network: gets σ or c_noise = ln(σ)/4, returns x0 (the schedule is edm: x_t = x)."""

    def __init__(self, net, convention: str) -> None:
        super().__init__()
        self.net, self.convention = net, convention

    def forward(self, x, t, cond=None):
        sigma = t if self.convention == "sigma" else torch.exp(4.0 * t)
        return self.net(x, sigma, cond)


def guided_diffusion_like(*, scale: float = 1.0, learned_variance: bool = False, schedule: str = "linear"):
    return Scaled(_exact(schedule, "eps"), scale, learned_variance)


def edm_like(*, convention: str = "sigma"):
    return FromSigma(_exact("edm", "x0"), convention)


def not_a_module():
    return math.pi


def with_checkpoint(*, checkpoint: str):
    net = edm_like()
    net.checkpoint = checkpoint  # a real factory would load weights_only state from here
    return net


class Narrow(torch.nn.Module):
    """A network that returns only its input's first ``keep`` features (a shape bug a broadcast would hide)."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep

    def forward(self, x, t, cond=None):
        return x[:, : self.keep]


def narrow(*, keep: int = 1):
    return Narrow(keep)
