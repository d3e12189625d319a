"""Suite files: the pydantic schema, plugin-aware validation and expansion of the grid into cells.

A suite names one model (or several: then the model is an axis too), metrics, sample counts and
seeds, and a grid over sampler × scheduler × steps × guidance, trimmed by ``exclude`` rules and
extended by ``include`` rules. Every error
is one line naming the YAML path and, where there is a closed set, the allowed values.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, PositiveInt, SerializerFunctionWrapHandler, ValidationError,
                      create_model, field_validator, model_serializer, model_validator)
from pydantic_core import PydanticCustomError

from diffbench.devices import DTYPES
from diffbench.registry import Component, Registry, UnknownComponentError, normalize_distribution, option_types
from diffbench.timelimit import MAX_SECONDS
from diffbench.suitefile import MAX_BYTES, SuiteFileError, check_data, parse_yaml, plain, yaml_path

AXES = ("model", "sampler", "scheduler", "steps", "guidance")
NAMED_AXES = ("model", "sampler", "scheduler")  # entries with a name and a label
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
MAX_ID_CHARS = 160  # readable part of a cell id (file names: 255 bytes)
MAX_STEPS = 100_000  # a σ grid longer than this is a typo (and gigabytes of step noise), not a benchmark
Steps = Annotated[int, Field(gt=0, le=MAX_STEPS)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]  # per-sample streams hash (seed, i): non-negative, 63 bits


class SuiteError(ValueError):
    """A suite that cannot run as written; the message is one line naming the YAML path."""


# --- schema ------------------------------------------------------------------------------------

class Strict(BaseModel):
    """Base model: unknown keys are an error that lists the allowed ones; values are never coerced
    (``true`` is not 1, ``"3"`` is not 3) and numbers are finite."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=False, strict=True,
                              allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = [f.alias or n for n, f in cls.model_fields.items()]
            for key in data:
                if key not in allowed:
                    raise PydanticCustomError("unknown_key", "unknown key {key!r}; allowed: {allowed}",
                                              {"key": str(key), "allowed": ", ".join(allowed) or "none"})
        return data


def _named(data: Any) -> Any:
    """Accept the shorthand ``ddim`` for ``{name: ddim}``."""
    return {"name": data} if isinstance(data, str) else data


class ComponentSpec(Strict):
    """A plugin by registered name with its options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _named(data)


class ModelSpec(ComponentSpec):
    """A pretrained denoiser to sample from; ``label`` tells apart two entries of the same model."""

    label: str | None = None

    @property
    def key(self) -> str:
        return self.label or self.name


class MetricSpec(ComponentSpec):
    """A metric computed on every cell's samples."""


class ReferenceSpec(ComponentSpec):
    """A reference dataset (plugin kind ``dataset``) with its options and split; ``digits`` is short for
    ``{name: digits}``; no split: the metric's ``reference_split`` option, else the dataset's default."""

    split: str | None = None

    def record(self) -> Any:
        """The shorthand name when nothing else is set (so cell hashes of ``reference: digits`` stay put)."""
        return self.name if not self.options and self.split is None else self.model_dump()


class SamplerSpec(ComponentSpec):
    """A sampler with its options; ``label`` tells apart two entries of the same sampler."""

    label: str | None = None
    clip_x0: bool = False

    @property
    def key(self) -> str:
        return self.label or self.name


class SchedulerSpec(ComponentSpec):
    """A step scheduler with its options; ``quantize`` snaps σ to training timesteps (discrete models);
    ``final_zero: false`` stops at the smallest σ > 0 instead of stepping into σ = 0 (order studies)."""

    label: str | None = None
    quantize: bool = False
    final_zero: bool = True

    @property
    def key(self) -> str:
        return self.label or self.name + ("-q" if self.quantize else "") + ("" if self.final_zero else "-nozero")


class GridSpec(Strict):
    """The axes whose product makes the cells."""

    sampler: list[SamplerSpec] = Field(min_length=1)
    scheduler: list[SchedulerSpec] = Field(default_factory=lambda: [SchedulerSpec(name="karras")], min_length=1)
    steps: list[Steps] = Field(min_length=1)
    guidance: list[Union[float, None]] = Field(default_factory=lambda: [None], min_length=1)

    @field_validator("guidance")
    @classmethod
    def _nonneg(cls, v: list[float | None]) -> list[float | None]:
        for g in v:
            if g is not None and g < 0:
                raise ValueError(f"guidance must be null or >= 0, got {g}")
        return v

    @model_validator(mode="after")
    def _unique_keys(self) -> "GridSpec":
        for axis in ("sampler", "scheduler"):
            keys = [e.key for e in getattr(self, axis)]
            dup = next((k for k in keys if keys.count(k) > 1), None)
            if dup is not None:
                raise ValueError(f"{axis} {dup!r} appears twice; give one entry a distinct 'label'")
        return self


