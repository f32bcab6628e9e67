"""Checkpoint pushes while training (hub_strategy) and resuming from the Hub, through the real huggingface_hub client
over HTTP against the Hub stand-in (tests/hub_standin.py), on tiny in-process models."""

import hashlib
import json
import logging

import hub_standin
import pytest
import torch
import transformers
from transformers import TrainerCallback

import fdistill.lm.hub_checkpoints as hub_checkpoints
from fdistill import FDistillTrainer
from fdistill import testing as tiny
from fdistill.errors import InputError

transformers.logging.set_verbosity_error()
REPO = "me/tiny-run"
SECRET = "hf_SECRETtoken0123456789"  # the run's hub_token: sent as a header, never in a pushed file
STATE = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "fdistill_run.json")


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setattr(hub_checkpoints, "PUSH_BACKOFF_S", 0.01)
    with hub_standin.serve(monkeypatch, tmp_path) as server:
        yield server


def make_trainer(tok, tmp_path, name, *, teacher_seed=0, callbacks=(), **kw):
    teacher = tiny.llama(2, seed=teacher_seed, init=0.15)
    data = tiny.dataset(16, seed=0, teacher=tiny.llama(2, seed=0, init=0.15), tok=tok)
    settings = {
        "objective": "js",
        "max_new_tokens": 6,
        "lr_scheduler_type": "linear",
        "max_steps": 4,
        "save_strategy": "steps",
        "save_steps": 2,
        "logging_steps": 1,
        "hub_model_id": REPO,
        "hub_token": SECRET,
        **kw,
    }
    args = tiny.config(tmp_path / name, **settings)
    return FDistillTrainer(
        model=tiny.llama(1, seed=1),
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        processing_class=tok,
        callbacks=list(callbacks),
    )


class StopAt(TrainerCallback):
    """Stops training after ``step`` (its checkpoint saved): a preempted run."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            control.should_save, control.should_training_stop = True, True


class StepsRun(TrainerCallback):
    """The steps a run trained (a resumed run: those after its checkpoint)."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(state.global_step)


def losses(trainer):
    return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}


def pushed_bytes(hub):
    """Every byte of every file of every commit, every LFS object, every request body the stand-in received."""
    for repo in hub.repos.values():
        for _, _, files in repo.commits:
            yield from (data for data, _ in files.values())
    yield from hub.lfs.values()
    yield from hub.received


def test_checkpoint_strategy_pushes_last_checkpoint_with_fdistill_state_then_the_final_model(tok, tmp_path, hub):
    trainer = make_trainer(tok, tmp_path, "run", push_to_hub=True, hub_strategy="checkpoint", hub_always_push=True)
    trainer.train()
    trainer.push_to_hub()

    repo = hub.repo(REPO)
    assert repo.messages == [
        "Training in progress, step 2, checkpoint",
        "Training in progress, step 4, checkpoint",
        "End of training",
    ]
    for step, (_, _, files) in zip((2, 4), repo.commits[1:3]):
        ckpt = {p[len("last-checkpoint/") :]: d for p, (d, _) in files.items() if p.startswith("last-checkpoint/")}
        assert set(STATE) | {"model.safetensors", "fdistill_manifest.json"} <= set(ckpt), sorted(ckpt)
        assert files["last-checkpoint/model.safetensors"][1] and files["model.safetensors"][1]  # weights by LFS
        assert json.loads(ckpt["trainer_state.json"])["global_step"] == step
        manifest = json.loads(ckpt["fdistill_manifest.json"])["files"]
        assert set(manifest) == set(ckpt) - {"fdistill_manifest.json"}
        for name, entry in manifest.items():  # what was pushed is what was written: the digests match
            assert hashlib.sha256(ckpt[name]).hexdigest() == entry["sha256"], name
        record = json.loads(ckpt["fdistill_run.json"])
        assert record["teacher"] and record["tokenizer"] and record["settings"]["objective"] == "js"
        assert files["model.safetensors"][0] == ckpt["model.safetensors"]  # the root holds this step's model
        assert not [p for p in files if not p.startswith("last-checkpoint/") and p.endswith(STATE)]
        card = files["README.md"][0].decode()
        assert f"Training in progress: step {step} of 4." in card and "`loss` (train, step" in card
        assert "fdistill" in card and "Jensen–Shannon" in card
    final = repo.files["README.md"][0].decode()
    assert "## Final metrics" in final and "Training in progress" not in final
    assert trainer.hub_push_report.pushed == [2, 4] and not trainer.hub_push_report.failed
    assert not any(SECRET.encode() in data for data in pushed_bytes(hub))
    assert not (tmp_path / "run" / "_hub_push").exists()  # the staging snapshots are gone once pushed


