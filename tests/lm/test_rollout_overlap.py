"""Generation overlapped with training (``rollout_overlap``) against an in-test fake student server.

The fake has the interface of `fdistill.lm.served.student.StudentServer` (``synced_step``, ``sample``, ``submit``
returning a Future, ``sync``, ``close``): it samples with its own copy of the student, in a one-thread executor, by
ancestral sampling seeded by the step it is asked for, so its samples are a function of (prompts, step, weights).
A ``lag`` makes it serve the weights of ``lag`` syncs ago: a non-overlapped run against a fake lagging one sync must
take exactly the overlapped run's steps (both score samples of the student one step old, with the same weights).
"""

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import transformers
from transformers import TrainerCallback

from fdistill import FDistillTrainer
from fdistill import testing as tiny
from fdistill.errors import RolloutError
from fdistill.lm.data import completion_mask, score_completions
from fdistill.lm.importance import sampling_logprobs

transformers.logging.set_verbosity_error()
MAX_NEW = 6


class FakeStudentServer:
    def __init__(self, model, eos: int, lag: int = 0, fail_at: int | None = None):
        self.model, self.eos, self.lag, self.fail_at = copy.deepcopy(model).eval(), eos, lag, fail_at
        self.weights: dict[int, dict] = {}
        self.executor = ThreadPoolExecutor(1)
        self.futures = []
        self.lock = threading.Lock()
        self.closed, self.launched = False, None  # the rest of StudentServer's interface the trainer reads

    @property
    def synced_step(self) -> int:
        steps = sorted(self.weights)
        return steps[max(0, len(steps) - 1 - self.lag)] if steps else -1

    def sync(self, model, step: int) -> None:
        self.weights[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def sample(self, prompt_ids, prompt_mask, *, step: int, stream: str = "train"):
        if step == self.fail_at:
            raise ConnectionError("the fake server went away")
        with self.lock:
            self.model.load_state_dict(self.weights[self.synced_step])
            g = torch.Generator().manual_seed(1000 + step)
            ids, mask = prompt_ids, prompt_mask.long()
            for _ in range(MAX_NEW):
                position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, -1]
                token = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=g)
                ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
            completions = ids[:, prompt_ids.shape[1] :]
            done = completion_mask(completions, [self.eos])
            length = int(done.sum(-1).max())  # as generate: stop when every row has ended
            completions, done = completions[:, :length].masked_fill(~done[:, :length], self.eos), done[:, :length]
            logits, labels, _ = score_completions(
                self.model, prompt_ids, prompt_mask, completions, done, pad_token_id=0
            )
            return completions, done, sampling_logprobs(logits, labels, 1.0).float()

    def submit(self, prompt_ids, prompt_mask, *, step: int, stream: str = "train"):
        future = self.executor.submit(self.sample, prompt_ids.clone(), prompt_mask.clone(), step=step)
        self.futures.append(future)
        return future

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.closed = True


class Syncs(TrainerCallback):
    """What the student server's wiring does (helper r24-server): sync before the first generation and after every
    optimizer step."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kw):
        self.trainer.student_server.sync(self.trainer.model, state.global_step)

    def on_step_end(self, args, state, control, **kw):
        self.trainer.student_server.sync(self.trainer.model, state.global_step)


class Served(FDistillTrainer):
    """A trainer whose in-process student sampler asks the (fake) server, as the server wiring's `_samplers` does."""

    def generate_student_samples(self, prompt_ids, prompt_mask):
        return self.student_server.sample(prompt_ids, prompt_mask, step=self.state.global_step + 1)


@pytest.fixture(scope="module")
def teacher():
    return tiny.llama(2, seed=0, init=0.15)


@pytest.fixture(scope="module")
def data(tok, teacher):
    return tiny.dataset(32, seed=0, teacher=teacher, tok=tok)


def trainer(tok, teacher, data, out, *, overlap: bool, lag: int = 0, fail_at=None, seed=1, **kw):
    settings = dict(objective="tvd", max_steps=5, max_new_tokens=MAX_NEW, per_device_train_batch_size=4)
    args = tiny.config(out, **{**settings, **kw})
    args.rollout_overlap = overlap  # set after the checks: this branch has no student_server setting to satisfy them
    student = tiny.llama(1, seed=seed)
    t = Served(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok)
    t.student_server = FakeStudentServer(student, tok.eos_token_id, lag=lag, fail_at=fail_at)
    t.add_callback(Syncs(t))
    return t


def logs(t) -> dict[int, dict]:
    return {h["step"]: h for h in t.state.log_history if "loss" in h}


def test_overlap_takes_the_steps_of_a_server_one_sync_behind(tok, teacher, data, tmp_path):
    overlapped = trainer(tok, teacher, data, tmp_path / "a", overlap=True)
    overlapped.train()
    lagging = trainer(tok, teacher, data, tmp_path / "b", overlap=False, lag=1)
    lagging.train()
    a, b = logs(overlapped), logs(lagging)
    assert [a[s]["rollout/staleness"] for s in sorted(a)] == [0, 1, 1, 1, 1]  # the first step draws at once
    assert [a[s]["loss"] for s in sorted(a)] == [b[s]["loss"] for s in sorted(b)]
    assert all(0 < a[s]["rollout/ess"] <= 1 for s in a) and a[3]["rollout/ess"] < 1
    for (name, x), y in zip(overlapped.model.named_parameters(), lagging.model.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)
    # no background draw outlives train(): every future handed out is done, none is pending
    assert overlapped.student_server.futures and all(f.done() for f in overlapped.student_server.futures)
    assert overlapped._groups.pending is None and not overlapped._groups.queue
    for t in (overlapped, lagging):
        t.student_server.close()


def test_overlap_interrupted_then_resumed_ends_as_uninterrupted(tok, teacher, data, tmp_path):
    """A checkpoint cancels the background draw (never saved): after it both runs draw the next step at once. The
    interrupted run dies at step 4 (its background draw fails); resumed from its checkpoint it ends as the
    uninterrupted run does, bit for bit."""
    kw = dict(save_strategy="steps", save_steps=2)
    full = trainer(tok, teacher, data, tmp_path / "a", overlap=True, **kw)
    full.train()
    interrupted = trainer(tok, teacher, data, tmp_path / "b", overlap=True, fail_at=4, **kw)
    with pytest.raises(RolloutError, match="training step 4"):
        interrupted.train()
    assert interrupted.state.global_step == 3
    resumed = trainer(tok, teacher, data, tmp_path / "b", overlap=True, seed=5, **kw)
    resumed.train(resume_from_checkpoint=True)  # the newest complete checkpoint: checkpoint-2
    for (name, x), y in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)
    a, b = logs(full), logs(resumed)
    assert [a[s]["loss"] for s in (3, 4, 5)] == [b[s]["loss"] for s in (3, 4, 5)]
    assert a[3]["rollout/staleness"] == 0 and a[4]["rollout/staleness"] == 1
    for t in (full, interrupted, resumed):
        t.student_server.close()


def test_a_failed_background_draw_is_one_error_naming_the_step(tok, teacher, data, tmp_path):
    t = trainer(tok, teacher, data, tmp_path / "a", overlap=True, fail_at=3)
    with pytest.raises(RolloutError, match=r"training step 3: .*ConnectionError: the fake server went away"):
        t.train()
    assert t.state.global_step == 2
    assert all(f.done() for f in t.student_server.futures) and t._groups.pending is None
    t.student_server.close()
    assert not [th for th in threading.enumerate() if th.name.startswith("ThreadPoolExecutor") and th.is_alive()]
