"""Student rollouts through a vLLM server (issue 24, items 1-2), against the in-process fake server (tests/fake_vllm.py)
extended with vLLM's weight sync (/collective_rpc reload_weights): the real client end to end over HTTP. A sync makes
the server compute the trainer's student; greedy decoding through it equals the in-process path; training with
student_server and greedy samples takes exactly the steps of in-process training; every failure is one error naming
the step and the last checkpoint; secrets are never written. The real-vLLM proof: tests/lm/test_student_server_vllm.py."""

import copy
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import transformers
from fake_vllm import FakeVLLM
from tolerances import sum_rtol

from fdistill import FDistillTrainer
from fdistill import testing as tiny
from fdistill.errors import InputError
from fdistill.lm import rollouts
from fdistill.lm.data import DistillCollator
from fdistill.lm.sampling import sample_completions
from fdistill.lm.served.launch import LocalServer
from fdistill.lm.served.student import STUDENT_API_KEY_ENV, StudentServer, StudentServerError, student_weights
from fdistill.lm.student import wrap_with_lora

transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def teacher():
    return tiny.llama(2, seed=0, init=0.15).eval()


@pytest.fixture(scope="module")
def data(teacher, tok):
    return tiny.dataset(8, seed=3, teacher=teacher, tok=tok, max_new_tokens=6)


@pytest.fixture()
def fake(tok):
    """A server holding other weights than any student here (seed 9): only a sync makes it compute the student."""
    with FakeVLLM(tiny.llama(1, seed=9, init=0.15), tok, name="student") as server:
        yield server


def greedy(model, tok, max_new_tokens=6):
    return rollouts.greedy_config(model, tok, max_new_tokens, None)


def client(fake, model, tok, tmp_path, config=None, **kw) -> StudentServer:
    kw = {"retries": 1, "backoff": 0.01, "timeout": 10.0, **kw}
    return StudentServer(fake.url, model, tok, config or greedy(model, tok), weights_root=str(tmp_path / "w"), **kw)


def prompts(tok, n=4, seed=5):
    batch = DistillCollator(tok, is_encoder_decoder=False)([{"prompt": p} for p in tiny.prompts(n, seed=seed)])
    return batch["prompt_ids"], batch["prompt_mask"]


@torch.no_grad()
def token_log_probs(model, prompt_ids, prompt_mask, ids, mask):
    """``log q(y_t | x, y_<t)`` of completions ``ids`` under ``model`` (left-padded prompts), 0 where masked."""
    full = torch.cat([prompt_ids, ids], 1)
    attention = torch.cat([prompt_mask.long(), mask.long()], 1)
    logits = model(input_ids=full, attention_mask=attention).logits[:, prompt_ids.shape[1] - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0].masked_fill(~mask, 0.0)


def one_sequence(model, prompt, completion):
    ones = [torch.ones(1, len(x), dtype=torch.bool) for x in (prompt, completion)]
    return token_log_probs(model, torch.tensor([prompt]), ones[0], torch.tensor([completion]), ones[1])[0]


def config(tmp_path, **kw):
    defaults = {"objective": "rkl", "max_steps": 3, "student_do_sample": False, "student_server_timeout": 4.0}
    return tiny.config(tmp_path, **{**defaults, **kw})


def lora_student(arch="llama", seed=1, **lora):
    """A tiny student wrapped with LoRA whose adapters are not zero (B is zero at peft's initialisation, which
    would make the merged weights the base's and hide a wrong merge)."""
    model = wrap_with_lora(getattr(tiny, arch)(1, seed=seed), r=4, alpha=8, **lora)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def train(tmp_path, data, tok, teacher, resume=False, callbacks=None, student=None, **kw):
    student = tiny.llama(1, seed=1) if student is None else student
    trainer = FDistillTrainer(
        model=student,
        teacher_model=teacher,
        args=config(tmp_path, **kw),
        train_dataset=data,
        processing_class=tok,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume or None)
    return [h["loss"] for h in trainer.state.log_history if "loss" in h], student, trainer


# ----------------------------------------------------------------------------- the sync


