"""Importance weights of reused student samples (fdistill.lm.importance), checked by exact enumeration in float64.

A toy autoregressive student (tests/toy_models.py) over 4 tokens (0 = EOS), 3 positions: every completion can be
enumerated with its exact probability. The exact expectation of a per-sequence quantity is then the loss computed
with each sequence weighted by its probability (``SampledSequences.weights``, one sequence per ``num_items``).
"""

from __future__ import annotations

import math

import pytest
import torch
from tolerances import sum_rtol
from toy_models import IGNORE, ToyAR, enumerate_sequences, sequence_logprob

from fdistill.divergences import (
    SampledSequences,
    TeacherTopK,
    engine_terms,
    f_divergence_loss,
    reduce_terms,
    token_logprobs,
)
from fdistill.errors import InputError
from fdistill.lm.importance import check_cap, prefix_log_ratios, prefix_weights, weight_stats

VOCAB, LENGTH, EOS = 4, 3, 0
KINDS = [("rkl", "stepwise"), ("js", "stepwise"), ("js", "exact"), ("tvd", "stepwise"), ("engine", None)]
KINDS += [("topk-" + kind, mixture) for kind, mixture in KINDS[:4]]  # a top-2 teacher, tail mode


@pytest.fixture(scope="module")
def space():
    seqs = enumerate_sequences(VOCAB, LENGTH, EOS)  # (N, L) labels, IGNORE after EOS
    student, old, teacher = ToyAR(VOCAB, 5, seed=1), ToyAR(VOCAB, 5, seed=2), ToyAR(VOCAB, 5, seed=3)
    return seqs, student, old, teacher


def student_term(kind, mixture, student_logits, teacher_logits, labels, weights):
    """The student side's reduced term with per-position ``weights`` and denominator 1: Σ_b Σ_t weights · D_t."""
    if kind == "engine":
        terms = engine_terms(student_logits, teacher_logits)
        mask = labels != IGNORE
        return reduce_terms(torch.where(mask, terms * weights, torch.zeros_like(terms)), mask, num_items_in_batch=1)
    if kind.startswith("topk-"):  # the teacher's top 2 and the sampled tokens' log-probabilities (a served teacher)
        kind, teacher_logits = kind[5:], TeacherTopK.from_logits(teacher_logits, k=2, labels=labels)
    sides = SampledSequences(student_logits, teacher_logits, labels, num_items_in_batch=1, weights=weights)
    out = f_divergence_loss(kind, teacher_samples=sides, student_samples=sides, js_mixture=mixture)
    return out.student_term


def stale(seqs, student_logits, old_logits, cap):
    """Each sequence's probability under the old policy times its prefix weights: the exact E_old of the estimate."""
    mask = seqs != IGNORE
    w = prefix_weights(token_logprobs(student_logits, seqs), token_logprobs(old_logits, seqs), mask, cap=cap)
    return sequence_logprob(old_logits, seqs).exp()[:, None] * w


def fresh(seqs, student_logits):
    """Each sequence's probability under the current student (no gradient: the paper's stop-gradient)."""
    return sequence_logprob(student_logits.detach(), seqs).exp()[:, None].expand(seqs.shape).clone()


@pytest.mark.parametrize("kind,mixture", KINDS)
def test_corrected_stale_estimate_has_the_fresh_objectives_expectation(space, kind, mixture):
    seqs, student, old, teacher = space
    s, o, t = student.logits(seqs), old.logits(seqs), teacher.logits(seqs)
    exact = student_term(kind, mixture, s, t, seqs, fresh(seqs, s))
    corrected = student_term(kind, mixture, s, t, seqs, stale(seqs, s, o, cap=math.inf))
    uncorrected = student_term(kind, mixture, s, t, seqs, sequence_logprob(o, seqs).exp()[:, None].expand(seqs.shape))
    assert exact > 0
    assert corrected.item() == pytest.approx(exact.item(), rel=sum_rtol(torch.float64, seqs.numel()))
    assert abs(uncorrected.item() - exact.item()) > 1e-3 * exact.item()  # the weights are what makes it right


def test_prefix_weights_have_expectation_one_at_every_position(space):
    """E_old[w_t] = 1: the support condition behind the bias bound (ended prefixes continue with ratio 1)."""
    seqs, student, old, _ = space
    s, o = student.logits(seqs), old.logits(seqs)
    log_w = prefix_log_ratios(token_logprobs(s, seqs), token_logprobs(o, seqs), seqs != IGNORE)
    expected = (sequence_logprob(o, seqs).exp()[:, None] * log_w.exp()).sum(0)
    torch.testing.assert_close(expected, torch.ones(LENGTH, dtype=torch.float64))


