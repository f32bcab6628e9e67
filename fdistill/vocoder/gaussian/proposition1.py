"""The expansion signal (§3.1) and Proposition 1: how often the reverse-KL gradient at a student sample points away
from the teacher's mode, analytic (Imhof) and by Monte Carlo.

Expansion signal (§3.1): g_x = ∇_x(log p_T(x) − log q_S(x)) at a student sample x = S(z), the student's parameters
held fixed — the negative gradient of the reverse-KL integrand with respect to the sample, i.e. the "error" factor
of the path derivative (Eq. 6). For Gaussians g_x = −Σ⁻¹(x − μ) + Σ_S⁻¹(x − b). The event (x − μ)ᵀg_x > 0 says the
gradient points away from the teacher's mode μ (Proposition 1 puts both distributions at 0: xᵀg_x > 0).

Proposition 1: for q_S = N(0, I) and p_T = N(0, Σ) with eigenvalues d_i², P(xᵀg_x > 0) = P(Σ_i ρ_i x_i² > 0) with
ρ_i = 1 − 1/d_i² — the paper's fraction A_{U∩ρ}/A_U of the unit sphere. `proposition1_probability` computes it
by Imhof's inversion of the characteristic function of the quadratic form (a generalised χ²); for any other student
N(b, AAᵀ) centred at μ, the d_i² are the eigenvalues of the relative covariance A⁻¹ΣA⁻ᵀ (the paper's footnote 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fdistill.errors import InputError

from .models import AffineGaussian, TriangularGaussian


def sample_gradient(student: AffineGaussian, teacher: AffineGaussian, x: torch.Tensor) -> torch.Tensor:
    """g_x = ∇_x(log p_T(x) − log q_S(x)) per row, the student's parameters held fixed (Eq. 6's error factor)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        gap = teacher.log_prob(x) - student.log_prob(x)
        (grad,) = torch.autograd.grad(gap.sum(), x)
    return grad


def expansion_signal(student: AffineGaussian, teacher: AffineGaussian, z: torch.Tensor) -> torch.Tensor:
    """The event (x − μ_T)ᵀg_x > 0 for student samples x = S(z): the gradient points away from the teacher's mode."""
    with torch.no_grad():
        x = student.sample(z)
    return ((x - teacher.mean) * sample_gradient(student, teacher, x)).sum(-1) > 0


def proposition1_probability(eigenvalues) -> float:
    """Proposition 1's P(xᵀg_x > 0) for q_S = N(0, I), p_T = N(0, Σ) from the eigenvalues d_i² of Σ.

    With ρ_i = 1 − 1/d_i² this is P(Q > 0) for the quadratic form Q = Σ_i ρ_i x_i², x ~ N(0, I). Imhof's formula
    (central case, threshold 0):

        P(Q > 0) = ½ + (1/π) ∫_0^∞ sin(½ Σ_i arctan(ρ_i u)) / (u · Π_i (1 + ρ_i² u²)^{1/4}) du,

    integrated with ``scipy.integrate.quad`` in t = log u, where the integrand sin θ / Π(…)^{1/4} is bounded by 1,
    smooth and decays exponentially at both ends; the interval is split at each scale t = −log|ρ_i| (eigenvalues
    spread over many decades make the integrand multi-scale). Exact cases: all ρ ≥ 0 (not all 0) gives 1, all ρ ≤ 0
    gives 0 (ρ_i = 0, d_i = 1, drops out). Accurate to ~1e-10 (checked against the closed forms for two weights,
    (2/π)·arctan√(ρ₁/|ρ₂|), and for ±1 weights, a Beta tail).

    Arguments:
        eigenvalues: the d_i² > 0 (any array-like).

    Example:
        >>> round(proposition1_probability([4.0, 0.25]), 6)  # ρ = (¾, −3): (2/π)·arctan(½)
        0.295167
    """
    from scipy import integrate

    d2 = np.asarray(eigenvalues, dtype=np.float64).ravel()
    if d2.size == 0 or not (d2 > 0).all():
        raise InputError(f"eigenvalues must be positive, got {d2}")
    rho = 1.0 - 1.0 / d2
    rho = rho[rho != 0]
    if rho.size == 0 or (rho < 0).all():
        return 0.0
    if (rho > 0).all():
        return 1.0
    rho = rho / np.abs(rho).max()  # P is scale-invariant

    def integrand(t: float) -> float:
        ru = rho * math.exp(t)
        return math.sin(0.5 * np.arctan(ru).sum()) * math.exp(-0.25 * np.log1p(ru * ru).sum())

    scales = np.sort(-np.log(np.abs(rho)))
    # below the first scale the integrand is ~ e^t, above the last at most ~ e^{-t/2}: e^-40 either way
    lo, hi = scales[0] - 40.0, scales[-1] + 80.0
    value, _ = integrate.quad(integrand, lo, hi, points=list(scales), limit=2000, epsabs=1e-13, epsrel=1e-12)
    return float(min(1.0, max(0.0, 0.5 + value / math.pi)))


def proposition1_monte_carlo(eigenvalues, samples: int, generator: torch.Generator) -> tuple[float, float]:
    """Monte Carlo estimate (and its standard error) of Proposition 1's probability through the real gradient.

    Builds p_T = N(0, ΛDΛᵀ) with a random rotation Λ and q_S = N(0, I), draws x ~ q_S and counts xᵀg_x > 0 with
    g_x from `sample_gradient` (autograd through both log-densities) — an estimate independent of the formula.
    """
    d2 = torch.as_tensor(np.asarray(eigenvalues, dtype=np.float64))
    dim = d2.shape[0]
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    covariance = (rotation * d2) @ rotation.T
    covariance = 0.5 * (covariance + covariance.T)
    teacher = TriangularGaussian.from_covariance(torch.zeros(dim, dtype=torch.float64), covariance)
    student = TriangularGaussian(dim).requires_grad_(False)
    hits = 0
    for start in range(0, samples, 65536):
        z = torch.randn(min(65536, samples - start), dim, generator=generator, dtype=torch.float64)
        hits += int(expansion_signal(student, teacher, z).sum())
    p = hits / samples
    return p, math.sqrt(max(p * (1 - p), 1e-300) / samples)
