"""Reused rollouts (``steps_per_generation``) in the trainer, on tiny in-process models: the batches every step sees,
the weights and their logs, k = 1 against today's path, resume at and between group boundaries."""

import pytest
import torch
import transformers

from fdistill import FDistillTrainer
from fdistill import testing as tiny
from fdistill.errors import InputError
from fdistill.lm.rollouts import RolloutGroups

transformers.logging.set_verbosity_error()


class Recording(FDistillTrainer):
    """Records the prompts (and the staleness of the student samples) each training micro-batch scores."""

    def __init__(self, *args, fail_at: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, list]] = []
        self.fail_at = fail_at

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            if self.state.global_step == self.fail_at:
                raise RuntimeError(f"injected fault at step {self.fail_at}")
            self.seen.append((self.state.global_step, inputs["prompt_ids"].tolist()))
        return super().compute_loss(model, inputs, *args, **kwargs)


@pytest.fixture(scope="module")
def teacher():
    return tiny.llama(2, seed=0, init=0.15)


def run(tok, teacher, out, data, resume=None, student_seed=1, groups=None, fail_at=None, **kw):
    settings = dict(objective="tvd", max_steps=6, gradient_accumulation_steps=2, per_device_train_batch_size=4)
    trainer = Recording(
        model=tiny.llama(1, seed=student_seed),
        teacher_model=teacher,
        args=tiny.config(out, **{**settings, **kw}),
        train_dataset=data,
        processing_class=tok,
        fail_at=fail_at,
    )
    if groups is not None:
        trainer._groups = groups
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def losses(trainer) -> dict[int, dict]:
    return {h["step"]: h for h in trainer.state.log_history if "loss" in h}


def test_k1_through_the_group_path_gives_todays_losses_bit_for_bit(tok, teacher, tmp_path):
    """With one micro-batch per step the group path at k = 1 draws what today's path draws: same floats."""
    data = tiny.dataset(16, seed=0, teacher=teacher, tok=tok)
    today = run(tok, teacher, tmp_path / "a", data, gradient_accumulation_steps=1)
    grouped = run(tok, teacher, tmp_path / "b", data, gradient_accumulation_steps=1, groups=RolloutGroups(1))
    a, b = losses(today), losses(grouped)
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in b]
    assert [a[s]["loss_on_student_samples"] for s in a] == [b[s]["loss_on_student_samples"] for s in b]
    assert all(b[s]["rollout/staleness"] == 0 and b[s]["rollout/ess"] == 1 for s in b)


def test_k2_steps_see_the_batches_of_k1_and_log_their_weights(tok, teacher, tmp_path):
    """20 prompts at batch 4 are 5 micro-batches an epoch: steps of 2, 2 and the remainder 1 (two epochs)."""
    data = tiny.dataset(20, seed=0, teacher=teacher, tok=tok)
    fresh = run(tok, teacher, tmp_path / "k1", data)
    reused = run(tok, teacher, tmp_path / "k2", data, steps_per_generation=2)
    assert fresh.seen == reused.seen and len(reused.seen) == 10
    logs = losses(reused)
    staleness = [logs[s]["rollout/staleness"] for s in sorted(logs)]
    # groups start at multiples of k: (1, 2), (3) cut at the epoch's end, (4) up to the next multiple, (5, 6)
    assert staleness == [0, 1, 0, 0, 0, 1]
    for s in logs:
        assert 0 < logs[s]["rollout/ess"] <= 1 and 0 <= logs[s]["rollout/clipped_fraction"] <= 1
    assert logs[2]["rollout/ess"] < 1 and logs[6]["rollout/ess"] < 1  # stale steps are reweighted: unequal weights
    assert reused._groups.queue == type(reused._groups.queue)()  # nothing left over after train()


def test_resume_at_a_group_boundary_equals_uninterrupted(tok, teacher, tmp_path):
    data = tiny.dataset(32, seed=0, teacher=teacher, tok=tok)  # 4 steps an epoch: groups never cut
    kw = dict(steps_per_generation=2, save_strategy="steps", save_steps=2)
    full = run(tok, teacher, tmp_path / "a", data, **kw)
    resumed = run(tok, teacher, tmp_path / "b", data, resume=str(tmp_path / "a" / "checkpoint-2"), student_seed=5, **kw)
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    a, b = losses(full), losses(resumed)
    assert [a[s]["loss"] for s in range(3, 7)] == [b[s]["loss"] for s in range(3, 7)]


def test_resume_between_group_boundaries_redraws_fresh(tok, teacher, tmp_path):
    """A checkpoint at step 3 (k = 2) records no queued samples: the resumed step 4 draws its own, fresh."""
    data = tiny.dataset(32, seed=0, teacher=teacher, tok=tok)
    kw = dict(steps_per_generation=2, save_strategy="steps", save_steps=3)
    full = run(tok, teacher, tmp_path / "a", data, **kw)
    resumed = run(tok, teacher, tmp_path / "b", data, resume=str(tmp_path / "a" / "checkpoint-3"), **kw)
    assert losses(full)[4]["rollout/staleness"] == 1
    assert losses(resumed)[4]["rollout/staleness"] == 0
    assert [s for s, _ in resumed.seen] == [3, 3, 4, 4, 5, 5]
    assert full.seen[6:] == resumed.seen  # the same batches
    # k is when samples are drawn, not what is minimised: a resume may change it (the run record allows it)
    plain = run(tok, teacher, tmp_path / "c", data, resume=str(tmp_path / "a" / "checkpoint-3"), save_strategy="no")
    assert plain.seen == resumed.seen and plain._groups is None


