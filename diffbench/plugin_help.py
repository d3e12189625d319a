"""What `diffbench plugins NAME` prints: a component's options with type, default and meaning."""
from __future__ import annotations

import json
from typing import Any

from diffbench.registry import Component, Registry, option_rows
from diffbench.text import type_name


def _columns(rows: list[dict[str, str]], cols: tuple[str, ...], indent: str = "  ") -> list[str]:
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in cols[:-1]]
    line = lambda r: indent + "  ".join(r[c].ljust(w) for c, w in zip(cols, widths)) + "  " + r[cols[-1]]  # noqa: E731
    return [line({c: c for c in cols}).rstrip(), *(line(r).rstrip() for r in rows)]


def schedule_rows() -> dict[str, list[dict[str, str]]]:
    """The noise schedules' own options (a python model's ``schedule_options``) by schedule name."""
    from diffbench.noise import SCHEDULE_OPTION_HELP, SCHEDULES, TABLE_SCHEDULES, schedule_options

    return {name: [{"option": k, "type": type_name(tp), "default": json.dumps(default),
                    "meaning": SCHEDULE_OPTION_HELP.get(k, "")}
                   for k, (tp, default) in schedule_options(name).items()]
            for name in (*SCHEDULES, *TABLE_SCHEDULES)}


def describe(comp: Component) -> str:
    """A component's header line and its options table (and nested option blocks, extractors)."""
    source = comp.distribution or comp.plugin
    out = [f"{comp.kind} {comp.name} ({source} {comp.version or ''}".rstrip() + f"): {comp.description}"]
    rows = option_rows(comp)
    if not rows:
        out.append("  options: none")
    else:
        out += _columns(rows, ("option", "type", "default", "meaning"))
    if "schedule_options" in comp.options:
        out.append("\n  schedule_options, by schedule (unknown names are refused by validate and schema):")
        for name, srows in schedule_rows().items():
            out.append(f"  {name}:" + ("" if srows else " no options"))
            if srows:
                out += _columns(srows, ("option", "type", "default", "meaning"), indent="    ")
    if "extractor" in comp.options:
        from diffbench.metrics.extractors import extractor_names

        out.append("\n  extractors: " + ", ".join(extractor_names()) + " (weights read offline from weights_path)")
    return "\n".join(out)


def matching(registry: Registry, name: str) -> list[Component]:
    """Components called ``name`` (of any kind)."""
    return [c for c in registry if c.name == name]


def as_json(comp: Component) -> dict[str, Any]:
    return {**comp.as_row(), "option_rows": option_rows(comp)}
