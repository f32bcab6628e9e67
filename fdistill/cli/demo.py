"""`fdistill demo`: the command entry point of the embedded default (the study itself: `fdistill.studies.demo`)."""

from __future__ import annotations

import argparse
import os

import torch

from fdistill.studies import demo as study
from fdistill.studies.demo import (  # the study's names, importable from their old path
    ALL_OBJECTIVES,
    SMOLLM2,
    SMOLLM2_GGUF,
    STUDENT_LAYERS,
    DemoSettings,
    chatterbot_pairs,
    export_data,
    run_demo,
    smollm2_folder,
    split_pairs,
)

__all__ = [
    "ALL_OBJECTIVES",
    "SMOLLM2",
    "SMOLLM2_GGUF",
    "STUDENT_LAYERS",
    "DemoSettings",
    "add_arguments",
    "chatterbot_pairs",
    "export_data",
    "main",
    "run_demo",
    "run_from_args",
    "smollm2_folder",
    "split_pairs",
]


def add_arguments(parser) -> None:
    parser.add_argument("--output", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument(
        "--export-data",
        default=None,
        metavar="DIR",
        help="only write the demo's train/test prompts as JSONL into DIR (for recipes/smollm2) and stop",
    )
    parser.add_argument("--objective", nargs="+", default=["tvd"], help=f"one or more of {ALL_OBJECTIVES}, or 'all'")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, same code path (about a minute)")
    parser.add_argument("--cache-dir", default=None, help="where the converted GGUF teacher is cached")


def run_from_args(args) -> None:
    if args.export_data:
        for path in export_data(args.export_data, DemoSettings.quick() if args.quick else None):
            print(path)
        return
    objectives = ALL_OBJECTIVES if args.objective == ["all"] else args.objective
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    run_demo(args.output, objectives=objectives, quick=args.quick, cache_dir=args.cache_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fdistill demo", description=study.__doc__.splitlines()[0])
    add_arguments(parser)
    run_from_args(parser.parse_args(argv))
