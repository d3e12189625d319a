"""Hostile input, one case per class at least: misbehaving plugins, hostile suite files, damaged or
shared run directories, and the honesty of what sample() leaves behind."""
from __future__ import annotations

import re
import sys

import pytest
import torch

from diffbench.hookspecs import hookimpl
from diffbench.registry import Registry, build_registry
from diffbench.results import RunDir
from diffbench.runner import run_suite
from diffbench.samplers import per_step
from diffbench.sampling import SamplerOutputError, sample
from diffbench.suite import parse_suite
import runhelpers
from runhelpers import grid, small

pytestmark = pytest.mark.usefixtures("single_thread")


# --- misbehaving samplers ------------------------------------------------------------------------

def wrong_shape(denoiser, x, sigmas, *, noise=None):
    """Drops the last sample."""
    denoiser(x, float(sigmas[0]))
    return x[:-1]


def wrong_dtype(denoiser, x, sigmas, *, noise=None):
    """Returns half precision for a float64 model."""
    denoiser(x, float(sigmas[0]))
    return x.half()


def not_a_tensor(denoiser, x, sigmas, *, noise=None):
    denoiser(x, float(sigmas[0]))
    return x.tolist()


def exits(denoiser, x, sigmas, *, noise=None):
    """Calls sys.exit as a careless script would."""
    sys.exit(4)


def overcounts(denoiser, x, sigmas, *, noise=None):
    """Makes one more network call than it declares."""
    for s in sigmas[:-1]:
        x = denoiser(x, float(s))
    denoiser(x, float(sigmas[0]))
    return x


class Misbehaving:
    @hookimpl
    def diffbench_register(self, registry: Registry) -> None:
        one = dict(order=None, nfe=lambda s, **_: 1, stochastic=lambda **_: False)
        for fn in (wrong_shape, wrong_dtype, not_a_tensor, exits):
            registry.add("sampler", fn.__name__.replace("_", "-"), fn, **one)
        registry.add("sampler", "overcounts", overcounts, order=None, nfe=per_step(1), stochastic=lambda **_: False)


def hostile_registry() -> Registry:
    return build_registry(extra_plugins=[runhelpers.TestPlugin(), Misbehaving()], autoload=False)


def run(data, out, registry=None, **kw):
    registry = registry or hostile_registry()
    return run_suite(parse_suite(data, registry), out, registry=registry, progress=False, cache_dir=out / "cache",
                     draw=False, **kw)


def test_each_misbehaving_sampler_fails_its_own_cell_with_a_reason(tmp_path):
    samplers = ["wrong-shape", "wrong-dtype", "not-a-tensor", "exits", "nan", "euler"]
    res = run(small(grid=grid(sampler=samplers, steps=[2])), tmp_path / "r")
    cells = res.cells.set_index("sampler")
    assert cells.loc["euler", "status"] == "ok"
    errors = {s: cells.loc[s, "error"] for s in samplers[:-1]}
    assert all(cells.loc[s, "status"] == "failed" for s in errors)
    assert errors["wrong-shape"] == "sampler 'wrong-shape' (samples 0..31) returned shape (31, 2), expected (32, 2)"
    assert errors["wrong-dtype"] == "sampler 'wrong-dtype' (samples 0..31) returned dtype float16, expected float64"
    assert errors["not-a-tensor"] == "sampler 'not-a-tensor' (samples 0..31) returned list, not a tensor"
    assert errors["exits"] == "SystemExit: 4"
    assert errors["nan"] == "sampler 'nan' (samples 0..31) returned non-finite samples: 32 of 32"
    assert res.failed == 5


def test_a_plugin_that_miscounts_its_nfe_is_flagged_in_the_record_and_report(tmp_path):
    res = run(small(grid=grid(sampler=["overcounts"], steps=[3])), tmp_path / "r")
    cell = res.cells.iloc[0]
    assert cell["status"] == "ok" and cell["nfe"] == 4 and cell["declared_nfe"] == 3  # counted is what is used
    rec = RunDir(res.path).read_cells()[0]
    assert len(rec["warnings"]) == 1 and re.fullmatch(
        r"sampler 'overcounts' made 4 network evaluations per sample but declares 3 \(plugin 'Misbehaving[^']*'; "
        r"its cost axis uses the counted NFE\)", rec["warnings"][0])
    report = (res.path / "report.md").read_text()
    assert "## Warnings" in report and "made 4 network evaluations per sample but declares 3" in report


def test_a_builtin_that_miscounts_its_nfe_is_an_error(gmm_model):
    registry = build_registry(autoload=False)
    registry.get("sampler", "euler").meta["nfe"] = lambda sigmas, **_: len(sigmas)  # one more than it makes
    with pytest.raises(SamplerOutputError, match="sampler 'euler' made 4 network evaluations per sample but "
                                                 "declares 5"):
        sample(gmm_model, "euler", steps=4, num_samples=3, registry=registry)


# --- no hidden state -----------------------------------------------------------------------------

@pytest.fixture
def gmm_model():
    return build_registry(autoload=False).get("model", "gmm").obj()


def test_sample_in_another_dtype_leaves_the_callers_model_as_it_was():
    model = build_registry(autoload=False).get("model", "digits-eps").obj()
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    res = sample(model, "euler", steps=3, num_samples=2, dtype="float16")
    assert res.samples.dtype == torch.float16 and res.meta["dtype"] == "float16"
    assert model.dtype == torch.float32
    after = model.network.state_dict()
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items())
    # and a later call without dtype samples in the model's own float32, as if the first never happened
    again = sample(model, "euler", steps=3, num_samples=2)
    fresh = sample(build_registry(autoload=False).get("model", "digits-eps").obj(), "euler", steps=3, num_samples=2)
    assert again.samples.dtype == torch.float32 and torch.equal(again.samples, fresh.samples)
