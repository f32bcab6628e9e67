"""The folder of an offline sampling run: its provenance, resume or refusal, batch files committed by manifest, merge.

A run's batches are written one file each, atomically, and committed by a manifest of their sha256
(:mod:`fdistill.storage`); a rerun keeps the committed ones when it is the very same run (same teacher, tokenizer,
data and settings, by content) and refuses any other. When all are drawn, the main process merges them in input
order into a `datasets` dataset, then writes the provenance record and, last, the folder's manifest. Used by
:func:`fdistill.lm.offline.sample_offline_with`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import Dataset, concatenate_datasets
from tqdm.auto import tqdm

from fdistill.errors import InputError, see
from fdistill.lm.data import is_blank
from fdistill.lm.logits_cache import CACHE_COLUMNS, DESCRIPTION_PREFIX, FLOAT_COLUMNS, cache_dataset
from fdistill.storage import (
    LOCK_FILE,
    MANIFEST,
    atomic_write,
    check_manifest,
    has_manifest,
    manifest_problem,
    read_json,
    write_manifest,
    writing,
)

if TYPE_CHECKING:
    from fdistill.lm.offline import OfflineSamplingSettings

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "fdistill_provenance.json"
_WORK_DIR = ".fdistill_work"


@dataclass(frozen=True)
class SampleRow:
    """One teacher sample as :func:`~fdistill.lm.offline.sample_offline` stores it, beside its input's columns:
    which input and sample it is, its token ids (EOS kept when the teacher stopped there) and text, whether the
    teacher stopped (EOS, not the length limit) and, with ``topk_logprobs``, the teacher's top-k ids and
    log-probabilities at each position (None, and no such columns, without)."""

    input_index: int
    sample_index: int
    teacher_sample_ids: list[int]
    teacher_sample: str
    teacher_stopped: bool
    teacher_topk_ids: list[list[int]] | None = None
    teacher_topk_logprobs: list[list[float]] | None = None

    @classmethod
    def of(cls, row: SampleRow | dict) -> SampleRow:
        """``row``, or the row a dict of these fields describes (a sampler may give either)."""
        return row if isinstance(row, SampleRow) else cls(**row)

    def record(self) -> dict:
        """The row's columns and values as stored, in this order; the top-k columns only when drawn."""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.teacher_topk_ids is None:
            del record["teacher_topk_ids"], record["teacher_topk_logprobs"]
        return record


# The provenance fields a sampling run's samples depend on; a rerun resumes only when all are equal.
_RUN_IDENTITY = ("teacher_fingerprint", "tokenizer_fingerprint", "settings", "dataset_fingerprint", "num_inputs")


def _run_changes(previous: dict, current: dict) -> list[str]:
    """What differs between an earlier run's provenance record and this run's, in words (empty: the same run)."""
    changes = []
    if "teacher_fingerprint" not in previous:  # a record written before fingerprints: the name is all there is
        if previous.get("teacher") != current["teacher"]:
            changes.append(f"teacher {previous.get('teacher')!r} -> {current['teacher']!r}")
    for key, what in (("teacher_fingerprint", "teacher"), ("tokenizer_fingerprint", "tokenizer")):
        if key in previous and previous[key] != current[key]:
            changes.append(f"the {what} changed (content fingerprint {previous[key]} -> {current[key]})")
    old, new = previous.get("settings", {}), current["settings"]
    changes += [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
    ]
    if previous.get("num_inputs") != current["num_inputs"]:
        changes.append(f"number of inputs: {previous.get('num_inputs')} -> {current['num_inputs']}")
    elif previous.get("dataset_fingerprint") != current["dataset_fingerprint"]:
        changes.append("the input data changed")
    return changes


def committed_batches(output_dir: str) -> int:
    """How many batches of an unfinished sampling run in ``output_dir`` are committed (a rerun keeps them)."""
    work = Path(output_dir) / _WORK_DIR
    return len(list(work.glob(f"batch_*.jsonl{_COMMITTED}"))) if work.is_dir() else 0


