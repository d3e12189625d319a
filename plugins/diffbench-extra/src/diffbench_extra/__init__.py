"""diffbench-extra: samplers for diffbench that are not built in (iPNDM, iPNDM-v, UniPC)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("diffbench-extra")
except PackageNotFoundError:  # used from a source tree that is not installed
    __version__ = "0.0.0+unknown"