class Rule(Strict):
    """Matches cells by axis values (a value or a list); unnamed axes match anything."""

    model: Union[str, list[str], None] = None
    sampler: Union[str, list[str], None] = None
    scheduler: Union[str, list[str], None] = None
    steps: Union[Steps, list[Steps], None] = None
    guidance: Union[float, list[Union[float, None]], None] = None

    @model_serializer(mode="wrap")
    def _named_axes_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the axes the rule names: an unnamed axis written as null would read back as 'matches null'."""
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}

    def values(self, axis: str) -> list[Any] | None:
        """The rule's values for ``axis``, or None when the rule does not name it."""
        if axis not in self.model_fields_set:
            return None
        v = getattr(self, axis)
        return list(v) if isinstance(v, list) else [v]


class Suite(Strict):
    """A benchmark suite: one model, its metrics and a grid of sampling configurations."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    model: list[ModelSpec] = Field(min_length=1, description="one model, or a list (then an axis of the grid)")
    reference: ReferenceSpec | None = None  # reference data for distribution metrics; default: each model's own
    metrics: list[MetricSpec] = Field(default_factory=list)
    num_samples: PositiveInt = Field(description="samples per seed group")
    batch_size: PositiveInt = 256
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    device: str = "auto"
    dtype: Literal[tuple(DTYPES)] | None = None  # type: ignore[valid-type]  # None: the model's own
    conditional: bool = True
    save_samples: Literal["none", "png", "npz"] = "none"  # besides the preview grid; see diffbench.saving
    grid: GridSpec
    include: list[Rule] = Field(default_factory=list)
    exclude: list[Rule] = Field(default_factory=list)
    requires: dict[str, str] = Field(default_factory=dict, description="distribution -> version specifier")
    time_limit: Annotated[float, Field(gt=0, le=MAX_SECONDS)] | None = Field(
        default=None, description="seconds a cell may take (sampling and scoring); null: no limit")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE.match(v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        return v

    @field_validator("metrics", "model", mode="before")
    @classmethod
    def _as_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, dict)) else v

    @field_validator("model")
    @classmethod
    def _unique_models(cls, v: list[ModelSpec]) -> list[ModelSpec]:
        keys = [m.key for m in v]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise ValueError(f"model {dup!r} appears twice; give one entry a distinct 'label'")
        return v


# --- error formatting --------------------------------------------------------------------------

def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic adds union-member and validator tags to loc ('str', 'list[...]', 'function-after[...]')
    tags = re.compile(r"[\[\]()]|^(str|int|float|bool|list|dict|none)$")
    return tuple(p for p in loc if isinstance(p, int) or not tags.search(str(p)))


def first_error(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> str:
    """One line for the first error of a pydantic ValidationError, naming its YAML path."""
    err = exc.errors()[0]
    loc = prefix + _clean_loc(tuple(err["loc"]))
    if err["type"] == "unknown_key":
        loc = loc + (err["ctx"]["key"],)
        msg = f"unknown key; allowed: {err['ctx']['allowed']}"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if isinstance(err.get("input"), bool) and err["type"] in ("int_type", "float_type"):
            msg += f", not the boolean {str(err['input']).lower()}"
    return f"{yaml_path(loc)}: {msg}"


# --- plugin options ----------------------------------------------------------------------------

def options_model(comp: Component) -> type[BaseModel]:
    """A pydantic model of ``comp``'s options: annotated types where given, else the default's type."""
    types, helps, nested = option_types(comp), comp.meta.get("option_help") or {}, comp.meta.get("option_schema") or {}
    fields = {}
    for i, (key, default) in enumerate(comp.options.items()):
        hint = types[key]
        # aliases keep option names such as 'json' or 'copy' from clashing with BaseModel attributes
        fields[f"o{i}"] = (hint, Field(default=default, alias=key, description=helps.get(key),
                                       json_schema_extra=nested.get(key)))
    return create_model(f"{comp.kind}_{comp.name}_options".replace("-", "_"), __base__=Strict, **fields)


def check_options(comp: Component, options: dict[str, Any], path: str) -> dict[str, Any]:
    """Validate ``options`` against ``comp``; return them coerced (only the keys given)."""
    try:
        validated = options_model(comp).model_validate(options)
    except ValidationError as exc:
        line = first_error(exc)
        if "unknown key" in line:
            line = line.replace("unknown key;", f"{comp.kind} {comp.name!r} has no such option;")
        raise SuiteError(f"{path}.{line}") from None
    given = validated.model_dump(by_alias=True, exclude_unset=True)
    check = comp.meta.get("check_options")
    if check is not None:
        try:
            check(**{**comp.options, **given})
        except (ValueError, TypeError) as exc:
            raise SuiteError(f"{path}.{exc}" if str(exc).startswith(tuple(comp.options)) else f"{path}: {exc}") from None
    return given


def _check_component(registry: Registry, kind: str, spec: ComponentSpec, path: str,
                     base_dir: Path | None = None) -> ComponentSpec:
    try:
        comp = registry.get(kind, spec.name)
    except UnknownComponentError as exc:
        raise SuiteError(f"{path}.name: {exc}") from None
    options = check_options(comp, spec.options, f"{path}.options")
    if base_dir is not None:
        options = resolve_paths(comp, options, base_dir)
    return spec.model_copy(update={"options": options})


def _absolute(value: str, base_dir: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def resolve_paths(comp: Component, options: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The component's path options (``path_options``) made absolute against ``base_dir`` (the suite's folder).

    'path': always; 'factory': the file of a 'file.py:function' spec ('module:function' stays a module
    name); 'path-or-id': when that folder or file exists, else the value stays (an id, e.g. a hub name)."""
    out = dict(options)
    for key, how in (comp.meta.get("path_options") or {}).items():
        value = out.get(key)
        if not isinstance(value, str) or not value:
            continue
        if how == "path":
            out[key] = _absolute(value, base_dir)
        elif how == "factory":
            module, sep, attr = value.rpartition(":")
            if sep and module.endswith(".py"):
                out[key] = f"{_absolute(module, base_dir)}:{attr}"
        elif how == "path-or-id":
            candidate = Path(_absolute(value, base_dir))
            if candidate.exists():
                out[key] = str(candidate)
    return out


