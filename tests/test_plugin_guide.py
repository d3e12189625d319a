"""The plugin author's guide documents every hook spec and registry kind, and its example plugin works."""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import pytest

from diffbench import hookspecs, testing
from diffbench.registry import KINDS, build_registry

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugin-guide.md"


def hook_specs() -> dict[str, str]:
    """Name → documented form ``name(param, ...)`` of every hook spec in diffbench.hookspecs."""
    marker = f"{hookspecs.PROJECT}_spec"
    return {
        name: f"{name}({', '.join(inspect.signature(fn).parameters)})"
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, marker)
    }


def headings(text: str, level: int) -> list[str]:
    return re.findall(rf"^{'#' * level} (.+?)\s*$", text, flags=re.M)


def section(text: str, title: str) -> str:
    """The body of the level-2 section ``title``, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"the guide has no '## {title}' section"
    return match[1]


def undocumented_hooks(text: str) -> list[str]:
    """Hook specs without a '### `name(params)`' heading in the guide's Hook specifications section."""
    documented = set(headings(section(text, "Hook specifications"), 3))
    return [name for name, form in hook_specs().items() if f"`{form}`" not in documented]


def test_every_hook_spec_is_documented():
    assert hook_specs(), "diffbench.hookspecs defines no hook spec"
    assert undocumented_hooks(GUIDE.read_text()) == []


def test_a_missing_hook_spec_is_detected():
    text = GUIDE.read_text()
    for name, form in hook_specs().items():
        assert undocumented_hooks(text.replace(f"### `{form}`", "### something else")) == [name]


def test_every_registry_kind_is_documented():
    documented = set(headings(section(GUIDE.read_text(), "Components"), 3))
    assert [kind for kind in KINDS if f"`{kind}`" not in documented] == []


def test_every_kit_check_is_documented():
    text = section(GUIDE.read_text(), "Testing with the conformance kit")
    assert [n for checks in testing.CHECKS.values() for n in checks if f"`{n}`" not in text] == []


def test_the_example_plugin_registers_and_passes_the_kit():
    code = re.findall(r"```python\n(.*?)```", section(GUIDE.read_text(), "A complete example"), flags=re.S)
    assert len(code) == 1
    plugin = types.ModuleType("guide_example")
    exec(compile(code[0], "plugin-guide example", "exec"), plugin.__dict__)
    registry = build_registry(extra_plugins=[plugin], autoload=False)
    assert not registry.errors
    comp = registry.get("sampler", "midpoint")
    assert comp.plugin == "guide_example" and comp.description.startswith("Explicit midpoint (RK2)")
    assert testing._configs(comp, None, None) == [{"eta": 0.0}, {"eta": 1.0}]  # the stochastic one is run too
    results = testing.check_sampler(comp)
    assert {r.status for r in results} == {"passed"}
    assert {r.id.rsplit("-", 1)[1] for r in results} == set(testing.SAMPLER_CHECKS)


def test_the_example_plugin_with_randn_instead_of_noise_fails_the_kit():
    code = re.findall(r"```python\n(.*?)```", section(GUIDE.read_text(), "A complete example"), flags=re.S)[0]
    broken = code.replace("sigma_up * noise(k)", "sigma_up * torch.randn_like(x)")
    assert broken != code
    plugin = types.ModuleType("guide_example_randn")
    exec(compile("import torch\n" + broken, "plugin-guide example, broken", "exec"), plugin.__dict__)
    comp = build_registry(extra_plugins=[plugin], autoload=False).get("sampler", "midpoint")
    with pytest.raises(testing.CheckFailure) as info:
        testing.check_sampler(comp)
    failed = {r.id.rsplit("-", 1)[1] for r in info.value.results if r.status == "failed"}
    assert failed == {"check_determinism", "check_batch_invariance", "check_noise"}


def test_diffbench_plugins_shows_the_columns_the_guide_names():
    from click.testing import CliRunner

    from diffbench.cli import cli

    text = section(GUIDE.read_text(), "How diffbench loads plugins")
    sentence = re.search(r"`diffbench plugins` lists every component with (.*?);", text, flags=re.S)[1]
    header = CliRunner().invoke(cli, ["plugins"]).stdout.splitlines()[0].split()
    positions = [sentence.find(column) for column in header]
    assert header == ["kind", "name", "plugin", "distribution", "version", "description"]
    assert -1 not in positions and positions == sorted(positions)  # named in the guide, in the same order
