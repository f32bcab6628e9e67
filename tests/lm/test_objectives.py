"""The objective registry: every built-in objective declared once, and a user's own objective trains without
editing fdistill (issue 16)."""

import pytest
import torch
import transformers

from fdistill import FDistillConfig, FDistillTrainer
from fdistill import testing as tiny
from fdistill.divergences import step_divergence
from fdistill.errors import InputError
from fdistill.lm.objectives import (
    COMPLETION_SETS,
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
    get_objective,
    register_objective,
)

transformers.logging.set_verbosity_error()


class SkewKL(Objective):
    """KL(p ‖ α·p + (1−α)·q) on teacher samples: α = 0 is the forward KL."""

    scores, title = ("teacher",), "skew KL divergence"

    def __init__(self, name: str, alpha: float):
        self.name, self.alpha = name, alpha

    def loss(self, batch, args):
        s = batch["teacher"]
        log_p, log_q = s.teacher.float().log_softmax(-1), s.student.float().log_softmax(-1)
        mixed = torch.logaddexp(
            log_p + torch.log(torch.tensor(self.alpha)), log_q + torch.log(torch.tensor(1 - self.alpha))
        )
        terms = step_divergence("kl", mixed, s.teacher, on="teacher")
        return ObjectiveOutput(
            batch.reduce(terms, "teacher"), {"loss_on_teacher_samples": batch.reduce(terms, "teacher")}
        )


def _trainer(tmp_path, objective, steps=2):
    tok = tiny.tokenizer()
    teacher = tiny.llama(2, seed=0, init=0.15)
    data = tiny.dataset(8, seed=0, teacher=teacher, tok=tok)
    args = FDistillConfig(
        output_dir=str(tmp_path),
        objective=objective,
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        max_new_tokens=6,
    )
    return FDistillTrainer(
        model=tiny.llama(1, seed=1), teacher_model=teacher, args=args, train_dataset=data, processing_class=tok
    )


def test_a_users_objective_trains_without_editing_fdistill(tmp_path):
    register_objective(SkewKL("skew-kl-test", alpha=0.2))
    trainer = _trainer(tmp_path, "skew-kl-test")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert "loss_on_teacher_samples" in trainer.state.log_history[0]


def test_skew_kl_at_alpha_zero_is_the_built_in_kl(tmp_path):
    """The registered objective and the built-in one see the same ScoredBatch: at α = 0 the losses agree."""
    register_objective(SkewKL("skew-kl-zero", alpha=0.0), replace=True)
    losses = {}
    for name in ("kl", "skew-kl-zero"):
        trainer = _trainer(tmp_path / name, name)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        trainer.model.train()
        losses[name] = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(losses["kl"], losses["skew-kl-zero"], rtol=1e-6, atol=1e-6)


def test_the_registry_declares_every_built_in_objective():
    assert list(OBJECTIVES)[:8] == ["kl", "rkl", "js", "tvd", "mle", "seqkd", "engine", "predistill"]
    scores = {n: OBJECTIVES[n].scores for n in ["kl", "rkl", "js", "tvd", "mle", "seqkd", "engine", "predistill"]}
    assert scores == {
        "kl": ("teacher",),
        "rkl": ("student",),
        "js": ("teacher", "student"),
        "tvd": ("teacher", "student"),
        "mle": ("reference",),
        "seqkd": ("teacher",),
        "engine": ("student",),
        "predistill": ("reference",),
    }
    assert all(set(o.scores) <= set(COMPLETION_SETS) for o in OBJECTIVES.values())
    assert [n for n, o in OBJECTIVES.items() if o.fusable] == ["kl", "rkl", "js", "tvd"]
    assert not OBJECTIVES["mle"].uses_teacher and not OBJECTIVES["seqkd"].uses_teacher


def test_registry_errors_name_the_fix():
    with pytest.raises(InputError, match="objective='hellinger' is not valid: choose one of kl, rkl"):
        get_objective("hellinger")
    with pytest.raises(ValueError, match="objective='hellinger'"):
        FDistillConfig(output_dir="x", objective="hellinger")
    with pytest.raises(InputError, match="registered already"):
        register_objective(SkewKL("kl", alpha=0.1))

    class Odd(Objective):
        name, scores = "odd", ("teachers",)

    with pytest.raises(InputError, match=r"odd.scores=\('teachers',\) is not valid"):
        register_objective(Odd())


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("kind", ["rkl", "js", "tvd"])
def test_logged_sample_metrics_from_the_terms_equal_their_own_passes(tmp_path, kind, temperature):
    """The f-divergence objectives hand the logged student_entropy and teacher_nll_of_student_samples over from the
    terms' log-softmaxes (loss temperature 1; a tempered loss leaves them to student_sample_metrics' own passes, as
    the metrics are of the untempered models): the same numbers as those passes."""
    from fdistill.lm.objectives import ScoredBatch, ScoredSet, student_sample_metrics

    g = torch.Generator().manual_seed(5)
    v = 19
    labels = torch.randint(0, v, (3, 6), generator=g)
    labels[1, 4:] = -100
    sets = {
        n: ScoredSet(torch.randn(3, 6, v, generator=g).requires_grad_(), torch.randn(3, 6, v, generator=g), labels, 3)
        for n in OBJECTIVES[kind].scores
    }
    batch = ScoredBatch(sets)
    args = tiny.config(tmp_path, objective=kind, loss_temperature=temperature)
    out = OBJECTIVES[kind].loss(batch, args)
    assert (out.student_entropies is not None) == (temperature == 1.0)
    own = ObjectiveOutput(out.loss)  # nothing handed over: the metrics take their own passes
    sample_mask = (labels != -100).long()
    handed, computed = student_sample_metrics(batch, out, sample_mask), student_sample_metrics(batch, own, sample_mask)
    assert handed.keys() == computed.keys() >= {"student_entropy", "teacher_nll_of_student_samples"}
    for key in handed:
        torch.testing.assert_close(handed[key], computed[key], rtol=1e-5, atol=1e-5)
