"""A teacher served by vLLM (issue 17, item 1), against an in-process fake server (tests/fake_vllm.py) that answers
in the recorded vLLM shapes from a tiny local model: the client, training with teacher_server= (loss equal to the
in-process teacher's at K = V, a lower bound at K < V), retries and errors, a server that dies mid-run, and
offline sampling through the server with resume and provenance. The real-vLLM end-to-end test:
tests/test_served_vllm.py (marked vllm)."""

import json

import pytest
import torch
import transformers
from fake_vllm import FakeVLLM
from transformers import TrainerCallback

from fdistill import FDistillTrainer
from fdistill import testing as tiny
from fdistill.errors import InputError
from fdistill.lm.objectives import OBJECTIVES
from fdistill.lm.sampling import PROVENANCE_FILE, OfflineSamplingSettings, sample_completions, sample_offline_with
from fdistill.lm.served import TeacherServer, TeacherServerError, sample_offline_served, sample_served_data

transformers.logging.set_verbosity_error()
V = tiny.VOCAB


@pytest.fixture(scope="module")
def tok():
    return tiny.tokenizer()


@pytest.fixture(scope="module")
def teacher():
    return tiny.llama(2, seed=0, init=0.15).eval()


@pytest.fixture(scope="module")
def data(teacher, tok):
    return tiny.dataset(8, seed=3, teacher=teacher, tok=tok, max_new_tokens=6)


@pytest.fixture()
def fake(teacher, tok):
    with FakeVLLM(teacher, tok) as server:
        yield server


def config(tmp_path, **kw):
    defaults = {"objective": "kl", "max_steps": 2, "teacher_server_retries": 1, "teacher_server_timeout": 10.0}
    return tiny.config(tmp_path, **{**defaults, **kw})


# ----------------------------------------------------------------------------- the client


def test_scores_are_the_models_top_k_and_token_log_probabilities(fake, teacher):
    server = TeacherServer(fake.url)
    prompts, completions = [[1, 4, 6], [1, 5], [1, 7]], [[8, 2, 9], [7], []]
    scored = server.score(prompts, completions, k=5)
    for prompt, completion, (ids, logprobs, token_lp) in zip(prompts, completions, scored):
        assert len(ids) == len(completion)
        if not completion:
            continue
        with torch.no_grad():
            log_p = torch.log_softmax(teacher(torch.tensor([prompt + completion])).logits[0].float(), -1)
        rows = log_p[len(prompt) - 1 : -1]  # the rows that predict the completion tokens
        top = rows.topk(5)
        assert ids == top.indices.tolist()
        torch.testing.assert_close(torch.tensor(logprobs), top.values)
        torch.testing.assert_close(torch.tensor(token_lp), rows.gather(-1, torch.tensor(completion)[:, None])[:, 0])
    assert len(fake.bodies) == 1 and fake.bodies[0]["prompt_logprobs"] == 5  # one batched request, empty one skipped
    assert server.traffic.bytes_received > server.traffic.bytes_sent > 0 and server.traffic.positions == 4


