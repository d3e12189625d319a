"""Plugin discovery through real entry points: built-ins, broken plugins reported by name, autoload off."""
from __future__ import annotations

import importlib.metadata as md
import inspect
import re
import sys
import textwrap
import types

import pytest

import diffbench
from diffbench import hookspecs
from diffbench.registry import DECLARATIONS, DISABLE_AUTOLOAD_ENV, KINDS, RegistrationError, Registry, build_registry

SAMPLER_NAMES = sorted(["ddim", "ddpm", "dpm-solver++-2m", "dpm-solver++-2m-sde", "dpm-solver++-2s", "dpm-solver++-3m",
                        "dpm-solver++-3m-corrected", "dpm-solver-1", "dpm-solver-2", "dpm-solver-3", "euler",
                        "euler-ancestral", "heun", "lms", "deis", "pndm", "pc", "restart"])
HEADER = "from diffbench.hookspecs import hookimpl\n"
GOOD_SAMPLER = "def sampler(denoiser, x, sigmas, *, noise=None, gain: float = 1.0):\n    return x\n"
PLUGINS = {  # entry-point name → module source; module names are prefixed per test
    "good": GOOD_SAMPLER + """
@hookimpl
def diffbench_register(registry):
    registry.add("sampler", "good-sampler", sampler, nfe=lambda sigmas, **_: 0)
""",
    "importfail": "raise ImportError('needs a library that is not installed')\n",
    "dup": GOOD_SAMPLER + """
@hookimpl
def diffbench_register(registry):
    registry.add("sampler", "dup-first", sampler, nfe=lambda sigmas, **_: 0)
    registry.add("sampler", "euler", sampler, nfe=lambda sigmas, **_: 0)
""",
    "badsig": """
def sampler(x, denoiser, sigmas, *, noise=None):
    return x

@hookimpl
def diffbench_register(registry):
    registry.add("sampler", "backwards", sampler, nfe=lambda sigmas, **_: 0)
""",
    "typo": """
@hookimpl
def diffbench_regster(registry):
    pass
""",
    "nohook": "def diffbench_register(registry):\n    pass\n",
}


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """Install (on sys.path) a distribution 'fakeplugs' 1.0 whose ``diffbench`` entry points are PLUGINS."""
    prefix = f"fakeplug_{tmp_path.name.replace('-', '_')}_"
    info = tmp_path / "fakeplugs-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplugs\nVersion: 1.0\n")
    lines = [f"{name} = {prefix}{name}" for name in PLUGINS]
    (info / "entry_points.txt").write_text("[diffbench]\n" + "\n".join(lines) + "\n")
    for name, source in PLUGINS.items():
        (tmp_path / f"{prefix}{name}.py").write_text(HEADER + textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    yield
    for mod in [m for m in sys.modules if m.startswith(prefix)]:
        del sys.modules[mod]


@pytest.fixture
def loaded(monkeypatch) -> list[tuple[str, str]]:
    """(name, value) of every entry point loaded while the test runs."""
    seen: list[tuple[str, str]] = []
    real = md.EntryPoint.load

    def load(self):
        seen.append((self.name, self.value))
        return real(self)

    monkeypatch.setattr(md.EntryPoint, "load", load)
    return seen


def test_builtins_come_in_through_the_entry_point(loaded, monkeypatch):
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    reg = build_registry()
    assert ("builtin", "diffbench.builtin") in loaded
    assert not [e for e in reg.errors if e.plugin == "builtin"]
    builtins = [c for c in reg if c.plugin == "builtin"]  # other installed plugins may add more
    assert all((c.distribution, c.version) == ("diffbench", md.version("diffbench")) for c in builtins)
    names = {kind: sorted(c.name for c in builtins if c.kind == kind) for kind in KINDS}
    assert names["sampler"] == SAMPLER_NAMES
    assert names["scheduler"] == sorted(["linspace", "leading", "trailing", "karras", "logsnr", "quadratic",
                                         "exponential", "ddim-quadratic"])
    assert names["target"] == ["eps", "flow", "v", "x0"]
    assert "gmm" in names["model"] and "solver-error" in names["metric"]
    assert reg.plugin_versions()["diffbench"] == diffbench.__version__


def test_broken_plugins_are_reported_by_name_and_the_rest_load(fake_distribution, loaded):
    # fakeplugs is first on sys.path, so its entry points load before the built-ins': the built-ins
    # still register first, so the clash on 'euler' is reported against 'dup', not 'builtin'
    reg = build_registry()
    assert [n for n, _ in loaded].index("dup") < [n for n, _ in loaded].index("builtin")
    errors = {e.plugin: e for e in reg.errors}
    assert set(errors) == {"importfail", "dup", "badsig", "typo", "nohook"}
    assert all(e.distribution == "fakeplugs" for e in errors.values())
    assert "failed to import: ImportError: needs a library that is not installed" in str(errors["importfail"])
    assert "sampler 'euler' is already registered by plugin 'builtin'" in str(errors["dup"])
    assert "must take positional parameters (denoiser, x, sigmas), got (x, denoiser, sigmas)" in str(errors["badsig"])
    assert "diffbench_regster" in str(errors["typo"])
    assert "defines no diffbench hook" in str(errors["nohook"])
    assert str(errors["dup"]).startswith("plugin 'dup' (fakeplugs):")
    # the good plugin and every built-in still load; a failing plugin leaves nothing half-registered
    good = reg.get("sampler", "good-sampler")
    assert (good.plugin, good.distribution, good.version, good.options) == ("good", "fakeplugs", "1.0", {"gain": 1.0})
    assert ("sampler", "dup-first") not in reg and ("sampler", "backwards") not in reg
    assert reg.get("sampler", "euler").plugin == "builtin"
    assert set(SAMPLER_NAMES) <= set(reg.names("sampler"))


def test_environment_variable_turns_autoload_off(fake_distribution, loaded, monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    reg = build_registry()
    assert loaded == [] and not reg.errors
    assert ("sampler", "good-sampler") not in reg
    assert reg.names("sampler") == SAMPLER_NAMES  # built-ins only, loaded from their module
    assert reg.get("sampler", "heun").distribution == "diffbench"


def sampler_fn(denoiser, x, sigmas, *, noise=None):
    """A valid sampler."""
    return x


def nfe(sigmas, **_):
    return 0


@pytest.mark.parametrize("kind,obj,meta,match", [
    ("solver", sampler_fn, {}, "unknown kind 'solver'"),
    ("sampler", sampler_fn, {}, "must declare nfe"),
    ("sampler", sampler_fn, {"nfe": nfe, "order": 0}, "order must be a positive int"),
    ("sampler", lambda denoiser, x, sigmas: x, {"nfe": nfe}, "keyword-only 'noise'"),
    ("sampler", lambda denoiser, x, sigmas, noise=None: x, {"nfe": nfe}, "got (denoiser, x, sigmas, noise)"),
    ("sampler", lambda denoiser, x, sigmas, *, noise=None, eta: x, {"nfe": nfe}, "option 'eta' needs a default"),
    ("scheduler", lambda steps, schedule: None, {}, "positional parameters (schedule, steps)"),
    ("target", object(), {}, "to_x0"),
    ("model", 3, {}, "must be a callable"),
    ("metric", object(), {}, "compute"),
    ("sampler", sampler_fn, {"nfe": nfe, "orders": 2},
     "sampler 'x': unknown declaration 'orders'; a sampler declares description, nfe, order, stochastic, "
     "order_options, stochastic_options"),
    ("scheduler", lambda schedule, steps: None, {"discrete": True}, "unknown declaration 'discrete'"),
    ("model", lambda: None, {"order": 1}, "a model declares description"),
    ("sampler", sampler_fn, {"nfe": nfe, "order": True}, "order must be a positive int"),
    ("sampler", sampler_fn, {"nfe": nfe, "stochastic": True}, "stochastic must be callable"),
    ("sampler", sampler_fn, {"nfe": nfe, "stochastic_options": {"eta": 1.0}},
     "stochastic_options names 'eta', which is not an option; options are none"),
    ("sampler", sampler_fn, {"nfe": nfe, "order_options": [("eta", 0)]}, "order_options must be a dict"),
])
def test_invalid_components_are_rejected(kind, obj, meta, match):
    with pytest.raises(RegistrationError, match=re.escape(match)):
        Registry().add(kind, "x", obj, **meta)


def test_every_kind_has_one_declaration_table():
    assert list(DECLARATIONS) == list(KINDS)
    assert all(isinstance(text, str) and text for table in DECLARATIONS.values() for text in table.values())


def test_a_misspelled_declaration_fails_the_plugin_by_name():
    plugin = types.ModuleType("misspelt")
    exec(HEADER + GOOD_SAMPLER + """
@hookimpl
def diffbench_register(registry):
    registry.add("sampler", "typo-sampler", sampler, nfe=lambda sigmas, **_: 0, orders=2)
""", plugin.__dict__)
    reg = build_registry(extra_plugins=[plugin], autoload=False)
    assert ("sampler", "typo-sampler") not in reg
    assert [str(e) for e in reg.errors] == ["plugin 'misspelt': registration failed: sampler 'typo-sampler': "
                                            "unknown declaration 'orders'; a sampler declares description, nfe, "
                                            "order, stochastic, order_options, stochastic_options, noise_per_step, "
                                            "final_denoised, option_help, option_types, option_schema, path_options, "
                                            "check_options"]


def test_add_and_get():
    reg = Registry()
    comp = reg.add("sampler", "mine", sampler_fn, nfe=nfe, order=1)
    assert reg.get("sampler", "mine") is comp and comp.description == "A valid sampler."
    assert set(comp.as_row()) >= {"kind", "name", "plugin", "distribution", "version"}
    with pytest.raises(RegistrationError, match="already registered by plugin '<direct>'"):
        reg.add("sampler", "mine", sampler_fn, nfe=nfe)
    with pytest.raises(KeyError, match="unknown sampler 'other'; available: mine"):
        reg.get("sampler", "other")


def test_every_hook_is_prefixed_typed_and_documented():
    specs = [f for name, f in vars(hookspecs).items() if hasattr(f, "diffbench_spec")]
    assert specs
    for f in specs:
        assert f.__name__.startswith("diffbench_") and inspect.getdoc(f)
        assert all(p.annotation is not p.empty for p in inspect.signature(f).parameters.values())
