"""Plugin manager and the registry of components by kind.

Plugins are discovered through the entry-point group ``diffbench``; the built-in
components come in the same way. Every plugin's hook is called on its own, so a
plugin that fails to import, misspells a hook or registers an invalid component
is reported by name while the others still load.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import json
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import pluggy

from diffbench import hookspecs
from diffbench.text import type_name

KINDS = ("sampler", "scheduler", "target", "model", "metric", "dataset")
ENTRY_POINT_GROUP = "diffbench"
DISABLE_AUTOLOAD_ENV = "DIFFBENCH_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_MODULE = "diffbench.builtin"
BUILTIN_PLUGIN = "builtin"  # the plugin name the built-in components are registered under


# The declarations each kind accepts as ``registry.add(kind, name, obj, **meta)`` keywords: the ONE table.
# A key not listed for its kind is rejected, so a misspelling (``orders=2``) cannot switch a check off.
# Adding a declaration key? Add it here, with a one-line meaning (docs/plugin-guide.md shows this table).
DECLARATIONS: dict[str, dict[str, str]] = {
    "sampler": {
        "nfe": "callable(sigmas, **options) -> int: network evaluations per sample for this σ list (required)",
        "order": "int or None: convergence order of the deterministic configuration (None: no claim)",
        "stochastic": "callable(**options) -> bool: whether these options draw noise through noise(k)",
        "order_options": "dict: options that make the sampler deterministic and full order (the order check)",
        "stochastic_options": "dict: options under which the sampler is stochastic (the kit's stochastic run)",
        "noise_per_step": "callable(**options) -> int: noise(k) draws per step (default 1; noise(k) for "
                          "k < steps × this)",
        "final_denoised": "bool: whether the step into σ = 0 returns D(x, σ) of the last call (default true; "
                          "false for multistep methods that integrate their polynomial down to 0, as LMS)",
    },
    "scheduler": {
        "discrete_only": "bool: needs a discrete model's training timesteps; refuses continuous schedules",
    },
    "target": {},
    "model": {
        "code_options": "tuple of option names whose values name code to import and run (e.g. 'module:function'); "
                        "a suite may set them only with the user's consent (--trust-code, see diffbench.trust)",
    },
    "metric": {
        "higher_is_better": "bool, or a dict by value name: the direction regressions are read in",
    },
    "dataset": {},
}
# Declarations every kind accepts.
COMMON_DECLARATIONS: dict[str, str] = {
    "option_help": "dict: option name -> one line saying what it means ('diffbench plugins NAME' prints it)",
    "option_types": "dict: option name -> type, for options whose default (None) does not say their type",
    "option_schema": "dict: option name -> JSON Schema fragment of a nested block (diffbench schema shows it)",
    "path_options": "dict: option name -> 'path' (a file or folder), 'factory' ('file.py:function' or "
                    "'module:function') or 'path-or-id' (a folder, else an id such as a hub name): a relative "
                    "path in a suite resolves against the suite file's folder",
    "check_options": "callable(**options) -> None: the checks that need no loading (validate --no-load runs "
                     "them); a one-line ValueError, starting with the option's name",
}


PATH_KINDS = ("path", "factory", "path-or-id")


def declarations(kind: str) -> dict[str, str]:
    """The declaration keys ``kind`` accepts with their meanings."""
    return {**DECLARATIONS.get(kind, {}), **COMMON_DECLARATIONS}


class RegistrationError(ValueError):
    """A component was rejected by the registry."""


class UnknownComponentError(KeyError):
    """No component of that kind and name is registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


@dataclass(frozen=True)
class Component:
    """One registered sampler, scheduler, target, model or metric."""

    kind: str
    name: str
    obj: Any
    plugin: str
    distribution: str | None
    version: str | None
    options: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def as_row(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "options": {k: _jsonable(v) for k, v in self.options.items()},
            "description": self.description,
        }


@dataclass(frozen=True)
class PluginError:
    """A plugin that could not be loaded or registered something invalid."""

    plugin: str
    distribution: str | None
    message: str

    def __str__(self) -> str:
        dist = f" ({self.distribution})" if self.distribution else ""
        return f"plugin {self.plugin!r}{dist}: {self.message}"


