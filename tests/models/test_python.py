"""The python model: a user's network under declared conventions reproduces the built-in exact model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import diffbench
from diffbench.models.gmm import gmm
from diffbench.models.python import python_model

FACTORIES = str(Path(__file__).with_name("python_factories.py"))


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Tiny tensors: threads only add contention."""


def draw(model, sampler="heun", steps=6, scheduler="karras"):
    return diffbench.sample(model, sampler, steps=steps, scheduler=scheduler, num_samples=5, dtype="float64").samples


def test_guided_diffusion_conventions_match_the_exact_model():
    """Discrete linear VP, ε, network time t·1000/T, learned-variance output: equals gmm(linear, eps)."""
    ref = draw(gmm(schedule="linear", target="eps"), "ddim", scheduler="trailing")
    ours = python_model(
        factory=f"{FACTORIES}:guided_diffusion_like",
        factory_options={"scale": 1000 / 1000.5, "learned_variance": True},
        schedule="linear",
        target="eps",
        time_input="t",
        time_scale=1000 / 1000.5,
        shape=[2],
        learned_variance=True,
    )
    assert ours.network_time(1.0, 500.0) == pytest.approx(500.0 * 1000 / 1000.5)
    torch.testing.assert_close(draw(ours, "ddim", scheduler="trailing"), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("convention", ["sigma", "edm"])
def test_edm_conventions_match_the_exact_model(convention):
    ref = draw(gmm(schedule="edm", target="x0"))
    ours = python_model(
        factory=f"{FACTORIES}:edm_like",
        factory_options={"convention": convention},
        schedule="edm",
        target="x0",
        time_input=convention,
        shape=[2],
    )
    torch.testing.assert_close(draw(ours), ref, rtol=1e-12, atol=1e-12)


def test_wrong_time_convention_changes_samples():
    """The declaration matters: the same network read with time_input 'sigma' instead of 'edm' is wrong."""
    wrong = python_model(
        factory=f"{FACTORIES}:edm_like",
        factory_options={"convention": "edm"},
        schedule="edm",
        target="x0",
        time_input="sigma",
        shape=[2],
    )
    assert not torch.allclose(draw(wrong), draw(gmm(schedule="edm", target="x0")), atol=1e-3)


@pytest.mark.parametrize(
    "options,match",
    [
        ({}, "needs options.factory"),
        ({"factory": "nope", "shape": [2]}, "expected 'package.module:function'"),
        ({"factory": "no_such_pkg.mod:f", "shape": [2]}, "cannot import 'no_such_pkg.mod'"),
        ({"factory": "math:nothing", "shape": [2]}, "has no callable 'nothing'"),
        ({"factory": f"{FACTORIES}:not_a_module", "shape": [2]}, "not a torch.nn.Module"),
        ({"factory": "x.py:f", "shape": [2]}, "no such file"),
        ({"factory": f"{FACTORIES}:edm_like", "target": "nope"}, "options.target"),
        ({"factory": f"{FACTORIES}:edm_like", "time_input": "nope"}, "options.time_input"),
        ({"factory": f"{FACTORIES}:edm_like", "time_input": "sigma", "time_scale": 2.0}, "time_scale applies"),
        ({"factory": f"{FACTORIES}:edm_like"}, "options.shape"),
        ({"factory": f"{FACTORIES}:edm_like", "shape": [2], "schedule": "nope"}, "options.schedule"),
        ({"factory": f"{FACTORIES}:edm_like", "shape": [2], "data_range": [1, 0]}, "options.data_range"),
    ],
)
def test_bad_options_are_one_line_errors(options, match):
    with pytest.raises(ValueError, match=match) as err:
        python_model(**options)
    assert "\n" not in str(err.value)


def test_checkpoint_is_passed_to_the_factory_and_hashed(tmp_path):
    import hashlib

    ckpt = tmp_path / "w.bin"
    ckpt.write_bytes(b"weights")
    model = python_model(
        factory=f"{FACTORIES}:with_checkpoint",
        schedule="edm",
        target="x0",
        time_input="sigma",
        shape=[2],
        checkpoint=str(ckpt),
    )
    assert model.checkpoint_hash == hashlib.sha256(b"weights").hexdigest()
    assert model.network.module.checkpoint == str(ckpt)
    assert diffbench.default_registry().get("model", "python").options["factory"] == ""
