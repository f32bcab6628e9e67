"""The installed fdistill's version, read from the package metadata (pyproject.toml), for modules to import.

A leaf module (it imports nothing of fdistill), so `fdistill.storage` and `fdistill.lm` can record the version
without importing the package root. A source tree that was never installed reports ``0+unknown``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fdistill")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
