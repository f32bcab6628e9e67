"""Crash-safe output folders: atomic writes, manifests of sha256 digests verified before use, one owner per folder.

Three pieces, used by ``fdistill train`` (checkpoints) and ``fdistill sample`` (sample batches and datasets):

- `atomic_write(path, data)`: the bytes go to a temporary name in the same folder, are flushed to disk (fsync) and
  renamed over ``path`` (`os.replace`), so a reader sees the old file or the new one, never half of one.
- `write_manifest(folder, files)` / `check_manifest(folder)`: a manifest lists the size and sha256 of files written
  into a folder and is committed last, atomically; its presence marks the files complete. Before anything is read,
  `check_manifest` recomputes the digests and names the first file that is missing, cut short or changed — a crash,
  a full disk or an edit after the fact is never read as data.
- `owned_folder(folder, command, state=...)`: an `fcntl.flock` lock file (``.fdistill.lock``, naming host, PID and
  command) held for the run, so a second run on the folder stops with one line naming the holder. The kernel drops
  the lock when its process dies; a lock file left by a dead process is taken over with a warning. Under
  ``accelerate`` only the main process locks, and every process gets the same outcome.

Why a marker and not a renamed folder for checkpoints: the Trainer writes a checkpoint's files from several
processes (FSDP shards, per-process RNG states) into ``checkpoint-N``; renaming a staging folder needs all of them
done and the folder on one file system (transformers tried and reverted it for multi-node runs), while a manifest
written by the main process after a barrier works wherever the checkpoint is readable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from fdistill.errors import InputError, see

logger = logging.getLogger(__name__)

MANIFEST = "fdistill_manifest.json"  # a folder's manifest; a single file's is f"{name}.manifest.json"
LOCK_FILE = ".fdistill.lock"


# ----------------------------------------------------------------------------- atomic writes


class WriteError(OSError):
    """An output file could not be written (a full disk, a file-size limit, ...); the message names what and how to
    continue. Nothing half-written is ever read back, so continuing is safe."""


@contextlib.contextmanager
def writing(what: str, then: str) -> Iterator[None]:
    """Turn a failure while writing ``what`` into one `WriteError` that ends with ``then`` (how to go on).

    Writers report a full disk or a file-size limit in their own ways — `OSError` from Python, `RuntimeError` from
    torch.save, ``SafetensorError`` from safetensors, a bare `Exception` from the tokenizers backend — so every
    `Exception` raised inside the block counts, its type and text kept in the message (and chained).
    """
    try:
        yield
    except WriteError:
        raise
    except Exception as error:
        cause = str(error) if isinstance(error, OSError) else f"{type(error).__name__}: {error}"
        failure = WriteError(f"could not write {what} ({cause}); {then}")
        failure.errno = getattr(error, "errno", None)
        raise failure from error


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same folder, fsync it and rename it into place.

    Example:
        >>> import tempfile; folder = tempfile.mkdtemp()
        >>> atomic_write(os.path.join(folder, "a.json"), '{"x": 1}'); sorted(os.listdir(folder))
        ['a.json']
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not every file system lets a folder be opened: then skip)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    """The sha256 of a file's bytes, read now (never remembered: a verification must see the file as it is)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- manifests


def folder_files(folder: str | os.PathLike) -> list[str]:
    """Every regular file under ``folder`` (relative, sorted), except manifests, the lock and temporary files."""
    folder = Path(folder)
    names = []
    for path in folder.rglob("*"):
        name = path.name
        if not path.is_file() or name == LOCK_FILE or name.endswith(".manifest.json") or name == MANIFEST:
            continue
        if name.startswith(".") and ".tmp" in name:
            continue
        names.append(path.relative_to(folder).as_posix())
    return sorted(names)


def write_manifest(folder: str | os.PathLike, files: Iterable[str] | None = None, name: str = MANIFEST) -> dict:
    """Commit ``files`` (paths relative to ``folder``; default: `folder_files`) with their sizes and sha256 digests
    as the manifest ``name``, written last and atomically. Returns the manifest."""
    from fdistill._version import __version__

    folder = Path(folder)
    files = folder_files(folder) if files is None else sorted(files)
    manifest = {
        "fdistill_version": __version__,
        "files": {f: {"bytes": (folder / f).stat().st_size, "sha256": sha256(folder / f)} for f in files},
    }
    atomic_write(folder / name, json.dumps(manifest, indent=1))
    return manifest


def has_manifest(folder: str | os.PathLike, name: str = MANIFEST) -> bool:
    return (Path(folder) / name).is_file()


def manifest_problem(folder: str | os.PathLike, name: str = MANIFEST) -> str | None:
    """What is wrong with the files ``folder``'s manifest lists — the first one missing, cut short or changed — in
    words naming the file; None when every file is as written. A folder without a manifest is the caller's case."""
    folder = Path(folder)
    try:
        listed = json.loads((folder / name).read_text())["files"]
        entries = listed.values() if isinstance(listed, dict) else [None]
        if not all(isinstance(e, dict) and isinstance(e.get("bytes"), int) and "sha256" in e for e in entries):
            raise TypeError("its files are not a mapping of {bytes, sha256} records")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{folder / name} cannot be read ({error})"
    for rel, want in listed.items():
        path = folder / rel
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size < want["bytes"]:
            return f"{path} is cut short ({size} of {want['bytes']} bytes)"
        if size != want["bytes"] or sha256(path) != want["sha256"]:
            return f"{path} changed after it was written (its sha256 is not the recorded one)"
    return None