def _fingerprint(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _provenance(
    dataset: Dataset,
    settings: OfflineSamplingSettings,
    teacher_id: str,
    teacher_revision: str | None,
    fingerprint: dict,
    extra_provenance: dict | None,
) -> dict:
    """The run's provenance record, with its ``run_id``: the fingerprint of what the samples depend on
    (:data:`_RUN_IDENTITY`)."""
    from fdistill._version import __version__

    provenance = {
        "teacher": teacher_id,
        "teacher_revision": teacher_revision,
        "teacher_fingerprint": fingerprint["model"],
        "tokenizer_fingerprint": fingerprint["tokenizer"],
        "settings": asdict(settings),
        "dataset_fingerprint": getattr(dataset, "_fingerprint", None),
        "num_inputs": len(dataset),
        "fdistill_version": __version__,
        **(extra_provenance or {}),
    }
    # what the samples depend on: content, not how the teacher was named (./t and /abs/t resume the same run)
    provenance["run_id"] = _fingerprint({k: provenance[k] for k in _RUN_IDENTITY})
    return provenance


def _claim_folder(out: Path, output_dir: str, provenance: dict) -> bool:
    """Under the folder's lock, before anything is written: True when ``out`` holds this run's finished samples
    (verified against their manifest), False when this run may (continue to) draw there; else one `InputError`."""
    work, record = out / _WORK_DIR, out / PROVENANCE_FILE
    redo = f"delete {output_dir!r} and rerun to draw the samples again"
    if record.exists() and (has_manifest(out) or not work.exists()):  # finished (older fdistill: no manifest)
        if has_manifest(out):
            check_manifest(out, redo + ".")
        else:
            logger.warning("%s has no %s (written by an older fdistill): its files are not verified.", out, MANIFEST)
        changes = _run_changes(read_json(record, redo), provenance)
        if changes:
            raise InputError(
                f"{output_dir!r} already holds finished samples from a different run ({'; '.join(changes)}); "
                "delete that folder or choose another output folder."
            )
        shutil.rmtree(work, ignore_errors=True)  # left by a run stopped while cleaning up
        return True
    run_file = work / "run.json"
    done = committed_batches(output_dir)
    if done and not run_file.exists():
        raise InputError(
            f"{output_dir!r} holds {done} sampled batches but no run record ({run_file} is gone), so "
            "they cannot be checked against this run: delete that folder or choose another output folder."
        )
    if done:  # an unfinished run: resume only the very same run
        changes = _run_changes(read_json(run_file, redo), provenance)
        if changes:
            raise InputError(
                f"{output_dir!r} holds an unfinished run ({done} batches done) that differs from this one "
                f"({'; '.join(changes)}); resuming would mix them. Rerun with the earlier teacher, tokenizer, data and "
                "settings to finish it, or delete that folder (or choose another) to start afresh."
                + see("guides/troubleshooting", "resume")
            )
    elif any(p.name not in (LOCK_FILE, _WORK_DIR) for p in out.iterdir()):
        raise InputError(
            f"{output_dir!r} exists and is not an fdistill sampling folder; choose an empty or new folder."
        )
    else:  # nothing drawn yet: (re)write the record, so a corrected rerun after a failed start is welcome
        with writing(f"the run record {run_file}", "free space, then rerun the same command"):
            work.mkdir(parents=True, exist_ok=True)
            atomic_write(run_file, json.dumps(provenance, indent=1, default=str))
    return False


_COMMITTED = ".manifest.json"  # batch_N.jsonl is committed when batch_N.jsonl.manifest.json (its sha256) is there


def _committed(work: Path, name: str) -> bool:
    """Whether batch file ``name`` is committed and as written; one changed or cut short since is drawn again."""
    if not (work / (name + _COMMITTED)).exists():
        return False
    problem = manifest_problem(work, name + _COMMITTED)
    if problem is None:
        return True
    logger.warning("%s: drawing that batch again.", problem)
    (work / (name + _COMMITTED)).unlink()
    return False


def _draw(sampler, prompts, batches, work: Path, settings, state, show_progress: bool) -> None:
    """This process's share of the batches not yet committed, each written atomically and committed by its digest."""
    mine = [b for b in range(len(batches)) if b % state.num_processes == state.process_index]
    todo = [b for b in mine if not _committed(work, _batch_file(b))]
    progress = tqdm(
        total=len(mine),
        initial=len(mine) - len(todo),
        desc=f"teacher samples [{state.process_index}]",
        unit="batch",
        disable=not show_progress,
    )
    start, n_inputs, n_tokens = time.perf_counter(), 0, 0
    for b in todo:
        indices = batches[b]
        rows = [SampleRow.of(r) for r in sampler.draw(prompts, indices, settings, b)]
        text = "".join(json.dumps(r.record()) + "\n" for r in rows)
        with writing(f"batch {b} to {work}", "rerun the same command: committed batches are kept"):
            atomic_write(work / _batch_file(b), text)
            write_manifest(work, [_batch_file(b)], name=_batch_file(b) + _COMMITTED)
        n_inputs += len(indices)
        n_tokens += sum(len(r.teacher_sample_ids) for r in rows)
        elapsed = time.perf_counter() - start
        progress.set_postfix(inputs_per_s=f"{n_inputs / elapsed:.2f}", tokens_per_s=f"{n_tokens / elapsed:.1f}")
        progress.update(1)
    progress.close()
    state.wait_for_everyone()


def _batch_file(b: int) -> str:
    return f"batch_{b:06d}.jsonl"


def empty_samples(rows: list[dict]) -> list[int]:
    """Indices of the sample rows whose text is empty (blank: the teacher stopped at once, or wrote only special or
    control characters); counted in the provenance record as ``empty_samples`` and logged, never dropped."""
    return [i for i, r in enumerate(rows) if is_blank(r["teacher_sample"])]


def _merge(dataset: Dataset, batches, work: Path, out: Path, settings, provenance) -> None:
    """Merge the verified batch files in input order, and publish the dataset: its files, the provenance record,
    then their manifest, last (:mod:`fdistill.storage`); only then is the work folder removed."""
    rows = []
    redo = "rerun the same command to draw that batch again"
    for b, indices in enumerate(batches):
        name = _batch_file(b)
        if not (work / (name + _COMMITTED)).exists():
            raise InputError(f"batch {b} ({work / name}) is not committed: {redo}.")
        check_manifest(work, f"delete it and {redo}.", name=name + _COMMITTED)
        batch = [json.loads(line) for line in (work / name).read_text().splitlines()]
        got = sorted((r["input_index"], r["sample_index"]) for r in batch)
        want = sorted((i, s) for i in indices for s in range(settings.num_samples))
        if got != want:
            raise InputError(
                f"{work / name} holds {len(got)} rows that are not batch {b}'s {len(want)} (inputs × samples): "
                f"delete it and {redo}."
            )
        rows.extend(batch)
    rows.sort(key=lambda r: (r["input_index"], r["sample_index"]))
    expected = [(i, s) for i in range(len(dataset)) for s in range(settings.num_samples)]
    got = [(r["input_index"], r["sample_index"]) for r in rows]
    if got != expected:  # the batches cover every input once: a bug if not
        raise RuntimeError(f"sample rows do not match the inputs ({len(got)} rows for {len(expected)} expected).")
    merged = dataset.select([r["input_index"] for r in rows])
    topk = FLOAT_COLUMNS[0] in rows[0]
    stored = [c for c in rows[0] if c not in FLOAT_COLUMNS]
    replaced = [c for c in [*rows[0], *(CACHE_COLUMNS if topk else ())] if c in merged.column_names]
    merged = merged.remove_columns(replaced)  # the input's columns of these names give way to the samples'
    for column in stored:
        merged = merged.add_column(column, [r[column] for r in rows])
    if topk:  # the teacher's top k in the cache format (fdistill.lm.logits_cache), its record in the provenance
        cache, cache_format = cache_dataset([r["teacher_topk_ids"] for r in rows], [r[FLOAT_COLUMNS[1]] for r in rows])
        merged = concatenate_datasets([merged.flatten_indices(), cache], axis=1)
        provenance = dict(provenance, topk_cache=cache_format.record())
    merged.info.description = DESCRIPTION_PREFIX + json.dumps(provenance, default=str)
    staging = work / "final"
    with writing(f"the sampled dataset to {out}", "rerun the same command: the drawn batches are kept"):
        if staging.exists():
            shutil.rmtree(staging)
        merged.save_to_disk(str(staging))
        files = sorted(staging.iterdir(), key=lambda p: p.name == "state.json")  # state.json last: loadable when whole
        for f in files:
            os.replace(f, out / f.name)
        empty = empty_samples(rows)
        if empty:
            logger.warning(
                "%d of %d teacher samples are empty (no text: the teacher stopped at once); rows %s%s",
                len(empty),
                len(rows),
                empty[:10],
                " ..." if len(empty) > 10 else "",
            )
        provenance = dict(
            provenance,
            num_rows=len(merged),
            empty_samples=len(empty),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        atomic_write(out / PROVENANCE_FILE, json.dumps(provenance, indent=1, default=str))
        write_manifest(out, [f.name for f in files] + [PROVENANCE_FILE])
    shutil.rmtree(work)