def _check_requires(requires: dict[str, str], registry: Registry) -> None:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    versions = {normalize_distribution(d): v for d, v in registry.plugin_versions().items()}
    for dist, spec in requires.items():
        try:
            wanted = SpecifierSet(spec)
        except InvalidSpecifier:
            raise SuiteError(f"requires.{dist}: invalid version specifier {spec!r}") from None
        if normalize_distribution(dist) not in versions:
            failed = [e for e in registry.errors if e.distribution
                      and normalize_distribution(e.distribution) == normalize_distribution(dist)]
            if failed:
                raise SuiteError(f"requires.{dist}: {dist} is installed but its plugin failed to load or register: "
                                 + "; ".join(str(e) for e in failed))
            raise SuiteError(f"requires.{dist}: no plugin distribution {dist!r} is installed; "
                             f"installed: {', '.join(sorted(registry.plugin_versions())) or 'none'}")
        have = versions[normalize_distribution(dist)]
        if have is None or have not in wanted:
            raise SuiteError(f"requires.{dist}: need {dist}{spec}, found {have}")


def check_plugins(suite: Suite, registry: Registry, base_dir: Path | None = None) -> Suite:
    """Resolve every plugin name and option against ``registry``; return the suite with coerced options.

    With ``base_dir`` (the suite file's folder), relative paths in path options become absolute paths
    against it, so a suite runs the same from any working directory."""
    _check_requires(suite.requires, registry)
    models = [_check_component(registry, "model", m, "model" if len(suite.model) == 1 else f"model[{i}]", base_dir)
              for i, m in enumerate(suite.model)]
    metrics = [_check_component(registry, "metric", m, f"metrics[{i}]", base_dir) for i, m in enumerate(suite.metrics)]
    reference = (_check_component(registry, "dataset", suite.reference, "reference", base_dir)
                 if suite.reference else None)
    samplers = [_check_component(registry, "sampler", s, f"grid.sampler[{i}]")
                for i, s in enumerate(suite.grid.sampler)]
    schedulers = [_check_component(registry, "scheduler", s, f"grid.scheduler[{i}]")
                  for i, s in enumerate(suite.grid.scheduler)]
    grid = suite.grid.model_copy(update={"sampler": samplers, "scheduler": schedulers})
    checked = suite.model_copy(update={"model": models, "metrics": metrics, "grid": grid, "reference": reference})
    for kind, rules in (("include", suite.include), ("exclude", suite.exclude)):
        for i, rule in enumerate(rules):
            _check_rule(checked, rule, f"{kind}[{i}]", registry)
    return checked