def test_padded_sets_become_teacher_top_k_aligned_with_the_labels(fake, teacher, tok):
    server = TeacherServer(fake.url, batch_size=2, concurrency=3)
    prompt_ids, prompt_mask = torch.tensor([[0, 1, 4, 6], [1, 5, 7, 10]]), torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    ids = torch.tensor([[8, 2, 0], [9, 11, 2]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    top = server.score_sets(prompt_ids, prompt_mask.bool(), {"student": (ids, mask), "teacher": (ids, mask)}, k=V)
    assert set(top) == {"student", "teacher"} and top["student"].ids.shape == (2, 3, V)
    with torch.no_grad():
        log_p = torch.log_softmax(teacher(torch.tensor([[1, 4, 6, 8, 2]])).logits[0].float(), -1)
    torch.testing.assert_close(top["student"].token_logprobs[0, :2], log_p[[2, 3], [8, 2]])
    assert top["student"].token_logprobs[0, 2] == 0 and (top["student"].ids[0, 2] == 0).all()  # masked: zeros
    torch.testing.assert_close(top["student"].logprobs, top["teacher"].logprobs)
    with pytest.raises(ValueError, match="not a prefix"):
        server.score_sets(prompt_ids, prompt_mask.bool(), {"student": (ids, torch.tensor([[1, 0, 1], [1, 1, 1]]))}, 3)


def test_5xx_is_retried_with_backoff_and_counted(fake):
    server = TeacherServer(fake.url, retries=3, backoff=0.01)
    fake.fail_next = [503, 502]
    assert len(server.score([[1, 4]], [[5, 6]], k=2)[0][0]) == 2
    assert server.traffic.retries == 2


def test_a_server_that_stays_away_is_one_clear_error(fake):
    server = TeacherServer(fake.url, retries=2, backoff=0.01)
    fake.fail_next = [500] * 3
    with pytest.raises(TeacherServerError, match=r"did not answer /v1/completions: HTTP 500.*after 3 tries"):
        server.score([[1, 4]], [[5]], k=2)
    fake.stop()
    with pytest.raises(TeacherServerError, match="connection failed"):
        TeacherServer(fake.url, retries=1, backoff=0.01)


def test_a_slow_server_times_out(fake):
    server = TeacherServer(fake.url, timeout=0.2, retries=1, backoff=0.01)
    fake.delay = 0.6
    with pytest.raises(TeacherServerError, match="no answer within timeout=0.2 s"):
        server.score([[1, 4]], [[5]], k=2)


def test_refusals_by_the_server_are_input_errors_at_once(fake):
    server = TeacherServer(fake.url, retries=3)
    with pytest.raises(InputError, match="greater than max allowed: 64"):
        server.score([[1, 4]], [[5]], k=65)
    with pytest.raises(InputError, match="max_model_len=128"):
        server.score([[1] * 120], [[5] * 10], k=2)
    with pytest.raises(InputError, match="is not served by .* it serves tiny-teacher"):
        TeacherServer(fake.url, "other")
    with pytest.raises(InputError, match="http://host:port"):
        TeacherServer("localhost:8000")


def test_another_tokenizer_is_refused_in_one_line(teacher, tok):
    shuffled = tiny.tokenizer()
    vocab = shuffled.get_vocab()
    words = sorted(vocab, key=vocab.get)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    other = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words[:4] + words[4:][::-1])}, unk_token="<unk>"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=other, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    with FakeVLLM(teacher, other) as server:
        client = TeacherServer(server.url)
        with pytest.raises(InputError, match="tokenizer .* differs from the student's") as error:
            client.check_tokenizer(tok)
        assert "\n" not in str(error.value)
        client.check_tokenizer(other)


# ----------------------------------------------------------------------------- training


def _loss(trainer, batch):
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, dict(batch)).item()


@pytest.mark.parametrize(
    "objective,mixture", [("kl", None), ("rkl", None), ("js", "stepwise"), ("js", "exact"), ("tvd", None)]
)
def test_served_loss_equals_the_in_process_teachers_at_full_vocabulary(
    fake, teacher, tok, data, tmp_path, objective, mixture
):
    """Same student, same batch and student samples: teacher_topk = V gives the in-process loss; K < V a lower
    bound (the coarse-grained divergence, data-processing inequality)."""
    extra = {"js_mixture": mixture} if mixture else {}
    student = tiny.llama(1, seed=1)
    in_process = FDistillTrainer(
        model=student,
        teacher_model=teacher,
        args=config(tmp_path / "a", objective=objective, **extra),
        train_dataset=data,
        processing_class=tok,
    )
    batch = in_process.data_collator([data[i] for i in range(8)])
    if "student" in OBJECTIVES[objective].scores:
        generation = in_process.student_generation_config
        torch.manual_seed(0)
        batch["student_ids"], batch["student_mask"] = sample_completions(
            student, batch["prompt_ids"], batch["prompt_mask"], generation
        )
    reference = _loss(in_process, batch)
    losses = {}
    for k in (V, 4):
        served = FDistillTrainer(
            model=student,
            args=config(tmp_path / f"k{k}", objective=objective, teacher_server=fake.url, teacher_topk=k, **extra),
            train_dataset=data,
            processing_class=tok,
        )
        assert served.teacher is None
        losses[k] = _loss(served, batch)
    assert losses[V] == pytest.approx(reference, rel=1e-5, abs=1e-6)
    assert losses[4] < reference


