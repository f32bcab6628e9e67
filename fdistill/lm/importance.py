"""Importance weights for reused (stale) student samples: the prefix ratios, their truncation and their statistics.

With ``steps_per_generation = k`` one generation serves k optimizer steps, with ``num_iterations = μ`` each step's
samples are trained on again at the μ − 1 steps after it, and with ``rollout_overlap`` step n+1's
samples are drawn while step n trains: the student samples a step scores were drawn by an older student ``q_old``
(the one of step ``policy_step``), not by the current ``q_θ``. This module gives the weights that make the stale
estimate estimate the fresh objective, and says how far their truncation moves it.

**Which weight.** The student side of every f-DISTILL objective (paper Eqs. 7, 8, 10 and Theorem 1; Appendix A,
Eqs. 14, 22, 37) is a sum over positions of an expectation over the sampled *prefix*,

    L(θ) = E_{y~q_θ} Σ_t D_t(y_<t) = Σ_t Σ_{y_<t} q_θ(y_<t) D_t(y_<t),

where ``D_t(y_<t)`` is the step divergence between the teacher's and the student's next-token distributions at that
prefix (the sum over ``Y_t`` is explicit, not sampled). ``q_θ(y_<t) = Π_{s<t} q_θ(y_s | y_<s)``, so for samples drawn
by ``q_old`` (with ``q_old(y_<t) > 0`` wherever ``q_θ(y_<t) > 0``, true for softmax policies without banned tokens)

    L(θ) = Σ_t Σ_{y_<t} q_old(y_<t) · w_t · D_t(y_<t) = E_{y~q_old} Σ_t w_t D_t(y_<t),
    w_t = q_θ(y_<t) / q_old(y_<t) = Π_{s<t} q_θ(y_s | y_<s) / q_old(y_s | y_<s),

the exclusive product (:func:`prefix_log_ratios`): the term at position t does not read the token drawn there, so
its own ratio would only add variance (it integrates to 1 given the prefix). A term that does read the sampled token
``y_t`` (an estimator of the form ``g_t(y_≤t)``, e.g. a single-sample ``log q(y_t)/p(y_t)``) needs the inclusive
product ``Π_{s≤t}`` (``inclusive=True``). Per objective in fdistill, every student-side term reads the prefix only:

- ``rkl``, ``tvd``, ``js`` with ``js_mixture="stepwise"``, ``engine``: full next-token sums at the prefix;
- ``js`` with ``js_mixture="exact"``: the mixture weight ``σ(logit β + log p(y_<t) − log q_θ(y_<t))`` (Eq. 12) reads
  the prefix only (exclusive sums), and uses the *current* ``q_θ`` — the objective being estimated is the fresh one;
- a top-k teacher (stored, served): its top k at position t is the teacher's next-token distribution at ``y_<t``;
  the tail bucket is a function of the same two distributions;
- ``kl`` has no student side (teacher samples come from a fixed teacher and are never stale).

The fused divergence (``fused_divergence``) never forms the student's logits that the numerator needs, so reuse runs
on materialised logits (``fused_divergence=True`` with reuse is refused; unset, it stays off). The sample metrics
(``student_entropy``, ``teacher_nll_of_student_samples``) describe the drawn samples and are not reweighted.

The weights carry no gradient (detached), like the sampled prefix itself (the paper's stop-gradient, §7 note 2):
``∇_θ E_old[Σ_t w_t D_t] = E_old[Σ_t w_t ∇D_t] = E_θ[Σ_t ∇D_t]``, the fresh path's gradient in expectation.

**What q means.** The expectation is over the distribution the samples are *drawn* from: the sampling policy
``π_θ = softmax(logits / student_sampling_temperature)`` (top-k/top-p filters are refused with reuse: their
support changes with θ). ``loss_temperature`` only shapes ``D_t`` and plays no part in the weights. The numerator
``log π_θ(y_s | y_<s)`` comes from the loss's own student forward (its logits, detached), the denominator from the
policy that drew the samples: in-process, a no-grad forward of the drawing student on its samples at generation time
(eval mode, as ``generate`` samples); from a vLLM server, the log-probabilities it returns with the samples (vLLM's
raw log-probabilities, i.e. temperature 1: the server path needs ``student_sampling_temperature=1``). With dropout
on, the loss forward is a noisy version of the eval-mode policy, so the numerator is too; the students fdistill
makes (Llama, dropout 0) have none.

**Truncation.** A product of ratios over a long prefix has a heavy tail. As in truncated importance sampling
(Ionides 2008, "Truncated importance sampling", JCGS 17(2)), IMPALA's clipped ``ρ̄`` (Espeholt et al. 2018,
arXiv:1802.01561, Eq. 1) and TIS for off-policy rollouts in LLM RL (Yao et al. 2025, "Your efficient RL framework
secretly brings you off-policy RL training", fengyao.notion.site/off-policy-rl, whose Qwen2.5-32B runs cap at 2), the
weight is truncated, ``w̄_t = min(w_t, C)`` with ``C = importance_weight_cap`` (default 2.0, TIS's value; ``inf`` =
untruncated). TIS truncates per-token ratios; here the ratio is a product over the prefix, which spreads more with
length — so the cap is the same, and what it cuts is logged (``rollout/clipped_fraction``) and bounded (below).
``C ≥ 1`` keeps a prefix the student has grown more likely at up to C times its weight, and never *raises* a weight
(IMPALA's ``ρ̄ = 1`` would cut every prefix that gained mass, a bias that grows with every step of staleness).

**Bias of truncation.** For ``D_t ≥ 0`` (every f-divergence term and ENGINE's energy are non-negative),

    L − L_C = Σ_t E_old[(w_t − min(w_t, C)) D_t] ≥ 0,

since ``w_t ≥ min(w_t, C)``: truncation only ever underestimates. If moreover ``D_t ≤ D_max``,

    L − L_C ≤ D_max Σ_t E_old[w_t − min(w_t, C)] = D_max Σ_t (1 − E_old[min(w_t, C)]),

because ``E_old[w_t] = Σ_{y_<t} q_θ(y_<t) = 1`` under the support condition above (after the end of a sequence the
prefix continues deterministically with padding under both policies: ratio 1, and ``D_t = 0`` there). The bound is
measurable: ``1 − E_old[min(w_t, C)]`` is the mass that truncation cuts, estimated by the mean of ``w_t − w̄_t``.
``D_max`` per kind (each per position, for any pair of next-token distributions, hence also for the coarse-grained
top-k pairs and any ``loss_temperature``): ``tvd`` ``½ Σ_v |q − p| ≤ 1``; ``js`` with the step-wise mixture
``m = βp + (1−β)q ≥ (1−β)q`` gives ``KL(q ‖ m) ≤ log(1/(1−β))`` (``log 2`` at β = ½). Unbounded: ``rkl``
(``q log(q/p)`` as ``p → 0``), ``engine`` (``−log p``) and the exact JS mixture (``KL(q ‖ m_t) ≤ −log(1 − w_t)``,
``w_t → 1`` on prefixes the teacher prefers): for them only the sign of the bias holds.

**Training on the same samples again** (``num_iterations``). The passes after the first score the same samples
with the same weights; their denominator is the first pass's own loss forward (detached), which *is* the drawing
policy there (no optimizer step between the draw and that forward). One thing the derivation above assumes does
not hold for them: θ has since moved along gradients of these very samples, so θ is not independent of them, and
the weighted estimate at the later passes is not exactly unbiased for ``L(θ)`` — the bias of every scheme that
takes several optimizer steps on one batch of rollouts (PPO's epochs, Schulman et al. 2017; GRPO's ``μ``, Shao et
al. 2024). It vanishes as the learning rate does; measure it at your settings (``scripts/bench_rollouts.py
--quality``) rather than assume it away.

**Denominators of the reduction.** The loss divides by the step's sample count as in the fresh path (sequences, or
tokens with ``loss_reduction="token"``). With the sequence reduction the corrected estimate is unbiased for L; the
token reduction was a ratio estimator already and divides by the drawn samples' token count.

The statistics logged per step (:func:`weight_stats`): ``rollout/ess``, Kish's effective sample size fraction
``(Σ w̄)² / (N Σ w̄²)`` over the scored positions (1 = all weights equal; Kong 1992, Liu 1996),
``rollout/clipped_fraction``, the fraction of them truncated, and ``rollout/staleness``, optimizer steps between the
drawing policy and the current one.

Why in-house: the ratios are three tensor lines, but no library has the per-position prefix weights of a
step-wise decomposition, nor their fresh-sample shortcut (weight exactly 1, no ratio formed: bit-identical losses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fdistill.errors import InputError

DEFAULT_CAP = 2.0  # TIS's truncation in Yao et al. 2025's runs; see the module docstring


def check_cap(cap: float) -> None:
    """An importance-weight cap is at least 1 (a smaller one would down-weight every fresh-looking prefix) or inf."""
    if not (cap >= 1.0):  # also refuses NaN
        raise InputError(
            f"importance_weight_cap must be >= 1 (or float('inf') for untruncated weights), got {cap!r}; "
            f"{DEFAULT_CAP} is truncated importance sampling's usual cap."
        )


def prefix_log_ratios(current: Tensor, old: Tensor, mask: Tensor, *, inclusive: bool = False) -> Tensor:
    """``log w_t = Σ_{s<t} (log q_θ(y_s|y_<s) − log q_old(y_s|y_<s))`` over the unmasked positions ``s``, ``(B, T)``.

    ``inclusive=True`` sums ``s ≤ t``. A token the old policy gave probability 0 (``old = -inf``: it cannot have
    drawn it) makes every later ratio 0 (``-inf``), never NaN; so does a token the current policy bans.

    Arguments:
        current: ``(B, T)`` the current student's log-probabilities of the sampled tokens (any float dtype).
        old: ``(B, T)`` the drawing policy's, aligned.
        mask: ``(B, T)`` True at the sampled tokens (completion positions).
    """
    if current.shape != old.shape or current.shape != mask.shape:
        raise InputError(
            f"current {tuple(current.shape)}, old {tuple(old.shape)} log-probabilities and mask {tuple(mask.shape)} "
            "must have one shape (B, T): one value per sampled token."
        )
    dtype = torch.promote_types(torch.promote_types(current.dtype, old.dtype), torch.float32)
    current, old = current.detach().to(dtype), old.to(device=current.device, dtype=dtype)
    impossible = torch.isneginf(old) | torch.isneginf(current)
    diff = torch.where(impossible, torch.full_like(current, -math.inf), current - old)
    diff = torch.where(mask.bool(), diff, torch.zeros_like(diff))
    total = diff.cumsum(-1)  # inclusive; -inf stays -inf (no -inf - -inf)
    if inclusive:
        return total
    return torch.cat([torch.zeros_like(total[:, :1]), total[:, :-1]], -1)


def prefix_weights(
    current: Tensor, old: Tensor, mask: Tensor, *, cap: float = DEFAULT_CAP, inclusive: bool = False
) -> Tensor:
    """Truncated prefix importance weights ``w̄_t = min(Π_{s<t} q_θ/q_old, cap)``, ``(B, T)``, detached, exactly 0 at
    masked positions (see the module docstring; ``cap=inf`` for the untruncated weights)."""
    check_cap(cap)
    log_w = prefix_log_ratios(current, old, mask, inclusive=inclusive)
    log_w = log_w.clamp_max(math.log(cap)) if math.isfinite(cap) else log_w  # min(w, C) without overflow
    return torch.where(mask.bool(), log_w.exp(), torch.zeros_like(log_w))


@dataclass
class WeightStats:
    """What one set of weights looked like: Kish's ESS fraction, the fraction truncated, the number of positions."""

    ess: float
    clipped_fraction: float
    positions: int


