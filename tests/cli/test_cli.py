"""The `fdistill` command: sampling (one and two processes), training from a recipe, clear errors."""

import argparse
import contextlib
import os
import shutil
import subprocess
import sys

import pytest
import transformers
import yaml
from datasets import load_from_disk
from two_processes import assert_same_step, port_flags, write_recipes

from fdistill import testing as tiny
from fdistill.cli import main

transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    tiny.dataset(10, seed=8).to_json(str(path))
    return path


def _launch_two(launcher) -> list[str]:
    """`accelerate launch` of `python -m fdistill.cli` in 2 CPU processes (the gloo backend)."""
    flags = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    return [launcher, "launch", *flags, *port_flags(), "--dynamo_backend", "no", "-m", "fdistill.cli"]


def sample_args(teacher_dir, prompts_file, out):
    return [
        "sample",
        "--teacher",
        str(teacher_dir),
        "--data",
        str(prompts_file),
        "--output",
        str(out),
        "--num-samples",
        "2",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "3",
        "--no-progress",
    ]


def test_sample_then_train_from_a_recipe(teacher_dir, prompts_file, tmp_path):
    main(sample_args(teacher_dir, prompts_file, tmp_path / "samples"))
    samples = load_from_disk(str(tmp_path / "samples"))
    assert len(samples) == 20 and "teacher_sample_ids" in samples.column_names
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "teacher": str(teacher_dir),
                "train_data": str(tmp_path / "samples"),
                "student_layers": [0],
                "objective": "tvd",
                "output_dir": str(tmp_path / "run"),
                "max_steps": 2,
                "per_device_train_batch_size": 4,
                "max_new_tokens": 6,
                "use_cpu": True,
                "report_to": [],
                "save_strategy": "no",
                "disable_tqdm": True,
            }
        )
    )
    main(["train", str(recipe), "max_steps=3", "learning_rate=0.001"])
    assert (tmp_path / "run" / "model.safetensors").exists() and (tmp_path / "run" / "README.md").exists()
    student = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert student.config.num_hidden_layers == 1 and student.config.fdistill_teacher_layers == {"decoder": [0]}


def test_bad_input_is_one_clear_line(teacher_dir, prompts_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(sample_args(teacher_dir, prompts_file, tmp_path / "o") + ["--decoding", "nucleus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: invalid sampling settings: decoding='nucleus'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "teacher": str(teacher_dir),
                "train_data": str(prompts_file),
                "objective": "jsd",
                "output_dir": str(tmp_path / "run"),
            }
        )
    )
    with pytest.raises(SystemExit):
        main(["train", str(recipe)])
    assert "objective='jsd'" in capsys.readouterr().err


