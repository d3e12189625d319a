"""What a conditional model is conditioned on, per sample: class labels or text prompts.

Sample i's condition depends only on i (label i mod num_classes, prompt i mod count), like its
noise, so results do not depend on batch size. The conditions repeat every ``period`` indices: a
cell's samples are a sample stratified by condition (each block of ``period`` consecutive indices holds
every condition once), which uncertainty estimates must respect (``condition_period``). Each kind
also gives the null condition that classifier-free guidance (Ho & Salimans 2022) contrasts with:
the label ``num_classes``, or the empty prompt. Conditions are built once per batch, before the sampling clock starts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor


class ClassLabels:
    """Class label of sample i is i mod num_classes; label ``num_classes`` means 'no label'."""

    kind = "class"

    def __init__(self, num_classes: int, *, has_null: bool = True) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.has_null = has_null  # whether the network knows label num_classes (guidance needs it)

    @property
    def period(self) -> int:
        """Indices after which the labels repeat."""
        return self.num_classes

    def for_indices(self, indices: list[int], device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
        return torch.tensor([i % self.num_classes for i in indices], dtype=torch.long, device=device)

    def null(self, n: int, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
        return torch.full((n,), self.num_classes, dtype=torch.long, device=device)

    def describe(self) -> dict[str, Any]:
        return {"conditioning": "class", "num_classes": self.num_classes, "null_label": self.has_null}


MAX_PROMPTS_BYTES = 16 << 20  # a prompts file is text; 16 MiB is over 100,000 long prompts


def read_prompts(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file of at most 16 MiB, one prompt each (trailing whitespace dropped)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:  # bounded: /dev/zero or a wrong huge file must not fill the memory
            raw = f.read(MAX_PROMPTS_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"prompts file {str(path)!r} cannot be read ({exc.strerror or exc})") from None
    if len(raw) > MAX_PROMPTS_BYTES:
        raise ValueError(f"prompts file {str(path)!r} is larger than {MAX_PROMPTS_BYTES >> 20} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"prompts file {str(path)!r} is not UTF-8 text") from None
    if "\0" in text:
        raise ValueError(f"prompts file {str(path)!r} is not text (it holds NUL bytes)")
    prompts = [line.rstrip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {str(path)!r} has no prompts (one per line)")
    return prompts


class Prompts:
    """Text prompts: sample i gets prompt i mod count; the null condition is the empty prompt.

    ``encode(list of strings) -> Tensor`` (B, ...) is the model's text encoder; it runs once per
    batch outside the timed loop, and once for the empty prompt.
    """

    kind = "text"
    has_null = True

    def __init__(self, prompts: list[str], encode: Callable[[list[str]], Tensor], source: str | None = None) -> None:
        if not prompts:
            raise ValueError("need at least one prompt")
        self.prompts, self.encode, self.source = list(prompts), encode, source
        self._null: Tensor | None = None

    @property
    def period(self) -> int:
        """Indices after which the prompts repeat."""
        return len(self.prompts)

    def for_indices(self, indices: list[int], device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
        with torch.inference_mode():
            out = self.encode([self.prompts[i % len(self.prompts)] for i in indices])
        return out.to(device=device, dtype=dtype or out.dtype)

    def null(self, n: int, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
        if self._null is None:
            with torch.inference_mode():
                self._null = self.encode([""])
        one = self._null.to(device=device, dtype=dtype or self._null.dtype)
        return one.expand(n, *one.shape[1:])

    def describe(self) -> dict[str, Any]:
        digest = hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()
        return {
            "conditioning": "text",
            "num_prompts": len(self.prompts),
            "prompts_sha256": digest,
            **({"prompts_file": self.source} if self.source else {}),
        }


def condition_period(model: Any) -> int:
    """How many consecutive sample indices hold each of ``model``'s conditions once (1: unconditional)."""
    return int(getattr(getattr(model, "condition", None), "period", 1) or 1)