def test_a_sync_makes_the_servers_log_probabilities_the_students(fake, tok, tmp_path):
    student = tiny.llama(1, seed=1)
    server = client(fake, student, tok, tmp_path)
    prompt, completion = [1, 4, 6], [8, 2, 9, 11]
    local = one_sequence(student, prompt, completion)
    before = torch.tensor(server.score([prompt], [completion], k=1)[0].token_logprobs)
    assert (before - local).abs().max() > 0.1  # the server's own weights are another model's
    assert server.synced_step == -1
    server.sync(student, 0)
    after = torch.tensor(server.score([prompt], [completion], k=1)[0].token_logprobs)
    torch.testing.assert_close(after, local, rtol=sum_rtol(torch.float32, 64), atol=1e-6)
    assert server.synced_step == 0 and fake.reloads == [str(tmp_path / "w" / "step-0")]
    # a step later: the student moved, the server follows; only the newest weights folder is kept
    with torch.no_grad():
        student.model.embed_tokens.weight.mul_(1.5)
    moved = one_sequence(student, prompt, completion)
    assert (moved - local).abs().max() > 1e-3
    server.sync(student, 1)
    after = torch.tensor(server.score([prompt], [completion], k=1)[0].token_logprobs)
    torch.testing.assert_close(after, moved, rtol=sum_rtol(torch.float32, 64), atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["step-1"]
    server.close()
    assert not (tmp_path / "w").exists()  # the run's weights folder goes with the client


def test_tied_embeddings_are_written_once(tok):
    model = tiny.gpt2(1, seed=0)
    assert model.config.tie_word_embeddings
    weights = student_weights(model)
    assert "lm_head.weight" not in weights and "transformer.wte.weight" in weights
    untied = tiny.llama(1, seed=0)
    assert "lm_head.weight" in student_weights(untied)


@pytest.mark.parametrize(
    "arch,lora",
    [("llama", {}), ("gpt2", {}), ("llama", {"use_rslora": True}), ("llama", {"modules_to_save": ["lm_head"]})],
)
def test_a_lora_students_weights_are_the_base_with_the_adapters_merged(arch, lora):
    """What a sync sends for a LoRA student equals peft's own merge (merge_and_unload of a copy) under the base
    checkpoint's names, on Llama and GPT-2 (fan-in/fan-out Conv1D), with rsLoRA and a module_to_save; the trainer's
    weights are not touched (no merge in place)."""
    model = lora_student(arch, **lora)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    merged = copy.deepcopy(model).merge_and_unload()
    expected = student_weights(merged)
    got = student_weights(model)
    assert got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=sum_rtol(torch.float32, 8), atol=1e-6)
    unadapted = student_weights(copy.deepcopy(model).unload())  # the base weights, adapters dropped
    assert sum(not torch.equal(got[k], unadapted[k]) for k in got) >= 4  # the adapted layers changed
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def test_a_lora_student_is_served_through_its_merged_weights(fake, tok, tmp_path):
    """After a sync the server computes the LoRA student (its log-probabilities), and follows its adapters."""
    student = lora_student()
    server = client(fake, student, tok, tmp_path)
    prompt, completion = [1, 4, 6], [8, 2, 9, 11]
    local = one_sequence(student, prompt, completion)
    with student.disable_adapter():
        without = one_sequence(student, prompt, completion)
    assert (local - without).abs().max() > 1e-3  # the adapters matter
    server.sync(student, 0)
    served = torch.tensor(server.score([prompt], [completion], k=1)[0].token_logprobs)
    torch.testing.assert_close(served, local, rtol=sum_rtol(torch.float32, 64), atol=1e-6)
    with torch.no_grad():
        next(p for n, p in student.named_parameters() if "lora_B" in n).mul_(3.0)
    moved = one_sequence(student, prompt, completion)
    server.sync(student, 1)
    served = torch.tensor(server.score([prompt], [completion], k=1)[0].token_logprobs)
    torch.testing.assert_close(served, moved, rtol=sum_rtol(torch.float32, 64), atol=1e-6)
    server.close()


def test_auto_serves_a_lora_student_from_its_merged_base_model(tok, tmp_path, monkeypatch):
    """``student_server="auto"`` saves a LoRA student as the base architecture with the adapters merged (a peft
    save_pretrained would write the adapters alone, which vLLM cannot serve as the model): the folder loads as a
    plain transformers model that computes the LoRA student."""
    from fdistill.lm.served import launch

    started = {}
    monkeypatch.setattr(launch, "vllm_python", lambda python=None: "python")
    monkeypatch.setattr(launch, "start_vllm_server", lambda python, folder, **kw: started.update(folder=folder, **kw))
    model = lora_student()
    launch.launch_student(model, tok, str(tmp_path / "served"), python=None, max_model_len=64, startup_timeout=1.0)
    assert started["dtype"] == "float32" and started["env"] == {"VLLM_SERVER_DEV_MODE": "1"}
    served = transformers.AutoModelForCausalLM.from_pretrained(started["folder"])
    assert not any("lora" in n for n, _ in served.named_parameters())
    prompt, completion = [1, 4, 6], [8, 2, 9, 11]
    torch.testing.assert_close(
        one_sequence(served, prompt, completion),
        one_sequence(model, prompt, completion),
        rtol=sum_rtol(torch.float32, 64),
        atol=1e-6,
    )


