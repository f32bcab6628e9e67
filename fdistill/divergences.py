"""Step-wise f-divergences for sequence-level distillation (f-DISTILL), as pure tensor functions.

This module is the one definition of every loss term in fdistill: the trainer, the
kernels, the metrics and the baselines all import it.

Notation (Wen et al., "f-Divergence Minimization for Sequence-Level Knowledge
Distillation", ACL 2023 — "the paper"): teacher ``p``, student ``q``. At position
``t`` of a sampled sequence both models give a next-token distribution ``p_t`` and
``q_t`` over the vocabulary. A sequence-level divergence decomposes into a sum over
positions of a per-step divergence at sampled prefixes (the paper's Theorem 1,
Appendix A, Eqs. 14, 21, 22, 36, 37):

=========  ==============================  ==============================  ===================
kind       term on teacher samples y ~ p   term on student samples y' ~ q  combined loss
=========  ==============================  ==============================  ===================
``kl``     ``Σ_v p log(p/q)``              —                               teacher term
``rkl``    —                               ``Σ_v q log(q/p)``              student term
``js``     ``Σ_v p log(p/m)``              ``Σ_v q log(q/m)``              β·teacher + (1−β)·student
``tvd``    ``½ Σ_v |q − p|``               ``½ Σ_v |q − p|``               ½·teacher + ½·student
=========  ==============================  ==============================  ===================

with β = ½ for the paper's JS. KL, RKL and JS decompose exactly; the TVD terms are an
upper bound on the sequence-level TVD (Theorem 1b).

The JS mixture ``m_t``. The paper's code used ``m_t = ½ p_t + ½ q_t`` (Eq. 11,
``js_mixture="stepwise"``). Its §7 note 1 gives the exact conditional
``m(Y_t | y_<t) = m(y_≤t) / m(y_<t)`` (Eq. 12), which works out to

    m_t = w_t · p_t + (1 − w_t) · q_t,   w_t = σ(logit β + log p(y_<t) − log q(y_<t)),

with ``log p(y_<t)``, ``log q(y_<t)`` the cumulative log-probabilities of the sampled
prefix (``js_mixture="exact"``, :func:`exact_js_mixture_weight`). ``w_t`` carries no
gradient. With it the expected JS step terms equal the sequence-level (skew) JS
divergence ``β·KL(p‖m) + (1−β)·KL(q‖m)``, ``m = βp + (1−β)q`` exactly.

Stop-gradient (§7 note 2): sampled prefixes carry no gradient; gradients flow only
through the student's per-step distributions (and through ``m_t``, which contains them).

Numerics: everything is computed in float32 (float64 stays float64) from logits with
``log_softmax``; mixtures are formed in log space with ``logaddexp``; terms of the form
``a · log(a/b)`` are taken as exactly 0 where ``a = 0`` (a banned, ``-inf``-logit token),
so ``-inf`` logits give neither NaN values nor NaN gradients. Positions that are masked
out contribute exactly 0 to values and gradients whatever their logits hold, NaN included.

Why in-house: the terms themselves are a few lines of torch; what no library provides
is the exact JS mixture, the TVD bound, and one definition shared by every objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fdistill.errors import InputError

__all__ = [
    "DIVERGENCES",
    "JS_MIXTURES",
    "REDUCTIONS",
    "DivergenceLoss",
    "SampledSequences",
    "count_items",
    "cross_entropy_terms",
    "engine_terms",
    "MixtureLogit",
    "exact_js_mixture_logit",
    "exact_js_mixture_weight",
    "f_divergence_loss",
    "hidden_state_mse_terms",
    "reduce_terms",
    "sequence_mask",
    "side_weight",
    "step_divergence",
    "token_entropy",
    "token_logprobs",
    "TOPK_MODES",
    "TeacherTopK",
    "coarse_grained_log_probs",
    "topk_step_divergence",
    "topk_teacher_log_probs",
    "topk_teacher_logits",
    "weighted",
    "word_kd_terms",
]

DIVERGENCES = ("kl", "rkl", "js", "tvd")
SIDES = ("teacher", "student")
JS_MIXTURES = ("stepwise", "exact")
REDUCTIONS = ("sequence", "token")
IGNORE_INDEX = -100

Divergence = Literal["kl", "rkl", "js", "tvd"]
Side = Literal["teacher", "student"]

# A completion set scored at this share of its positions or more is read as (B·T, V) views in place of gathered
# rows (`_side_terms`): above it, the terms at its unscored rows cost less than the gather and the backward's
# scatter they save; below it, more. `python scripts/bench_scored_share.py` times both ways (2 CPU cores, two
# (8, 32, 49 152) sets: views 1.1–1.5x faster from 4/5 scored up for tvd, js and kl; gathered rows 1.5–3x faster
# at 1/2 to 3/5; about even at 0.7).
_DENSE_SHARE = 0.75


# ----------------------------------------------------------------------------- helpers


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 for float64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def to_compute_dtype(x: Tensor) -> Tensor:
    """``x`` in the dtype every divergence is computed in (`_compute_dtype`); no copy when it is already."""
    return x.to(_compute_dtype(x))


def _log_probs(logits: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    """``log softmax(logits / T)`` in ``dtype`` (upcast before dividing)."""
    logits = logits.to(dtype)
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1)


def _xlogy_ratio(log_a: Tensor, log_b: Tensor, a: Tensor | None = None) -> Tensor:
    """Element-wise ``a · (log a − log b)`` with the convention ``0 · log 0 = 0`` (``a = exp(log_a)``, computed
    here unless the caller has it).

    The difference is zeroed *before* the product where ``a = 0``, so neither the value
    nor the gradient sees ``0 · ∞`` (torch.where alone would give NaN gradients).
    """
    a = log_a.exp() if a is None else a
    diff = torch.where(a > 0, log_a - log_b, 0.0)
    return a * diff


# ----------------------------------------------------------------------------- the rules of the settings
# Each rule is written here once; `fdistill.lm.config` and `fdistill.kernels` call these too.


def check_temperature(temperature: float) -> None:
    """A loss temperature is positive."""
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature!r}; use 1.0 for the untempered divergence.")


def check_js_beta(beta: float) -> None:
    """The teacher's share β of the JS mixture lies strictly between 0 and 1."""
    if not 0.0 < beta < 1.0:
        raise InputError(
            f"js_beta must lie strictly between 0 and 1, got js_beta={beta!r}; 0.5 is the paper's (symmetric) JS "
            "divergence."
        )


def check_tail_temperature(
    mode: str, temperature: float, *, temperature_name: str = "temperature", mode_name: str = "mode"
) -> None:
    """A top-k teacher's tail bucket (``mode='tail'``) needs the untempered distribution: temperature 1.

    The names are those of the caller's settings (``loss_temperature`` / ``teacher_topk_mode`` in the config).
    """
    if mode == "tail" and temperature != 1.0:
        raise InputError(
            f"{temperature_name}={temperature!r} with a top-k teacher: the tail bucket needs the teacher's "
            f"untempered distribution, which its top k do not determine; use {temperature_name}=1.0 (or "
            f"{mode_name}='renormalised')."
        )


