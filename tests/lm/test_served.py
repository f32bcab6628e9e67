"""A teacher served by vLLM (issue 17, item 1), against an in-process fake server (tests/fake_vllm.py) that answers
in the recorded vLLM shapes from a tiny local model: the client, training with teacher_server= (loss equal to the
in-process teacher's at K = V, a lower bound at K < V), retries and errors, a server that dies mid-run, and
offline sampling through the server with resume and provenance. The real-vLLM end-to-end test:
tests/lm/test_served_vllm.py (marked vllm)."""

import json
import re

import pytest
import torch
import transformers
import yaml
from fake_vllm import FAULTS, FakeVLLM
from tolerances import sum_rtol
from transformers import TrainerCallback

from fdistill import FDistillTrainer
from fdistill import testing as tiny
from fdistill.errors import InputError
from fdistill.lm.logits_cache import CODES, IDS, SCALE, TOP, decode, error_bound
from fdistill.lm.objectives import OBJECTIVES
from fdistill.lm.sampling import PROVENANCE_FILE, OfflineSamplingSettings, sample_completions, sample_offline_with
from fdistill.lm.served import (
    API_KEY_ENV,
    TeacherServer,
    TeacherServerError,
    redact_url,
    sample_offline_served,
    sample_served_data,
)

transformers.logging.set_verbosity_error()
V = tiny.VOCAB


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


def client(fake, tok, **kw) -> TeacherServer:
    """A client of ``fake``, its tokenizer checked (which sets the vocabulary answers are checked against)."""
    server = TeacherServer(fake.url, **kw)
    server.check_tokenizer(tok)
    return server


def config(tmp_path, **kw):
    defaults = {"objective": "kl", "max_steps": 2, "teacher_server_retries": 1, "teacher_server_timeout": 10.0}
    return tiny.config(tmp_path, **{**defaults, **kw})


# ----------------------------------------------------------------------------- the client


def test_scores_are_the_models_top_k_and_token_log_probabilities(fake, teacher, tok):
    server = client(fake, tok)
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


def test_a_top_k_past_the_vocabulary_is_the_whole_vocabulary(fake, teacher, tok):
    """teacher_server_topk > V: the server returns all V tokens per position (K = V), which is what is checked and used."""
    (ids, logprobs, _), *_ = client(fake, tok).score([[1, 4, 6]], [[8, 2]], k=V + 3)
    assert [sorted(p) for p in ids] == [list(range(V))] * 2
    mass = torch.tensor(logprobs, dtype=torch.float64).exp().sum(-1)
    torch.testing.assert_close(
        mass, torch.ones(2, dtype=torch.float64), rtol=0, atol=V * torch.finfo(torch.float32).eps
    )


def test_padded_sets_become_teacher_top_k_aligned_with_the_labels(fake, teacher, tok):
    server = client(fake, tok, batch_size=2, concurrency=3)
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


def test_5xx_is_retried_with_backoff_and_counted(fake, tok):
    server = client(fake, tok, retries=3, backoff=0.01)
    fake.fail_next = [503, 502]
    assert len(server.score([[1, 4]], [[5, 6]], k=2)[0][0]) == 2
    assert server.traffic.retries == 2


def test_a_server_that_stays_away_is_one_clear_error(fake, tok):
    server = client(fake, tok, retries=2, backoff=0.01)
    fake.fail_next = [500] * 3
    stays_away = r"did not answer /v1/completions \(scoring sequences 0..0\): HTTP 500.*\(3 attempts in"
    with pytest.raises(TeacherServerError, match=stays_away):
        server.score([[1, 4]], [[5]], k=2)
    fake.stop()
    with pytest.raises(TeacherServerError, match="connection failed"):
        TeacherServer(fake.url, retries=1, backoff=0.01)