def test_other_adapters_than_lora_are_refused(fake, tok, tmp_path):
    from peft import IA3Config, get_peft_model

    dora = wrap_with_lora(tiny.llama(1, seed=1), r=4, alpha=8, use_dora=True)
    with pytest.raises(InputError, match="DoRA adapter 'default'"):
        client(fake, dora, tok, tmp_path)
    ia3 = get_peft_model(tiny.llama(1, seed=1), IA3Config(target_modules=["q_proj"], feedforward_modules=[]))
    with pytest.raises(InputError, match="LoRA adapters only; adapter 'default' is IA3"):
        client(fake, ia3, tok, tmp_path)


# ----------------------------------------------------------------------------- sampling


def test_greedy_through_the_server_equals_in_process_greedy(fake, tok, tmp_path):
    student = tiny.llama(1, seed=1)
    server = client(fake, student, tok, tmp_path)
    server.sync(student, 0)
    prompt_ids, prompt_mask = prompts(tok, 6)
    ids, mask, logprobs = server.sample(prompt_ids, prompt_mask, step=1)
    local_ids, local_mask = sample_completions(student, prompt_ids, prompt_mask, greedy(student, tok))
    assert torch.equal(ids, local_ids) and torch.equal(mask, local_mask)  # ids, padding, EOS: the same conventions
    assert logprobs.dtype == torch.float32 and (logprobs[~mask] == 0).all()
    expected = token_log_probs(student, prompt_ids, prompt_mask, ids, mask)
    torch.testing.assert_close(logprobs, expected, rtol=sum_rtol(torch.float32, 64), atol=1e-5)
    sampled = [b for b in fake.bodies if "seed" in b]  # not the probe after the sync
    assert len(sampled) == 6 and all(b["temperature"] == 0.0 and b["logprobs"] == 0 for b in sampled)


def test_sampled_rows_have_their_own_seeds_fixed_by_run_step_and_row(fake, tok, tmp_path):
    student = tiny.llama(1, seed=1)
    settings = config(tmp_path, student_do_sample=True)
    sampling = rollouts.student_generation_config(student, tok, settings, torch.device("cpu"), None)
    server = client(fake, student, tok, tmp_path, sampling, seed=7)
    prompt_ids, prompt_mask = prompts(tok, 3)
    first = server.sample(prompt_ids, prompt_mask, step=4)
    second = server.sample(prompt_ids, prompt_mask, step=4)  # the step's second request: other seeds
    seeds = [b["seed"] for b in fake.bodies]
    assert len(set(seeds)) == 6
    again = client(fake, student, tok, tmp_path / "again", sampling, seed=7)  # a resumed run: the same draws
    assert all(torch.equal(a, b) for a, b in zip(again.sample(prompt_ids, prompt_mask, step=4), first))
    assert sorted(b["seed"] for b in fake.bodies[6:]) == sorted(seeds[:3])  # sent concurrently: any order
    assert fake.bodies[0]["temperature"] == 1.0 and fake.bodies[0]["top_k"] == 0
    assert second[0].shape[0] == 3


def test_beam_search_and_encoder_decoders_are_refused(fake, tok, tmp_path):
    student = tiny.llama(1, seed=1)
    settings = config(tmp_path, student_do_sample=False, student_num_beams=2)
    beams = rollouts.student_generation_config(student, tok, settings, torch.device("cpu"), None)
    with pytest.raises(InputError, match="no beam search"):
        client(fake, student, tok, tmp_path, beams)
    with pytest.raises(InputError, match="num_beams.*no beam search"):
        config(tmp_path, student_server=fake.url, student_num_beams=2)
    bart = tiny.bart(1, seed=0)
    with pytest.raises(InputError, match="decoder-only"):
        client(fake, bart, tok, tmp_path, greedy(bart, tok))


# ----------------------------------------------------------------------------- training


