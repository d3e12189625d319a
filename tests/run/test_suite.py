"""Suite schema, plugin-aware validation (errors name the YAML path) and grid expansion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from runhelpers import grid, small, test_registry

from diffbench.run.suite import SuiteError, expand, json_schema, load_suite, parse_suite

REPO = Path(__file__).resolve().parents[2]
REG, _ = test_registry()


def error_of(data) -> str:
    with pytest.raises(SuiteError) as info:
        parse_suite(data, REG)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_valid_suite_resolves_shorthand_and_defaults():
    suite = parse_suite(small(), REG)
    assert [s.name for s in suite.grid.sampler] == ["euler", "heun", "dpm-solver++-2m"]
    assert suite.grid.guidance == [None]
    assert suite.metrics[0].name == "mean-norm"
    assert suite.dtype is None and suite.conditional is True


@pytest.mark.parametrize(
    "data, expected",
    [
        (small(colour="red"), "colour: unknown key; allowed: name, description, model,"),
        (small(grid=grid(stepz=[1])), "grid.stepz: unknown key; allowed: sampler, scheduler, steps, guidance"),
        (small(device="gpu"), "device: device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (small(dtype="f32"), "dtype: Input should be 'float32', 'float64', 'float16' or 'bfloat16'"),
        (small(num_samples=0), "num_samples: Input should be greater than 0"),
        (small(grid=grid(steps=[4, -1])), "grid.steps[1]: Input should be greater than 0"),
        (small(grid=grid(guidance=[1.0, -2])), "grid.guidance: guidance must be null or >= 0"),
        (small(seeds=[3, 3]), "seeds: seeds must be distinct"),
        (
            small(grid=grid(sampler=["euler", "euler"])),
            "sampler 'euler' appears twice; give one entry a distinct 'label'",
        ),
        (
            small(grid=grid(sampler=["euler", {"name": "ddim", "options": {"etaa": 1}}])),
            "grid.sampler[1].options.etaa: sampler 'ddim' has no such option; allowed: eta",
        ),
        (
            small(grid=grid(sampler=[{"name": "ddim", "options": {"eta": "lots"}}])),
            "grid.sampler[0].options.eta: Input should be a valid number",
        ),
        (small(grid=grid(sampler=["eulr"])), "grid.sampler[0].name: unknown sampler 'eulr'; available: broken, ddim,"),
        (
            small(grid=grid(scheduler=[{"name": "karras", "options": {"rho": "x"}}])),
            "grid.scheduler[0].options.rho: Input should be a valid number",
        ),
        (small(model={"name": "gmm", "options": {"dims": 3}}), "model.options.dims: model 'gmm' has no such option;"),
        (small(metrics=[{"name": "mean-norm", "options": {"scale": "big"}}]), "metrics[0].options.scale: Input should"),
        (small(metrics=["fidd"]), "metrics[0].name: unknown metric 'fidd'; available:"),
        (
            small(exclude=[{"sampler": "ddim"}]),
            "exclude[0].sampler: 'ddim' matches no sampler; allowed: dpm-solver++-2m, euler, heun",
        ),
        (
            small(include=[{"sampler": "heun", "stepz": 3}]),
            "include[0].stepz: unknown key; allowed: model, sampler, scheduler,",
        ),
        (small(requires={"diffbench": ">=99"}), "requires.diffbench: need diffbench>=99, found"),
        (small(requires={"nope-dist": ">=1"}), "requires.nope-dist: no plugin distribution 'nope-dist' is installed"),
    ],
)
def test_errors_name_the_path_and_allowed_values(data, expected):
    assert expected in error_of(data)


def test_options_are_coerced_and_only_given_keys_kept():
    suite = parse_suite(small(grid=grid(sampler=[{"name": "ddim", "options": {"eta": 1}}])), REG)
    assert suite.grid.sampler[0].options == {"eta": 1.0}
    assert isinstance(suite.grid.sampler[0].options["eta"], float)


def test_yaml_errors_are_one_line_with_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: [unclosed\n")
    with pytest.raises(SuiteError, match=r"bad.yaml: line \d+: invalid YAML") as info:
        load_suite(bad, REG)
    assert "\n" not in str(info.value)
    with pytest.raises(SuiteError, match="cannot read suite"):
        load_suite(tmp_path / "missing.yaml", REG)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(SuiteError, match="a suite must be a mapping"):
        load_suite(bad, REG)


def test_load_suite_prefixes_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small(device="tpu")))
    with pytest.raises(SuiteError, match=r"s.yaml: device: device must be"):
        load_suite(path, REG)


def keys(cells):
    return [(c.sampler.key, c.scheduler.key, c.steps, c.guidance) for c in cells]


def test_several_models_are_an_axis():
    models = [{"name": "gmm", "label": "gmm-x0"}, {"name": "gmm", "label": "gmm-eps", "options": {"target": "eps"}}]
    suite = parse_suite(
        small(
            model=models,
            grid=grid(sampler=["euler", "heun"], steps=[2]),
            exclude=[{"model": "gmm-eps", "sampler": "heun"}],
        ),
        REG,
    )
    assert [(c.model.key, c.sampler.key) for c in expand(suite)] == [
        ("gmm-x0", "euler"),
        ("gmm-x0", "heun"),
        ("gmm-eps", "euler"),
    ]
    assert "model[1].options.target: Input should be a valid string" in error_of(
        small(model=["gmm", {"name": "gmm", "label": "b", "options": {"target": 3}}])
    )
    assert "model: model 'gmm' appears twice" in error_of(small(model=["gmm", "gmm"]))
    assert "exclude[0].model: 'gmx' matches no model; allowed: gmm" in error_of(small(exclude=[{"model": "gmx"}]))


def test_expand_is_the_product_minus_exclude_plus_include():
    suite = parse_suite(
        small(
            grid=grid(sampler=["euler", "heun"], steps=[2, 4, 8]),
            exclude=[{"sampler": "heun", "steps": [8]}, {"steps": 2, "sampler": "euler"}],
            include=[
                {"sampler": ["heun", "ddim"], "steps": 1},
                {"sampler": "euler", "steps": 4},
            ],  # last one: a duplicate
        ),
        REG,
    )
    assert keys(expand(suite)) == [
        ("euler", "karras", 4, None),
        ("euler", "karras", 8, None),
        ("heun", "karras", 2, None),
        ("heun", "karras", 4, None),
        ("heun", "karras", 1, None),
        ("ddim", "karras", 1, None),
    ]
    assert [c.index for c in expand(suite)] == list(range(6))


def test_rules_match_a_sampler_by_name_across_labels():
    samplers = [{"name": "ddim", "label": "ddim-eta0"}, {"name": "ddim", "label": "ddim-eta1", "options": {"eta": 1.0}}]
    suite = parse_suite(
        small(
            grid=grid(sampler=samplers, steps=[2, 4]),
            exclude=[{"sampler": "ddim", "steps": 4}, {"sampler": "ddim-eta1"}],
        ),
        REG,
    )
    assert keys(expand(suite)) == [("ddim-eta0", "karras", 2, None)]


def test_guidance_axis_and_null_matching():
    suite = parse_suite(
        small(grid=grid(sampler=["euler"], steps=[2], guidance=[None, 1.5, 3.0]), exclude=[{"guidance": None}]), REG
    )
    assert [c.guidance for c in expand(suite)] == [1.5, 3.0]


def test_cell_ids_are_stable_and_change_with_anything_that_changes_numbers():
    a = expand(parse_suite(small(), REG))
    assert [c.cell_id for c in a] == [c.cell_id for c in expand(parse_suite(small(), REG))]
    assert len({c.cell_id for c in a}) == len(a)
    assert a[0].cell_id.startswith("gmm__euler__karras__n2__gnone-")
    for change in (
        small(num_samples=65),
        small(seeds=[1]),
        small(model={"name": "gmm", "options": {"seed": 1}}),
        small(grid=grid(scheduler=[{"name": "karras", "options": {"rho": 5.0}}])),
        small(grid=grid(scheduler=[{"name": "karras", "final_zero": False}])),
    ):
        assert expand(parse_suite(change, REG))[0].cell_id != a[0].cell_id


def test_final_zero_at_its_default_leaves_cell_ids_as_recorded_before_the_option():
    explicit = expand(parse_suite(small(grid=grid(scheduler=[{"name": "karras", "final_zero": True}])), REG))
    assert [c.cell_id for c in explicit] == [c.cell_id for c in expand(parse_suite(small(), REG))]
    assert "final_zero" not in explicit[0].config["scheduler"]
    open_cells = expand(parse_suite(small(grid=grid(scheduler=[{"name": "karras", "final_zero": False}])), REG))
    assert open_cells[0].scheduler.key == "karras-nozero"
    assert open_cells[0].config["scheduler"]["final_zero"] is False


def test_json_schema_has_every_plugin_and_its_options():
    schema = json_schema(REG)
    text = json.dumps(schema)
    json.loads(text)
    defs = schema["$defs"]
    ddim = next(v for k, v in defs.items() if k.startswith("SamplerSpec_ddim"))
    assert ddim["properties"]["name"]["const"] == "ddim"
    options = defs[ddim["properties"]["options"]["$ref"].split("/")[-1]]
    assert options["properties"]["eta"]["default"] == 0.0 and options["additionalProperties"] is False
    assert any(k.startswith("MetricSpec_mean_norm") for k in defs)
    assert schema["additionalProperties"] is False


def shipped_suites():
    return sorted((REPO / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", shipped_suites(), ids=lambda p: p.name)
def test_shipped_suites_validate(path):
    from diffbench.registry import default_registry

    registry = default_registry()
    data = yaml.safe_load(path.read_text())

    def name(spec):
        return spec if isinstance(spec, str) else spec["name"]

    models = data["model"] if isinstance(data["model"], list) else [data["model"]]
    missing = [
        (k, n)
        for k, n in [("model", name(m)) for m in models] + [("metric", name(m)) for m in data["metrics"]]
        if (k, n) not in registry
    ]
    assert not missing, f"{path.name} names plugins the test install does not register: {missing}"
    assert len(expand(load_suite(path, registry))) > 0


def test_json_schema_accepts_valid_suites_and_rejects_bad_options():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema(REG)
    jsonschema.validate(small(model=["gmm", {"name": "gmm", "label": "b"}], include=[{"steps": 3}]), schema)
    for path in shipped_suites():
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(small(grid=grid(sampler=[{"name": "ddim", "options": {"etaa": 1}}])), schema)


def test_python_built_suites_take_tuples_and_numpy_scalars_as_yaml_values():
    import numpy as np

    suite = parse_suite(
        {
            "name": "py",
            "model": "gmm",
            "metrics": ("solver-error",),
            "num_samples": np.int64(64),
            "seeds": (np.int32(0), 1),
            "grid": {"sampler": ("euler", "heun"), "steps": [np.int64(2), 3]},
        }
    )
    assert suite.num_samples == 64 and type(suite.num_samples) is int and suite.seeds == [0, 1]
    assert sorted((c.sampler.name, c.steps) for c in expand(suite)) == [
        ("euler", 2),
        ("euler", 3),
        ("heun", 2),
        ("heun", 3),
    ]
    with pytest.raises(SuiteError, match="not a finite number"):
        parse_suite(
            {"name": "py", "model": "gmm", "grid": {"sampler": ["euler"], "steps": [2]}, "guidance": np.float32("nan")}
        )
    with pytest.raises(SuiteError):  # NumPy's bool is still a bool, not a count
        parse_suite(
            {"name": "py", "model": "gmm", "num_samples": np.bool_(True), "grid": {"sampler": ["euler"], "steps": [2]}}
        )


@pytest.mark.parametrize("path", sorted((REPO / "suites").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_suite_reads_back_from_its_run_directory_copy_with_the_same_cells(path):
    """A run directory stores the suite as JSON (suite.json; shards' copies); merge and --resume read it back.
    Include/exclude rules must keep meaning what they meant (a rule axis stored as null once read back as
    'matches null': steps.yaml's merge failed with 'include[0].model: None matches no model')."""
    from diffbench.registry import default_registry
    from diffbench.run.rundir import dumps
    from diffbench.run.suite import stored_suite_data

    registry = default_registry()
    suite = load_suite(path, registry)
    stored = json.loads(dumps(suite.model_dump(mode="json")))
    again = parse_suite(stored_suite_data(stored), registry)
    assert [(c.cell_id, c.config_hash) for c in expand(again)] == [(c.cell_id, c.config_hash) for c in expand(suite)]
    for rule in stored["include"] + stored["exclude"]:
        assert all(v is not None for axis, v in rule.items() if axis != "guidance")  # only the axes it names