def test_a_slow_server_hits_one_total_deadline_per_request(fake, tok):
    """The deadline covers every attempt, wait and backoff: many retries of a slow (or failing) server still end
    at timeout, with the attempts counted; before, each attempt had the whole timeout (and backoff came on top)."""
    import time

    server = client(fake, tok, timeout=0.6, retries=20, backoff=0.05)
    fake.delay = 1.0
    start = time.monotonic()
    with pytest.raises(
        TeacherServerError, match=r"within teacher_server_timeout=0.6 s: no answer in time \(1 attempt in"
    ):
        server.score([[1, 4]], [[5]], k=2)
    assert time.monotonic() - start < 0.6 + 0.3
    fake.delay, fake.fail_next = 0.0, [503] * 100
    start = time.monotonic()
    with pytest.raises(
        TeacherServerError, match=r"within teacher_server_timeout=0.6 s: HTTP 503.*\((\d+) attempts in"
    ) as error:
        server.score([[1, 4]], [[5]], k=2)
    assert time.monotonic() - start < 0.6 + 0.3 and "\n" not in str(error.value)
    attempts = int(re.search(r"\((\d+) attempts in", str(error.value)).group(1))
    assert 3 <= attempts < 20  # backoff 0.05, 0.1, 0.2, 0.4 s: a few attempts, not all 21


