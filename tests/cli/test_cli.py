"""The `fdistill` command: sampling (one and two processes), training from a recipe, clear errors."""

import argparse
import contextlib
import os
import shutil
import subprocess

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


def test_research_commands_are_imported_only_when_chosen_and_name_their_extra(monkeypatch, capsys):
    """`fdistill sample` imports no research module; a research command whose package is missing names the extra."""
    import sys

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
