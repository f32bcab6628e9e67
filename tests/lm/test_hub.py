"""Model card and Hub upload on tiny in-process models, against a local stand-in for the Hub API (no network)."""

import hashlib
import http.server
import json
import os
import re
import socket
import threading

import hub_standin
import pytest
import torch
import transformers
import yaml
from huggingface_hub import ModelCard, snapshot_download

import fdistill.lm.hub
from fdistill import FDistillTrainer
from fdistill import testing as tiny
from fdistill.lm.hub import save_model_card
from fdistill.lm.student import create_student_from_teacher, wrap_with_lora

transformers.logging.set_verbosity_error()
TEACHER = "org/tiny-teacher"


def config(tmp_path, **kw):
    return tiny.config(tmp_path / "out", **{"max_new_tokens": 8, "lr_scheduler_type": "constant", "max_steps": 2, **kw})


def make_teacher(arch):
    teacher = getattr(tiny, arch)(2, seed=0, init=0.15)
    teacher.config._name_or_path = TEACHER  # as if loaded from the Hub (model.name_or_path stays "")
    return teacher


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ["llama", "bart"])
def test_card_after_js_distillation(tok, tmp_path, arch):
    teacher = make_teacher(arch)
    data = tiny.dataset(8, seed=0, teacher=teacher, tok=tok)
    student = getattr(tiny, arch)(1, seed=1)
    args = config(tmp_path, objective="js", js_mixture="exact")
    trainer = FDistillTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        eval_dataset=data.select(range(4)),
        processing_class=tok,
    )
    trainer.train()
    trainer.evaluate()
    trainer.create_model_card(license="apache-2.0", tags=["my-tag"])

    path = os.path.join(args.output_dir, "README.md")
    card = ModelCard.load(path)
    assert card.data.base_model == TEACHER
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert {"fdistill", "distillation", "knowledge-distillation", "js", "my-tag"} <= set(card.data.tags)
    assert not card.data.get("datasets")  # an in-memory dataset has no Hub name
    body = card.text
    assert "Jensen–Shannon" in body and "`js_mixture` | exact" in body and "`js_beta` | 0.5" in body
    assert "`student_sampling_temperature`" in body  # JS samples the student online
    last = [e for e in trainer.state.log_history if "loss" in e][-1]
    assert f"| `loss` (train, step 2) | {last['loss']:.4g} |" in body
    for key in (
        "loss_on_teacher_samples",
        "loss_on_student_samples",
        "student_entropy",
        "teacher_nll_of_student_samples",
        "eval_loss",
    ):
        assert f"`{key}`" in body, key
    assert f"{n_params(student):,}" in body and f"{n_params(teacher):,}" in body
    assert "| train | local | 8 |" in body and "| eval | local | 4 |" in body
    auto = "AutoModelForSeq2SeqLM" if arch == "bart" else "AutoModelForCausalLM"
    assert f"{auto}.from_pretrained(" in body
    assert "2305.15718" in body and "@inproceedings" in body
    # the text returned is what was written
    assert save_model_card(trainer, license="apache-2.0", tags=["my-tag"]) == read(path)


def test_card_without_teacher_logs_or_eval(tok, tmp_path):
    """MLE keeps no teacher; a card made before training still says what it can."""
    teacher = make_teacher("llama")
    student = create_student_from_teacher(teacher, num_layers=1)  # config (and name) copied from the teacher
    data = tiny.dataset(8, seed=0)
    trainer = FDistillTrainer(
        model=student,
        teacher_model=teacher,
        args=config(tmp_path, objective="mle"),
        train_dataset=data,
        processing_class=tok,
    )
    assert trainer.teacher is None

    text = save_model_card(trainer, dataset="org/tiny-data")
    card = ModelCard.load(os.path.join(trainer.args.output_dir, "README.md"))
    assert card.data.base_model == TEACHER and card.data.datasets == ["org/tiny-data"]
    assert "mle" in card.data.tags
    assert "No metrics logged yet." in text and "teacher / student" not in text
    assert "`loss_temperature`" not in text and "`student_top_p`" not in text  # MLE uses neither
    assert "copying teacher layers (decoder: [0])" in text

    trainer.train()
    trainer.create_model_card()
    text = read(os.path.join(trainer.args.output_dir, "README.md"))
    assert "maximum likelihood" in text and f"{n_params(student):,}" in text
    last = [e for e in trainer.state.log_history if "loss" in e][-1]
    assert f"{last['loss']:.4g}" in text and "`eval_" not in text


