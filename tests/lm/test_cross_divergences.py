"""Cross-tokenizer f-DISTILL terms (issue 28) against float64 brute force: the same-tokenizer loss when nothing
differs, the binarised and projected chunk terms, ULD and the hybrid, the top-k teacher, gradients, masks, -inf."""

from dataclasses import dataclass

import pytest
import torch
from tolerances import approx_sums, sum_rtol

from fdistill.divergences import SampledSequences, TeacherTopK, f_divergence_loss, topk_teacher_logits
from fdistill.errors import InputError
from fdistill.lm.cross_divergences import (
    CrossSampledSequences,
    chunk_logprobs,
    cross_f_divergence_loss,
    cross_step_terms,
    hybrid_terms,
    sequence_estimates,
    uld_terms,
)

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


def same_vocab_batches(seed, banned=0.0, topk=None):
    B, T, V = 3, 5, 7
    s = logits(B, T, V, seed=seed, banned=banned)
    t = logits(B, T, V, seed=seed + 1).masked_fill(torch.isneginf(s), -torch.inf)  # both ban the same tokens
    labels = labels_for([5, 3, 4], T, V, seed=seed + 2)
    # the sampled tokens are possible under both models
    s = s.scatter(-1, labels.clamp_min(0)[..., None], 1.0)
    t = t.scatter(-1, labels.clamp_min(0)[..., None], 1.0)
    teacher = TeacherTopK.from_logits(t, topk, labels) if topk else t
    weights = torch.rand(B, T, generator=torch.Generator().manual_seed(seed), dtype=F64) + 0.5
    return s, teacher, labels, weights, V


@pytest.mark.parametrize("topk", [None, 3])
@pytest.mark.parametrize("reduction", ["sequence", "token"])
@pytest.mark.parametrize("js_mixture", ["stepwise", "exact"])
@pytest.mark.parametrize("kind", KINDS)
def test_identical_tokenizers_give_the_same_tokenizer_loss(kind, js_mixture, reduction, topk):
    s_t, t_t, lab_t, _, V = same_vocab_batches(10, banned=0.2, topk=topk)
    s_s, t_s, lab_s, weights, _ = same_vocab_batches(20, banned=0.2, topk=topk)
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
            assert g.item() == approx_sums(e.item(), F64, 15 * (V + 1)), name
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
