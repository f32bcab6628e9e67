"""Student rollouts through a real vLLM server (issue 24, items 1-2): marked ``vllm``, not in the default run.

    bash scripts/install_vllm.sh && python -m pytest -m vllm tests/lm/test_student_server_vllm.py   # .ci/run's step

The proof that the server samples from the current student: during a short run with ``student_server``, after the
syncs of several steps the server's log-probabilities of fixed completions equal the trainer's student's to
float32 tolerance (vLLM's CPU kernels vs PyTorch: measured ~1e-5) and differ from the initial weights'; greedy
decoding draws the same completions through the server as in process; ``"auto"`` starts a server and stops it (its
PID gone) after training and after an error; a server killed mid-run stops training with the step and the last
checkpoint named, and the run resumed with a new server ends where an uninterrupted run does.

A LoRA (peft) student is served the same way, through its merged weights. Three server starts of ~1 minute each on
2 CPU cores (one served by URL for the module, two ``"auto"``). The served
model is a tiny random float32 Llama (2 layers, hidden 256 — at hidden 64, head size 16, the CPU engine failed on
its first request here; the 25-token test tokenizer of :mod:`fdistill.testing`), saved with
save_pretrained; the server starts with VLLM_SERVER_DEV_MODE=1 (its /collective_rpc reloads the weights).
"""

import os

import pytest
import torch
import transformers
from transformers import TrainerCallback

from fdistill import FDistillTrainer
from fdistill import testing as tiny
from fdistill.lm import rollouts
from fdistill.lm.data import DistillCollator
from fdistill.lm.sampling import sample_completions
from fdistill.lm.served.launch import default_python, local_vllm_server
from fdistill.lm.served.student import StudentServerError

pytestmark = pytest.mark.vllm
transformers.logging.set_verbosity_error()

PYTHON = default_python()
ATOL = 2e-4  # float32 vLLM vs float32 PyTorch log-probabilities (measured ~1e-5 on this model)
START_TIMEOUT = 300.0  # seconds one server may take to answer (measured: ~60-80 s on 2 busy cores)


