"""Distillation losses for an autoregressive Gaussian teacher T and a parallel flow student S (z → x).

    reverse KL (Parallel WaveNet)  E_z[ log q_S(S(z)) − log p_T(S(z)) ]      Monte Carlo, z ~ N(0, I)
      + power loss                 ‖φ(S(z)) − φ(y)‖²,  φ = power per frequency averaged over time, y real audio
    ClariNet                       Σ_t KL(N(μ^S_t, σ^S_t²) ‖ N(μ^T_t, σ^T_t²)) with log σ clamped at −6,
                                   + 4·(log σ^S_t − log σ^T_t)² + STFT magnitude loss ‖|STFT S(z)| − |STFT y|‖²
    z-reconstruction               d(z, T(S(z)))
    x-reconstruction               d(x, S(T(x) + ε)),  x real audio, ε ~ N(0, noise²) (noise injection)
    oracle prediction              d(T⁻¹(z), S(z)),    (z, T⁻¹(z)) teacher rollouts

``d`` is the mean squared (``l2``) or absolute (``l1``) difference per sample. Every function returns a scalar
averaged over batch and time so weights are comparable across clip lengths.

Reference: Huang et al., "Probability distillation: a caveat and alternatives" (UAI 2019), §3–4; Ping et al.,
"ClariNet" (ICLR 2019), §3.2; van den Oord et al., "Parallel WaveNet" (ICML 2018), §3.
"""

from __future__ import annotations

import torch

from fdistill.flows.losses import latent_distance

from .speech import average_power_spectrum, stft_magnitude
from .wavenet import gaussian_log_prob

CLARINET_LOG_STD_FLOOR = -6.0
CLARINET_REGULARISER = 4.0


def distance(a: torch.Tensor, b: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Mean per-sample ``(a − b)²`` (l2) or ``|a − b|`` (l1): `fdistill.flows.losses.latent_distance`, l2 default."""
    return latent_distance(a, b, kind)


def reverse_kl(
    z: torch.Tensor,
    student_log_std: torch.Tensor,
    x: torch.Tensor,
    teacher_mean: torch.Tensor,
    teacher_log_std: torch.Tensor,
) -> torch.Tensor:
    """Monte Carlo ``log q_S(x) − log p_T(x)`` per sample for ``x = S(z)``, teacher conditionals on x's own past."""
    log_q = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z)) - student_log_std
    return (log_q - gaussian_log_prob(x, teacher_mean, teacher_log_std)).mean()


def power_loss(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Parallel WaveNet's power loss ``‖φ(x) − φ(y)‖²`` (mean over batch and frequency bins)."""
    return (average_power_spectrum(x) - average_power_spectrum(real)).pow(2).mean()


def stepwise_gaussian_kl(mean_q, log_std_q, mean_p, log_std_p) -> torch.Tensor:
    """Per-step (elementwise) closed-form ``KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²))``; full covariances: `gaussian.gaussian_kl`."""
    var_ratio = torch.exp(2 * (log_std_q - log_std_p))
    return log_std_p - log_std_q + 0.5 * (var_ratio + ((mean_q - mean_p) * torch.exp(-log_std_p)) ** 2) - 0.5


def clarinet_kl(
    mean_q,
    log_std_q,
    mean_p,
    log_std_p,
    floor: float = CLARINET_LOG_STD_FLOOR,
    regulariser: float = CLARINET_REGULARISER,
) -> torch.Tensor:
    """ClariNet's regularised per-step KL: log σ clamped at ``floor`` plus ``regulariser·(log σ_q − log σ_p)²``."""
    log_std_q, log_std_p = log_std_q.clamp(min=floor), log_std_p.clamp(min=floor)
    kl = stepwise_gaussian_kl(mean_q, log_std_q, mean_p, log_std_p)
    return (kl + regulariser * (log_std_q - log_std_p) ** 2).mean()


def stft_magnitude_loss(x: torch.Tensor, real: torch.Tensor, n_fft: int = 256, hop: int = 64) -> torch.Tensor:
    """ClariNet's spectrogram loss: mean squared difference of STFT magnitudes."""
    return (stft_magnitude(x, n_fft, hop) - stft_magnitude(real, n_fft, hop)).pow(2).mean()
