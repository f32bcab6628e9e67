"""The `fdistill` command's entry point: the parser of every sub-command, dispatch, and the one-line error rule.

Bad input (a ``ValueError``, `fdistill.errors.InputError` included) is one line on stderr and exit status 2; Ctrl-C
is one line saying where it stopped and how to resume, exit status 130; NaN/inf in training and a full disk are one
line and exit status 1.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys

import torch

from fdistill.cli import evaluate, sample, train
from fdistill.cli.common import apply_config
from fdistill.errors import InputError, NonFiniteError, see


def _main_process_only(run):
    """Evaluation is not sharded: under `accelerate launch` the main process evaluates, the others wait."""

    def wrapped(args):
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # several CPU processes need the gloo group
        if state.is_main_process:
            run(args)
        state.wait_for_everyone()

    return wrapped


# Sub-commands of the research modules: (module with add_arguments/run, help, the extra that installs its needs).
# Only the chosen one is imported, so `fdistill sample` never imports flows, vocoder or diffusion.
RESEARCH_COMMANDS = {
    "flows": (
        "fdistill.flows.cli",
        "normalizing-flow distillation (LKD/ILKD/SKD): teacher, distill, evaluate, experiment",
        "flows",
    ),
    "vocoder": (
        "fdistill.vocoder.cli",
        "probability density distillation (reverse KL vs z-/x-reconstruction): gaussian, audio",
        "vocoder",
    ),
    "diffusion": (
        "fdistill.diffusion.cli",
        "few-step diffusion distillation (KD, PD, VSD/DMD, guidance): experiment, teacher, distill, sample, evaluate",
        "diffusion",
    ),
}


# The documentation page of each command (under docs/; the site: pip install -e ".[docs]" && mkdocs serve), named at
# the end of its --help; tests/core/test_docs.py checks that each exists.
COMMAND_DOCS = {
    "sample": "guides/decoder-only.md",
    "train": "reference/config.md",
    "evaluate": "guides/evaluation.md",
    "demo": "guides/decoder-only.md",
    "paper-claims": "guides/divergences.md",
    "flows": "guides/flows.md",
    "vocoder": "guides/vocoder.md",
    "diffusion": "guides/diffusion.md",
}
EPILOG = """documentation, in the repository's docs/ folder (as a site: pip install -e ".[docs]" && mkdocs serve):
  docs/index.md                    the guides, one per task
  docs/reference/config.md         every setting a recipe or a key=value override may hold
  docs/guides/troubleshooting.md   what an error means, how to resume; errors name their section"""


def _add_docs(sub) -> None:
    """End each sub-command's --help with its documentation page."""
    for name, parser in sub.choices.items():
        if name in COMMAND_DOCS:
            parser.epilog = f"documentation: docs/{COMMAND_DOCS[name]}"