def read_json(path: str | os.PathLike, fix: str) -> dict:
    """A JSON object from ``path``, or one `InputError` naming the file and ``fix``."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as error:
        raise InputError(f"{path} cannot be read as JSON ({error}): {fix}") from None
    if not isinstance(value, dict):
        raise InputError(f"{path} holds a {type(value).__name__}, not a JSON object: {fix}")
    return value


def check_manifest(folder: str | os.PathLike, fix: str, name: str = MANIFEST) -> None:
    """Raise one `InputError` naming the first file of ``folder``'s manifest that is missing, cut short or changed,
    followed by ``fix`` (what to delete or rerun)."""
    problem = manifest_problem(folder, name)
    if problem is not None:
        raise InputError(f"{problem}: {fix}")


# ----------------------------------------------------------------------------- one owner per folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _holder(text: str) -> dict:
    try:
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else {}
    except ValueError:
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (the lock file names no holder)"
    return (
        f"{holder.get('command', 'an fdistill run')} (PID {holder.get('pid')} on host {holder.get('host')}, "
        f"since {holder.get('since')})"
    )


class FolderLock:
    """An exclusive ``fcntl.flock`` on ``folder/.fdistill.lock``, which names its holder (host, PID, command, time).

    Re-entrant within a process (the command and the trainer it runs may both take it). `acquire` raises one
    `InputError` naming the holder when another process holds it; a lock file left by a process that is gone (the
    kernel has released its flock) is taken over with a warning. `release` deletes the lock file, and the folder
    too when the lock created it and nothing else was written.
    """

    _held: dict[str, list] = {}  # realpath -> [fd, depth, created_folder]: this process's locks

    def __init__(self, folder: str | os.PathLike, command: str):
        self.folder, self.command = Path(folder), command

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def acquire(self) -> None:
        key = os.path.realpath(self.folder)
        if key in self._held:
            self._held[key][1] += 1
            return
        created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
                os.close(fd)
                raise InputError(
                    f"output folder {str(self.folder)!r} is in use by {_describe(holder)}: wait for that run to end "
                    f"or choose another output folder (if no such process runs, delete {self.path})."
                    + see("guides/troubleshooting", "locks")
                ) from None
            # the file may have been deleted by a releasing holder after we opened it: lock the file at the path
            try:
                now, mine = os.stat(self.path), os.fstat(fd)
                same = (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        left = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
        if left:
            gone = left.get("host") == socket.gethostname() and isinstance(left.get("pid"), int)
            state = "no longer running" if gone and not _alive(left["pid"]) else "no longer holding it"
            logger.warning("took over the lock of %s in %s: that process is %s.", _describe(left), self.folder, state)
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": self.command,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._held[key] = [fd, 1, created]

    def release(self) -> None:
        key = os.path.realpath(self.folder)
        entry = self._held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1]:
            return
        del self._held[key]
        fd, _, created = entry
        with contextlib.suppress(OSError):
            self.path.unlink()  # still holding the flock: a waiting opener sees a deleted file and retries
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty: nothing but the lock was written


def run_on_main(state, work):
    """``work()`` on the main process of ``state`` (an accelerate state or ``Accelerator``; None: this process
    alone), its result — or its error — shared with every process, so none waits for a main process that failed.
    The main process raises its own error; the others an `InputError` with the same text (or a `RuntimeError`)."""
    main = state is None or state.is_main_process
    if state is None or state.num_processes == 1:
        return work()
    from accelerate.utils import broadcast_object_list

    outcome, failure = None, None
    if main:
        try:
            outcome = (work(), None)
        except Exception as error:
            failure = error
            outcome = (None, (isinstance(error, InputError), str(error)))
    shared = [outcome]
    broadcast_object_list(shared)
    result, error = shared[0]
    if failure is not None:
        raise failure
    if error is not None:
        is_input, text = error
        raise InputError(text) if is_input else RuntimeError(f"the main process failed: {text}")
    return result


@contextlib.contextmanager
def owned_folder(folder: str | os.PathLike, command: str, *, state=None, claim=None) -> Iterator:
    """Hold ``folder``'s lock for the block (under ``accelerate``: the main process holds it).

    ``claim()``, if given, runs on the main process once the lock is held — the place to check that the folder may
    be written by this run — and its result is yielded on every process; its `InputError` (or the lock's, naming the
    holder) is raised on every process, and the lock is released.
    """
    lock = FolderLock(folder, command)

    def take():
        lock.acquire()
        try:
            return claim() if claim is not None else None
        except BaseException:
            lock.release()
            raise

    result = run_on_main(state, take)
    try:
        yield result
    finally:
        if state is None or state.is_main_process:
            lock.release()
