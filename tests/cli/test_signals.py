"""Ctrl-C (SIGINT) during `fdistill sample` and `fdistill train`, sent to a real process of the command: one line
saying where it stopped and how to resume, exit status 130, no traceback, and a rerun that resumes and completes
with what an uninterrupted run gives (issue 22, item 6). A SIGINT during a checkpoint write leaves that checkpoint
without its manifest: the line names the newest whole one, which `latest` resumes (fdistill.storage)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import transformers
import yaml
from datasets import load_from_disk
from transformers.trainer_utils import SaveStrategy

from fdistill import testing as tiny
from fdistill.cli import _train_interrupted, main
from fdistill.lm.checkpoints import checkpoint_folders, verify_checkpoint
from fdistill.storage import MANIFEST, has_manifest

transformers.logging.set_verbosity_error()
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))


def _interrupt_when(cmd: list[str], ready, timeout: float = 120) -> subprocess.CompletedProcess:
    """Start ``python -m fdistill.cli *cmd``, send SIGINT as soon as ``ready()`` holds, and wait for it to end.

    The child starts with SIGINT's default action, as a command typed at a terminal does: a test run in the
    background of a non-interactive shell (``nohup ... &``) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler, so the signal would be lost (seen when .ci/run itself ran in the background)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fdistill.cli", *cmd],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[1][-3000:]  # it must still be running
        assert time.monotonic() < deadline, "no progress to interrupt"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, process.returncode, out, err)


def _one_line(done: subprocess.CompletedProcess, command: str) -> str:
    assert done.returncode == 130, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"fdistill {command}: interrupted"), done.stderr[-3000:]
    return last


def test_sigint_during_sample_keeps_the_committed_batches_and_a_rerun_completes_them(teacher_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    tiny.dataset(60, seed=3).to_json(str(prompts))
    args = ["sample", "--teacher", str(teacher_dir), "--data", str(prompts), "--max-new-tokens", "16"]
    args += ["--batch-size", "1", "--no-progress", "--output"]
    work = tmp_path / "cut" / ".fdistill_work"
    committed = "batch_*.jsonl.manifest.json"  # a batch counts once its manifest is written (fdistill.storage)
    done = _interrupt_when(args + [str(tmp_path / "cut")], lambda: len(list(work.glob(committed))) >= 3)
    line = _one_line(done, "sample")
    kept = len(list(work.glob(committed)))
    assert 3 <= kept < 60 and f"interrupted after {kept} batches were committed" in line, line
    assert "resume with the same command" in line and f"--output {tmp_path / 'cut'}" in line
    main(args + [str(tmp_path / "cut")])  # the rerun resumes...
    main(args + [str(tmp_path / "whole")])  # ...and gives what an uninterrupted run gives
    cut, whole = load_from_disk(str(tmp_path / "cut")), load_from_disk(str(tmp_path / "whole"))
    assert len(cut) == 60 and cut["teacher_sample_ids"] == whole["teacher_sample_ids"]


def test_sigint_during_train_names_the_last_whole_checkpoint_and_resuming_completes(teacher_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    tiny.dataset(16, seed=4).to_json(str(data))
    recipe = tmp_path / "recipe.yaml"
    run = tmp_path / "run"
    settings = {
        "teacher": str(teacher_dir),
        "train_data": str(data),
        "student_layers": [0],
        "objective": "rkl",
        "max_new_tokens": 8,
        "per_device_train_batch_size": 4,
        "output_dir": str(run),
        "max_steps": 20,
        "save_strategy": "steps",
        "save_steps": 3,
        "use_cpu": True,
        "report_to": [],
        "disable_tqdm": True,
    }
    recipe.write_text(yaml.safe_dump(settings))
    done = _interrupt_when(["train", str(recipe)], lambda: (run / "checkpoint-3" / MANIFEST).exists())
    line = _one_line(done, "train")
    # The one line names the newest whole checkpoint (its manifest committed), which verifies; a checkpoint that
    # SIGINT cut off while it was being written has no manifest and is never named or resumed from.
    whole = [f for f in checkpoint_folders(str(run)) if has_manifest(f)]
    assert whole and not whole[-1].endswith("checkpoint-20"), whole
    verify_checkpoint(whole[-1])
    assert f"the last whole checkpoint is {whole[-1]}:" in line, line
    assert line.endswith(f"resume with fdistill train {recipe} --resume-from-checkpoint latest"), line
    main(["train", str(recipe), "--resume-from-checkpoint", "latest"])
    state = transformers.TrainerState.load_from_json(str(run / "checkpoint-20" / "trainer_state.json"))
    assert state.global_step == 20 and (run / "model.safetensors").exists()


def test_interrupted_before_the_first_whole_checkpoint_says_how_to_start_again(tmp_path):
    """A checkpoint cut off while saving blocks a fresh run into its output_dir: the line gives the command that
    starts again (overwrite_output_dir=true), not one that would be refused."""
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)  # cut off: no manifest
    args = SimpleNamespace(recipe="r.yaml", overrides=["objective=kl"])
    config = SimpleNamespace(output_dir=str(tmp_path / "run"), save_strategy=SaveStrategy.STEPS, save_steps=3)
    trainer = SimpleNamespace(state=SimpleNamespace(global_step=3))
    line = _train_interrupted(args, config, trainer)
    assert "before the first whole checkpoint (checkpoint-3 cut off while saving" in line, line
    assert line.endswith("start again with fdistill train r.yaml objective=kl overwrite_output_dir=true"), line
