"""Every component this distribution registers passes diffbench's conformance kit."""

from __future__ import annotations

from diffbench.registry import build_registry
from diffbench.testing import components, parametrize_with_checks

DISTRIBUTION = "diffbench-extra"
OURS = components(build_registry(), distribution=DISTRIBUTION)  # found through the installed entry point


def test_plugin_is_installed():
    assert OURS, f"no components from {DISTRIBUTION}; install it first: pip install -e plugins/diffbench-extra"


@parametrize_with_checks(OURS)
def test_conformance(check):
    check()