def test_push_to_hub_uploads_student_and_card(tok, tmp_path, monkeypatch):
    """The final push through the real huggingface_hub client, over HTTP to the Hub stand-in (tests/hub_standin.py)."""
    teacher = make_teacher("llama")
    data = tiny.dataset(8, seed=0, teacher=teacher, tok=tok)
    student = tiny.llama(1, seed=1)
    args = config(tmp_path, objective="js", hub_model_id="me/tiny-student", push_to_hub=False)
    with hub_standin.serve(monkeypatch, tmp_path) as hub:
        trainer = FDistillTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok
        )
        trainer.train()
        assert hub.repos == {} and not [r for r in hub.requests if r[0] != "GET"]  # push_to_hub=False: no upload
        os.makedirs(os.path.join(args.output_dir, "checkpoint-1"))
        open(os.path.join(args.output_dir, "checkpoint-1", "junk.bin"), "w").close()

        trainer.push_to_hub()

        writes = [r for r in hub.requests if r[0] in ("POST", "PUT")]
        assert writes[0] == ("POST", "/api/repos/create") and writes[-1] == (
            "POST",
            "/api/models/me/tiny-student/commit/main",
        )
        assert (
            "PUT",
            f"/_lfs/{hashlib.sha256(hub.read('me/tiny-student', 'model.safetensors')).hexdigest()}",
        ) in writes
        repo = hub.repo("me/tiny-student")
        assert repo.messages == ["End of training"] and repo.files["model.safetensors"][1]  # weights went by LFS
        uploaded = set(repo.files)
        assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= uploaded
        assert not [p for p in uploaded if p.startswith("checkpoint-")]  # the Trainer's ignore_patterns were honoured
        local = tmp_path / "downloaded"
        snapshot_download("me/tiny-student", local_dir=local)  # read back through the client
    card = ModelCard.load(local / "README.md")
    assert card.data.base_model == TEACHER and "fdistill" in card.data.tags
    assert card.data.model_name == "tiny-student" and 'from_pretrained("me/tiny-student")' in card.text
    assert "## Final metrics" in card.text

    reloaded = type(student).from_pretrained(local).eval()
    student.eval()
    ids = tok(["the cat sat on the mat"], return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, student(ids).logits, rtol=0, atol=0)


def test_card_of_lora_student(tok, tmp_path):
    teacher = make_teacher("llama")
    data = tiny.dataset(8, seed=0, teacher=teacher, tok=tok)
    student = wrap_with_lora(create_student_from_teacher(teacher, num_layers=1))
    args = config(tmp_path, objective="rkl", max_steps=1, student_do_sample=False)
    trainer = FDistillTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    text = save_model_card(trainer)
    card = ModelCard.load(os.path.join(args.output_dir, "README.md"))
    assert card.data.library_name == "peft" and "rkl" in card.data.tags
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    assert f"| student, trainable | {trainable:,} " in text
    assert "AutoPeftModelForCausalLM.from_pretrained(" in text and "merge_lora" in text
    assert "`student_num_beams` | 1" in text and "`student_top_p`" not in text  # greedy student samples


# ----------------------------------------------------------------------------- pre-flight check of uploads


class _Hub(http.server.BaseHTTPRequestHandler):
    """A stand-in Hub on 127.0.0.1: ``answer`` is (status, body) for /api/whoami-v2; the request headers are kept."""

    answer = (200, b"{}")
    seen: list = []

    def do_GET(self):
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        status, body = type(self).answer
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_hub(monkeypatch, tmp_path):
    """Point huggingface_hub at a local server (never the network) with a fake token; offline mode off."""
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    _Hub.seen = []
    yield _Hub
    server.shutdown()
    server.server_close()


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once the socket is closed


_ME = {"name": "me", "orgs": [{"name": "lab"}], "auth": {"accessToken": {"role": "write"}}}


def test_uploads_are_checked_before_any_work(local_hub, monkeypatch):
    """Fault injection on the Hub account check: each problem is one InputError naming it and the fix."""
    from huggingface_hub import constants

    from fdistill.errors import InputError
    from fdistill.lm.hub import check_hub_push

    ok = lambda body: (200, json.dumps(body).encode())  # noqa: E731
    cases = [
        ("me/x", None, {}, (401, b'{"error": "Invalid credentials"}'), "refused the token (401 Unauthorized)"),
        ("me/x", None, {}, (403, b"{}"), "refused the token (403 Forbidden)"),
        ("me/x", None, {}, (500, b"{}"), "gave no account for the token (500"),
        ("me/x", None, {}, (200, b"<html>"), "gave no account for the token (200"),
        ("me/x", None, {}, ok({"orgs": []}), "gave no account for the token"),
        ("me/x", None, {}, ok({**_ME, "auth": {"accessToken": {"role": "read"}}}), "is read-only"),
        ("other/x", None, {}, ok(_ME), "'me' cannot write to the namespace 'other'"),
        ("bad//x", None, {}, ok(_ME), "the model repo id 'bad//x' is not valid"),
        ("a" * 97, None, {}, ok(_ME), "is not valid"),
        ("me/x", None, {"ENDPOINT": _closed_port()}, ok(_ME), "cannot be reached"),
        ("me/x", None, {"HF_HUB_OFFLINE": True}, ok(_ME), "impossible offline (HF_HUB_OFFLINE=1 is set)"),
        ("me/x", "", {"no_env_token": True}, ok(_ME), "no Hub token"),
    ]
    for repo, token, patches, answer, fragment in cases:
        with monkeypatch.context() as patch:
            for name, value in patches.items():
                if name == "no_env_token":
                    patch.delenv("HF_TOKEN")
                else:
                    patch.setattr(constants, name, value)
            local_hub.answer = answer
            with pytest.raises(InputError, match=re.escape(fragment)):
                check_hub_push(repo, token=token)
    with socket.socket() as silent, monkeypatch.context() as patch:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        patch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        patch.setattr(fdistill.lm.hub, "HUB_CHECK_TIMEOUT", 0.2)
        with pytest.raises(InputError, match=r"cannot be reached \(ReadTimeout\)"):
            check_hub_push("me/x")
    local_hub.answer = ok(_ME)
    assert check_hub_push("me/x") == "me" and check_hub_push("lab/x") == "me" and check_hub_push("x") == "me"
    assert local_hub.seen[-1] == ("/api/whoami-v2", "Bearer hf_fake_token")  # the token went to 127.0.0.1 only
    assert check_hub_push("me/x", token="hf_other") == "me" and local_hub.seen[-1][1] == "Bearer hf_other"