@pytest.mark.parametrize("kind,d_max", [("tvd", 1.0), ("js", math.log(2.0))])
def test_truncated_estimate_is_within_the_stated_bound_and_truncation_bites(space, kind, d_max):
    """0 ≤ L − L_C ≤ D_max Σ_t (1 − E_old[min(w_t, C)]), with C small enough that weights are clipped."""
    seqs, student, old, teacher = space
    s, o, t = student.logits(seqs), old.logits(seqs), teacher.logits(seqs)
    cap = 1.2
    exact = student_term(kind, "stepwise", s, t, seqs, fresh(seqs, s))
    truncated = student_term(kind, "stepwise", s, t, seqs, stale(seqs, s, o, cap=cap))
    log_w = prefix_log_ratios(token_logprobs(s, seqs), token_logprobs(o, seqs), seqs != IGNORE)
    p_old = sequence_logprob(o, seqs).exp()[:, None]
    cut = 1.0 - (p_old * log_w.exp().clamp_max(cap)).sum(0)  # 1 − E_old[min(w_t, C)] per position
    bound = d_max * cut.sum()
    gap = exact - truncated
    assert gap > 1e-3  # truncation moved the estimate: the bound is not vacuous here
    assert gap <= bound
    assert weight_stats(token_logprobs(s, seqs), token_logprobs(o, seqs), seqs != IGNORE, cap=cap).clipped_fraction > 0


@pytest.mark.parametrize("kind,mixture", KINDS)
def test_gradient_of_the_weighted_loss_is_the_fresh_gradient(space, kind, mixture):
    """∇ E_old[Σ w_t D_t] (weights detached) = ∇ of the exact E_θ[Σ D_t] with the sampling distribution stopped."""
    seqs, student, old, teacher = space
    o, t = old.logits(seqs), teacher.logits(seqs)
    grads = []
    for weights_of in (lambda s: fresh(seqs, s), lambda s: stale(seqs, s, o, cap=math.inf)):
        params = [student.out.clone().requires_grad_(True), student.bias.clone().requires_grad_(True)]
        student.out, student.bias = params
        s = student.logits(seqs)
        grads.append(torch.autograd.grad(student_term(kind, mixture, s, t, seqs, weights_of(s)), params))
        student.out, student.bias = (p.detach() for p in params)
    for fresh_grad, stale_grad in zip(*grads):
        torch.testing.assert_close(stale_grad, fresh_grad, rtol=1e-10, atol=1e-12)


def test_masked_positions_contribute_exactly_zero_and_neg_inf_logits_give_no_nan(space):
    seqs, student, old, teacher = space
    s = student.logits(seqs).clone().requires_grad_(True)
    o, t = old.logits(seqs).clone(), teacher.logits(seqs)
    # a token banned by both policies at position 1: sequences holding it have probability 0 under both
    o[:, 1, 3] = -math.inf
    with torch.no_grad():
        s_banned = s.detach().clone()
        s_banned[:, 1, 3] = -math.inf
    s_in = s + (s_banned - s.detach())  # -inf at the banned token, gradient to s elsewhere
    weights = stale(seqs, s_in, o, cap=2.0)
    assert torch.isfinite(weights).all()
    loss = student_term("rkl", "stepwise", s_in, t, seqs, weights)
    assert torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(grad).all()
    # NaN logits and NaN weights at masked positions change nothing, exactly
    masked = seqs == IGNORE
    assert masked.any()
    s2 = s.detach().clone().requires_grad_(True)
    poisoned = torch.where(masked[..., None], torch.full_like(s2, math.nan), s2)
    w2 = torch.where(masked, torch.full_like(weights, math.nan), weights)
    clean = student_term("tvd", "stepwise", s2, t, seqs, weights)
    dirty = student_term("tvd", "stepwise", poisoned, t, seqs, w2)
    assert clean.item() == dirty.item()
    (g,) = torch.autograd.grad(dirty, s2)
    assert torch.isfinite(g).all() and (g[masked] == 0).all()


def test_weights_are_exactly_zero_at_masked_positions_and_capped():
    current = torch.tensor([[0.0, 1.0, 2.0, 0.5]])
    old = torch.zeros(1, 4)
    mask = torch.tensor([[True, True, True, False]])
    w = prefix_weights(current, old, mask, cap=2.0)
    assert w.tolist() == [[1.0, 1.0, 2.0, 0.0]]  # exp(0), exp(0), min(exp(1), 2), masked
    inclusive = prefix_weights(current, old, mask, cap=math.inf, inclusive=True)
    torch.testing.assert_close(inclusive, torch.tensor([[1.0, math.e, math.e**3, 0.0]]))
    stats = weight_stats(current, old, mask, cap=2.0)
    assert stats.positions == 3 and stats.clipped_fraction == pytest.approx(1 / 3)
    assert stats.ess == pytest.approx(16 / (3 * 6))  # (1 + 1 + 2)² / (3 · (1 + 1 + 4))


@pytest.mark.parametrize("cap", [0.5, math.nan, -1.0])
def test_a_cap_below_one_is_refused(cap):
    with pytest.raises(InputError, match="importance_weight_cap"):
        check_cap(cap)
