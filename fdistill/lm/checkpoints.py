"""Checkpoint folders of a training run: the newest complete one, checked before a resume, and one run per
``output_dir``.

A checkpoint is complete when its manifest (:mod:`fdistill.storage`), written last by
:meth:`fdistill.lm.trainer.FDistillMixin._save_checkpoint`, is there; a resume checks every file against it, so a
checkpoint cut off by a crash or a full disk is skipped by ``latest``, and one changed after it was written is one
`InputError` naming the file and the fix — never a traceback or a silent restart.
"""

from __future__ import annotations

import logging
import os
import re
import shutil

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from fdistill.errors import InputError, see
from fdistill.storage import MANIFEST, check_manifest, has_manifest, read_json

logger = logging.getLogger(__name__)

RUN_RECORD = "fdistill_run.json"  # in each checkpoint folder: what it was trained with (see FDistillMixin.train)


# Files a finished or checkpointed run leaves in output_dir besides checkpoint-N folders (see claim_fresh_output_dir).
_RUN_FILES = (
    "trainer_state.json",
    "training_args.bin",
    RUN_RECORD,
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "pytorch_model.bin",
)


def checkpoint_folders(output_dir: str) -> list[str]:
    """The ``checkpoint-N`` folders in ``output_dir``, oldest step first (none when the folder does not exist)."""
    if not os.path.isdir(output_dir):
        return []
    steps = [
        (int(m.group(1)), name)
        for name in os.listdir(output_dir)
        if (m := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name))
        and os.path.isdir(os.path.join(output_dir, name))
    ]
    return [os.path.join(output_dir, name) for _, name in sorted(steps)]


def latest_checkpoint(output_dir: str, required: bool = False) -> str | None:
    """The newest *complete* checkpoint in ``output_dir`` (its manifest committed; :mod:`fdistill.storage`).

    Newer ones without a manifest — cut off while saving, or written by an fdistill older than manifests — are
    skipped and named in a warning. With ``required``, finding none is an `InputError` saying what was found.
    """
    folders = checkpoint_folders(output_dir)
    complete = [f for f in folders if has_manifest(f)]
    newest = complete[-1] if complete else None
    skipped = [os.path.basename(f) for f in folders[folders.index(newest) + 1 if newest else 0 :]]
    if skipped:
        logger.warning(
            "skipped incomplete checkpoint(s) %s in %s (no %s: cut off while saving, or written by an older "
            "fdistill); %s.",
            ", ".join(skipped),
            output_dir,
            MANIFEST,
            f"resuming from {newest}" if newest else "no complete checkpoint is left",
        )
    if newest is None and required:
        if not skipped:
            raise InputError(
                f"--resume-from-checkpoint latest: no checkpoint-N folder in "
                f"{output_dir!r}; train without it to start, or give the folder of a checkpoint."
            )
        raise InputError(
            f"--resume-from-checkpoint latest: no complete checkpoint-N folder in "
            f"{output_dir!r}, only incomplete ones ({', '.join(skipped)}); start afresh with overwrite_output_dir=true "
            "(it deletes them), or give a checkpoint folder explicitly to resume from it unverified."
            + see("guides/troubleshooting", "resume")
        )
    return newest


def damaged_checkpoint_fix(folder: str) -> str:
    """What to do about a damaged checkpoint: delete it and resume from the one before, or start afresh."""
    folder = os.path.normpath(folder)
    earlier = [f for f in checkpoint_folders(os.path.dirname(folder)) if has_manifest(f) and f != folder]
    earlier = [f for f in earlier if _step(f) < _step(folder)]
    if earlier:
        fix = f"delete {folder} and resume from {earlier[-1]} (--resume-from-checkpoint latest)."
    else:
        fix = f"delete {folder} and train afresh (no earlier complete checkpoint is there)."
    return fix + see("guides/troubleshooting", "storage")


def _step(folder: str) -> int:
    m = re.search(r"(\d+)$", folder)
    return int(m.group(1)) if m else -1


def verify_checkpoint(folder: str) -> None:
    """Refuse (one `InputError` naming the file and the fix) a checkpoint whose files are not as written.

    With a manifest, every file's size and sha256 are checked. Without one (written by an fdistill older than
    manifests, or cut off while saving) the files cannot be verified: a warning says so, and only its
    ``trainer_state.json`` and run record are checked to be readable.
    """
    if not os.path.isdir(folder):
        raise InputError(
            f"resume_from_checkpoint={folder!r} is not a folder: give a checkpoint folder (output_dir/checkpoint-N) "
            "or True (`--resume-from-checkpoint latest`) for the newest complete one."
        )
    if has_manifest(folder):
        check_manifest(folder, damaged_checkpoint_fix(folder))
        return
    logger.warning(
        "checkpoint %s has no %s (written by an older fdistill, or cut off while saving): its files cannot be "
        "verified.",
        folder,
        MANIFEST,
    )
    for name in ("trainer_state.json", RUN_RECORD):
        if os.path.exists(os.path.join(folder, name)):
            read_json(os.path.join(folder, name), damaged_checkpoint_fix(folder))


def claim_fresh_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuse a fresh run into an ``output_dir`` holding another run's checkpoints or saved model, unless
    ``overwrite``: then that run's checkpoint folders are deleted (so `latest` can never point into them)."""
    checkpoints = checkpoint_folders(output_dir)
    files = [n for n in _RUN_FILES if os.path.isfile(os.path.join(output_dir, n))]
    found = [os.path.basename(f) for f in checkpoints] + files
    if not found:
        return
    if not overwrite:
        shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        raise InputError(
            f"output_dir {output_dir!r} already holds another run ({shown}): resume it "
            "(`--resume-from-checkpoint latest`, resume_from_checkpoint=True), set overwrite_output_dir=true to "
            "replace it, or choose another output_dir." + see("guides/troubleshooting", "locks")
        )
    logger.warning("overwrite_output_dir: deleting the earlier run's checkpoints in %s.", output_dir)
    for folder in checkpoints:
        shutil.rmtree(folder)


def resume_advice(output_dir: str, what: str = "the server") -> str:
    """What a run stopped by a server failure says about resuming: the last whole checkpoint in ``output_dir``
    (restart ``what`` and resume from it), or that none was saved yet."""
    folder = latest_checkpoint(output_dir)
    if folder:
        advice = f"the last checkpoint, {folder}, is whole: restart {what} and resume with resume_from_checkpoint=True"
    else:
        advice = "no checkpoint was saved yet (save_steps)"
    return advice + see("guides/served")
