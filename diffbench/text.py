"""Small helpers for terminal text."""
from __future__ import annotations

import re
import typing
from typing import Any


def shorten(text: str, width: int) -> str:
    """``text`` cut at a word boundary to at most ``width`` characters, ending in '…' when cut."""
    if len(text) <= width:
        return text
    head = text[: width - 1]
    cut = head.rsplit(" ", 1)[0] if " " in head else head
    return cut.rstrip(" ,;:") + "…"


def type_name(tp: Any) -> str:
    """A type as a reader writes it: 'float', 'int | None', 'list[float]', 'any'."""
    if tp is Any:
        return "any"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    text = str(tp).replace("typing.", "").replace("NoneType", "None")
    text = re.sub(r"Optional\[(.*)\]$", r"\1 | None", text)
    return re.sub(r"Union\[(.*)\]$", lambda m: " | ".join(p.strip() for p in m.group(1).split(",")), text)