def test_training_through_the_server_takes_the_in_process_steps(fake, data, tok, teacher, tmp_path):
    """Greedy samples are the same either way, so every loss and the final weights are bit-identical."""
    local, local_student, _ = train(tmp_path / "local", data, tok, teacher, max_steps=4)
    served, served_student, trainer = train(
        tmp_path / "served", data, tok, teacher, max_steps=4, student_server=fake.url
    )
    assert served == local
    for a, b in zip(served_student.parameters(), local_student.parameters()):
        assert torch.equal(a, b)
    assert len(fake.reloads) == 4  # before step 1, after steps 1-3 (none after the last)
    assert trainer.student_server.closed and trainer.student_server.synced_step == 3
    # every step's samples were drawn by the step's own weights (the first sync comes before the policy is read):
    # fresh, so no importance weight was formed
    assert not [h for h in trainer.state.log_history if "rollout/staleness" in h]
    assert len([b for b in fake.bodies if "seed" in b]) == 4 * 4  # every student sample came from the server


def test_a_lora_student_trains_through_the_server_as_in_process(fake, data, tok, teacher, tmp_path):
    """Greedy samples of the merged weights are the LoRA student's own: the losses and final adapters are the
    in-process run's, bit for bit."""
    local, local_student, _ = train(tmp_path / "local", data, tok, teacher, max_steps=3, student=lora_student())
    served, served_student, _ = train(
        tmp_path / "served", data, tok, teacher, max_steps=3, student=lora_student(), student_server=fake.url
    )
    assert served == local and len(fake.reloads) == 3
    for (n, a), b in zip(served_student.named_parameters(), local_student.parameters()):
        assert torch.equal(a, b), n


def test_sync_every_k_steps(fake, data, tok, teacher, tmp_path):
    train(tmp_path, data, tok, teacher, max_steps=5, student_server=fake.url, student_sync_every=2)
    assert [Path(p).name for p in fake.reloads] == ["step-0", "step-2", "step-4"]


@pytest.mark.parametrize(
    "kw,synced",
    [
        (dict(steps_per_generation=2), ["step-0", "step-2", "step-4"]),
        (dict(num_iterations=2, student_sync_every=3), ["step-0", "step-4"]),
        (dict(num_iterations=3), ["step-0", "step-3"]),
    ],
)
def test_weights_go_over_only_before_a_draw(fake, data, tok, teacher, tmp_path, kw, synced):
    """With generation groups the server draws at a group's first step only: it is synced at the end of the step
    before one (when a step due by student_sync_every has come since the last sync), never between."""
    train(tmp_path, data, tok, teacher, max_steps=6, student_server=fake.url, student_do_sample=True, **kw)
    assert [Path(p).name for p in fake.reloads] == synced


# ----------------------------------------------------------------------------- failures


