"""Training with a top-k teacher (issue 17, item 2): the objectives take a TeacherTopK for any completion set, the
trainer reads the offline columns of `fdistill sample --topk-logprobs K` for objective 'kl' and refuses the rest."""

import pytest
import torch
import transformers

from fdistill import FDistillTrainer
from fdistill import testing as tiny
from fdistill.divergences import TeacherTopK
from fdistill.errors import InputError
from fdistill.lm.objectives import OBJECTIVES, ScoredBatch, ScoredSet
from fdistill.lm.sampling import OfflineSamplingSettings, sample_offline
from fdistill.lm.trainer import _record_changes

transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def teacher():
    return tiny.llama(2, seed=0, init=0.15)


@pytest.fixture(scope="module")
def top3(teacher, tok, tmp_path_factory):
    """Offline teacher samples with the teacher's top 3 log-probabilities at every position."""
    settings = OfflineSamplingSettings(max_new_tokens=8, batch_size=4, topk_logprobs=3)
    folder = str(tmp_path_factory.mktemp("top3"))
    return sample_offline(
        teacher, tok, tiny.dataset(8, seed=3), folder, settings, teacher_id="tiny", show_progress=False
    )


def config(tmp_path, **kw):
    return tiny.config(tmp_path, **{"objective": "kl", "max_steps": 2, **kw})


@pytest.mark.parametrize("mode", ["tail", "renormalised"])
def test_kl_trains_from_stored_top_k_columns(tok, teacher, top3, tmp_path, mode):
    student = tiny.llama(1, seed=1)
    before = [p.detach().clone() for p in student.parameters()]
    args = config(tmp_path, teacher_topk_columns=True, teacher_topk_mode=mode)
    trainer = FDistillTrainer(model=student, args=args, train_dataset=top3, processing_class=tok)
    assert trainer.teacher is None
    trainer.train()
    assert trainer.state.global_step == 2
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_tail_mode_loss_is_below_the_full_kl(tok, teacher, top3, tmp_path):
    """Same student, same batch: the coarse-grained KL is at most the KL against the teacher's forward."""
    losses = {}
    for name, kw, model in (
        ("full", {}, teacher),
        ("tail", dict(teacher_topk_columns=True), None),
        ("renormalised", dict(teacher_topk_columns=True, teacher_topk_mode="renormalised"), None),
    ):
        trainer = FDistillTrainer(
            model=tiny.llama(1, seed=1),
            teacher_model=model,
            args=config(tmp_path / name, **kw),
            train_dataset=top3,
            processing_class=tok,
        )
        with torch.no_grad():
            batch = trainer.data_collator([top3[i] for i in range(8)])
            losses[name] = trainer.compute_loss(trainer.model, batch).item()
    assert 0 < losses["tail"] < losses["full"], losses
    assert losses["renormalised"] != losses["tail"]


@pytest.mark.parametrize("objective", ["rkl", "js", "tvd"])
def test_objectives_scoring_student_samples_are_refused_offline(tmp_path, objective):
    with pytest.raises(InputError, match="exist only for the offline teacher samples"):
        config(tmp_path, objective=objective, teacher_topk_columns=True)


def test_settings_that_make_no_sense_are_refused(tmp_path):
    with pytest.raises(InputError, match="teacher_sampling='online'"):
        config(tmp_path, teacher_topk_columns=True, teacher_sampling="online")
    with pytest.raises(InputError, match="needs the teacher's full distributions"):
        config(tmp_path, objective="engine", teacher_topk_columns=True)
    with pytest.raises(InputError, match="untempered"):
        config(tmp_path, teacher_topk_columns=True, loss_temperature=2.0)
    config(tmp_path, teacher_topk_columns=True, loss_temperature=2.0, teacher_topk_mode="renormalised")
    with pytest.raises(InputError, match="teacher_topk_mode='both'"):
        config(tmp_path, teacher_topk_mode="both")


@pytest.mark.parametrize("kind", ["kl", "rkl", "js", "tvd"])
def test_every_f_divergence_objective_takes_a_top_k_teacher_on_any_set(tmp_path, kind):
    """What a served teacher will hand the objectives: a TeacherTopK for teacher and student samples alike. At
    K = V the loss is the full one; at K < V it is below it."""
    g = torch.Generator().manual_seed(0)
    v = 16
    labels = torch.randint(0, v, (2, 5), generator=g)
    labels[1, 3:] = -100
    sets = {n: (torch.randn(2, 5, v, generator=g), torch.randn(2, 5, v, generator=g)) for n in ("teacher", "student")}
    args = config(tmp_path, objective=kind, js_mixture="exact")
    objective = OBJECTIVES[kind]
    count = torch.tensor(2.0)

    def loss(k):
        scored = {
            n: ScoredSet(s, t if k is None else TeacherTopK.from_logits(t, k, labels), labels, count)
            for n, (s, t) in sets.items()
            if n in objective.scores
        }
        return objective.loss(ScoredBatch(scored), args).loss

    torch.testing.assert_close(loss(v), loss(None), rtol=1e-5, atol=1e-6)
    assert loss(3) < loss(None)


def test_a_checkpoint_from_before_the_mode_existed_is_the_renormalised_mode():
    now = {"settings": {"teacher_topk_logprobs": True, "teacher_topk_mode": "tail"}, "teacher": None, "tokenizer": "t"}
    old = {"settings": {"teacher_topk_logprobs": True}, "teacher": None, "tokenizer": "t"}
    assert _record_changes(old, now) == ["teacher_topk_mode='renormalised' then, 'tail' now"]
    now["settings"]["teacher_topk_mode"] = "renormalised"
    assert _record_changes(old, now) == []
