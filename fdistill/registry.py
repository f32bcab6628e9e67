"""The one rule for adding to a registry of named objects: the LM objectives (`fdistill.lm.objectives`) and the
diffusion distillers (`fdistill.diffusion.experiment.distillers`) are both looked up by name from a settings field.
"""

from __future__ import annotations

from typing import TypeVar

from fdistill.errors import InputError, invalid

T = TypeVar("T")


def check_name(item, kind: str) -> None:
    """Refuse an ``item`` (an object with a ``name``) whose name is empty or not a string, in one `InputError`."""
    if not item.name or not isinstance(item.name, str):
        raise invalid(f"{kind}.name", item.name, f"give the {kind} a non-empty name.")


def register(table: dict[str, T], item: T, kind: str, *, replace: bool = False) -> T:
    """Add ``item`` to ``table`` under its name and return it; refuse an empty name, and a name already taken by
    another object unless ``replace`` (registering the same object again is harmless).

    Example:
        >>> from types import SimpleNamespace
        >>> table = {}
        >>> register(table, SimpleNamespace(name="kl"), "objective").name
        'kl'
        >>> register(table, SimpleNamespace(name="kl"), "objective")
        Traceback (most recent call last):
        fdistill.errors.InputError: an objective named 'kl' is registered already: pick another name or pass replace=True.
    """
    check_name(item, kind)
    if item.name in table and not replace and table[item.name] is not item:
        article = "an" if kind[0] in "aeiou" else "a"
        raise InputError(
            f"{article} {kind} named {item.name!r} is registered already: pick another name or pass replace=True."
        )
    table[item.name] = item
    return item