def test_a_server_gone_mid_run_names_the_step_and_checkpoint_and_the_run_resumes(fake, data, tok, teacher, tmp_path):
    kw = dict(max_steps=4, save_strategy="steps", save_steps=1, student_do_sample=True, data_seed=0)
    fake.die_after = 1 + 2 * 4  # the probe after the first sync, the samples of steps 1 and 2
    out = tmp_path / "cut"
    with pytest.raises(StudentServerError) as error:
        train(out, data, tok, teacher, student_server=fake.url, **kw)
    message = str(error.value)
    assert re.search(r"^training step 3: the student server .* did not answer .*checkpoint-2, is whole", message)
    assert "\n" not in message
    with FakeVLLM(tiny.llama(1, seed=9, init=0.15), tok, name="student") as second:
        resumed, resumed_student, _ = train(out, data, tok, teacher, resume=True, student_server=second.url, **kw)
    with FakeVLLM(tiny.llama(1, seed=9, init=0.15), tok, name="student") as third:
        whole, whole_student, _ = train(tmp_path / "whole", data, tok, teacher, student_server=third.url, **kw)
    assert resumed == whole  # same seeds per (step, row), the server synced to the checkpoint's weights
    for a, b in zip(resumed_student.parameters(), whole_student.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fault", ["dev_mode_off", "reload_500"])
def test_a_refused_sync_is_one_error_naming_the_step(fake, data, tok, teacher, tmp_path, fault):
    if fault == "dev_mode_off":
        fake.dev_mode = False
        expected = r"training step 1: .*/collective_rpc.*HTTP 404.*VLLM_SERVER_DEV_MODE=1.*no checkpoint was saved yet"
    else:
        original = fake.collective_rpc
        fake.collective_rpc = lambda body: (500, {"error": {"message": "Worker failed with error 'KeyError'"}})
        expected = r"training step 1: the student server .* did not answer /collective_rpc .*HTTP 500.*KeyError"
    with pytest.raises(StudentServerError, match=expected) as error:
        train(tmp_path, data, tok, teacher, student_server=fake.url)
    assert "\n" not in str(error.value)
    if fault == "reload_500":
        fake.collective_rpc = original


@pytest.mark.parametrize(
    "fault",
    [
        "positive_logprobs",
        "nan_logprob",
        "short_positions",
        "zero_choices",
        "missing_choices",
        "malformed_json",
        "html_page",
        "error_object",
        "unavailable",
        "dropped",
    ],
)
def test_a_bad_answer_is_one_error_naming_the_step(fake, data, tok, teacher, tmp_path, fault):
    fake.fault = fault
    with pytest.raises(StudentServerError, match=r"^training step 1: the student server") as error:
        train(tmp_path, data, tok, teacher, student_server=fake.url, student_do_sample=True)
    assert "\n" not in str(error.value)


def test_another_tokenizer_vocabulary_or_model_is_refused(data, tok, teacher, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = tok.get_vocab()
    words = sorted(vocab, key=vocab.get)
    other = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words[:4] + words[4:][::-1])}, unk_token="<unk>"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=other, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    with FakeVLLM(tiny.llama(1, seed=9), other) as fake:
        with pytest.raises(InputError, match="student server's tokenizer .* differs from the student's"):
            train(tmp_path / "tok", data, tok, teacher, student_server=fake.url)
    # a served folder on this machine with another vocabulary / shape: both named
    folder = tmp_path / "served"
    tiny.llama(2, seed=0, hidden=48).save_pretrained(folder)
    with FakeVLLM(tiny.llama(1, seed=9), tok, root=str(folder)) as fake:
        with pytest.raises(
            InputError, match=r"hidden_size=48, num_hidden_layers=2.*; the student has hidden_size=32, "
        ):
            train(tmp_path / "cfg", data, tok, teacher, student_server=fake.url)
    # a server of another shape, not inspectable: the probe after the first sync tells
    with FakeVLLM(tiny.llama(2, seed=9), tok) as fake:
        with pytest.raises(StudentServerError, match=r"^training step 1: .*does not compute the trainer's student"):
            train(tmp_path / "probe", data, tok, teacher, student_server=fake.url)


def test_settings(tmp_path, fake):
    with pytest.raises(InputError, match="objective 'kl' draws no student samples"):
        config(tmp_path, objective="kl", student_server="auto")
    with pytest.raises(InputError, match="student_sync_every=0"):
        config(tmp_path, student_sync_every=0)
    with pytest.raises(InputError, match="student_server_python.*belongs to student_server"):
        config(tmp_path, student_server_python="/x/python")
    with pytest.raises(InputError, match=r"student_server='http://host:port\?t=\*\*\*' is not valid"):
        config(tmp_path, student_server="http://host:port?t=s3cret")


