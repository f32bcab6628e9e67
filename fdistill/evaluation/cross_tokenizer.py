"""Sequence-level divergences and risks between a teacher and a student with different tokenizers, on text.

p(y|x) and q(y|x) are distributions over completion *strings*, so the sequence-level divergences do not depend on
any tokenizer (f-DISTILL, Wen et al. 2023, §2: the objectives are sequence-level; only the step-wise decomposition
of Theorem 1 needs shared steps). This module estimates them by Monte Carlo from samples of both models:

- each model draws completions for the prompts (pure ancestral sampling), and each completion is turned into text:
  ``text = decode(ids without EOS/pad, skip_special_tokens=True, clean_up_tokenization_spaces=False)`` of the model
  that drew it, and ``ended`` = it stopped at EOS (`fdistill.lm.cross_tokenizer.completion_text`);
- every text is scored by **both** models, each in its **canonical tokenization** of the text alone
  (``tokenizer(text, add_special_tokens=False)`` + its own EOS when ``ended``:
  `fdistill.lm.cross_tokenizer.encode_completion`), after its own tokenization of the prompt (its own special
  tokens such as Gemma's BOS, its own chat template with ``use_chat_template``). The prompt and the completion are
  tokenized apart, never jointly, so both models score exactly the same string after the same prompt text;
- with ``log p(y)``, ``log q(y)`` of the teacher's samples ``y ~ p`` and the student's samples ``y' ~ q``:

  - ``kl``  = E_{y~p}[log p(y) − log q(y)]                           = D_KL(p‖q)
  - ``rkl`` = E_{y'~q}[log q(y') − log p(y')]                        = D_KL(q‖p)
  - ``js``  = ½E_p[log p − log m] + ½E_q[log q − log m], m = ½(p+q)  (the exact mixture)
  - ``tvd`` = the Monte Carlo sequence-level total variation ½E|1 − q/p| estimated from both sides (not the
    step-wise bound ``tvd_bound`` of the same-tokenizer evaluation, which needs shared steps)

  from `fdistill.lm.cross_divergences.sequence_estimates` (one definition of the estimators);
- ``r_llh`` = E_{y'~q}[−log p(y')] and ``r_cvg`` = E_{y~p}[−log q(y)] (the paper's Table 3 risks, per sequence);
  per character of the text (``r_llh_char``, ``r_cvg_char``: tokenizer-free, so comparable across tokenizers — the
  normalisation to prefer), and per token of the *scoring* model's canonical tokens (``r_llh_token``: per teacher
  token, ``r_cvg_token``: per student token; these depend on the tokenizers);
- sample sizes: ``teacher_sample_length`` / ``student_sample_length`` (own sampled tokens), ``*_sample_chars``
  (characters of the text) and ``*_ended`` (the fraction that stopped at EOS).

What "exact" means here, and what is left out:

1. **Canonical, not marginal.** A model's probability of a string is the sum over every token sequence that spells
   it, ``p(text) = Σ_{t: decode(t)=text} p(t)``; the canonical tokenization gives one term of it, a lower bound
   ``log p_canonical(text) ≤ log p(text)``. Chirkova et al. (2023, "Should you marginalize over possible
   tokenizations?", ACL), estimating the marginal by importance sampling on current LMs, find the log-likelihood gap
   no larger than 0.5% in most cases, larger on text with long complex words; Cao & Rimell (2021, "You should
   evaluate your language model on marginal likelihood over tokenisations", EMNLP) find the marginal perplexity can
   be significantly better than the one-best, especially out of domain. On the real pair it is measured here: the
   fraction of each model's own samples whose sampled tokens are *not* the canonical tokens of their text
   (``teacher_noncanonical``, ``student_noncanonical``) and the mean ``log p(sampled tokens) − log p(canonical
   tokens)`` over all samples (``*_noncanonical_logp_gap``, nats per sequence; 0 for canonical samples). Those
   samples' texts have at least two tokenizations with mass, so for them the canonical score misses at least the
   sampled one.
2. **Text, not tokens.** Special tokens the sampler emitted inside a completion are not text (skipped on decode), so
   such a sample is scored as the string without them (and counts as non-canonical).
3. **Truncated samples.** A completion cut at ``max_new_tokens`` (``ended`` False) is scored without EOS: its score
   is the probability of the canonical token *prefix*, which is not exactly the probability that the completion
   *begins with* the text (a continuation may merge across the cut) — exact only for completions that ended.
   ``*_ended`` says how many did.

Against the same-tokenizer `fdistill.evaluation.metrics.sequence_divergences` (which sums exact step-wise terms over
the whole vocabulary, lower variance), these are the plain ``log p − log q`` estimators: unbiased (given the
canonical probabilities) but noisier. In-house because no library scores text across two tokenizers this way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fdistill.divergences import token_logprobs
from fdistill.errors import nonfinite_sampling
from fdistill.evaluation.metrics import _seeded_or_global
from fdistill.lm.data import pad_right, score_completions
from fdistill.lm.sampling import prompt_batches, sample_batches, sampling_config


@dataclass
class TextSamples:
    """Completions one model drew, as text: one per (prompt, sample), prompts repeated ``num_samples`` times."""

    prompts: list
    texts: list[str]
    ended: list[bool]
    sampled_ids: list[list[int]]  # the drawing model's own tokens, its EOS included when the completion ended


@dataclass
class ScoredSamples:
    """Text samples of one model with their scores under that model: canonical and sampled tokenization."""

    samples: TextSamples
    logprob: torch.Tensor  # (N,) float64: log-probability of each text's canonical tokens under the drawing model
    tokens: torch.Tensor  # (N,) canonical token counts (EOS included when ended)
    sampled_logprob: torch.Tensor  # (N,) float64: log-probability of the tokens actually sampled
    canonical: torch.Tensor  # (N,) bool: the sampled tokens are the canonical tokens of the text


@torch.no_grad()
def draw_text_samples(
    model,
    tokenizer,
    prompts: list,
    *,
    num_samples: int = 1,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    use_chat_template: bool = False,
    seed: int | None = 0,
    who: str = "model",
) -> TextSamples:
    """``num_samples`` completions per prompt drawn by ``model`` (pure ancestral sampling), as text.

    ``seed``: drawn after ``torch.manual_seed(seed)`` in a :func:`~fdistill.torch_utils.seeded` block (the caller's
    RNG untouched); ``None`` draws from torch's global RNG.
    """
    from fdistill.lm.cross_tokenizer import completion_text

    expanded = [p for p in prompts for _ in range(num_samples)]
    config = sampling_config(model, tokenizer, max_new_tokens=max_new_tokens)
    with nonfinite_sampling(who, "evaluation"), _seeded_or_global(seed, model):
        drawn = sample_batches(
            model, tokenizer, expanded, config, batch_size=batch_size, use_chat_template=use_chat_template
        )
    rows = [row[m].tolist() for ids, mask, _ in drawn for row, m in zip(ids, mask)]
    texts, ended = zip(*(completion_text(tokenizer, r) for r in rows)) if rows else ((), ())
    return TextSamples(expanded, list(texts), list(ended), rows)


@torch.no_grad()
def score_token_rows(
    model, tokenizer, prompts: list, rows: list[list[int]], *, batch_size: int = 16, use_chat_template: bool = False
) -> torch.Tensor:
    """``log P(row | prompt)`` (float64, summed over the row's tokens) for every completion row, under ``model``.

    Each prompt is tokenized by ``tokenizer`` as the model's own prompts are (its special tokens, its chat template
    with ``use_chat_template``); the rows are token ids of that tokenizer (right-padded here). An empty row scores 0.
    """
    was_training = model.training
    model.eval()
    try:
        out = []
        batches = prompt_batches(model, tokenizer, prompts, batch_size=batch_size, use_chat_template=use_chat_template)
        for start, (pids, pmask) in zip(range(0, len(prompts), batch_size), batches):
            ids, mask = pad_right(rows[start : start + batch_size], tokenizer.pad_token_id)
            ids, mask = ids.to(pids.device), mask.to(pids.device)
            logits, labels, _ = score_completions(model, pids, pmask, ids, mask, pad_token_id=tokenizer.pad_token_id)
            out.append(token_logprobs(logits, labels).double().sum(-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
    finally:
        model.train(was_training)


def canonical_rows(tokenizer, samples: TextSamples) -> list[list[int]]:
    """Every text's canonical tokens under ``tokenizer`` (+ its EOS when the completion ended)."""
    from fdistill.lm.cross_tokenizer import encode_completion

    return [encode_completion(tokenizer, t, e) for t, e in zip(samples.texts, samples.ended)]


