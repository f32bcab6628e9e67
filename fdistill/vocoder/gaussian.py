"""The paper's Gaussian study of probability distillation: a Gaussian teacher, an affine Gaussian student,
distillation by reverse KL, z-reconstruction and x-reconstruction, the expansion signal, Proposition 1, and the study
behind ``fdistill vocoder gaussian`` (Figures 2 and 3 of the paper and a check of Proposition 1).

Teacher: p_T = N(μ, Σ), Σ = RRᵀ, μ = 2·1, R with standard normal entries (paper §3.2). Both teacher and student are
affine maps of z ~ N(0, I), x = b + Az (`AffineGaussian`), so log p(x) = log N(A⁻¹(x − b); 0, I) − log|det A|. The
study offers two parameterisations of the same teacher distribution (``parameterisation=``):

    "triangular" (default)  teacher  T⁻¹(z) = μ + Cz,   T(x) = C⁻¹(x − μ),   C = chol(Σ) lower-triangular
                            student  S(z) = b + Lz,      L = strict_tril(W) + diag(exp s),  log|det L| = Σ_t s_t
    "paper"                 teacher  T⁻¹(z) = μ + Rz,   T(x) = R⁻¹(x − μ),   R the drawn matrix itself
                            student  S(z) = b + Wz,      W a full D×D matrix,               log|det W| by slogdet

"triangular" reads the teacher as the autoregressive model it stands for (a WaveNet with Gaussian conditionals,
x_t = μ_t(x_<t) + σ_t·z_t, whose "inverse" T is computed in parallel by teacher forcing) and the student as an affine
IAF (Eq. 3): x_t depends on z_≤t only, log q_S(S(z)) = log N(z; 0, I) − Σ_t s_t (Eqs. 4–5), S⁻¹ one triangular
solve. "paper" is §3.2's literal "x ← µ + R·z" for both models: μ + Rz and μ + Cz draw the same distribution
(Rz = C·(C⁻¹R)z with C⁻¹R orthogonal), but the maps differ, so the z- and x-reconstruction targets (which compare
maps, not distributions) differ, and the full student is no IAF (its log-determinant costs O(D³)). Both students
start at N(0, I) (b = 0, L = W = I); each can represent its teacher's map exactly.

    reverse KL        E_z[ log q_S(S(z)) − log p_T(S(z)) ]      z ~ N(0, I), reparameterised Monte Carlo (Eq. 2)
    z-reconstruction  d(z, T(S(z)))                              z ~ N(0, I)                         (§4, item 1)
    x-reconstruction  d(x, S(T(x)))                              x ~ p_T (teacher samples)           (§4, item 2)

``d`` is ``fdistill.vocoder.losses.distance``: the mean over batch and dimensions of (a − b)² (``l2``, the squared
l2 distance divided by the dimension) or |a − b| (``l1``).

Expansion signal (§3.1): g_x = ∇_x(log p_T(x) − log q_S(x)) at a student sample x = S(z), the student's parameters
held fixed — the negative gradient of the reverse-KL integrand with respect to the sample, i.e. the "error" factor
of the path derivative (Eq. 6). For Gaussians g_x = −Σ⁻¹(x − μ) + Σ_S⁻¹(x − b). The event (x − μ)ᵀg_x > 0 says the
gradient points away from the teacher's mode μ (Proposition 1 puts both distributions at 0: xᵀg_x > 0).

Proposition 1: for q_S = N(0, I) and p_T = N(0, Σ) with eigenvalues d_i², P(xᵀg_x > 0) = P(Σ_i ρ_i x_i² > 0) with
ρ_i = 1 − 1/d_i² — the paper's fraction A_{U∩ρ}/A_U of the unit sphere. `proposition1_probability` computes it
by Imhof's inversion of the characteristic function of the quadratic form (a generalised χ²); for any other student
N(b, AAᵀ) centred at μ, the d_i² are the eigenvalues of the relative covariance A⁻¹ΣA⁻ᵀ (the paper's footnote 1).

Repeats: each of the study's ``repeats`` draws its own R (its own teacher) and trains every method on it; the
table reports mean ± std (and the median) over the repeats, and the JSON keeps every repeat's numbers with its
teacher's covariance eigenvalues. At D ≥ 32 the final KL depends strongly on the drawn teacher's smallest
eigenvalue λ_min(RRᵀ) (a thin direction the student must shrink into), so one draw says little.

Reference: Huang, Chen, Belilovsky, Courville et al., "Probability distillation: a caveat and alternatives"
(UAI 2019), §3 (Proposition 1, §3.2, Figures 2–3) and §4.1.1; Imhof, "Computing the distribution of quadratic
forms in normal variables", Biometrika 48 (1961).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import time

import numpy as np
import torch
from torch import nn

from fdistill.errors import InputError
from fdistill.flows import checks
from fdistill.flows.models import standard_normal_log_prob
from fdistill.runner import StepGuard

from . import losses

METHODS = ("reverse_kl", "z_rec", "x_rec")
METHOD_LABELS = {"reverse_kl": "reverse KL", "z_rec": "z-reconstruction", "x_rec": "x-reconstruction"}
PARAMETERISATIONS = ("triangular", "paper")  # the maps of teacher and student; see the module docstring


class AffineGaussian(nn.Module):
    """N(b, AAᵀ) sampled by the affine map x = S(z) = b + Az, z ~ N(0, I); subclasses choose the form of A.

        log p(x) = log N(A⁻¹(x − b); 0, I) − log|det A|,    log p(S(z)) = log N(z; 0, I) − log|det A|  (Eq. 4)

    A subclass defines ``scale()`` (A, ``[D, D]``), ``log_abs_det()`` (log|det A|) and ``solve_scale(rhs)``
    (A⁻¹·rhs); sampling, the inverse and the densities follow. The teacher of the study is one with frozen
    parameters (``requires_grad_(False)``), its ``inverse`` the teacher's map T.
    """

    shift: nn.Parameter  # b, [D]

    @property
    def dim(self) -> int:
        return self.shift.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.shift

    def scale(self) -> torch.Tensor:
        raise NotImplementedError

    def log_abs_det(self) -> torch.Tensor:
        raise NotImplementedError

    def solve_scale(self, rhs: torch.Tensor) -> torch.Tensor:
        """A⁻¹·rhs for a matrix ``rhs`` ``[D, K]``."""
        raise NotImplementedError

    def covariance(self) -> torch.Tensor:
        scale = self.scale()
        return scale @ scale.T

    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """S(z) = b + Az for rows z: ``[N, D] → [N, D]``."""
        return self.shift + z @ self.scale().T

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """S⁻¹(x) = A⁻¹(x − b) for rows x (the teacher's T)."""
        return self.solve_scale((x - self.shift).T).T

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; b, AAᵀ) = log N(A⁻¹(x − b); 0, I) − log|det A|, per row."""
        return standard_normal_log_prob(self.inverse(x), event_dims=1) - self.log_abs_det()

    def log_prob_of_latent(self, z: torch.Tensor) -> torch.Tensor:
        """log q(S(z)) = log N(z; 0, I) − log|det A| by the change of variables (Eq. 4), without inverting S."""
        return standard_normal_log_prob(z, event_dims=1) - self.log_abs_det()


class TriangularGaussian(AffineGaussian):
    """N(b, LLᵀ) sampled by the affine IAF x = S(z) = b + Lz, with L lower-triangular and positive diagonal.

    L = strict_tril(W) + diag(exp s): the log-determinant is Σ s_t, the inverse a triangular solve, so densities of
    samples (Eq. 4) and of any x are exact. Starts at N(0, I) (b = 0, s = 0, W = 0); everything in ``dtype``.
    The study's ``parameterisation="triangular"`` (the default) uses it for teacher (L = chol(Σ)) and student.

    Arguments:
        dim: the dimension D.
        dtype: parameter dtype (float64: log-densities of 64-dimensional samples lose digits in float32).

    Example:
        >>> student = TriangularGaussian(3)
        >>> z = torch.randn(5, 3, dtype=torch.float64)
        >>> torch.allclose(student.inverse(student.sample(z)), z)
        True
    """

    def __init__(self, dim: int, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(dim, dtype=dtype))  # b
        self.log_diag = nn.Parameter(torch.zeros(dim, dtype=dtype))  # s, diag(L) = exp(s) > 0
        self.lower = nn.Parameter(torch.zeros(dim, dim, dtype=dtype))  # W; only its strict lower triangle is used

    @classmethod
    def from_scale_tril(cls, mean: torch.Tensor, scale_tril: torch.Tensor) -> TriangularGaussian:
        """The Gaussian with sampler ``x = mean + scale_tril·z`` (``scale_tril`` lower-triangular, diagonal > 0)."""
        diagonal = torch.diagonal(scale_tril)
        if not bool((diagonal > 0).all()):
            raise ValueError("scale_tril needs a positive diagonal (use the Cholesky factor of the covariance)")
        model = cls(mean.shape[-1], dtype=mean.dtype)
        with torch.no_grad():
            model.shift.copy_(mean)
            model.log_diag.copy_(diagonal.log())
            model.lower.copy_(torch.tril(scale_tril, -1))
        return model

    @classmethod
    def from_covariance(cls, mean: torch.Tensor, covariance: torch.Tensor) -> TriangularGaussian:
        """N(mean, covariance) as its autoregressive sampler ``x = mean + chol(covariance)·z``."""
        return cls.from_scale_tril(mean, torch.linalg.cholesky(covariance))

    def scale_tril(self) -> torch.Tensor:
        """L = strict_tril(W) + diag(exp s), ``[D, D]``."""
        return torch.tril(self.lower, -1) + torch.diag(self.log_diag.exp())

    def scale(self) -> torch.Tensor:
        return self.scale_tril()

    def log_abs_det(self) -> torch.Tensor:
        return self.log_diag.sum()

    def solve_scale(self, rhs: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(self.scale_tril(), rhs, upper=False)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """S⁻¹(x) = L⁻¹(x − b) for rows x (the teacher's T)."""
        # rows: z Lᵀ = x − b, a right-sided upper-triangular solve
        return torch.linalg.solve_triangular(self.scale_tril().T, x - self.shift, upper=True, left=False)


class FullGaussian(AffineGaussian):
    """N(b, WWᵀ) sampled by x = S(z) = b + Wz with a full matrix W: the paper's literal "x ← µ + R·z" (§3.2).

    log|det W| comes from ``slogdet`` and S⁻¹ is one LU solve (O(D³), no autoregressive structure). Starts at
    N(0, I) (b = 0, W = I). The study's ``parameterisation="paper"`` uses it for teacher (W = R) and student.

    Arguments:
        dim: the dimension D.
        dtype: parameter dtype.

    Example:
        >>> teacher = FullGaussian.from_scale(torch.full((3,), 2.0, dtype=torch.float64),
        ...                                   torch.randn(3, 3, dtype=torch.float64))
        >>> z = torch.randn(5, 3, dtype=torch.float64)
        >>> torch.allclose(teacher.inverse(teacher.sample(z)), z)
        True
    """

    def __init__(self, dim: int, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(dim, dtype=dtype))  # b
        self.weight = nn.Parameter(torch.eye(dim, dtype=dtype))  # W

    @classmethod
    def from_scale(cls, mean: torch.Tensor, scale: torch.Tensor) -> FullGaussian:
        """The Gaussian with sampler ``x = mean + scale·z`` (``scale`` any invertible matrix)."""
        model = cls(mean.shape[-1], dtype=mean.dtype)
        with torch.no_grad():
            model.shift.copy_(mean)
            model.weight.copy_(scale)
        return model

    def scale(self) -> torch.Tensor:
        return self.weight

    def log_abs_det(self) -> torch.Tensor:
        return torch.linalg.slogdet(self.weight).logabsdet

    def solve_scale(self, rhs: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(self.weight, rhs)


def make_teacher(
    dim: int,
    generator: torch.Generator,
    mean_value: float = 2.0,
    dtype: torch.dtype = torch.float64,
    parameterisation: str = "triangular",
) -> AffineGaussian:
    """The paper's teacher N(μ, RRᵀ), μ = mean_value·1, R_ij ~ N(0, 1), frozen.

    ``parameterisation="triangular"``: its autoregressive sampler μ + chol(RRᵀ)·z (`TriangularGaussian`);
    ``"paper"``: the drawn map μ + R·z itself (`FullGaussian`). The same ``generator`` state draws the same R, so
    both are the same distribution; only the map (T, and the students' family) differs.
    """
    checks.choice("parameterisation", parameterisation, PARAMETERISATIONS)
    scale = torch.randn(dim, dim, generator=generator, dtype=dtype)  # R
    mean = torch.full((dim,), mean_value, dtype=dtype)
    if parameterisation == "paper":
        return FullGaussian.from_scale(mean, scale).requires_grad_(False)
    return TriangularGaussian.from_covariance(mean, scale @ scale.T).requires_grad_(False)


def gaussian_kl(q: AffineGaussian, p: AffineGaussian) -> torch.Tensor:
    """Closed-form KL(q‖p) = ½[‖A_p⁻¹A_q‖²_F + ‖A_p⁻¹(μ_p − μ_q)‖² − D] + log|det A_p| − log|det A_q|.

    (‖A_p⁻¹A_q‖²_F = tr(Σ_p⁻¹Σ_q).)
    """
    ratio = p.solve_scale(q.scale())  # A_p⁻¹A_q
    offset = p.solve_scale((p.mean - q.mean)[:, None])
    return 0.5 * (ratio.pow(2).sum() + offset.pow(2).sum() - q.dim) + p.log_abs_det() - q.log_abs_det()


@torch.no_grad()
def relative_eigenvalues(student: AffineGaussian, teacher: AffineGaussian) -> torch.Tensor:
    """Eigenvalues d_i² of A_S⁻¹ Σ_T A_S⁻ᵀ, the teacher covariance seen from the whitened student (footnote 1)."""
    whitened = student.solve_scale(teacher.scale())
    return torch.linalg.svdvals(whitened).pow(2).flip(0)  # ascending


@torch.no_grad()
def covariance_eigenvalues(model: AffineGaussian) -> torch.Tensor:
    """Eigenvalues of the covariance AAᵀ, ascending (``eigvalsh``); the first is the λ_min the study records."""
    return torch.linalg.eigvalsh(model.covariance())


# ----------------------------------------------------------------------------- losses


def reverse_kl_loss(student: AffineGaussian, teacher: AffineGaussian, z: torch.Tensor) -> torch.Tensor:
    """Monte Carlo reverse KL (Eq. 2): mean over z ~ N(0, I) of ``log q_S(S(z)) − log p_T(S(z))``.

    The student's density comes from the change of variables (Eq. 4); gradients reach the student through the
    sample (reparameterisation) and through log-det. Each term is 0 (up to rounding) when the student equals the
    teacher, not only their mean.
    """
    return (student.log_prob_of_latent(z) - teacher.log_prob(student.sample(z))).mean()


def z_reconstruction_loss(
    student: AffineGaussian, teacher: AffineGaussian, z: torch.Tensor, distance: str = "l2"
) -> torch.Tensor:
    """z-reconstruction ``d(z, T(S(z)))``: the student encodes, the frozen teacher's inverse T decodes (§4, item 1)."""
    return losses.distance(teacher.inverse(student.sample(z)), z, distance)


def x_reconstruction_loss(
    student: AffineGaussian, teacher: AffineGaussian, x: torch.Tensor, distance: str = "l2"
) -> torch.Tensor:
    """x-reconstruction ``d(x, S(T(x)))`` on teacher samples x: teacher encodes, student decodes (§4, item 2)."""
    with torch.no_grad():
        z = teacher.inverse(x)
    return losses.distance(student.sample(z), x, distance)


def distillation_loss(
    method: str,
    student: AffineGaussian,
    teacher: AffineGaussian,
    batch: int,
    generator: torch.Generator,
    distance: str = "l2",
) -> torch.Tensor:
    """One minibatch of ``method`` ∈ METHODS: fresh z ~ N(0, I) (x-reconstruction: fresh teacher samples)."""
    z = torch.randn(batch, student.dim, generator=generator, dtype=student.shift.dtype)
    if method == "reverse_kl":
        return reverse_kl_loss(student, teacher, z)
    if method == "z_rec":
        return z_reconstruction_loss(student, teacher, z, distance)
    if method == "x_rec":
        with torch.no_grad():
            x = teacher.sample(z)
        return x_reconstruction_loss(student, teacher, x, distance)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


# ----------------------------------------------------------------------------- expansion signal, Proposition 1


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
        raise ValueError(f"eigenvalues must be positive, got {d2}")
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


# ----------------------------------------------------------------------------- training


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator whose seed is a hash of ``keys`` (independent streams per seed/dimension/method/repeat)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def train_student(
    teacher: AffineGaussian,
    method: str,
    steps: int = 5000,
    batch: int = 64,
    lr: float = 0.005,
    distance: str = "l2",
    generator: torch.Generator | None = None,
    probe_generator: torch.Generator | None = None,
    probe_samples: int = 128,
    kl_every: int = 50,
) -> tuple[AffineGaussian, dict]:
    """Distil ``teacher`` into a student of its class (starting at N(0, I)) with Adam on ``method``.

    A `TriangularGaussian` teacher gets a triangular (IAF) student, a `FullGaussian` teacher a full-matrix one.

    Arguments:
        teacher: the frozen teacher.
        method: ``"reverse_kl"``, ``"z_rec"`` or ``"x_rec"``.
        steps, batch, lr: updates, minibatch size and Adam learning rate (paper: 5000, 64, 0.005).
        distance: ``"l2"`` or ``"l1"`` for the reconstruction losses.
        generator: draws the minibatches.
        probe_generator: if given, before every update and after the last one, ``probe_samples`` fresh student
            samples estimate P((x − μ)ᵀg_x > 0) (Figure 3); its own generator leaves the training draws unchanged.
        kl_every: record the closed-form KL(student‖teacher) every this many updates.

    Returns the student and ``{"loss": [...], "kl_steps": [...], "kl": [...], "expansion": [...] | None}``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    student = type(teacher)(teacher.dim, dtype=teacher.shift.dtype)
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    record = {"loss": [], "kl_steps": [], "kl": [], "expansion": [] if probe_generator is not None else None}

    def observe(step: int) -> None:
        if record["expansion"] is not None:
            z = torch.randn(probe_samples, teacher.dim, generator=probe_generator, dtype=teacher.shift.dtype)
            record["expansion"].append(expansion_signal(student, teacher, z).double().mean().item())
        if step % kl_every == 0 or step == steps:
            with torch.no_grad():
                record["kl_steps"].append(step)
                record["kl"].append(gaussian_kl(student, teacher).item())

    # the shared runner's guard, strict: any non-finite update stops the run (no clipping: max_grad_norm=None)
    guard = StepGuard(
        f"{METHOD_LABELS[method]} student (D={teacher.dim})",
        max_skipped_fraction=0.0,
        planned=steps,
        error=InputError,
        hint=f"lr={lr!r} too high. Lower the learning rate (--lr) and run again; nothing was written.",
        message="{stage}: the loss is non-finite or has a non-finite gradient "
        "at update {taken} of {total}, so the run cannot finish; likely cause: {hint}",
    )
    for step in range(steps):
        observe(step)
        loss = distillation_loss(method, student, teacher, batch, generator, distance)
        guard.step(optimizer, loss, student.parameters())
        record["loss"].append(loss.item())
    observe(steps)
    return student.requires_grad_(False), record


# ----------------------------------------------------------------------------- the study


def _stats(values: torch.Tensor) -> dict:
    values = values.double()
    return {
        "mean": values.mean().item(),
        "std": values.std().item(),
        "stderr": (values.std() / math.sqrt(values.numel())).item(),
    }


def _compare(student_ll: torch.Tensor, teacher_ll: torch.Tensor) -> dict:
    """Mean difference of teacher log-likelihoods (student − teacher samples), its standard error, and a KS test."""
    from scipy import stats

    diff = student_ll.mean().item() - teacher_ll.mean().item()
    stderr = math.sqrt(student_ll.var().item() / student_ll.numel() + teacher_ll.var().item() / teacher_ll.numel())
    ks = stats.ks_2samp(student_ll.numpy(), teacher_ll.numpy())
    return {
        "mean_difference": diff,
        "difference_stderr": stderr,
        "z_score": diff / stderr,
        "ks_statistic": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
    }


def _subsample(values: list, every: int) -> tuple[list, list]:
    steps = list(range(0, len(values), every))
    if steps[-1] != len(values) - 1:
        steps.append(len(values) - 1)
    return steps, [round(values[i], 5) for i in steps]


def check_study_settings(
    out_dir,
    dims,
    steps,
    batch,
    lr,
    repeats,
    samples,
    seed,
    eval_samples,
    methods,
    distance,
    mean_value,
    prop1_samples,
    parameterisation="triangular",
) -> None:
    """One clear error for any setting of `run_gaussian_study` that cannot work, before anything is computed."""
    checks.output_folder("out_dir", out_dir)
    checks.whole_numbers("dims", list(dims) if isinstance(dims, (list, tuple)) else dims, example="[4, 16, 32, 64]")
    for name, value in (
        ("steps", steps),
        ("batch", batch),
        ("repeats", repeats),
        ("samples", samples),
        ("prop1_samples", prop1_samples),
    ):
        checks.whole_number(name, value)
    checks.whole_number("eval_samples", eval_samples, low=2)  # a standard deviation needs two samples
    checks.whole_number("seed", seed, low=0)
    checks.number("lr", lr)
    checks.number("mean_value", mean_value, low=-math.inf)
    checks.choice("distance", distance, ("l1", "l2"))
    checks.choice("parameterisation", parameterisation, PARAMETERISATIONS)
    checks.names("methods", list(methods) if isinstance(methods, (list, tuple)) else methods, METHODS)
    if "reverse_kl" not in methods:
        raise ValueError("the study needs 'reverse_kl' among the methods (Figure 3 probes its training)")


def run_gaussian_study(
    out_dir: str,
    dims=(4, 16, 32, 64),
    steps: int = 5000,
    batch: int = 64,
    lr: float = 0.005,
    repeats: int = 8,
    samples: int = 128,
    seed: int = 0,
    eval_samples: int = 1000,
    methods=METHODS,
    distance: str = "l2",
    mean_value: float = 2.0,
    prop1_samples: int = 200_000,
    parameterisation: str = "triangular",
    log=print,
) -> dict:
    """The paper's Gaussian study (§3.2 and §4.1.1); writes figures, ``table.md`` and ``summary.json`` to ``out_dir``.

    Per dimension D and repeat r < ``repeats``: a teacher with its own R (`make_teacher`) and one student per method
    trained on it from N(0, I), all methods on the same minibatch stream; the teacher log-likelihood of
    ``eval_samples`` teacher samples vs as many samples of each student (Figure 2 shows repeat 0); the closed-form
    KL both ways; the reverse-KL run probed with ``samples`` fresh student samples before every update and after the
    last (Figure 3: P((x − μ)ᵀg_x > 0), mean over repeats × samples); Proposition 1 analytic vs Monte Carlo
    (``prop1_samples / repeats`` draws per eigenvalue set) for each repeat's teacher seen from N(μ, I) (the
    proposition's setting) and from its trained reverse-KL student (what the proposition predicts were that student
    centred at μ). ``summary["dims"][D]["repeats"]`` holds every repeat's numbers (with its teacher's covariance
    eigenvalues), ``["over_repeats"]`` their mean, std (ddof 1), median, min and max — the numbers of the table.
    Deterministic given ``seed`` (on one machine and thread count); repeat 0 and the reverse-KL repeats are the
    runs the study made before it trained every method on every repeat. ``summary["trends"]`` checks the paper's
    claims on the numbers.

    Arguments:
        out_dir: output folder (created when the study has finished; every setting is checked before any work by
            `check_study_settings`, and a non-finite training loss stops the study with an error).
        dims: the dimensions D (paper: 4, 16, 32, 64).
        steps, batch, lr: Adam updates, minibatch size, learning rate per student (paper: 5000, 64, 0.005).
        repeats: teachers per dimension, each distilled by every method (paper: 8 reverse-KL runs for Figure 3).
        samples: expansion-signal probes per update of each reverse-KL run (paper: 128).
        seed: seeds everything (teachers, minibatches, probes, evaluation, Monte Carlo).
        eval_samples: teacher and student samples per histogram (paper: 1000).
        methods: a subset of METHODS containing ``"reverse_kl"``.
        distance: ``"l2"`` or ``"l1"`` for the reconstruction losses.
        mean_value: the teacher mean μ = mean_value·1 (paper: 2).
        prop1_samples: Monte Carlo draws for Proposition 1, per dimension and block.
        parameterisation: ``"triangular"`` (Cholesky teacher map, IAF student) or ``"paper"`` (teacher map
            R⁻¹(x − µ), full-matrix student); the module docstring gives both. The teachers' distributions are the
            same for both.
        log: progress printer.

    Files: ``figure2_loglik_histograms.png``, ``figure3_expansion_signal.png``, ``proposition1.png``,
    ``kl_vs_teacher_min_eigenvalue.png``, ``table.md``, ``summary.json``. Returns the summary.

    Example:
        >>> summary = run_gaussian_study("/tmp/gaussian_study", dims=(4,), steps=20, repeats=2, samples=8,
        ...                              eval_samples=50, prop1_samples=1000, log=lambda *_: None)
        >>> sorted(summary["dims"]["4"]["repeats"][1]["methods"])
        ['reverse_kl', 'x_rec', 'z_rec']
    """
    check_study_settings(
        out_dir,
        dims,
        steps,
        batch,
        lr,
        repeats,
        samples,
        seed,
        eval_samples,
        methods,
        distance,
        mean_value,
        prop1_samples,
        parameterisation,
    )
    start = time.perf_counter()
    summary = {
        "settings": {
            "dims": list(dims),
            "steps": steps,
            "batch": batch,
            "lr": lr,
            "repeats": repeats,
            "samples": samples,
            "seed": seed,
            "eval_samples": eval_samples,
            "methods": list(methods),
            "distance": distance,
            "mean_value": mean_value,
            "prop1_samples": prop1_samples,
            "parameterisation": parameterisation,
            "dtype": "float64",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "dims": {},
    }
    curves, histograms = {}, {}
    for dim in dims:
        teachers = [
            make_teacher(dim, seeded_generator(seed, dim, 0, r), mean_value, parameterisation=parameterisation)
            for r in range(repeats)
        ]
        rows, runs = [], []
        for r, teacher in enumerate(teachers):
            row, run, loglik = _study_repeat(
                teacher, r, seed, methods, steps, batch, lr, distance, samples, eval_samples, log
            )
            rows.append(row)
            runs.append(run)
            if r == 0:
                histograms[dim] = loglik
        # Figure 3: the expansion probability averaged over the repeats' reverse-KL runs
        curve = np.mean([record["expansion"] for _, record in runs], axis=0)  # [steps + 1]
        curves[dim] = curve
        tail = max(1, steps // 10)
        peak = int(np.argmax(curve))
        curve_steps, curve_values = _subsample(curve.tolist(), max(1, steps // 500))
        entry = {
            "repeats": rows,
            "expansion": {
                "start": float(curve[0]),
                "peak": float(curve[peak]),
                "peak_step": peak,
                "end": float(curve[-1]),
                "end_mean_last_10pct": float(curve[-tail:].mean()),
                "probes_per_step": repeats * samples,
                "curve": {"steps": curve_steps, "probability": curve_values},
            },
        }
        # Proposition 1, analytic vs Monte Carlo: each repeat's teacher seen from N(μ, I) (the proposition's own
        # setting), and from its trained reverse-KL student (the prediction were that student centred at μ)
        prop = seeded_generator(seed, dim, 4)
        each = max(1, prop1_samples // repeats)
        standard = _proposition1_block([relative_eigenvalues(type(t)(dim), t) for t in teachers], each, prop)
        trained = _proposition1_block([relative_eigenvalues(s, t) for (s, _), t in zip(runs, teachers)], each, prop)
        trained["measured_expansion_end"] = float(curve[-1])
        entry["proposition1"] = {"teacher_vs_standard_student": standard, "trained_reverse_kl_students": trained}
        entry["over_repeats"] = _over_repeats_entry(entry, methods)
        entry["kl_vs_teacher_min_eigenvalue_spearman"] = _eigenvalue_dependence(rows, methods)
        kl = entry["over_repeats"]["methods"]
        log(
            f"D={dim:3d} over {repeats} repeats, KL(q‖p) mean ± std (median): "
            + "; ".join(
                f"{m} {kl[m]['kl_student_teacher']['mean']:.4g} ± {kl[m]['kl_student_teacher']['std']:.3g} "
                f"({kl[m]['kl_student_teacher']['median']:.4g})"
                for m in methods
            )
        )
        log(
            f"D={dim:3d} expansion P (mean curve): start {curve[0]:.3f} peak {curve[peak]:.3f} (step {peak}) end "
            f"{curve[-tail:].mean():.3f}; Prop. 1 (standard student) analytic {standard['analytic_mean']:.4f} "
            f"MC {standard['monte_carlo_mean']:.4f} ± {standard['monte_carlo_stderr']:.4f}"
        )
        summary["dims"][str(dim)] = entry
    summary["trends"] = _trends(summary)
    summary["wall_seconds"] = time.perf_counter() - start
    os.makedirs(out_dir, exist_ok=True)  # only now: a run stopped by an error leaves no half-written folder
    _plot_histograms(histograms, methods, os.path.join(out_dir, "figure2_loglik_histograms.png"))
    _plot_expansion(curves, repeats * samples, os.path.join(out_dir, "figure3_expansion_signal.png"))
    _plot_proposition1(summary, os.path.join(out_dir, "proposition1.png"))
    _plot_kl_vs_eigenvalue(summary, os.path.join(out_dir, "kl_vs_teacher_min_eigenvalue.png"))
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(study_table(summary))
    _dump_json(summary, os.path.join(out_dir, "summary.json"))
    return summary


def _study_repeat(
    teacher: AffineGaussian, repeat, seed, methods, steps, batch, lr, distance, samples, eval_samples, log
) -> tuple[dict, tuple, dict]:
    """Every method distilled from one teacher: the repeat's JSON record, the reverse-KL (student, training record),
    and the teacher log-likelihoods of the evaluation samples (for Figure 2)."""
    dim = teacher.dim
    eigenvalues = covariance_eigenvalues(teacher)
    evaluation = seeded_generator(seed, dim, 1, repeat)
    z = torch.randn(eval_samples, dim, generator=evaluation, dtype=torch.float64)
    teacher_ll = teacher.log_prob(teacher.sample(z))
    row = {
        "teacher": {
            "covariance_min_eigenvalue": eigenvalues[0].item(),
            "covariance_max_eigenvalue": eigenvalues[-1].item(),
            "covariance_eigenvalues": eigenvalues.tolist(),
            "loglik_teacher_samples": _stats(teacher_ll),
        },
        "methods": {},
    }
    loglik, run = {"teacher": teacher_ll}, None
    for method in methods:
        t0 = time.perf_counter()
        probe = seeded_generator(seed, dim, 3, repeat) if method == "reverse_kl" else None
        generator = seeded_generator(seed, dim, 2, repeat)  # the same minibatch stream for every method
        student, record = train_student(teacher, method, steps, batch, lr, distance, generator, probe, samples)
        z = torch.randn(eval_samples, dim, generator=evaluation, dtype=torch.float64)
        student_ll = teacher.log_prob(student.sample(z))
        loglik[method] = student_ll
        kl_steps, kl_values = _subsample(record["kl"], max(1, len(record["kl"]) // 20))
        loss_steps, loss_values = _subsample(record["loss"], max(1, steps // 20))
        row["methods"][method] = {
            "loglik_student_samples": _stats(student_ll),
            "vs_teacher_samples": _compare(student_ll, teacher_ll),
            "kl_student_teacher": gaussian_kl(student, teacher).item(),
            "kl_teacher_student": gaussian_kl(teacher, student).item(),
            "final_loss_mean_last_10pct": float(np.mean(record["loss"][-max(1, steps // 10) :])),
            "kl_history": {"steps": [record["kl_steps"][i] for i in kl_steps], "kl_student_teacher": kl_values},
            "loss_history": {"steps": loss_steps, "loss": loss_values},
            "wall_seconds": time.perf_counter() - t0,
        }
        if method == "reverse_kl":
            run = (student, record)
            row["expansion"] = _expansion_stats(np.asarray(record["expansion"]), steps)
        log(
            f"D={dim:3d} repeat {repeat} (λ_min {eigenvalues[0].item():.3g}) {method:10s} "
            f"KL(q‖p)={row['methods'][method]['kl_student_teacher']:.4f} "
            f"KL(p‖q)={row['methods'][method]['kl_teacher_student']:.4f} mean log p_T: student "
            f"{student_ll.mean().item():.2f} teacher {teacher_ll.mean().item():.2f} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    return row, run, loglik


def _expansion_stats(curve: np.ndarray, steps: int) -> dict:
    """One run's expansion probability: at the start, its peak and the mean over the last 10% of updates.

    The peak is the largest moving average over ``steps // 100`` updates: the maximum of single updates' estimates
    (``samples`` probes each) would mostly measure their noise.
    """
    width = max(1, steps // 100)
    smooth = np.convolve(curve, np.ones(width) / width, mode="valid")
    return {
        "start": float(curve[0]),
        "peak": float(smooth.max()),
        "peak_step": int(np.argmax(smooth)) + (width - 1) // 2,
        "end_mean_last_10pct": float(curve[-max(1, steps // 10) :].mean()),
    }


def over_repeats(values) -> dict:
    """Mean, standard deviation (ddof 1; 0 for one value), median, min and max of one number per repeat."""
    values = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _over_repeats_entry(entry: dict, methods) -> dict:
    """The table's numbers for one dimension: `over_repeats` of each per-repeat quantity."""
    rows = entry["repeats"]
    compare = {m: [r["methods"][m]["vs_teacher_samples"] for r in rows] for m in methods}
    return {
        "teacher": {
            "covariance_min_eigenvalue": over_repeats([r["teacher"]["covariance_min_eigenvalue"] for r in rows]),
            "loglik_teacher_samples_mean": over_repeats([r["teacher"]["loglik_teacher_samples"]["mean"] for r in rows]),
        },
        "methods": {
            m: {
                "loglik_difference": over_repeats([c["mean_difference"] for c in compare[m]]),
                "kl_student_teacher": over_repeats([r["methods"][m]["kl_student_teacher"] for r in rows]),
                "kl_teacher_student": over_repeats([r["methods"][m]["kl_teacher_student"] for r in rows]),
                # repeats whose student samples score above / below the teacher's by more than 3 standard errors
                "repeats_above_teacher": sum(c["z_score"] > 3 for c in compare[m]),
                "repeats_below_teacher": sum(c["z_score"] < -3 for c in compare[m]),
            }
            for m in methods
        },
        "expansion": {
            key: over_repeats([r["expansion"][key] for r in rows]) for key in ("start", "peak", "end_mean_last_10pct")
        },
        "proposition1": {
            block: over_repeats([x["analytic"] for x in entry["proposition1"][block]["per_repeat"]])
            for block in ("teacher_vs_standard_student", "trained_reverse_kl_students")
        },
    }