def test_auto_without_the_vllm_virtualenv_names_the_install_command(data, tok, teacher, tmp_path):
    with pytest.raises(InputError, match=r"`bash scripts/install_vllm.sh`"):
        train(tmp_path, data, tok, teacher, student_server="auto", student_server_python=str(tmp_path / "none"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("when", ["end", "train_error", "init_error", "interrupt"])
def test_auto_stops_its_server_by_pid_on_every_path(fake, data, tok, teacher, tmp_path, monkeypatch, when):
    """The launcher is replaced by a stand-in process (a real vLLM start: tests/lm/test_student_server_vllm.py)
    that answers through the fake: its PID is gone after training, an error in training, an error while the
    trainer is made, and a KeyboardInterrupt."""
    launched = []

    def launch(model, tokenizer, folder, **kw):
        process = subprocess.Popen(["sleep", "300"], start_new_session=True)
        launched.append(LocalServer(fake.url, process))
        return launched[-1]

    monkeypatch.setattr("fdistill.lm.served.launch.launch_student", launch)
    kw = dict(student_server="auto", student_server_python="/unused")
    if when == "init_error":
        fake.tokenizer = copy.deepcopy(tok)
        fake.tokenize = lambda body: {"tokens": [1, 2, 3]}
        with pytest.raises(InputError, match="differs"):
            train(tmp_path, data, tok, teacher, **kw)
    elif when == "train_error":
        fake.die_after = 1 + 4  # the probe, step 1's samples
        with pytest.raises(StudentServerError, match="training step 2"):
            train(tmp_path, data, tok, teacher, **kw)
    elif when == "interrupt":
        original = StudentServer.sample

        def interrupted(self, *a, **k):
            raise KeyboardInterrupt

        monkeypatch.setattr(StudentServer, "sample", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(tmp_path, data, tok, teacher, **kw)
        monkeypatch.setattr(StudentServer, "sample", original)
    else:
        train(tmp_path, data, tok, teacher, **kw)
    (handle,) = launched
    assert handle.process.poll() == -signal.SIGTERM and not _pid_alive(handle.pid)


# ----------------------------------------------------------------------------- secrets


def test_secrets_are_never_written(fake, data, tok, teacher, tmp_path, monkeypatch, caplog):
    """The key (environment) and a URL's query reach the server and nothing else: not the checkpoints, the run
    record, the saved arguments, the logs (a retried request is logged) or an error."""
    key, query = "k3y-s3cret-student", "q-s3cret-token"
    fake.api_key = key
    monkeypatch.setenv(STUDENT_API_KEY_ENV, key)
    url = f"{fake.url}?token={query}"
    fake.fail_next = [503]  # the first request is retried: a logged warning naming the server
    with caplog.at_level("INFO"):
        _, _, trainer = train(
            tmp_path / "run", data, tok, teacher, student_server=url, save_strategy="steps", save_steps=1
        )
        fake.fault = "unavailable"
        with pytest.raises(StudentServerError) as error:
            train(tmp_path / "failed", data, tok, teacher, student_server=url, student_server_timeout=2.0)
    assert "attempt 2 of" in caplog.text and "HTTP 503" in str(error.value)
    assert any(h.get("Authorization") == f"Bearer {key}" for h in fake.headers)  # the server got them
    assert any(query in q for q in fake.queries)
    texts = [str(error.value), caplog.text, repr(trainer.args), str(trainer.args.to_dict())]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "fdistill_run.json" or "record" in p.name for p in files) or files
    texts += [p.read_bytes().decode("latin-1") for p in files]
    assert len(files) > 10 and not any(s in t for s in (key, query) for t in texts)


def test_overlap_and_reuse_through_the_real_client(fake, data, tok, teacher, tmp_path):
    """rollout_overlap and steps_per_generation with the real StudentServer over HTTP: the next group is drawn in
    the background by the weights of the last sync (staleness 1, reweighted by the server's log-probabilities), and
    nothing is left drawing after train()."""
    kw = dict(max_steps=4, student_do_sample=True, data_seed=0, rollout_overlap=True)
    losses, _, trainer = train(tmp_path / "overlap", data, tok, teacher, student_server=fake.url, **kw)
    logged = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    # two steps an epoch here: the first step of each epoch draws at once (no prefetch across the epoch's end)
    assert [logged[s]["rollout/staleness"] for s in sorted(logged)] == [0, 1, 0, 1]
    assert all(0 < logged[s]["rollout/ess"] <= 1 for s in logged) and len(losses) == 4
    assert trainer.student_server.closed and trainer._groups.pending is None and not trainer._groups.queue
    reused, _, trainer = train(
        tmp_path / "k2",
        data,
        tok,
        teacher,
        student_server=fake.url,
        max_steps=4,
        student_do_sample=True,
        steps_per_generation=2,
    )
    logged = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    assert [logged[s].get("rollout/staleness", 0) for s in sorted(logged)] == [0, 1, 0, 1]
    # num_iterations=2: steps 2 and 4 train on the samples of steps 1 and 3, weighted by the server's log-probs
    asked = {}
    for name, kw in (("k2", dict(steps_per_generation=2)), ("mu2", dict(num_iterations=2))):
        before = len([b for b in fake.bodies if "seed" in b])
        _, _, trainer = train(
            tmp_path / f"{name}-count",
            data,
            tok,
            teacher,
            student_server=fake.url,
            max_steps=4,
            student_do_sample=True,
            **kw,
        )
        asked[name] = len([b for b in fake.bodies if "seed" in b]) - before
    logged = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    assert [logged[s]["rollout/staleness"] for s in sorted(logged)] == [0, 1, 0, 1]
    assert 0 < logged[2]["rollout/ess"] <= 1 and trainer.student_server.closed
    assert asked["mu2"] * 2 == asked["k2"] > 0  # half the prompts drawn for: each sample trains two steps
