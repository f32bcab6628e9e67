"""The run record of a checkpoint: what it was trained with, written beside its files and checked on resume.

A record holds the distillation settings that change the objective (not those of speed or failure handling,
:data:`SPEED_SETTINGS`, nor secrets) and fingerprints of the teacher and the tokenizer
(:func:`fdistill.lm.loading.model_fingerprint`). :func:`commit_checkpoint` writes it and the manifest last, so a
checkpoint cut off before them is never resumed from (:mod:`fdistill.lm.checkpoints`); :func:`record_changes` says
how a resumed run differs from the one that wrote the record.
"""

from __future__ import annotations

import dataclasses
import json
import os

from fdistill.lm.checkpoints import RUN_RECORD
from fdistill.lm.config import DEPRECATED_SETTINGS, SECRET_SETTINGS, DistillArguments
from fdistill.storage import atomic_write, write_manifest, writing

# Settings that change speed or failure handling, not the objective: a resumed run may change them.
SPEED_SETTINGS = (
    "fused_divergence",
    "fused_chunk_size",
    "student_generation_cache",
    "teacher_dtype",
    "on_nonfinite",
    # a served teacher may move to another address or be asked differently; what it serves is checked instead
    "teacher_server",
    "teacher_server_timeout",
    "teacher_server_retries",
    "teacher_server_batch_size",
    "teacher_server_concurrency",
    # the student's samples come from the same student, in process or served (student_sync_every is recorded)
    "student_server",
    "student_server_timeout",
    "student_server_python",
    "overwrite_output_dir",  # where the run writes, not what it computes
    # when samples are drawn (reused, overlapped), not what the weighted loss estimates (fdistill.lm.importance)
    "steps_per_generation",
    "rollout_overlap",
)
# What a failed checkpoint write leaves, and what to do then.
CHECKPOINT_WRITE_FIX = (
    "it stays incomplete and is never resumed from: free space, then resume from the newest complete "
    "checkpoint (--resume-from-checkpoint latest; resume_from_checkpoint=True)."
)


def run_record(
    settings: DistillArguments, teacher, model, tokenizer, teacher_server, cache: dict | None = None
) -> dict:
    """What a checkpoint is trained with: the objective's settings and fingerprints of the teacher (a model in this
    process, the served model's name, root and revision — not its address — or the teacher that made the logits
    ``cache``, its provenance record) and of the tokenizer."""
    from fdistill.lm.loading import model_fingerprint

    objective_settings = {
        k: v
        for k, v in dataclasses.asdict(settings).items()
        if k in {f.name for f in dataclasses.fields(DistillArguments)}
        and k not in (*SPEED_SETTINGS, *SECRET_SETTINGS, *DEPRECATED_SETTINGS)
    }
    prints = (
        model_fingerprint(teacher, tokenizer)
        if teacher is not None
        else {"tokenizer": model_fingerprint(model, tokenizer)["tokenizer"]}
    )
    if teacher_server is not None:  # the served model (name, root, revision), not the address
        prints["model"] = teacher_server.model.fingerprint
    if cache is not None:  # the teacher that made the top-k cache (fdistill.lm.logits_cache)
        prints["model"] = cache.get("teacher_fingerprint")
    return {"settings": objective_settings, "teacher": prints.get("model"), "tokenizer": prints["tokenizer"]}


def current_names(settings: dict) -> dict:
    """Recorded settings under their current names (a record written before a rename holds the old ones)."""
    return {DEPRECATED_SETTINGS.get(k, k): v for k, v in settings.items()}


def record_changes(saved: dict, now: dict) -> list[str]:
    """The differences between two run records, as ``name: saved → now`` phrases."""
    then = current_names(saved.get("settings", {}))
    if then.get("teacher_topk_columns") and "teacher_topk_mode" not in then:
        then["teacher_topk_mode"] = "renormalised"  # recorded before the setting existed: the only mode then
    current = current_names(now["settings"]).items()
    changes = [f"{k}={then.get(k)!r} then, {v!r} now" for k, v in current if k in then and then[k] != v]
    for part in ("teacher", "tokenizer", "teacher_tokenizer"):  # the teacher's own tokenizer: across tokenizers
        if saved.get(part) != now.get(part):
            changes.append(
                f"another {part.replace('_', ' ')} (fingerprint {saved.get(part)} then, {now.get(part)} now)"
            )
    return changes


def commit_checkpoint(folder: str, record: dict) -> None:
    """Write the run record into the checkpoint ``folder``, then the manifest of every file: the checkpoint is
    complete from then on (:mod:`fdistill.storage`)."""
    with writing(f"checkpoint {folder}", CHECKPOINT_WRITE_FIX):
        atomic_write(os.path.join(folder, RUN_RECORD), json.dumps(record, indent=2, default=str))
        write_manifest(folder)