def _eigenvalue_dependence(rows: list, methods) -> dict:
    """Spearman rank correlation over the repeats between the teacher's λ_min and each method's final KL(q‖p)."""
    from scipy import stats

    if len(rows) < 3:
        return {m: None for m in methods}
    smallest = [r["teacher"]["covariance_min_eigenvalue"] for r in rows]
    return {
        m: float(stats.spearmanr(smallest, [r["methods"][m]["kl_student_teacher"] for r in rows]).statistic)
        for m in methods
    }


def _proposition1_block(eigenvalue_sets: list, samples: int, generator: torch.Generator) -> dict:
    """Proposition 1 analytic vs Monte Carlo for each eigenvalue set, and their means over the sets."""
    rows = []
    for eigenvalues in eigenvalue_sets:
        eigenvalues = eigenvalues.tolist()
        mc, se = proposition1_monte_carlo(eigenvalues, samples, generator)
        analytic = proposition1_probability(eigenvalues)
        rows.append(
            {
                "analytic": analytic,
                "monte_carlo": mc,
                "monte_carlo_stderr": se,
                "z_score": (mc - analytic) / se if se > 0 else 0.0,
                "min_eigenvalue": min(eigenvalues),
                "max_eigenvalue": max(eigenvalues),
            }
        )
    return {
        "analytic_mean": float(np.mean([r["analytic"] for r in rows])),
        "monte_carlo_mean": float(np.mean([r["monte_carlo"] for r in rows])),
        "monte_carlo_stderr": math.sqrt(sum(r["monte_carlo_stderr"] ** 2 for r in rows)) / len(rows),
        "max_abs_z_score": max(abs(r["z_score"]) for r in rows),
        "per_repeat": rows,
    }


