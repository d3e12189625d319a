"""Cache entries verified on load: safetensors holding the entry's key and the sha256 of its tensors.

Every cached computation (reference features, trajectory references, ...) is written with ``save``:
one safetensors file whose metadata records the key it was computed for, the sha256 of its tensor
content and a JSON ``info`` mapping with its own sha256, written atomically (a temporary renamed over
the file). ``load`` re-hashes the tensors and the info it read and compares: an entry that cannot be
read (truncated, not safetensors), was written for another key, or whose tensors or info do not match
their recorded hashes is never used; it
returns None after a warning naming the file, and the caller recomputes (and overwrites) it. The hash
returned with an entry is the hash of the tensors returned, so a manifest that records it describes
what was used.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

Warn = Callable[[str], None]


MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on a header


def stderr_warning(message: str) -> None:
    """The default warning sink: one line on stderr, as the CLI prints its warnings."""
    print(f"diffbench: warning: {message}", file=sys.stderr)


def content_sha256(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order (independent of file layout)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def info_json(info: Mapping[str, Any] | None) -> str:
    """The canonical JSON of an entry's info (what its recorded hash covers)."""
    return json.dumps(dict(info or {}), sort_keys=True, default=str)


def info_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _checked_info(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """An entry's info from its header metadata if it matches its recorded sha256, else None. Entries written
    before the info was hashed hold no info (and no hash): {}."""
    text = meta.get("info") or "{}"
    if meta.get("info_sha256", info_sha256("{}")) != info_sha256(text):
        return None
    try:
        info = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return info if isinstance(info, dict) else None


@dataclass
class Entry:
    """A verified cache entry: its tensors, their sha256 and the info it was saved with."""

    tensors: dict[str, Tensor]
    sha256: str
    info: dict[str, Any] = field(default_factory=dict)


def save(path: str | Path, tensors: Mapping[str, Tensor], *, key: str, info: Mapping[str, Any] | None = None) -> str:
    """Write ``tensors`` with ``key``, their sha256 and ``info`` (JSON, with its sha256) atomically; return the
    tensors' sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    sha = content_sha256(tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = info_json(info)
    metadata = {"key": key, "sha256": sha, "info": text, "info_sha256": info_sha256(text)}
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)  # concurrent readers see the old entry or the new one, never half of one
    finally:
        if tmp.exists():
            tmp.unlink()
    return sha


def read_info(path: str | Path) -> tuple[str, dict[str, Any]] | None:
    """An entry's key and info from its header alone, the info checked against its recorded sha256; None when
    the header cannot be read or the info does not match. The tensors are not read or verified: for estimates
    (what a cached entry holds), never for using the entry (``load``)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= MAX_HEADER_BYTES:
                return None
            meta = json.loads(f.read(size)).get("__metadata__") or {}
        key, info = meta.get("key"), _checked_info(meta)
    except (OSError, ValueError, RecursionError, AttributeError):
        return None
    return (key, info) if isinstance(key, str) and info is not None else None


def load(path: str | Path, *, key: str, warn: Warn | None = None) -> Entry | None:
    """The entry at ``path`` if it was written for ``key`` and its tensors match their recorded sha256.

    None when there is no file, or (after ``warn`` names the file and the reason) when it cannot be
    read, was written for another key or does not match its hash: the caller recomputes it.
    """
    from safetensors.torch import load as load_bytes

    path = Path(path)
    warn = warn or stderr_warning
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        meta = header.get("__metadata__") or {}
        tensors = load_bytes(data)
    except Exception as exc:  # truncated, not safetensors, unreadable: recompute
        text = (str(exc).strip().splitlines() or [""])[0]
        warn(f"cache file {str(path)!r} is unreadable ({type(exc).__name__}: {text}); recomputing it")
        return None
    if meta.get("key") != key:
        warn(f"cache file {str(path)!r} was written for another key; recomputing it")
        return None
    sha = content_sha256(tensors)
    if meta.get("sha256") != sha:
        warn(
            f"cache file {str(path)!r} does not match its recorded sha256 (changed after it was written); "
            "recomputing it"
        )
        return None
    info = _checked_info(meta)
    if info is None:
        warn(f"cache file {str(path)!r} does not match its recorded info sha256; recomputing it")
        return None
    return Entry(tensors, sha, info)
