"""The one parser of settings read from text: recipe YAML, ``--config`` files and ``key=value`` overrides.

Every value is converted to the declared type of the field it sets — ``int``, ``float`` (any notation: ``5e-5``,
which YAML 1.1 leaves as text), ``bool`` (only from true/false/1/0/yes/no), ``str``, ``list[...]``, ``dict``,
optional and union types — or refused with one `InputError` that names the key, the value seen and the fix.
Unknown keys are refused with the closest valid key suggested. Nothing is loaded or written before this succeeds.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Settings:
    ...     learning_rate: float = 1e-3
    ...     seeds: list[int] | None = None
    ...     verbose: bool = False
    >>> load_dataclass_config(Settings, overrides=["learning_rate=5e-4", "seeds=[0, 1]", "verbose=yes"])
    Settings(learning_rate=0.0005, seeds=[0, 1], verbose=True)

Used by ``fdistill train`` (`RunArguments` + `FDistillConfig`), the ``--config`` files of ``fdistill sample`` and
``fdistill evaluate`` (their argparse options), and the flows and vocoder experiment configs.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping

import yaml

from fdistill.errors import InputError, see

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
_NONE = ("none", "null", "~", "")


def _describe(annotation) -> str:
    names = {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "text",
        dict: "a mapping {k: v}",
        list: "a list [a, b]",
        type(None): "null",
    }
    if annotation in names:
        return names[annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if origin is list:
        plural = {int: "ints like [0, 1]", float: "numbers like [0.1, 1e-3]", str: "strings like [a, b]"}
        args = typing.get_args(annotation)
        return f"a list of {plural.get(args[0], _describe(args[0]))}" if args else names[list]
    if origin is dict:
        return names[dict]
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


class _Mismatch(Exception):
    """A value that does not convert to an annotation (turned into one InputError naming the key)."""


def _convert(value, annotation):
    """``value`` as ``annotation``; raises `_Mismatch` when it cannot be one."""
    if annotation is typing.Any or annotation is object:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, typing.get_args(annotation))
    if origin is typing.Literal:
        if value in typing.get_args(annotation):
            return value
        raise _Mismatch
    if origin is list or annotation is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        (item,) = typing.get_args(annotation) or (typing.Any,)
        return [_convert(v, item) for v in value]
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        return dict(value)
    if annotation is bool:
        return _to_bool(value)
    if annotation is int:
        return _to_int(value)
    if annotation is float:
        return _to_float(value)
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # `run_name: 2024`
            return str(value)
        raise _Mismatch
    if annotation is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        raise _Mismatch
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError:
            raise _Mismatch from None
    return value  # a type this parser does not know (e.g. a config object): the dataclass validates it


def _convert_union(value, arms):
    if value is None:
        if type(None) in arms:
            return None
        raise _Mismatch
    # An arm the value already is wins (a bool stays a bool in `str | bool`), then conversions in declared order.
    exact = [a for a in arms if isinstance(a, type) and not issubclass(a, enum.Enum) and type(value) is a]
    for arm in exact + [a for a in arms if a is not type(None)] + [type(None)] * (type(None) in arms):
        try:
            return _convert(value, arm)
        except _Mismatch:
            continue
    raise _Mismatch


def _to_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise _Mismatch


def _to_float(value) -> float:
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip().replace("_", ""))
        except ValueError:
            raise _Mismatch from None
    raise _Mismatch


def _to_int(value) -> int:
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, int):
        return value
    number = _to_float(value)  # "1e3" and 1000.0 are the whole number 1000; 2.5 is not
    if not math.isfinite(number) or not number.is_integer():
        raise _Mismatch
    return int(number)


def convert(key: str, value, annotation):
    """``value`` converted to ``annotation`` (a type hint), or an `InputError` naming ``key``, the value and the fix.

    Example:
        >>> convert("learning_rate", "5e-5", float)
        5e-05
        >>> convert("use_chat_template", "maybe", bool)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        fdistill.errors.InputError: use_chat_template='maybe' is not valid: expected true or false. (see ...#values)
    """
    try:
        return _convert(value, annotation)
    except _Mismatch:
        fix = f"expected {_describe(annotation)}."
        if isinstance(value, bool) and annotation is not bool:
            fix += " YAML reads yes/no/on/off as booleans: quote the text."
        raise InputError(f"{key}={value!r} is not valid: {fix}{see('guides/troubleshooting', 'values')}") from None


def field_types(*classes) -> dict[str, object]:
    """The init fields of dataclasses ``classes`` and their resolved type hints (later classes win on a clash)."""
    hints: dict[str, object] = {}
    for cls in classes:
        resolved = typing.get_type_hints(cls)
        hints.update({f.name: resolved.get(f.name, f.type) for f in dataclasses.fields(cls) if f.init})
    return hints


def unknown_keys_error(keys: Iterable[str], known: Iterable[str], where: str) -> InputError:
    """An `InputError` for keys that are not settings, suggesting the closest valid ones."""
    keys, known = sorted(keys), sorted(known)
    hints = []
    for key in keys:
        close = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
        if close:
            hints.append(f"{key!r}: did you mean {' or '.join(close)}?")
    hint = " ".join(hints) if hints else f"valid keys: {', '.join(known)}."
    return InputError(f"unknown {where} keys {keys} — {hint}")


def typed_values(values: Mapping, types_by_key: Mapping[str, object], where: str) -> dict:
    """Each of ``values`` converted to its key's type; unknown keys refused with a suggestion."""
    odd = [k for k in values if not isinstance(k, str)]
    if odd:
        raise InputError(f"{where} key {odd[0]!r} is not valid: keys are setting names (text).")
    unknown = [k for k in values if k not in types_by_key]
    if unknown:
        raise unknown_keys_error(unknown, types_by_key, where)
    return {key: convert(key, value, types_by_key[key]) for key, value in values.items()}


def read_yaml_mapping(path: str, what: str = "recipe") -> dict:
    """The ``key: value`` mapping of the YAML file at ``path`` (empty file: ``{}``), or one clear `InputError`."""
    if not isinstance(path, str) or not path:
        raise InputError(f"{what} path {path!r} is not valid: give the path of a YAML file.")
    if not os.path.isfile(path):
        state = "is a folder" if os.path.isdir(path) else "not found"
        raise InputError(f"{what} {path!r} {state}: give the path of a YAML file (see recipes/).")
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        detail = str(error).replace("\n", " ")
        raise InputError(f"{what} {path!r} is not valid YAML ({detail}): fix the file.") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(
            f"{what} {path!r} holds a {type(values).__name__}, not a mapping: write one `key: value` per line."
        )
    return values


def parse_overrides(items: Iterable[str]) -> dict:
    """``["lr=5e-5", "seeds=[0, 1]"]`` → ``{"lr": "5e-5", "seeds": [0, 1]}``: each value read as YAML, typed later."""
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"override {item!r} is not key=value: write e.g. max_steps=10 or seeds=[0, 1].")
        try:
            values[key.strip()] = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError:
            values[key.strip()] = text  # e.g. "a: b" or an unbalanced bracket: keep the text; its type decides
    return values


def load_settings(
    path: str | None, overrides: Iterable[str] | None, types_by_key: Mapping[str, object], where: str | None = None
) -> dict:
    """The typed values of the YAML at ``path`` (if given) updated by ``key=value`` ``overrides``."""
    values = read_yaml_mapping(path) if path else {}
    values.update(parse_overrides(overrides or []))
    return typed_values(values, types_by_key, where or "recipe")


def load_dataclass_config(cls, path: str | None = None, overrides: list[str] | None = None):
    """``cls(**values)`` from the YAML at ``path`` (if given) updated by ``key=value`` overrides, each value typed."""
    return cls(**load_settings(path, overrides, field_types(cls), where=cls.__name__))
