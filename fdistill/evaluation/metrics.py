"""Distillation metrics: Monte Carlo sequence-level divergences and the paper's likelihood/coverage risks.

Estimates use the step-wise decomposition itself (Theorem 1 of f-DISTILL): the mean
over sampled sequences of the summed per-step terms is an unbiased estimate of the
sequence-level KL, RKL and JS (exact mixture), and of the TVD upper bound — with lower
variance than the naive ``log p(y) − log q(y)`` estimator, since every step sums over
the whole vocabulary. The risks are the paper's Table 3 quantities:
``R_llh = E_{y'~q}[−log p(y')]`` and ``R_cvg = E_{y~p}[−log q(y)]``.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from fdistill.divergences import IGNORE_INDEX, SampledSequences, f_divergence_loss, token_logprobs
from fdistill.errors import nonfinite_sampling
from fdistill.lm.data import score_completions
from fdistill.lm.sampling import prompt_batches, sample_batches, sampling_config
from fdistill.torch_utils import model_devices, seeded


@torch.no_grad()
def sequence_divergences(
    student,
    teacher,
    tokenizer,
    prompts: list,
    *,
    num_samples: int = 1,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    use_chat_template: bool = False,
    seed: int | None = 0,
    teacher_completions: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, float]:
    """Monte Carlo estimates of sequence-level divergences between teacher ``p`` and student ``q``.

    For each prompt, ``num_samples`` completions are drawn from each model by pure
    ancestral sampling (up to ``max_new_tokens``). Returns per-sequence means:

    - ``kl``: D_KL(p‖q) = E_{y~p} Σ_t KL(p_t‖q_t)
    - ``rkl``: D_KL(q‖p) = E_{y'~q} Σ_t KL(q_t‖p_t)
    - ``js``: ½E_p Σ_t KL(p_t‖m_t) + ½E_q Σ_t KL(q_t‖m_t), exact mixture (Eq. 12)
    - ``tvd_bound``: the f-DISTILL TVD objective (an upper bound on the sequence TVD)
    - ``r_llh``: E_{y'~q}[−log p(y')], ``r_cvg``: E_{y~p}[−log q(y)] (per sequence; the
      paper's Table 3 risks), and ``r_llh_token`` / ``r_cvg_token`` (per token)
    - ``student_sample_length`` / ``teacher_sample_length``: mean tokens per sample

    ``teacher_completions`` (from :func:`teacher_completions`, same prompts and batching)
    reuses one set of teacher samples when several students are compared.

    ``seed``: the samples are those drawn after ``torch.manual_seed(seed)``, drawn in a
    :func:`~fdistill.lm.sampling.seeded` block that leaves the caller's RNG state untouched;
    ``None`` draws from (and advances) torch's global RNG.
    """
    with _seeded_or_global(seed, student, teacher):
        return _sequence_divergences(
            student,
            teacher,
            tokenizer,
            prompts,
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            use_chat_template=use_chat_template,
            teacher_completions=teacher_completions,
        )


def _seeded_or_global(seed: int | None, *models):
    """A :func:`~fdistill.lm.sampling.seeded` block on the models' devices, or (``seed=None``) the global RNG as it is."""
    return nullcontext() if seed is None else seeded(seed, devices=model_devices(*models))


def _sequence_divergences(
    student,
    teacher,
    tokenizer,
    prompts,
    *,
    num_samples,
    max_new_tokens,
    batch_size,
    use_chat_template,
    teacher_completions,
):
    pad = tokenizer.pad_token_id
    expanded = [p for p in prompts for _ in range(num_samples)]
    common = dict(batch_size=batch_size, use_chat_template=use_chat_template)
    if teacher_completions is None:
        cfg_p = sampling_config(teacher, tokenizer, max_new_tokens=max_new_tokens)
        with nonfinite_sampling("teacher", "evaluation"):
            teacher_completions = [(i, m) for i, m, _ in sample_batches(teacher, tokenizer, expanded, cfg_p, **common)]
    cfg_q = sampling_config(student, tokenizer, max_new_tokens=max_new_tokens)
    with nonfinite_sampling("student", "evaluation"):
        student_completions = [(i, m) for i, m, _ in sample_batches(student, tokenizer, expanded, cfg_q, **common)]
    totals: dict[str, float] = {}
    tokens = {"student": 0, "teacher": 0}
    n = 0
    batches = prompt_batches(student, tokenizer, expanded, **common)
    for (pids, pmask), drawn_p, drawn_q in zip(batches, teacher_completions, student_completions):
        sides = {}
        for name, (ids, mask) in (("teacher", drawn_p), ("student", drawn_q)):
            ids, mask = ids.to(pids.device), mask.to(pids.device)
            s_logits, labels, _ = score_completions(student, pids, pmask, ids, mask, pad_token_id=pad)
            t_logits, _, _ = score_completions(teacher, pids, pmask, ids, mask, pad_token_id=pad)
            sides[name] = SampledSequences(s_logits, t_logits, labels)
        b = pids.shape[0]
        values = {
            "kl": f_divergence_loss("kl", teacher_samples=sides["teacher"]).loss,
            "rkl": f_divergence_loss("rkl", student_samples=sides["student"]).loss,
            "js": f_divergence_loss(
                "js", teacher_samples=sides["teacher"], student_samples=sides["student"], js_mixture="exact"
            ).loss,
            "tvd_bound": f_divergence_loss(
                "tvd", teacher_samples=sides["teacher"], student_samples=sides["student"]
            ).loss,
            "r_llh": -token_logprobs(sides["student"].teacher_logits, sides["student"].labels).sum(-1).mean(),
            "r_cvg": -token_logprobs(sides["teacher"].student_logits, sides["teacher"].labels).sum(-1).mean(),
        }
        for k, v in values.items():
            totals[k] = totals.get(k, 0.0) + v.item() * b
        tokens["student"] += (sides["student"].labels != IGNORE_INDEX).sum().item()
        tokens["teacher"] += (sides["teacher"].labels != IGNORE_INDEX).sum().item()
        n += b
    result = {k: v / n for k, v in totals.items()}
    result["r_llh_token"] = totals["r_llh"] / max(tokens["student"], 1)
    result["r_cvg_token"] = totals["r_cvg"] / max(tokens["teacher"], 1)
    result["student_sample_length"] = tokens["student"] / n
    result["teacher_sample_length"] = tokens["teacher"] / n
    return result


@torch.no_grad()
def teacher_completions(
    teacher,
    tokenizer,
    prompts: list,
    *,
    num_samples: int = 1,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    use_chat_template: bool = False,
    seed: int | None = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Teacher samples batched exactly as :func:`sequence_divergences` batches its prompts (to share between students).

    ``seed``: as in :func:`sequence_divergences` (drawn after ``torch.manual_seed(seed + 1)``; the caller's RNG
    untouched).
    """
    cfg = sampling_config(teacher, tokenizer, max_new_tokens=max_new_tokens)
    expanded = [p for p in prompts for _ in range(num_samples)]
    with nonfinite_sampling("teacher", "evaluation"), _seeded_or_global(None if seed is None else seed + 1, teacher):
        drawn = sample_batches(
            teacher, tokenizer, expanded, cfg, batch_size=batch_size, use_chat_template=use_chat_template
        )
    return [(ids, mask) for ids, mask, _ in drawn]