def _dump_json(tree: dict, path: str) -> None:
    """JSON with one line per list of numbers (histories stay readable and small)."""
    text = json.dumps(tree, indent=1, ensure_ascii=False)
    numbers = re.compile(r"\[\s*([-+0-9.eE,\s]+?)\s*\]")
    text = numbers.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    with open(path, "w") as f:
        f.write(text + "\n")


def _trends(summary: dict) -> dict:
    """The paper's claims checked on the numbers (thresholds stated in the keys' values); counts are over repeats."""
    dims = sorted(int(d) for d in summary["dims"])
    ends = [summary["dims"][str(d)]["expansion"]["end_mean_last_10pct"] for d in dims]
    trends = {
        "expansion_end_by_dim": dict(zip(map(str, dims), ends)),
        "expansion_end_decreases_with_dim": all(a > b for a, b in itertools.pairwise(ends)),
    }
    top = summary["dims"][str(dims[-1])]["over_repeats"]["methods"]
    repeats = summary["settings"]["repeats"]
    if "reverse_kl" in top:  # student mean log p_T higher by > 3 s.e. in more than half of the repeats
        trends["reverse_kl_above_teacher_at_max_dim_repeats"] = top["reverse_kl"]["repeats_above_teacher"]
        trends["reverse_kl_above_teacher_at_max_dim"] = 2 * top["reverse_kl"]["repeats_above_teacher"] > repeats
    if "x_rec" in top:  # |z| < 3 and KS p > 0.01 in more than half of the repeats
        rows = summary["dims"][str(dims[-1])]["repeats"]
        matches = sum(
            abs(r["methods"]["x_rec"]["vs_teacher_samples"]["z_score"]) < 3
            and r["methods"]["x_rec"]["vs_teacher_samples"]["ks_pvalue"] > 0.01
            for r in rows
        )
        trends["x_rec_matches_teacher_at_max_dim_repeats"] = matches
        trends["x_rec_matches_teacher_at_max_dim"] = 2 * matches > repeats
    for statistic in ("median", "mean"):
        trends[f"lowest_{statistic}_kl_by_dim"] = {
            str(d): min(
                summary["dims"][str(d)]["over_repeats"]["methods"],
                key=lambda m, d=d: summary["dims"][str(d)]["over_repeats"]["methods"][m]["kl_student_teacher"][
                    statistic
                ],
            )
            for d in dims
        }
    # paired over the repeats (each pair of methods distilled the same teacher): who ends with the lower KL(q‖p)
    trends["kl_paired_by_dim"] = {str(d): _paired_kl(summary["dims"][str(d)]["repeats"]) for d in dims}
    trends["proposition1_max_abs_z_score"] = max(
        e["proposition1"][k]["max_abs_z_score"]
        for e in summary["dims"].values()
        for k in ("teacher_vs_standard_student", "trained_reverse_kl_students")
    )
    trends["proposition1_analytic_matches_monte_carlo"] = trends["proposition1_max_abs_z_score"] < 4
    return trends


