"""Properties of every divergence term, the mixture weight, the reductions and the baseline terms."""

import math

import pytest
import torch
import torch.nn.functional as F
from tolerances import sum_rtol

from fdistill.divergences import (
    SampledSequences,
    cross_entropy_terms,
    engine_terms,
    exact_js_mixture_weight,
    f_divergence_loss,
    hidden_state_mse_terms,
    reduce_terms,
    step_divergence,
    token_entropy,
    token_logprobs,
    word_kd_terms,
)

KINDS = ["kl", "rkl", "js", "tvd"]
SIDES = ["teacher", "student"]
CASES = [(k, s) for k in KINDS for s in SIDES]


def naive(kind, s, t, on, w=0.5, temperature=1.0):
    """Textbook formula in float64 from probabilities (no log-space tricks)."""
    q = torch.softmax(s.double() / temperature, -1)
    p = torch.softmax(t.double() / temperature, -1)
    if kind == "kl":
        return (p * (p.log() - q.log())).sum(-1)
    if kind == "rkl":
        return (q * (q.log() - p.log())).sum(-1)
    if kind == "tvd":
        return 0.5 * (q - p).abs().sum(-1)
    w = torch.as_tensor(w, dtype=torch.float64)
    if w.dim():
        w = w[..., None]
    m = w * p + (1 - w) * q
    a = p if on == "teacher" else q
    return (a * (a.log() - m.log())).sum(-1)


def logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


@pytest.mark.parametrize("kind,on", CASES)
def test_nonnegative_and_zero_when_equal(kind, on):
    s, t = logits(4, 7, 50, seed=1), logits(4, 7, 50, seed=2)
    w = torch.rand(4, 7, generator=torch.Generator().manual_seed(3))
    d = step_divergence(kind, s, t, on=on, mixture_weight=w)
    assert d.shape == (4, 7) and d.dtype == torch.float32
    assert (d >= 0).all() and (d > 1e-3).all()
    same = step_divergence(kind, s, s.clone(), on=on, mixture_weight=w)
    torch.testing.assert_close(same, torch.zeros_like(same), atol=1e-6, rtol=0)


def closed_form(terms) -> bool:
    """Whether ``terms`` came from the closed-form gradient path (a student with, a teacher without gradient)."""
    return type(terms.grad_fn).__name__ == "_StepTermsBackward"