def score_own_samples(
    model, tokenizer, samples: TextSamples, *, batch_size: int = 16, use_chat_template: bool = False
) -> ScoredSamples:
    """The drawing model's scores of its own samples: canonical (what the estimates use) and as sampled."""
    rows = canonical_rows(tokenizer, samples)
    common = dict(batch_size=batch_size, use_chat_template=use_chat_template)
    logprob = score_token_rows(model, tokenizer, samples.prompts, rows, **common)
    canonical = torch.tensor([r == s for r, s in zip(rows, samples.sampled_ids)], dtype=torch.bool)
    sampled = logprob.clone()
    if not bool(canonical.all()):  # score only what differs: the canonical samples' scores are the same tokens
        redo = [i for i, c in enumerate(canonical.tolist()) if not c]
        sampled[redo] = score_token_rows(
            model, tokenizer, [samples.prompts[i] for i in redo], [samples.sampled_ids[i] for i in redo], **common
        )
    tokens = torch.tensor([len(r) for r in rows], dtype=torch.float64)
    return ScoredSamples(samples, logprob, tokens, sampled, canonical)


@torch.no_grad()
def teacher_text_samples(
    teacher,
    teacher_tokenizer,
    prompts: list,
    *,
    num_samples: int = 1,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    use_chat_template: bool = False,
    seed: int | None = 0,
) -> ScoredSamples:
    """The teacher's samples and its own scores of them, drawn once and shared by every student compared
    (:func:`cross_sequence_divergences`'s ``teacher_samples``); drawn after ``torch.manual_seed(seed + 1)``."""
    samples = draw_text_samples(
        teacher,
        teacher_tokenizer,
        prompts,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        use_chat_template=use_chat_template,
        seed=None if seed is None else seed + 1,
        who="teacher",
    )
    return score_own_samples(
        teacher, teacher_tokenizer, samples, batch_size=batch_size, use_chat_template=use_chat_template
    )


