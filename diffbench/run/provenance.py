"""Where a run happened: git state of the diffbench checkout, package versions, device name."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from diffbench.util.version import package_version


def git_state(path: Path | None = None) -> dict[str, Any]:
    """HEAD SHA and dirty flag of the checkout that holds diffbench's source (None outside git)."""
    cwd = path or Path(__file__).resolve().parents[1]  # the diffbench package folder

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if sha else None
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {
        "python": platform.python_version(),
        "diffbench": package_version(),
        "torch": torch.__version__,
        "torch-fidelity": _version("torch-fidelity"),
        "numpy": _version("numpy"),
        "platform": platform.platform(),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