@pytest.mark.parametrize("objective", ["kl", "rkl", "js", "tvd"])
def test_training_with_a_served_teacher_takes_the_in_process_steps(fake, teacher, tok, data, tmp_path, objective):
    """Two optimizer steps with the same seed: the same logged losses and weights as with the teacher in-process."""
    runs = {}
    for name, kw, model in (("local", {}, teacher), ("served", dict(teacher_server=fake.url, teacher_topk=V), None)):
        student = tiny.llama(1, seed=1)
        trainer = FDistillTrainer(
            model=student,
            teacher_model=model,
            args=config(tmp_path / name, objective=objective, js_mixture="exact", **kw),
            train_dataset=data,
            processing_class=tok,
        )
        trainer.train()
        runs[name] = ([h["loss"] for h in trainer.state.log_history if "loss" in h], student)
    assert runs["served"][0] == pytest.approx(runs["local"][0], rel=1e-4)
    for a, b in zip(runs["served"][1].parameters(), runs["local"][1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_settings_a_served_teacher_cannot_serve_are_refused(tmp_path):
    url = "http://127.0.0.1:9"
    with pytest.raises(InputError, match="objective 'engine' needs the teacher model"):
        config(tmp_path, objective="engine", teacher_server=url)
    with pytest.raises(InputError, match="fdistill sample --teacher-server URL"):
        config(tmp_path, objective="kl", teacher_sampling="online", teacher_server=url)
    with pytest.raises(InputError, match="unset teacher_topk_logprobs"):
        config(tmp_path, teacher_server=url, teacher_topk_logprobs=True)
    with pytest.raises(InputError, match="teacher_topk=0"):
        config(tmp_path, teacher_server=url, teacher_topk=0)
    with pytest.raises(InputError, match="set that too"):
        config(tmp_path, teacher_server_model="t")
    with pytest.raises(InputError, match="untempered"):
        config(tmp_path, teacher_server=url, loss_temperature=2.0)
    with pytest.raises(InputError, match="http://host:port"):
        config(tmp_path, teacher_server="127.0.0.1:8000")


class _StopServerAt(TrainerCallback):
    def __init__(self, fake, step):
        self.fake, self.step = fake, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.fake.stop()


def test_a_server_killed_mid_training_stops_it_with_a_resumable_checkpoint(teacher, tok, data, tmp_path):
    """The error names the step and the checkpoint; resumed against a restarted server, the run ends where an
    uninterrupted one does; against another served model the checkpoint is refused."""
    kw = dict(objective="tvd", max_steps=4, save_strategy="steps", save_steps=1, teacher_topk=8, data_seed=0)
    with FakeVLLM(teacher, tok) as fake:
        whole = tiny.llama(1, seed=1)
        FDistillTrainer(
            model=whole,
            args=config(tmp_path / "whole", teacher_server=fake.url, **kw),
            train_dataset=data,
            processing_class=tok,
        ).train()
    fake = FakeVLLM(teacher, tok)
    args = config(tmp_path / "cut", teacher_server=fake.url, **kw)
    trainer = FDistillTrainer(
        model=tiny.llama(1, seed=1),
        args=args,
        train_dataset=data,
        processing_class=tok,
        callbacks=[_StopServerAt(fake, 2)],
    )
    with pytest.raises(TeacherServerError, match=r"training step 3: .*connection failed.*checkpoint-2, is whole"):
        trainer.train()
    assert sorted(p.name for p in (tmp_path / "cut").iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-1",
        "checkpoint-2",
    ]
    with FakeVLLM(teacher, tok, name="another-teacher") as other:
        renamed = FDistillTrainer(
            model=tiny.llama(1, seed=1),
            args=config(tmp_path / "cut", teacher_server=other.url, **kw),
            train_dataset=data,
            processing_class=tok,
        )
        with pytest.raises(InputError, match="another teacher"):
            renamed.train(resume_from_checkpoint=True)
    with FakeVLLM(teacher, tok) as restarted:
        resumed = tiny.llama(1, seed=1)
        FDistillTrainer(
            model=resumed,
            args=config(tmp_path / "cut", teacher_server=restarted.url, **kw),
            train_dataset=data,
            processing_class=tok,
        ).train(resume_from_checkpoint=True)
    for a, b in zip(resumed.parameters(), whole.parameters()):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- offline sampling


def _settings(**kw):
    return OfflineSamplingSettings(**{"max_new_tokens": 6, "batch_size": 3, "topk_logprobs": 4, **kw})


def test_sampling_through_the_server_stores_samples_and_untempered_top_k(fake, teacher, tok, tmp_path):
    prompts = tiny.dataset(7, seed=5)
    result = sample_offline_served(
        TeacherServer(fake.url), tok, prompts, str(tmp_path / "s"), _settings(temperature=0.7), show_progress=False
    )
    assert len(result) == 7 and result["input_index"] == list(range(7))
    for row in result:
        ids = row["teacher_sample_ids"]
        assert len(row["teacher_topk_ids"]) == len(ids) and len(row["teacher_topk_ids"][0]) == 4
        assert row["teacher_stopped"] == (ids[-1] == tok.eos_token_id)
        prompt = tok(row["prompt"])["input_ids"]
        with torch.no_grad():
            log_p = torch.log_softmax(teacher(torch.tensor([prompt + ids])).logits[0].float(), -1)[len(prompt) - 1 : -1]
        torch.testing.assert_close(torch.tensor(row["teacher_topk_logprobs"]), log_p.topk(4).values, atol=1e-5, rtol=0)
    record = json.loads((tmp_path / "s" / PROVENANCE_FILE).read_text())
    assert record["teacher_server"]["name"] == "tiny-teacher" and record["teacher_server"]["server_version"] == "0.32.0"
    assert record["teacher_fingerprint"] == "served:tiny-teacher@/models/tiny"


def test_sampling_through_the_server_resumes_after_it_dies(teacher, tok, tmp_path):
    """Killed on its 5th request (batch 1 of 3): the first batch is kept; the rerun draws only the rest and the
    result is the uninterrupted run's, row for row; another served model may not finish it."""
    prompts = tiny.dataset(8, seed=6)
    with FakeVLLM(teacher, tok) as fake:
        whole = sample_offline_served(
            TeacherServer(fake.url), tok, prompts, str(tmp_path / "w"), _settings(), show_progress=False
        )
    out = str(tmp_path / "cut")
    with FakeVLLM(teacher, tok) as fake:
        fake.die_after = 4
        with pytest.raises(TeacherServerError, match="connection failed"):
            sample_offline_served(
                TeacherServer(fake.url, retries=1, backoff=0.01, concurrency=1),
                tok,
                prompts,
                out,
                _settings(),
                show_progress=False,
            )
    work = tmp_path / "cut" / ".fdistill_work"
    assert [p.name for p in sorted(work.glob("batch_*.jsonl"))] == ["batch_000000.jsonl"]
    with FakeVLLM(teacher, tok, name="other") as other:
        with pytest.raises(InputError, match="unfinished run .*the teacher changed"):
            sample_offline_served(TeacherServer(other.url), tok, prompts, out, _settings(), show_progress=False)
    with FakeVLLM(teacher, tok) as fake:
        resumed = sample_offline_served(TeacherServer(fake.url), tok, prompts, out, _settings(), show_progress=False)
        assert fake.completions == 8 - 3  # batches 1 and 2 only
    assert resumed.to_list() == whole.to_list()


def test_the_sample_command_function_and_beam_refusal(fake, tok, tmp_path):
    import argparse

    tok.save_pretrained(tmp_path / "tok")
    args = argparse.Namespace(
        teacher_server=fake.url, teacher_server_model=None, tokenizer=str(tmp_path / "tok"), output=str(tmp_path / "o")
    )
    assert len(sample_served_data(args, tiny.dataset(3, seed=1), _settings(topk_logprobs=0))) == 3
    with pytest.raises(InputError, match="decoding='beam' through a teacher server"):
        sample_offline_served(
            TeacherServer(fake.url),
            tok,
            tiny.dataset(3),
            str(tmp_path / "b"),
            _settings(decoding="beam", topk_logprobs=0),
        )
    assert sample_offline_with  # the shared core (sample_offline's) is public for other samplers


def test_the_sample_command_draws_through_a_served_teacher(fake, tok, tmp_path):
    from datasets import load_from_disk

    from fdistill.cli import main

    tok.save_pretrained(tmp_path / "tok")
    tiny.dataset(3, seed=1).to_json(str(tmp_path / "prompts.jsonl"))
    out = tmp_path / "samples"
    argv = ["sample", "--teacher-server", fake.url, "--tokenizer", str(tmp_path / "tok")]
    main([*argv, "--data", str(tmp_path / "prompts.jsonl"), "--output", str(out), "--max-new-tokens", "4"])
    rows = load_from_disk(str(out)).to_list()
    assert len(rows) == 3 and all(0 < len(r["teacher_sample_ids"]) <= 4 for r in rows)
    with pytest.raises(SystemExit) as exit_info:  # neither a teacher nor a server: one usage error, nothing written
        main(["sample", "--data", str(tmp_path / "prompts.jsonl"), "--output", str(tmp_path / "none")])
    assert exit_info.value.code == 2 and not (tmp_path / "none").exists()
