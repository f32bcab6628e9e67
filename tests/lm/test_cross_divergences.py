"""Cross-tokenizer f-DISTILL terms (issue 28) against float64 brute force: the same-tokenizer loss when nothing
differs, the binarised and projected chunk terms, ULD and the hybrid, the top-k teacher, gradients, masks, -inf."""

import doctest
import itertools
import math
from dataclasses import dataclass

import pytest
import torch
from tolerances import approx_sums, sum_rtol

from fdistill.divergences import SampledSequences, TeacherTopK, f_divergence_loss, topk_teacher_logits
from fdistill.errors import InputError
from fdistill.lm import cross_divergences
from fdistill.lm.cross_divergences import (
    CrossSampledSequences,
    chunk_logprobs,
    cross_f_divergence_loss,
    cross_step_terms,
    hybrid_terms,
    sequence_estimates,
    uld_terms,
)
from fdistill.lm.cross_tokenizer import align_batch, completion_text, encode_completion, retokenize, vocab_map
from fdistill.testing import cross_tokenizers
from tests.lm.test_cross_tokenizer_alignment import HARD_TEXTS, gemma, smollm2  # noqa: F401 (fixtures)

KINDS = ["kl", "rkl", "js", "tvd"]
CASES = [(k, s) for k in KINDS for s in ("teacher", "student")]
F64 = torch.float64


@dataclass
class Alignment:
    """The attributes of fdistill.lm.cross_tokenizer.CrossAlignment that the terms read."""

    student_chunks: torch.Tensor
    teacher_chunks: torch.Tensor
    num_chunks: torch.Tensor


@dataclass
class Vocab:
    """The attributes of fdistill.lm.cross_tokenizer.VocabMap that the terms read."""

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor


def logits(*shape, seed, scale=2.0, banned=0.0):
    """float64 logits; a fraction ``banned`` of the entries is -inf (never index 0 of a row)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=F64) * scale
    if banned:
        drop = torch.rand(*shape, generator=g) < banned
        drop[..., 0] = False
        x = x.masked_fill(drop, -torch.inf)
    return x


def labels_for(lengths, width, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (len(lengths), width), generator=g)
    for b, n in enumerate(lengths):
        labels[b, n:] = -100
    return labels


def identity_alignment(labels):
    """Every token its own chunk (what two identical tokenizations give)."""
    valid = labels != -100
    chunks = torch.where(valid, valid.long().cumsum(-1) - 1, -1)
    return Alignment(chunks, chunks.clone(), valid.sum(-1))


# ----------------------------------------------------------------------------- brute force (float64, loops)


def brute_divergence(kind, P, Q, on, w=0.5, log=torch.log):
    """The textbook step term of ``kind`` between two probability vectors (float64 tensors, or mpmath numbers with
    ``log=mpmath.log``), 0·log 0 = 0."""
    P, Q = list(P), list(Q)

    def xlog(a, b):
        return sum(x * (log(x) - log(y)) for x, y in zip(a, b) if x > 0)

    if kind == "kl":
        return xlog(P, Q)
    if kind == "rkl":
        return xlog(Q, P)
    if kind == "tvd":
        return 0.5 * sum(abs(x - y) for x, y in zip(P, Q))
    M = [w * x + (1 - w) * y for x, y in zip(P, Q)]
    return xlog(P, M) if on == "teacher" else xlog(Q, M)


def brute_projection(p, q, pairs):
    """(P, Q) over the buckets of equal-bytes ``pairs`` (connected components) plus ``other``, by plain sums."""
    groups = []  # each: (set of student ids, set of teacher ids)
    for s, t in pairs:
        hit = [g for g in groups if s in g[0] or t in g[1]]
        merged = ({s}, {t})
        for g in hit:
            merged[0].update(g[0])
            merged[1].update(g[1])
            groups.remove(g)
        groups.append(merged)
    P = [sum(p[t] for t in g[1]) for g in groups]
    Q = [sum(q[s] for s in g[0]) for g in groups]
    return P + [1 - sum(P)], Q + [1 - sum(Q)]


# ----------------------------------------------------------------------------- identical tokenizers


def same_vocab_batches(seed, banned=0.0, topk=None, dtype=F64):
    B, T, V = 3, 5, 7
    s = logits(B, T, V, seed=seed, banned=banned)
    t = logits(B, T, V, seed=seed + 1).masked_fill(torch.isneginf(s), -torch.inf)  # both ban the same tokens
    labels = labels_for([5, 3, 4], T, V, seed=seed + 2)
    # the sampled tokens are possible under both models
    s = s.scatter(-1, labels.clamp_min(0)[..., None], 1.0)
    t = t.scatter(-1, labels.clamp_min(0)[..., None], 1.0)
    s, t = s.to(dtype), t.to(dtype)
    teacher = TeacherTopK.from_logits(t, topk, labels) if topk else t
    weights = torch.rand(B, T, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype) + 0.5
    return s, teacher, labels, weights, V


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("topk", [None, 3])
@pytest.mark.parametrize("reduction", ["sequence", "token"])
@pytest.mark.parametrize("js_mixture", ["stepwise", "exact"])
@pytest.mark.parametrize("kind", KINDS)
def test_identical_tokenizers_give_the_same_tokenizer_loss(kind, js_mixture, reduction, topk, dtype):
    s_t, t_t, lab_t, _, V = same_vocab_batches(10, banned=0.2, topk=topk, dtype=dtype)
    s_s, t_s, lab_s, weights, _ = same_vocab_batches(20, banned=0.2, topk=topk, dtype=dtype)
    identity = Vocab(torch.arange(V), torch.arange(V))
    items = {"sequence": 5, "token": 17}[reduction]
    common = dict(js_mixture=js_mixture, js_beta=0.3, temperature=1.0 if topk else 1.7, reduction=reduction)
    expected = f_divergence_loss(
        kind,
        teacher_samples=SampledSequences(s_t, t_t, lab_t),
        student_samples=SampledSequences(s_s, t_s, lab_s, num_items_in_batch=items, weights=weights),
        **common,
    )
    got = cross_f_divergence_loss(
        kind,
        vocab_map=identity,
        teacher_samples=CrossSampledSequences(s_t, t_t, lab_t, lab_t, identity_alignment(lab_t)),
        student_samples=CrossSampledSequences(
            s_s, t_s, lab_s, lab_s, identity_alignment(lab_s), num_items_in_batch=items, weights=weights
        ),
        **common,
    )
    for name in ("loss", "teacher_term", "student_term"):
        e, g = getattr(expected, name), getattr(got, name)
        assert (e is None) == (g is None), name
        if e is not None:
            assert g.dtype == e.dtype == dtype
            assert g.item() == approx_sums(e.item(), dtype, 15 * (V + 1)), name
    assert torch.isfinite(got.loss)


def test_a_shuffled_identity_map_changes_nothing_and_a_wrong_map_does():
    """The projection follows the pairs, not the positions: a permuted list of the same pairs gives the same
    terms; pairing different ids (a real bug) does not."""
    s, t, lab, _, V = same_vocab_batches(3)
    align = identity_alignment(lab)
    perm = torch.randperm(V, generator=torch.Generator().manual_seed(0))
    base, _ = cross_step_terms("kl", s, t, lab, lab, align, Vocab(torch.arange(V), torch.arange(V)), on="teacher")
    shuffled, _ = cross_step_terms("kl", s, t, lab, lab, align, Vocab(perm, perm), on="teacher")
    wrong, _ = cross_step_terms("kl", s, t, lab, lab, align, Vocab(torch.arange(V), perm), on="teacher")
    assert torch.allclose(base, shuffled, rtol=sum_rtol(F64, V + 1), atol=0)
    assert not torch.allclose(base, wrong, rtol=1e-3)


# ----------------------------------------------------------------------------- chunk terms against brute force

# student vocabulary 6, teacher vocabulary 8; equal-bytes pairs, with teacher ids 6 and 7 both the bytes of
# student id 4 (a byte-fallback duplicate): one outcome
PAIRS = [(0, 3), (1, 0), (2, 5), (4, 6), (4, 7)]
VS, VT = 6, 8


def two_tokenizer_batch(seed, banned=0.0):
    """One completion: student tokens [a, b | c | d, e], teacher tokens [A | C | D, E, F] (chunks 0, 1, 2): chunk 0
    is two-to-one, chunk 1 one-to-one, chunk 2 two-to-three. A second row has one one-to-one chunk and padding."""
    s = logits(2, 5, VS, seed=seed, banned=banned)
    t = logits(2, 5, VT, seed=seed + 1, banned=banned)
    s_lab = torch.tensor([[1, 2, 0, 5, 3], [4, -100, -100, -100, -100]])
    t_lab = torch.tensor([[2, 3, 1, 4, 7], [6, -100, -100, -100, -100]])
    s = s.scatter(-1, s_lab.clamp_min(0)[..., None], 0.5)
    t = t.scatter(-1, t_lab.clamp_min(0)[..., None], 0.5)
    align = Alignment(
        torch.tensor([[0, 0, 1, 2, 2], [0, -1, -1, -1, -1]]),
        torch.tensor([[0, 1, 2, 2, 2], [0, -1, -1, -1, -1]]),
        torch.tensor([3, 1]),
    )
    vocab = Vocab(torch.tensor([a for a, _ in PAIRS]), torch.tensor([b for _, b in PAIRS]))
    return s, t, s_lab, t_lab, align, vocab


def brute_chunk_terms(kind, on, s, t, s_lab, t_lab, align, *, beta=0.5, exact=False, topk_teacher=None):
    """Per-chunk terms by loops over the chunks: projected at one-to-one chunks, binarised elsewhere."""
    q, p = torch.softmax(s, -1), torch.softmax(t, -1)
    out = torch.zeros(2, 3, dtype=F64)
    for b in range(2):
        prefix = 0.0
        for c in range(int(align.num_chunks[b])):
            s_pos = [i for i in range(5) if align.student_chunks[b, i] == c]
            t_pos = [i for i in range(5) if align.teacher_chunks[b, i] == c]
            p_c = torch.prod(torch.stack([p[b, i, t_lab[b, i]] for i in t_pos]))
            q_c = torch.prod(torch.stack([q[b, i, s_lab[b, i]] for i in s_pos]))
            w = torch.sigmoid(torch.logit(torch.tensor(beta, dtype=F64)) + prefix) if exact else beta
            if len(s_pos) == 1 and len(t_pos) == 1:
                if topk_teacher is None:
                    P, Q = brute_projection(p[b, t_pos[0]], q[b, s_pos[0]], PAIRS)
                else:
                    P, Q = brute_topk_projection(topk_teacher, b, t_pos[0], q[b, s_pos[0]])
            else:
                P, Q = [p_c, 1 - p_c], [q_c, 1 - q_c]
            out[b, c] = brute_divergence(kind, P, Q, on, w)
            prefix += float((torch.log(p_c) - torch.log(q_c)).detach())
    return out


def brute_topk_projection(teacher, b, pos, q):
    """A top-k teacher: one outcome per bucket holding one of its top-k ids (teacher mass: its known top-k values in
    that bucket; student mass: the bucket's ids), ``other`` = 1 − the rest on each side."""
    ids = [int(i) for i in teacher.ids[b, pos]]
    lp = [float(v) for v in teacher.logprobs[b, pos]]
    P, Q, seen = [], [], set()
    for i in ids:
        students = {s for s, t in PAIRS if t == i}
        if not students:
            continue
        teachers = {t for s, t in PAIRS if s in students}
        key = frozenset(teachers)
        if key in seen:
            continue
        seen.add(key)
        P.append(sum(torch.tensor(w, dtype=F64).exp() for j, w in zip(ids, lp) if j in teachers))
        Q.append(sum(q[s] for s in students))
    return P + [1 - sum(P)], Q + [1 - sum(Q)]


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("kind,on", CASES)
def test_chunk_terms_equal_the_brute_force(kind, on, exact):
    s, t, s_lab, t_lab, align, vocab = two_tokenizer_batch(1)
    js_mixture = "exact" if exact else "stepwise"
    terms, mask = cross_step_terms(kind, s, t, s_lab, t_lab, align, vocab, on=on, js_mixture=js_mixture, js_beta=0.4)
    expected = brute_chunk_terms(kind, on, s, t, s_lab, t_lab, align, beta=0.4, exact=exact)
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert torch.allclose(terms, expected, rtol=sum_rtol(F64, 16), atol=1e-15)
    assert (terms[~mask] == 0).all()


@pytest.mark.parametrize("student_near_one", [True, False])
@pytest.mark.parametrize("kind,on", CASES)
def test_binarised_terms_stay_accurate_at_tiny_and_near_one_chunk_probabilities(kind, on, student_near_one):
    """A two-token chunk of probability 1 − 4e-11 on one side against e^-40 on the other: the complements keep
    their digits (``1 − exp(log p_c)`` would keep none); the reference is computed with 50 digits (mpmath)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    near = [[25.0, 0.0, 0.0], [0.0, 25.0, 0.0]]  # labels 0, 1: each token 1 − 2e^-25
    tiny = [[-40.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # labels 0, 1: e^-40 / 2 · 1/3
    s_rows, t_rows = (near, tiny) if student_near_one else (tiny, near)
    s, t = torch.tensor([s_rows], dtype=F64), torch.tensor([t_rows], dtype=F64)
    lab = torch.tensor([[0, 1]])
    align = Alignment(torch.tensor([[0, 0]]), torch.tensor([[0, 0]]), torch.tensor([1]))
    vocab = Vocab(torch.tensor([0]), torch.tensor([0]))
    terms, _ = cross_step_terms(kind, s, t, lab, lab, align, vocab, on=on)

    def chunk_probability(rows):
        out = mpmath.mpf(1)
        for row, y in zip(rows, [0, 1]):
            out *= mpmath.exp(row[y]) / sum(mpmath.exp(v) for v in row)
        return out

    p_c, q_c = chunk_probability(t_rows), chunk_probability(s_rows)
    expected = brute_divergence(kind, [p_c, 1 - p_c], [q_c, 1 - q_c], on, mpmath.mpf(0.5), log=mpmath.log)
    assert terms[0, 0].item() == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("tail", [False, True])
@pytest.mark.parametrize("kind,on", CASES)
def test_top_k_teacher_projection_equals_the_brute_force(kind, on, tail):
    s, t, s_lab, t_lab, align, vocab = two_tokenizer_batch(5)
    teacher = TeacherTopK.from_logits(t, 4, t_lab)
    # make the duplicate bucket (teacher 6 and 7) and an unshared id (teacher 1, 2, 4) part of the top k
    t2 = t.clone()
    t2[0, 1, [6, 7, 1]] = 4.0
    teacher = TeacherTopK.from_logits(t2, 4, t_lab)
    if tail:
        lp = torch.log_softmax(t2, -1)
        kept = torch.zeros_like(lp, dtype=torch.bool).scatter(-1, teacher.ids, True)
        teacher = TeacherTopK(
            teacher.ids, teacher.logprobs, teacher.token_logprobs, torch.logsumexp(lp.masked_fill(kept, -torch.inf), -1)
        )
    terms, _ = cross_step_terms(kind, s, teacher, s_lab, t_lab, align, vocab, on=on)
    expected = brute_chunk_terms(kind, on, s, t2, s_lab, t_lab, align, topk_teacher=teacher)
    assert torch.allclose(terms, expected, rtol=sum_rtol(F64, 16), atol=1e-14)


def test_chunk_logprobs_sum_each_chunk_and_ignore_padding():
    lp = torch.tensor([[-1.0, -2.0, -0.5, float("nan")], [-3.0, -torch.inf, 0.0, 0.0]], dtype=F64)
    chunks = torch.tensor([[0, 0, 1, -1], [0, -1, -1, -1]])
    assert chunk_logprobs(lp, chunks, 2).tolist() == [[-3.0, -0.5], [-3.0, 0.0]]
    with pytest.raises(InputError, match="num_chunks"):
        chunk_logprobs(lp, chunks, 1)


# ----------------------------------------------------------------------------- ULD and the hybrid


def brute_uld(q, p):
    """Σ_i |sort(q)_i − sort(p)_i|, both sorted decreasingly and zero-padded to the larger length, by loops."""
    a, b = sorted(q.tolist(), reverse=True), sorted(p.tolist(), reverse=True)
    n = max(len(a), len(b))
    a, b = a + [0.0] * (n - len(a)), b + [0.0] * (n - len(b))
    return sum(abs(x - y) for x, y in zip(a, b))


def test_uld_equals_the_brute_force_pairing_tokens_by_index():
    s, t = logits(2, 4, VS, seed=7), logits(2, 5, VT, seed=8)
    s_lab = torch.tensor([[1, 2, 3, -100], [0, 1, -100, -100]])
    t_lab = torch.tensor([[1, 2, -100, -100, -100], [0, 1, 2, 3, 4]])
    terms, mask = uld_terms(s, t, s_lab, t_lab, temperature=1.3)
    assert mask.tolist() == [[True, True], [True, True]]
    q, p = torch.softmax(s / 1.3, -1), torch.softmax(t / 1.3, -1)
    for b in range(2):
        for i in range(2):
            assert terms[b, i].item() == pytest.approx(brute_uld(q[b, i], p[b, i]), rel=1e-12)
    # a teacher's top k: the full logits restricted to the same k (renormalised) give the same terms
    topk = TeacherTopK.from_logits(t, 3)
    dense = topk_teacher_logits(topk.ids, topk.logprobs, VT)
    got, _ = uld_terms(s, topk, s_lab, t_lab)
    ref, _ = uld_terms(s, dense, s_lab, t_lab)
    assert torch.allclose(got, ref, rtol=sum_rtol(F64, VT), atol=1e-15)
    assert got[0, 0].item() == pytest.approx(brute_uld(torch.softmax(s[0, 0], -1), torch.softmax(dense[0, 0], -1)))


def test_hybrid_is_the_projected_kl_at_one_to_one_chunks_and_uld_elsewhere():
    s, t, s_lab, t_lab, align, vocab = two_tokenizer_batch(9)
    terms, mask = hybrid_terms(s, t, s_lab, t_lab, align, vocab)
    q, p = torch.softmax(s, -1), torch.softmax(t, -1)
    kl = brute_chunk_terms("kl", "teacher", s, t, s_lab, t_lab, align)
    assert terms[0, 1].item() == pytest.approx(kl[0, 1].item(), rel=1e-12)  # one-to-one
    assert terms[1, 0].item() == pytest.approx(kl[1, 0].item(), rel=1e-12)
    assert terms[0, 0].item() == pytest.approx(brute_uld(q[0, 0], p[0, 0]), rel=1e-12)  # first tokens of chunk 0
    assert terms[0, 2].item() == pytest.approx(brute_uld(q[0, 3], p[0, 2]), rel=1e-12)  # first tokens of chunk 2
    assert (terms[~mask] == 0).all()


def test_hybrid_with_a_top_k_teacher_uses_its_coarse_grained_projection_and_renormalised_top_k():
    s, t, s_lab, t_lab, align, vocab = two_tokenizer_batch(10)
    teacher = TeacherTopK.from_logits(t, 4, t_lab)
    terms, _ = hybrid_terms(s, teacher, s_lab, t_lab, align, vocab)
    q = torch.softmax(s, -1)
    kl = brute_chunk_terms("kl", "teacher", s, t, s_lab, t_lab, align, topk_teacher=teacher)
    assert terms[0, 1].item() == pytest.approx(kl[0, 1].item(), rel=1e-12)
    dense = torch.softmax(topk_teacher_logits(teacher.ids, teacher.logprobs, VT), -1)
    assert terms[0, 0].item() == pytest.approx(brute_uld(q[0, 0], dense[0, 0]), rel=1e-12)
    assert terms[0, 2].item() == pytest.approx(brute_uld(q[0, 3], dense[0, 2]), rel=1e-12)


# ----------------------------------------------------------------------------- gradients, masks, -inf


@pytest.mark.parametrize("kind,on", CASES)
def test_gradients_match_finite_differences_and_the_autograd_of_the_brute_force(kind, on):
    s, t, s_lab, t_lab, align, vocab = two_tokenizer_batch(11)

    def f(x, js_mixture="stepwise"):
        return cross_step_terms(kind, x, t, s_lab, t_lab, align, vocab, on=on, js_mixture=js_mixture, js_beta=0.4)[0]

    assert torch.autograd.gradcheck(f, (s.clone().requires_grad_(),))
    # the exact JS weight carries no gradient (paper §7 note 2), so finite differences do not apply: compare with
    # the autograd of the loop reference, whose weight is a float as well
    for exact in (False, True):
        x, y = s.clone().requires_grad_(), s.clone().requires_grad_()
        (grad,) = torch.autograd.grad(f(x, "exact" if exact else "stepwise").sum(), x)
        ref = brute_chunk_terms(kind, on, y, t, s_lab, t_lab, align, beta=0.4, exact=exact)
        (expected,) = torch.autograd.grad(ref.sum(), y)
        assert torch.allclose(grad, expected, rtol=sum_rtol(F64, 64), atol=1e-14)


def test_uld_and_hybrid_gradients_match_finite_differences():
    s, t, s_lab, t_lab, align, vocab = two_tokenizer_batch(12)
    x = s.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: uld_terms(z, t, s_lab, t_lab)[0], (x,))
    assert torch.autograd.gradcheck(lambda z: hybrid_terms(z, t, s_lab, t_lab, align, vocab)[0], (x,))


@pytest.mark.parametrize("kind", KINDS)
def test_padding_is_never_read_and_gets_no_gradient(kind):
    s, t, s_lab, t_lab, align, vocab = two_tokenizer_batch(13)
    s, t = s.clone(), t.clone()
    s[1, 1:] = float("nan")  # padding positions hold garbage
    t[1, 1:] = float("nan")
    x = s.clone().requires_grad_()
    teacher = CrossSampledSequences(x, t, s_lab, t_lab, align)
    student = CrossSampledSequences(x, t, s_lab, t_lab, align, weights=torch.ones(2, 5, dtype=F64))
    loss = cross_f_divergence_loss(kind, vocab_map=vocab, teacher_samples=teacher, student_samples=student).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert (x.grad[1, 1:] == 0).all()
    assert torch.isfinite(x.grad).all()
    # and the padded row equals its terms alone: clean padding gives the same value
    s2 = two_tokenizer_batch(13)[0]
    clean = cross_f_divergence_loss(
        kind,
        vocab_map=vocab,
        teacher_samples=CrossSampledSequences(s2, two_tokenizer_batch(13)[1], s_lab, t_lab, align),
        student_samples=CrossSampledSequences(s2, two_tokenizer_batch(13)[1], s_lab, t_lab, align),
    ).loss
    assert loss.item() == clean.item()


@pytest.mark.parametrize("kind,on", CASES)
def test_minus_inf_logits_give_no_nan(kind, on):
    """Banned tokens everywhere, and a chunk both models emit with probability exactly 1 (log(1 − 1) = -inf on both
    sides): no NaN in any term, and none in the gradient of the finite terms (a divergence is +inf where one model
    has mass the other bans, as in the same-tokenizer terms)."""
    s, t, s_lab, t_lab, align, vocab = two_tokenizer_batch(14, banned=0.4)
    s, t = s.clone(), t.clone()
    for pos in (0, 1):
        s[0, pos] = -torch.inf
        s[0, pos, s_lab[0, pos]] = 0.0
    t[0, 0] = -torch.inf
    t[0, 0, t_lab[0, 0]] = 0.0
    x = s.requires_grad_()
    terms, _ = cross_step_terms(kind, x, t, s_lab, t_lab, align, vocab, on=on, js_mixture="exact")
    assert not torch.isnan(terms).any()
    assert terms[0, 0].item() == 0.0  # both certain of chunk 0
    finite = torch.isfinite(terms)
    assert finite.sum() >= 3
    terms[finite].sum().backward()
    # the tokens of chunks with a finite term (an infinite term's own logits may get 0 · ∞ = NaN, as in the
    # same-tokenizer terms, but the loss is then +inf anyway)
    in_finite = finite.gather(1, align.student_chunks.clamp_min(0)) & (align.student_chunks >= 0)
    assert in_finite.sum() >= 4
    assert not torch.isnan(x.grad[in_finite]).any()


def test_gradients_reach_only_the_student():
    s, t, s_lab, t_lab, align, vocab = two_tokenizer_batch(15)
    x, y = s.clone().requires_grad_(), t.clone().requires_grad_()
    terms, _ = cross_step_terms("js", x, y, s_lab, t_lab, align, vocab, on="student", js_mixture="exact")
    uld, _ = uld_terms(x, y, s_lab, t_lab)
    (terms.sum() + uld.sum()).backward()
    assert y.grad is None and x.grad.abs().sum() > 0


def test_chunk_weights_are_the_first_student_tokens_weights():
    s, t, s_lab, t_lab, align, vocab = two_tokenizer_batch(16)
    weights = torch.tensor([[2.0, 100.0, 3.0, 0.5, 100.0], [4.0, 9.0, 9.0, 9.0, 9.0]], dtype=F64)
    got = cross_f_divergence_loss(
        "rkl", vocab_map=vocab, student_samples=CrossSampledSequences(s, t, s_lab, t_lab, align, weights=weights)
    )
    terms, _ = cross_step_terms("rkl", s, t, s_lab, t_lab, align, vocab, on="student")
    expected = (2.0 * terms[0, 0] + 3.0 * terms[0, 1] + 0.5 * terms[0, 2] + 4.0 * terms[1, 0]) / 2
    assert got.loss.item() == pytest.approx(expected.item(), rel=1e-14)


def test_bad_inputs_are_refused_before_any_work():
    s, t, s_lab, t_lab, align, vocab = two_tokenizer_batch(17)
    bad = Alignment(align.student_chunks, align.teacher_chunks, torch.tensor([4, 1]))  # chunk 3 has no token
    with pytest.raises(InputError, match="no token"):
        cross_step_terms("kl", s, t, s_lab, t_lab, bad, vocab, on="teacher")
    with pytest.raises(InputError, match="token_logprobs"):
        cross_step_terms("kl", s, TeacherTopK.from_logits(t, 3), s_lab, t_lab, align, vocab, on="teacher")
    with pytest.raises(InputError, match="temperature"):
        cross_step_terms(
            "kl", s, TeacherTopK.from_logits(t, 3, t_lab), s_lab, t_lab, align, vocab, on="teacher", temperature=2.0
        )
    with pytest.raises(InputError, match="student samples"):
        cross_f_divergence_loss(
            "rkl", vocab_map=vocab, teacher_samples=CrossSampledSequences(s, t, s_lab, t_lab, align)
        )


# ----------------------------------------------------------------------------- sequence level


def test_sequence_estimates_are_unbiased_by_enumeration_over_a_tabular_pair():
    """Two distributions over 6 strings (given by their log-probabilities): the expectation of each estimator over
    one teacher sample and one student sample, computed exactly by enumeration, equals the divergence."""
    g = torch.Generator().manual_seed(3)
    logp = torch.log_softmax(torch.randn(6, generator=g, dtype=F64) * 2, 0)
    logq = torch.log_softmax(torch.randn(6, generator=g, dtype=F64) * 2, 0)
    p, q = logp.exp(), logq.exp()
    m = 0.5 * (p + q)
    truth = {
        "kl": (p * (logp - logq)).sum(),
        "rkl": (q * (logq - logp)).sum(),
        "js": 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum(),
        "tvd": 0.5 * (p - q).abs().sum(),
    }
    expectation = dict.fromkeys(truth, 0.0)
    for i in range(6):  # teacher sample s_i ~ p
        for j in range(6):  # student sample s_j ~ q
            est = sequence_estimates(logp[i : i + 1], logq[i : i + 1], logp[j : j + 1], logq[j : j + 1])
            for k in truth:
                expectation[k] += p[i] * q[j] * est[k]
    for k in truth:
        assert expectation[k].item() == pytest.approx(truth[k].item(), rel=1e-12), k
    assert set(sequence_estimates(logp, logq)) == {"kl"}
    assert set(sequence_estimates(logp_on_q=logp, logq_on_q=logq)) == {"rkl"}


# ----------------------------------------------------------------------------- enumeration over two real tokenizers

ALPHABET, MAX_BYTES = "ab ", 4


def all_strings():
    out = [""]
    for n in range(1, MAX_BYTES + 1):
        out += ["".join(c) for c in itertools.product(ALPHABET, repeat=n)]
    return out


class CanonicalModel:
    """A tabular autoregressive model over one tokenizer's ids that puts all its mass on canonical tokenizations of
    the strings over ``ALPHABET`` of at most ``MAX_BYTES`` bytes, ended by EOS.

    Its support is the trie of the sequences ``encode_completion(tok, s, ended=True)``: at a prefix the next token is
    one of the trie's children there. The conditionals are random (seeded, float64), or, given a string distribution
    ``target``, those of ``target`` itself (each child's share of the strings below it): then the model's law of
    the text is exactly ``target``.
    """

    def __init__(self, tok, *, seed=0, target=None):
        self.tok, self.vocab = tok, len(tok)
        self.paths = {s: tuple(encode_completion(tok, s, True)) for s in all_strings()}
        children: dict[tuple, set] = {}
        for path in self.paths.values():
            for k in range(len(path)):
                children.setdefault(path[:k], set()).add(path[k])
        g = torch.Generator().manual_seed(seed)
        self.table = {}
        for node in sorted(children):
            logits = torch.full((self.vocab,), -torch.inf, dtype=F64)
            kids = sorted(children[node])
            if target is None:
                logits[kids] = torch.randn(len(kids), generator=g, dtype=F64) * 1.5
            else:
                mass = {
                    k: sum(target[s] for s, p in self.paths.items() if p[: len(node) + 1] == (*node, k)) for k in kids
                }
                logits[kids] = torch.log(torch.tensor([mass[k] for k in kids], dtype=F64))
            self.table[node] = torch.log_softmax(logits, -1)

    def log_probs(self, prefix):
        return self.table[tuple(prefix)]

    def token_logprobs(self, ids):
        return [float(self.log_probs(ids[:k])[ids[k]]) for k in range(len(ids))]

    def sequences(self, prefix=()):
        """Every token sequence the model emits with positive probability (a walk of its own conditionals)."""
        lp = self.log_probs(prefix)
        for token in torch.isfinite(lp).nonzero().flatten().tolist():
            seq = (*prefix, token)
            if token == self.tok.eos_token_id:
                yield seq
            else:
                yield from self.sequences(seq)


def string_law(model):
    return {s: math.exp(sum(model.token_logprobs(list(p)))) for s, p in model.paths.items()}


def scored_samples(sampler, other, s_is_student):
    """Every sequence ``sampler`` emits, its probability, its text, and both models' log-probabilities of that text
    (the sampler's tokens; the other model's canonical re-tokenization), each also summed over the chunks."""
    rows = []
    for seq in sampler.sequences():
        text, ended = completion_text(sampler.tok, list(seq))
        assert ended
        own = sampler.token_logprobs(list(seq))
        theirs_ids = encode_completion(other.tok, text, ended)
        theirs = other.token_logprobs(theirs_ids)
        s_ids, t_ids = (list(seq), theirs_ids) if s_is_student else (theirs_ids, list(seq))
        s_lp, t_lp = (own, theirs) if s_is_student else (theirs, own)
        align = align_batch(
            sampler.tok if s_is_student else other.tok,
            other.tok if s_is_student else sampler.tok,
            torch.tensor([s_ids]),
            torch.ones(1, len(s_ids)),
            torch.tensor([t_ids]),
            torch.ones(1, len(t_ids)),
        )
        n = int(align.num_chunks[0])
        s_chunks = chunk_logprobs(torch.tensor([s_lp], dtype=F64), align.student_chunks, n)
        t_chunks = chunk_logprobs(torch.tensor([t_lp], dtype=F64), align.teacher_chunks, n)
        rows.append(
            dict(text=text, prob=math.exp(sum(own)), logq=sum(s_lp), logp=sum(t_lp), by_chunks=(t_chunks, s_chunks))
        )
    return rows


def enumerated_expectation(teacher_rows, student_rows):
    """E[sequence_estimates] over one teacher sample and one student sample, exactly: the estimators are means, so
    E = Σ_i p_i est(i, j0) + Σ_j q_j est(i0, j) − est(i0, j0) for any fixed i0, j0 (each half is linear)."""

    def est(i, j):
        t, s = teacher_rows[i], student_rows[j]
        one = lambda x: torch.tensor([x], dtype=F64)  # noqa: E731
        return sequence_estimates(one(t["logp"]), one(t["logq"]), one(s["logp"]), one(s["logq"]))

    base = est(0, 0)
    out = {k: -base[k] for k in base}
    for i, row in enumerate(teacher_rows):
        for k, v in est(i, 0).items():
            out[k] = out[k] + row["prob"] * v
    for j, row in enumerate(student_rows):
        for k, v in est(0, j).items():
            out[k] = out[k] + row["prob"] * v
    return out


def brute_string_divergences(p, q):
    """KL, RKL, JS (½KL(p‖m) + ½KL(q‖m), m = ½(p + q)) and TVD (½ Σ|p − q|) between two laws over strings."""
    kl = sum(p[s] * math.log(p[s] / q[s]) for s in p if p[s] > 0)
    rkl = sum(q[s] * math.log(q[s] / p[s]) for s in q if q[s] > 0)
    m = {s: 0.5 * (p[s] + q[s]) for s in p}
    js = 0.5 * sum(p[s] * math.log(p[s] / m[s]) for s in p if p[s] > 0) + 0.5 * sum(
        q[s] * math.log(q[s] / m[s]) for s in q if q[s] > 0
    )
    return {"kl": kl, "rkl": rkl, "js": js, "tvd": 0.5 * sum(abs(p[s] - q[s]) for s in p)}


def test_sequence_estimates_equal_the_string_divergences_by_enumeration_across_two_tokenizers():
    """Two canonical-only models over the two tiny tokenizers (student: byte-level BPE, teacher: SentencePiece). Their
    laws over the 121 strings of ≤ 4 bytes are ``p(s) = p(canonical tokens of s + EOS)``; enumerating each model's
    token sequences, scoring each text in both tokenizations, and taking the exact expectation of the estimators gives
    the brute-force KL, RKL, JS and TVD between those laws. Chunk sums equal the sequence log-probabilities."""
    tok_s, tok_t = cross_tokenizers()
    teacher, student = CanonicalModel(tok_t, seed=1), CanonicalModel(tok_s, seed=2)
    p, q = string_law(teacher), string_law(student)
    assert sum(p.values()) == pytest.approx(1.0, rel=1e-12) and sum(q.values()) == pytest.approx(1.0, rel=1e-12)
    t_rows = scored_samples(teacher, student, s_is_student=False)
    s_rows = scored_samples(student, teacher, s_is_student=True)
    assert sorted(r["text"] for r in t_rows) == sorted(all_strings())  # one token sequence per string
    for row in t_rows + s_rows:
        t_chunks, s_chunks = row["by_chunks"]
        assert t_chunks.sum().item() == pytest.approx(row["logp"], rel=1e-12, abs=1e-12)
        assert s_chunks.sum().item() == pytest.approx(row["logq"], rel=1e-12, abs=1e-12)
    truth = brute_string_divergences(p, q)
    got = enumerated_expectation(t_rows, s_rows)
    for k in truth:
        assert got[k].item() == pytest.approx(truth[k], rel=1e-10), k
    assert truth["kl"] > 0.05  # the models differ: the check has something to find


def enumerated_batch(sampler, other, student, teacher):
    """Every sequence ``sampler`` emits as one batch row, scored by both models in their own tokenizations
    (``other`` re-tokenizes the text canonically), with the alignment and each row's probability under ``sampler``."""
    s_rows, t_rows, probs = [], [], []
    for seq in sampler.sequences():
        text, ended = completion_text(sampler.tok, list(seq))
        theirs = encode_completion(other.tok, text, ended)
        s_rows.append(list(seq) if sampler is student else theirs)
        t_rows.append(theirs if sampler is student else list(seq))
        probs.append(math.exp(sum(sampler.token_logprobs(list(seq)))))

    def side(model, rows):
        width = max(map(len, rows))
        labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
        logits = torch.zeros(len(rows), width, model.vocab, dtype=F64)
        for b, r in enumerate(rows):
            for k in range(len(r)):
                logits[b, k] = model.log_probs(r[:k])
        return logits, labels

    s_logits, s_lab = side(student, s_rows)
    t_logits, t_lab = side(teacher, t_rows)
    align = align_batch(student.tok, teacher.tok, s_lab.clamp_min(0), s_lab >= 0, t_lab.clamp_min(0), t_lab >= 0)
    return s_logits, t_logits, s_lab, t_lab, align, torch.tensor(probs, dtype=F64)


def test_at_equal_string_laws_the_sequence_estimates_vanish_but_the_chunk_terms_do_not():
    """What the docstring says of the chunk terms, measured: a student with exactly the teacher's law over strings
    (the same ``p(s)``, another tokenizer) has every sequence-level divergence 0, but its expected chunk terms are
    not 0 — the chunk events and the projected next-token outcomes depend on each tokenizer's cuts, so they are not
    the same events for both models (with canonical-only models some projected terms are even infinite). With the
    same tokenizer the same construction gives 0: the terms are then the exact f-DISTILL ones."""
    tok_s, tok_t = cross_tokenizers()
    teacher = CanonicalModel(tok_t, seed=1)
    p = string_law(teacher)
    for stok, should_vanish in ((tok_t, True), (tok_s, False)):
        student = CanonicalModel(stok, target=p)
        q = string_law(student)
        assert all(q[s] == pytest.approx(p[s], rel=1e-12) for s in p)
        if should_vanish:
            vocab = Vocab(torch.arange(len(stok)), torch.arange(len(stok)))
        else:
            vocab = vocab_map(stok, tok_t)
        t_rows = scored_samples(teacher, student, s_is_student=False)
        s_rows = scored_samples(student, teacher, s_is_student=True)
        for k, v in enumerated_expectation(t_rows, s_rows).items():
            assert abs(v.item()) < 1e-12, k
        for kind in ("js", "tvd"):
            for on, sampler, other in (("teacher", teacher, student), ("student", student, teacher)):
                s_logits, t_logits, s_lab, t_lab, align, probs = enumerated_batch(sampler, other, student, teacher)
                terms, _ = cross_step_terms(kind, s_logits, t_logits, s_lab, t_lab, align, vocab, on=on)
                expected = (probs * terms.sum(-1)).sum().item()
                if should_vanish:
                    assert abs(expected) < 1e-12, (kind, on)
                else:
                    assert expected > 0.1, (kind, on)  # measured: js ≈ 0.147, tvd ≈ 0.476 (both sides)


def test_the_docstring_examples_run():
    result = doctest.testmod(cross_divergences, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 6 and result.failed == 0


# ----------------------------------------------------------------------------- the real pair (slow)


@pytest.mark.slow
def test_real_pair_terms_are_finite_and_see_both_kinds_of_chunk(smollm2, gemma):  # noqa: F811
    """SmolLM2 (student) and Gemma 3 (teacher) tokenizers on hard texts, random float32 logits of the real
    vocabulary sizes: every term finite, one-to-one and longer chunks both present, the top-k teacher and the
    baselines run; and SmolLM2 against itself with its identity map gives the same-tokenizer loss."""
    rows = [encode_completion(smollm2, text, True) for text in HARD_TEXTS]
    width = max(map(len, rows))
    pad = smollm2.pad_token_id
    s_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    s_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    t_ids, t_mask = retokenize(smollm2, gemma, s_ids, s_mask)
    align = align_batch(smollm2, gemma, s_ids, s_mask, t_ids, t_mask)
    s_lab = s_ids.masked_fill(s_mask == 0, -100)
    t_lab = t_ids.masked_fill(t_mask == 0, -100)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(*s_ids.shape, len(smollm2), generator=g).requires_grad_()
    t = torch.randn(*t_ids.shape, len(gemma), generator=g)
    vocab = vocab_map(smollm2, gemma)
    assert len(vocab) > 10000
    for teacher in (t, TeacherTopK.from_logits(t, 20, t_lab)):
        for kind, on in CASES:
            terms, mask = cross_step_terms(kind, s, teacher, s_lab, t_lab, align, vocab, on=on, js_mixture="exact")
            assert torch.isfinite(terms).all() and (terms[~mask] == 0).all()
        hybrid, _ = hybrid_terms(s, teacher, s_lab, t_lab, align, vocab)
        uld, _ = uld_terms(s, teacher, s_lab, t_lab)
        (terms.sum() + hybrid.sum() + uld.sum()).backward()
        assert torch.isfinite(s.grad).all()
    layout_sizes = [(align.student_chunks[b] == c).sum() for b in range(len(rows)) for c in range(align.num_chunks[b])]
    assert 1 in {int(n) for n in layout_sizes} and max(int(n) for n in layout_sizes) > 1
    same = identity_alignment(s_lab)
    identity = Vocab(torch.arange(len(smollm2)), torch.arange(len(smollm2)))
    t_same = torch.randn(*s.shape, generator=g)
    got = cross_f_divergence_loss(
        "tvd",
        vocab_map=identity,
        teacher_samples=CrossSampledSequences(s, t_same, s_lab, s_lab, same),
        student_samples=CrossSampledSequences(s, t_same, s_lab, s_lab, same),
    ).loss
    batch = SampledSequences(s, t_same, s_lab)
    expected = f_divergence_loss("tvd", teacher_samples=batch, student_samples=batch).loss
    assert got.item() == approx_sums(expected.item(), torch.float32, int(s_mask.sum()) * len(smollm2))
