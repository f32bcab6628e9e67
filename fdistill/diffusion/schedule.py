"""The noise schedule of every diffusion model here: diffusers' `DDPMScheduler` betas/``alphas_cumprod``, read per
sample as ``(α_t, σ_t) = (√ᾱ_t, √(1 − ᾱ_t))``, and the "trailing" grids of K sampling steps.

Conventions (one for the whole module):

- Discrete training times ``t ∈ {0, …, T−1}`` (T = ``num_train_timesteps``); the index ``t = −1`` (`CLEAN`) is the
  data itself, ``(α, σ) = (1, 0)``: every sampler and every PD target ends there.
- ``x_t = α_t·x_0 + σ_t·ε`` with ``α_t² + σ_t² = 1`` (variance preserving); log-SNR ``λ_t = log(α_t/σ_t)``.
- Default schedule: cosine (``"squaredcos_cap_v2"``) rescaled to zero terminal SNR (Lin et al. 2024, "Common
  diffusion noise schedules and sample steps are flawed"; diffusers' ``rescale_betas_zero_snr=True``), so that
  ``α_{T−1} = 0``: the first step of every sampler starts from pure noise, exactly as the one-step students are used.
  That needs a network whose output stays meaningful at ``α = 0`` — hence v-prediction everywhere (`models`).
- Grids are "trailing" (``t_k = round(T − k·T/K) − 1``, k = 0..K−1): they start at ``T − 1`` for every K (the
  "leading" spacing never visits ``t = T − 1`` at few steps), and the K-step grid is every other point of the
  2K-step grid whenever ``T/K`` is a multiple of ½-steps — which is what progressive distillation needs
  (`trailing_timesteps` checks it).

Why in-house: diffusers' schedulers take one scalar timestep per ``step`` call, and ``DDIMScheduler``'s
``prev_timestep = t − T/K`` is wrong for trailing spacing; the losses need α, σ per sample of a batch, so we index
``alphas_cumprod`` directly (the schedule itself is diffusers').
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from fdistill.errors import InputError

CLEAN = -1  # the time index of the data itself: α = 1, σ = 0


class NoiseSchedule:
    """Per-sample α_t, σ_t from diffusers' ``DDPMScheduler(...).alphas_cumprod``.

    Arguments:
        num_train_timesteps: T, the number of discrete noise levels.
        beta_schedule: any of diffusers' (``"squaredcos_cap_v2"``, ``"linear"``, …).
        zero_terminal_snr: rescale the betas so that ``ᾱ_{T−1} = 0`` (Lin et al. 2024).

    Example:
        >>> s = NoiseSchedule(1000)
        >>> a, sg = s.alpha_sigma(torch.tensor([999, -1]))
        >>> a.tolist(), sg.tolist()
        ([0.0, 1.0], [1.0, 0.0])
    """

    def __init__(
        self, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2", zero_terminal_snr: bool = True
    ):
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            rescale_betas_zero_snr=zero_terminal_snr,
        )
        self.num_train_timesteps = num_train_timesteps
        self.settings = {
            "num_train_timesteps": num_train_timesteps,
            "beta_schedule": beta_schedule,
            "zero_terminal_snr": zero_terminal_snr,
        }
        cumprod = scheduler.alphas_cumprod.double().clamp(0, 1)
        # index t + 1: position 0 is the clean data (ᾱ = 1), positions 1..T are diffusers' t = 0..T−1
        self.alphas_cumprod = torch.cat([torch.ones(1, dtype=torch.float64), cumprod])

    def alpha_sigma(self, t: torch.Tensor, like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(α_t, σ_t)`` for integer times ``t`` ``[B]`` (``−1`` = clean), shaped to broadcast against ``like``
        ``[B, ...]`` when given (``[B, 1, …, 1]``), in ``like``'s dtype (float32 otherwise)."""
        t = torch.as_tensor(t, dtype=torch.long)
        abar = self.alphas_cumprod[t + 1]
        alpha, sigma = abar.sqrt(), (1 - abar).clamp(min=0).sqrt()
        dtype = like.dtype if like is not None else torch.float32
        if like is not None:
            shape = (-1,) + (1,) * (like.dim() - 1)
            alpha, sigma = alpha.reshape(shape), sigma.reshape(shape)
        return alpha.to(dtype), sigma.to(dtype)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """``α_t²/σ_t²`` (∞ at the clean index, 0 at ``T−1`` with zero terminal SNR)."""
        alpha, sigma = self.alpha_sigma(t)
        return alpha.double() ** 2 / (sigma.double() ** 2)

    def trailing_timesteps(self, steps: int) -> list[int]:
        """The K-step trailing grid ``[t_0 = T−1 > t_1 > … > t_{K−1}]`` (the sampler then steps to `CLEAN`)."""
        if steps < 1 or steps > self.num_train_timesteps:
            raise InputError(f"steps={steps} must be between 1 and num_train_timesteps={self.num_train_timesteps}")
        grid = np.round(np.arange(self.num_train_timesteps, 0, -self.num_train_timesteps / steps)).astype(int) - 1
        return [int(t) for t in grid]

    def step_pairs(self, steps: int) -> list[tuple[int, int]]:
        """``[(t_k, t_{k+1})]`` of the K-step grid, the last one ending at `CLEAN`."""
        grid = self.trailing_timesteps(steps) + [CLEAN]
        return list(itertools.pairwise(grid))
