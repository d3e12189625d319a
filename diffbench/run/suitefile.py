"""Reading a suite file someone else wrote: bounded, UTF-8, plain YAML data, no surprises.

PyYAML's ``safe_load`` builds only plain data, but it accepts duplicate keys (the last one wins
silently), nests as deep as the stack allows, and expands aliases by reference, so a few hundred
bytes can stand for billions of values ("billion laughs"). Here a file is refused, in one line, when
it is larger than ``MAX_BYTES``, not UTF-8 text, repeats a key in one mapping, nests deeper than
``MAX_DEPTH``, or stands for more than ``MAX_VALUES`` values once every alias is expanded. Numbers
must be finite anywhere in a suite (``.nan`` and ``.inf`` are refused with their YAML path).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import yaml

MAX_BYTES = 1 << 20  # a suite is a page of YAML; 1 MiB is far beyond any real one
MAX_DEPTH = 32  # mappings and lists inside each other
MAX_VALUES = 100_000  # scalars, lists and mappings, counting an alias at every place it is used


class SuiteFileError(ValueError):
    """A suite file that cannot be read as plain, bounded YAML data; the message is one line."""


def yaml_path(loc: tuple[Any, ...]) -> str:
    """``('grid', 'steps', 0)`` → ``grid.steps[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class _Loader(yaml.SafeLoader):
    """SafeLoader that bounds nesting and refuses duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise SuiteFileError(f"line {line}: nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` may be overridden on purpose
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise SuiteFileError(f"line {line}: duplicate key {key!r} (first on line {seen[key]})")
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it
        return super().construct_mapping(node, deep)


def check_data(data: Any, max_values: int = MAX_VALUES) -> None:
    """Bound the expanded size and depth of ``data`` and refuse non-finite numbers, naming their path."""
    count, stack = 0, [((), data)]
    while stack:
        loc, value = stack.pop()
        count += 1
        if len(loc) > MAX_DEPTH:  # also ends a self-referencing structure (`&a [*a]`)
            raise SuiteFileError(f"{yaml_path(loc[:MAX_DEPTH])}: nested deeper than {MAX_DEPTH} levels")
        if count > max_values:
            raise SuiteFileError(
                f"more than {max_values} values once YAML aliases are expanded "
                "(an alias bomb or a self-referencing structure?)"
            )
        if isinstance(value, (float, np.floating)) and not math.isfinite(value):
            raise SuiteFileError(f"{yaml_path(loc)}: {value} is not a finite number")
        if isinstance(value, dict):
            stack.extend((loc + (str(k),), v) for k, v in reversed(list(value.items())))
        elif isinstance(value, (list, tuple)):
            stack.extend((loc + (i,), v) for i, v in reversed(list(enumerate(value))))


def plain(value: Any) -> Any:
    """A suite built in Python as YAML would give it: tuples as lists, NumPy scalars as Python scalars.

    Call after ``check_data`` (which bounds the depth, so a self-referencing structure never gets here).
    """
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()  # np.bool_ → bool (still not a number), np.int64 → int, np.float32 → float
    return value


def suite_file_text(raw: bytes) -> str:
    """The suite file's text; SuiteFileError for a file too large, binary or not UTF-8."""
    if len(raw) > MAX_BYTES:
        raise SuiteFileError(f"larger than a suite file may be ({MAX_BYTES} bytes)")
    if b"\x00" in raw:
        raise SuiteFileError("a binary file, not a YAML suite (it contains NUL bytes)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SuiteFileError(f"line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x})") from None


def parse_yaml(raw: bytes) -> Any:
    """Plain data from a suite file's bytes, every limit above enforced; SuiteFileError otherwise."""
    text = suite_file_text(raw)
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SuiteFileError(f"{where}invalid YAML: {problem}") from None
    except RecursionError:
        raise SuiteFileError(f"nested deeper than {MAX_DEPTH} levels") from None
    check_data(data)
    return data
