"""Top-k f-divergences (issue 17, item 2): the coarse-grained pair (teacher's top K + one tail bucket) against a
float64 brute force — a lower bound of the full divergence for every kind and side, equal at K = V and for a
constant tail ratio — with gradients, masks, -inf logits and the renormalised alternative."""

import pytest
import torch

from fdistill.divergences import (
    SampledSequences,
    TeacherTopK,
    coarse_grained_log_probs,
    f_divergence_loss,
    step_divergence,
    topk_step_divergence,
    topk_teacher_logits,
)

KINDS = ["kl", "rkl", "js", "tvd"]
CASES = [(k, s) for k in KINDS for s in ("teacher", "student")]
V = 12


def logits(*shape, seed, scale=3.0, banned=0.0):
    """float64 logits; a fraction ``banned`` of the entries is -inf (never a whole row)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
    if banned:
        drop = torch.rand(*shape, generator=g) < banned
        drop[..., 0] = False  # every distribution keeps some mass
        x = x.masked_fill(drop, -torch.inf)
    return x


def naive_coarse(kind, s, t, ids, on, w=0.5, tail_floor=0.0):
    """Brute force in float64 from probabilities: sum everything outside the teacher's kept tokens ``ids`` into one
    outcome (at least ``tail_floor`` for the teacher), then the textbook formula on K + 1 outcomes (0·log 0 = 0).

    ``ids`` are the kept tokens themselves, not K: where two banned tokens tie at probability 0, which one a top-k
    keeps is the kernel's choice."""
    p, q = torch.softmax(t, -1), torch.softmax(s, -1)
    tail = torch.ones_like(p, dtype=torch.bool).scatter(-1, ids, False)
    P = torch.cat([p.gather(-1, ids), (p * tail).sum(-1, keepdim=True).clamp_min(tail_floor)], -1)
    Q = torch.cat([q.gather(-1, ids), (q * tail).sum(-1, keepdim=True)], -1)

    def xlog(a, b):
        return torch.where(a > 0, a * (a.log() - b.log()), torch.zeros_like(a)).sum(-1)

    if kind == "kl":
        return xlog(P, Q)
    if kind == "rkl":
        return xlog(Q, P)
    if kind == "tvd":
        return 0.5 * (P - Q).abs().sum(-1)
    m = w * P + (1 - w) * Q
    return xlog(P, m) if on == "teacher" else xlog(Q, m)


@pytest.mark.parametrize("banned", [0.0, 0.3])
@pytest.mark.parametrize("kind,on", CASES)
def test_equals_the_brute_force_and_bounds_the_full_divergence(kind, on, banned):
    s, t = logits(6, 9, V, seed=1, banned=banned), logits(6, 9, V, seed=2, banned=banned)
    full = step_divergence(kind, s, t, on=on)
    for k in (1, 3, V - 1):
        kept = TeacherTopK.from_logits(t, k)
        ours = topk_step_divergence(kind, s, kept, on=on)
        assert ours.dtype == torch.float64 and not ours.isnan().any()
        ref = naive_coarse(kind, s, t, kept.ids, on)
        finite = ref.isfinite()
        torch.testing.assert_close(ours[finite], ref[finite], rtol=1e-9, atol=1e-12)
        # RKL is +inf where the teacher's tail is exactly 0 and the student's is not. The top-k path knows the tail
        # only as 1 − Σ of its K values, exact up to the sum's rounding (K·eps; tests/tolerances.py): whether that
        # rounds to 0 depends on the machine's summation order. It gives +inf, or at least the term at that tail.
        floor = naive_coarse(kind, s, t, kept.ids, on, tail_floor=k * torch.finfo(torch.float64).eps)
        assert (ours[~finite].isposinf() | (ours[~finite] >= floor[~finite] * (1 - 1e-9))).all(), (kind, on, k)
        assert (ours <= full * (1 + 1e-10) + 1e-12).all(), (kind, on, k)  # data-processing inequality
        if not banned and k < V - 1:  # (a one-token tail is no merge: equality at K = V − 1)
            assert (ours < full - 1e-9).any()  # a strict bound somewhere: the tail does lose information