@pytest.mark.parametrize("strategy", ["every_save", "all_checkpoints", "end"])
def test_other_strategies(tok, tmp_path, hub, strategy):
    trainer = make_trainer(tok, tmp_path, "run", push_to_hub=True, hub_strategy=strategy, hub_always_push=True)
    trainer.train()
    files = hub.repo(REPO).files
    folders = sorted({p.split("/")[0] for p in files if "/" in p})
    if strategy == "end":
        assert hub.repo(REPO).messages == []  # the final push_to_hub only
        return
    assert hub.repo(REPO).messages == ["Training in progress, step 2", "Training in progress, step 4"] or (
        strategy == "all_checkpoints"
    )
    assert "model.safetensors" in files and "Training in progress: step 4 of 4." in files["README.md"][0].decode()
    if strategy == "every_save":
        assert folders == []  # the model only: nothing to resume from
        with pytest.raises(InputError, match="holds no checkpoint"):
            make_trainer(tok, tmp_path, "other").train(resume_from_checkpoint="hub")
    else:
        assert folders == ["checkpoint-2", "checkpoint-4"]
        for step in (2, 4):
            assert {f"checkpoint-{step}/{name}" for name in STATE} <= set(files)


def test_resume_from_the_hub_ends_bit_identical_and_refuses_another_run(tok, tmp_path, hub):
    whole = make_trainer(tok, tmp_path, "whole")
    whole.train()

    preempted = make_trainer(
        tok, tmp_path, "preempted", callbacks=[StopAt(2)], push_to_hub=True, hub_strategy="checkpoint"
    )
    preempted.train()
    assert preempted.state.global_step == 2 and preempted.hub_push_report.pushed == [2]

    for changed, fragment in [
        ({"objective": "kl"}, "objective='js' then, 'kl' now"),
        ({"teacher_seed": 5}, "another teacher"),
    ]:
        other = make_trainer(tok, tmp_path, f"refused-{len(fragment)}", **changed)
        with pytest.raises(InputError, match=fragment):
            other.train(resume_from_checkpoint="hub")

    # a download that fails half-way, or brings bytes other than those pushed, leaves nothing to resume from
    repo = hub.repo(REPO)
    good = repo.files["last-checkpoint/optimizer.pt"]
    for fault, fragment in [("fail", "downloading last-checkpoint/ failed"), ("corrupt", "is not as pushed")]:
        if fault == "fail":
            hub.fail_path = {"/resolve/": 403}
        else:
            repo.files["last-checkpoint/optimizer.pt"] = (good[0][:-1] + bytes([good[0][-1] ^ 1]), True)
        with pytest.raises(InputError, match=fragment):
            make_trainer(tok, tmp_path, "elsewhere").train(resume_from_checkpoint="hub")
        assert [p.name for p in (tmp_path / "elsewhere").iterdir()] == [], fault
    repo.files["last-checkpoint/optimizer.pt"] = good

    ran = StepsRun()
    resumed = make_trainer(tok, tmp_path, "elsewhere", callbacks=[ran], hub_model_id="tiny-run")  # the account's repo
    resumed.train(resume_from_checkpoint="hub")  # another output folder: another machine
    assert ran.steps == [3, 4]  # it went on from the Hub's step 2
    assert (tmp_path / "elsewhere" / "checkpoint-2" / "fdistill_manifest.json").is_file()
    assert not [p.name for p in (tmp_path / "elsewhere").iterdir() if p.name.startswith(".hub-download")]
    assert {s: v for s, v in losses(resumed).items() if s > 2} == {s: v for s, v in losses(whole).items() if s > 2}
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name  # the same code path on the same numbers: bit-identical


@pytest.mark.parametrize("outage", ["transient", "lasting"])
def test_failing_push_never_stops_training_and_is_reported_once(tok, tmp_path, hub, caplog, outage):
    class Outage(TrainerCallback):
        """After step 3 (step 2's push done): a 500 for the next request; a lasting outage then takes the Hub away."""

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                trainer._pusher.finish()
                hub.fail_next = [500]
                hub.stop_when_faults_spent = outage == "lasting"

    trainer = make_trainer(
        tok, tmp_path, "run", callbacks=[Outage()], push_to_hub=True, hub_strategy="checkpoint", hub_always_push=True
    )
    with caplog.at_level(logging.INFO):
        trainer.train()
        trainer._finish_current_push()  # as push_to_hub would: still reported once
    assert trainer.state.global_step == 4 and len(losses(trainer)) == 4  # training went on
    report = trainer.hub_push_report
    summaries = [r for r in caplog.records if "checkpoint push(es) to the Hub repo" in r.getMessage()]
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]
    if outage == "transient":
        assert report.pushed == [2, 4] and not report.failed and not summaries
        assert hub.repo(REPO).messages[-1] == "Training in progress, step 4, checkpoint"
        return
    assert hub.stopped and report.pushed == [2] and [s for s, _ in report.failed] == [4]
    assert len(summaries) == 1 and summaries[0].levelno == logging.WARNING
    assert (
        "step 4" in summaries[0].getMessage() and "newest checkpoint on the Hub is step 2" in summaries[0].getMessage()
    )
    assert hub.repo(REPO).messages == ["Training in progress, step 2, checkpoint"]


