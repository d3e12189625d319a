"""The plugin module named by the ``diffbench`` entry point: registers this distribution's samplers."""
from __future__ import annotations

from typing import Any

from diffbench.hookspecs import hookimpl
from diffbench.samplers import per_step

from diffbench_extra.ipndm import ipndm, ipndm_v
from diffbench_extra.unipc import unipc


def _deterministic(**_: Any) -> bool:
    return False


@hookimpl
def diffbench_register(registry) -> None:
    """Register ipndm, ipndm-v and unipc; orders are the slopes measured by diffbench.testing."""
    # ipndm's equal-step weights are exact only on uniform σ grids: on the kit's Karras grid it
    # converges at order 2 whatever max_order; ipndm-v weights the actual steps and keeps order 4.
    # option_help: one line per option, printed by `diffbench plugins NAME`
    ab_help = {"max_order": "highest Adams–Bashforth order, reached after a lower-order warm-up (1-4)"}
    registry.add("sampler", "ipndm", ipndm, order=2, nfe=per_step(1), stochastic=_deterministic,
                 option_help=ab_help)
    registry.add("sampler", "ipndm-v", ipndm_v, order=4, nfe=per_step(1), stochastic=_deterministic,
                 option_help=ab_help)
    registry.add("sampler", "unipc", unipc, order=3, nfe=per_step(1), stochastic=_deterministic, option_help={
        "solver_order": "order p of the UniP predictor (1-3)",
        "variant": "B(h) choice: 'bh1' (h) or 'bh2' (e^h - 1)",
        "corrector": "apply the UniC corrector (reuses the next step's network call)",
        "lower_order_final": "lower the order over the last steps (diffusers' default: true)"})