def test_an_error_mid_group_leaves_nothing_queued(tok, teacher, tmp_path):
    data = tiny.dataset(32, seed=0, teacher=teacher, tok=tok)
    with pytest.raises(RuntimeError, match="injected fault at step 1"):
        run(tok, teacher, tmp_path / "a", data, steps_per_generation=4, fail_at=1)
    # the trainer is gone with the exception; a fresh one shows the same by its state after a failing train()
    trainer = Recording(
        model=tiny.llama(1, seed=1),
        teacher_model=teacher,
        args=tiny.config(tmp_path / "b", objective="tvd", max_steps=4, steps_per_generation=4),
        train_dataset=data,
        processing_class=tok,
        fail_at=2,
    )
    with pytest.raises(RuntimeError):
        trainer.train()
    assert not trainer._groups.queue and trainer._planned is None


@pytest.mark.parametrize(
    "change,setting",
    [
        (dict(objective="kl"), "steps_per_generation"),
        (dict(student_do_sample=False), "steps_per_generation"),
        (dict(student_top_p=0.9), "steps_per_generation"),
        (dict(fused_divergence=True), "fused_divergence"),
        (dict(importance_weight_cap=0.5), "importance_weight_cap"),
        (dict(steps_per_generation=0), "steps_per_generation"),
    ],
)
def test_unsupported_reuse_is_refused_before_training(tmp_path, change, setting):
    with pytest.raises(InputError, match=setting):
        tiny.config(tmp_path, **{"objective": "rkl", "steps_per_generation": 2, **change})


def test_overlap_needs_a_student_server(tmp_path):
    with pytest.raises(InputError, match="rollout_overlap=True is not valid: .*student_server"):
        tiny.config(tmp_path, objective="rkl", rollout_overlap=True)


def test_the_weights_reach_the_loss_of_stale_steps_only(tok, teacher, tmp_path, monkeypatch):
    """Weights forced to 1 (no correction) change the stale steps' losses, and nothing else."""
    from fdistill.lm import importance

    data = tiny.dataset(32, seed=0, teacher=teacher, tok=tok)
    corrected = losses(run(tok, teacher, tmp_path / "a", data, steps_per_generation=2, max_steps=2))
    monkeypatch.setattr(importance, "prefix_weights", lambda current, old, mask, **kw: mask.float())
    plain = losses(run(tok, teacher, tmp_path / "b", data, steps_per_generation=2, max_steps=2))
    assert corrected[1]["loss"] == plain[1]["loss"]  # fresh: no weights at all
    assert corrected[2]["rollout/staleness"] == 1
    assert corrected[2]["loss_on_student_samples"] != plain[2]["loss_on_student_samples"]
    assert corrected[2]["loss_on_teacher_samples"] == plain[2]["loss_on_teacher_samples"]


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("bart", dict(objective="js", js_mixture="exact")),
        ("llama", dict(objective="engine", loss_reduction="token")),
        ("llama", dict(objective="rkl", teacher_sampling="online", student_sampling_temperature=0.7)),
    ],
)
def test_k2_trains_every_weighted_objective_in_both_families(tok, tmp_path, arch, kw):
    teacher = getattr(tiny, arch)(2, seed=0, init=0.15)
    data = tiny.dataset(16, seed=0, teacher=teacher, tok=tok)
    args = tiny.config(tmp_path, max_steps=2, steps_per_generation=2, gradient_accumulation_steps=2, **kw)
    trainer = FDistillTrainer(
        model=getattr(tiny, arch)(1, seed=1), teacher_model=teacher, args=args, train_dataset=data, processing_class=tok
    )
    trainer.train()
    logs = losses(trainer)
    assert logs[2]["rollout/staleness"] == 1 and 0 < logs[2]["rollout/ess"] <= 1
    assert all(torch.isfinite(torch.tensor(logs[s]["loss"])) for s in logs)


@pytest.mark.parametrize("arch", ["llama", "bart"])
def test_weights_are_one_when_the_student_has_not_moved(tok, tmp_path, monkeypatch, arch):
    """A student that does not move: numerator (the loss forward) and denominator (the forward at generation) are the same policy,
    so every weight is 1 up to rounding — the two are aligned token for token and at the same temperature."""
    from fdistill.lm import importance

    seen = []
    original = importance.prefix_weights

    def spy(current, old, mask, **kw):
        weights = original(current, old, mask, **kw)
        seen.append((weights, mask))
        return weights

    monkeypatch.setattr(importance, "prefix_weights", spy)
    teacher = getattr(tiny, arch)(2, seed=0, init=0.15)
    data = tiny.dataset(16, seed=0, teacher=teacher, tok=tok)
    args = tiny.config(
        tmp_path,
        objective="tvd",
        max_steps=2,
        steps_per_generation=2,
        learning_rate=1e-12,  # the student does not move (0 is refused)
        student_sampling_temperature=0.7,
        importance_weight_cap=float("inf"),
    )
    FDistillTrainer(
        model=getattr(tiny, arch)(1, seed=1), teacher_model=teacher, args=args, train_dataset=data, processing_class=tok
    ).train()
    assert seen
    for weights, mask in seen:
        assert mask.any()
        torch.testing.assert_close(weights, mask.float(), rtol=0, atol=1e-5)
