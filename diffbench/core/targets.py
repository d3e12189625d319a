"""Prediction targets: turn a network's raw output into x0_hat and back.

With x_t = alpha x0 + sigma eps (``Coef`` at the network's t), every target is affine in the
raw output, so guidance may be applied to x0_hat directly.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from diffbench.core.schedules import Coef


class EpsTarget:
    """ε-prediction (Ho et al. 2020)."""

    name = "eps"

    def to_x0(self, out: Tensor, x_t: Tensor, c: Coef) -> Tensor:
        return (x_t - c.sigma * out) / c.alpha

    def from_x0(self, x0: Tensor, x_t: Tensor, c: Coef) -> Tensor:
        return (x_t - c.alpha * x0) / c.sigma


class X0Target:
    """x0 (data) prediction."""

    name = "x0"

    def to_x0(self, out: Tensor, x_t: Tensor, c: Coef) -> Tensor:
        return out

    def from_x0(self, x0: Tensor, x_t: Tensor, c: Coef) -> Tensor:
        return x0


class VTarget:
    """v-prediction v = alpha eps - sigma x0 (Salimans & Ho 2022)."""

    name = "v"

    def to_x0(self, out: Tensor, x_t: Tensor, c: Coef) -> Tensor:
        return (c.alpha * x_t - c.sigma * out) / (c.alpha**2 + c.sigma**2)

    def from_x0(self, x0: Tensor, x_t: Tensor, c: Coef) -> Tensor:
        eps = (x_t - c.alpha * x0) / c.sigma
        return c.alpha * eps - c.sigma * x0


class FlowTarget:
    """Velocity u = dx_t/dt = alpha' x0 + sigma' eps (flow matching, Lipman et al. 2023)."""

    name = "flow"
    needs_derivatives = True  # only schedules with dalpha/dt, dsigma/dt (not discrete VP) support it

    def to_x0(self, out: Tensor, x_t: Tensor, c: Coef) -> Tensor:
        _check_derivatives(c)
        return (c.dsigma * x_t - c.sigma * out) / (c.alpha * c.dsigma - c.sigma * c.dalpha)

    def from_x0(self, x0: Tensor, x_t: Tensor, c: Coef) -> Tensor:
        _check_derivatives(c)
        eps = (x_t - c.alpha * x0) / c.sigma
        return c.dalpha * x0 + c.dsigma * eps


def _check_derivatives(c: Coef) -> None:
    """Reject a Coef without time derivatives (host values only: a device tensor is never synced)."""
    for v in (c.dalpha, c.dsigma):
        if not isinstance(v, Tensor) and np.isnan(v).any():
            raise ValueError(
                "the 'flow' target needs dalpha/dt and dsigma/dt, which this noise schedule "
                "does not define (discrete VP schedules have none)"
            )


TARGETS = {t.name: t for t in (EpsTarget(), X0Target(), VTarget(), FlowTarget())}
