"""The f-DISTILL paper's four datasets as prompt/reference columns (DART, XSum, WMT16 EN–RO, Commonsense Dialogue).

    python -m fdistill.cli.paper_data dart data/dart                  # GEM/dart from the Hub → JSONL splits
    python -m fdistill.cli.paper_data commonsense_dialogue data/cd --source Commonsense-Dialogues/data

The recipes under ``recipes/`` train on ``prompt`` / ``reference`` columns. XSum and
WMT16 need no conversion (their recipes name the Hub columns directly); DART's
structured triples must be linearised, and Commonsense Dialogue (Zhou et al. 2021) is
distributed as JSON files in its GitHub repository (``train.json``, ``valid.json``,
``test.json``), not on the Hub. Each converter is a pure function of one raw row so it
can be tested on rows of the published shape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fdistill.errors import InputError

# The paper's WMT16 EN–RO training subset size (§3.1: "We extracted 100K samples").
WMT16_TRAIN_SUBSET = 100_000


def linearise_triples(tripleset: list[list[str]]) -> str:
    """DART input: ``[[s, p, o], ...]`` → ``"(s, p, o), (s, p, o)"`` as in the paper's Table 7."""
    return ", ".join("(" + ", ".join(part.strip() for part in triple) + ")" for triple in tripleset)


def dart_rows(row: dict) -> list[dict]:
    """One GEM/dart row (``tripleset``, ``target``) → one example per reference text."""
    prompt = linearise_triples(row["tripleset"])
    return [{"prompt": prompt, "reference": row["target"]}]


def commonsense_dialogue_rows(dialogue: dict) -> list[dict]:
    """One Commonsense-Dialogues entry (``context``, ``turns``) → one example per response turn.

    The prompt is the social context followed by the dialogue so far, turns separated by
    newlines; the reference is the next turn (paper §3.1, following Zhou et al. 2021).
    """
    rows = []
    turns = [t.strip() for t in dialogue["turns"]]
    for i in range(1, len(turns)):
        history = "\n".join([dialogue["context"].strip(), *turns[:i]])
        rows.append({"prompt": history, "reference": turns[i]})
    return rows


def _write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def prepare(task: str, output: str, source: str | None = None) -> list[str]:
    """Write ``{train,validation,test}.jsonl`` for ``task`` into ``output``; returns the paths."""
    out = Path(output)
    written = []
    if task == "dart":
        from datasets import load_dataset

        for split in ("train", "validation", "test"):
            data = load_dataset(source or "GEM/dart", split=split)
            rows = [r for row in data for r in dart_rows(row)]
            _write_jsonl(rows, out / f"{split}.jsonl")
            written.append(str(out / f"{split}.jsonl"))
    elif task == "commonsense_dialogue":
        if source is None:
            raise InputError(
                "commonsense_dialogue needs --source: the folder with train.json / valid.json / test.json "
                "of the Commonsense-Dialogues repository."
            )
        for split, name in (("train", "train.json"), ("validation", "valid.json"), ("test", "test.json")):
            with open(Path(source) / name) as f:
                dialogues = json.load(f)
            rows = [r for d in dialogues.values() for r in commonsense_dialogue_rows(d)]
            _write_jsonl(rows, out / f"{split}.jsonl")
            written.append(str(out / f"{split}.jsonl"))
    else:
        raise InputError(
            f"unknown task {task!r}: dart or commonsense_dialogue (XSum and WMT16 load from the Hub as they are)."
        )
    return written