@torch.no_grad()
def weight_stats(current: Tensor, old: Tensor, mask: Tensor, *, cap: float) -> WeightStats:
    """``ess = (Σ w̄)² / (N Σ w̄²)`` and the fraction of the N unmasked positions with ``w_t > cap``."""
    mask = mask.bool()
    log_w = prefix_log_ratios(current, old, mask)[mask]
    n = int(log_w.numel())
    if n == 0:
        return WeightStats(1.0, 0.0, 0)
    clipped = float((log_w > math.log(cap)).float().mean()) if math.isfinite(cap) else 0.0
    w = log_w.clamp_max(math.log(cap)).exp() if math.isfinite(cap) else log_w.exp()
    w = w.double()
    square = float((w * w).sum())
    ess = float(w.sum() ** 2 / (n * square)) if square > 0 else 0.0
    return WeightStats(ess, clipped, n)


def sampling_logprobs(logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """``log softmax(logits / temperature)[labels]`` per position, the sampling policy's log-probabilities of the drawn
    tokens (0 where ``labels`` is ``IGNORE_INDEX``); detached. One definition for numerator and denominator."""
    from fdistill.divergences import token_logprobs

    return token_logprobs(logits.detach(), labels, temperature=temperature)


def stale_sample_weights(
    logits: Tensor, labels: Tensor, policy_logprobs: Tensor, *, temperature: float, cap: float
) -> tuple[Tensor, WeightStats]:
    """The weights of one micro-batch of stale samples and their statistics, from the loss forward's ``(B, C, V)``
    student ``logits`` (the numerator, at the sampling ``temperature``), the ``(B, C)`` ``labels`` and the drawing
    policy's ``(B, C')`` log-probabilities of the tokens (right-padded to ``C`` when the scored sets are longer)."""
    from fdistill.divergences import IGNORE_INDEX

    current = sampling_logprobs(logits, labels, temperature)
    old = torch.nn.functional.pad(policy_logprobs, (0, labels.shape[1] - policy_logprobs.shape[1]))
    mask = labels != IGNORE_INDEX
    return prefix_weights(current, old, mask, cap=cap), weight_stats(current, old, mask, cap=cap)
