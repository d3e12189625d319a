"""The samplers against truth: exact weights, known identities, and the registry rows."""

from __future__ import annotations

import importlib.metadata as md

import numpy as np
import pytest
import torch

import diffbench
from diffbench.core.noise import initial_noise
from diffbench.core.sigma_grids import karras
from diffbench.models.gmm import gmm
from diffbench.registry import build_registry
from diffbench.samplers import SAMPLERS
from diffbench_extra.ipndm import fixed_weights, ipndm, ipndm_v, variable_weights
from diffbench_extra.unipc import unipc

REGISTRY = build_registry()
NAMES = ("ipndm", "ipndm-v", "unipc")


def _start(n: int = 8) -> tuple[diffbench.SigmaDenoiser, torch.Tensor]:
    model = gmm()
    x = initial_noise(0, range(n), model.shape, dtype=torch.float64) * 80.0
    return diffbench.SigmaDenoiser(model), x


def test_registry_rows_name_this_distribution():
    for name in NAMES:
        row = REGISTRY.get("sampler", name).as_row()
        assert (row["plugin"], row["distribution"], row["version"]) == (
            "extra",
            "diffbench-extra",
            md.version("diffbench-extra"),
        )
    assert REGISTRY.plugin_versions()["diffbench-extra"] == md.version("diffbench-extra")


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_variable_weights_integrate_polynomials_exactly(order):
    rng = np.random.default_rng(order)
    nodes = np.sort(rng.uniform(1.0, 3.0, order))  # newest (smallest σ) first, irregular spacing
    sigma_next = nodes[0] - 0.4
    w = variable_weights(nodes.tolist(), sigma_next)
    for degree in range(order):  # Σ w_j p(σ_j) h = ∫ p over the step for every p of degree < order
        p = np.poly1d(rng.normal(size=degree + 1))
        exact = np.polyint(p)(sigma_next) - np.polyint(p)(nodes[0])
        assert np.isclose(sum(wj * p(s) for wj, s in zip(w, nodes)) * (sigma_next - nodes[0]), exact, rtol=1e-10)


def test_weights_agree_on_equal_steps():
    for order in range(1, 5):
        nodes = [1.0 + 0.1 * j for j in range(order)]
        assert np.allclose(variable_weights(nodes, 0.9), fixed_weights(nodes, 0.9), rtol=1e-12)


def test_ipndm_and_ipndm_v_coincide_on_a_uniform_grid():
    den, x = _start()
    sigmas = torch.cat([torch.linspace(80.0, 0.5, 20, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    assert torch.allclose(ipndm(den, x, sigmas), ipndm_v(den, x, sigmas), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("lower_order_final", [True, False])
def test_unipc_predictor_alone_is_dpm_solver_pp_2m(lower_order_final):
    """Zhao et al. 2023, §3.2: UniP-2 with B(h) = e^h - 1 is DPM-Solver++(2M)."""
    den, x = _start()
    sigmas = karras(gmm().schedule, 15)
    ours = unipc(den, x, sigmas, corrector=False, lower_order_final=lower_order_final)
    theirs = SAMPLERS["dpm-solver++-2m"].fn(den, x, sigmas, lower_order_final=lower_order_final)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_corrector_costs_no_evaluation_and_raises_accuracy():
    model = gmm()
    for name in NAMES:
        res = diffbench.sample(model, name, steps=10, scheduler="karras", num_samples=16, registry=REGISTRY)
        assert res.nfe == res.declared_nfe == 10
    den, x = _start()
    sigmas = karras(model.schedule, 64, sigma_min=0.1)[:-1]  # asymptotic regime: order 3 against 2
    exact = model.analytic.ode_solve(x, 80.0, 0.1)
    err = {
        c: float((unipc(den, x, sigmas, corrector=c, lower_order_final=False) - exact).norm()) for c in (True, False)
    }
    assert err[True] < err[False] / 4


def test_bad_options_are_one_line_errors():
    den, x = _start()
    sigmas = karras(gmm().schedule, 3)
    with pytest.raises(ValueError, match="variant must be one of bh1, bh2"):
        unipc(den, x, sigmas, variant="bh3")
    with pytest.raises(ValueError, match="max_order must be 1, 2, 3 or 4"):
        ipndm(den, x, sigmas, max_order=5)


SUITE = """
name: extra
model: gmm
num_samples: 8
batch_size: 8
device: cpu
requires:
  diffbench-extra: ">=0.1"
grid:
  sampler: [ipndm, ipndm-v, unipc]
  steps: [6]
"""


def test_runs_in_a_suite(tmp_path):
    """A suite that requires this distribution runs its samplers and records the measured NFE."""
    api = pytest.importorskip("diffbench.api")
    path = tmp_path / "extra.yaml"
    path.write_text(SUITE)
    result = api.run_suite(path, tmp_path / "run", registry=REGISTRY, progress=False, draw=False)
    assert result.failed == 0 and result.ran == len(NAMES)
    cells = {r["sampler"]: r for r in result.run.read_cells()}
    assert set(cells) == set(NAMES)
    assert all(r["status"] == "ok" and r["nfe"] == r["declared_nfe"] == 6 for r in cells.values())
