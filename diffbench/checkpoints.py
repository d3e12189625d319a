"""Shipped checkpoints: safetensors weights (no pickle) with a JSON config in the file's metadata."""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save_file

DATA_DIR = Path(__file__).resolve().parent / "data"


def shipped(name: str) -> Path:
    """Path of a checkpoint shipped in diffbench/data."""
    return DATA_DIR / f"{name}.safetensors"


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (memoised on path, size and mtime)."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def save_checkpoint(path: str | Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> str:
    """Write ``state`` as safetensors with ``config`` as JSON metadata; return the file's sha256."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    save_file(tensors, str(tmp), metadata={"config": json.dumps(config, sort_keys=True)})
    os.replace(tmp, path)  # atomic: a model loaded meanwhile sees the old file or the new one
    return file_sha256(path)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Read (state dict, config, sha256) from a safetensors checkpoint; never unpickles.

    The file is read once, so the hash always belongs to the weights returned.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    try:
        header_len = int.from_bytes(data[:8], "little")  # safetensors: u64 header size, then a JSON header
        metadata = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
        config = json.loads(metadata.get("config", "{}"))
        if not isinstance(config, dict):
            raise ValueError("its config is not a JSON object")
        state = load(data)
    except Exception as exc:  # truncated, not safetensors, bad JSON metadata (SafetensorError, ValueError, ...)
        text = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"checkpoint {path}: not a readable safetensors checkpoint ({type(exc).__name__}: "
                         f"{text})") from None
    return state, config, hashlib.sha256(data).hexdigest()
