"""Crash safety of `fdistill train` and `fdistill sample` (fdistill.storage): a failure injected at every write,
one owner per output folder, and files damaged after they were written.

Fault injection: `WriteFaults` counts every file written under a folder — through Python's ``open`` (JSON, JSONL,
datasets' Arrow files, our atomic writes), ``torch.save``, safetensors and the tokenizers backend — and makes the
k-th one fail as a full disk does: half its bytes reach the file, then the writer raises. A clean run gives the
number of write points N (and the test checks that every file the run leaves was counted); then for every k ≤ N
the command fails at write k with one line, and a rerun — as the line says — finishes with exactly the clean run's
rows and weights (the same code path: bit-equal).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import gc
import io
import json
import multiprocessing as mp
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from datasets import load_from_disk
from safetensors import SafetensorError
from safetensors.torch import load_file

from fdistill import testing as tiny
from fdistill.cli import main
from fdistill.errors import InputError
from fdistill.lm.loading import load_data
from fdistill.lm.sampling import OfflineSamplingSettings, sample_offline
from fdistill.storage import LOCK_FILE, MANIFEST, atomic_write, check_manifest, write_manifest

transformers.logging.set_verbosity_error()


# ----------------------------------------------------------------------------- the fault injector


class WriteFaults:
    """Counts files written under ``root``; with ``fail_at=k`` the k-th write leaves half its bytes and raises what
    that writer raises on a full disk (OSError EFBIG, torch's RuntimeError, SafetensorError)."""

    def __init__(self, root, fail_at: int | None = None):
        self.root, self.fail_at = os.path.realpath(root), fail_at
        self.written: list[str] = []  # in order; a failure at write k fails self.written[k - 1]
        self.covered: set[str] = set()  # the files written, followed through renames

    def _count(self, path) -> bool:
        """Count a write to ``path``; True when it is the one to fail."""
        if not isinstance(path, (str, os.PathLike)):
            return False
        path = _real(path)
        if not path.startswith(self.root + os.sep):
            return False
        self.written.append(path)
        self.covered.add(path)
        return len(self.written) == self.fail_at

    @staticmethod
    def _cut(path) -> None:
        os.truncate(path, os.path.getsize(path) // 2)

    @contextlib.contextmanager
    def active(self):
        import safetensors.torch
        import transformers.modeling_utils
        from transformers.tokenization_utils_tokenizers import TokenizersBackend

        real_open, real_save, real_st = builtins.open, torch.save, safetensors.torch.save_file
        real_tok, real_replace, real_rename = TokenizersBackend._save_pretrained, os.replace, os.rename
        faults = self

        class Failing(io.IOBase):  # the k-th file opened for writing: written whole, cut in half at close
            def __init__(self, f, path):
                self.f, self.path = f, path

            def __getattr__(self, name):
                return getattr(self.f, name)

            def write(self, data):
                return self.f.write(data)

            def close(self):
                if not self.f.closed:
                    self.f.close()
                    faults._cut(self.path)
                    raise OSError(errno.EFBIG, "File too large", str(self.path))

        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if isinstance(file, int) or not any(c in mode for c in "wax+"):
                return f
            return Failing(f, file) if faults._count(file) else f

        def fake_save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            if faults._count(f):
                faults._cut(f)
                raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

        def fake_st(tensors, filename, *args, **kwargs):
            real_st(tensors, filename, *args, **kwargs)
            if faults._count(filename):
                faults._cut(filename)
                raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

        def fake_tok(self, save_directory, file_names, *args, **kwargs):
            names = real_tok(self, save_directory, file_names, *args, **kwargs)
            if faults._count(names[-1]):
                faults._cut(names[-1])
                raise Exception("File too large (os error 27)")
            return names

        def follow(real):
            def move(src, dst, *args, **kwargs):
                real(src, dst, *args, **kwargs)
                if isinstance(src, (str, os.PathLike)) and _real(src) in faults.covered:
                    faults.covered.add(_real(dst))

            return move

        patches = [
            (os, "replace", follow(real_replace)),
            (os, "rename", follow(real_rename)),
            (builtins, "open", fake_open),
            (io, "open", fake_open),
            (torch, "save", fake_save),
            (safetensors.torch, "save_file", fake_st),
            (transformers.modeling_utils, "safe_save_file", fake_st),
            (TokenizersBackend, "_save_pretrained", fake_tok),
        ]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        for owner, name, value in patches:
            setattr(owner, name, value)
        try:
            yield self
        finally:
            for owner, name, value in saved:
                setattr(owner, name, value)


def _real(path) -> str:
    """``path`` with its folder's links resolved (the file itself may be gone, e.g. renamed)."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _files(root) -> set[str]:
    return {os.path.realpath(p) for p in Path(root).rglob("*") if p.is_file()}


@contextlib.contextmanager
def _frozen_gc():
    """Runs of many trainings and samplings: every train() ends in gc.collect() (accelerate's free_memory) and
    datasets collect too; freezing the test session's objects keeps each collection from walking them (4× faster)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("fdistill ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory, tok):
    path = tmp_path_factory.mktemp("samples") / "s"
    settings = OfflineSamplingSettings(max_new_tokens=6, batch_size=4)
    teacher = tiny.llama(2, seed=0, init=0.15)
    sample_offline(teacher, tok, tiny.dataset(8, seed=2), str(path), settings, teacher_id="t", show_progress=False)
    return path


def _recipe(folder: Path, teacher_dir, samples_dir, **overrides) -> str:
    recipe = folder / "recipe.yaml"
    values = {
        "teacher": str(teacher_dir),
        "train_data": str(samples_dir),
        "student_layers": [0],
        "objective": "js",  # student samples too: the resumed RNG state matters
        "output_dir": str(folder / "run"),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "max_new_tokens": 3,
        "learning_rate": 0.01,
        "use_cpu": True,
        "report_to": [],
        "save_strategy": "steps",
        "save_steps": 1,
        "disable_tqdm": True,
        **overrides,
    }
    recipe.write_text(yaml.safe_dump(values))
    return str(recipe)


def _train(capsys, *argv) -> tuple[int, str]:
    try:
        main(["train", *argv])
    except SystemExit as stop:
        return stop.code, capsys.readouterr().err
    return 0, capsys.readouterr().err


def _weights(folder) -> dict:
    return load_file(os.path.join(folder, "model.safetensors"))


# ----------------------------------------------------------------------------- a failure at every write


def test_train_fails_at_every_write_with_one_line_and_resumes_to_the_same_weights(
    teacher_dir, samples_dir, tmp_path, capsys
):
    clean = tmp_path / "clean"
    clean.mkdir()
    recipe = _recipe(clean, teacher_dir, samples_dir)
    with WriteFaults(clean).active() as counted:
        assert _train(capsys, recipe)[0] == 0
    assert _files(clean / "run") <= counted.covered  # every file the run leaves went through a counted writer
    expected = _weights(clean / "run")
    n = len(counted.written)
    assert n >= 25, n  # two checkpoints of ~12 files, the final model and its card
    with _frozen_gc():
        _every_write(n, counted, expected, teacher_dir, samples_dir, tmp_path, capsys)


def _every_write(n, counted, expected, teacher_dir, samples_dir, tmp_path, capsys):
    for k in range(1, n + 1):
        folder = tmp_path / f"k{k}"
        folder.mkdir()
        recipe = _recipe(folder, teacher_dir, samples_dir)
        with WriteFaults(folder, fail_at=k).active():
            code, err = _train(capsys, recipe)
        assert code == 1, (k, counted.written[k - 1], err)
        line = _one_line(err)
        assert "could not write" in line and ("resume" in line or "rerun" in line), line
        code, err = _train(capsys, recipe, "--resume-from-checkpoint", "latest")
        if code == 2:  # no complete checkpoint yet: the line says how to start afresh
            assert "no complete checkpoint-N folder" in _one_line(err) or "no checkpoint-N" in err, err
            code, err = _train(capsys, recipe, "overwrite_output_dir=true")
        assert code == 0, (k, counted.written[k - 1], err)
        got = _weights(folder / "run")
        for name, tensor in expected.items():
            assert torch.equal(got[name], tensor), (k, counted.written[k - 1], name)
        assert (folder / "run" / "README.md").exists()


def _sample(data, out, *, fail_at=None, teacher_seed=0, seed=0):
    teacher = tiny.llama(2, seed=teacher_seed, init=0.15)
    settings = OfflineSamplingSettings(max_new_tokens=6, batch_size=2, num_samples=2, seed=seed)
    return sample_offline(teacher, tiny.tokenizer(), data, str(out), settings, teacher_id="t", show_progress=False)


def test_sample_fails_at_every_write_and_a_rerun_gives_the_same_rows(tmp_path):
    data = tiny.dataset(6, seed=3)
    with WriteFaults(tmp_path / "clean").active() as counted:
        expected = _sample(data, tmp_path / "clean").to_dict()
    n = len(counted.written)
    assert _files(tmp_path / "clean") <= counted.covered and n >= 10, n
    with _frozen_gc():
        _sample_every_write(data, n, counted, expected, tmp_path)


def _sample_every_write(data, n, counted, expected, tmp_path):
    for k in range(1, n + 1):
        out = tmp_path / f"k{k}"
        with pytest.raises(OSError, match="File too large"), WriteFaults(out, fail_at=k).active():
            _sample(data, out)
        assert not (out / LOCK_FILE).exists()  # released on the failure
        assert _sample(data, out).to_dict() == expected, (k, counted.written[k - 1])
        assert not (out / ".fdistill_work").exists()


def test_a_sample_write_failure_is_one_line_and_the_rerun_finishes(teacher_dir, tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    tiny.dataset(6, seed=3).to_json(str(data))
    argv = ["sample", "--teacher", str(teacher_dir), "--data", str(data), "--output", str(tmp_path / "o")]
    argv += ["--max-new-tokens", "4", "--batch-size", "2", "--no-progress"]
    with WriteFaults(tmp_path / "o", fail_at=3).active(), pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 1
    line = _one_line(capsys.readouterr().err)
    assert "could not write batch" in line and "rerun the same command" in line, line
    main(argv)
    assert len(load_from_disk(str(tmp_path / "o"))) == 6


# ----------------------------------------------------------------------------- checkpoints: complete, verified


def _trainer(tok, out, data, teacher, **kw):
    from fdistill import FDistillTrainer

    args = tiny.config(out, **{"objective": "kl", "max_steps": 2, "save_strategy": "steps", "save_steps": 1, **kw})
    student = tiny.llama(1, seed=1)
    trainer = FDistillTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok)
    return trainer, student


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tok):
    """A finished two-checkpoint run (checkpoint-1, checkpoint-2), kept pristine: tests damage copies."""
    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(8, seed=0, teacher=teacher, tok=tok)
    out = tmp_path_factory.mktemp("trained") / "run"
    trainer, student = _trainer(tok, out, data, teacher)
    trainer.train()
    return out, teacher, data, {k: v.clone() for k, v in student.state_dict().items()}


def _copy(trained, tmp_path) -> Path:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    return out


def test_latest_skips_a_checkpoint_cut_off_while_saving_and_says_so(trained, tok, tmp_path, caplog):
    out = _copy(trained, tmp_path)
    (out / "checkpoint-2" / MANIFEST).unlink(missing_ok=True)  # as a crash before the commit leaves it
    (out / "checkpoint-2" / "optimizer.pt").write_bytes(b"half")
    trainer, student = _trainer(tok, out, trained[2], trained[1])
    with caplog.at_level("WARNING", logger="fdistill"):
        trainer.train(resume_from_checkpoint=True)
    assert "skipped incomplete checkpoint(s) checkpoint-2" in caplog.text
    assert trainer.state.global_step == 2
    for name, value in trained[3].items():
        assert torch.equal(student.state_dict()[name], value), name  # redone from checkpoint-1: the same step


def _delete_a_tensor(path: Path) -> None:
    from safetensors.torch import save_file

    tensors = load_file(path)
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, path, metadata={"format": "pt"})


def _cut(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


DAMAGE = [
    ("model.safetensors", _delete_a_tensor, "(changed after it was written|is cut short)"),
    ("model.safetensors", _cut, "is cut short"),
    ("optimizer.pt", Path.unlink, "is missing"),
    ("optimizer.pt", _cut, "is cut short"),
    ("scheduler.pt", _cut, "is cut short"),
    ("rng_state.pth", _cut, "is cut short"),
    ("trainer_state.json", _cut, "is cut short"),
    ("fdistill_run.json", _cut, "is cut short"),
    ("config.json", lambda p: p.write_text(p.read_text().replace("32", "33")), "changed after it was written"),
    (MANIFEST, _cut, "cannot be read"),
]


@pytest.mark.parametrize("name, damage, problem", DAMAGE, ids=[f"{n}-{d.__name__}" for n, d, _ in DAMAGE])
def test_a_damaged_checkpoint_is_one_line_naming_the_file_and_never_resumed(
    trained, tok, tmp_path, name, damage, problem
):
    out = _copy(trained, tmp_path)
    damage(out / "checkpoint-2" / name)
    trainer, _ = _trainer(tok, out, trained[2], trained[1])
    with pytest.raises(InputError) as error:
        trainer.train(resume_from_checkpoint=True)
    message = str(error.value)
    assert "checkpoint-2" in message and re.search(problem, message), message
    assert f"delete {out / 'checkpoint-2'} and resume from {out / 'checkpoint-1'}" in message, message
    assert trainer.state.global_step == 0  # refused before any work


def test_an_older_checkpoint_without_manifest_resumes_with_a_warning(trained, tok, tmp_path, caplog):
    out = _copy(trained, tmp_path)
    for folder in ("checkpoint-1", "checkpoint-2"):
        (out / folder / MANIFEST).unlink(missing_ok=True)
    trainer, student = _trainer(tok, out, trained[2], trained[1], max_steps=3)
    with caplog.at_level("WARNING", logger="fdistill"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert "has no fdistill_manifest.json" in caplog.text and trainer.state.global_step == 3


def test_resuming_a_finished_run_logs_no_train_loss_of_zero(trained, tok, tmp_path):
    from fdistill.lm.hub import save_model_card

    out = _copy(trained, tmp_path)
    trainer, _ = _trainer(tok, out, trained[2], trained[1])
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 2
    assert not any("train_loss" in entry for entry in trainer.state.log_history), trainer.state.log_history
    save_model_card(trainer)
    assert "train_loss" not in (out / "README.md").read_text()


# ----------------------------------------------------------------------------- one owner per folder


def test_a_fresh_run_into_another_runs_output_dir_is_refused(trained, tok, tmp_path):
    out = _copy(trained, tmp_path)
    trainer, _ = _trainer(tok, out, trained[2], trained[1])
    with pytest.raises(InputError, match=r"already holds another run \(checkpoint-1, checkpoint-2"):
        trainer.train()
    assert trainer.state.global_step == 0
    # overwrite_output_dir replaces it: the old checkpoints go, so `latest` can never point into them
    (out / "checkpoint-9").mkdir()
    atomic_write(out / "checkpoint-9" / "trainer_state.json", "{}")
    write_manifest(out / "checkpoint-9")
    trainer, _ = _trainer(tok, out, trained[2], trained[1], overwrite_output_dir=True)
    trainer.train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_two_train_runs_on_one_output_dir_the_second_is_refused(trained, tok, tmp_path, teacher_dir, samples_dir):
    """Found: two `fdistill train` runs on one output_dir both exited 0 and the second replaced the first."""
    folder = tmp_path / "x"
    folder.mkdir()
    recipe = _recipe(folder, teacher_dir, samples_dir, save_strategy="no")
    main(["train", recipe])
    before = _weights(folder / "run")
    with pytest.raises(SystemExit) as stop:
        main(["train", recipe, "learning_rate=0.5"])
    assert stop.value.code == 2
    for name, tensor in before.items():
        assert torch.equal(_weights(folder / "run")[name], tensor)


def test_the_refusal_is_one_line_and_exit_status_2(trained, teacher_dir, samples_dir, tmp_path, capsys):
    folder = tmp_path / "x"
    folder.mkdir()
    recipe = _recipe(folder, teacher_dir, samples_dir)
    _copy(trained, folder)
    code, err = _train(capsys, recipe)
    assert code == 2
    assert "already holds another run" in _one_line(err) and "overwrite_output_dir=true" in err


# Another process holding the folder: what FolderLock writes and holds (fcntl.flock), without importing fdistill.
_HOLDER = """
import fcntl, json, os, socket, sys
os.makedirs(sys.argv[1], exist_ok=True)
fd = os.open(os.path.join(sys.argv[1], ".fdistill.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "command": "fdistill sample",
                         "since": "now"}).encode())
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_held_folder_refuses_a_second_run_naming_the_holder(tok, tmp_path):
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"ready\n"
        with pytest.raises(InputError) as error:
            _sample(tiny.dataset(4, seed=1), out)
        message = str(error.value)
        assert f"is in use by fdistill sample (PID {holder.pid} on host {socket.gethostname()}" in message, message
        teacher = tiny.llama(2, seed=0, init=0.15)
        trainer, _ = _trainer(tok, out, tiny.dataset(4, seed=1, teacher=teacher, tok=tok), teacher)
        with pytest.raises(InputError, match=f"is in use by fdistill sample \\(PID {holder.pid}"):
            trainer.train()
        assert trainer.state.global_step == 0
    finally:
        holder.communicate(timeout=60)
    # the holder is gone (the kernel released its lock): its lock file is taken over
    assert len(_sample(tiny.dataset(4, seed=1), out)) == 8


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = mp.get_context("spawn").Process(target=int)
    dead.start()
    dead.join()
    (tmp_path / "o").mkdir()
    stale = {"host": socket.gethostname(), "pid": dead.pid, "command": "fdistill train", "since": "then"}
    (tmp_path / "o" / LOCK_FILE).write_text(json.dumps(stale))
    with caplog.at_level("WARNING", logger="fdistill"):
        assert len(_sample(tiny.dataset(4, seed=1), tmp_path / "o")) == 8
    assert f"took over the lock of fdistill train (PID {dead.pid}" in caplog.text and "no longer running" in caplog.text
    assert not (tmp_path / "o" / LOCK_FILE).exists()


def _sample_in_child(out, teacher_seed, seed, barrier):
    """One `sample_offline` run, slowed to 0.2 s per batch so that two runs overlap; exit status 3 when refused."""
    import time

    teacher = tiny.llama(2, seed=teacher_seed, init=0.15)
    generate = teacher.generate
    teacher.generate = lambda *a, **kw: (time.sleep(0.2), generate(*a, **kw))[1]
    settings = OfflineSamplingSettings(max_new_tokens=6, batch_size=2, num_samples=2, seed=seed)
    barrier.wait(60)
    try:
        sample_offline(teacher, tiny.tokenizer(), tiny.dataset(6, seed=3), out, settings, teacher_id="t")
    except InputError:
        sys.exit(3)


def test_two_synchronised_sample_runs_never_mix_under_one_record(tmp_path):
    """Found: two `fdistill sample` runs with different teachers or seeds on one folder mixed both (5 of 5)."""
    ctx = mp.get_context("fork")  # the children start at once with what is imported here
    barrier = ctx.Barrier(2)
    out = str(tmp_path / "o")
    runs = [ctx.Process(target=_sample_in_child, args=(out, t, s, barrier)) for t, s in ((0, 0), (3, 7))]
    for run in runs:
        run.start()
    for run in runs:
        run.join(120)
    assert sorted(run.exitcode for run in runs) == [0, 3]  # one finished, the other was refused
    seed = json.loads((tmp_path / "o" / "fdistill_provenance.json").read_text())["settings"]["seed"]
    alone = _sample(tiny.dataset(6, seed=3), tmp_path / "alone", teacher_seed=0 if seed == 0 else 3, seed=seed)
    assert load_from_disk(out)["teacher_sample_ids"] == alone["teacher_sample_ids"]  # that run's rows, all of them


# ----------------------------------------------------------------------------- sample files: committed, verified


def test_a_batch_file_with_a_duplicated_or_missing_row_is_drawn_again(tmp_path, monkeypatch):
    """Found: a batch file with a duplicated or missing row failed every rerun ("sample rows do not match")."""
    data = tiny.dataset(6, seed=3)
    expected = _sample(data, tmp_path / "clean").to_dict()
    for edit in (lambda lines: lines + lines[:1], lambda lines: lines[1:]):
        out = tmp_path / f"o{id(edit)}"
        import fdistill.lm.offline as sampling

        with monkeypatch.context() as m:  # stop before the merge: the batches stay in the work folder
            m.setattr(sampling, "_merge", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
            with pytest.raises(KeyboardInterrupt):
                _sample(data, out)
        batch = out / ".fdistill_work" / "batch_000001.jsonl"
        batch.write_text("".join(line + "\n" for line in edit(batch.read_text().splitlines())))
        assert _sample(data, out).to_dict() == expected


@pytest.mark.parametrize("target", ["data-00000-of-00001.arrow", "state.json", "fdistill_provenance.json"])
def test_a_changed_samples_folder_is_one_line_before_training_or_rerun(tmp_path, target):
    data = tiny.dataset(6, seed=3)
    _sample(data, tmp_path / "o")
    _cut(tmp_path / "o" / target)
    for read in (lambda: load_data(str(tmp_path / "o")), lambda: _sample(data, tmp_path / "o")):
        with pytest.raises(InputError, match=rf"{target} is cut short .*: delete .*o' and rerun"):
            read()


def test_a_samples_folder_of_an_older_fdistill_is_used_with_a_warning(tmp_path, caplog):
    data = tiny.dataset(6, seed=3)
    first = _sample(data, tmp_path / "o").to_dict()
    (tmp_path / "o" / MANIFEST).unlink()  # as fdistill wrote it before manifests
    with caplog.at_level("WARNING", logger="fdistill"):
        assert _sample(data, tmp_path / "o").to_dict() == first
    assert "has no fdistill_manifest.json (written by an older fdistill)" in caplog.text


def test_latest_with_only_incomplete_checkpoints_is_one_line(trained, teacher_dir, samples_dir, tmp_path, capsys):
    folder = tmp_path / "x"
    folder.mkdir()
    recipe = _recipe(folder, teacher_dir, samples_dir)
    run = _copy(trained, folder)
    for step in (1, 2):
        (run / f"checkpoint-{step}" / MANIFEST).unlink()
    code, err = _train(capsys, recipe, "--resume-from-checkpoint", "latest")
    assert code == 2
    line = _one_line(err)
    assert "only incomplete ones (checkpoint-1, checkpoint-2)" in line and "overwrite_output_dir=true" in line, line


def test_manifest_names_missing_cut_and_changed_files(tmp_path):
    for name, text in (("a.json", "{}"), ("b.bin", "0123456789")):
        atomic_write(tmp_path / name, text)
    write_manifest(tmp_path)
    check_manifest(tmp_path, "fix")
    (tmp_path / "b.bin").write_text("0123456789x")
    with pytest.raises(InputError, match=r"b.bin changed after it was written .*: fix"):
        check_manifest(tmp_path, "fix")
    (tmp_path / "b.bin").write_text("0123")
    with pytest.raises(InputError, match=r"b.bin is cut short \(4 of 10 bytes\): fix"):
        check_manifest(tmp_path, "fix")
    (tmp_path / "a.json").unlink()
    with pytest.raises(InputError, match=r"a.json is missing: fix"):
        check_manifest(tmp_path, "fix")


@pytest.mark.slow
def test_two_processes_commit_every_processs_files_and_resume_the_newest_complete_checkpoint(
    teacher_dir, samples_dir, tmp_path
):
    """Under `accelerate launch` (2 CPU processes): each checkpoint's manifest, written by the main process after a
    barrier, lists both processes' RNG states; the lock is the main process's and gone at the end; a resume from
    `latest` skips a checkpoint cut off while saving, on both processes."""
    import shutil

    from two_processes import port_flags

    recipe = _recipe(tmp_path, teacher_dir, samples_dir, objective="kl", dataloader_drop_last=True)
    flags = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", *port_flags()]
    launch = [shutil.which("accelerate"), "launch", *flags, "--dynamo_backend", "no", "-m", "fdistill.cli", "train"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([*launch, recipe], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    for step in (1, 2):
        listed = json.loads((run / f"checkpoint-{step}" / MANIFEST).read_text())["files"]
        assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "model.safetensors"} <= set(listed)
        check_manifest(run / f"checkpoint-{step}", "fix")
    assert not (run / LOCK_FILE).exists()
    expected = _weights(run)
    (run / "checkpoint-2" / MANIFEST).unlink()  # as a crash before the commit leaves it
    done = subprocess.run(
        [*launch, recipe, "--resume-from-checkpoint", "latest"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped incomplete checkpoint(s) checkpoint-2" in done.stderr
    for name, tensor in expected.items():
        torch.testing.assert_close(_weights(run)[name], tensor, rtol=0, atol=0, msg=name)
