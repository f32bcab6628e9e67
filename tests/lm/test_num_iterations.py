"""``num_iterations`` (μ): each step's samples trained on at the μ − 1 steps after it, the teacher's numbers kept
from the first pass; on tiny in-process models. The sampler that repeats the steps, the batches and weights every
step sees, the draws and teacher forwards it saves, the kept numbers against recomputed ones, resume, refusals."""

import pytest
import torch
import transformers

from fdistill import FDistillTrainer
from fdistill import testing as tiny
from fdistill.errors import InputError, RolloutError
from fdistill.lm.rollouts import PlannedStep, RepeatedSteps, RolloutGroups
from tests.tolerances import SAFETY

transformers.logging.set_verbosity_error()


class Counting(FDistillTrainer):
    """Records the prompts each training micro-batch scores, and counts student draws and teacher forwards."""

    def __init__(self, *args, keep_teacher: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, list]] = []
        self.draws = 0
        self.teacher_scorings = 0
        self.keep_teacher = keep_teacher

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            self.seen.append((self.state.global_step, inputs["prompt_ids"].tolist()))
        return super().compute_loss(model, inputs, *args, **kwargs)

    def generate_student_samples(self, *args, **kwargs):
        self.draws += 1
        return super().generate_student_samples(*args, **kwargs)

    def _score_teacher(self, *args, **kwargs):
        if self.model.training:
            self.teacher_scorings += 1
        return super()._score_teacher(*args, **kwargs)

    def _kept_teacher(self):
        return super()._kept_teacher() if self.keep_teacher else None


@pytest.fixture(scope="module")
def teacher():
    return tiny.llama(2, seed=0, init=0.15)


@pytest.fixture(scope="module")
def data(tok, teacher):
    return tiny.dataset(16, seed=0, teacher=teacher, tok=tok)


