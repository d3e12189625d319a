"""diffbench's own version, as installed."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed distribution's version; "0.0.0+unknown" from a source tree that is not installed."""
    try:
        return version("diffbench")
    except PackageNotFoundError:
        return "0.0.0+unknown"
