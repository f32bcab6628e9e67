"""Deterministic DDIM, the transition map every method here is built on, and the progressive-distillation target
that inverts it (lecture 09, "Progressive distillation starts from a DDIM map"; Song et al. 2021; Salimans & Ho 2022).

    DDIM_{s→t}(x_s; x̂₀) = α_t·x̂₀ + σ_t·(x_s − α_s·x̂₀)/σ_s                          (η = 0)

    progressive_target(x_s, x_t) = x̃ = (σ_s·x_t − σ_t·x_s)/(α_t·σ_s − α_s·σ_t),   so that DDIM_{s→t}(x_s; x̃) = x_t

(the lecture writes β for σ). Both are affine in their tensor arguments and take α, σ broadcastable per sample.
Why in-house: diffusers' `DDIMScheduler.step` takes one scalar timestep per call and derives the previous one
from a "leading" spacing; these two lines with per-sample α, σ are the definition the losses and tests need.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def ddim_step(x_s: torch.Tensor, x0_hat: torch.Tensor, alpha_s, sigma_s, alpha_t, sigma_t) -> torch.Tensor:
    """One deterministic DDIM step ``x_t = α_t·x̂₀ + σ_t·(x_s − α_s·x̂₀)/σ_s`` (σ_s > 0).

    Example (the exact denoiser of a point mass at 3 lands on it from any x_s):
        >>> x_s = torch.tensor([5.0])
        >>> ddim_step(x_s, torch.tensor([3.0]), 0.6, 0.8, 1.0, 0.0)
        tensor([3.])
    """
    return alpha_t * x0_hat + sigma_t * (x_s - alpha_s * x0_hat) / sigma_s


def progressive_target(x_s: torch.Tensor, x_t: torch.Tensor, alpha_s, sigma_s, alpha_t, sigma_t) -> torch.Tensor:
    """The x̂₀ that makes one DDIM step s → t land on ``x_t``: ``(σ_s·x_t − σ_t·x_s)/(α_t·σ_s − α_s·σ_t)``.

    Requires ``t`` less noisy than ``s`` (``α_t/σ_t > α_s/σ_s``, so the denominator is positive).
    """
    return (sigma_s * x_t - sigma_t * x_s) / (alpha_t * sigma_s - alpha_s * sigma_t)


def ddim_sample(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_start: torch.Tensor,
    schedule,
    steps: int | None = None,
    pairs: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Run DDIM from ``x_start`` (noise at ``T−1``) to the data along the K-step trailing grid (or given ``pairs``).

    ``denoise(x, t)`` returns x̂₀ for a batch ``x`` at integer times ``t`` ``[B]``; it is called once per step
    (the network evaluations, NFE, are ``steps`` — twice that for a two-call guided teacher inside ``denoise``).
    """
    pairs = pairs if pairs is not None else schedule.step_pairs(steps)
    x = x_start
    batch = x.shape[0]
    for s, t in pairs:
        t_s = torch.full((batch,), s, dtype=torch.long)
        alpha_s, sigma_s = schedule.alpha_sigma(t_s, like=x)
        alpha_t, sigma_t = schedule.alpha_sigma(torch.full((batch,), t, dtype=torch.long), like=x)
        x = ddim_step(x, denoise(x, t_s), alpha_s, sigma_s, alpha_t, sigma_t)
    return x