def normalize_distribution(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): case, '-', '_' and '.' runs alike."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _jsonable(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else repr(v)


def keyword_options(fn: Callable, skip: Iterable[str] = ()) -> dict[str, Any]:
    """Keyword-only parameters of ``fn`` and their defaults (the component's options)."""
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.KEYWORD_ONLY and p.name not in skip:
            if p.default is p.empty:
                raise RegistrationError(f"option {p.name!r} needs a default value")
            out[p.name] = p.default
    return out


def _check_positional(fn: Callable, names: tuple[str, ...], kind: str) -> None:
    if not callable(fn):
        raise RegistrationError(f"a {kind} must be callable, got {type(fn).__name__}")
    params = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if tuple(params) != names:
        raise RegistrationError(
            f"a {kind} must take positional parameters ({', '.join(names)}), "
            f"got ({', '.join(params)})"
        )


def _validate(kind: str, obj: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """Check a component's signature for its kind; return its options."""
    if kind == "sampler":
        _check_positional(obj, ("denoiser", "x", "sigmas"), kind)
        params = inspect.signature(obj).parameters
        if "noise" not in params or params["noise"].kind is not params["noise"].KEYWORD_ONLY:
            raise RegistrationError("a sampler must take a keyword-only 'noise' parameter")
        if not callable(meta.get("nfe")):
            raise RegistrationError("a sampler must declare nfe=callable(sigmas, **options)")
        order = meta.get("order")
        if order is not None and (not isinstance(order, int) or isinstance(order, bool) or order < 1):
            raise RegistrationError(f"a sampler's order must be a positive int or None, got {order!r}")
        stochastic = meta.get("stochastic")
        if stochastic is not None and not callable(stochastic):
            raise RegistrationError(f"a sampler's stochastic must be callable(**options) -> bool, got {stochastic!r}")
        options = keyword_options(obj, skip=("noise", "cond"))
        for key in ("order_options", "stochastic_options"):
            given = meta.get(key)
            if given is None:
                continue
            if not isinstance(given, dict):
                raise RegistrationError(f"a sampler's {key} must be a dict of options, got {given!r}")
            if set(given) - set(options):
                raise RegistrationError(f"{key} names {sorted(set(given) - set(options))[0]!r}, which is not an "
                                        f"option; options are {', '.join(options) or 'none'}")
        return options
    if kind == "scheduler":
        _check_positional(obj, ("schedule", "steps"), kind)
        return keyword_options(obj)
    if kind == "target":
        for method in ("to_x0", "from_x0"):
            if not callable(getattr(obj, method, None)):
                raise RegistrationError(f"a target must have a {method}(out, x_t, coef) method")
        return {}
    if kind == "model":
        if not callable(obj):
            raise RegistrationError("a model must be a callable returning a DiffusionModel")
        options = keyword_options(obj)
        code = meta.get("code_options", ())
        if isinstance(code, str) or not all(isinstance(c, str) and c in options for c in code):
            raise RegistrationError(f"a model's code_options must be a tuple of its option names, got {code!r}")
        return options
    if kind == "metric":
        streaming = callable(getattr(obj, "features", None)) and callable(getattr(obj, "score", None))
        if not streaming and not callable(getattr(obj, "compute", None)):
            raise RegistrationError("a metric must have features(...) and score(...) methods "
                                    "(or the in-memory compute(...) method)")
        return dict(getattr(obj, "options", {}) or {})
    if kind == "dataset":
        _check_positional(obj, ("split",), kind)
        return keyword_options(obj)
    raise RegistrationError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")


def _declared_on(obj: Any) -> dict[str, Any]:
    """Option declarations a component carries as attributes (a metric class's ``option_help``, a loader
    function's ``check_options``), so a plugin may declare them beside the code or in ``registry.add``."""
    out = {k: getattr(obj, k) for k in ("option_help", "option_types", "option_schema", "path_options") if isinstance(getattr(obj, k, None), dict)}
    if callable(getattr(obj, "check_options", None)):
        out["check_options"] = obj.check_options
    return out


def _check_option_declarations(kind: str, name: str, options: dict[str, Any], meta: dict[str, Any]) -> None:
    for key in ("option_help", "option_types", "option_schema", "path_options"):
        given = meta.get(key)
        if given is None:
            continue
        if not isinstance(given, dict):
            raise RegistrationError(f"{kind} {name!r}: {key} must be a dict by option name, got {given!r}")
        stray = sorted(set(given) - set(options))
        if stray:
            raise RegistrationError(f"{kind} {name!r}: {key} names {stray[0]!r}, which is not an option; "
                                    f"options are {', '.join(options) or 'none'}")
    bad = {k: v for k, v in (meta.get("path_options") or {}).items() if v not in PATH_KINDS}
    if bad:
        raise RegistrationError(f"{kind} {name!r}: path_options[{next(iter(bad))!r}] must be one of "
                                f"{', '.join(PATH_KINDS)}, got {next(iter(bad.values()))!r}")
    if meta.get("check_options") is not None and not callable(meta["check_options"]):
        raise RegistrationError(f"{kind} {name!r}: check_options must be callable(**options)")


def _type_of_default(default: Any) -> Any:
    for t in (bool, int, float, str, list, dict):
        if type(default) is t:
            return t
    return Any


def option_types(comp: "Component") -> dict[str, Any]:
    """Each option's type: the declared ``option_types``, else the annotation, else the default's type."""
    hints: dict[str, Any] = {}
    fn = comp.obj if inspect.isfunction(comp.obj) or inspect.ismethod(comp.obj) else None
    if fn is not None:
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # unresolvable annotations: fall back to the defaults' types
            hints = {}
    declared = comp.meta.get("option_types") or {}
    return {key: declared.get(key) or hints.get(key) or _type_of_default(default)
            for key, default in comp.options.items()}


def option_rows(comp: "Component") -> list[dict[str, str]]:
    """The component's options as rows: name, type, default, meaning ('' where the plugin gives none)."""
    types, helps = option_types(comp), comp.meta.get("option_help") or {}
    return [{"option": key, "type": type_name(types[key]), "default": json.dumps(_jsonable(default)),
             "meaning": helps.get(key, "")} for key, default in comp.options.items()]


class Registry:
    """Components by kind, each tagged with the plugin and distribution that added it."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
        self.errors: list[PluginError] = []
        self._plugin = "<direct>"
        self._distribution: str | None = None
        self._version: str | None = None

    # --- registration -------------------------------------------------
    def add(self, kind: str, name: str, obj: Any, *, description: str | None = None, **meta: Any) -> Component:
        """Register ``obj`` as a component of ``kind`` called ``name``; raises RegistrationError."""
        if kind not in KINDS:
            raise RegistrationError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
        if not isinstance(name, str) or not name:
            raise RegistrationError(f"{kind} name must be a non-empty string")
        meta = {**_declared_on(obj), **meta}
        unknown = sorted(set(meta) - set(declarations(kind)))
        if unknown:
            known = ", ".join(["description", *declarations(kind)])
            raise RegistrationError(f"{kind} {name!r}: unknown declaration {unknown[0]!r}; a {kind} declares "
                                    f"{known}")
        if name in self._items[kind]:
            other = self._items[kind][name]
            raise RegistrationError(f"{kind} {name!r} is already registered by plugin {other.plugin!r}")
        options = _validate(kind, obj, meta)
        _check_option_declarations(kind, name, options, meta)
        doc = description if description is not None else (inspect.getdoc(obj) or "").split("\n")[0]
        comp = Component(kind, name, obj, self._plugin, self._distribution, self._version, options, meta, doc)
        self._items[kind][name] = comp
        return comp

    def _load_plugin(self, name: str, dist: str | None, version: str | None, call: Callable[[], None]) -> bool:
        """Run one plugin's registration; on failure roll back its components and record the error."""
        before = {k: dict(v) for k, v in self._items.items()}
        self._plugin, self._distribution, self._version = name, dist, version
        try:
            call()
            return True
        except Exception as exc:  # a plugin's fault must not stop the others
            self._items = before
            self.errors.append(PluginError(name, dist, f"registration failed: {exc}"))
            return False
        finally:
            self._plugin, self._distribution, self._version = "<direct>", None, None

    # --- lookup -------------------------------------------------------
    def get(self, kind: str, name: str) -> Component:
        if kind not in KINDS:
            raise UnknownComponentError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
        try:
            return self._items[kind][name]
        except KeyError:
            known = ", ".join(sorted(self._items[kind])) or "none"
            failed = "".join(f"; {e}" for e in self.errors)  # the component may be in a plugin that failed
            raise UnknownComponentError(f"unknown {kind} {name!r}; available: {known}{failed}") from None

    def names(self, kind: str) -> list[str]:
        return sorted(self._items[kind])

    def __iter__(self) -> Iterator[Component]:
        for kind in KINDS:
            yield from (self._items[kind][n] for n in sorted(self._items[kind]))

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._items.get(kind, {})

    def plugin_versions(self) -> dict[str, str | None]:
        """Distribution name → version for every plugin that added components."""
        return {c.distribution or c.plugin: c.version for c in self}


def _dist_of(ep: md.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _builtin_dist() -> tuple[str | None, str | None]:
    try:
        return "diffbench", md.version("diffbench")
    except md.PackageNotFoundError:
        return "diffbench", None


def build_registry(extra_plugins: Iterable[object] = (), *, autoload: bool | None = None) -> Registry:
    """Discover plugins (entry-point group ``diffbench``) and collect their components.

    ``extra_plugins`` are plugin objects or modules registered in addition (tests, notebooks).
    Autoloading is off when ``DIFFBENCH_DISABLE_PLUGIN_AUTOLOAD`` is set; the built-ins then load
    directly from their module.
    """
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    sources: dict[str, tuple[str | None, str | None]] = {}

    def register(plugin: object, name: str, dist: tuple[str | None, str | None]) -> None:
        try:
            pm.register(plugin, name=name)
            pm.check_pending()
            if not pm.get_hookcallers(plugin):
                raise ValueError("it defines no diffbench hook (is diffbench_register marked @hookimpl?)")
        except Exception as exc:
            if pm.is_registered(plugin):
                pm.unregister(plugin)
            registry.errors.append(PluginError(name, dist[0], f"invalid plugin: {exc}"))
            return
        sources[name] = dist

    entry_points = list(md.entry_points(group=ENTRY_POINT_GROUP)) if autoload else []
    if not any(ep.value == BUILTIN_MODULE for ep in entry_points):
        # Not installed as a distribution (or autoload off): load the built-ins from their module.
        register(importlib.import_module(BUILTIN_MODULE), BUILTIN_PLUGIN, _builtin_dist())
    for ep in entry_points:
        dist = _dist_of(ep)
        if ep.name in sources:
            registry.errors.append(PluginError(ep.name, dist[0], "plugin name already in use; skipped"))
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            registry.errors.append(PluginError(ep.name, dist[0], f"failed to import: {type(exc).__name__}: {exc}"))
            continue
        register(plugin, ep.name, dist)
    for i, plugin in enumerate(extra_plugins):
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"
        register(plugin, name, (None, None))

    # built-ins first, so they own their names and a plugin that clashes with one is the one reported
    impls = sorted(pm.hook.diffbench_register.get_hookimpls(), key=lambda i: i.plugin_name != BUILTIN_PLUGIN)
    for impl in impls:
        dist, version = sources.get(impl.plugin_name, (None, None))
        registry._load_plugin(impl.plugin_name, dist, version, lambda impl=impl: impl.function(registry=registry))
    return registry


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _default
    if _default is None:
        _default = build_registry()
        for err in _default.errors:
            print(f"diffbench: warning: {err}", file=sys.stderr)
    return _default


def reset_default_registry() -> None:
    global _default
    _default = None


def get(kind: str, name: str) -> Component:
    return default_registry().get(kind, name)