def test_commands_and_trainer_check_the_upload_before_loading_or_training(
    local_hub, tok, tmp_path, capsys, monkeypatch
):
    """`sample --push-to-hub` and `train push_to_hub=true` give one line and write nothing; the library's trainer
    raises one InputError before the Trainer creates the repo."""
    from huggingface_hub import constants

    from fdistill.cli import main
    from fdistill.errors import InputError

    teacher = tmp_path / "teacher"
    tiny.llama(1, seed=0).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    prompts = tmp_path / "prompts.jsonl"
    tiny.dataset(4, seed=0).to_json(str(prompts))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "teacher": str(teacher),
                "train_data": str(prompts),
                "student_layers": [0],
                "objective": "rkl",
                "output_dir": str(tmp_path / "run"),
                "push_to_hub": True,
                "hub_model_id": "me/student",
                "use_cpu": True,
                "report_to": [],
            }
        )
    )
    sample = ["sample", "--teacher", str(teacher), "--data", str(prompts), "--output", str(tmp_path / "samples")]
    local_hub.answer = (401, b"{}")
    cases = [
        (sample + ["--push-to-hub", "bad//repo"], {}, "--push-to-hub: the dataset repo id 'bad//repo' is not valid"),
        (sample + ["--push-to-hub", "me/data"], {}, "--push-to-hub: the Hub at http://127.0.0.1:"),
        (["train", str(recipe)], {}, "push_to_hub: the Hub at http://127.0.0.1:"),
        (["train", str(recipe)], {"ENDPOINT": _closed_port()}, "cannot be reached"),
        (["train", str(recipe)], {"HF_HUB_OFFLINE": True}, "impossible offline"),
        (["train", str(recipe), "hub_model_id=x//y"], {}, "the model repo id 'x//y' is not valid"),
    ]
    for argv, patches, fragment in cases:
        with monkeypatch.context() as patch:
            for name, value in patches.items():
                patch.setattr(constants, name, value)
            with pytest.raises(SystemExit) as exit_info:
                main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and fragment in err and "Traceback" not in err, err
        assert len([line for line in err.splitlines() if "error:" in line]) == 1, err
        assert not (tmp_path / "samples").exists() and not (tmp_path / "run").exists()
    teacher_model = make_teacher("llama")
    args = config(tmp_path, objective="rkl", push_to_hub=True, hub_model_id="me/student")
    with pytest.raises(InputError, match="refused the token"):
        FDistillTrainer(
            model=tiny.llama(1, seed=1),
            teacher_model=teacher_model,
            args=args,
            train_dataset=tiny.dataset(4, seed=0),
            processing_class=tok,
        )


def test_sample_push_to_hub_uploads_the_dataset(teacher_dir, tmp_path, monkeypatch):
    """`fdistill sample --push-to-hub` through the real client (datasets' push_to_hub) to the Hub stand-in: the rows
    arrive as parquet by LFS, with a dataset card."""
    import io

    import pyarrow.parquet as pq
    from datasets import load_from_disk

    from fdistill.cli import main

    prompts = tmp_path / "prompts.jsonl"
    tiny.dataset(4, seed=0).to_json(str(prompts))
    out = tmp_path / "samples"
    argv = ["sample", "--teacher", str(teacher_dir), "--data", str(prompts), "--output", str(out), "--no-progress"]
    with hub_standin.serve(monkeypatch, tmp_path) as hub:
        main([*argv, "--max-new-tokens", "4", "--push-to-hub", "me/samples"])
    repo = hub.repo("me/samples", "dataset")
    shards = [p for p in repo.files if p.endswith(".parquet")]
    assert len(shards) == 1 and repo.files[shards[0]][1] and "README.md" in repo.files  # parquet went by LFS
    pushed = pq.read_table(io.BytesIO(repo.files[shards[0]][0])).to_pydict()
    local = load_from_disk(str(out)).to_dict()
    assert pushed["prompt"] == local["prompt"] and pushed["teacher_sample_ids"] == local["teacher_sample_ids"]