def axis_entries(suite: Suite, axis: str) -> list[Any]:
    """The values of one grid axis (models, samplers and schedulers are specs with a ``key``)."""
    return list(suite.model) if axis == "model" else list(getattr(suite.grid, axis))


def _check_rule(suite: Suite, rule: Rule, path: str, registry: Registry) -> None:
    """Rule values must match an entry (exclude) or an entry or a registered name (include)."""
    for axis in NAMED_AXES:
        entries = axis_entries(suite, axis)
        known = {e.key for e in entries} | {e.name for e in entries}
        adds = path.startswith("include")
        for v in rule.values(axis) or []:
            if v not in known and not (adds and (axis, v) in registry):
                allowed = sorted(known | set(registry.names(axis)) if adds else known)
                raise SuiteError(f"{path}.{axis}: {v!r} matches no {axis}; allowed: {', '.join(allowed)}")


# --- loading -----------------------------------------------------------------------------------

def parse_suite(data: Any, registry: Registry | None = None, *, source: str = "suite",
                base_dir: Path | None = None) -> Suite:
    """Validate a suite given as a mapping; with a registry, check plugin names and options too (relative
    paths resolve against ``base_dir`` when given)."""
    if not isinstance(data, dict):
        raise SuiteError(f"{source}: a suite must be a mapping of keys, got {type(data).__name__}")
    try:
        check_data(data)
        data = plain(data)
    except SuiteFileError as exc:
        raise SuiteError(str(exc)) from None
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(first_error(exc)) from None
    return check_plugins(suite, registry, base_dir) if registry is not None else suite


def stored_suite_data(data: Any) -> Any:
    """A run directory's suite.json as suite data: rules that an older diffbench wrote with every axis
    (unnamed ones as null: no rule names a model, sampler, scheduler or steps null) keep only the
    axes they name."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for kind in ("include", "exclude"):
        rules = out.get(kind)
        if not isinstance(rules, list):
            continue
        out[kind] = [{k: v for k, v in r.items() if v is not None}
                     if isinstance(r, dict) and set(r) >= set(AXES) and any(r[a] is None for a in AXES[:4]) else r
                     for r in rules]
    return out


def load_suite(path: str | Path, registry: Registry | None = None) -> Suite:
    """Read and validate a YAML suite file; every problem is a one-line SuiteError."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)  # never read more than a suite file may hold
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read suite ({exc.strerror or exc})") from None
    try:
        data = parse_yaml(raw)
    except SuiteFileError as exc:
        raise SuiteError(f"{path}: {exc}") from None
    try:
        return parse_suite(data, registry, source=str(path), base_dir=path.resolve().parent)
    except SuiteError as exc:
        raise SuiteError(f"{path}: {exc}") from None


# --- grid expansion ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CellSpec:
    """One point of the grid: what to sample, before anything has run."""

    index: int
    model: ModelSpec
    sampler: SamplerSpec
    scheduler: SchedulerSpec
    steps: int
    guidance: float | None
    config: dict[str, Any] = field(compare=False, hash=False, default_factory=dict)

    @property
    def cell_id(self) -> str:
        g = "none" if self.guidance is None else f"{self.guidance:g}"
        name = f"{self.model.key}__{self.sampler.key}__{self.scheduler.key}__n{self.steps}__g{g}"
        # readable part cut to fit a file name (with '.json', '.png' and a temporary's affixes) under 255
        # bytes, never starting with '.'; the hash keeps cut ids distinct
        readable = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)[:MAX_ID_CHARS].lstrip(".") or "cell"
        return f"{readable}-{self.config_hash[:8]}"

    @property
    def config_hash(self) -> str:
        """Hash of everything that determines this cell's numbers (used by --resume)."""
        return hashlib.sha256(json.dumps(self.config, sort_keys=True, default=str).encode()).hexdigest()