@pytest.mark.parametrize("kind,on", CASES)
def test_equal_to_the_full_divergence_at_k_equal_v(kind, on):
    s, t = logits(4, 5, V, seed=3, banned=0.2), logits(4, 5, V, seed=4, banned=0.2)
    torch.testing.assert_close(
        topk_step_divergence(kind, s, TeacherTopK.from_logits(t, V), on=on),
        step_divergence(kind, s, t, on=on),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("kind,on", CASES)
def test_equal_to_the_full_divergence_when_the_tail_ratio_is_constant(kind, on):
    """q_v / p_v the same on every tail token: merging the tail loses nothing."""
    t = logits(4, 5, V, seed=5)
    k = 4
    ids = t.topk(k, -1).indices
    in_top = torch.zeros_like(t, dtype=torch.bool).scatter(-1, ids, True)
    s = torch.where(in_top, logits(4, 5, V, seed=6), t + 0.7)  # any values on S, teacher + const on the tail
    torch.testing.assert_close(
        topk_step_divergence(kind, s, TeacherTopK.from_logits(t, k), on=on),
        step_divergence(kind, s, t, on=on),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("kind,on", CASES)
def test_gradients_match_finite_differences(kind, on):
    s = logits(3, V, seed=7, scale=1.5).requires_grad_()
    teacher = TeacherTopK.from_logits(logits(3, V, seed=8, scale=1.5), 4)
    w = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: topk_step_divergence(kind, x, teacher, on=on, mixture_weight=w), (s,), eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("kind,on", CASES)
def test_minus_inf_logits_give_no_nan(kind, on):
    """Banned tokens in both models, inside and outside the top k, and a student whose whole tail is banned."""
    s, t = logits(5, 6, V, seed=9, banned=0.4), logits(5, 6, V, seed=10, banned=0.4)
    s = s.clone()
    s[0, 0] = -torch.inf
    s[0, 0, t[0, 0].topk(3).indices] = 0.0  # only the teacher's top 3 are left to the student
    for x, y in ((s.float(), t.float()), (s, t)):
        x = x.detach().requires_grad_()
        d = topk_step_divergence(kind, x, TeacherTopK.from_logits(y, 3), on=on)
        assert not d.isnan().any()
        d[d.isfinite()].sum().backward()
        assert not x.grad.isnan().any()


def test_coarse_grained_pair_is_two_distributions():
    s, t = logits(4, 7, V, seed=11, banned=0.3), logits(4, 7, V, seed=12, banned=0.3)
    for k in (1, 5, V):
        log_q, log_p = coarse_grained_log_probs(torch.log_softmax(s, -1), TeacherTopK.from_logits(t, k))
        assert log_q.shape == log_p.shape == (4, 7, k + 1)
        torch.testing.assert_close(log_q.exp().sum(-1), torch.ones(4, 7, dtype=torch.float64))
        torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(4, 7, dtype=torch.float64))
    # stored values are rounded: a top k summing past 1 is scaled back, never a NaN tail
    t = TeacherTopK.from_logits(logits(2, V, seed=13), V - 1)
    rounded = TeacherTopK(t.ids, t.logprobs + 1e-3)
    log_q, log_p = coarse_grained_log_probs(torch.log_softmax(logits(2, V, seed=14), -1), rounded)
    assert not log_p.isnan().any() and torch.isneginf(log_p[:, -1]).all()


def test_tiny_student_tail_is_exact():
    """The student's tail is a log-sum-exp over the tail tokens, not 1 − Σ: exact where 1 − Σ would round to 0."""
    s = torch.zeros(1, V, dtype=torch.float32)
    s[0, 1:] = -40.0  # q(tail) ≈ 11·e^-40 ≈ 5e-17, far below float32's 1 − Σ resolution
    log_q, _ = coarse_grained_log_probs(
        torch.log_softmax(s, -1), TeacherTopK(torch.tensor([[0]]), torch.tensor([[-1.0]]))
    )
    expected = torch.log(torch.tensor(11.0)) - 40.0
    torch.testing.assert_close(log_q[0, -1], expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("kind,on", [("kl", "teacher"), ("js", "teacher"), ("js", "student"), ("tvd", "student")])
def test_renormalised_mode_is_the_dense_restricted_teacher(kind, on):
    s, t = logits(3, 4, V, seed=15), logits(3, 4, V, seed=16)
    top = TeacherTopK.from_logits(t, 5)
    dense = topk_teacher_logits(top.ids, top.logprobs, V)
    assert dense.dtype == torch.float64
    torch.testing.assert_close(
        topk_step_divergence(kind, s, top, on=on, mode="renormalised", temperature=2.0),
        step_divergence(kind, s, dense, on=on, temperature=2.0),
    )


def test_bad_settings_are_refused():
    s, top = logits(2, V, seed=17), TeacherTopK.from_logits(logits(2, V, seed=18), 3)
    with pytest.raises(ValueError, match="renormalised top-k teacher is infinite"):
        topk_step_divergence("rkl", s, top, on="student", mode="renormalised")
    with pytest.raises(ValueError, match="untempered"):
        topk_step_divergence("kl", s, top, on="teacher", temperature=2.0)
    with pytest.raises(ValueError, match="unknown top-k mode"):
        topk_step_divergence("kl", s, top, on="teacher", mode="clipped")
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\)"):
        topk_step_divergence("kl", s[:, :5], top, on="teacher")
    with pytest.raises(ValueError, match="differ in shape"):
        TeacherTopK(top.ids, top.logprobs[:, :2])


def _sides(s, t, labels, k):
    teacher = TeacherTopK.from_logits(t, k, labels)
    return SampledSequences(s, t, labels), SampledSequences(s, teacher, labels)


@pytest.mark.parametrize("mixture", ["stepwise", "exact"])
@pytest.mark.parametrize("kind", KINDS)
def test_loss_with_top_k_teachers_on_both_sides(kind, mixture):
    """f_divergence_loss takes a TeacherTopK on either side: equal to the full loss at K = V, below it at K < V."""
    g = torch.Generator().manual_seed(19)
    labels = torch.randint(0, V, (3, 6), generator=g)
    labels[0, 4:] = -100
    labels[2, 0] = -100
    ts, tt = logits(3, 6, V, seed=20), logits(3, 6, V, seed=21)
    ss, st = logits(3, 6, V, seed=22), logits(3, 6, V, seed=23)
    for k in (V, 4):
        dense_t, top_t = _sides(ts, tt, labels, k)
        dense_s, top_s = _sides(ss, st, labels, k)
        full = f_divergence_loss(kind, teacher_samples=dense_t, student_samples=dense_s, js_mixture=mixture)
        ours = f_divergence_loss(kind, teacher_samples=top_t, student_samples=top_s, js_mixture=mixture)
        if k == V:
            torch.testing.assert_close(ours.loss, full.loss, rtol=1e-10, atol=1e-12)
        else:
            assert ours.loss < full.loss
            for a, b in ((ours.teacher_term, full.teacher_term), (ours.student_term, full.student_term)):
                assert a is None or a <= b


@pytest.mark.parametrize("kind", KINDS)
def test_masked_positions_contribute_exactly_zero(kind):
    labels = torch.tensor([[3, 5, -100, -100], [1, -100, 7, 2]])
    s = logits(2, 4, V, seed=24).float().requires_grad_()
    t = logits(2, 4, V, seed=25).float()
    top = TeacherTopK.from_logits(t, 3, labels)
    garbage = TeacherTopK(top.ids.clone(), top.logprobs.clone(), top.token_logprobs.clone())
    masked = labels == -100
    garbage.logprobs[masked] = float("nan")
    garbage.token_logprobs[masked] = float("nan")
    x = s.detach().clone().masked_fill(masked[..., None], float("nan")).requires_grad_()
    clean = f_divergence_loss(
        kind,
        teacher_samples=SampledSequences(s, top, labels),
        student_samples=SampledSequences(s, top, labels),
        js_mixture="exact",
    ).loss
    dirty = f_divergence_loss(
        kind,
        teacher_samples=SampledSequences(x, garbage, labels),
        student_samples=SampledSequences(x, garbage, labels),
        js_mixture="exact",
    ).loss
    assert torch.equal(clean, dirty)
    dirty.backward()
    assert (x.grad[masked] == 0).all() and not x.grad.isnan().any()


def test_exact_mixture_needs_the_sampled_tokens_logprobs():
    labels = torch.tensor([[3, 5]])
    s, t = logits(1, 2, V, seed=26), logits(1, 2, V, seed=27)
    side = SampledSequences(s, TeacherTopK.from_logits(t, 3), labels)  # no token_logprobs
    with pytest.raises(ValueError, match="token_logprobs"):
        f_divergence_loss("js", teacher_samples=side, student_samples=side, js_mixture="exact")
    with pytest.raises(ValueError, match="unknown teacher_topk_mode"):
        f_divergence_loss("kl", teacher_samples=side, teacher_topk_mode="both")