@torch.no_grad()
def cross_sequence_divergences(
    student,
    teacher,
    student_tokenizer,
    teacher_tokenizer,
    prompts: list,
    *,
    num_samples: int = 1,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    use_chat_template: bool = False,
    seed: int | None = 0,
    teacher_samples: ScoredSamples | None = None,
) -> dict[str, float]:
    """Monte Carlo sequence-level KL / RKL / JS / TVD and the risks between teacher ``p`` and student ``q`` on text.

    The estimators, the text boundary and what "exact" means: this module's docstring. ``num_samples`` completions
    per prompt and model, up to ``max_new_tokens`` of the drawing model's tokens each; the student's samples are
    drawn after ``torch.manual_seed(seed)``, the teacher's after ``seed + 1`` (both in blocks that leave the caller's
    RNG untouched). ``teacher_samples`` (from :func:`teacher_text_samples`, same prompts and settings) shares one
    set of teacher samples between students.

    Returns: ``kl``, ``rkl``, ``js``, ``tvd``; ``r_llh``, ``r_cvg`` (per sequence), ``r_llh_char``, ``r_cvg_char``
    (per character), ``r_llh_token`` (per teacher token), ``r_cvg_token`` (per student token); the sample sizes
    ``{teacher,student}_sample_length`` / ``_sample_chars`` / ``_ended``; and the canonical-tokenization gap
    ``{teacher,student}_noncanonical`` / ``_noncanonical_logp_gap``.
    """
    from fdistill.lm.cross_divergences import sequence_estimates

    common = dict(batch_size=batch_size, use_chat_template=use_chat_template)
    if teacher_samples is None:
        teacher_samples = teacher_text_samples(
            teacher,
            teacher_tokenizer,
            prompts,
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            seed=seed,
            **common,
        )
    drawn = draw_text_samples(
        student,
        student_tokenizer,
        prompts,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        seed=seed,
        who="student",
        **common,
    )
    own = score_own_samples(student, student_tokenizer, drawn, **common)  # log q on q
    on_q = canonical_rows(teacher_tokenizer, drawn)
    logp_on_q = score_token_rows(teacher, teacher_tokenizer, drawn.prompts, on_q, **common)
    on_p = canonical_rows(student_tokenizer, teacher_samples.samples)
    logq_on_p = score_token_rows(student, student_tokenizer, teacher_samples.samples.prompts, on_p, **common)
    estimates = sequence_estimates(teacher_samples.logprob, logq_on_p, logp_on_q, own.logprob)
    result = {k: float(estimates[k]) for k in ("kl", "rkl", "js", "tvd")}
    chars = {
        name: torch.tensor([len(t) for t in s.samples.texts], dtype=torch.float64)
        for name, s in (("teacher", teacher_samples), ("student", own))
    }
    result.update(
        r_llh=float(-logp_on_q.mean()),
        r_cvg=float(-logq_on_p.mean()),
        r_llh_char=float(-logp_on_q.sum() / chars["student"].sum().clamp_min(1)),
        r_cvg_char=float(-logq_on_p.sum() / chars["teacher"].sum().clamp_min(1)),
        r_llh_token=float(-logp_on_q.sum() / max(sum(len(r) for r in on_q), 1)),
        r_cvg_token=float(-logq_on_p.sum() / max(sum(len(r) for r in on_p), 1)),
    )
    for name, scored in (("teacher", teacher_samples), ("student", own)):
        s = scored.samples
        result[f"{name}_sample_length"] = sum(len(r) for r in s.sampled_ids) / max(len(s.texts), 1)
        result[f"{name}_sample_chars"] = float(chars[name].mean()) if len(s.texts) else 0.0
        result[f"{name}_ended"] = sum(s.ended) / max(len(s.ended), 1)
        result[f"{name}_noncanonical"] = float((~scored.canonical).double().mean())
        result[f"{name}_noncanonical_logp_gap"] = float((scored.sampled_logprob - scored.logprob).mean())
    return result
