"""f-DISTILL terms between a teacher and a student with different tokenizers, on aligned chunks of the same text.

Setting (the design of issue 28). A completion is text. The teacher ``p`` and the student ``q`` each score it in
their own tokenization (their own samples, or the canonical re-tokenization of the other model's text). The text's
bytes are cut at every offset that is a token boundary in *both* tokenizations; a **chunk** is a maximal run of
tokens of each side that covers the same bytes (:mod:`fdistill.lm.cross_tokenizer` computes the alignment). For
chunk ``c`` of a sampled text ``s`` with prefix ``s_<c``:

    log p_c = Σ_{t ∈ c} log p(y_t | y_<t)      (teacher tokens of the chunk),
    log q_c = Σ_{t ∈ c} log q(y'_t | y'_<t)    (student tokens of the chunk),

the probability that each model, given the prefix in its own tokenization, emits exactly this chunk's tokens next.
These are **exact** (sums of each model's own token log-probabilities, :func:`chunk_logprobs`) and add up to each
model's log-probability of the whole text in the scored tokenization: ``Σ_c log p_c = log p(s)``.

What is **approximate** is the *next-chunk distribution*: the alternatives to chunk ``c`` are continuations that
would be cut differently (chunk boundaries depend on the text that follows), so the two models share no event space
beyond "this chunk / not this chunk", and, at a one-to-one chunk, "the next token has these bytes". The terms:

- **one-to-one chunk** (one token each side, so both tokens have the same bytes): the step divergence
  (:func:`fdistill.divergences.step_divergence`'s formulas) between both next-token distributions *projected* on the
  shared vocabulary — one outcome per set of equal-bytes ids (:class:`VocabMap` pairs), plus one ``other`` bucket
  with each model's mass on its unshared ids (``-inf`` log-mass when there are none):

      P = ( (Σ_{v ∈ b} p_v)_{b ∈ shared},  p(other) ),    Q = ( (Σ_{v ∈ b} q_v)_b,  q(other) ).

  This is GOLD's approximation (Hugging Face TRL's ``GOLDTrainer``, 2025): equal-bytes tokens of two tokenizers are
  *not* the same event (``"the"`` then ``" cat"`` can be one teacher token and two student tokens), and ``other``
  lumps together unrelated outcomes. With a top-k teacher (:class:`~fdistill.divergences.TeacherTopK`) the outcomes
  are the shared buckets of its top-k ids and ``other`` = the rest, the same partition on both sides (the coarse
  graining of :func:`~fdistill.divergences.topk_step_divergence`, so again a lower bound of the projected term).
- **every other chunk**: the divergence between ``Bernoulli(p_c)`` and ``Bernoulli(q_c)``, the two models' laws of
  the event "the next tokens are this chunk", from the exact chunk log-probabilities; ``log(1 − p_c)`` is summed over
  the token where the chunk is first left (:func:`chunk_complements`), stable when ``p_c`` is tiny or ≈ 1.
  Merging every alternative into one outcome is a coarsening, so by the data-processing inequality each binarised
  term is a **lower bound** of the divergence between any finer pair of next-chunk distributions that contain the
  event (tokenkit's ALM, Minixhofer et al. 2025, uses this binarisation).

Relation to the sequence level (honestly): for KL, RKL and JS the same-tokenizer step terms add up in expectation to
the sequence-level divergence (the paper's Theorem 1). Here they do not: the chunk outcomes are not a common
sequence of random variables of both models, so ``E Σ_c D(Bern(p_c) ‖ Bern(q_c))`` is neither a decomposition nor,
in general, a bound of ``D(p ‖ q)`` between the string distributions. Worse, it is not 0 where the sequence-level
divergence is: the event "the next tokens are this chunk's" depends on how each tokenizer would cut the rest of the
text (a tokenizer that merges ``b+a`` never emits the token ``"b"`` followed by the token ``"a"``), and so do the
projected next-token outcomes. Measured on the tiny tokenizers (``tests/lm/test_cross_divergences.py``, a student with exactly
the teacher's law over strings, canonical tokenizations only): every sequence-level divergence is 0, the expected
chunk terms are ≈ 0.15 (JS) and ≈ 0.48 (TVD), and KL/RKL are infinite (a projected outcome that one model's
tokenizer never takes there). Real LMs put a little mass on non-canonical tokenizations, so the terms are finite,
but their minimiser is not the teacher. What *is* exact is the sum of the log-ratios,
``Σ_c (log p_c − log q_c) = log p(s) − log q(s)``: its sample mean is the Monte Carlo sequence-level KL
(:func:`sequence_estimates`), and its student gradient on teacher samples, ``−Σ_c ∇ log q_c``, is the exact
sequence-level forward-KL gradient (the cross-entropy of SeqKD). The binarised KL term adds the complement
``(1 − p_c) log((1 − p_c)/(1 − q_c))``, a soft-label signal that the cross-entropy lacks.

Same tokenizer: when both tokenizations are the same every chunk is one token each side, and with the identity
vocabulary map ``other`` is empty (its outcome has probability 0 on both sides, contributing exactly 0): every term is
then exactly the same-tokenizer f-DISTILL step term (:func:`fdistill.divergences.f_divergence_loss`, tested to dtype
tolerance). A map built by ``vocab_map(tok, tok)`` leaves the specials other than EOS unshared, so ``other`` holds
their (for a trained model, negligible) mass.

JS mixture. ``js_mixture="stepwise"``: the weight is ``js_beta`` at every chunk. ``"exact"`` (paper Eq. 12 at the
chunk level): ``w_c = σ(logit β + log p(s_<c) − log q(s_<c))`` from the exact prefix log-probabilities
``Σ_{c' < c} log p_{c'}`` (:func:`fdistill.divergences.exact_js_mixture_logit`); ``m`` of the chunk event is then the
exact conditional of the sequence-level mixture ``βp + (1−β)q``.

Baselines: :func:`uld_terms` (Universal Logit Distillation, Boizard et al. 2024, arXiv:2402.12030) and
:func:`hybrid_terms` (GOLD-style: the projected KL at one-to-one chunks, ULD elsewhere). Their objective is
``CE(student on teacher samples) + weight · Σ terms`` (the trainer adds the cross-entropy).

Numerics, masks and gradients follow :mod:`fdistill.divergences`: float32 (float64 stays float64), masked chunks
exactly 0 in value and gradient, ``-inf`` logits never give NaN, gradients only into the student (the teacher and
the mixture weight are detached; sampled prefixes carry no gradient, §7 note 2).

Why in-house: no library computes f-divergences on byte-aligned chunks; the formulas are those of
:mod:`fdistill.divergences` (imported, not repeated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from fdistill.divergences import (
    JS_MIXTURES,
    DivergenceLoss,
    MixtureLogit,
    TeacherTopK,
    _compute_dtype,
    _divergence_terms,
    _log1mexp,
    _log_probs,
    _logsumexp,
    assemble_loss,
    check_js_beta,
    check_kind,
    check_side,
    check_tail_temperature,
    check_temperature,
    reduce_terms,
    side_mixture_weight,
    topk_teacher_log_probs,
    weighted,
)
from fdistill.errors import InputError

__all__ = [
    "CrossSampledSequences",
    "chunk_complements",
    "chunk_logprobs",
    "cross_f_divergence_loss",
    "cross_step_terms",
    "hybrid_terms",
    "sequence_estimates",
    "uld_terms",
]

Divergence = Literal["kl", "rkl", "js", "tvd"]
Side = Literal["teacher", "student"]


class Alignment(Protocol):
    """What the terms read of :class:`fdistill.lm.cross_tokenizer.CrossAlignment`."""

    student_chunks: Tensor  # (B, Cs) chunk index of each student token, -1 at padding
    teacher_chunks: Tensor  # (B, Ct) the same for the teacher's tokens
    num_chunks: Tensor  # (B,)


class SharedVocabulary(Protocol):
    """What the terms read of :class:`fdistill.lm.cross_tokenizer.VocabMap`: pairs of ids with equal bytes."""

    student_ids: Tensor  # (M,)
    teacher_ids: Tensor  # (M,)


# ----------------------------------------------------------------------------- chunks


def chunk_logprobs(token_logprobs: Tensor, chunks: Tensor, num_chunks: int) -> Tensor:
    """Per-chunk log-probabilities ``(B, N)``: the sum of the token log-probabilities ``(B, C)`` of each chunk.

    ``chunks`` ``(B, C)`` holds each token's chunk index, ``-1`` at padding (never read: a ``NaN`` or ``-inf`` there
    contributes exactly 0); chunks without a token are 0.
    """
    if chunks.shape != token_logprobs.shape:
        raise InputError(
            f"chunk indices {tuple(chunks.shape)} and token log-probabilities {tuple(token_logprobs.shape)} differ in "
            "shape; give one chunk index per token (-1 at padding)."
        )
    if chunks.numel() and int(chunks.max()) >= num_chunks:
        raise InputError(f"a chunk index {int(chunks.max())} is not below num_chunks={num_chunks}.")
    valid = chunks >= 0
    index = torch.where(valid, chunks, num_chunks)  # padding goes to a dropped extra column
    values = torch.where(valid, token_logprobs, torch.zeros_like(token_logprobs))
    out = torch.zeros(chunks.shape[0], num_chunks + 1, dtype=values.dtype, device=values.device)
    return out.scatter_add(1, index, values)[:, :num_chunks]


@dataclass
class _Layout:
    """Where each chunk's tokens are: the chunk mask, each side's first token, which chunks are one-to-one."""

    mask: Tensor  # (B, N) chunk exists
    first_student: Tensor  # (B, N) position of the chunk's first student token (0 where masked)
    first_teacher: Tensor  # (B, N)
    one_to_one: Tensor  # (B, N) exactly one token each side (and unmasked)


def _layout(alignment: Alignment, student_labels: Tensor, teacher_labels: Tensor) -> _Layout:
    s_chunks, t_chunks = alignment.student_chunks, alignment.teacher_chunks
    for name, chunks, labels in (("student", s_chunks, student_labels), ("teacher", t_chunks, teacher_labels)):
        if chunks.shape != labels.shape:
            raise InputError(
                f"{name}_chunks {tuple(chunks.shape)} and {name} labels {tuple(labels.shape)} differ in shape; the "
                "alignment must be made for these completions (align_batch on the same ids)."
            )
        if bool(((chunks >= 0) & (labels < 0)).any()):
            raise InputError(
                f"a {name} token inside a chunk has a negative label (ignore_index); the alignment and the labels "
                "must mark the same completion tokens."
            )
    batch = s_chunks.shape[0]
    num = int(alignment.num_chunks.max()) if alignment.num_chunks.numel() else 0
    mask = torch.arange(num, device=s_chunks.device) < alignment.num_chunks.to(s_chunks.device)[:, None]  # (B, N)

    def count_and_first(chunks: Tensor) -> tuple[Tensor, Tensor]:
        valid = chunks >= 0
        index = torch.where(valid, chunks, num)
        counts = torch.zeros(batch, num + 1, dtype=torch.long, device=chunks.device).scatter_add(1, index, valid.long())
        positions = torch.arange(chunks.shape[1], device=chunks.device).expand_as(chunks)
        first = torch.full((batch, num + 1), chunks.shape[1], dtype=torch.long, device=chunks.device)
        first = first.scatter_reduce(1, index, positions, "amin")
        return counts[:, :num], first[:, :num]

    n_s, first_s = count_and_first(s_chunks)
    n_t, first_t = count_and_first(t_chunks)
    if bool((mask & ((n_s == 0) | (n_t == 0))).any()):
        raise InputError(
            "a chunk below num_chunks has no token on one side; every chunk covers at least one token of each "
            "tokenization (align_batch's output)."
        )
    first_s = torch.where(mask, first_s, 0)
    first_t = torch.where(mask, first_t, 0)
    return _Layout(mask, first_s, first_t, mask & (n_s == 1) & (n_t == 1))


# ----------------------------------------------------------------------------- the projection on shared bytes


@dataclass
class _Buckets:
    """The shared outcomes: each set of equal-bytes ids (a connected component of the map's pairs) is one bucket."""

    student_ids: Tensor  # (Us,) distinct student ids of the map
    student_bucket: Tensor  # (Us,) their bucket
    teacher_ids: Tensor  # (Ut,)
    teacher_bucket: Tensor  # (Ut,)
    count: int


def _buckets(vocab_map: SharedVocabulary, device: torch.device) -> _Buckets:
    """Group the map's pairs into buckets: pairs sharing a student or a teacher id are one outcome (a tokenizer may
    hold two ids with the same bytes, e.g. a byte-fallback ``<0x41>`` and ``A``; summing both keeps a partition)."""
    s = vocab_map.student_ids.to(device=device, dtype=torch.long)
    t = vocab_map.teacher_ids.to(device=device, dtype=torch.long)
    if s.shape != t.shape or s.dim() != 1:
        raise InputError(
            f"vocab map ids {tuple(s.shape)} and {tuple(t.shape)} must be two 1-D tensors of equal length (pairs)."
        )
    if s.numel() and (int(s.min()) < 0 or int(t.min()) < 0):
        raise InputError("vocab map ids must be non-negative token ids.")
    label = torch.arange(s.numel(), device=device)
    while s.numel():  # label propagation to connected components; one or two rounds for equal-bytes classes
        size_s, size_t = int(s.max()) + 1, int(t.max()) + 1
        by_s = torch.full((size_s,), s.numel(), device=device).scatter_reduce(0, s, label, "amin")
        by_t = torch.full((size_t,), s.numel(), device=device).scatter_reduce(0, t, label, "amin")
        new = torch.minimum(by_s[s], by_t[t])
        if torch.equal(new, label):
            break
        label = new
    _, bucket = torch.unique(label, return_inverse=True)
    count = int(bucket.max()) + 1 if bucket.numel() else 0

    def per_id(ids: Tensor) -> tuple[Tensor, Tensor]:
        unique = torch.unique(ids)
        if not ids.numel():
            return unique, unique
        table = torch.zeros(int(ids.max()) + 1, dtype=torch.long, device=device).scatter(0, ids, bucket)
        return unique, table[unique]

    return _Buckets(*per_id(s), *per_id(t), count)


def _scatter_logsumexp(values: Tensor, index: Tensor, size: int) -> Tensor:
    """``out[r, j] = log Σ_{i: index[r, i] = j} exp(values[r, i])``, ``(R, U) → (R, size)``; ``-inf`` where empty.

    Shifted by each group's (detached) maximum; the ``log`` never sees 0, so ``-inf`` inputs give no NaN gradient.
    """
    peak = torch.full((values.shape[0], size), -torch.inf, dtype=values.dtype, device=values.device)
    peak = peak.scatter_reduce(1, index, values.detach(), "amax")
    peak = torch.where(torch.isneginf(peak), torch.zeros_like(peak), peak)  # a shift only
    total = torch.zeros_like(peak).scatter_add(1, index, (values - peak.gather(1, index)).exp())
    positive = total > 0
    return torch.where(positive, torch.log(torch.where(positive, total, torch.ones_like(total))) + peak, -torch.inf)


def _bucket_log_probs(log_probs: Tensor, ids: Tensor, bucket: Tensor, count: int) -> Tensor:
    """``log Σ_{v ∈ b} exp(log_probs_v)`` for every bucket ``b``: ``(R, V) → (R, count)``."""
    values = log_probs[:, ids]  # (R, U)
    return _scatter_logsumexp(values, bucket.expand_as(values), count)


def _projected(log_probs: Tensor, ids: Tensor, bucket: Tensor, count: int) -> Tensor:
    """A full next-token distribution projected on the buckets plus ``other`` (last): ``(R, V) → (R, count + 1)``."""
    other = _logsumexp(log_probs.scatter(-1, ids.expand(log_probs.shape[0], -1), -torch.inf))  # (R, 1) unshared
    return torch.cat([_bucket_log_probs(log_probs, ids, bucket, count), other], -1)


def _projected_topk(log_q: Tensor, teacher: TeacherTopK, buckets: _Buckets) -> tuple[Tensor, Tensor]:
    """``(log Q, log P)``, ``(R, K + 1)``, for a top-k teacher: one outcome per bucket holding a top-k id (at the
    slot of its first such id; the later ones ``-inf`` on both sides) and ``other`` = everything else, both sides."""
    log_p_all = topk_teacher_log_probs(teacher, None, dtype=log_q.dtype, device=log_q.device)  # (R, K + 1)
    log_p_top, log_p_tail = log_p_all[:, :-1], log_p_all[:, -1:]
    ids = teacher.ids.to(log_q.device)  # (R, K)
    size = max(int(ids.max()) + 1 if ids.numel() else 0, int(buckets.teacher_ids.max()) + 1 if buckets.count else 0)
    table = torch.full((size,), -1, dtype=torch.long, device=log_q.device)
    table[buckets.teacher_ids] = buckets.teacher_bucket
    slot_bucket = table[ids]  # (R, K), -1 = an unshared teacher id
    mapped = slot_bucket >= 0
    same = (slot_bucket[:, :, None] == slot_bucket[:, None, :]) & mapped[:, :, None]  # (R, K, K)
    earlier = torch.ones(ids.shape[-1], ids.shape[-1], dtype=torch.bool, device=ids.device).tril(-1)
    first = mapped & ~(same & earlier).any(-1)  # (R, K) the slot that carries its bucket
    p_slots = _logsumexp(torch.where(same, log_p_top[:, None, :], -torch.inf)).squeeze(-1)
    p_slots = torch.where(first, p_slots, -torch.inf)
    p_other = _logsumexp(torch.cat([log_p_tail, torch.where(mapped, -torch.inf, log_p_top)], -1))
    q_buckets = _bucket_log_probs(log_q, buckets.student_ids, buckets.student_bucket, buckets.count)  # (R, nb)
    q_slots = torch.where(first, q_buckets.gather(1, slot_bucket.clamp_min(0)), -torch.inf)
    chosen = torch.zeros_like(q_buckets, dtype=torch.long).scatter_add(1, slot_bucket.clamp_min(0), first.long()) > 0
    q_unshared = _logsumexp(log_q.scatter(-1, buckets.student_ids.expand(log_q.shape[0], -1), -torch.inf))
    q_other = _logsumexp(torch.cat([q_unshared, q_buckets.masked_fill(chosen, -torch.inf)], -1))
    return torch.cat([q_slots, q_other], -1), torch.cat([p_slots, p_other], -1)


def _complement(log_probs: Tensor, labels: Tensor) -> Tensor:
    """``log(1 − p_y)`` per row, ``(R, V), (R,) → (R,)``, exact however close ``p_y`` is to 1.

    ``log1p(−p_y)`` is accurate for ``p_y ≤ ½`` (Mächler 2012); above, ``log1mexp`` of ``log p_y ≈ 0`` would inherit
    its rounding, so those rows take ``logsumexp_{v ≠ y} log p_v`` (a pass over their vocabulary).
    """
    picked = log_probs.gather(-1, labels[:, None]).squeeze(-1)
    likely = picked > -math.log(2.0)
    safe = torch.where(likely, torch.full_like(picked, -1.0), picked)  # the unused branch stays finite
    out = torch.log1p(-torch.exp(safe))
    if not bool(likely.any()):
        return out
    rows = likely.nonzero(as_tuple=True)
    near = _logsumexp(log_probs[rows].scatter(-1, labels[rows][:, None], -torch.inf)).squeeze(-1)
    return out.index_put(rows, near)


def chunk_complements(token_logprobs: Tensor, token_complements: Tensor, chunks: Tensor, num_chunks: int) -> Tensor:
    """``log(1 − Π_{t ∈ c} p_t)`` per chunk ``(B, N)``: the log-probability of *not* emitting chunk ``c``'s tokens.

    Leaving the chunk means deviating first at one of its tokens, so

        1 − Π_{t ∈ c} p_t = Σ_{t ∈ c} (1 − p_t) Π_{t' ∈ c, t' < t} p_t',

    formed in log space from each token's ``log(1 − p_t)`` (``token_complements``, exact from the other tokens'
    mass): stable when the chunk probability is tiny *and* when it is ≈ 1, where ``1 − exp(Σ log p_t)`` cancels.
    Chunks are contiguous runs of ``chunks`` (``-1`` at padding, never read).
    """
    valid = chunks >= 0
    logp = torch.where(valid, token_logprobs, torch.zeros_like(token_logprobs))
    prefix = torch.zeros_like(logp)  # Σ of the earlier tokens' log p within the same chunk
    for j in range(1, chunks.shape[1]):
        same = valid[:, j:] & (chunks[:, j:] == chunks[:, :-j])
        if not bool(same.any()):
            break  # no chunk is longer than j tokens
        prefix = prefix + torch.nn.functional.pad(
            torch.where(same, logp[:, :-j], torch.zeros_like(same, dtype=logp.dtype)), (j, 0)
        )
    values = torch.where(valid, token_complements + prefix, torch.full_like(logp, -torch.inf))
    return _scatter_logsumexp(values, torch.where(valid, chunks, num_chunks), num_chunks + 1)[:, :num_chunks]


# ----------------------------------------------------------------------------- per-chunk terms


@dataclass
class _Scored:
    """Both models' normalised log-probabilities at the unmasked token rows and the exact chunk log-probabilities."""

    log_q: Tensor  # (Rs, Vs) student log-probs at the rows of student tokens inside a chunk
    student_rows: tuple[Tensor, Tensor]
    log_p: Tensor | TeacherTopK  # (Rt, Vt) teacher log-probs (detached), or the TeacherTopK at its rows
    teacher_rows: tuple[Tensor, Tensor]
    student_chunk: Tensor  # (B, N) log q_c
    teacher_chunk: Tensor  # (B, N) log p_c (detached)
    student_complement: Tensor  # (B, N) log(1 − q_c)
    teacher_complement: Tensor  # (B, N) log(1 − p_c) (detached)


def _score(
    student_logits: Tensor,
    teacher: Tensor | TeacherTopK,
    student_labels: Tensor,
    teacher_labels: Tensor,
    alignment: Alignment,
    num: int,
    temperature: float,
) -> _Scored:
    """Both sides' log-probabilities at the tokens inside chunks, and each chunk's log-probability and complement."""
    if student_labels.shape != student_logits.shape[:-1]:
        raise InputError(
            f"student labels {tuple(student_labels.shape)} do not match student logits "
            f"{tuple(student_logits.shape)}; labels must be (B, Cs) aligned with the logits."
        )
    dtype = _compute_dtype(student_logits)
    s_rows = (alignment.student_chunks >= 0).nonzero(as_tuple=True)
    t_rows = (alignment.teacher_chunks >= 0).nonzero(as_tuple=True)

    def full(rows: tuple[Tensor, Tensor], values: Tensor, shape: torch.Size) -> Tensor:  # (R,) → (B, C), 0 elsewhere
        return torch.zeros(shape, dtype=values.dtype, device=values.device).index_put(rows, values)

    log_q = _log_probs(student_logits[s_rows], temperature, dtype)  # (Rs, Vs)
    s_lab = student_labels[s_rows]
    lp_q = full(s_rows, log_q.gather(-1, s_lab[:, None]).squeeze(-1), student_labels.shape)
    comp_q = full(s_rows, _complement(log_q, s_lab), student_labels.shape)
    if isinstance(teacher, TeacherTopK):
        if teacher.ids.shape[:-1] != teacher_labels.shape:
            raise InputError(
                f"teacher top-k {tuple(teacher.ids.shape)} does not cover the teacher's tokens "
                f"{tuple(teacher_labels.shape)}; give the top k at every teacher position."
            )
        if teacher.token_logprobs is None:
            raise InputError(
                "a top-k teacher across tokenizers needs the log-probability of every actual teacher token (the "
                "chunk log-probabilities): pass TeacherTopK(token_logprobs=...) (a vLLM server returns them)."
            )
        log_p = teacher[t_rows]
        picked = log_p.token_logprobs.detach().to(dtype=dtype, device=log_q.device).clamp_max(0.0)  # rounded values
        lp_p = full(t_rows, picked, teacher_labels.shape)
        comp_p = full(t_rows, _log1mexp(picked), teacher_labels.shape)  # all a served teacher tells
    else:
        if teacher.shape[:-1] != teacher_labels.shape:
            raise InputError(
                f"teacher logits {tuple(teacher.shape)} and teacher labels {tuple(teacher_labels.shape)} cover "
                "different positions; labels must be (B, Ct) aligned with the teacher's logits."
            )
        log_p = _log_probs(teacher[t_rows].detach(), temperature, _compute_dtype(teacher)).to(dtype)  # (Rt, Vt)
        t_lab = teacher_labels[t_rows]
        lp_p = full(t_rows, log_p.gather(-1, t_lab[:, None]).squeeze(-1), teacher_labels.shape)
        comp_p = full(t_rows, _complement(log_p, t_lab), teacher_labels.shape)
    s_chunks, t_chunks = alignment.student_chunks, alignment.teacher_chunks
    return _Scored(
        log_q,
        s_rows,
        log_p,
        t_rows,
        chunk_logprobs(lp_q, s_chunks, num),
        chunk_logprobs(lp_p, t_chunks, num),
        chunk_complements(lp_q, comp_q, s_chunks, num),
        chunk_complements(lp_p, comp_p, t_chunks, num),
    )


def _row_of(rows: tuple[Tensor, Tensor], shape: torch.Size, b: Tensor, pos: Tensor) -> Tensor:
    """Index into the gathered rows of the token at ``(b, pos)`` (each such token is one of ``rows``)."""
    lookup = torch.full(shape, -1, dtype=torch.long, device=b.device)
    lookup[rows] = torch.arange(rows[0].numel(), device=b.device)
    return lookup[b, pos]


@dataclass
class CrossSampledSequences:
    """Both models' scores of one batch of sampled completions, each in its own tokenization, and their alignment.

    Attributes:
        student_logits: ``(B, Cs, Vs)`` student logits at its tokens of the completions.
        teacher_logits: ``(B, Ct, Vt)`` teacher logits at its tokens, or a :class:`TeacherTopK` of ``(B, Ct, K)``.
        student_labels, teacher_labels: ``(B, Cs)``, ``(B, Ct)`` each side's tokens.
        alignment: the chunks (:class:`fdistill.lm.cross_tokenizer.CrossAlignment`).
        num_items_in_batch: optional global denominator (sequences, or chunks for ``reduction="token"``).
        weights: optional ``(B, Cs)`` per student token weights (importance weights of reused student samples);
            a chunk takes the weight of its first student token.
    """

    student_logits: Tensor
    teacher_logits: Tensor | TeacherTopK
    student_labels: Tensor
    teacher_labels: Tensor
    alignment: Alignment
    num_items_in_batch: int | Tensor | None = None
    weights: Tensor | None = None


def cross_step_terms(
    kind: Divergence,
    student_logits: Tensor,
    teacher_logits: Tensor | TeacherTopK,
    student_labels: Tensor,
    teacher_labels: Tensor,
    alignment: Alignment,
    vocab_map: SharedVocabulary,
    *,
    on: Side,
    js_mixture: Literal["stepwise", "exact"] = "stepwise",
    js_beta: float = 0.5,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per-chunk f-DISTILL terms ``(B, N)`` and the chunk mask ``(B, N)`` (module docstring: what each estimates).

    At a one-to-one chunk: ``D(P ‖ Q)`` of the next-token distributions projected on the shared-bytes buckets plus
    ``other``; at every other chunk: ``D(Bern(p_c) ‖ Bern(q_c))``. ``D`` is the step term of ``kind`` on side ``on``
    (:func:`fdistill.divergences.step_divergence`'s table): ``kl`` ``Σ P log(P/Q)``, ``rkl`` ``Σ Q log(Q/P)``,
    ``js`` ``Σ P log(P/M)`` (teacher side) or ``Σ Q log(Q/M)`` (student side), ``tvd`` ``½ Σ |P − Q|``.

    Arguments:
        kind: ``"kl"``, ``"rkl"``, ``"js"`` or ``"tvd"``.
        student_logits: ``(B, Cs, Vs)`` at the student's tokens of the completions (``logits[b, t]`` is the
            distribution ``student_labels[b, t]`` was drawn from).
        teacher_logits: ``(B, Ct, Vt)`` the same for the teacher's tokens, or a :class:`TeacherTopK` of
            ``(B, Ct, K)`` with ``token_logprobs`` (the actual teacher tokens' log-probabilities; temperature 1).
        student_labels, teacher_labels: ``(B, Cs)``, ``(B, Ct)`` each side's tokens (read inside chunks only).
        alignment: ``student_chunks (B, Cs)``, ``teacher_chunks (B, Ct)`` (-1 at padding), ``num_chunks (B,)``.
        vocab_map: ``student_ids``, ``teacher_ids``: pairs of ids with equal bytes.
        on: which model sampled the text (selects the JS half).
        js_mixture, js_beta, temperature: as in :func:`fdistill.divergences.f_divergence_loss`.

    Returns:
        ``(terms, mask)``: terms exactly 0 where the mask is False.

    Example:
        >>> from fdistill import testing
        >>> from fdistill.lm.cross_tokenizer import align_batch, retokenize, vocab_map
        >>> tok_s, tok_t = testing.cross_tokenizers()
        >>> s_ids = torch.tensor([[5, 6, 1]]); s_mask = torch.ones_like(s_ids)  # "ab b" + EOS, student tokens
        >>> t_ids, t_mask = retokenize(tok_s, tok_t, s_ids, s_mask)  # a|b|' '|b|EOS
        >>> align = align_batch(tok_s, tok_t, s_ids, s_mask, t_ids, t_mask)
        >>> s_logits, t_logits = torch.randn(1, 3, len(tok_s)), torch.randn(1, 5, len(tok_t))
        >>> terms, mask = cross_step_terms(
        ...     "js", s_logits, t_logits, s_ids, t_ids, align, vocab_map(tok_s, tok_t), on="student")
        >>> terms.shape, mask.tolist()  # chunks "ab", " b" (binarised) and EOS (one-to-one, projected)
        (torch.Size([1, 3]), [[True, True, True]])
    """
    batch = CrossSampledSequences(student_logits, teacher_logits, student_labels, teacher_labels, alignment)
    terms, layout = _chunk_terms(
        kind, batch, vocab_map, on=on, js_mixture=js_mixture, js_beta=js_beta, temperature=temperature
    )
    return terms, layout.mask


def _chunk_terms(
    kind: str,
    batch: CrossSampledSequences,
    vocab_map: SharedVocabulary,
    *,
    on: Side,
    js_mixture: str = "stepwise",
    js_beta: float = 0.5,
    temperature: float = 1.0,
    elsewhere: Literal["binarised", "uld"] = "binarised",
) -> tuple[Tensor, _Layout]:
    """:func:`cross_step_terms` (``elsewhere="binarised"``) or :func:`hybrid_terms` (``"uld"``), with the layout."""
    student_logits, teacher_logits = batch.student_logits, batch.teacher_logits
    student_labels, teacher_labels, alignment = batch.student_labels, batch.teacher_labels, batch.alignment
    check_kind(kind)
    check_side(on)
    check_temperature(temperature)
    check_js_beta(js_beta)
    if js_mixture not in JS_MIXTURES:
        raise InputError(f"unknown js_mixture {js_mixture!r}; choose 'stepwise' (paper Eq. 11) or 'exact' (Eq. 12).")
    topk = isinstance(teacher_logits, TeacherTopK)
    if topk:
        check_tail_temperature("tail", temperature, temperature_name="temperature")
    layout = _layout(alignment, student_labels, teacher_labels)
    num = layout.mask.shape[1]
    scored = _score(student_logits, teacher_logits, student_labels, teacher_labels, alignment, num, temperature)
    weight = side_mixture_weight(
        kind, js_mixture, js_beta, layout.mask, lambda: (scored.teacher_chunk, scored.student_chunk), lambda z: z
    )  # js_beta, or a MixtureLogit of (B, N)

    def select(where: tuple[Tensor, Tensor]) -> float | MixtureLogit:
        return weight if not isinstance(weight, MixtureLogit) else MixtureLogit(weight.logit[where])

    dtype = scored.student_chunk.dtype
    terms = torch.zeros(layout.mask.shape, dtype=dtype, device=scored.student_chunk.device)
    single = layout.one_to_one.nonzero(as_tuple=True)
    if single[0].numel():
        b = single[0]
        log_q = scored.log_q[_row_of(scored.student_rows, student_labels.shape, b, layout.first_student[single])]
        buckets = _buckets(vocab_map, log_q.device)
        t_index = _row_of(scored.teacher_rows, teacher_labels.shape, b, layout.first_teacher[single])
        if topk:
            log_q, log_p = _projected_topk(log_q, scored.log_p[t_index], buckets)
        else:
            log_p = _projected(scored.log_p[t_index], buckets.teacher_ids, buckets.teacher_bucket, buckets.count)
            log_q = _projected(log_q, buckets.student_ids, buckets.student_bucket, buckets.count)
        terms = terms.index_put(single, _divergence_terms(kind, log_q, log_p, on=on, mixture_weight=select(single)))
    several = (layout.mask & ~layout.one_to_one).nonzero(as_tuple=True)
    if several[0].numel() and elsewhere == "uld":  # the first tokens' next-token distributions
        b = several[0]
        log_q = scored.log_q[_row_of(scored.student_rows, student_labels.shape, b, layout.first_student[several])]
        teacher = scored.log_p[_row_of(scored.teacher_rows, teacher_labels.shape, b, layout.first_teacher[several])]
        values = _sorted_l1(_sorted_probs(log_q), _teacher_sorted(teacher, 1.0, dtype))  # both already tempered
        terms = terms.index_put(several, values)
    elif several[0].numel():
        log_q = torch.stack([scored.student_chunk[several], scored.student_complement[several]], -1)  # Bernoulli
        log_p = torch.stack([scored.teacher_chunk[several], scored.teacher_complement[several]], -1)
        terms = terms.index_put(several, _divergence_terms(kind, log_q, log_p, on=on, mixture_weight=select(several)))
    return terms, layout


def _chunk_weights(batch: CrossSampledSequences, layout: _Layout) -> Tensor | None:
    """The ``(B, N)`` weight of each chunk: that of its first student token."""
    if batch.weights is None:
        return None
    if batch.weights.shape != batch.student_labels.shape:
        raise InputError(
            f"weights {tuple(batch.weights.shape)} must have the student tokens' shape "
            f"{tuple(batch.student_labels.shape)} (one weight per student token)."
        )
    return batch.weights.gather(1, layout.first_student).masked_fill(~layout.mask, 0.0)


def cross_f_divergence_loss(
    kind: Divergence,
    *,
    vocab_map: SharedVocabulary,
    teacher_samples: CrossSampledSequences | None = None,
    student_samples: CrossSampledSequences | None = None,
    js_mixture: Literal["stepwise", "exact"] = "stepwise",
    js_beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Literal["sequence", "token"] = "sequence",
) -> DivergenceLoss:
    """The f-DISTILL objective across tokenizers: :func:`fdistill.divergences.f_divergence_loss` with chunks as steps.

        J_KL = E_{s~p} Σ_c D_KL,c      J_RKL = E_{s~q} Σ_c D_RKL,c
        J_JS = β E_{s~p} Σ_c D_JS,c^(teacher) + (1−β) E_{s~q} Σ_c D_JS,c^(student)
        J_TVD = ½ E_{s~p} Σ_c D_TVD,c + ½ E_{s~q} Σ_c D_TVD,c

    with the chunk terms of :func:`cross_step_terms`. Reductions as :func:`fdistill.divergences.reduce_terms` with a
    chunk in place of a position (``"sequence"``: sum over chunks, mean over sequences; ``"token"``: mean over
    chunks); weights per chunk from the first student token's weight.

    Returns:
        :class:`~fdistill.divergences.DivergenceLoss` (the combined loss and each side's reduced term).
    """

    def side_term(side: str, batch: CrossSampledSequences) -> Tensor:
        terms, layout = _chunk_terms(
            kind, batch, vocab_map, on=side, js_mixture=js_mixture, js_beta=js_beta, temperature=temperature
        )
        return reduce_terms(
            *weighted(terms, layout.mask, _chunk_weights(batch, layout)),
            reduction=reduction,
            num_items_in_batch=batch.num_items_in_batch,
        )

    return assemble_loss(
        kind,
        {"teacher": teacher_samples, "student": student_samples},
        side_term,
        js_mixture=js_mixture,
        js_beta=js_beta,
        temperature=temperature,
        needs="the {side}'s completions scored by both models in their own tokenizations, with the alignment",
    )


# ----------------------------------------------------------------------------- baselines: ULD and the hybrid


def _sorted_probs(log_probs: Tensor) -> Tensor:
    """Probabilities sorted in decreasing order along the last axis."""
    return log_probs.exp().sort(-1, descending=True).values


def _sorted_l1(q_sorted: Tensor, p_sorted: Tensor) -> Tensor:
    """``Σ_i |Q_i − P_i|`` of two sorted probability vectors, the shorter zero-padded: ``(R, Vq), (R, Vp) → (R,)``."""
    n = min(q_sorted.shape[-1], p_sorted.shape[-1])
    head = (q_sorted[:, :n] - p_sorted[:, :n]).abs().sum(-1)
    return head + q_sorted[:, n:].sum(-1) + p_sorted[:, n:].sum(-1)


def _teacher_sorted(teacher: Tensor | TeacherTopK, temperature: float, dtype: torch.dtype) -> Tensor:
    """The teacher's sorted probabilities at some rows; a top-k teacher restricted to its top k and renormalised."""
    if isinstance(teacher, TeacherTopK):
        return _sorted_probs(torch.log_softmax(teacher.logprobs.detach().to(dtype) / temperature, -1))
    return _sorted_probs(_log_probs(teacher.detach(), temperature, dtype))


def uld_terms(
    student_logits: Tensor,
    teacher_logits: Tensor | TeacherTopK,
    student_labels: Tensor,
    teacher_labels: Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> tuple[Tensor, Tensor]:
    """Universal Logit Distillation terms (Boizard et al. 2024, arXiv:2402.12030): ``(B, L)`` and their mask.

    The ``i``-th completion token of each side are paired by index (no alignment; the longer side is truncated) and

        ULD_i = Σ_j | q_(j) − p_(j) |,

    with ``q_(j)``, ``p_(j)`` each model's next-token probabilities sorted in decreasing order, the shorter vector
    padded with zeros to the larger vocabulary: the closed-form Wasserstein-1 distance with unit transport cost
    between the two sorted distributions. A :class:`TeacherTopK` teacher is its top k renormalised (zeros elsewhere),
    the same as full teacher logits restricted to those k. The objective is
    ``CE(student on teacher samples) + weight · ULD``.
    """
    check_temperature(temperature)
    s_mask, t_mask = student_labels != ignore_index, teacher_labels != ignore_index
    s_count, t_count = s_mask.sum(-1), t_mask.sum(-1)
    pairs = torch.minimum(s_count, t_count)  # (B,)
    length = int(pairs.max()) if pairs.numel() else 0
    rank = torch.arange(length, device=s_mask.device)
    mask = rank < pairs[:, None]  # (B, L)
    # positions of the i-th completion token: valid positions first, in order (a stable sort)
    s_pos = torch.sort((~s_mask).to(torch.int8), dim=-1, stable=True).indices[:, :length]
    t_pos = torch.sort((~t_mask).to(torch.int8), dim=-1, stable=True).indices[:, :length]
    rows = mask.nonzero(as_tuple=True)
    dtype = _compute_dtype(student_logits)
    student = student_logits[rows[0], s_pos[rows]]  # (R, Vs)
    teacher = teacher_logits[(rows[0], t_pos[rows])]
    values = _sorted_l1(
        _sorted_probs(_log_probs(student, temperature, dtype)), _teacher_sorted(teacher, temperature, dtype)
    )
    terms = torch.zeros(mask.shape, dtype=dtype, device=values.device).index_put(rows, values)
    return terms, mask


def hybrid_terms(
    student_logits: Tensor,
    teacher_logits: Tensor | TeacherTopK,
    student_labels: Tensor,
    teacher_labels: Tensor,
    alignment: Alignment,
    vocab_map: SharedVocabulary,
    *,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """GOLD-style hybrid terms per chunk ``(B, N)`` and the chunk mask: exact where the vocabularies share the token's
    text, ULD elsewhere.

    One-to-one chunk: the KL between the projected next-token distributions (:func:`cross_step_terms`' term, teacher
    side). Other chunk: ULD (:func:`uld_terms`' sorted L1) between the next-token distributions at the chunk's first
    token of each side. TRL's ``GOLDTrainer`` splits the vocabulary instead (the shared ids compared directly, the
    unshared ones sorted) at every index-aligned position; here the split is by chunk, so that the exact part is
    taken exactly where both models predict the same bytes. The objective is ``CE + weight · Σ_c terms``.
    """
    batch = CrossSampledSequences(student_logits, teacher_logits, student_labels, teacher_labels, alignment)
    terms, layout = _chunk_terms("kl", batch, vocab_map, on="teacher", temperature=temperature, elsewhere="uld")
    return terms, layout.mask


# ----------------------------------------------------------------------------- sequence level


def sequence_estimates(
    logp_on_p: Tensor | None = None,
    logq_on_p: Tensor | None = None,
    logp_on_q: Tensor | None = None,
    logq_on_q: Tensor | None = None,
) -> dict[str, Tensor]:
    """Monte Carlo sequence-level divergences from per-sample sequence log-probabilities, across tokenizers.

    ``logp_on_p``, ``logq_on_p``: ``(n,)`` the teacher's and the student's log-probability of each *teacher*
    sample's text; ``logp_on_q``, ``logq_on_q``: the same for ``(m,)`` *student* samples. Each model scores a text in
    its own tokenization (its own sampled tokens, or its canonical tokenization of the other model's text):

        kl  = mean_{s~p} [log p(s) − log q(s)]
        rkl = mean_{s~q} [log q(s) − log p(s)]
        js  = ½ mean_{s~p} [log p(s) − log m(s)] + ½ mean_{s~q} [log q(s) − log m(s)],
              log m = logaddexp(log p, log q) − log 2     (the exact sequence-level mixture ½p + ½q)
        tvd = ½ ( mean_{s~p} max(0, 1 − q(s)/p(s)) + mean_{s~q} max(0, 1 − p(s)/q(s)) )

    (``Σ_s |p − q| = E_p max(0, 1 − q/p) + E_q max(0, 1 − p/q)``, each half equal to the TVD). Which keys are
    returned: ``kl`` with the teacher samples, ``rkl`` with the student samples, ``js`` and ``tvd`` with both.

    What is exact: each estimate is unbiased for the divergence between the two models' distributions over *strings*
    scored in canonical tokenization, ``p(s) = p(canonical tokens of s)``, when each model puts (essentially) all of
    its mass on canonical tokenizations, so that the law of the sampled text is ``p(s)``. The marginal over all
    tokenizations of a string, ``Σ_{y: text(y) = s} p(y)``, is left out; a sampled non-canonical tokenization is
    scored by its canonical one. Cao & Rimell 2021 ("You should evaluate your language model on marginal likelihood
    over tokenisations") and Chirkova et al. 2023 ("Should you marginalize over possible tokenizations?") measure
    this gap; the latter find it small for trained LMs.
    """
    out: dict[str, Tensor] = {}
    teacher = logp_on_p is not None and logq_on_p is not None
    student = logp_on_q is not None and logq_on_q is not None
    if not teacher and not student:
        raise InputError(
            "sequence_estimates needs both models' log-probabilities of the teacher samples (logp_on_p, logq_on_p), "
            "of the student samples (logp_on_q, logq_on_q), or both."
        )
    for name, a, b in (("teacher", logp_on_p, logq_on_p), ("student", logp_on_q, logq_on_q)):
        if a is not None and b is not None and (a.shape != b.shape or a.dim() != 1):
            raise InputError(
                f"the {name} samples' log-probabilities {tuple(a.shape)} and {tuple(b.shape)} must be two 1-D "
                "tensors of equal length (one value per sample and model)."
            )
    log2 = math.log(2.0)
    if teacher:
        lp, lq = logp_on_p.detach(), logq_on_p.detach()
        out["kl"] = (lp - lq).mean()
    if student:
        sp, sq = logp_on_q.detach(), logq_on_q.detach()
        out["rkl"] = (sq - sp).mean()
    if teacher and student:
        js_p = (lp - (torch.logaddexp(lp, lq) - log2)).mean()
        js_q = (sq - (torch.logaddexp(sp, sq) - log2)).mean()
        out["js"] = 0.5 * js_p + 0.5 * js_q
        tvd_p = (-torch.expm1((lq - lp).clamp_max(0.0))).mean()
        tvd_q = (-torch.expm1((sp - sq).clamp_max(0.0))).mean()
        out["tvd"] = 0.5 * (tvd_p + tvd_q)
    return out
