"""What the `fdistill` sub-commands share: a ``--config`` YAML as option defaults, required options, Ctrl-C."""

from __future__ import annotations

import argparse

from fdistill.errors import InputError
from fdistill.yaml_config import read_yaml_mapping, typed_values


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a command; the message says where it stopped and how to resume, in one line."""


def require(args, *names: str) -> None:
    """An InputError naming every option of ``names`` that ``args`` lacks (given neither as a flag nor in --config)."""
    missing = [n for n in names if not getattr(args, n, None)]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise InputError(f"missing {flags} (give it on the command line or in the --config YAML).")


def apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Use a ``--config`` YAML's keys as defaults of the sub-command, so flags still override them.

    Each value is typed like its option (`fdistill.yaml_config`, the parser of recipes and overrides too).
    """
    if "--config" not in argv:
        return
    at = argv.index("--config") + 1
    if at >= len(argv) or argv[at].startswith("-"):
        raise InputError("--config needs a value: give the path of a YAML file whose keys are the options.")
    path = argv[at]
    values = read_yaml_mapping(path, what="--config file")
    command = argv[0]
    sub = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices[command]
    options = {a.dest: a for a in sub._actions if a.dest not in ("help", "config")}
    sub.set_defaults(**typed_values(values, {k: option_type(a) for k, a in options.items()}, f"{path}:"))


def option_type(action: argparse.Action):
    """The type hint of an argparse option's value (for `typed_values`)."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return bool
    kind = action.type if isinstance(action.type, type) else str
    kind = list[kind] if action.nargs in ("*", "+") else kind
    return kind | None if action.default is None else kind


def add_config_option(parser) -> None:
    """The ``--config`` option of `fdistill sample` and `fdistill evaluate`."""
    parser.add_argument(
        "--config", default=None, help="YAML file whose keys are these options (underscored); flags override it"
    )