def _paired_kl(rows: list) -> dict:
    """For each pair of methods a, b: in how many repeats KL_a < KL_b, KL_b < KL_a, or a tie (within 1e-10)."""
    methods = list(rows[0]["methods"])
    pairs = {}
    for a, b in itertools.combinations(methods, 2):
        gaps = [r["methods"][a]["kl_student_teacher"] - r["methods"][b]["kl_student_teacher"] for r in rows]
        pairs[f"{a} vs {b}"] = {
            f"{a} lower": sum(g < -1e-10 for g in gaps),
            f"{b} lower": sum(g > 1e-10 for g in gaps),
            "ties": sum(abs(g) <= 1e-10 for g in gaps),
        }
    return pairs


def _kl_text(value: float) -> str:
    # a converged student's closed-form KL is rounding (±1e-14): shown as 0
    return "0" if abs(value) < 1e-10 else f"{value:.3g}"


def _cell(stat: dict, fmt, spread=None) -> str:
    """``mean ± std (median)`` of an `over_repeats` record; ``spread`` formats the std (default ``fmt``)."""
    return f"{fmt(stat['mean'])} ± {(spread or fmt)(stat['std'])} ({fmt(stat['median'])})"


def study_table(summary: dict) -> str:
    """Markdown tables of the study's numbers per dimension: mean ± std (median) over the repeats in every cell."""
    methods = summary["settings"]["methods"]
    s = summary["settings"]
    repeats = s["repeats"]
    short = {"reverse_kl": "reverse KL", "z_rec": "z-rec", "x_rec": "x-rec"}
    signed, plain = (lambda v: f"{v:+.2f}"), (lambda v: f"{v:.2f}")
    three, prob = (lambda v: f"{v:.3g}"), (lambda v: f"{v:.3f}")
    head = (
        ["D", "teacher λ_min(Σ)", "mean log p_T: teacher samples"]
        + [f"Δ mean log p_T: {short[m]}" for m in methods]
        + [f"KL(q‖p): {short[m]}" for m in methods]
        + ["repeats Δ > 3 s.e.: " + " / ".join(short[m] for m in methods)]
    )
    lines = [
        f"**Distillation** (parameterisation `{s['parameterisation']}`; every cell: mean ± std (median) over "
        f"{repeats} repeats, each with its own teacher)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for d, e in sorted(summary["dims"].items(), key=lambda kv: int(kv[0])):
        agg = e["over_repeats"]
        cells = [
            d,
            _cell(agg["teacher"]["covariance_min_eigenvalue"], three),
            _cell(agg["teacher"]["loglik_teacher_samples_mean"], plain),
        ]
        cells += [_cell(agg["methods"][m]["loglik_difference"], signed, plain) for m in methods]
        cells += [_cell(agg["methods"][m]["kl_student_teacher"], _kl_text) for m in methods]
        cells.append(" / ".join(f"{agg['methods'][m]['repeats_above_teacher']}/{repeats}" for m in methods))
        lines.append("| " + " | ".join(cells) + " |")
    head = [
        "D",
        "P(expansion) start",
        "P(expansion) peak",
        "P(expansion) end",
        "Prop. 1 analytic: teacher vs N(μ, I)",
        "Prop. 1 analytic: trained RKL students",
        "Prop. 1 Monte Carlo vs analytic: largest z-score (abs.)",
    ]
    lines += [
        "",
        "**Expansion signal and Proposition 1** (reverse-KL runs; mean ± std (median) over the repeats)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for d, e in sorted(summary["dims"].items(), key=lambda kv: int(kv[0])):
        agg, p = e["over_repeats"], e["proposition1"]
        z = max(p[k]["max_abs_z_score"] for k in ("teacher_vs_standard_student", "trained_reverse_kl_students"))
        cells = [d] + [_cell(agg["expansion"][k], prob) for k in ("start", "peak", "end_mean_last_10pct")]
        cells += [
            _cell(agg["proposition1"][k], prob) for k in ("teacher_vs_standard_student", "trained_reverse_kl_students")
        ]
        cells.append(f"{z:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Settings: parameterisation {s['parameterisation']}, steps {s['steps']}, batch {s['batch']}, Adam lr "
        f"{s['lr']}, {repeats} repeats (one teacher each; every method trained on it) × {s['samples']} probes per "
        f"step, {s['eval_samples']} evaluation samples, distance {s['distance']}, seed {s['seed']}. std: sample "
        "standard deviation over the repeats (ddof 1). λ_min(Σ): the teacher covariance's smallest eigenvalue. "
        "Δ mean log p_T: student − teacher samples' mean teacher log-likelihood (> 0: the student's samples are "
        "more likely than the teacher's own, i.e. collapsed towards the mode); 'repeats Δ > 3 s.e.': repeats "
        "where Δ exceeds 3 of its standard errors. KL 0: below 1e-10 (rounding). P(expansion): per run, 'start' "
        "before the first update, 'peak' the largest moving average over 1% of the updates, 'end' the mean over "
        "the last 10%. Per-repeat numbers, with every teacher's covariance eigenvalues, in summary.json."
    )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_histograms(histograms: dict, methods, path: str) -> None:
    plt = _pyplot()
    dims = list(histograms)
    fig, axes = plt.subplots(len(methods), len(dims), figsize=(3.2 * len(dims), 2.4 * len(methods)), squeeze=False)
    for j, dim in enumerate(dims):
        values = torch.cat([histograms[dim][k] for k in ["teacher", *methods]]).numpy()
        bins = np.linspace(np.percentile(values, 0.2), values.max(), 50)
        for i, method in enumerate(methods):
            ax = axes[i, j]
            ax.hist(histograms[dim]["teacher"].numpy(), bins=bins, alpha=0.55, color="tab:red", label="teacher samples")
            ax.hist(histograms[dim][method].numpy(), bins=bins, alpha=0.55, color="tab:blue", label="student samples")
            ax.set_title(f"{METHOD_LABELS[method]}, D={dim}", fontsize=9)
            ax.tick_params(labelsize=7)
            if i == len(methods) - 1:
                ax.set_xlabel("log p_T(x)", fontsize=8)
            if j == 0:
                ax.set_ylabel("count", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Teacher log-likelihood of teacher vs student samples, repeat 0 (paper Fig. 2)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_expansion(curves: dict, probes: int, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for dim, curve in curves.items():
        width = max(1, len(curve) // 100)
        smooth = np.convolve(curve, np.ones(width) / width, mode="valid")
        (line,) = ax.plot(np.arange(len(curve)), curve, lw=0.4, alpha=0.3)
        ax.plot(np.arange(len(smooth)) + (width - 1) / 2, smooth, lw=1.6, color=line.get_color(), label=f"D={dim}")
    ax.set_xlabel("update")
    ax.set_ylabel("P((x − μ)ᵀ g_x > 0)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Expansion signal during reverse-KL training ({probes} probes per update; paper Fig. 3)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_proposition1(summary: dict, path: str) -> None:
    plt = _pyplot()
    dims = sorted(int(d) for d in summary["dims"])
    entries = [summary["dims"][str(d)]["proposition1"] for d in dims]
    pos = np.arange(len(dims))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    s = [e["teacher_vs_standard_student"] for e in entries]
    t = [e["trained_reverse_kl_students"] for e in entries]
    ax.plot(pos - 0.1, [x["analytic_mean"] for x in s], "o", color="tab:red", label="teachers vs N(μ, I): analytic")
    ax.errorbar(
        pos - 0.1,
        [x["monte_carlo_mean"] for x in s],
        yerr=[4 * x["monte_carlo_stderr"] for x in s],
        fmt="x",
        color="black",
        capsize=3,
        label="Monte Carlo (±4 s.e.)",
    )
    ax.plot(
        pos + 0.1,
        [x["analytic_mean"] for x in t],
        "s",
        color="tab:blue",
        label="trained RKL students (centred): analytic",
    )
    ax.errorbar(
        pos + 0.1,
        [x["monte_carlo_mean"] for x in t],
        yerr=[4 * x["monte_carlo_stderr"] for x in t],
        fmt="x",
        color="black",
        capsize=3,
    )
    ax.plot(
        pos + 0.2,
        [x["measured_expansion_end"] for x in t],
        "^",
        color="tab:green",
        label="measured at the end of training",
    )
    ax.set_xticks(pos, [f"D={d}" for d in dims])
    ax.set_ylabel("P(expansion signal)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Proposition 1: analytic (Imhof) vs Monte Carlo", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_kl_vs_eigenvalue(summary: dict, path: str) -> None:
    """Each repeat's final KL(q‖p) against its teacher's smallest covariance eigenvalue, one panel per method."""
    plt = _pyplot()
    methods = summary["settings"]["methods"]
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for d, e in sorted(summary["dims"].items(), key=lambda kv: int(kv[0])):
            smallest = [r["teacher"]["covariance_min_eigenvalue"] for r in e["repeats"]]
            kl = [max(r["methods"][method]["kl_student_teacher"], 1e-16) for r in e["repeats"]]  # log axis
            ax.scatter(smallest, kl, s=14, label=f"D={d}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(METHOD_LABELS[method], fontsize=9)
        ax.set_xlabel("teacher λ_min(Σ)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("final KL(q‖p) (floored at 1e-16)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        f"Final KL per repeat vs the teacher's smallest eigenvalue ({summary['settings']['parameterisation']})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
