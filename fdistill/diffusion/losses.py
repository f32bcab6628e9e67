"""Every loss of the diffusion module, once, as functions of tensors (lecture 09; references on each function).

Shapes: samples ``[B, ...]``; α, σ and weights broadcastable per sample (``[B, 1, …]`` from
`NoiseSchedule.alpha_sigma(t, like=x)`). Each loss sums squared errors over a sample's dimensions and averages over
the batch: ``mean_b w_b·‖a_b − b_b‖²``.

Parameterisation (v-prediction, Salimans & Ho 2022, used by every network here): ``v = α·ε − σ·x₀``, so

    x̂₀ = α·x_t − σ·v̂,    ε̂ = σ·x_t + α·v̂,    score ŝ = −ε̂/σ = −(x_t − α·x̂₀)/σ².

v stays well defined at ``α = 0`` (zero terminal SNR), where an ε-network's x̂₀ = (x_t − σ·ε̂)/α is not.
"""

from __future__ import annotations

import torch

from fdistill.errors import InputError


def _sum_per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


def _per_sample(weight, batch: int, like: torch.Tensor) -> torch.Tensor:
    if weight is None:
        return torch.ones(batch, dtype=like.dtype, device=like.device)
    return torch.as_tensor(weight, dtype=like.dtype, device=like.device).reshape(-1).expand(batch)


def x0_from_v(x_t, v, alpha, sigma):
    """``x̂₀ = α·x_t − σ·v̂``."""
    return alpha * x_t - sigma * v


def eps_from_v(x_t, v, alpha, sigma):
    """``ε̂ = σ·x_t + α·v̂``."""
    return sigma * x_t + alpha * v


def v_target(x0, eps, alpha, sigma):
    """``v = α·ε − σ·x₀``, the regression target of a v-network."""
    return alpha * eps - sigma * x0


def score_from_x0(x_t, x0_hat, alpha, sigma):
    """Tweedie's relation read backwards: ``∇ log p_t(x_t) ≈ −(x_t − α·x̂₀)/σ²`` (σ > 0)."""
    return -(x_t - alpha * x0_hat) / sigma**2


def denoising_loss(v_pred, x0, eps, alpha, sigma, weight=None):
    """The training loss of teachers and of the VSD/DMD "fake" network: ``mean w·‖v̂ − (α·ε − σ·x₀)‖²``.

    Since ``x̂₀ − x₀ = −σ·(v̂ − v)`` and the DSM residual is ``α·(x̂₀ − x₀)/σ²``, this is `dsm_loss` with the
    per-time weight ``σ²/α²`` (Salimans & Ho 2022's "SNR+1" weighting of the x₀ error): same minimiser, bounded
    at both ends of the schedule.
    """
    per = _sum_per_sample((v_pred - v_target(x0, eps, alpha, sigma)) ** 2)
    return (_per_sample(weight, len(per), per) * per).mean()


def dsm_loss(score, x_t, x0, alpha, sigma, weight=None):
    """Denoising score matching (lecture: "Bilevel training"): ``mean w·‖ŝ(x_t) + (x_t − α·x₀)/σ²‖²``.

    Its minimiser over functions of ``x_t`` is the score of the noisy marginal ``∇ log p_t`` (Vincent 2011).
    """
    per = _sum_per_sample((score + (x_t - alpha * x0) / sigma**2) ** 2)
    return (_per_sample(weight, len(per), per) * per).mean()


def kd_loss(student_x0, teacher_x0):
    """Knowledge distillation (Luhman & Luhman 2021; lecture "KD and the oracle objective"):
    ``mean ‖G_θ(x₁) − Solver°_{1→0}(x₁)‖²`` with the teacher's many-step rollout from the same noise ``x₁``.
    Also DMD's regression loss on the offline (noise → teacher output) pairs (Yin et al. 2024, with ℓ2 for LPIPS).
    """
    return _sum_per_sample((student_x0 - teacher_x0) ** 2).mean()