def check_mixture_weight(weight: Tensor) -> None:
    """A JS mixture weight, the teacher's share of ``m``, lies in [0, 1]."""
    if ((weight < 0) | (weight > 1)).any():
        raise InputError("mixture_weight must lie in [0, 1] (it is the teacher's share of the JS mixture m).")


def check_kind(kind: str, allowed: tuple[str, ...] = DIVERGENCES) -> None:
    """``kind`` is one of the divergences ``allowed``."""
    if kind not in allowed:
        raise InputError(f"unknown divergence {kind!r}; choose one of {', '.join(allowed)}.")


def check_side(on: str) -> None:
    """``on`` names the model that sampled the prefixes."""
    if on not in SIDES:
        raise InputError(f"on must be 'teacher' or 'student' (which model sampled the prefixes), got {on!r}.")


def _check_same_vocab(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise InputError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in "
            "shape; both models must score the same positions over the same vocabulary (a student must share the "
            "teacher's tokenizer; resize or slice padded LM heads to the tokenizer's vocabulary size)."
        )


# ----------------------------------------------------------------------------- per-step terms


def step_divergence(
    kind: Divergence,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    on: Side,
    mixture_weight: Tensor | float | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Per-position f-divergence term between teacher ``p_t`` and student ``q_t``.

    ``p_t = softmax(teacher_logits / T)``, ``q_t = softmax(student_logits / T)``:

    - ``kl``:  ``Σ_v p log(p/q)``          (paper Eq. 6/21)
    - ``rkl``: ``Σ_v q log(q/p)``          (Eq. 7/22)
    - ``js``:  ``Σ_v p log(p/m)`` if ``on="teacher"``, ``Σ_v q log(q/m)`` if ``on="student"``,
      ``m = w·p + (1−w)·q`` (Eq. 8/14); ``w = mixture_weight`` (½ when ``None``; the
      exact Eq. 12 weight comes from :func:`exact_js_mixture_weight`)
    - ``tvd``: ``½ Σ_v |q − p|``           (Eq. 10/36/37)

    ``on`` says which model sampled the prefixes. It selects the half of JS; the KL,
    RKL and TVD terms have the same formula on either side (the table in the module
    docstring says which sides each objective uses; KL on student samples is the
    on-policy forward KL of GKD). The JS teacher-side term with a constant weight
    ``α`` is the skew KL ``KL(p ‖ αp + (1−α)q)``.

    Arguments:
        kind: ``"kl"``, ``"rkl"``, ``"js"`` or ``"tvd"``.
        student_logits: ``(..., V)`` student logits (any float dtype).
        teacher_logits: ``(..., V)`` teacher logits, same shape.
        on: ``"teacher"`` or ``"student"``.
        mixture_weight: teacher weight ``w`` in the JS mixture, a float or a tensor
            broadcastable to ``(...)``; gradient is not propagated through it.
        temperature: loss temperature ``T`` applied to both models' logits.

    Returns:
        ``(...)`` tensor in float32 (float64 for float64 inputs), no reduction.

    Example:
        >>> s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
        >>> step_divergence("js", s, t, on="student").shape
        torch.Size([2, 5])
    """
    check_kind(kind)
    check_side(on)
    check_temperature(temperature)
    _check_same_vocab(student_logits, teacher_logits)
    dtype = _compute_dtype(student_logits)
    log_p = _log_probs(teacher_logits, temperature, dtype)  # (..., V)
    return _terms(kind, student_logits, log_p, on, mixture_weight, temperature)[0]


def _terms(
    kind: str,
    student_logits: Tensor,
    log_p: Tensor,
    on: Side,
    mixture_weight,
    temperature: float,
    entropy=False,
    padding: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """:func:`step_divergence`'s terms from the teacher's normalised log-probabilities ``log_p``; and with
    ``entropy`` the student's entropies ``H(q_t)`` (at the same temperature, no gradient), else None.

    The entropies come from the ``log q`` the terms are formed from (:func:`_entropy`): one pass over ``(..., V)``,
    where :func:`token_entropy` takes its own softmax (the logged ``student_entropy``; ≈ 60 ms of a 2 s step of the
    demo's models on 2 CPU cores).

    ``padding``: ``(N,)`` bool, True at rows (of ``(N, V)`` inputs) that are not scored, whose logits may hold
    anything, NaN included: the gradient they give is exactly 0, which only the closed form (:class:`_StepTerms`)
    can promise, so callers pass ``padding`` only when the teacher needs no gradient, and zero those rows' values
    themselves (:func:`_side_terms`)."""
    if torch.is_grad_enabled() and student_logits.requires_grad and not log_p.requires_grad:
        return _StepTerms.apply(student_logits, log_p, kind, on, mixture_weight, temperature, entropy, padding)
    return _autograd_terms(student_logits, log_p, kind, on, mixture_weight, temperature, entropy)


def _entropy(q: Tensor, log_q: Tensor) -> Tensor:
    """``H = −Σ_v q log q`` from ``q`` and ``log q``, ``(..., V) → (...)``, with ``0 · log 0 = 0`` (a banned token's
    ``−inf`` is clamped to the dtype's lowest value, whose product with 0 is 0). Overwrites ``log_q``."""
    return torch.linalg.vecdot(q, log_q.clamp_min_(torch.finfo(log_q.dtype).min)).neg_()


def _autograd_terms(student_logits, log_p, kind, on, mixture_weight, temperature, entropy=False):
    """The step terms (and with ``entropy`` the student's entropies, else None) from the student's logits and the
    teacher's log-probabilities, differentiated (if at all) by autograd; :class:`_StepTerms` takes the same
    arguments and gives the closed-form gradient instead."""
    log_q = _log_probs(student_logits, temperature, log_p.dtype)  # (..., V)
    terms = _divergence_terms(kind, log_q, log_p, on=on, mixture_weight=mixture_weight)
    if not entropy:
        return terms, None
    with torch.no_grad():
        log_q = log_q.detach().clone()
        return terms, _entropy(log_q.exp(), log_q)


class _StepTerms(torch.autograd.Function):
    """:func:`step_divergence` of a student that needs a gradient and a teacher that does not (every training
    step): the terms of :func:`_divergence_terms`, and their logit gradient in closed form instead of autograd's
    chain through ``log_softmax``, ``exp`` and the term: fewer passes over ``(..., V)``, and only ``q`` and ``c``
    kept for the backward pass (``scripts/bench_divergence.py --methods naive,autograd`` measures both).

    With ``a = log q``, ``q = softmax(z/T)`` and ``∂q_u/∂z_v = q_u (δ_uv − q_v) / T``, every term's gradient is

        ∂term/∂z_v = (c_v − q_v Σ_u c_u) / T,   c_u = q_u ∂term/∂q_u,

    with ``c`` from :func:`_divergence_terms` (its table; the Triton kernel uses the same,
    :mod:`fdistill.kernels.triton_divergence`). The mixture weight carries no gradient, as before.
    """

    @staticmethod
    def forward(ctx, logits, log_p, kind, on, mixture_weight, temperature, entropy=False, padding=None):
        log_q = _log_probs(logits, temperature, log_p.dtype)
        q = None if kind == "kl" else log_q.exp()  # one exp for the terms, the entropies and the backward pass
        terms, c = _divergence_terms(kind, log_q, log_p, on=on, mixture_weight=mixture_weight, coefficients=True, q=q)
        if q is None:  # kl's terms read p only: q after them, in log_q's place unless the entropies need log_q
            q = log_q.exp() if entropy else log_q.exp_()
        entropies = None
        if entropy:
            entropies = _entropy(q, log_q)
            ctx.mark_non_differentiable(entropies)
        del log_q
        if padding is not None:  # unscored rows give exactly 0 gradient, whatever their logits hold
            unscored = padding.nonzero().squeeze(-1)
            q.index_fill_(0, unscored, 0.0)
            c.index_fill_(0, unscored, 0.0)
        ctx.save_for_backward(q, c)
        ctx.temperature, ctx.dtype = temperature, logits.dtype
        return terms, entropies

    @staticmethod
    def backward(ctx, grad_terms, _grad_entropies=None):
        q, c = ctx.saved_tensors
        grad = torch.addcmul(c, q, c.sum(-1, keepdim=True), value=-1.0)  # saved tensors stay as they are
        grad.mul_(grad_terms.unsqueeze(-1) / ctx.temperature)
        return grad.to(ctx.dtype), None, None, None, None, None, None, None


def _divergence_terms(
    kind: str,
    log_q: Tensor,
    log_p: Tensor,
    *,
    on: Side,
    mixture_weight: Tensor | float | MixtureLogit | None,
    coefficients: bool = False,
    q: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The step terms of the module table from normalised log-probabilities ``(..., n) → (...)``.

    The one place the four formulas are written; :func:`step_divergence` feeds it the full
    distributions, :func:`topk_step_divergence` the coarse-grained ones (n = K + 1).

    ``q``: ``exp(log_q)`` when the caller has it (never written to here). ``coefficients``: also return
    ``c = q ⊙ ∂term/∂q`` ``(..., n)``, from which :class:`_StepTerms` gets the logit gradient (``a = log q``,
    ``b = log p``; ``u = (1 − w) q / m``, the student's share of the mixture; every ``c`` is 0 where its weight
    ``q`` or ``p`` is 0):

    ===========  ======================  =====================
    term         value                   ``c``
    ===========  ======================  =====================
    kl           ``Σ p (b − a)``         ``−p``
    rkl          ``Σ q (a − b)``         ``q (a − b)``
    tvd          ``½ Σ |q − p|``         ``½ q sign(q − p)``
    js, teacher  ``Σ p (b − log m)``     ``−p u``
    js, student  ``Σ q (a − log m)``     ``q (a − log m − u)``
    ===========  ======================  =====================
    """
    dtype = log_q.dtype
    if kind == "kl":
        p = log_p.exp()
        terms = _xlogy_ratio(log_p, log_q, p).sum(-1)
        return (terms, p.neg_()) if coefficients else terms
    q = log_q.exp() if q is None else q
    if kind == "rkl":
        ratio = _xlogy_ratio(log_q, log_p, q)
        return (ratio.sum(-1), ratio) if coefficients else ratio.sum(-1)
    if kind == "tvd":
        diff = q - log_p.exp()
        terms = 0.5 * torch.linalg.vector_norm(diff, 1, -1)  # Σ|q − p| in one pass, no |q − p| tensor
        return (terms, diff.sign_().mul_(q).mul_(0.5)) if coefficients else terms

    # js: log m = logaddexp(log w + log p, log(1 − w) + log q), formed in log space.
    if mixture_weight is None:
        mixture_weight = 0.5
    if isinstance(mixture_weight, MixtureLogit):
        z = mixture_weight.logit.detach().to(dtype=dtype, device=log_p.device)
        w = MixtureLogit(z.unsqueeze(-1) if z.dim() > 0 else z)
    else:
        w = torch.as_tensor(mixture_weight, dtype=dtype, device=log_p.device).detach()
        if w.dim() > 0:
            w = w.unsqueeze(-1)  # broadcast over the vocabulary
        check_mixture_weight(w)
    log_w, log_1mw = _mixture_logs(w)
    log_wp = log_p + log_w  # (..., V)
    log_wq = log_q + log_1mw  # (..., V)
    if coefficients:  # the closed form, which autograd never differentiates: logaddexp(-inf, -inf) = -inf is right
        log_m = torch.logaddexp(log_wp, log_wq)
    else:
        # A token banned by both models has m = 0; logaddexp(-inf, -inf) has a NaN gradient,
        # so feed it zeros there: the term's weight (p or q) is 0 at such tokens anyway.
        both_banned = torch.isneginf(log_p) & torch.isneginf(log_q)
        log_m = torch.logaddexp(log_wp.masked_fill(both_banned, 0.0), log_wq.masked_fill(both_banned, 0.0))
    log_a = log_p if on == "teacher" else log_q  # the side's own distribution, the term's weight
    a = log_p.exp() if on == "teacher" else q
    ratio = _xlogy_ratio(log_a, log_m, a)
    if not coefficients:
        return ratio.sum(-1)
    share = (log_wq - log_m).exp_().masked_fill_(torch.isneginf(log_m), 0.0)  # u = (1 − w) q / m; 0 where m = 0
    c = a.mul_(share).neg_() if on == "teacher" else share.mul_(a).neg_().add_(ratio)
    return ratio.sum(-1), c


def token_logprobs(
    logits: Tensor, labels: Tensor, *, temperature: float = 1.0, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """``log softmax(logits / T)[labels]`` per position, 0 where ``labels == ignore_index``.

    ``logits`` are ``(B, T, V)`` aligned with ``labels`` ``(B, T)``: ``logits[b, t]`` is the
    distribution that ``labels[b, t]`` was drawn from (callers shift decoder-only logits).
    """
    check_temperature(temperature)
    mask = labels != ignore_index
    log_probs = _log_probs(logits, temperature, _compute_dtype(logits))
    picked = log_probs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return torch.where(mask, picked, torch.zeros_like(picked))


def exact_js_mixture_weight(
    teacher_token_logprobs: Tensor, student_token_logprobs: Tensor, mask: Tensor, *, beta: float = 0.5
) -> Tensor:
    """Teacher weight ``w_t`` of the exact step-wise JS mixture (paper §7, Eq. 12).

    ``m(Y_t | y_<t) = m(y_<t, Y_t) / m(y_<t)`` with ``m = βp + (1−β)q`` equals
    ``w_t p_t + (1 − w_t) q_t`` where

        w_t = σ( log β − log(1−β) + log p(y_<t) − log q(y_<t) ),
        log p(y_<t) = Σ_{s<t, mask_s} log p(y_s | y_<s)   (exclusive of t).

    Arguments:
        teacher_token_logprobs: ``(B, T)`` teacher log-probability of each sampled token.
        student_token_logprobs: ``(B, T)`` student log-probability of each sampled token.
        mask: ``(B, T)`` bool, True where the token belongs to the sampled sequence
            (prompt and padding positions are ignored in the prefix sums).
        beta: the teacher's share of the sequence-level mixture (½ for the paper's JS).

    Returns:
        ``(B, T)`` weights in [0, 1], detached (the weight carries no gradient).
    """
    return torch.sigmoid(exact_js_mixture_logit(teacher_token_logprobs, student_token_logprobs, mask, beta=beta))


def exact_js_mixture_logit(
    teacher_token_logprobs: Tensor, student_token_logprobs: Tensor, mask: Tensor, *, beta: float = 0.5
) -> Tensor:
    """The logit ``z_t = logit β + log p(y_<t) − log q(y_<t)`` of :func:`exact_js_mixture_weight` (detached)."""
    check_js_beta(beta)
    mask = mask.bool()
    dtype = torch.promote_types(_compute_dtype(teacher_token_logprobs), _compute_dtype(student_token_logprobs))
    diff = (teacher_token_logprobs.detach().to(dtype) - student_token_logprobs.detach().to(dtype)).masked_fill(~mask, 0)
    prefix = diff.cumsum(-1) - diff  # exclusive cumulative sum: log p(y_<t) − log q(y_<t)
    logit_beta = torch.log(torch.tensor(beta, dtype=dtype)) - torch.log1p(torch.tensor(-beta, dtype=dtype))
    return prefix + logit_beta.to(prefix.device)


def side_mixture_weight(
    kind: str,
    js_mixture: str,
    js_beta: float,
    mask: Tensor,
    sampled_logprobs: Callable[[], tuple[Tensor, Tensor]],
    select: Callable[[Tensor], Tensor],
) -> float | MixtureLogit:
    """The JS mixture weight of one side's positions: ``js_beta`` (the step-wise mixture, and every other kind),
    or with ``js_mixture="exact"`` the Eq. 12 weight as a :class:`MixtureLogit`.

    The one assembly of the exact weight for both backends (logits here, hidden states in `fdistill.kernels`):
    ``sampled_logprobs()`` gives the teacher's and the student's ``(B, T)`` log-probabilities of the sampled tokens
    (called without gradient), and ``select`` picks the positions the side's terms are computed at from the
    ``(B, T)`` logit of :func:`exact_js_mixture_logit`.
    """
    if kind != "js" or js_mixture != "exact":
        return js_beta
    with torch.no_grad():
        lp_p, lp_q = sampled_logprobs()
        return MixtureLogit(select(exact_js_mixture_logit(lp_p, lp_q, mask, beta=js_beta)))


def _mixture_logs(w: Tensor) -> tuple[Tensor, Tensor]:
    """``(log w, log(1 − w))`` from a weight, or exactly from a logit when one is given (see `MixtureLogit`)."""
    if isinstance(w, MixtureLogit):
        return F.logsigmoid(w.logit), F.logsigmoid(-w.logit)
    return torch.log(w), torch.log1p(-w)


@dataclass
class MixtureLogit:
    """A JS mixture weight given by its logit ``z`` (``w = σ(z)``): long prefixes push ``σ(z)`` to exactly 0 or 1
    in floating point, while ``log σ(±z)`` stays exact — so the (1−w)·q floor of ``m`` is never lost."""

    logit: Tensor


# ----------------------------------------------------------------------------- top-k teachers


@dataclass
class TeacherTopK:
    """The teacher's K most likely tokens at each position with their log-probabilities: all that a stored
    (``fdistill sample --topk-logprobs K``) or served (vLLM's ``prompt_logprobs=K``) teacher gives.

    Attributes:
        ids: ``(..., K)`` distinct token ids per position.
        logprobs: ``(..., K)`` their ``log p_v`` under the teacher's full next-token distribution (normalised over
            the whole vocabulary, at temperature 1).
        token_logprobs: ``(...)`` the teacher's ``log p(y_t | y_<t)`` of the sampled token at each position, or
            None. Only the exact JS mixture (Eq. 12) needs it; a vLLM server returns it for the actual tokens.
        tail_logprobs: ``(...)`` the teacher's log mass outside its top K, ``log(1 − Σ_{v∈S} p_v)``, kept from
            before the log-probabilities were rounded (the logits cache, :mod:`fdistill.lm.logits_cache`), or None:
            then derived from ``logprobs``. A tail of ``1 − sum`` of rounded values loses all precision when the top
            K hold nearly all the mass.

    ``topk[index]`` selects positions (the leading dimensions) of all three.

    Example:
        >>> t = TeacherTopK.from_logits(torch.randn(2, 5, 11), k=3)
        >>> t.ids.shape, t[0].logprobs.shape
        (torch.Size([2, 5, 3]), torch.Size([5, 3]))
    """

    ids: Tensor
    logprobs: Tensor
    token_logprobs: Tensor | None = None
    tail_logprobs: Tensor | None = None

    def __post_init__(self):
        if self.ids.shape != self.logprobs.shape:
            raise InputError(
                f"top-k ids {tuple(self.ids.shape)} and log-probabilities {tuple(self.logprobs.shape)} differ in shape."
            )
        if self.token_logprobs is not None and self.token_logprobs.shape != self.ids.shape[:-1]:
            raise InputError(
                f"token_logprobs {tuple(self.token_logprobs.shape)} must have the positions' shape "
                f"{tuple(self.ids.shape[:-1])} (one value per position)."
            )
        if self.tail_logprobs is not None and self.tail_logprobs.shape != self.ids.shape[:-1]:
            raise InputError(
                f"tail_logprobs {tuple(self.tail_logprobs.shape)} must have the positions' shape "
                f"{tuple(self.ids.shape[:-1])} (one value per position)."
            )

    def __getitem__(self, index) -> TeacherTopK:
        picked = None if self.token_logprobs is None else self.token_logprobs[index]
        tail = None if self.tail_logprobs is None else self.tail_logprobs[index]
        return TeacherTopK(self.ids[index], self.logprobs[index], picked, tail)

    @classmethod
    def from_logits(cls, logits: Tensor, k: int, labels: Tensor | None = None) -> TeacherTopK:
        """The top ``k`` of ``log_softmax(logits)`` (and the log-probabilities of ``labels``, when given, at
        positions where they are not ``IGNORE_INDEX``): what a teacher that sends only its top k would send."""
        log_p = torch.log_softmax(to_compute_dtype(logits.detach()), -1)
        values, ids = log_p.topk(k, dim=-1)
        picked = None
        if labels is not None:
            picked = log_p.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            picked = torch.where(labels != IGNORE_INDEX, picked, torch.zeros_like(picked))
        return cls(ids, values, picked)


TOPK_MODES = ("tail", "renormalised")


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 − exp(x))`` for ``x ≤ 0``, accurate at both ends (Mächler 2012): ``-inf`` at ``x = 0``."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _logsumexp(x: Tensor) -> Tensor:
    """``logsumexp`` over the last axis, keepdim, with a ``-inf`` (not NaN) gradient-safe result for all-``-inf`` rows."""
    empty = torch.isneginf(x).all(-1, keepdim=True)
    return torch.logsumexp(x.masked_fill(empty, 0.0), -1, keepdim=True).masked_fill(empty, -torch.inf)


def coarse_grained_log_probs(student_log_probs: Tensor, teacher: TeacherTopK) -> tuple[Tensor, Tensor]:
    """``(log Q, log P)``, each ``(..., K + 1)``: both distributions coarse-grained to the teacher's top K tokens
    ``S`` and one tail bucket (last entry) holding the rest of each model's mass,

        P = ( (p_v)_{v∈S},  1 − Σ_{v∈S} p_v ),      Q = ( (q_v)_{v∈S},  1 − Σ_{v∈S} q_v ).

    No tail is formed as ``1 − sum``: the student's is the log-sum-exp of its log-probabilities outside ``S``
    (exact however small), the teacher's ``log1mexp(logsumexp_{v∈S} log p_v)`` or, when the teacher keeps it
    (``tail_logprobs``), that value, the K + 1 values then normalised together. Stored teacher values are rounded:
    if they sum past 1 they are scaled to sum to 1 (tail 0). The teacher's tail is exactly 0, and its K values are
    renormalised, at K = V and when its top K hold a zero-probability token (no tail token can be likelier).

    Arguments:
        student_log_probs: ``(..., V)`` normalised student log-probabilities (``log_softmax`` of the logits).
        teacher: :class:`TeacherTopK` with ``(..., K)`` ids and log-probabilities (no gradient is taken).
    """
    vocab, dtype = student_log_probs.shape[-1], student_log_probs.dtype
    ids = teacher.ids.to(student_log_probs.device)
    if ids.shape[:-1] != student_log_probs.shape[:-1]:
        raise InputError(
            f"top-k ids {tuple(ids.shape)} do not cover the student's positions {tuple(student_log_probs.shape[:-1])}."
        )
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
        raise InputError(
            f"top-k token ids must lie in [0, {vocab}) (the student's vocabulary); got ids from {int(ids.min())} to "
            f"{int(ids.max())}: the top-k log-probabilities were made with another tokenizer or vocabulary."
        )
    log_q_top = student_log_probs.gather(-1, ids)  # (..., K)
    log_q_tail = _logsumexp(student_log_probs.scatter(-1, ids, -torch.inf))  # (..., 1): mass outside S
    log_p = topk_teacher_log_probs(teacher, vocab, dtype=dtype, device=student_log_probs.device)  # (..., K + 1)
    return torch.cat([log_q_top, log_q_tail], -1), log_p


def topk_teacher_log_probs(
    teacher: TeacherTopK, vocab_size: int | None, *, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """The teacher's side ``log P`` of :func:`coarse_grained_log_probs`, ``(..., K + 1)``: its top K log-probabilities
    and the tail bucket last, normalised together (detached). ``vocab_size`` None = unknown (larger than K)."""
    log_p_top = teacher.logprobs.detach().to(dtype=dtype, device=device)  # (..., K)
    total = torch.logsumexp(log_p_top, -1, keepdim=True)  # log Σ_S p_v, 0 up to rounding at K = V
    # No tail when S is the whole vocabulary, or when S holds a zero-probability token (no tail token is likelier).
    no_tail = torch.isneginf(log_p_top.amin(-1, keepdim=True))  # (..., 1)
    if vocab_size is not None and log_p_top.shape[-1] >= vocab_size:
        no_tail = torch.ones_like(no_tail)
    if teacher.tail_logprobs is not None:  # kept: P is the K values and the tail, normalised together
        tail = teacher.tail_logprobs.detach().to(dtype=dtype, device=device).unsqueeze(-1)
        log_p = torch.cat([log_p_top, torch.where(no_tail, -torch.inf, tail)], -1)
        return log_p - _logsumexp(log_p)
    log_p_top = log_p_top - torch.where(no_tail, total, total.clamp_min(0.0))
    log_p_tail = torch.where(no_tail, -torch.inf, _log1mexp(total.clamp_max(0.0)))
    return torch.cat([log_p_top, log_p_tail], -1)


def topk_step_divergence(
    kind: Divergence,
    student_logits: Tensor,
    teacher: TeacherTopK,
    *,
    on: Side,
    mode: Literal["tail", "renormalised"] = "tail",
    mixture_weight: Tensor | float | MixtureLogit | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """:func:`step_divergence` when the teacher gives only its top K log-probabilities per position.

    ``mode="tail"`` (the default): the step term of the coarse-grained pair ``(P_t, Q_t)`` over K + 1 outcomes,
    the teacher's top K tokens and one tail bucket (:func:`coarse_grained_log_probs`). Merging outcomes is a
    Markov kernel applied to both distributions, so by the data-processing inequality, for every kind and
    either side,

        D(P_t ‖ Q_t) ≤ D(p_t ‖ q_t),

    a lower bound, equal at K = V and whenever ``p_v / q_v`` is the same for every tail token (the bucket
    then loses nothing). The JS side terms are f-divergences of ``(p, q)`` for any fixed weight ``w``
    (``KL(p ‖ wp + (1−w)q) = Σ_v q_v f(p_v/q_v)``, ``f(u) = u log(u / (wu + 1 − w))`` convex), so the bound
    holds with the exact mixture too. The tail needs the teacher's untempered distribution: ``temperature=1``.

    ``mode="renormalised"`` (what ``teacher_topk_logprobs`` computed before the tail mode existed): the teacher
    restricted to ``S`` and renormalised, ``p̃_v = p_v / Σ_{u∈S} p_u`` (:func:`topk_teacher_logits`), against the
    full student, e.g.
    ``KL(p̃_t ‖ q_t) = Σ_{v∈S} p̃_v log(p̃_v / q_v)``: exact at K = V, otherwise neither a lower nor an upper
    bound, and blind to the student's mass outside ``S``. ``rkl`` is refused in this mode (``q log(q/0) = ∞``
    wherever the student puts mass outside ``S``).

    Arguments:
        kind, on, mixture_weight, temperature: as in :func:`step_divergence`.
        student_logits: ``(..., V)`` student logits.
        teacher: :class:`TeacherTopK` with ``(..., K)`` ids and log-probabilities.
        mode: ``"tail"`` (the lower bound) or ``"renormalised"``.

    Returns:
        ``(...)`` tensor in float32 (float64 for float64 inputs), no reduction.

    Example:
        >>> s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
        >>> bound = topk_step_divergence("kl", s, TeacherTopK.from_logits(t, k=3), on="teacher")
        >>> bool((bound <= step_divergence("kl", s, t, on="teacher") + 1e-6).all())
        True
    """
    check_kind(kind)
    check_side(on)
    check_temperature(temperature)
    if mode not in TOPK_MODES:
        raise InputError(f"unknown top-k mode {mode!r}; choose 'tail' (the lower bound) or 'renormalised'.")
    if mode == "renormalised":
        if kind == "rkl":
            raise InputError(
                "rkl against a renormalised top-k teacher is infinite wherever the student puts mass outside the "
                "top k; use mode='tail' (the coarse-grained lower bound)."
            )
        dense = topk_teacher_logits(teacher.ids, teacher.logprobs, student_logits.shape[-1])
        return step_divergence(
            kind, student_logits, dense, on=on, mixture_weight=mixture_weight, temperature=temperature
        )
    check_tail_temperature(mode, temperature)
    log_q = _log_probs(student_logits, 1.0, _compute_dtype(student_logits))  # (..., V)
    log_q, log_p = coarse_grained_log_probs(log_q, teacher)  # (..., K + 1)
    return _divergence_terms(kind, log_q, log_p, on=on, mixture_weight=mixture_weight)


def topk_teacher_logits(topk_ids: Tensor, topk_logprobs: Tensor, vocab_size: int) -> Tensor:
    """Dense ``(..., V)`` teacher logits from stored top-k log-probabilities: ``-inf`` outside the top k.

    ``softmax`` of the result is the teacher's distribution restricted to its top k tokens
    and renormalised, ``p̃_v = p_v / Σ_{u∈top-k} p_u``; with it, :func:`step_divergence`'s
    ``kl`` term is ``KL(p̃_t ‖ q_t)`` (exact when k = V). Arguments are ``(..., k)``.
    """
    dtype = torch.promote_types(topk_logprobs.dtype, torch.float32)
    dense = torch.full((*topk_ids.shape[:-1], vocab_size), -torch.inf, dtype=dtype, device=topk_ids.device)
    return dense.scatter(-1, topk_ids, topk_logprobs.to(dtype))


def token_entropy(logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Entropy ``H(q_t) = −Σ_v q log q`` of each position's distribution, ``(..., V) → (...)``: :func:`_entropy`
    (the one formula, which the step terms also use) of ``log_softmax(logits / T)``; banned tokens add nothing."""
    check_temperature(temperature)
    log_q = _log_probs(logits, temperature, _compute_dtype(logits))
    return _entropy(log_q.exp(), log_q)


# ----------------------------------------------------------------------------- baseline terms


def cross_entropy_terms(logits: Tensor, labels: Tensor, *, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``−log q(y_t | y_<t)`` per position (MLE on references, SeqKD on teacher beam outputs, Eq. 3).

    ``(B, T, V), (B, T) → (B, T)``, exactly 0 where ``labels == ignore_index``.
    """
    return -token_logprobs(logits, labels, ignore_index=ignore_index)


def engine_terms(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """ENGINE energy ``Σ_v q · (−log p)`` per position on student samples (Tu et al. 2020; paper §2.2).

    Equals the RKL term plus the student's entropy: RKL less the entropy bonus.
    """
    check_temperature(temperature)
    _check_same_vocab(student_logits, teacher_logits)
    dtype = _compute_dtype(student_logits)
    log_q = _log_probs(student_logits, temperature, dtype)
    log_p = _log_probs(teacher_logits, temperature, dtype)
    q = log_q.exp()
    neg_log_p = torch.where(q > 0, -log_p, torch.zeros_like(log_p))  # 0 · ∞ := 0 for banned tokens
    return (q * neg_log_p).sum(-1)


def word_kd_terms(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Word-level KD ``T² · KL(p_T ‖ q_T)`` per position (Hinton et al. 2015; pre-distillation after Shleifer & Rush 2020).

    The ``T²`` factor keeps gradient magnitudes comparable across temperatures.
    """
    return temperature**2 * step_divergence("kl", student_logits, teacher_logits, on="teacher", temperature=temperature)


def hidden_state_mse_terms(student_hidden: Tensor, teacher_hidden: Tensor) -> Tensor:
    """Mean squared error between matched hidden states per position, ``(..., H) → (...)`` (Shleifer & Rush 2020).

    Student and teacher must have the same hidden size (students copied from the
    teacher's layers do); the mean runs over the hidden dimension.
    """
    if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        raise InputError(
            f"hidden sizes differ (student {student_hidden.shape[-1]}, teacher {teacher_hidden.shape[-1]}); "
            "hidden-state matching needs a student of the teacher's width (set the hidden-state weight to 0 otherwise)."
        )
    dtype = _compute_dtype(student_hidden)
    return (student_hidden.to(dtype) - teacher_hidden.detach().to(dtype)).pow(2).mean(-1)


# ----------------------------------------------------------------------------- masks and reductions


def sequence_mask(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """True where a position holds a sampled/target token (``labels != ignore_index``)."""
    return labels != ignore_index


def nonfinite_positions(values: Tensor, mask: Tensor) -> Tensor:
    """True at the unmasked positions whose vector ``values[..., :]`` holds a NaN or ``+inf``: shape ``mask.shape``.

    ``-inf`` (a banned token's logit) is allowed. One pass over ``values``: the sum over the last axis
    is NaN or ``+inf`` exactly when the vector holds NaN, ``+inf``, or both infinities.
    """
    total = values.detach().sum(-1, dtype=torch.promote_types(values.dtype, torch.float32))
    return (torch.isnan(total) | (total == float("inf"))) & mask.bool()


def reduce_terms(
    terms: Tensor,
    mask: Tensor,
    *,
    reduction: Literal["sequence", "token"] = "sequence",
    num_items_in_batch: int | Tensor | None = None,
) -> Tensor:
    """Reduce per-position terms ``(B, T)`` to a scalar.

    - ``"sequence"`` (the paper's objective): ``Σ_{b,t} mask·terms / n_seq``, the sum over
      each sequence's positions averaged over sequences; ``n_seq`` defaults to the number
      of sequences with at least one unmasked position.
    - ``"token"``: ``Σ_{b,t} mask·terms / n_tok``; ``n_tok`` defaults to ``mask.sum()``.

    ``num_items_in_batch`` replaces the default denominator by the count over the whole
    global batch (all gradient-accumulation micro-batches and all processes, as
    transformers passes it), so that summing the micro-batch losses gives exactly the
    full-batch loss. Masked positions contribute exactly 0 even if ``terms`` holds NaN there.
    """
    if reduction not in REDUCTIONS:
        raise InputError(
            f"unknown reduction {reduction!r}; choose 'sequence' (sum over positions, mean over sequences) or "
            "'token' (mean over tokens)."
        )
    mask = mask.bool()
    total = torch.where(mask, terms, torch.zeros_like(terms)).sum()
    if num_items_in_batch is None:
        num_items_in_batch = count_items(mask, reduction).clamp_min(1).to(total.dtype)
    return total / num_items_in_batch


def weighted(terms: Tensor, mask: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(terms · weights, mask)``: per-position terms ``(B, T)`` times detached weights, or as they are (no
    multiplication at all, so the same floats) when ``weights`` is None. Masked positions stay exactly 0."""
    if weights is None:
        return terms, mask
    if weights.shape != terms.shape:
        raise InputError(f"weights {tuple(weights.shape)} must have the terms' shape {tuple(terms.shape)}.")
    mask = mask.bool()
    weights = weights.detach().to(device=terms.device, dtype=terms.dtype)
    weights = torch.where(mask, weights, torch.zeros_like(weights))  # NaN there would reach the gradient as 0 · NaN
    return torch.where(mask, terms * weights, torch.zeros_like(terms)), mask


def count_items(mask: Tensor, reduction: Literal["sequence", "token"]) -> Tensor:
    """The denominator of a reduction: sequences with at least one unmasked position, or unmasked tokens."""
    if reduction not in REDUCTIONS:
        raise InputError(f"unknown reduction {reduction!r}; choose 'sequence' or 'token'.")
    mask = mask.bool()
    return mask.any(-1).sum() if reduction == "sequence" else mask.sum()


# ----------------------------------------------------------------------------- the f-DISTILL loss


@dataclass
class SampledSequences:
    """Both models' logits on one batch of sampled sequences (teacher's or student's).

    Attributes:
        student_logits: ``(B, T, V)`` student logits at each position.
        teacher_logits: ``(B, T, V)`` teacher logits at the same positions, or the teacher's top K there as a
            :class:`TeacherTopK` of ``(B, T, K)`` (see :func:`topk_step_divergence`).
        labels: ``(B, T)`` the token sampled at each position (aligned with the logits:
            ``logits[b, t]`` is the distribution ``labels[b, t]`` was drawn from), and
            ``ignore_index`` at prompt, padding and post-EOS positions.
        num_items_in_batch: optional global denominator (sequences for the
            ``"sequence"`` reduction, tokens for ``"token"``) for exact gradient accumulation.
        weights: optional ``(B, T)`` per-position weights (no gradient) multiplying the terms before the reduction:
            the importance weights of reused student samples (:mod:`fdistill.lm.importance`); None = 1.
    """

    student_logits: Tensor
    teacher_logits: Tensor | TeacherTopK
    labels: Tensor
    num_items_in_batch: int | Tensor | None = None
    weights: Tensor | None = None


@dataclass
class DivergenceLoss:
    """The combined loss and its two halves (each already reduced; unweighted)."""

    loss: Tensor
    teacher_term: Tensor | None
    student_term: Tensor | None
    student_entropies: Tensor | None = None  # (B, T) on the student's samples, with sample_details
    teacher_label_logprobs: Tensor | None = None  # (B, T) the teacher's of the student's tokens, with sample_details


def side_weight(kind: str, side: Side, beta: float) -> float:
    """Coefficient of each side's term in the combined objective (the module table): 0 where a side is unused."""
    weights = {"kl": (1.0, 0.0), "rkl": (0.0, 1.0), "js": (beta, 1.0 - beta), "tvd": (0.5, 0.5)}[kind]
    return weights[0] if side == "teacher" else weights[1]


def _side_terms(
    kind: str,
    batch: SampledSequences,
    *,
    on: Side,
    js_mixture: str,
    js_beta: float,
    temperature: float,
    ignore_index: int,
    teacher_topk_mode: str,
    details: bool = False,
) -> _SideTerms:
    """Per-position terms ``(B, T)`` (exactly 0 at masked positions) and the mask for one side; with ``details``
    (a teacher with logits: its top k have no full distribution here) also the student's entropies and the
    teacher's log-probabilities of the sampled tokens, at the loss temperature, from the same log-softmaxes."""
    topk = isinstance(batch.teacher_logits, TeacherTopK)
    if topk:
        if batch.teacher_logits.ids.shape[:-1] != batch.student_logits.shape[:-1]:
            raise InputError(
                f"teacher top-k {tuple(batch.teacher_logits.ids.shape)} and student logits "
                f"{tuple(batch.student_logits.shape)} cover different positions; give the top k at every position."
            )
    else:
        _check_same_vocab(batch.student_logits, batch.teacher_logits)
    if batch.labels.shape != batch.student_logits.shape[:-1]:
        raise InputError(
            f"labels {tuple(batch.labels.shape)} do not match logits {tuple(batch.student_logits.shape)}; labels must "
            "be (B, T) and aligned with the logits (shift decoder-only logits by one before calling)."
        )
    mask = sequence_mask(batch.labels, ignore_index)
    rows = mask.nonzero(as_tuple=True)  # the scored positions
    # Every position scored (e.g. student samples that all ran to max_new_tokens), or most of them and a teacher
    # without gradient: (B·T, V) views of the logits, not gathered copies of the scored rows, so neither the forward
    # copy nor the backward's zero-filled scatter over (B, T, V) is made. The unscored rows' values are never
    # used: their terms and gradient are set to exactly 0 (_terms' ``padding``), whatever their logits hold.
    scored, positions = rows[0].numel(), mask.numel()
    whole = scored == positions
    dense = whole or (
        not topk
        and scored >= _DENSE_SHARE * positions
        and not (torch.is_grad_enabled() and batch.teacher_logits.requires_grad)
    )
    padding = None if whole or not dense else ~mask.reshape(-1)
    student = _rows(batch.student_logits, rows, dense)  # (N, V)
    teacher = _rows(batch.teacher_logits, rows, dense)  # (N, V), or a TeacherTopK of (N, K)
    labels = torch.where(mask, batch.labels, 0).reshape(-1) if dense else batch.labels[rows]  # (N,)

    def place(x: Tensor) -> Tensor:  # (N,) -> (B, T), exactly 0 at the unscored positions, whatever x holds there
        if whole:
            return x.view(mask.shape)
        return torch.where(mask, x.view(mask.shape), 0.0) if dense else _scatter(x, mask, rows)

    def sampled_logprobs() -> tuple[Tensor, Tensor]:  # (B, T), read at the scored positions only
        if topk:
            if teacher.token_logprobs is None:
                raise InputError(
                    "js_mixture='exact' needs the teacher's log-probability of every sampled token (the prefix "
                    "weight of Eq. 12), which top-k values alone do not give: pass "
                    "TeacherTopK(token_logprobs=...) or use js_mixture='stepwise'."
                )
            lp_p = teacher.token_logprobs.to(_compute_dtype(student))
        else:
            lp_p = _log_probs(teacher, temperature, _compute_dtype(teacher)).gather(-1, labels[:, None]).squeeze(-1)
        lp_q = _log_probs(student, temperature, _compute_dtype(student)).gather(-1, labels[:, None]).squeeze(-1)
        return place(lp_p), place(lp_q)

    select = (lambda logit: logit.reshape(-1)) if dense else (lambda logit: logit[rows])
    weight = side_mixture_weight(kind, js_mixture, js_beta, mask, sampled_logprobs, select)
    entropies = teacher_lp = None
    if topk:
        terms = topk_step_divergence(
            kind, student, teacher, on=on, mode=teacher_topk_mode, mixture_weight=weight, temperature=temperature
        )  # (N,)
    else:  # step_divergence, its checks made above
        log_p = _log_probs(teacher, temperature, _compute_dtype(student))  # (N, V)
        terms, entropies = _terms(kind, student, log_p, on, weight, temperature, entropy=details, padding=padding)
        if details:
            teacher_lp = log_p.gather(-1, labels[:, None]).squeeze(-1)
    return _SideTerms(*(None if x is None else place(x) for x in (terms, entropies, teacher_lp)), mask)


class _SideTerms(NamedTuple):
    """What :func:`_side_terms` gives for one side: ``(B, T)`` tensors, exactly 0 at masked positions."""

    terms: Tensor
    entropies: Tensor | None
    teacher_label_logprobs: Tensor | None
    mask: Tensor


def _scatter(values: Tensor, mask: Tensor, rows: tuple[Tensor, ...]) -> Tensor:
    """``(N,)`` values at the unmasked positions ``rows`` as ``(B, T)``, 0 elsewhere."""
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).index_put(rows, values)


def _rows(values: Tensor | TeacherTopK, rows: tuple[Tensor, ...], dense: bool) -> Tensor | TeacherTopK:
    """``values`` ``(B, T, …)`` as rows ``(N, …)``: with ``dense`` a view of every position in row-major order, else
    a gathered copy of the scored positions ``rows``."""
    if dense and isinstance(values, Tensor):
        return values.reshape(-1, values.shape[-1])
    return values[rows]


def f_divergence_loss(
    kind: Divergence,
    *,
    teacher_samples: SampledSequences | None = None,
    student_samples: SampledSequences | None = None,
    js_mixture: Literal["stepwise", "exact"] = "stepwise",
    js_beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Literal["sequence", "token"] = "sequence",
    ignore_index: int = IGNORE_INDEX,
    teacher_topk_mode: Literal["tail", "renormalised"] = "tail",
    sample_details: bool = False,
) -> DivergenceLoss:
    """The f-DISTILL objective for one batch (paper Eqs. 6–10, with Eq. 12 for ``js_mixture="exact"``).

        J_KL  = E_{y~p} Σ_t KL(p_t ‖ q_t)
        J_RKL = E_{y'~q} Σ_t KL(q_t ‖ p_t)
        J_JS  = β E_{y~p} Σ_t KL(p_t ‖ m_t) + (1−β) E_{y'~q} Σ_t KL(q_t ‖ m_t)
        J_TVD = ½ E_{y~p} Σ_t TVD(p_t, q_t) + ½ E_{y'~q} Σ_t TVD(p_t, q_t)

    The expectations are the batch means of ``teacher_samples`` (offline teacher samples)
    and ``student_samples`` (online student samples). Which ones are needed: ``kl`` the
    teacher's, ``rkl`` the student's, ``js`` and ``tvd`` both.

    Arguments:
        kind: ``"kl"``, ``"rkl"``, ``"js"`` or ``"tvd"``.
        teacher_samples, student_samples: :class:`SampledSequences` for each side.
        js_mixture: ``"stepwise"`` (Eq. 11, the paper's code) or ``"exact"`` (Eq. 12).
        js_beta: teacher share β of the JS mixture (½ = the paper's JS).
        temperature: loss temperature applied to both models' logits.
        reduction: ``"sequence"`` (sum over positions, mean over sequences) or ``"token"``.
        teacher_topk_mode: for sides whose teacher is a :class:`TeacherTopK`: ``"tail"`` (the coarse-grained
            lower bound) or ``"renormalised"`` (see :func:`topk_step_divergence`).
        sample_details: also give, for the student's samples (when the objective scores them against a teacher
            with logits), the student's entropies ``H(q_t)`` and the teacher's log-probabilities of the sampled
            tokens ``log p_t(y_t)``, ``(B, T)`` at the loss temperature (0 at masked positions), from the
            log-softmaxes the terms are formed from (what the trainer logs; no separate pass over the logits).

    Returns:
        :class:`DivergenceLoss` with the combined ``loss`` and each side's reduced term (and the details).
    """
    if teacher_topk_mode not in TOPK_MODES:
        raise InputError(
            f"unknown teacher_topk_mode {teacher_topk_mode!r}; choose 'tail' (the lower bound) or 'renormalised'."
        )
    details: dict[str, _SideTerms] = {}

    def side_term(side: Side, batch: SampledSequences) -> Tensor:
        side_terms = _side_terms(
            kind,
            batch,
            on=side,
            js_mixture=js_mixture,
            js_beta=js_beta,
            temperature=temperature,
            ignore_index=ignore_index,
            teacher_topk_mode=teacher_topk_mode,
            details=sample_details and side == "student",
        )
        details[side] = side_terms
        terms, mask = weighted(side_terms.terms, side_terms.mask, batch.weights)
        return reduce_terms(terms, mask, reduction=reduction, num_items_in_batch=batch.num_items_in_batch)

    out = assemble_loss(
        kind,
        {"teacher": teacher_samples, "student": student_samples},
        side_term,
        js_mixture=js_mixture,
        js_beta=js_beta,
        temperature=temperature,
        needs="the {side}'s sampled sequences scored by both models",
    )
    if "student" in details:
        out.student_entropies = details["student"].entropies
        out.teacher_label_logprobs = details["student"].teacher_label_logprobs
    return out


def assemble_loss(
    kind: str,
    samples: dict[str, Any],
    side_term: Callable[[str, Any], Tensor],
    *,
    js_mixture: str,
    js_beta: float,
    temperature: float,
    needs: str,
) -> DivergenceLoss:
    """The combined f-DISTILL objective from each side's reduced term: ``Σ_side coeff(kind, side) · term(side)``.

    The one assembly of the plain (logits, :func:`f_divergence_loss`) and the fused (hidden states,
    :func:`fdistill.kernels.fused_f_divergence_loss`) backends: it checks the settings, skips the sides whose
    coefficient (:func:`side_weight`) is 0, asks ``side_term(side, samples[side])`` for the others (refusing a
    missing one, with ``needs`` saying what to pass), and returns the total with both halves.
    """
    check_kind(kind)
    if js_mixture not in JS_MIXTURES:
        raise InputError(f"unknown js_mixture {js_mixture!r}; choose 'stepwise' (paper Eq. 11) or 'exact' (Eq. 12).")
    check_js_beta(js_beta)
    check_temperature(temperature)
    reduced: dict[str, Tensor | None] = {"teacher": None, "student": None}
    loss: Tensor | None = None
    for side in SIDES:
        coeff = side_weight(kind, side, js_beta)
        if coeff == 0.0:
            continue
        if samples.get(side) is None:
            raise InputError(f"{kind} needs {side} samples: pass {side}_samples= ({needs.format(side=side)}).")
        reduced[side] = side_term(side, samples[side])
        loss = coeff * reduced[side] if loss is None else loss + coeff * reduced[side]
    assert loss is not None
    return DivergenceLoss(loss=loss, teacher_term=reduced["teacher"], student_term=reduced["student"])
