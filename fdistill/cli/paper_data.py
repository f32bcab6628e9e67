"""``python -m fdistill.cli.paper_data TASK OUTPUT``: the paper's datasets as JSONL (the converters:
`fdistill.studies.paper_data`)."""

from __future__ import annotations

import argparse

from fdistill.studies import paper_data as study
from fdistill.studies.paper_data import (  # the converters' names, importable from their old path
    WMT16_TRAIN_SUBSET,
    commonsense_dialogue_rows,
    dart_rows,
    linearise_triples,
    prepare,
)

__all__ = ["WMT16_TRAIN_SUBSET", "commonsense_dialogue_rows", "dart_rows", "linearise_triples", "main", "prepare"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=study.__doc__.splitlines()[0])
    parser.add_argument("task", choices=["dart", "commonsense_dialogue"])
    parser.add_argument("output")
    parser.add_argument("--source", default=None, help="Hub dataset name (dart) or local folder (commonsense_dialogue)")
    args = parser.parse_args(argv)
    for path in prepare(args.task, args.output, args.source):
        print(path)


if __name__ == "__main__":
    main()