def _matches(rule: Rule, cell: dict[str, Any]) -> bool:
    for axis in AXES:
        wanted = rule.values(axis)
        if wanted is None:
            continue
        v = cell[axis]
        names = {v.key, v.name} if axis in NAMED_AXES else {v}
        if not any(w in names for w in wanted):
            return False
    return True


_SPECS = {"model": ModelSpec, "sampler": SamplerSpec, "scheduler": SchedulerSpec}


def _rule_entries(suite: Suite, rule: Rule, axis: str) -> list[Any]:
    """Values an include rule expands over: those it names (grid entries, else new with defaults) or all."""
    entries, wanted = axis_entries(suite, axis), rule.values(axis)
    if wanted is None:
        return entries
    if axis not in NAMED_AXES:
        return wanted
    out = []
    for w in wanted:
        out.extend([e for e in entries if w in (e.key, e.name)] or [_SPECS[axis](name=w)])
    return out


# Added after baselines were recorded: omitted at their default so those cells keep their ids.
_OMIT_AT_DEFAULT = {"scheduler": {"final_zero": True}}


def _axis_config(axis: str, value: Any) -> Any:
    if axis not in NAMED_AXES:
        return value
    dump = value.model_dump()
    for key, default in _OMIT_AT_DEFAULT.get(axis, {}).items():
        if dump.get(key) == default:
            del dump[key]
    return dump


def _cell_config(suite: Suite, cell: dict[str, Any]) -> dict[str, Any]:
    return {
        "reference": suite.reference.record() if suite.reference else None,
        "metrics": [m.model_dump() for m in suite.metrics],
        "num_samples": suite.num_samples, "batch_size": suite.batch_size, "seeds": suite.seeds,
        "device": suite.device, "dtype": suite.dtype, "conditional": suite.conditional,
        **{axis: _axis_config(axis, v) for axis, v in cell.items()},
    }


def expand(suite: Suite) -> list[CellSpec]:
    """The suite's cells: grid product minus ``exclude`` matches, plus ``include`` expansions, deduplicated."""
    combos = [dict(zip(AXES, c)) for c in itertools.product(*(axis_entries(suite, a) for a in AXES))]
    combos = [c for c in combos if not any(_matches(r, c) for r in suite.exclude)]
    for rule in suite.include:
        combos.extend(dict(zip(AXES, c)) for c in itertools.product(*(_rule_entries(suite, rule, a) for a in AXES)))
    cells, seen = [], set()
    for c in combos:
        cell = CellSpec(len(cells), **c, config=_cell_config(suite, c))
        if cell.config_hash not in seen:
            seen.add(cell.config_hash)
            cells.append(cell)
    return cells


# --- JSON Schema -------------------------------------------------------------------------------

def _component_union(registry: Registry, kind: str, base: type[ComponentSpec]) -> Any:
    names = registry.names(kind)
    if not names:
        return base
    variants = []
    for name in names:
        comp = registry.get(kind, name)
        variants.append(create_model(f"{base.__name__}_{name}".replace("-", "_").replace("+", "p"), __base__=base,
                                     name=(Literal[name], ...),
                                     options=(options_model(comp), Field(default_factory=dict,
                                                                         description=comp.description))))
    return Union[Literal[tuple(names)], Annotated_union(variants)]  # type: ignore[valid-type]


def Annotated_union(variants: list[type[BaseModel]]) -> Any:  # noqa: N802 - a type constructor
    """A union of component models told apart by their ``name``."""
    return typing.Annotated[Union[tuple(variants)], Field(discriminator="name")]  # type: ignore[valid-type]


def json_schema(registry: Registry) -> dict[str, Any]:
    """JSON Schema of suite files, with every registered plugin's options."""
    sampler = _component_union(registry, "sampler", SamplerSpec)
    scheduler = _component_union(registry, "scheduler", SchedulerSpec)
    grid = create_model("GridSpec", __base__=GridSpec, sampler=(list[sampler], Field(min_length=1)),
                        scheduler=(list[scheduler], Field(default_factory=list, min_length=1)))
    one_model = _component_union(registry, "model", ModelSpec)
    model = create_model("SuiteSchema", __base__=Suite,
                         model=(Union[one_model, list[one_model]], ...),
                         metrics=(list[_component_union(registry, "metric", MetricSpec)], Field(default_factory=list)),
                         grid=(grid, ...))
    schema = model.model_json_schema()
    schema["title"] = "diffbench suite"
    return schema
