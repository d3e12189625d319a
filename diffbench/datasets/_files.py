"""Small helpers shared by the file-backed dataset kinds: a path option checked, a cheap fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path

from diffbench.datasets.base import DatasetError


def existing(path: str, kind: str, what: str = "path") -> Path:
    """``path`` expanded; a DatasetError naming the dataset kind when it is empty or missing."""
    if not path:
        raise DatasetError(f"dataset {kind!r} needs the option {what}: <...>")
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"dataset {kind!r}: {what} {str(p)!r} does not exist")
    return p


def fingerprint(files: list[Path], root: Path) -> str:
    """sha256 over each file's path relative to ``root``, size and mtime: changes when the files do."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
