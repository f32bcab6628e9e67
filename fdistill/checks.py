"""Checks of settings, data and output folders shared by every fdistill command and module.

Each check raises one `fdistill.errors.InputError` (a ValueError) that names the setting or file, the value seen
and the fix; configs call them in ``__post_init__`` and commands before anything is loaded, trained or written.

    >>> whole_number("batch_size", 0)
    Traceback (most recent call last):
    fdistill.errors.InputError: batch_size=0 must be ≥ 1: give a whole number ≥ 1.
"""

from __future__ import annotations

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
    """A path usable as an output folder: text, not an existing file, and creatable and writable where it is missing."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise invalid(name, path, "give the path of a folder (created if missing).")
    if os.path.exists(path) and not os.path.isdir(path):
        raise invalid(
            name,
            str(path),
            "it is an existing file, not a folder; give a folder path (created if missing) or move the file.",
        )
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise invalid(
            name,
            str(path),
            f"{parent!r} is a file, so no folder can be made inside it; give another path.",
            problem="cannot be created",
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise invalid(
            name, str(path), f"{parent!r} is not writable; give a folder you can write to.", problem="cannot be written"
        )
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
    raise InputError(
        f"{what} holds {int(bad.sum())} non-finite values (NaN or ±inf) in {len(rows)} rows; the first "
        f"is row {row}: {shown}. Fix or remove those rows (or re-create the file) and run again."
    )


def machine_memory_bytes() -> int:
    """All the memory one batch could ever use here: the machine's RAM plus the memory of every CUDA device."""
    import torch

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if torch.cuda.is_available():
        total += sum(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    return total


def batch_fits(name: str, batch_size: int, bytes_per_item: int, what: str, fix: str) -> None:
    """Refuse ``name=batch_size`` when ``batch_size × bytes_per_item`` bytes — one tensor every batch of that size
    needs at its length limits, said in ``what`` — exceed all the memory of this machine (`machine_memory_bytes`):
    such a batch size cannot be meant, and would otherwise fail only once the first full batch is built."""
    total = machine_memory_bytes()
    if batch_size * bytes_per_item > total:
        raise invalid(
            name,
            batch_size,
            f"{what} alone take {batch_size * bytes_per_item / 2**30:,.0f} GiB, more than all the memory of this "
            f"machine ({total / 2**30:,.0f} GiB, RAM and GPUs); use at most {max(1, total // bytes_per_item):,}"
            f"{fix}.",
            problem="cannot fit in memory",
        )
