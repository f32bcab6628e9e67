"""Reading an experiment dataclass from a recipe YAML plus ``key=value`` overrides (flows and vocoder experiments).

Values of overrides are parsed as YAML (``seeds=[0, 1]``, ``teacher={levels: 3}``); unknown keys are an error that
lists the valid ones, raised before any work is done.
"""

from __future__ import annotations

import dataclasses

import yaml


def load_dataclass_config(cls, path: str | None = None, overrides: list[str] | None = None):
    """``cls(**values)`` from the YAML at ``path`` (if given) updated by ``key=value`` overrides."""
    values = {}
    if path:
        import os

        if not os.path.exists(path):
            raise ValueError(f"recipe {path} not found; give the path of a YAML file (see recipes/)")
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value (e.g. seeds=[0, 1])")
        key, value = item.split("=", 1)
        values[key] = yaml.safe_load(value)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(known)}")
    return cls(**values)