def test_refusals_by_the_server_are_input_errors_at_once(fake, tok):
    server = client(fake, tok, retries=3)
    with pytest.raises(InputError, match="greater than max allowed: 64"):
        server.score([[1, 4]], [[5]], k=65)
    with pytest.raises(InputError, match="max_model_len=128"):
        server.score([[1] * 120], [[5] * 10], k=2)
    with pytest.raises(InputError, match="is not served by .* it serves tiny-teacher"):
        TeacherServer(fake.url, "other")
    with pytest.raises(InputError, match="http://host:port"):
        TeacherServer("localhost:8000")
    for kw, message in (
        ({"timeout": 0}, "teacher_server_timeout=0 "),
        ({"timeout": float("nan")}, "timeout=nan "),
        ({"retries": -1}, "teacher_server_retries=-1 "),
    ):
        with pytest.raises(InputError, match=message):
            TeacherServer(fake.url, **kw)


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
        served = TeacherServer(server.url)
        with pytest.raises(InputError, match="tokenizer .* differs from the student's") as error:
            served.check_tokenizer(tok)
        assert "\n" not in str(error.value)
        served.check_tokenizer(other)


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
    """Same student, same batch and student samples: teacher_server_topk = V gives the in-process loss; K < V a lower
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
            args=config(
                tmp_path / f"k{k}", objective=objective, teacher_server=fake.url, teacher_server_topk=k, **extra
            ),
            train_dataset=data,
            processing_class=tok,
        )
        assert served.teacher is None
        losses[k] = _loss(served, batch)
    assert losses[V] == pytest.approx(reference, rel=1e-5, abs=1e-6)
    assert losses[4] < reference


@pytest.mark.parametrize("max_new_tokens", [3, 12])  # the offline teacher samples are 6 tokens at most
@pytest.mark.parametrize("objective", ["js", "tvd", "rkl"])
def test_student_samples_longer_or_shorter_than_the_teacher_samples(
    fake, teacher, tok, data, tmp_path, objective, max_new_tokens
):
    """Found: js/tvd with max_new_tokens other than the offline samples' length failed ("teacher top-k (4, 6, 4) and
    student logits (4, 8, 25) cover different positions"). Each set is scored on its own positions and padded to
    the width of the student's forward; at K = V the loss is the in-process teacher's."""
    student = tiny.llama(1, seed=1)
    kw = dict(objective=objective, max_new_tokens=max_new_tokens)
    in_process = FDistillTrainer(
        model=student,
        teacher_model=teacher,
        args=config(tmp_path / "a", **kw),
        train_dataset=data,
        processing_class=tok,
    )
    batch = in_process.data_collator([data[i] for i in range(8)])
    torch.manual_seed(0)
    batch["student_ids"], batch["student_mask"] = sample_completions(
        student, batch["prompt_ids"], batch["prompt_mask"], in_process.student_generation_config
    )
    widths = [batch[f"{n}_ids"].shape[1] for n in ("student", "teacher") if f"{n}_ids" in batch]  # rkl: students only
    assert len(set(widths)) == len(widths)
    reference = _loss(in_process, batch)
    served = FDistillTrainer(
        model=student,
        args=config(tmp_path / "s", teacher_server=fake.url, teacher_server_topk=V, **kw),
        train_dataset=data,
        processing_class=tok,
    )
    # float32 on both sides, summed in other orders (tests/tolerances.py): 8 sequences × the positions × V per set
    assert _loss(served, batch) == pytest.approx(reference, rel=sum_rtol(torch.float32, 8 * max(widths) * V))


@pytest.mark.parametrize("objective", ["kl", "rkl", "js", "tvd"])
def test_training_with_a_served_teacher_takes_the_in_process_steps(fake, teacher, tok, data, tmp_path, objective):
    """Two SGD steps with the same seed: the same logged losses and weight updates as with the teacher in-process.

    The server scores in other batches than the trainer, so the teacher's log-probabilities agree only up to the
    summation order (tests/tolerances.py). SGD keeps the update linear in the gradient; Adam's first steps divide by
    ``|g|`` and turn a rounding difference in a near-zero gradient into a visible one."""
    start = torch.cat([p.detach().flatten() for p in tiny.llama(1, seed=1).parameters()])
    runs = {}
    for name, kw, model in (
        ("local", {}, teacher),
        ("served", dict(teacher_server=fake.url, teacher_server_topk=V), None),
    ):
        student = tiny.llama(1, seed=1)
        trainer = FDistillTrainer(
            model=student,
            teacher_model=model,
            args=config(tmp_path / name, objective=objective, js_mixture="exact", optim="sgd", learning_rate=0.5, **kw),
            train_dataset=data,
            processing_class=tok,
        )
        trainer.train()
        update = torch.cat([p.detach().flatten() for p in student.parameters()]) - start
        runs[name] = ([h["loss"] for h in trainer.state.log_history if "loss" in h], update)
    rtol = sum_rtol(torch.float32, V)
    assert runs["served"][0] == pytest.approx(runs["local"][0], rel=rtol)
    served, local = runs["served"][1], runs["local"][1]
    assert local.abs().max() > 1e-3  # the steps did something
    torch.testing.assert_close(served, local, rtol=rtol, atol=rtol * local.abs().max().item())


def test_settings_a_served_teacher_cannot_serve_are_refused(tmp_path):
    url = "http://127.0.0.1:9"
    with pytest.raises(InputError, match="objective 'engine' needs the teacher model"):
        config(tmp_path, objective="engine", teacher_server=url)
    with pytest.raises(InputError, match="fdistill sample --teacher-server URL"):
        config(tmp_path, objective="kl", teacher_sampling="online", teacher_server=url)
    with pytest.raises(InputError, match="unset teacher_topk_columns"):
        config(tmp_path, teacher_server=url, teacher_topk_columns=True)
    with pytest.raises(InputError, match="teacher_server_topk=0"):
        config(tmp_path, teacher_server=url, teacher_server_topk=0)
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
    kw = dict(objective="tvd", max_steps=4, save_strategy="steps", save_steps=1, teacher_server_topk=8, data_seed=0)
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
        top_ids, top_lp = decode(*(row[c] for c in (IDS, TOP, SCALE, CODES)), dtype=torch.float64)  # the cache
        assert top_ids.shape == (len(ids), 4)
        assert row["teacher_stopped"] == (ids[-1] == tok.eos_token_id)
        prompt = tok(row["prompt"])["input_ids"]
        with torch.no_grad():
            log_p = torch.log_softmax(teacher(torch.tensor([prompt + ids])).logits[0].float(), -1)[len(prompt) - 1 : -1]
        # the server's float32 answer within 1e-5, then the cache's stated quantisation bound
        bound = torch.from_numpy(error_bound(row[TOP], row[SCALE]))[:, None] + 1e-5
        assert ((top_lp - log_p.topk(4).values.double()).abs() <= bound).all()
        assert top_ids.tolist() == log_p.topk(4).indices.tolist()
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


# ----------------------------------------------------------------------------- API keys


def test_an_api_key_is_sent_as_bearer_and_a_refusal_is_one_line_at_once(fake, tok, monkeypatch):
    """vLLM's --api-key checks ``Authorization: Bearer KEY`` on /v1 paths and answers 401 otherwise: one line
    naming the setting and the environment variable, at the first request, not retried."""
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    fake.api_key = "k3y-0123456789"
    with pytest.raises(
        TeacherServerError, match=rf"refused /v1/models \(HTTP 401: Unauthorized\): .*{API_KEY_ENV}"
    ) as e:
        TeacherServer(fake.url, retries=5)
    assert fake.requests == 1 and "\n" not in str(e.value)
    with pytest.raises(TeacherServerError, match=r"credentials given \(API key or user:password@\) are not") as e:
        TeacherServer(fake.url, api_key="wrong-key-0000")
    assert "wrong-key" not in str(e.value)
    assert client(fake, tok, api_key="k3y-0123456789").score([[1, 4]], [[5, 6]], k=3)[0][0]
    monkeypatch.setenv(API_KEY_ENV, "k3y-0123456789")
    assert client(fake, tok).score([[1, 4]], [[5, 6]], k=3)[0][0]
    assert fake.headers[-1]["Authorization"] == "Bearer k3y-0123456789"
    with pytest.raises(InputError, match="both would be the one Authorization header"):
        TeacherServer("http://me:pass-word@127.0.0.1:9")


def test_settings_with_secrets_are_checked_without_showing_them(tmp_path):
    with pytest.raises(InputError, match="key of teacher_server; set that too") as e:
        config(tmp_path, teacher_server_api_key="s3cret-key")
    with pytest.raises(InputError, match="give the key, or leave it unset"):
        config(tmp_path, teacher_server="http://127.0.0.1:9", teacher_server_api_key=" ")
    with pytest.raises(InputError, match=r"teacher_server='ftp://host:1\?token=\*\*\*' is not valid") as f:
        config(tmp_path, teacher_server="ftp://me:s3cret-pass@host:1?token=s3cret-query")
    with pytest.raises(InputError, match="port is not a number") as g:
        config(tmp_path, teacher_server="http://me:s3cret-pass@host:port")
    assert not any("s3cret" in str(x.value) for x in (e, f, g))
    for url in ("http://[::1", "http://host name:80", "http://:8000", "", "localhost:8000"):
        with pytest.raises(InputError, match=r"teacher_server=.* is not valid \(it is not http://host:port\)"):
            config(tmp_path, teacher_server=url)
    assert redact_url("https://me:s3cret@h:8/v1?a=s3cret&b=") == "https://h:8/v1?a=***&b=***"


# ----------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def files(data, tok, tmp_path_factory):
    """A student folder (with its tokenizer), a tokenizer folder, offline teacher samples, and prompts."""
    root = tmp_path_factory.mktemp("served_cli")
    tiny.llama(1, seed=1).save_pretrained(root / "student")
    tok.save_pretrained(root / "student")
    tok.save_pretrained(root / "tok")
    data.save_to_disk(str(root / "samples"))
    tiny.dataset(3, seed=1).to_json(str(root / "prompts.jsonl"))
    return root


def recipe(files, out, **kw) -> str:
    """A one-step `fdistill train` recipe for the tiny student on the offline samples, without a teacher."""
    values = {
        "student": str(files / "student"),
        "train_data": str(files / "samples"),
        "output_dir": str(out),
        "objective": "tvd",
        "max_steps": 1,
        "teacher_server_topk": 4,
        "per_device_train_batch_size": 4,
        "max_new_tokens": 6,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "teacher_server_retries": 1,
        "teacher_server_timeout": 1.0,
        **kw,
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def sample_argv(files, url, out) -> list[str]:
    return [
        "sample",
        "--teacher-server",
        url,
        "--tokenizer",
        str(files / "tok"),
        "--data",
        str(files / "prompts.jsonl"),
        "--output",
        str(out),
        "--max-new-tokens",
        "4",
        "--topk-logprobs",
        "4",
        "--teacher-server-retries",
        "1",
        "--teacher-server-timeout",
        "1",
        "--no-progress",
    ]


@pytest.fixture()
def main():
    """`fdistill.cli.main` (its stderr handler writes to the current, captured stderr: fdistill.cli._StderrHandler)."""
    from fdistill.cli import main

    return main


def _error_line(capsys, command: str) -> str:
    """The one error line the command printed (no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"fdistill {command}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_train_command_trains_with_a_served_teacher_and_no_local_one(main, fake, files, tmp_path, capsys):
    """Found: `fdistill train recipe.yaml teacher_server=URL` without a teacher was refused ("lacks teacher")."""
    out = tmp_path / "run"
    main(["train", recipe(files, out), f"teacher_server={fake.url}", f"tokenizer={files / 'tok'}"])
    assert (out / "model.safetensors").is_file() and fake.completions >= 1
    assert "tiny-teacher" in (out / "README.md").read_text() or "/models/tiny" in (out / "README.md").read_text()
    for kw, message in (
        ({"student_layers": [0]}, r"no student can be copied from them \(student_layers\): give `student`"),
        ({"tokenizer": str(files / "tok"), "teacher": str(files / "student")}, "only a served teacher uses"),
        ({"tokenizer": str(files / "nothing")}, "could not load the tokenizer of Hub model .*nothing"),
        ({}, "lacks teacher"),
    ):
        folder = tmp_path / f"refused{len(message)}"
        overrides = [f"teacher_server={fake.url}"] if "student_layers" in kw or "nothing" in str(kw) else []
        with pytest.raises(SystemExit) as exit_info:
            main(["train", recipe(files, folder, **kw), *overrides])
        assert exit_info.value.code == 2 and re.search(message, _error_line(capsys, "train"))
        assert not folder.exists()


# Every fault of the fake server (FAULTS), and no server at all: what the one error line says, in both paths.
FAULT_LINES = {
    "positive_logprobs": r"the answer holds a positive log-probability \(0\.3\): a probability above 1",
    "one_entry": r"the answer holds 1 log-probabilities, expected 4",
    "nan_logprob": r"the answer holds a log-probability that is not finite \(nan\)",
    "id_out_of_range": rf"the answer holds token id {V + 3} outside the vocabulary \[0, {V}\)",
    "mass_above_one": r"the answer holds probabilities summing to [\d.]+, above 1",
    "short_positions": r"log-probabilities for \d+ of \d+ (positions|tokens)",
    "zero_choices": r"the server answered 0 choices \(indices \[\]\) for \d+ prompt",
    "missing_choices": r"the answer has no list of choices",
    "error_object": r"answered /v1/completions \(.*\) with an error: injected failure",
    "malformed_json": r"answered /v1/completions \(.*\) with something that is not JSON: '\{\"id\"",
    "html_page": r"answered /v1/completions \(.*\) with something that is not JSON: '<html>",
    "redirect": r"with a redirect \(HTTP 307\) to http://127\.0\.0\.1:\d+/v1/completions; redirects are not followed",
    "slow": r"did not answer /v1/completions \(.*\) within teacher_server_timeout=1 s: no answer in time \(1 attempt in",
    "unavailable": r"did not answer /v1/completions \(.*\): HTTP 503: Service Unavailable \(2 attempts in",
    "dropped": r"did not answer /v1/completions \(.*\): connection failed .*\(2 attempts in",
    "no_server": r"did not answer /v1/models: connection failed .*\(2 attempts in",
}


def test_every_fault_is_in_the_table():
    assert set(FAULT_LINES) == set(FAULTS) | {"no_server"}


@pytest.mark.parametrize("command", ["sample", "train"])
@pytest.mark.parametrize("fault", sorted(FAULT_LINES))
def test_a_bad_or_absent_server_is_one_line_and_nothing_is_stored_or_trained(
    main, teacher, tok, files, tmp_path, capsys, fault, command
):
    """Found: positive log-probabilities or a single top-k entry were stored and trained on (loss 0.19 against a
    normal 0.94); a redirect was followed to another host; malformed JSON, vLLM's error object, zero choices and a
    missing server gave KeyError: 'choices', IndexError and tracebacks; a slow server stalled a request ~12 min.
    Now each is one line (exit status 2) naming what was wrong and which request; nothing is stored or trained."""
    out = tmp_path / "out"
    with FakeVLLM(teacher, tok) as fake, FakeVLLM(teacher, tok) as elsewhere:
        fake.fault, fake.redirect_to, fake.slow_s = fault, elsewhere.url, 3.0
        if fault == "no_server":
            fake.stop()
        argv = sample_argv(files, fake.url, out) if command == "sample" else ["train", recipe(files, out)]
        if command == "train":
            argv.append(f"teacher_server={fake.url}")
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        line = _error_line(capsys, command)
        assert re.search(FAULT_LINES[fault], line), line
        if fault != "no_server":  # which request
            assert re.search(
                r"/v1/completions \((scoring sequences \d+\.\.\d+|sampling input \d+ sample \d+, seed \d+)\)", line
            ), line
        assert elsewhere.requests == 0  # the redirect was not followed: the prompts went nowhere else
    stored = [p.name for p in out.rglob("*") if p.suffix in (".jsonl", ".arrow", ".safetensors", ".bin")]
    assert stored == [] and not (out / "dataset_info.json").exists()


# ----------------------------------------------------------------------------- secrets


SECRETS = ("s3cret-pass", "s3cret-query", "s3cret-key")


@pytest.mark.parametrize("credentials", ["userinfo", "api_key"])
def test_credentials_are_never_written_or_logged(
    main, teacher, tok, files, tmp_path, capsys, caplog, monkeypatch, credentials
):
    """Found: a URL's user:token@ was stored verbatim in fdistill_provenance.json, dataset_info.json (uploaded by
    --push-to-hub) and training_args.bin. Sample, then train on the samples with checkpoints, with a password and a
    query token in the URL or an API key (environment for sample, recipe for train): no file under either output
    folder, no unpickled training_args.bin, no log or message holds a secret — while the server got them all."""
    import logging

    caplog.set_level(logging.INFO, logger="fdistill")
    with FakeVLLM(teacher, tok) as fake:
        host = fake.url.removeprefix("http://")
        if credentials == "userinfo":
            url, key = f"http://user:s3cret-pass@{host}/?token=s3cret-query", {}
        else:
            url, key = f"http://{host}/v1?token=s3cret-query", {"teacher_server_api_key": "s3cret-key"}
            fake.api_key = "s3cret-key"
            monkeypatch.setenv(API_KEY_ENV, "s3cret-key")
        main(sample_argv(files, url, tmp_path / "samples"))
        monkeypatch.delenv(API_KEY_ENV, raising=False)
        out = tmp_path / "run"
        main(
            [
                "train",
                recipe(files, out, train_data=str(tmp_path / "samples"), save_strategy="steps", save_steps=1, **key),
                f"teacher_server={url}",
            ]
        )
        assert fake.completions > 0 and all(q == "token=s3cret-query" for q in fake.queries)
        sent = {h.get("Authorization", "")[:6] for h in fake.headers}
        assert sent == ({"Basic "} if credentials == "userinfo" else {"Bearer"})
        fake.fault = "unavailable"  # retries are logged, and the error says why: neither shows a secret
        server = TeacherServer(url, retries=1, backoff=0.01, **({"api_key": "s3cret-key"} if key else {}))
        server.check_tokenizer(tok)
        with pytest.raises(TeacherServerError) as unavailable:
            server.score([[1, 4]], [[5]], k=2)
    with pytest.raises(TeacherServerError, match="connection failed") as refused:  # requests names the URL
        TeacherServer(url, retries=0)
    files_written = [p for folder in (tmp_path / "samples", out) for p in folder.rglob("*") if p.is_file()]
    names = {p.name for p in files_written}
    assert {
        "fdistill_provenance.json",
        "dataset_info.json",
        "training_args.bin",
        "fdistill_run.json",
        "README.md",
    } <= names
    for path in files_written:
        content = path.read_bytes()
        assert not any(s.encode() in content for s in SECRETS), path
    args = torch.load(next(out.rglob("training_args.bin")), weights_only=False)
    assert not any(s in repr(vars(args)) for s in SECRETS) and "***" in args.teacher_server
    logged = capsys.readouterr()
    texts = (logged.out, logged.err, caplog.text, str(unavailable.value), str(refused.value))
    assert "attempt 2 of 2" in caplog.text and not any(s in text for s in SECRETS for text in texts)
