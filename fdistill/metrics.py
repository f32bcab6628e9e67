"""Distillation metrics: Monte Carlo sequence-level divergences and the paper's likelihood/coverage risks.

Estimates use the step-wise decomposition itself (Theorem 1 of f-DISTILL): the mean
over sampled sequences of the summed per-step terms is an unbiased estimate of the
sequence-level KL, RKL and JS (exact mixture), and of the TVD upper bound — with lower
variance than the naive ``log p(y) − log q(y)`` estimator, since every step sums over
the whole vocabulary. The risks are the paper's Table 3 quantities:
``R_llh = E_{y'~q}[−log p(y')]`` and ``R_cvg = E_{y~p}[−log q(y)]``.
"""

from __future__ import annotations

import torch

from fdistill.data import DistillCollator, scoring_inputs
from fdistill.divergences import SampledSequences, f_divergence_loss, token_logprobs
from fdistill.sampling import _unwrap, sample_completions, sampling_config


@torch.no_grad()
def _score(model, prompt_ids, prompt_mask, ids, mask, pad_id):
    cfg = _unwrap(model).config
    inputs = scoring_inputs(
        prompt_ids,
        prompt_mask,
        ids,
        mask,
        is_encoder_decoder=bool(cfg.is_encoder_decoder),
        pad_token_id=pad_id,
        decoder_start_token_id=getattr(cfg, "decoder_start_token_id", None),
    )
    return inputs.logits(model(**inputs.model_kwargs, use_cache=False)), inputs.labels


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
    """
    if seed is not None:
        torch.manual_seed(seed)
    is_enc_dec = bool(_unwrap(student).config.is_encoder_decoder)
    collator = DistillCollator(tokenizer, is_encoder_decoder=is_enc_dec, use_chat_template=use_chat_template)
    cfg_q = sampling_config(student, tokenizer, max_new_tokens=max_new_tokens)
    cfg_p = sampling_config(teacher, tokenizer, max_new_tokens=max_new_tokens)
    device = next(student.parameters()).device
    pad = tokenizer.pad_token_id
    totals: dict[str, float] = {}
    tokens = {"student": 0, "teacher": 0}
    n = 0
    expanded = [p for p in prompts for _ in range(num_samples)]
    for start in range(0, len(expanded), batch_size):
        batch = collator([{"prompt": p} for p in expanded[start : start + batch_size]])
        pids, pmask = batch["prompt_ids"].to(device), batch["prompt_mask"].to(device)
        sides = {}
        for name, model, cfg in (("teacher", teacher, cfg_p), ("student", student, cfg_q)):
            if name == "teacher" and teacher_completions is not None:
                ids, mask = (x.to(device) for x in teacher_completions[start // batch_size])
            else:
                ids, mask = sample_completions(model, pids, pmask, cfg)
            s_logits, labels = _score(student, pids, pmask, ids, mask, pad)
            t_logits, _ = _score(teacher, pids, pmask, ids, mask, pad)
            sides[name] = SampledSequences(s_logits, t_logits, labels)
        b = pids.shape[0]
        values = {
            "kl": f_divergence_loss("kl", teacher_samples=sides["teacher"]).loss,
            "rkl": f_divergence_loss("rkl", student_samples=sides["student"]).loss,
            "js": f_divergence_loss(
                "js", teacher_samples=sides["teacher"], student_samples=sides["student"], js_mixture="exact"
            ).loss,
            "tvd_bound": f_divergence_loss("tvd", teacher_samples=sides["teacher"], student_samples=sides["student"]).loss,
            "r_llh": -token_logprobs(sides["student"].teacher_logits, sides["student"].labels).sum(-1).mean(),
            "r_cvg": -token_logprobs(sides["teacher"].student_logits, sides["teacher"].labels).sum(-1).mean(),
        }
        for k, v in values.items():
            totals[k] = totals.get(k, 0.0) + v.item() * b
        tokens["student"] += (sides["student"].labels != -100).sum().item()
        tokens["teacher"] += (sides["teacher"].labels != -100).sum().item()
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
    """Teacher samples batched exactly as :func:`sequence_divergences` batches its prompts (to share between students)."""
    if seed is not None:
        torch.manual_seed(seed + 1)
    collator = DistillCollator(
        tokenizer, is_encoder_decoder=bool(_unwrap(teacher).config.is_encoder_decoder), use_chat_template=use_chat_template
    )
    cfg = sampling_config(teacher, tokenizer, max_new_tokens=max_new_tokens)
    device = next(teacher.parameters()).device
    expanded = [p for p in prompts for _ in range(num_samples)]
    out = []
    for start in range(0, len(expanded), batch_size):
        batch = collator([{"prompt": p} for p in expanded[start : start + batch_size]])
        out.append(sample_completions(teacher, batch["prompt_ids"].to(device), batch["prompt_mask"].to(device), cfg))
    return out
