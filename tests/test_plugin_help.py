"""Every component lists its options (type, default, meaning); nested option blocks are checked without loading."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from diffbench import registry as registry_module
from diffbench.cli import cli
from diffbench.noise import TrainedBetasVP
from diffbench.registry import build_registry, option_rows
from diffbench.schedulers import materialize
from diffbench.suite import SuiteError, json_schema, parse_suite

BUILTINS = build_registry(autoload=False)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    monkeypatch.setattr(registry_module, "_default", BUILTINS)


@pytest.mark.parametrize("comp", list(BUILTINS), ids=lambda c: f"{c.kind}-{c.name}")
def test_every_builtin_option_has_a_type_default_and_meaning(comp):
    rows = option_rows(comp)
    assert [r["option"] for r in rows] == list(comp.options)
    for row in rows:
        assert row["meaning"], f"{comp.kind} {comp.name!r} option {row['option']!r} has no meaning"
        assert row["type"] and row["type"] != "any", f"{comp.kind} {comp.name!r} option {row['option']!r}: no type"
        assert json.loads(row["default"]) == comp.options[row["option"]]


def test_plugins_name_prints_every_builtins_options():
    for comp in BUILTINS:
        out = invoke("plugins", comp.name)
        assert out.exit_code == 0, out.output
        assert f"{comp.kind} {comp.name} " in out.output
        for row in option_rows(comp):
            assert f"  {row['option']}" in out.output and row["meaning"][:30] in out.output


def test_plugins_name_shows_schedule_options_and_extractors():
    out = invoke("plugins", "python").output
    assert "trained-betas:" in out and "betas" in out and "num_steps" in out
    out = invoke("plugins", "fid").output
    assert "inception-v3-compat" in out and "digits-cnn" in out and "dinov2" not in out
    assert "feature extractors" in invoke("plugins").output


def test_plugins_unknown_name_is_one_line():
    out = invoke("plugins", "nope")
    assert out.exit_code == 2 and "no component named 'nope'" in out.output


def _python_suite(**options):
    return {"name": "t", "num_samples": 2, "grid": {"sampler": ["ddim"], "steps": [2]},
            "model": {"name": "python", "options": {"factory": "net.py:make", "shape": [1, 4, 4], **options}}}


@pytest.mark.parametrize("options,message", [
    ({"schedule_options": {"num_timesteps": 10}},
     "model.options.schedule_options: schedule 'linear' has no option 'num_timesteps'; allowed: num_steps, "
     "beta_start, beta_end"),
    ({"schedule": "trained-betas", "schedule_options": {"betas": "0.1"}},
     "model.options.schedule_options: schedule 'trained-betas' option 'betas' must be list[float] | None"),
    ({"schedule": "linaer"}, "model.options.schedule: unknown noise schedule 'linaer'; available: linear"),
    ({"target": "epsilon"}, "model.options.target: unknown target 'epsilon'; available: eps"),
])
def test_nested_options_are_checked_without_loading(options, message):
    with pytest.raises(SuiteError) as err:
        parse_suite(_python_suite(**options), BUILTINS)
    assert str(err.value).startswith(message)


def test_validate_no_load_checks_schedule_options(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_python_suite(schedule_options={"num_timesteps": 10})))
    out = invoke("validate", "--no-load", path)
    assert out.exit_code == 2 and "allowed: num_steps, beta_start, beta_end" in out.output


def test_schema_describes_schedule_options():
    defs = json_schema(BUILTINS)["$defs"]
    block = defs["model_python_options"]["properties"]["schedule_options"]
    titles = [v["title"] for v in block["anyOf"]]
    assert "trained-betas schedule options" in titles
    linear = block["anyOf"][titles.index("linear schedule options")]
    assert linear["additionalProperties"] is False and set(linear["properties"]) == {"num_steps", "beta_start",
                                                                                      "beta_end"}


def test_linspace_t_min_gives_the_authors_grid_on_a_t_plus_one_table():
    """A (T+1)-entry table trained on t = 1..T: linspace t_min=1 visits round(linspace(T, 1, N)), as their loop."""
    betas = np.linspace(1e-4, 0.02, 1001)
    sched = TrainedBetasVP(betas.tolist())
    for n in (1, 2, 10, 27, 50, 1000):
        grid = materialize(BUILTINS.get("scheduler", "linspace").obj, sched, n, t_min=1)
        expected = np.round(np.linspace(1000, 1, n)) if n > 1 else np.array([1000.0])
        np.testing.assert_allclose(grid.timesteps, expected, atol=1e-9)
    with pytest.raises(ValueError, match="at most 1000 steps between t_min=1"):
        materialize(BUILTINS.get("scheduler", "linspace").obj, sched, 1001, t_min=1)
    with pytest.raises(ValueError, match="t_min must be a training timestep"):
        materialize(BUILTINS.get("scheduler", "linspace").obj, sched, 5, t_min=0.5)
