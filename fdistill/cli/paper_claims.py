"""`fdistill paper-claims`: the command entry point of the claims study (the study itself:
`fdistill.studies.paper_claims`)."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

import torch

from fdistill.checks import output_folder, whole_number
from fdistill.studies import paper_claims as study
from fdistill.studies.paper_claims import (  # the study's names, importable from their old path
    COLUMNS,
    TEXT_METRICS,
    VARIANTS,
    ClaimsSettings,
    Shared,
    Variant,
    run_claims,
    run_one,
)

__all__ = [
    "COLUMNS",
    "TEXT_METRICS",
    "VARIANTS",
    "ClaimsSettings",
    "Shared",
    "Variant",
    "add_arguments",
    "main",
    "run_claims",
    "run_from_args",
    "run_one",
]


def add_arguments(parser) -> None:
    defaults = ClaimsSettings()
    parser.add_argument("--out", default="runs/paper_claims", help="output folder (default runs/paper_claims)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help=f"student seeds (default {defaults.seeds})")
    parser.add_argument(
        "--variants", nargs="+", default=None, help=f"variants to run (default all: {' '.join(VARIANTS)})"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help=f"f-DISTILL steps per run (default {defaults.distill_steps})"
    )
    parser.add_argument(
        "--num-iterations",
        type=int,
        default=None,
        help="μ: optimizer steps on each generation of student samples, importance-reweighted (every variant "
        f"but kl and seqkd; default {defaults.num_iterations} = fresh samples every step)",
    )
    parser.add_argument(
        "--curve-every",
        type=int,
        default=None,
        help=f"steps between learning-curve points on the held-out start (default {defaults.curve_every})",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, same code path (a few minutes)")
    parser.add_argument("--cache-dir", default=None, help="where the converted GGUF teacher is cached")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: every core; another count can change float sums, so sampled tokens)",
    )


def run_from_args(args) -> None:
    output_folder("--out", args.out)
    counts = ("steps", "threads", "num_iterations", "curve_every")
    for name in counts:  # 0 is a count too: refused, never read as "not given"
        if getattr(args, name) is not None:
            whole_number(f"--{name.replace('_', '-')}", getattr(args, name))
    settings = ClaimsSettings.quick() if args.quick else ClaimsSettings()
    changes = {
        k: v
        for k, v in (
            ("seeds", args.seeds),
            ("variants", args.variants),
            ("distill_steps", args.steps),
            ("num_iterations", args.num_iterations),
            ("curve_every", args.curve_every),
        )
        if v is not None
    }
    settings = replace(settings, **changes)
    settings.check()
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    result = run_claims(args.out, settings, cache_dir=args.cache_dir)
    print(result["report"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fdistill paper-claims", description=study.__doc__.splitlines()[0])
    add_arguments(parser)
    run_from_args(parser.parse_args(argv))
