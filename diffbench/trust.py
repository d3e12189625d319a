"""Consent to run code a suite names: suite files are data unless the user says otherwise.

A model option declared as naming code (``code_options``, e.g. the ``python`` model's ``factory``:
``package.module:function`` or ``path/file.py:function``) is imported and called only when the user
allowed it outside the suite file: ``diffbench run/validate --trust-code``, the environment setting
``DIFFBENCH_TRUST_CODE=1``, or ``trust_code=True`` from Python (as transformers' ``trust_remote_code``).
A factory that an installed distribution registers under the entry-point group ``diffbench.factories``
needs no flag: installing it was the consent. The check reads entry-point metadata only, so a refused
suite has imported nothing.
"""
from __future__ import annotations

import importlib.metadata as md
import os
from typing import Any

FLAG = "--trust-code"
ENV = "DIFFBENCH_TRUST_CODE"
FACTORY_GROUP = "diffbench.factories"
_TRUE = ("1", "true", "yes", "on")


class UntrustedCodeError(ValueError):
    """A suite names code to import and run without the user's consent; the message is one line."""


def env_trusts_code() -> bool:
    """Whether ``DIFFBENCH_TRUST_CODE`` says yes (1, true, yes, on)."""
    return os.environ.get(ENV, "").strip().lower() in _TRUE


def code_trusted(trust_code: bool | None) -> bool:
    """The user's consent: ``trust_code`` when given (the CLI flag, a Python argument), else the environment."""
    return env_trusts_code() if trust_code is None else bool(trust_code)


def installed_factories() -> dict[str, str]:
    """Entry-point name → ``module:function`` of every factory an installed distribution registers."""
    return {ep.name: ep.value for ep in md.entry_points(group=FACTORY_GROUP)}


def installed_factory(spec: str) -> md.EntryPoint | None:
    """The installed entry point ``spec`` names (by its name or its exact ``module:function``), else None."""
    for ep in md.entry_points(group=FACTORY_GROUP):
        if spec in (ep.name, ep.value):
            return ep
    return None


def check_code_option(value: Any, where: str, trusted: bool) -> None:
    """Refuse (UntrustedCodeError) a suite value naming code, unless trusted or an installed factory."""
    if trusted or not isinstance(value, str) or not value or installed_factory(value) is not None:
        return
    raise UntrustedCodeError(
        f"{where}: {value!r} names code to import and run, and a suite file is data: pass {FLAG} (or set "
        f"{ENV}=1) if you trust this suite, or install the factory as a plugin (entry-point group "
        f"{FACTORY_GROUP!r})")


def check_suite_code(suite: Any, registry: Any, trusted: bool) -> None:
    """Every option of the suite's components that their plugin declares as naming code (``code_options``)."""
    specs = [("model" if len(suite.model) == 1 else f"model[{i}]", "model", m) for i, m in enumerate(suite.model)]
    for where, kind, spec in specs:
        comp = registry.get(kind, spec.name)
        for option in comp.meta.get("code_options", ()):
            check_code_option(spec.options.get(option), f"{where}.options.{option}", trusted)
