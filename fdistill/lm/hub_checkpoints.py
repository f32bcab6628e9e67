"""Checkpoint uploads to the Hub while training (``hub_strategy``), and resuming a run from the Hub's checkpoint.

Pushes. With ``push_to_hub`` and ``hub_strategy`` ``"every_save"``, ``"checkpoint"`` or ``"all_checkpoints"``, each
saved checkpoint is pushed once it is *committed* (its run record ``fdistill_run.json`` with the teacher and
tokenizer fingerprints and its manifest ``fdistill_manifest.json`` of sha256 digests written,
:mod:`fdistill.lm.run_record`): one Hub commit holds the model files at the repo's root, its ``README.md`` —
fdistill's model card with the step and the metrics so far — and, but for ``"every_save"``, the whole checkpoint
(weights, optimizer, scheduler, RNG states, trainer state, run record, manifest) under ``last-checkpoint/`` or
``checkpoint-N/``. ``"end"`` pushes only the final model (``Trainer.push_to_hub``).

Why not the Trainer's own ``_push_from_checkpoint``: it runs inside ``Trainer._save_checkpoint``, before fdistill
commits the run record and manifest, and its ``upload_folder(run_as_future=True)`` lists the folder from a background
thread while training writes on — a pushed checkpoint could lack them, or mix files of two saves; its failures sit in
a Future until ``_finish_current_push`` raises them, as a traceback, at the end of training. Here the checkpoint's
files are first hard-linked (copied where links are impossible) into a private staging folder, ``_hub_push/`` in
``output_dir`` (the Trainer's final push skips ``_*``), so later saves, rotation and the card can change nothing
that is being uploaded; one background thread uploads (``HfApi.create_commit``, the real client) and never blocks a
step. A failed push is retried `PUSH_ATTEMPTS` times with backoff; if it stays failed it is logged in one line and
training goes on, and :meth:`CheckpointPusher.finish` reports the failures once, at the end. A push waiting while a
newer checkpoint arrives is superseded by it (``hub_always_push`` keeps every one). No secret enters a pushed file:
``training_args.bin`` holds the settings with their secrets masked (:meth:`fdistill.lm.config.DistillArguments.masked`).

Resume. :func:`download_checkpoint` fetches ``last-checkpoint/`` (else the newest ``checkpoint-N/``) of the repo at
one commit with ``huggingface_hub.snapshot_download`` into a hidden folder of ``output_dir``, checks every file
against the pushed manifest, and only then renames it to ``output_dir/checkpoint-N``: a download cut off or
corrupted is never read. The trainer then checks the run record as for any resume (another teacher, tokenizer or
objective is refused, named).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import shutil
import threading
import time
from dataclasses import dataclass, field

from fdistill.errors import InputError
from fdistill.storage import MANIFEST, atomic_write, check_manifest, manifest_problem, read_json

logger = logging.getLogger(__name__)

STAGING = "_hub_push"  # in output_dir: the snapshots of checkpoints being pushed
DOWNLOADING = ".hub-download"  # in output_dir: a checkpoint being downloaded (hidden, never a checkpoint-N)
LAST_CHECKPOINT = "last-checkpoint"  # hub_strategy="checkpoint": the Hub folder of the newest checkpoint
PUSH_ATTEMPTS = 3  # tries of one push before it is reported failed
PUSH_BACKOFF_S = 2.0  # seconds before the second try; doubled for each later one
# Checkpoint files that are training state, not the model: pushed in the checkpoint folder only, never at the root.
TRAINING_STATE = re.compile(
    r"(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|trainer_state\.json|training_args\.bin|"
    r"fdistill_run\.json|fdistill_manifest\.json|global_step.*|latest|zero_to_fp32\.py|.*/.*)"
)


@dataclass
class _Push:
    step: int
    folder: str  # the staging snapshot: root/ (model files, card) and checkpoint/ (the whole checkpoint)
    dest: str | None  # where the checkpoint goes in the repo (None: every_save, the model only)
    message: str


@dataclass
class PushReport:
    """What the pushes of a run did: the steps pushed and the failures (step, reason)."""

    pushed: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    superseded: list[int] = field(default_factory=list)


class CheckpointPusher:
    """Uploads committed checkpoints to ``repo_id`` from one background thread (see the module docstring).

    Arguments:
        repo_id: the Hub repo (created already, by the Trainer's ``init_hf_repo``).
        output_dir: the run's folder (the staging folder goes in it).
        strategy: ``hub_strategy``'s value: "every_save", "checkpoint" or "all_checkpoints".
        token: the Hub token (``hub_token``; None: huggingface_hub's own).
        revision: the branch to push to (``hub_revision``; None: main).
        keep_every: ``hub_always_push``: push every checkpoint, none superseded.
    """

    def __init__(self, repo_id, output_dir, strategy, token=None, revision=None, keep_every=False):
        self.repo_id, self.strategy, self.token, self.revision = repo_id, strategy, token, revision
        self.keep_every = keep_every
        self.staging = os.path.join(output_dir, STAGING)
        shutil.rmtree(self.staging, ignore_errors=True)  # snapshots an earlier (killed) run left
        self.report = PushReport()
        self._queue: queue.Queue[_Push | None] = queue.Queue()
        self._pending: list[_Push] = []
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._reported = False
        self._thread = threading.Thread(target=self._work, name="fdistill-hub-push", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the training side (never blocks)

    def submit(self, checkpoint: str, step: int, card: str) -> None:
        """Snapshot the committed ``checkpoint`` and the model card text ``card``, and queue their push."""
        folder = os.path.join(self.staging, f"step-{step}")
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(os.path.join(folder, "root"))
        for rel in _files(checkpoint):
            _link(os.path.join(checkpoint, rel), os.path.join(folder, "checkpoint", rel))
            if not TRAINING_STATE.fullmatch(rel):
                _link(os.path.join(checkpoint, rel), os.path.join(folder, "root", rel))
        atomic_write(os.path.join(folder, "root", "README.md"), card)
        dest = {"checkpoint": LAST_CHECKPOINT, "all_checkpoints": os.path.basename(checkpoint)}.get(self.strategy)
        message = f"Training in progress, step {step}" + (", checkpoint" if dest else "")
        with self._lock:
            if not self.keep_every:  # a newer checkpoint supersedes one still waiting
                for old in self._pending:
                    self.report.superseded.append(old.step)
                    shutil.rmtree(old.folder, ignore_errors=True)
                self._pending.clear()
            self._pending.append(_Push(step, folder, dest, message))
            self._idle.clear()
        self._queue.put(None)

    def finish(self) -> PushReport:
        """Wait for the queued pushes (each gives up after its retries), then report failures once in the log."""
        self._idle.wait()
        with contextlib.suppress(OSError):  # every snapshot is gone once pushed or given up: leave no empty folder
            os.rmdir(self.staging)
        if self.report.failed and not self._reported:
            self._reported = True
            steps = ", ".join(str(s) for s, _ in self.report.failed)
            newest = f"step {self.report.pushed[-1]}" if self.report.pushed else "none"
            logger.warning(
                "%d checkpoint push(es) to the Hub repo %s failed (step %s; last error: %s). Training was not "
                "affected; the newest checkpoint on the Hub is %s. Its checkpoints are in %s: upload one by hand "
                "with `hf upload %s <output_dir>/checkpoint-N %s`.",
                len(self.report.failed),
                self.repo_id,
                steps,
                self.report.failed[-1][1],
                newest,
                os.path.dirname(self.staging),
                self.repo_id,
                LAST_CHECKPOINT if self.strategy == "checkpoint" else "checkpoint-N",
            )
        return self.report

    # ------------------------------------------------------------------ the upload thread

    def _work(self) -> None:
        while True:
            self._queue.get()
            with self._lock:
                job = self._pending.pop(0) if self._pending else None
            if job is not None:
                self._push(job)
            with self._lock:
                if not self._pending:
                    self._idle.set()

    def _push(self, job: _Push) -> None:
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            try:
                self._commit(job)
            except Exception as error:  # any failure of the network, the Hub or the client: retried, then reported
                reason = _reason(error)
                if attempt < PUSH_ATTEMPTS:
                    logger.info("Hub push of step %d failed (%s); retrying.", job.step, reason)
                    time.sleep(PUSH_BACKOFF_S * 2 ** (attempt - 1))
                    continue
                self.report.failed.append((job.step, reason))
                logger.warning(
                    "Hub push of step %d to %s failed after %d tries (%s); training goes on.",
                    job.step,
                    self.repo_id,
                    PUSH_ATTEMPTS,
                    reason,
                )
            else:
                self.report.pushed.append(job.step)
            break
        shutil.rmtree(job.folder, ignore_errors=True)

    def _commit(self, job: _Push) -> None:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

        api = HfApi(token=self.token)
        # first a cheap call that fails fast: the repo's files now (stale ones of the checkpoint folder are deleted)
        remote = {s.rfilename for s in api.model_info(self.repo_id, revision=self.revision).siblings or []}
        ops, added = [], set()
        parts = [("root", "")] + ([("checkpoint", job.dest + "/")] if job.dest else [])
        for part, prefix in parts:
            base = os.path.join(job.folder, part)
            for rel in _files(base):
                added.add(prefix + rel)
                ops.append(CommitOperationAdd(path_in_repo=prefix + rel, path_or_fileobj=os.path.join(base, rel)))
        if job.dest:
            stale = sorted(p for p in remote if p.startswith(job.dest + "/") and p not in added)
            ops += [CommitOperationDelete(path_in_repo=p) for p in stale]
        api.create_commit(self.repo_id, ops, commit_message=job.message, revision=self.revision)


def _files(folder: str) -> list[str]:
    """Every file under ``folder``, relative, sorted (temporary files of atomic writes left out)."""
    out = []
    for root, _, names in os.walk(folder):
        for name in names:
            if not (name.startswith(".") and ".tmp" in name):
                out.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return sorted(out)


def _link(src: str, dst: str) -> None:
    """``dst`` as a hard link to ``src`` (a copy where the file system has none): later writes never touch it."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _reason(error: BaseException) -> str:
    """The first line of an error and of its cause (huggingface_hub wraps HTTP errors), shortened."""
    texts = [f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"]
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause):
        texts.append(str(cause).splitlines()[0])
    return " — ".join(texts)[:300]


# ---------------------------------------------------------------------- resume from the Hub


def download_checkpoint(repo_id: str, output_dir: str, token: str | None = None, revision: str | None = None) -> str:
    """Download the Hub checkpoint of ``repo_id`` into ``output_dir/checkpoint-N`` and return that folder.

    ``last-checkpoint/`` is taken (``hub_strategy="checkpoint"``), else the newest ``checkpoint-N/``
    (``"all_checkpoints"``); every file is checked against its pushed manifest before the folder is renamed into
    place. A ``checkpoint-N`` already in ``output_dir`` with the same manifest is used as it is. Each problem — the
    Hub unreachable, no such repo, no checkpoint in it, one without a manifest or whose files do not match it, a
    different local ``checkpoint-N`` — is one `InputError` naming it and the fix.
    """
    from huggingface_hub import snapshot_download

    repo_id, sha, prefix = find_checkpoint(repo_id, token, revision)
    where = f"--resume-from-checkpoint hub: the Hub repo {repo_id!r}"
    os.makedirs(output_dir, exist_ok=True)
    tmp = os.path.join(output_dir, f"{DOWNLOADING}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            snapshot_download(
                repo_id, revision=sha, allow_patterns=[f"{prefix}/*"], local_dir=tmp, token=token
            )  # at one commit: never files of two pushes
        except Exception as error:  # any failure of the network, the Hub or the client
            raise InputError(
                f"{where}: downloading {prefix}/ failed ({_reason(error)}); nothing was written to {output_dir}: "
                "check the network and run again."
            ) from None
        got = os.path.join(tmp, prefix)
        problem = manifest_problem(got)
        if problem is not None:
            raise InputError(f"{where}: the downloaded {prefix}/ is not as pushed ({problem}): run again.")
        step = read_json(os.path.join(got, "trainer_state.json"), "push the checkpoint again.").get("global_step")
        if not isinstance(step, int):
            raise InputError(f"{where}: {prefix}/trainer_state.json has no global_step: push the checkpoint again.")
        folder = os.path.join(output_dir, f"checkpoint-{step}")
        if os.path.isdir(folder):
            if _same_manifest(folder, got):
                logger.info("%s is already the Hub's %s/; resuming from it.", folder, prefix)
                return folder
            raise InputError(
                f"{where}: {folder} is already there and differs from the Hub's {prefix}/ (step {step}): resume from "
                "it (--resume-from-checkpoint latest), or move it away to take the Hub's."
            )
        os.rename(got, folder)
        logger.info("downloaded %s/ of %s (step %d) into %s.", prefix, repo_id, step, folder)
        return folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_checkpoint(repo_id: str, token: str | None = None, revision: str | None = None) -> tuple[str, str, str]:
    """The repo (a bare name in the token's account, as the Trainer creates it), the commit and the folder of the
    checkpoint to resume from in ``repo_id``: ``last-checkpoint``, else the newest ``checkpoint-N``; an `InputError`
    naming the problem when there is none, or none fdistill can verify."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    where = f"--resume-from-checkpoint hub: the Hub repo {repo_id!r}"
    api = HfApi(token=token)
    try:
        if "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        info = api.model_info(repo_id, revision=revision)
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise InputError(
            f"{where} was not found ({_reason(error)}): set hub_model_id to the repo the run pushed to (and "
            "hub_token if it is private)."
        ) from None
    except Exception as error:  # any failure of the network, the Hub or the client
        raise InputError(f"{where} cannot be read ({_reason(error)}): check the network and HF_ENDPOINT.") from None
    files = [s.rfilename for s in info.siblings or []]
    prefix = _hub_checkpoint(files)
    if prefix is None:
        raise InputError(
            f"{where} holds no checkpoint (no {LAST_CHECKPOINT}/ or checkpoint-N/ folder): only hub_strategy="
            "'checkpoint' or 'all_checkpoints' pushes them; resume from a local checkpoint, or train afresh."
        )
    if f"{prefix}/{MANIFEST}" not in files:
        raise InputError(
            f"{where}: {prefix}/ has no {MANIFEST}, so its files cannot be verified (pushed by something other than "
            "fdistill, or cut off): download it yourself and give its folder to --resume-from-checkpoint."
        )
    return repo_id, info.sha, prefix


def _hub_checkpoint(files: list[str]) -> str | None:
    """The checkpoint folder to resume from among a repo's ``files``: last-checkpoint, else the newest checkpoint-N."""
    if any(f.startswith(LAST_CHECKPOINT + "/") for f in files):
        return LAST_CHECKPOINT
    steps = {int(m[1]) for f in files if (m := re.match(r"checkpoint-(\d+)/", f))}
    return f"checkpoint-{max(steps)}" if steps else None


def _same_manifest(a: str, b: str) -> bool:
    with contextlib.suppress(OSError, InputError):
        check_manifest(a, "")
        return read_json(os.path.join(a, MANIFEST), "")["files"] == read_json(os.path.join(b, MANIFEST), "")["files"]
    return False