def test_cli_resumes_from_the_hub(teacher_dir, tmp_path, hub, capsys):
    """`fdistill train recipe.yaml --resume-from-checkpoint hub` in another output folder; a repo without a
    checkpoint is one line before any model is loaded."""
    import yaml

    from fdistill.cli import main

    prompts = tmp_path / "prompts.jsonl"
    tiny.dataset(8, seed=0).to_json(str(prompts))
    recipe = tmp_path / "recipe.yaml"
    settings = {
        "teacher": str(teacher_dir),
        "train_data": str(prompts),
        "student_layers": [0],
        "objective": "rkl",
        "max_new_tokens": 6,
        "per_device_train_batch_size": 4,
        "output_dir": str(tmp_path / "first"),
        "push_to_hub": True,
        "hub_model_id": "me/cli-run",
        "hub_strategy": "checkpoint",
        "save_strategy": "steps",
        "save_steps": 2,
        "max_steps": 2,
        "use_cpu": True,
        "report_to": [],
        "disable_tqdm": True,
    }
    recipe.write_text(yaml.safe_dump(settings))
    main(["train", str(recipe)])
    # the Trainer's save_model pushes too ("Model save"), then the CLI's push_to_hub with fdistill's final card
    assert hub.repo("me/cli-run").messages == [
        "Training in progress, step 2, checkpoint",
        "Model save",
        "End of training",
    ]

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "train",
                str(recipe),
                f"output_dir={tmp_path / 'x'}",
                "hub_model_id=me/none",
                "--resume-from-checkpoint",
                "hub",
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "'me/none' was not found" in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()

    second = tmp_path / "second"
    main(["train", str(recipe), f"output_dir={second}", "max_steps=4", "--resume-from-checkpoint", "hub"])
    assert json.loads((second / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert json.loads((second / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    assert "downloaded last-checkpoint/ of me/cli-run (step 2)" in capsys.readouterr().err  # went on from step 2
    assert hub.repo("me/cli-run").messages[-3:] == [
        "Training in progress, step 4, checkpoint",
        "Model save",
        "End of training",
    ]


@pytest.mark.slow
def test_two_processes_push_once_and_resume_from_the_hub_bit_identical(teacher_dir, tmp_path, hub):
    """`accelerate launch` on 2 CPU processes (DDP, gloo): only the main process pushes, the checkpoint holds both
    processes' RNG states, and a 2-process resume from the Hub in another folder ends as the uninterrupted run."""
    import os
    import shutil
    import subprocess

    import yaml
    from safetensors.torch import load_file
    from two_processes import port_flags

    data = tmp_path / "data.jsonl"
    teacher = transformers.AutoModelForCausalLM.from_pretrained(teacher_dir)
    tiny.dataset(16, seed=9, teacher=teacher, tok=tiny.tokenizer()).to_json(str(data))
    base = {
        "teacher": str(teacher_dir),
        "train_data": str(data),
        "student_layers": [0],
        "objective": "js",
        "max_new_tokens": 6,
        "per_device_train_batch_size": 2,
        "lr_scheduler_type": "constant",
        "save_strategy": "steps",
        "save_steps": 2,
        "max_steps": 4,
        "use_cpu": True,
        "report_to": [],
        "disable_tqdm": True,
        "seed": 0,
        "hub_model_id": "me/ddp-run",
    }
    launch = [shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", *port_flags(), "--dynamo_backend", "no", "-m", "fdistill.cli", "train"]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # HF_ENDPOINT, HF_TOKEN, HF_HUB_DISABLE_XET: set by the stand-in

    def run(name, *extra, **settings):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(yaml.safe_dump({**base, "output_dir": str(tmp_path / name), **settings}))
        done = subprocess.run([*launch, str(recipe), *extra], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr

    run("preempted", max_steps=2, push_to_hub=True, hub_strategy="checkpoint")
    repo = hub.repo("me/ddp-run")
    assert repo.messages == ["Training in progress, step 2, checkpoint", "Model save", "End of training"]
    assert {"last-checkpoint/rng_state_0.pth", "last-checkpoint/rng_state_1.pth"} <= set(repo.files)
    assert "downloaded last-checkpoint/ of me/ddp-run (step 2)" in run("resumed", "--resume-from-checkpoint", "hub")
    run("whole")
    resumed, whole = (load_file(tmp_path / n / "model.safetensors") for n in ("resumed", "whole"))
    assert resumed.keys() == whole.keys()
    for name in whole:
        assert torch.equal(resumed[name], whole[name]), name