def _research_module(command: str):
    """The CLI module of a research sub-command, or one clear error naming the extra to install."""
    import importlib

    module, _, extra = RESEARCH_COMMANDS[command]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "fdistill":
            raise
        raise InputError(
            f"`fdistill {command}` needs the package {error.name!r}, which is not installed: "
            f"pip install 'fdistill[{extra}]'.{see('guides/' + extra)}"
        ) from None


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not to the stream of the moment it was made: a
    caller that swaps stderr (pytest's capture, a notebook) and closes the old one never gets "I/O operation on closed
    file"."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _log_to_stderr() -> None:
    """Show the `fdistill` logger's INFO messages (progress notes, where results went) on stderr, once: the
    command's handler; the library itself only has a NullHandler (fdistill/__init__.py)."""
    root = logging.getLogger("fdistill")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


# Write failures that are the machine's, not fdistill's: one line and how to continue (see fdistill.storage).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}
_RESUME = {
    "train": "then rerun with --resume-from-checkpoint latest (the newest complete checkpoint)",
    "sample": "then rerun the same command: committed batches are kept",
}


def main(argv: list[str] | None = None) -> None:
    """Run ``fdistill ARGV`` (default: ``sys.argv[1:]``); bad input exits with one line on stderr and status 2."""
    _log_to_stderr()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, sub, runs = _parser()
    try:
        _add_research_commands(sub, runs, command=next((a for a in argv if not a.startswith("-")), None))
        _add_docs(sub)
        apply_config(parser, argv)
    except ValueError as error:
        print(f"fdistill: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    args = _parse(parser, argv)
    _run(runs[args.command], args)


def _parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction, dict]:
    """The parser with the language-model sub-commands, its sub-parsers, and their run functions by name."""
    import fdistill.cli
    from fdistill.cli import cross_tokenizer, demo, paper_claims

    parser = argparse.ArgumentParser(
        prog="fdistill",
        description=fdistill.cli.__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sample.add_sample_parser(sub)
    evaluate.add_evaluate_parser(sub)
    train.add_train_parser(sub)
    d = sub.add_parser("demo", help="the embedded default: distil the packaged SmolLM2 teacher end to end on CPU")
    demo.add_arguments(d)
    c = sub.add_parser(
        "paper-claims", help="every objective × seeds on the packaged SmolLM2 teacher: the f-DISTILL claims, tested"
    )
    paper_claims.add_arguments(c)
    x = sub.add_parser(
        "cross-tokenizer",
        help="a teacher and a student with different tokenizers (Gemma 3 270M -> SmolLM2): f-DISTILL vs ULD, SeqKD",
    )
    cross_tokenizer.add_arguments(x)
    runs = {
        "sample": sample.run_sample,
        "train": train.run_train,
        "evaluate": _main_process_only(evaluate.run_evaluate),
        "demo": demo.run_from_args,
        "paper-claims": paper_claims.run_from_args,
        "cross-tokenizer": cross_tokenizer.run_from_args,
    }
    return parser, sub, runs


def _add_research_commands(sub, runs: dict, command: str | None) -> None:
    """A sub-parser per research module; only the chosen ``command``'s module is imported and its options built."""
    for name, (_, help_text, _) in RESEARCH_COMMANDS.items():
        research = sub.add_parser(name, help=help_text)
        if name == command:
            module = _research_module(name)
            module.add_arguments(research)
            runs[name] = module.run


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` words after an option join a recipe's overrides, any other extra is refused."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra  # key=value overrides given after an option (argparse stops at the option)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv  # for the resume command an interrupted run names
    return args


def _run_in_group(run, args: argparse.Namespace) -> None:
    """Run the command, then end this process's `torch.distributed` group if the command started one.

    Under `accelerate launch` on CPU, a process can abort at interpreter shutdown ("terminate called without an active
    exception", SIGABRT) after a run that finished: a gloo worker thread still holds the last reference to a
    collective's tensors, and freeing them needs the GIL, which a thread can no longer take once Python is
    finalizing. DTensor's caches keep the group (and so its worker threads) alive past `destroy_process_group`.
    So a finished run first waits at a barrier: every process's collectives are complete and their tensors freed by
    the workers (this thread waits without the GIL), then the group ends. On the error path only the local
    `destroy_process_group` runs: a barrier there would wait for processes that may never come.
    """
    try:
        run(args)
    except BaseException:
        _end_group(finished=False)
        raise
    _end_group(finished=True)


def _end_group(finished: bool) -> None:
    """End the default process group if one was started; after a finished run, all processes meet at a barrier first."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if finished:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _run(run, args: argparse.Namespace) -> None:
    """Run the command; its failures that are the user's or the machine's become one line on stderr and an exit."""
    try:
        _run_in_group(run, args)
    except KeyboardInterrupt as error:  # Ctrl-C: where it stopped and how to resume, in one line; 128 + SIGINT
        print(f"fdistill {args.command}: {error or 'interrupted (Ctrl-C)'}", file=sys.stderr)
        raise SystemExit(130) from None
    except ValueError as error:  # bad input: one clear line, no traceback
        print(f"fdistill {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteError as error:  # training met NaN/inf: what, where and the likely cause, in one line
        print(f"fdistill {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as error:  # a full disk or a file-size limit: nothing cut short is read back, so rerunning is safe
        from fdistill.storage import WriteError

        if isinstance(error, WriteError):
            print(f"fdistill {args.command}: error: {error}", file=sys.stderr)
        elif error.errno in _WRITE_ERRNOS:
            print(
                f"fdistill {args.command}: error: could not write {error.filename or 'a file'}: {error.strerror} "
                f"(free space or raise the limit, e.g. `ulimit -f`); {_RESUME.get(args.command, 'then run again')}."
                f"{see('guides/troubleshooting', 'storage')}",
                file=sys.stderr,
            )
        else:
            raise
        raise SystemExit(1) from None
