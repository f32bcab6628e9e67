"""Checks of settings, data and saved stages shared by the flows and vocoder experiments.

Saved stages (`save_stage`, `load_stage`) are safetensors + JSON: resuming never unpickles a file of an output
folder (a crafted pickle could run code). Each check raises one `fdistill.errors.InputError` (a ValueError) that
names the setting or file, the value seen and the fix; experiment configs call them in ``__post_init__``, so a bad
value stops a run before anything is loaded, trained or written. (Kept here, next to their first users; ``fdistill.vocoder`` imports them too.)

    >>> whole_number("batch_size", 0)
    Traceback (most recent call last):
    fdistill.errors.InputError: batch_size=0 must be ≥ 1: give a whole number ≥ 1.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from fdistill.errors import InputError, invalid


def whole_number(name: str, value, low: int = 1) -> int:
    """``value`` if it is an int ≥ ``low`` (not a bool), else an InputError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, value, f"give a whole number ≥ {low}.", problem="is not a whole number")
    if value < low:
        raise invalid(name, value, f"give a whole number ≥ {low}.", problem=f"must be ≥ {low}")
    return value


def number(name: str, value, low: float = 0.0, allow_low: bool = False) -> float:
    """``value`` if it is a finite number > ``low`` (≥ with ``allow_low``), else an InputError."""
    bound = f"{'≥' if allow_low else '>'} {low:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(name, value, f"give a finite number {bound}.", problem="is not a finite number")
    if not (value >= low if allow_low else value > low):
        raise invalid(name, value, f"give a finite number {bound}.", problem=f"must be {bound}")
    return value


def whole_numbers(name: str, values, low: int = 1, example: str = "[1, 2, 4]", distinct: bool = True) -> list[int]:
    """A non-empty list of ints ≥ ``low`` (each once, when ``distinct``), else an InputError."""
    if not isinstance(values, (list, tuple)) or not values:
        raise invalid(name, values, f"give a non-empty list of ints ≥ {low}, e.g. {example}.")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise invalid(name, values, f"every item must be a whole number ≥ {low} (saw {value!r}); e.g. {example}.")
    if distinct and len(set(values)) != len(values):
        raise invalid(name, values, f"an item repeats; list each once, e.g. {example}.")
    return list(values)


def names(name: str, values, choices) -> list[str]:
    """A non-empty list of distinct names from ``choices``, else an InputError listing them."""
    choices = list(choices)
    if not isinstance(values, (list, tuple)) or not values:
        raise invalid(name, values, f"give a non-empty list of names from {choices}.")
    unknown = [v for v in values if v not in choices]
    if unknown:
        raise invalid(name, values, f"unknown {name} {unknown}; choose from {choices}.")
    if len(set(values)) != len(values):
        raise invalid(name, values, "a name repeats; list each once.")
    return list(values)


def choice(name: str, value, choices):
    """``value`` if it is one of ``choices``, else an InputError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise invalid(name, value, f"choose one of {list(choices)}.")
    return value


def output_folder(name: str, path) -> str:
    """A path usable as an output folder: text, and not an existing file."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise invalid(name, path, "give the path of a folder (created if missing).")
    if os.path.exists(path) and not os.path.isdir(path):
        raise invalid(name, str(path), "it is an existing file, not a folder; give a folder path (created if "
                      "missing) or move the file.")
    return str(path)


def finite_rows(what: str, array) -> None:
    """Refuse data holding NaN or ±inf: one error naming ``what``, the count, and the first bad row.

    ``array``: ``[N, ...]`` (numpy, torch or a pandas DataFrame); row ``i`` is ``array[i]``.
    """
    try:
        values = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} holds values that are not numbers ({err}); fix or re-create it.") from None
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    rows = np.flatnonzero(bad.reshape(len(values), -1).any(1)) if values.ndim > 1 else np.flatnonzero(bad)
    row = int(rows[0])
    shown = np.array2string(values[row].ravel()[:12], precision=4, separator=", ", threshold=12)
    raise InputError(f"{what} holds {int(bad.sum())} non-finite values (NaN or ±inf) in {len(rows)} rows; the first "
                     f"is row {row}: {shown}. Fix or remove those rows (or re-create the file) and run again.")


class StageFileError(InputError):
    """A saved stage in an output folder that cannot be reused safely (old pickle format, unreadable)."""


def refuse_pickled_stage(path: str) -> None:
    """An old ``.pt``/``.pkl`` stage file (a pickle: loading it could run code) is never loaded: one clear error."""
    if os.path.exists(path):
        raise StageFileError(f"{path} is a stage file in the old pickle format, which fdistill no longer loads "
                             "(unpickling can run code). Delete it (or the whole output folder) and run again to "
                             "redo that stage, or use another output_dir.")


def save_stage(base: str, tensors: dict, meta: dict) -> None:
    """Write a finished stage: ``{base}.safetensors`` (tensors only) then ``{base}.json`` (settings, records).

    The JSON is written last (each file through a temporary name), so its presence marks a complete stage.
    """
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, base + ".safetensors.tmp")
    os.replace(base + ".safetensors.tmp", base + ".safetensors")
    with open(base + ".json.tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(base + ".json.tmp", base + ".json")


def load_stage(base: str, settings: dict) -> tuple[dict, dict] | None:
    """A finished stage saved by `save_stage` as ``(tensors, meta)``, or None when there is none.

    Nothing executable is ever read: the settings in the JSON are compared before any tensor is loaded (a stage made
    with other settings is an error, never silently reused), tensors come from safetensors, and an old pickled
    ``{base}.pt`` is refused (`refuse_pickled_stage`).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    refuse_pickled_stage(base + ".pt")
    if not os.path.exists(base + ".json"):
        return None
    try:
        with open(base + ".json") as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise StageFileError(f"{base}.json cannot be read ({err}); delete it and run again to redo that "
                             "stage") from None
    saved = meta.get("settings") if isinstance(meta, dict) else None
    expected = json.loads(json.dumps(settings))
    if saved != expected:
        changed = sorted(k for k in expected if (saved or {}).get(k) != expected[k]) or ["unrecorded settings"]
        raise InputError(f"{base}.json was made with other settings ({', '.join(changed)} differ); use another "
                         "output_dir or delete that stage's files to redo it")
    try:
        tensors = load_file(base + ".safetensors")
    except (OSError, SafetensorError) as err:
        raise StageFileError(f"{base}.safetensors cannot be read as safetensors ({err}); delete it and "
                             f"{os.path.basename(base)}.json and run again to redo that stage") from None
    return tensors, meta
