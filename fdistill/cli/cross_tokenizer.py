"""`fdistill cross-tokenizer`: the command entry point of the cross-tokenizer study (the study itself:
`fdistill.studies.cross_tokenizer`): a teacher and a student with different tokenizers, trained and evaluated."""

from __future__ import annotations

import os
import shlex
import typing

import torch

from fdistill.checks import output_folder, whole_number
from fdistill.cli.common import add_config_option
from fdistill.studies.cross_tokenizer import VARIANTS, CrossSettings, run_study, settings_fields


def _option(f) -> dict:
    """argparse keywords of one `CrossSettings` field: its type, ``nargs`` for lists; defaults are left to the study."""
    kind = typing.get_type_hints(CrossSettings)[f.name]
    args = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
    kind = args[0]
    if typing.get_origin(kind) is list:
        return dict(type=typing.get_args(kind)[0], nargs="+", default=None)
    return dict(type=kind, default=None)


def _optional_text(f) -> bool:
    """A `CrossSettings` field of type ``str | None`` (the empty string on the command line means None)."""
    return typing.get_type_hints(CrossSettings)[f.name] == (str | None)


def add_arguments(parser) -> None:
    add_config_option(parser)
    parser.add_argument("--out", default="runs/cross_tokenizer", help="output folder (default runs/cross_tokenizer)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, same code path")
    parser.add_argument("--cache-dir", default=None, help="where converted GGUF models are cached")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: every core)")
    defaults = CrossSettings()
    for f in settings_fields():
        if f.name in CrossSettings.GROWABLE or not f.init:
            continue
        shown = f"default {getattr(defaults, f.name)!r}" + (" ('' for none)" if _optional_text(f) else "")
        parser.add_argument("--" + f.name.replace("_", "-"), help=shown, **_option(f))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help=f"student seeds (default {defaults.seeds})")
    parser.add_argument("--variants", nargs="+", default=None, help=f"variants (default all: {' '.join(VARIANTS)})")


def settings_from_args(args) -> CrossSettings:
    """The study's settings: the defaults (or ``--quick``'s sizes) with every option given replacing its field."""
    given = {}
    for f in settings_fields():
        value = getattr(args, f.name, None)
        if value is not None:
            given[f.name] = None if value == "" and _optional_text(f) else value
    settings = CrossSettings.quick(**given) if args.quick else CrossSettings(**given)
    settings.check()
    return settings


def run_from_args(args) -> None:
    output_folder("--out", args.out)
    if args.threads is not None:
        whole_number("--threads", args.threads)
    settings = settings_from_args(args)
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    command = shlex.join(["fdistill", *getattr(args, "argv", ["cross-tokenizer"])])
    result = run_study(args.out, settings, cache_dir=args.cache_dir, command=command)
    print(open(result["report"]).read())