def pd_weight(alpha, sigma, kind: str = "truncated_snr"):
    """Per-sample weight of the x₀-space PD loss (Salimans & Ho 2022, §4): ``"truncated_snr"`` = ``max(α²/σ², 1)``
    (what we use), ``"snr_plus_one"`` = ``α²/σ² + 1``, or ``"constant"`` = 1. ``[B, 1…]`` in, ``[B]`` out."""
    alpha, sigma = torch.as_tensor(alpha).reshape(-1), torch.as_tensor(sigma).reshape(-1)
    snr = alpha**2 / sigma**2
    if kind == "truncated_snr":
        return snr.clamp(min=1.0)
    if kind == "snr_plus_one":
        return snr + 1.0
    if kind == "constant":
        return torch.ones_like(snr)
    raise InputError(f"unknown PD weighting {kind!r}; choose truncated_snr, snr_plus_one or constant")


def pd_loss(student_x0, x_s, x_t_teacher, alpha_s, sigma_s, alpha_t, sigma_t, weight=None):
    """Progressive distillation (Salimans & Ho 2022; lecture "PD objective"): ``mean w(λ_s)·‖f_θ(x_s, s) − x̃‖²``,
    ``x̃ = progressive_target(x_s, x_t_teacher, …)`` where ``x_t_teacher`` is two teacher DDIM steps s → u → t."""
    from .ddim import progressive_target

    target = progressive_target(x_s, x_t_teacher, alpha_s, sigma_s, alpha_t, sigma_t).detach()
    per = _sum_per_sample((student_x0 - target) ** 2)
    return (_per_sample(weight, len(per), per) * per).mean()


def vsd_direction(score_fake, score_teacher, alpha, weight):
    """The VSD per-sample gradient w.r.t. the generator's output (lecture, "VSD gradient"; Wang et al. 2023,
    Yin et al. 2024): ``ω(t)·α_t·(s_fake(x̂_t) − s_teacher(x̂_t))``. ``weight`` is ω(t), broadcastable."""
    return weight * alpha * (score_fake - score_teacher)


def dmd_direction(x0_fake, x0_teacher, x0_generated):
    """DMD's normalised direction (Yin et al. 2024, eq. 8): ``(x̂₀_fake − x̂₀_teacher)/mean|x̂₀_gen − x̂₀_teacher|``.

    It is `vsd_direction` with ``ω(t) = σ_t²/(α_t²·mean|x̂₀_gen − x̂₀_teacher|)`` (scores as `score_from_x0`),
    written in x̂₀ so that no ``1/σ²`` or ``1/α`` is ever formed. The normaliser is per sample and not
    differentiated.
    """
    scale = (x0_generated - x0_teacher).abs().flatten(1).mean(1).clamp(min=1e-8)
    scale = scale.reshape((-1,) + (1,) * (x0_fake.dim() - 1))
    return ((x0_fake - x0_teacher) / scale).detach()


def vsd_generator_loss(x0_generated, direction):
    """A surrogate whose gradient w.r.t. the generator's parameters is ``mean_b directionᵀ ∂G_θ(z_b)/∂θ``:
    ``½·mean ‖x̂₀ − sg(x̂₀ − direction)‖²`` (stop-gradient trick of DreamFusion/VSD/DMD). Its value is
    ``½·mean ‖direction‖²``, zero exactly when the fake and teacher scores agree."""
    target = (x0_generated - direction).detach()
    return 0.5 * _sum_per_sample((x0_generated - target) ** 2).mean()


def guided_prediction(cond, uncond, guidance_weight):
    """Classifier-free guidance (Ho & Salimans 2022): ``(1 + w)·cond − w·uncond`` (any linear parameterisation:
    v, x̂₀ or ε; w = 0 is the conditional model). ``guidance_weight`` broadcastable per sample."""
    return cond + guidance_weight * (cond - uncond)


def guidance_loss(student, cond, uncond, guidance_weight):
    """Guidance distillation, stage 1 (Meng et al. 2023; lecture "Classifier-free guidance"): a one-call student
    taking w as input matches the two-call guided teacher, ``mean ‖f_θ(x_t, c, w) − guided_prediction‖²``."""
    target = guided_prediction(cond, uncond, guidance_weight).detach()
    return _sum_per_sample((student - target) ** 2).mean()