def student():
    return tiny.llama(2, seed=1, hidden=256, init=0.1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    if not os.path.exists(PYTHON):
        pytest.skip(f"no vLLM virtualenv at {PYTHON}: run scripts/install_vllm.sh (or set FDISTILL_VLLM_PYTHON)")
    path = tmp_path_factory.mktemp("tiny-student")
    tiny.llama(2, seed=5, hidden=256, init=0.1).save_pretrained(path)  # other weights: only a sync makes it the student
    tiny.tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with local_vllm_server(
        PYTHON,
        str(folder),
        max_model_len=128,
        max_logprobs=20,
        startup_timeout=START_TIMEOUT,
        log_path=str(log),
        env={"VLLM_SERVER_DEV_MODE": "1"},
    ) as handle:
        yield handle


@pytest.fixture(scope="module")
def teacher():
    return tiny.llama(2, seed=0, init=0.15).eval()


@pytest.fixture(scope="module")
def data(teacher, tok):
    return tiny.dataset(8, seed=3, teacher=teacher, tok=tok, max_new_tokens=6)


def config(tmp_path, **kw):
    defaults = {"objective": "tvd", "max_steps": 4, "student_server_timeout": START_TIMEOUT, "data_seed": 0}
    return tiny.config(tmp_path, **{**defaults, **kw})


def make(tmp_path, data, tok, teacher, model=None, callbacks=None, **kw):
    return FDistillTrainer(
        model=model or student(),
        teacher_model=teacher,
        args=config(tmp_path, **kw),
        train_dataset=data,
        processing_class=tok,
        callbacks=callbacks,
    )


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@torch.no_grad()
def completion_log_probs(model, sequences, prompt_length):
    model.eval()
    log_p = torch.log_softmax(model(torch.tensor(sequences)).logits.float(), -1)
    ids = torch.tensor(sequences)[:, prompt_length:]
    return log_p[:, prompt_length - 1 : -1].gather(-1, ids[..., None])[..., 0]


class _Probe(TrainerCallback):
    """At the start of each step (after the previous step's sync): the server's and the student's log-probabilities
    of fixed completions, and the initial weights'."""

    def __init__(self, initial):
        self.initial, self.trainer, self.seen = initial, None, []
        self.sequences = [[1, 4, 6, 8, 2, 9, 11, 5], [1, 7, 5, 10, 12, 13, 6, 14]]

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        server = self.trainer.student_server
        if state.global_step == 0:
            return
        assert server.synced_step == state.global_step
        scored = server.score([s[:3] for s in self.sequences], [s[3:] for s in self.sequences], k=1)
        served = torch.tensor([s.token_logprobs for s in scored])
        was = model.training
        local = completion_log_probs(model, self.sequences, 3)
        model.train(was)
        self.seen.append((state.global_step, served, local, completion_log_probs(self.initial, self.sequences, 3)))


def train_and_probe(server, data, tok, teacher, tmp_path, model):
    """Train ``model`` through ``server``; after the syncs of steps 1-3 the server's log-probabilities of fixed
    completions are the student's, and not the initial weights'. Returns the trainer."""
    probe = _Probe(student())
    trainer = make(tmp_path, data, tok, teacher, model, callbacks=[probe], student_server=server.url)
    probe.trainer = trainer
    trainer.train()
    assert [s for s, *_ in probe.seen] == [1, 2, 3]
    for step, served, local, initial in probe.seen:
        torch.testing.assert_close(served, local, rtol=0, atol=ATOL)
        assert (served - initial).abs().max() > 50 * ATOL, step  # the weights moved, and the server with them
    return trainer


def test_the_server_holds_the_current_student_after_each_sync(server, data, tok, teacher, tmp_path):
    trainer = train_and_probe(server, data, tok, teacher, tmp_path, student())
    print("sync seconds:", [round(s, 3) for s in trainer.student_server.sync_seconds])


def test_a_lora_student_is_served_through_its_merged_weights(server, data, tok, teacher, tmp_path):
    """A LoRA (peft) student: each sync sends the base weights with the adapters merged, and after the syncs of
    steps 1-3 the server's log-probabilities are the LoRA student's (the initial weights': the base model's)."""
    from fdistill.lm.student import wrap_with_lora

    model = wrap_with_lora(student(), r=4, alpha=8)
    with torch.no_grad():  # adapters that are not zero from the start (peft starts B at 0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(2))
    train_and_probe(server, data, tok, teacher, tmp_path, model)


def test_greedy_completions_are_the_same_through_the_server(server, data, tok, teacher, tmp_path):
    model = student()
    trainer = make(tmp_path, data, tok, teacher, model, student_server=server.url, student_do_sample=False)
    batch = DistillCollator(tok, is_encoder_decoder=False)([{"prompt": p} for p in tiny.prompts(8, seed=11)])
    trainer.sync_student_server(0)
    ids, mask, logprobs = trainer.student_server.sample(batch["prompt_ids"], batch["prompt_mask"], step=1)
    greedy = rollouts.greedy_config(model, tok, 6, None)
    local_ids, local_mask = sample_completions(model, batch["prompt_ids"], batch["prompt_mask"], greedy)
    assert torch.equal(ids, local_ids) and torch.equal(mask, local_mask)
    assert (logprobs[~mask] == 0).all() and (logprobs[mask] < 0).all()
    trainer.close_student_server()
    # and training: the same steps as in process, up to the two float32 implementations' argmax ties (none here)
    served = make(tmp_path / "served", data, tok, teacher, student_server=server.url, student_do_sample=False)
    served.train()
    local = make(tmp_path / "local", data, tok, teacher, student_do_sample=False)
    local.train()
    assert losses(served) == losses(local)


class _RaiseAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("injected failure")


class _KillAt(TrainerCallback):
    def __init__(self, handle, step):
        self.handle, self.step = handle, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.handle.kill()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_auto_stops_its_server_and_a_killed_server_resumes(server, folder, data, tok, teacher, tmp_path):
    kw = dict(save_strategy="steps", save_steps=1, max_steps=4)
    # "auto": started here, its PID gone after an error in training
    failing = make(tmp_path / "failing", data, tok, teacher, callbacks=[_RaiseAt(1)], student_server="auto", **kw)
    pid = failing.student_server.launched.pid
    assert not _gone(pid)
    with pytest.raises(RuntimeError, match="injected failure"):
        failing.train()
    assert _gone(pid)
    # the module's server killed after step 2: one error naming the step and the last checkpoint
    whole = make(tmp_path / "whole", data, tok, teacher, student_server=server.url, **kw)
    whole.train()
    cut = tmp_path / "cut"
    killed = make(cut, data, tok, teacher, callbacks=[_KillAt(server, 2)], student_server=server.url, **kw)
    with pytest.raises(StudentServerError, match=r"^training step 2: .*checkpoint-1, is whole") as error:
        killed.train()  # the sync after step 2 finds no server (checkpoint-2 would be saved after it)
    assert "\n" not in str(error.value)
    # resumed with a new server ("auto"): the same steps as the uninterrupted run; the server gone at the end
    resumed = make(cut, data, tok, teacher, student_server="auto", **kw)
    pid = resumed.student_server.launched.pid
    resumed.train(resume_from_checkpoint=True)
    assert _gone(pid)
    assert losses(resumed) == pytest.approx(losses(whole), rel=1e-5)
    for a, b in zip(resumed.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