def run(tok, teacher, out, data, resume=None, keep_teacher=True, **kw):
    settings = dict(objective="tvd", max_steps=8, per_device_train_batch_size=4, num_iterations=2)
    trainer = Counting(
        model=tiny.llama(1, seed=1),
        teacher_model=teacher,
        args=tiny.config(out, **{**settings, **kw}),
        train_dataset=data,
        processing_class=tok,
        keep_teacher=keep_teacher,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def logs(trainer) -> dict[int, dict]:
    return {h["step"]: h for h in trainer.state.log_history if "loss" in h}


def by_step(trainer) -> dict[int, list]:
    steps: dict[int, list] = {}
    for step, prompts in trainer.seen:
        steps.setdefault(step, []).extend(prompts)
    return steps


# ----------------------------------------------------------------------------- the sampler


def test_the_sampler_gives_each_steps_examples_mu_times_in_a_row():
    sampler = RepeatedSteps(10, block=4, repeats=3, shuffle=True, seed=7)
    order = list(sampler)
    assert len(order) == len(sampler) == 2 * 4 * 3 and sampler.left_out == 2
    blocks = [order[i : i + 4] for i in range(0, len(order), 4)]
    assert blocks[0] == blocks[1] == blocks[2] and blocks[3] == blocks[4] == blocks[5]
    assert not set(blocks[0]) & set(blocks[3]) and len(set(blocks[0]) | set(blocks[3])) == 8
    assert list(sampler) == order  # the same epoch: the same order (what resuming skips through)
    sampler.set_epoch(1)
    assert list(sampler) != order and len(list(sampler)) == 24  # a new permutation every epoch
    assert list(RepeatedSteps(8, 4, 2, shuffle=False, seed=0)) == [0, 1, 2, 3] * 2 + [4, 5, 6, 7] * 2


def test_a_training_set_smaller_than_one_step_is_refused():
    with pytest.raises(InputError, match="3 examples, fewer than one optimizer step's 4"):
        RepeatedSteps(3, block=4, repeats=2, shuffle=True, seed=0)


def test_a_replay_whose_batches_differ_is_refused():
    """The group logic checks that a replayed step really repeats its origin's micro-batches."""
    ones, twos = {"prompt_ids": torch.ones(2, 3)}, {"prompt_ids": 2 * torch.ones(2, 3)}
    steps = iter([([ones], 2), ([twos], 2)])
    groups = RolloutGroups(1, iterations=2)
    with pytest.raises(RolloutError, match="training step 2: num_iterations=2 .* not the ones"):
        groups.next_step(object(), 1, lambda n: next(steps), step=0, chunk=1, max_steps=10)
    steps = iter([([ones], 2), ([{"prompt_ids": torch.ones(2, 3)}], 2)])
    first = RolloutGroups(1, iterations=2).next_step(object(), 1, lambda n: next(steps), 0, 1, 10)
    assert isinstance(first, PlannedStep) and first.origin is None


# ----------------------------------------------------------------------------- training


def test_each_step_is_trained_mu_times_with_one_draw_and_one_teacher_scoring(tok, teacher, data, tmp_path):
    once = run(tok, teacher, tmp_path / "mu1", data, num_iterations=1)
    twice = run(tok, teacher, tmp_path / "mu2", data)
    steps = by_step(twice)
    assert [steps[s] == steps[s + 1] for s in range(0, 8, 2)] == [True] * 4  # (1, 2), (3, 4), ... repeat
    assert len({str(steps[s]) for s in range(0, 8, 2)}) == 4
    examples = sorted(str(p) for s in range(0, 8, 2) for p in steps[s])
    assert examples == sorted(str(p) for p in by_step(once)[0] + by_step(once)[1] + by_step(once)[2] + by_step(once)[3])
    assert (once.draws, twice.draws) == (8, 4)  # 8 steps each: half the student draws
    assert (once.teacher_scorings, twice.teacher_scorings) == (8, 4)  # and half the teacher forwards
    log = logs(twice)
    assert [log[s]["rollout/staleness"] for s in range(1, 9)] == [0, 1] * 4
    assert all(log[s]["rollout/ess"] == 1 for s in (1, 3, 5, 7))
    assert all(0 < log[s]["rollout/ess"] < 1 for s in (2, 4, 6, 8))  # the student moved: unequal weights
    assert not twice._groups.queue  # nothing left after train()


@pytest.mark.parametrize(
    "kw", [dict(gradient_accumulation_steps=2, per_device_train_batch_size=2), dict(steps_per_generation=2)]
)
def test_the_kept_teacher_numbers_train_exactly_as_a_fresh_teacher_forward(tok, teacher, data, tmp_path, kw):
    """Keeping the teacher's numbers is the same run as recomputing them every pass (with several micro-batches a
    step, and with groups of k = 2 steps): the same losses and weights, bit for bit."""
    kept = run(tok, teacher, tmp_path / "kept", data, **kw)
    fresh = run(tok, teacher, tmp_path / "fresh", data, keep_teacher=False, **kw)
    assert kept.teacher_scorings * 2 == fresh.teacher_scorings
    a, b = logs(kept), logs(fresh)
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in b]
    for (name, x), y in zip(kept.model.named_parameters(), fresh.model.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_the_recorded_denominator_is_the_drawing_students_policy(tok, teacher, data, tmp_path):
    """The first pass records the fresh samples' log-probabilities from its loss forward; they equal the separate
    eval-mode forward that stale groups take (float32 rounding: the two forwards sum in other orders)."""
    checked = []

    class Checking(Counting):
        def _keep_for_next_passes(self, teacher_scores, student):
            planned, index = self._slot
            fresh = planned.samples[index]["student"].logprobs is None
            super()._keep_for_next_passes(teacher_scores, student)
            if fresh:
                drawn = planned.samples[index]
                again = self._with_policy_logprobs(
                    planned.batches[index], {"student": drawn["student"]._replace(logprobs=None)}
                )
                eps = torch.finfo(torch.float32).eps
                torch.testing.assert_close(
                    drawn["student"].logprobs, again["student"].logprobs, rtol=0, atol=SAFETY * 64 * eps
                )
                checked.append(index)

    trainer = Checking(
        model=tiny.llama(1, seed=1),
        teacher_model=teacher,
        args=tiny.config(tmp_path, objective="rkl", max_steps=4, per_device_train_batch_size=4, num_iterations=2),
        train_dataset=data,
        processing_class=tok,
    )
    trainer.train()
    assert len(checked) == 2


def test_resume_inside_a_run_of_repeats_draws_fresh_and_loses_no_data(tok, teacher, data, tmp_path):
    kw = dict(save_strategy="steps", save_steps=3)
    full = run(tok, teacher, tmp_path / "a", data, **kw)
    resumed = run(tok, teacher, tmp_path / "b", data, resume=str(tmp_path / "a" / "checkpoint-3"), **kw)
    assert [s for s, _ in resumed.seen] == [3, 4, 5, 6, 7]
    assert resumed.seen == full.seen[3:]  # the same batches: nothing lost, nothing repeated twice more
    assert logs(full)[4]["rollout/staleness"] == 1 and logs(resumed)[4]["rollout/staleness"] == 0
    assert logs(resumed)[5]["rollout/staleness"] == 0 and logs(resumed)[6]["rollout/staleness"] == 1


def test_resume_between_runs_of_repeats_equals_uninterrupted(tok, teacher, data, tmp_path):
    kw = dict(save_strategy="steps", save_steps=4)
    full = run(tok, teacher, tmp_path / "a", data, **kw)
    resumed = run(tok, teacher, tmp_path / "b", data, resume=str(tmp_path / "a" / "checkpoint-4"), **kw)
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_resuming_with_another_num_iterations_is_refused(tok, teacher, data, tmp_path):
    """μ decides which examples each step sees: a resume under another μ would skip the wrong ones."""
    run(tok, teacher, tmp_path / "a", data, save_strategy="steps", save_steps=2, max_steps=2)
    with pytest.raises(InputError, match="num_iterations"):
        run(tok, teacher, tmp_path / "a", data, resume=str(tmp_path / "a" / "checkpoint-2"), num_iterations=1)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(num_iterations=0), "num_iterations=0 is not valid"),
        (dict(num_iterations=1.5), "num_iterations=1.5 is not valid"),
        (dict(objective="kl"), "num_iterations=2 is not valid: objective 'kl' scores no student samples"),
        (dict(student_do_sample=False), "num_iterations=2 is not valid: .*student_do_sample=True"),
        (dict(rollout_overlap=True, student_server="http://127.0.0.1:9"), "num_iterations=2 is not valid: .*overlap"),
    ],
)
def test_unsupported_settings_are_refused_before_training(tmp_path, change, match):
    with pytest.raises(InputError, match=match):
        tiny.config(tmp_path, **{"objective": "rkl", "num_iterations": 2, **change})


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(train_sampling_strategy="group_by_length"), "train_sampling_strategy='random' or 'sequential'"),
        (dict(per_device_train_batch_size=32), "16 examples, fewer than one optimizer step's 32"),
    ],
)
def test_a_sampler_it_cannot_repeat_is_refused_before_any_step(tok, teacher, data, tmp_path, kw, match):
    with pytest.raises(InputError, match=match):
        run(tok, teacher, tmp_path, data, **kw)
    assert not (tmp_path / "checkpoint-1").exists()
