"""Theorem 1 of f-DISTILL checked by brute force: every sequence of a toy space enumerated in float64.

The expectation of the per-step terms over sampled prefixes must equal the
sequence-level KL, RKL and JS (exact mixture, Eq. 12) divergences, and upper-bound
the sequence-level TVD. A Monte Carlo version checks that the batch loss built by
`f_divergence_loss` converges to the same values.
"""

import math

import pytest
import torch
from toy_models import IGNORE, ToyAR, enumerate_sequences, sequence_logprob

from fdistill.divergences import (
    SampledSequences,
    exact_js_mixture_weight,
    f_divergence_loss,
    step_divergence,
    token_logprobs,
)

SPACES = {  # name: (vocab, max length, eos id)
    "fixed-length": (3, 5, None),
    "eos-terminated": (4, 4, 0),
}


def exact_divergences(lp: torch.Tensor, lq: torch.Tensor, beta: float = 0.5) -> dict:
    """Sequence-level divergences from the log-probabilities of every sequence."""
    p, q = lp.exp(), lq.exp()
    lm = torch.logaddexp(lp + math.log(beta), lq + math.log(1 - beta))
    return {
        "kl": (p * (lp - lq)).sum().item(),
        "rkl": (q * (lq - lp)).sum().item(),
        "js": (beta * (p * (lp - lm)).sum() + (1 - beta) * (q * (lq - lm)).sum()).item(),
        "tvd": 0.5 * (p - q).abs().sum().item(),
    }


@pytest.fixture(params=list(SPACES), scope="module")
def space(request):
    vocab, length, eos = SPACES[request.param]
    teacher, student = ToyAR(vocab, 6, seed=1), ToyAR(vocab, 6, seed=2)
    seqs = enumerate_sequences(vocab, length, eos)
    t_logits, s_logits = teacher.logits(seqs), student.logits(seqs)
    lp, lq = sequence_logprob(t_logits, seqs), sequence_logprob(s_logits, seqs)
    return dict(
        seqs=seqs,
        t_logits=t_logits,
        s_logits=s_logits,
        lp=lp,
        lq=lq,
        teacher=teacher,
        student=student,
        length=length,
        eos=eos,
    )


def expected_step_sum(space, kind, on, weight=None):
    """E_{y~on} Σ_t term_t(y_<t), by enumeration."""
    terms = step_divergence(kind, space["s_logits"], space["t_logits"], on=on, mixture_weight=weight)  # (N, L)
    mask = space["seqs"] != IGNORE
    per_seq = torch.where(mask, terms, torch.zeros_like(terms)).sum(-1)
    probs = (space["lp"] if on == "teacher" else space["lq"]).exp()
    return (probs * per_seq).sum().item()


def exact_weight(space, beta=0.5):
    labels = space["seqs"]
    return exact_js_mixture_weight(
        token_logprobs(space["t_logits"], labels),
        token_logprobs(space["s_logits"], labels),
        labels != IGNORE,
        beta=beta,
    )


def test_space_is_a_distribution(space):
    assert space["lp"].exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    assert space["lq"].exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_kl_and_rkl_decompose_exactly(space):
    exact = exact_divergences(space["lp"], space["lq"])
    assert expected_step_sum(space, "kl", "teacher") == pytest.approx(exact["kl"], abs=1e-10)
    assert expected_step_sum(space, "rkl", "student") == pytest.approx(exact["rkl"], abs=1e-10)
    assert exact["kl"] > 0.05 and exact["rkl"] > 0.05  # the check is not vacuous


@pytest.mark.parametrize("beta", [0.5, 0.2, 0.9])
def test_js_with_exact_mixture_decomposes_exactly(space, beta):
    exact = exact_divergences(space["lp"], space["lq"], beta)["js"]
    w = exact_weight(space, beta)
    decomposed = beta * expected_step_sum(space, "js", "teacher", w) + (1 - beta) * expected_step_sum(
        space, "js", "student", w
    )
    assert decomposed == pytest.approx(exact, abs=1e-10)