def test_two_processes_give_the_same_dataset_as_one(teacher_dir, prompts_file, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` runs two CPU processes under torchrun when no GPU is
    present (accelerate's `--cpu` with several processes needs an MPI hostfile and otherwise starts one)."""
    main(sample_args(teacher_dir, prompts_file, tmp_path / "one"))
    launcher = shutil.which("accelerate")
    assert launcher, "accelerate's launcher is installed with the package"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = _launch_two(launcher) + sample_args(teacher_dir, prompts_file, tmp_path / "two")
    cmd.remove("--no-progress")  # each process shows its own progress bar: proof that two really ran
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "teacher samples [0]" in done.stderr and "teacher samples [1]" in done.stderr
    one, two = load_from_disk(str(tmp_path / "one")), load_from_disk(str(tmp_path / "two"))
    assert one["teacher_sample_ids"] == two["teacher_sample_ids"] and one["prompt"] == two["prompt"]


@pytest.mark.parametrize("fused", [False, True], ids=["logits", "fused"])
def test_two_process_training_equals_one_process(teacher_dir, tmp_path, fused):
    """DDP on 2 CPU processes × batch 4 takes the same optimizer step as 1 process × batch 8 (global counts); with
    the fused divergence too (the CUDA default), whose LM head runs outside the model's forward: the trainer turns
    DDP's unused-parameter search off, which would mark the head unused and fail the backward."""
    data = tmp_path / "data.jsonl"
    teacher = transformers.AutoModelForCausalLM.from_pretrained(teacher_dir)
    tiny.dataset(8, seed=9, teacher=teacher, tok=tiny.tokenizer()).to_json(str(data))
    recipes = write_recipes(tmp_path, teacher_dir, data)
    if fused:
        for recipe in recipes.values():
            recipe.write_text(yaml.safe_dump({**yaml.safe_load(recipe.read_text()), "fused_divergence": True}))
    main(["train", str(recipes["one"])])
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = _launch_two(shutil.which("accelerate")) + ["train", str(recipes["two"])]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_step(tmp_path, teacher)


@pytest.mark.parametrize("fails", [False, True])
def test_a_command_ends_the_process_group_it_started(monkeypatch, fails):
    """A process that exits with its gloo group alive can abort at shutdown (SIGABRT, "terminate called without an
    active exception", seen in CI under `accelerate launch`): the command ends its group, on success and on error."""
    import torch.distributed as dist

    from fdistill.cli import entry

    def command(args):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        assert dist.is_initialized()
        if fails:
            raise ValueError("bad input")

    with pytest.raises(SystemExit) if fails else contextlib.nullcontext():
        entry._run(command, argparse.Namespace(command="train"))
    assert not dist.is_initialized()


# One process of a 2-process gloo group running a command through `fdistill.cli.entry._run`; argv: store rank mode.
# ok: rank 1's command ends 1 s after rank 0's, and rank 0 writes whether rank 1 had finished when its own _run
# returned. error: rank 0's command fails at once; rank 1's fails once it sees rank 0 out of _run (or after 30 s).
_GROUP_MEMBER = """
import argparse, os, sys, time
import torch.distributed as dist
from fdistill.cli import entry

store, rank, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
folder = os.path.dirname(store)

def command(args):
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
    if mode == "ok" and rank == 1:
        time.sleep(1.0)
        open(os.path.join(folder, "rank1-finished"), "w").close()
    if mode == "error" and rank == 1:
        for _ in range(300):  # until rank 0 is out of _run (up to 30 s)
            if os.path.exists(os.path.join(folder, "rank0-out")):
                open(os.path.join(folder, "rank1-saw-rank0-out"), "w").close()
                break
            time.sleep(0.1)
    if mode == "error":
        raise ValueError(f"rank {rank} failed")

try:
    entry._run(command, argparse.Namespace(command="train"))
finally:
    if rank == 0:
        seen = os.path.exists(os.path.join(folder, "rank1-finished"))
        with open(os.path.join(folder, "rank0-out"), "w") as f:
            f.write(str(seen))
"""


@pytest.mark.parametrize("mode", ["ok", "error"])
def test_a_finished_command_waits_for_every_process_and_a_failed_one_for_none(tmp_path, mode):
    """A finished command meets the other processes at a barrier before it ends the group, so no collective is
    still held by a gloo worker when Python shuts down (the rare SIGABRT at exit under `accelerate launch`, reproduced
    about 1 time in 20 before the barrier); a failed command ends its group at once and never waits for processes
    that may not come."""
    script = tmp_path / "member.py"
    script.write_text(_GROUP_MEMBER)
    store = tmp_path / "store"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    members = [
        subprocess.Popen(
            [sys.executable, str(script), str(store), str(rank), mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        ended = [m.communicate(timeout=120) for m in members]
    finally:  # a process waiting at a barrier for one that left would otherwise outlive the test
        for m in members:
            m.kill()
    codes = [m.returncode for m in members]
    assert codes == ([0, 0] if mode == "ok" else [2, 2]), (codes, ended)
    if mode == "error":  # each process's one line, from the CLI's error rule
        assert all(f"fdistill train: error: rank {rank} failed" in ended[rank][1] for rank in (0, 1)), ended
    if mode == "ok":  # rank 0 left _run only after rank 1's command had finished: the barrier
        assert (tmp_path / "rank0-out").read_text() == "True"
    else:  # rank 0 left _run while rank 1's command still ran: no barrier on the error path
        assert (tmp_path / "rank1-saw-rank0-out").exists()


def test_research_commands_are_imported_only_when_chosen_and_name_their_extra(monkeypatch, capsys):
    """`fdistill sample` imports no research module; a research command whose package is missing names the extra."""
    for name in [m for m in sys.modules if m.startswith("fdistill.diffusion")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if `pip install fdistill` without [diffusion]
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert not any(m.startswith("fdistill.diffusion") for m in sys.modules)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["diffusion", "experiment", "recipes/diffusion/toy2d.yaml"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "needs the package 'diffusers', which is not installed: pip install 'fdistill[diffusion]'" in err
