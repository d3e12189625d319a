"""Suite files are data: a factory named in a suite runs only with consent given outside the file."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from diffbench.cli import cli
from diffbench.registry import RegistrationError, Registry
from diffbench.runner import run_suite
from diffbench.registry import default_registry
from diffbench.suite import SuiteError, parse_suite
from diffbench.trust import ENV, FACTORY_GROUP

FACTORIES = Path(__file__).parent / "models" / "python_factories.py"
pytestmark = pytest.mark.usefixtures("single_thread")


def python_suite(factory: str, **factory_options):
    return parse_suite({"name": "py", "model": {"name": "python", "options": {
                "factory": factory, "factory_options": factory_options, "schedule": "edm", "target": "x0",
                "time_input": "sigma", "shape": [2]}},
            "num_samples": 8, "batch_size": 8, "device": "cpu", "grid": {"sampler": ["euler"], "steps": [2]}}, default_registry())


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


@pytest.fixture
def importing_marks(tmp_path):
    """A factory file that leaves a marker when imported, and a suite naming it."""
    marker = tmp_path / "imported"
    code = tmp_path / "evil.py"
    code.write_text(f"open({str(marker)!r}, 'w').close()\n"
                    f"from importlib.util import spec_from_file_location, module_from_spec\n"
                    f"_s = spec_from_file_location('f', {str(FACTORIES)!r}); _m = module_from_spec(_s)\n"
                    f"_s.loader.exec_module(_m)\nedm_like = _m.edm_like\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(python_suite(f"{code}:edm_like").model_dump(mode="json")))
    return suite, marker


@pytest.mark.parametrize("command", [["run", "--no-progress"], ["validate"], ["validate", "--no-load"]])
def test_a_suite_naming_code_is_refused_before_importing_it(no_env, importing_marks, tmp_path, command):
    suite, marker = importing_marks
    out = ["--out", str(tmp_path / "r")] if command[0] == "run" else []
    result = CliRunner().invoke(cli, [command[0], str(suite), *command[1:], *out])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1
    assert f"model.options.factory: '{suite.parent}/evil.py:edm_like' names code to import and run" in result.stderr
    assert "--trust-code" in result.stderr and f"{ENV}=1" in result.stderr
    assert not marker.exists() and not (tmp_path / "r").exists()


def test_os_system_from_a_suite_never_runs(no_env, tmp_path):
    marker = tmp_path / "ran"
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump(python_suite("os:system", command=f"touch {marker}").model_dump(mode="json")))
    for args in (["validate", str(suite)], ["run", str(suite), "--out", str(tmp_path / "r"), "--no-progress"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and "'os:system' names code" in result.stderr
    with pytest.raises(SuiteError, match="'os:system' names code to import and run"):
        run_suite(python_suite("os:system", command=f"touch {marker}"), tmp_path / "r2", progress=False)
    assert not marker.exists()


def test_consent_by_flag_environment_or_argument_runs_the_factory(no_env, importing_marks, tmp_path, monkeypatch):
    suite, marker = importing_marks
    result = CliRunner().invoke(cli, ["validate", str(suite), "--trust-code"])
    assert result.exit_code == 0, result.output
    assert marker.exists()
    marker.unlink()
    monkeypatch.setenv(ENV, "1")
    assert CliRunner().invoke(cli, ["validate", str(suite)]).exit_code == 0
    monkeypatch.setenv(ENV, "0")  # anything but 1/true/yes/on is no consent
    assert CliRunner().invoke(cli, ["validate", str(suite)]).exit_code == 2
    res = run_suite(suite, tmp_path / "r", progress=False, trust_code=True, draw=False)
    assert res.failed_cells == 0 and len(res.cells) == 1


def test_a_factory_an_installed_plugin_registers_needs_no_flag(no_env, tmp_path, monkeypatch):
    """An entry point in group diffbench.factories (a real installed distribution's metadata) is consent."""
    site = tmp_path / "site"
    info = site / "tiny_factories-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-factories\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{FACTORY_GROUP}]\nedm-gmm = python_factories:edm_like\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(FACTORIES.parent))
    for factory in ("edm-gmm", "python_factories:edm_like"):
        res = run_suite(python_suite(factory), tmp_path / factory, progress=False, draw=False)
        assert res.failed_cells == 0
    with pytest.raises(SuiteError, match="'python_factories:not_a_module' names code"):
        run_suite(python_suite("python_factories:not_a_module"), tmp_path / "other", progress=False)


def test_code_options_must_name_options_of_the_model():
    def model(*, factory: str = ""):
        return None

    reg = Registry()
    reg.add("model", "ok", model, code_options=("factory",))
    with pytest.raises(RegistrationError, match="code_options must be a tuple of its option names"):
        reg.add("model", "bad", model, code_options=("nope",))
    with pytest.raises(RegistrationError, match="code_options"):
        reg.add("model", "bad2", model, code_options="factory")


def test_diffusers_config_cannot_name_a_class_outside_the_model_classes(tmp_path):
    """config.json's _class_name picks a class of the library; only model classes (no pipelines) load."""
    pytest.importorskip("diffusers")
    from diffbench.models.diffusers import ConfigError, _load

    import diffusers

    (tmp_path / "config.json").write_text('{"_class_name": "DiffusionPipeline"}')
    with pytest.raises(ConfigError, match="DiffusionPipeline' is not a diffusers model class"):
        _load(tmp_path, diffusers)
    (tmp_path / "config.json").write_text('{"_class_name": "__loader__"}')
    with pytest.raises(ConfigError, match="is not a diffusers model class"):
        _load(tmp_path, diffusers)
    assert "diffusers" in sys.modules