def test_stepwise_js_mixture_is_only_an_approximation(space):
    exact = exact_divergences(space["lp"], space["lq"])["js"]
    stepwise = 0.5 * expected_step_sum(space, "js", "teacher") + 0.5 * expected_step_sum(space, "js", "student")
    assert abs(stepwise - exact) > 1e-3


def test_tvd_terms_upper_bound_sequence_tvd(space):
    exact = exact_divergences(space["lp"], space["lq"])["tvd"]
    on_teacher = expected_step_sum(space, "tvd", "teacher")
    on_student = expected_step_sum(space, "tvd", "student")
    assert on_teacher >= exact and on_student >= exact  # Eqs. 36 and 37, each on its own
    assert 0.5 * on_teacher + 0.5 * on_student >= exact  # Eq. 25, the objective
    assert exact > 0.05


def test_first_step_terms_are_the_sequence_divergences_of_length_one():
    """With one position the step term *is* the sequence divergence (also for TVD)."""
    teacher, student = ToyAR(5, 4, seed=3), ToyAR(5, 4, seed=4)
    seqs = enumerate_sequences(5, 1, None)
    lp, lq = sequence_logprob(teacher.logits(seqs), seqs), sequence_logprob(student.logits(seqs), seqs)
    s, t = student.logits(seqs[:1])[0, 0], teacher.logits(seqs[:1])[0, 0]
    exact = exact_divergences(lp, lq)
    for kind in ("kl", "rkl", "tvd"):
        assert step_divergence(kind, s, t, on="teacher").item() == pytest.approx(exact[kind], abs=1e-12)


@pytest.mark.parametrize("kind", ["kl", "rkl", "js", "tvd"])
def test_monte_carlo_batch_loss_converges_to_exact(space, kind):
    """`f_divergence_loss` on sampled batches is an unbiased estimate of the exact objective."""
    n = 3000
    teacher, student, length, eos = space["teacher"], space["student"], space["length"], space["eos"]
    y_p = teacher.sample(n, length, eos, seed=10)
    y_q = student.sample(n, length, eos, seed=11)
    t_side = SampledSequences(student.logits(y_p), teacher.logits(y_p), y_p)
    s_side = SampledSequences(student.logits(y_q), teacher.logits(y_q), y_q)
    out = f_divergence_loss(kind, teacher_samples=t_side, student_samples=s_side, js_mixture="exact")

    # standard error of the estimate, from the per-sequence sums of each side
    var = 0.0
    for side, batch, coeff in (("teacher", t_side, out.teacher_term), ("student", s_side, out.student_term)):
        if coeff is None:
            continue
        w = None
        if kind == "js":
            w = exact_js_mixture_weight(
                token_logprobs(batch.teacher_logits, batch.labels),
                token_logprobs(batch.student_logits, batch.labels),
                batch.labels != IGNORE,
            )
        terms = step_divergence(kind, batch.student_logits, batch.teacher_logits, on=side, mixture_weight=w)
        per_seq = torch.where(batch.labels != IGNORE, terms, torch.zeros_like(terms)).sum(-1)
        assert per_seq.mean().item() == pytest.approx(coeff.item(), rel=1e-12)
        weight = {"kl": 1.0, "rkl": 1.0, "js": 0.5, "tvd": 0.5}[kind]
        var += weight**2 * per_seq.var().item() / n
    se = math.sqrt(var)

    exact = exact_divergences(space["lp"], space["lq"])[kind]
    if kind == "tvd":  # the objective is an upper bound; compare with the enumerated bound instead
        exact = 0.5 * expected_step_sum(space, "tvd", "teacher") + 0.5 * expected_step_sum(space, "tvd", "student")
    assert abs(out.loss.item() - exact) < 5 * se, (out.loss.item(), exact, se)
    assert se < 0.05 * max(exact, 0.1)  # enough samples for the comparison to mean something