@pytest.mark.parametrize("teacher_grad", [True, False], ids=["autograd", "closed-form"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("kind,on", CASES)
def test_value_and_gradients_match_naive_float64(kind, on, temperature, teacher_grad):
    """Both gradient paths: autograd through the terms (a teacher that needs a gradient too) and the closed form
    ``(c − q Σc) / T`` (a frozen teacher: every training step)."""
    s = logits(3, 5, 40, seed=4).requires_grad_()
    t = logits(3, 5, 40, seed=5).requires_grad_(teacher_grad)
    w = torch.rand(3, 5, generator=torch.Generator().manual_seed(6))
    s64 = s.detach().double().requires_grad_()
    t64 = t.detach().double().requires_grad_()
    ours = step_divergence(kind, s, t, on=on, mixture_weight=w, temperature=temperature)
    assert closed_form(ours) is not teacher_grad
    ref = naive(kind, s64, t64, on, w.double(), temperature)
    torch.testing.assert_close(ours.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    g = torch.randn(3, 5, dtype=torch.float64)
    ours.backward(g.float())
    ref.backward(g)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)
    if teacher_grad:
        torch.testing.assert_close(t.grad.double(), t64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind,on", CASES)
def test_closed_form_gradient_passes_gradcheck(kind, on):
    """The closed-form logit gradient against finite differences in float64, with a temperature, per-row exact JS
    mixture logits (``MixtureLogit``) and tokens both models ban."""
    from fdistill.divergences import MixtureLogit

    s, t = logits(2, 3, 12, seed=21).double(), logits(2, 3, 12, seed=22).double()
    s[..., :2] = t[..., :2] = float("-inf")
    z = MixtureLogit(torch.randn(2, 3, generator=torch.Generator().manual_seed(23), dtype=torch.float64) * 3)

    def f(x):
        terms = step_divergence(kind, x, t, on=on, mixture_weight=z, temperature=1.7)
        assert closed_form(terms)
        return terms

    assert torch.autograd.gradcheck(f, (s.requires_grad_(),))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,on", CASES)
def test_closed_form_gradient_of_half_logits_is_their_dtype(kind, on, dtype):
    """Half-precision logits: computed in float32, the gradient returned in the logits' dtype, equal to autograd's
    on the float32 upcast to that dtype's rounding."""
    s, t = logits(4, 64, seed=24).to(dtype), logits(4, 64, seed=25).to(dtype)
    x = s.clone().requires_grad_()
    step_divergence(kind, x, t, on=on).sum().backward()
    y = s.float().requires_grad_()
    from fdistill.divergences import _autograd_terms, _log_probs

    _autograd_terms(y, _log_probs(t, 1.0, torch.float32), kind, on, None, 1.0)[0].sum().backward()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(
        x.grad.float(),
        y.grad.to(dtype).float(),
        rtol=0,
        atol=float(torch.finfo(dtype).eps) * y.grad.abs().max().item() * 2,
    )


@pytest.mark.parametrize("kind,on", CASES)
def test_float64_in_float64_out(kind, on):
    s, t = logits(2, 30, seed=7).double(), logits(2, 30, seed=8).double()
    d = step_divergence(kind, s, t, on=on)
    assert d.dtype == torch.float64
    torch.testing.assert_close(d, naive(kind, s, t, on), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind,on", CASES)
def test_bf16_inputs_are_computed_in_float32(kind, on):
    s, t = logits(6, 300, seed=9).bfloat16(), logits(6, 300, seed=10).bfloat16()
    d = step_divergence(kind, s, t, on=on)
    assert d.dtype == torch.float32
    # same as upcasting first, and float32-accurate against float64 on the bf16 values
    torch.testing.assert_close(d, step_divergence(kind, s.float(), t.float(), on=on), rtol=0, atol=0)
    torch.testing.assert_close(d.double(), naive(kind, s.double(), t.double(), on), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("teacher_grad", [True, False], ids=["autograd", "closed-form"])
@pytest.mark.parametrize("kind,on", CASES)
def test_shared_banned_tokens_give_finite_values_and_gradients(kind, on, teacher_grad):
    s = logits(4, 20, seed=11)
    t = logits(4, 20, seed=12)
    banned = torch.zeros(4, 20, dtype=torch.bool)
    banned[:, :5] = True
    s = s.masked_fill(banned, float("-inf")).requires_grad_()
    t = t.masked_fill(banned, float("-inf")).requires_grad_(teacher_grad)
    d = step_divergence(kind, s, t, on=on)
    d.sum().backward()
    assert torch.isfinite(d).all() and torch.isfinite(s.grad).all()
    assert not teacher_grad or torch.isfinite(t.grad).all()
    # banned tokens behave as if they were not in the vocabulary
    ref = step_divergence(kind, s.detach()[:, 5:], t.detach()[:, 5:], on=on)
    torch.testing.assert_close(d.detach(), ref, rtol=1e-6, atol=1e-7)
    assert (s.grad[banned] == 0).all()


@pytest.mark.parametrize("teacher_grad", [True, False], ids=["autograd", "closed-form"])
@pytest.mark.parametrize("kind,on", CASES)
def test_support_mismatch_gives_inf_or_finite_never_nan(kind, on, teacher_grad):
    """A token banned by one model only: KL/RKL may be +inf (correctly), JS and TVD stay finite."""
    s = logits(3, 10, seed=13).requires_grad_()
    t = logits(3, 10, seed=14)
    t = t.masked_fill(torch.arange(10) < 2, float("-inf")).requires_grad_(teacher_grad)  # teacher bans tokens 0, 1
    d = step_divergence(kind, s, t, on=on)
    assert not torch.isnan(d).any()
    if kind == "rkl":
        assert torch.isinf(d).all()
    else:
        assert torch.isfinite(d).all()
        d.sum().backward()
        assert torch.isfinite(s.grad).all() and (not teacher_grad or torch.isfinite(t.grad).all())


def test_js_mixture_weight_extremes_are_the_kls():
    """w = 0 makes the teacher half KL(p‖q); w = 1 makes the student half KL(q‖p) (skew-KL ends)."""
    s, t = logits(5, 33, seed=15), logits(5, 33, seed=16)
    kl = step_divergence("kl", s, t, on="teacher")
    rkl = step_divergence("rkl", s, t, on="student")
    torch.testing.assert_close(step_divergence("js", s, t, on="teacher", mixture_weight=0.0), kl)
    torch.testing.assert_close(step_divergence("js", s, t, on="student", mixture_weight=1.0), rkl)
    # symmetric JS at w = ½: swapping the models swaps the halves
    a = step_divergence("js", s, t, on="teacher")
    b = step_divergence("js", t, s, on="student")
    torch.testing.assert_close(a, b)
    assert (step_divergence("js", s, t, on="teacher") <= math.log(2) + 1e-6).all()


def test_js_mixture_weight_carries_no_gradient():
    s, t = logits(2, 9, seed=17), logits(2, 9, seed=18)
    w = torch.full((2,), 0.3, requires_grad=True)
    step_divergence("js", s.requires_grad_(), t, on="student", mixture_weight=w).sum().backward()
    assert w.grad is None and s.grad is not None


def test_exact_mixture_weight_by_hand():
    lp = torch.tensor([[-9.0, -9.0, -1.0, -2.0, -0.5, 0.0]])
    lq = torch.tensor([[-1.0, -1.0, -0.5, -3.0, -1.5, 0.0]])
    mask = torch.tensor([[False, False, True, True, True, False]])  # prompt, prompt, y1, y2, y3, pad
    for beta in (0.5, 0.25):
        w = exact_js_mixture_weight(lp, lq, mask, beta=beta)
        logit_b = math.log(beta / (1 - beta))
        sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
        assert w[0, 2].item() == pytest.approx(beta)  # empty prefix: the mixture is β p + (1−β) q
        assert w[0, 3].item() == pytest.approx(sig(logit_b + (-1.0 + 0.5)))
        assert w[0, 4].item() == pytest.approx(sig(logit_b + (-1.0 + 0.5) + (-2.0 + 3.0)))
    assert not w.requires_grad


def test_exact_mixture_weight_is_stable_for_long_prefixes():
    lp = torch.full((1, 2000), -5.0)
    lq = torch.full((1, 2000), -1.0)
    w = exact_js_mixture_weight(lp, lq, torch.ones(1, 2000, dtype=torch.bool))
    assert torch.isfinite(w).all() and w[0, -1].item() == 0.0 and w[0, 0].item() == 0.5


def batch(b=4, t=6, v=25, seed=20, prompt=2):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :prompt] = -100
    labels[1, 4:] = -100  # an early EOS
    return SampledSequences(logits(b, t, v, seed=seed + 1).requires_grad_(), logits(b, t, v, seed=seed + 2), labels)


@pytest.mark.parametrize("mixture", ["stepwise", "exact"])
@pytest.mark.parametrize("kind", KINDS)
def test_masked_positions_contribute_exactly_zero(kind, mixture):
    t_side, s_side = batch(seed=30), batch(seed=40)
    clean = f_divergence_loss(kind, teacher_samples=t_side, student_samples=s_side, js_mixture=mixture).loss
    for side in (t_side, s_side):
        dirty = side.student_logits.detach().clone()
        dirty[side.labels == -100] = float("nan")
        side.student_logits = dirty.requires_grad_()
        side.teacher_logits = side.teacher_logits.masked_fill((side.labels == -100)[..., None], float("nan"))
    out = f_divergence_loss(kind, teacher_samples=t_side, student_samples=s_side, js_mixture=mixture)
    assert out.loss.item() == clean.item()
    out.loss.backward()
    for side in (t_side, s_side):
        if side.student_logits.grad is not None:
            assert (side.student_logits.grad[side.labels == -100] == 0).all()
            assert torch.isfinite(side.student_logits.grad).all()


@pytest.mark.parametrize("mixture", ["stepwise", "exact"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_position_scored_takes_views_and_gives_the_gathered_paths_loss_and_gradient(kind, mixture):
    """Three layouts of the same batch give the same loss and logit gradient, the float64 brute-force loss, and
    exactly 0 gradient at the padding, whose logits are NaN: no masked position (views of the logits); one padded
    column (4 of 5 positions scored: views, the padding's terms and gradient set to 0); four padded columns (4 of
    8: gathered rows)."""
    b, t, v = 3, 4, 7
    sides = {}
    for name, seed in (("teacher", 90), ("student", 91)):
        s, te = logits(b, t, v, seed=seed), logits(b, t, v, seed=seed + 10)
        labels = torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(seed))
        sides[name] = (s, te, labels)

    def loss_and_grads(pad: int):
        samples, leaves = {}, {}
        for name, (s, te, labels) in sides.items():
            s = torch.cat([s, torch.full((b, pad, v), float("nan"))], 1)
            te = torch.cat([te, torch.full((b, pad, v), float("nan"))], 1)
            labels = torch.cat([labels, torch.full((b, pad), -100)], 1)
            leaves[name] = s.clone().requires_grad_()
            samples[name] = SampledSequences(leaves[name], te, labels)
        out = f_divergence_loss(
            kind, teacher_samples=samples["teacher"], student_samples=samples["student"], js_mixture=mixture
        )
        out.loss.backward()
        grads = {n: leaf.grad for n, leaf in leaves.items() if leaf.grad is not None}
        for grad in grads.values():
            assert torch.equal(grad[:, t:], torch.zeros_like(grad[:, t:]))  # the padding's, exactly
        return out.loss, {n: grad[:, :t] for n, grad in grads.items()}

    whole, whole_grads = loss_and_grads(pad=0)
    assert whole_grads  # the sides the divergence uses
    for pad in (1, 4):
        padded, padded_grads = loss_and_grads(pad)
        torch.testing.assert_close(whole, padded, rtol=sum_rtol(torch.float32, t * v), atol=0.0)
        assert whole_grads.keys() == padded_grads.keys()
        for name in whole_grads:
            torch.testing.assert_close(
                whole_grads[name], padded_grads[name], rtol=sum_rtol(torch.float32, v), atol=1e-7
            )
    if mixture == "stepwise":  # the exact mixture's prefix weight is checked against its own reference elsewhere
        weights = {"kl": (1.0, 0.0), "rkl": (0.0, 1.0), "js": (0.5, 0.5), "tvd": (0.5, 0.5)}[kind]
        reference = sum(
            w * naive(kind, sides[name][0], sides[name][1], name).sum() / b
            for w, name in zip(weights, ("teacher", "student"))
            if w
        )
        assert whole.item() == pytest.approx(reference.item(), rel=1e-5)


@pytest.mark.parametrize("prompt", [2, 0], ids=["gathered-rows", "views"])
@pytest.mark.parametrize("grad", [True, False], ids=["closed-form", "no-grad"])
@pytest.mark.parametrize("kind", ["rkl", "js", "tvd"])
def test_sample_details_are_the_entropy_and_teacher_logprobs_and_change_nothing_else(kind, grad, prompt):
    """sample_details: the student's entropies and the teacher's log-probabilities of the sampled tokens on the
    student's samples, from the terms' log-softmaxes, equal the float64 brute force (0 at masked positions, whose
    logits are NaN when most positions are scored and the logits are read as views; a banned token gives no
    NaN); the loss and its gradient are those without details."""
    t_side, s_side = batch(seed=110, prompt=prompt), batch(seed=120, prompt=prompt)
    with torch.no_grad():
        s_side.student_logits[0, 3, 2] = float("-inf")  # a banned token at a scored position: 0 · log 0 = 0
        if not prompt:  # 22 of 24 positions scored: views, and the two masked positions' logits unread
            for side in (t_side, s_side):
                side.student_logits[side.labels == -100] = float("nan")
                side.teacher_logits[side.labels == -100] = float("nan")
    results = []
    for details in (False, True):
        for side in (t_side, s_side):
            side.student_logits = side.student_logits.detach().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out = f_divergence_loss(kind, teacher_samples=t_side, student_samples=s_side, sample_details=details)
        if grad:
            out.loss.backward()
        results.append(
            (out, [None if x.student_logits.grad is None else x.student_logits.grad for x in (t_side, s_side)])
        )
    (plain, plain_grads), (detailed, detailed_grads) = results
    assert plain.student_entropies is None and plain.teacher_label_logprobs is None
    assert torch.equal(plain.loss, detailed.loss)  # the same arithmetic; details are read off it
    for a, b in zip(plain_grads, detailed_grads):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
    mask = s_side.labels != -100
    q = torch.softmax(s_side.student_logits.detach().double(), -1)
    entropy = -torch.where(q > 0, q * q.log(), torch.zeros_like(q)).sum(-1)
    log_p = torch.log_softmax(s_side.teacher_logits.double(), -1)
    picked = log_p.gather(-1, s_side.labels.clamp_min(0)[..., None]).squeeze(-1)
    assert torch.isfinite(detailed.student_entropies).all() and torch.isfinite(detailed.teacher_label_logprobs).all()
    assert torch.isfinite(detailed.loss) and all(g is None or torch.isfinite(g).all() for g in detailed_grads)
    torch.testing.assert_close(
        detailed.student_entropies.double(), torch.where(mask, entropy, 0.0), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        detailed.teacher_label_logprobs.double(), torch.where(mask, picked, 0.0), rtol=1e-5, atol=1e-5
    )


def test_combined_loss_uses_the_right_sides():
    t_side, s_side = batch(seed=50), batch(seed=60)
    kl = f_divergence_loss("kl", teacher_samples=t_side)
    rkl = f_divergence_loss("rkl", student_samples=s_side)
    js = f_divergence_loss("js", teacher_samples=t_side, student_samples=s_side, js_beta=0.3)
    tvd = f_divergence_loss("tvd", teacher_samples=t_side, student_samples=s_side)
    assert kl.student_term is None and rkl.teacher_term is None
    torch.testing.assert_close(js.loss, 0.3 * js.teacher_term + 0.7 * js.student_term)
    torch.testing.assert_close(tvd.loss, 0.5 * tvd.teacher_term + 0.5 * tvd.student_term)
    mask = t_side.labels != -100
    terms = step_divergence("kl", t_side.student_logits, t_side.teacher_logits, on="teacher")
    torch.testing.assert_close(kl.loss, terms[mask].sum() / 4)  # sequence reduction: sum / #sequences
    tok = f_divergence_loss("kl", teacher_samples=t_side, reduction="token")
    torch.testing.assert_close(tok.loss, terms[mask].mean())


@pytest.mark.parametrize("reduction", ["sequence", "token"])
@pytest.mark.parametrize("kind", KINDS)
def test_micro_batches_with_global_counts_equal_the_full_batch(kind, reduction):
    t_side, s_side = batch(b=6, seed=70), batch(b=6, seed=80)
    full = f_divergence_loss(
        kind, teacher_samples=t_side, student_samples=s_side, js_mixture="exact", reduction=reduction
    )

    def count(side):
        mask = side.labels != -100
        return mask.any(-1).sum() if reduction == "sequence" else mask.sum()

    total = 0.0
    for part in (slice(0, 2), slice(2, 6)):
        halves = [
            SampledSequences(
                x.student_logits[part], x.teacher_logits[part], x.labels[part], num_items_in_batch=count(x)
            )
            for x in (t_side, s_side)
        ]
        total = (
            total
            + f_divergence_loss(
                kind, teacher_samples=halves[0], student_samples=halves[1], js_mixture="exact", reduction=reduction
            ).loss
        )
    torch.testing.assert_close(total, full.loss)


def test_reduce_terms_ignores_nan_at_masked_positions():
    terms = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("nan"), float("nan")], [float("nan")] * 3])
    mask = ~terms.isnan()
    assert reduce_terms(terms, mask).item() == pytest.approx(6.0 / 2)  # two non-empty sequences
    assert reduce_terms(terms, mask, reduction="token").item() == pytest.approx(2.0)
    assert reduce_terms(terms, mask, num_items_in_batch=12).item() == pytest.approx(0.5)


def test_token_logprobs_and_cross_entropy_match_torch():
    s = logits(3, 4, 17, seed=90)
    labels = torch.randint(0, 17, (3, 4), generator=torch.Generator().manual_seed(91))
    labels[0, 0] = -100
    ce = cross_entropy_terms(s, labels)
    ref = F.cross_entropy(s.transpose(1, 2), labels, reduction="none", ignore_index=-100)
    torch.testing.assert_close(ce, ref)
    torch.testing.assert_close(token_logprobs(s, labels), -ref)


def test_engine_is_rkl_without_the_entropy_bonus():
    s, t = logits(3, 5, 40, seed=92), logits(3, 5, 40, seed=93)
    eng = engine_terms(s, t)
    torch.testing.assert_close(eng, step_divergence("rkl", s, t, on="student") + token_entropy(s), rtol=1e-5, atol=1e-5)
    q, p = torch.softmax(s.double(), -1), torch.softmax(t.double(), -1)
    torch.testing.assert_close(eng.double(), -(q * p.log()).sum(-1), rtol=1e-5, atol=1e-5)
    t_banned = t.clone()
    t_banned[..., 0] = float("-inf")
    s_banned = s.clone()
    s_banned[..., 0] = float("-inf")
    assert torch.isfinite(engine_terms(s_banned, t_banned)).all()


def test_word_kd_matches_kl_div_times_t_squared():
    s, t = logits(3, 5, 40, seed=94), logits(3, 5, 40, seed=95)
    temperature = 2.0
    ref = (
        F.kl_div(
            torch.log_softmax(s / temperature, -1),
            torch.log_softmax(t / temperature, -1),
            log_target=True,
            reduction="none",
        ).sum(-1)
        * temperature**2
    )
    torch.testing.assert_close(word_kd_terms(s, t, temperature=temperature), ref, rtol=1e-5, atol=1e-6)


def test_hidden_state_mse():
    a, b = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    torch.testing.assert_close(hidden_state_mse_terms(a, b), F.mse_loss(a, b, reduction="none").mean(-1))
    with pytest.raises(ValueError, match="hidden sizes differ"):
        hidden_state_mse_terms(a, torch.randn(2, 3, 9))


def test_entropy():
    s = logits(4, 12, seed=96)
    q = torch.softmax(s.double(), -1)
    torch.testing.assert_close(token_entropy(s).double(), -(q * q.log()).sum(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda s, t: step_divergence("hellinger", s, t, on="teacher"), "unknown divergence 'hellinger'"),
        (lambda s, t: step_divergence("kl", s, t, on="both"), "on must be 'teacher' or 'student'"),
        (lambda s, t: step_divergence("kl", s, t[..., :-1], on="teacher"), "differ in shape"),
        (lambda s, t: step_divergence("kl", s, t, on="teacher", temperature=0), "temperature must be > 0"),
        (lambda s, t: step_divergence("js", s, t, on="teacher", mixture_weight=1.5), "mixture_weight must lie"),
        (lambda s, t: f_divergence_loss("js", teacher_samples=None), "js needs teacher samples"),
        (lambda s, t: f_divergence_loss("rkl"), "rkl needs student samples"),
        (lambda s, t: f_divergence_loss("js", js_beta=1.0), "js_beta must lie"),
        (lambda s, t: f_divergence_loss("js", js_mixture="approx"), "unknown js_mixture"),
        (lambda s, t: reduce_terms(s[..., 0], s[..., 0] > 0, reduction="mean"), "unknown reduction"),
    ],
)
def test_bad_input_gives_one_clear_error(call, message):
    s, t = logits(2, 3, 7, seed=97), logits(2, 3, 7, seed=98)
    with pytest.raises(ValueError, match=message):
        call(s, t)


def test_exact_js_stays_finite_when_the_prefix_weight_saturates():
    """40 steps where p(y_<t) ≫ q(y_<t): σ(z) rounds to 1 in float32, yet each term stays ≤ −log(1 − w) < ∞."""
    teacher = torch.tensor([0.0, float("-inf"), 8.0, 0.0, 0.0]).expand(1, 40, 5).clone()
    student = torch.zeros(1, 40, 5, requires_grad=True)
    labels = torch.full((1, 40), 2)
    side = SampledSequences(student, teacher, labels)
    out = f_divergence_loss("js", teacher_samples=side, student_samples=side, js_mixture="exact")
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(student.grad).all()
    # the same loss in float64, where σ(z) has not saturated yet over these prefixes
    side64 = SampledSequences(student.detach().double(), teacher.double(), labels)
    ref = f_divergence_loss("js", teacher_samples=side64, student_samples=side64, js_mixture="exact").loss
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-4)
