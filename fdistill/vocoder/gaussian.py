"""The paper's Gaussian study of probability distillation: a Gaussian teacher, an affine (IAF-equivalent) Gaussian
student, distillation by reverse KL, z-reconstruction and x-reconstruction, the expansion signal, Proposition 1, and
the study behind ``fdistill vocoder gaussian`` (Figures 2 and 3 of the paper and a check of Proposition 1).

Teacher: p_T = N(μ, Σ), Σ = RRᵀ, μ = 2·1, R with standard normal entries (paper §3.2). Read as the autoregressive
model it stands for (a WaveNet with Gaussian conditionals, x_t = μ_t(x_<t) + σ_t·z_t), its sampler is
T⁻¹(z) = μ + Cz with C = chol(Σ) lower-triangular, and its "inverse" T(x) = C⁻¹(x − μ) is computed in parallel
(teacher forcing). The paper's x = μ + Rz draws the same distribution (Rz = C·(C⁻¹R)z, C⁻¹R orthogonal), but R is
not triangular, so no IAF student could represent that map and the reconstruction losses could not reach zero.

Student: x = S(z) = b + Lz, L = strict_tril(W) + diag(exp s): x_t depends on z_≤t only, an affine IAF (Eq. 3), so
log q_S(S(z)) = log N(z; 0, I) − Σ_t s_t (Eqs. 4–5) and S⁻¹ is one triangular solve. The teacher is the same class
with frozen parameters (b = μ, L = C).

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
N(b, LLᵀ) centred at μ, the d_i² are the eigenvalues of the relative covariance L⁻¹ΣL⁻ᵀ (the paper's footnote 1).

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


class TriangularGaussian(nn.Module):
    """N(b, LLᵀ) sampled by the affine IAF x = S(z) = b + Lz, with L lower-triangular and positive diagonal.

    L = strict_tril(W) + diag(exp s): the log-determinant is Σ s_t, the inverse a triangular solve, so densities of
    samples (Eq. 4) and of any x are exact. Starts at N(0, I) (b = 0, s = 0, W = 0); everything in ``dtype``.

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

    @property
    def dim(self) -> int:
        return self.shift.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.shift

    def scale_tril(self) -> torch.Tensor:
        """L = strict_tril(W) + diag(exp s), ``[D, D]``."""
        return torch.tril(self.lower, -1) + torch.diag(self.log_diag.exp())

    def covariance(self) -> torch.Tensor:
        scale = self.scale_tril()
        return scale @ scale.T

    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """S(z) = b + Lz for rows z: ``[N, D] → [N, D]``."""
        return self.shift + z @ self.scale_tril().T

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """S⁻¹(x) = L⁻¹(x − b) for rows x (the teacher's T)."""
        # rows: z Lᵀ = x − b, a right-sided upper-triangular solve
        return torch.linalg.solve_triangular(self.scale_tril().T, x - self.shift, upper=True, left=False)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; b, LLᵀ) = log N(L⁻¹(x − b); 0, I) − Σ s, per row."""
        return standard_normal_log_prob(self.inverse(x), event_dims=1) - self.log_diag.sum()

    def log_prob_of_latent(self, z: torch.Tensor) -> torch.Tensor:
        """log q(S(z)) = log N(z; 0, I) − Σ s by the change of variables (Eq. 4), without inverting S."""
        return standard_normal_log_prob(z, event_dims=1) - self.log_diag.sum()


def make_teacher(
    dim: int, generator: torch.Generator, mean_value: float = 2.0, dtype: torch.dtype = torch.float64
) -> TriangularGaussian:
    """The paper's teacher N(μ, RRᵀ), μ = mean_value·1, R_ij ~ N(0, 1), frozen, as its autoregressive sampler."""
    scale = torch.randn(dim, dim, generator=generator, dtype=dtype)  # R
    mean = torch.full((dim,), mean_value, dtype=dtype)
    return TriangularGaussian.from_covariance(mean, scale @ scale.T).requires_grad_(False)


def gaussian_kl(q: TriangularGaussian, p: TriangularGaussian) -> torch.Tensor:
    """Closed-form KL(q‖p) = ½[tr(Σ_p⁻¹Σ_q) + ‖L_p⁻¹(μ_p − μ_q)‖² − D] + Σ log diag L_p − Σ log diag L_q."""
    scale_p = p.scale_tril()
    ratio = torch.linalg.solve_triangular(scale_p, q.scale_tril(), upper=False)  # L_p⁻¹L_q
    offset = torch.linalg.solve_triangular(scale_p, (p.mean - q.mean)[:, None], upper=False)
    return 0.5 * (ratio.pow(2).sum() + offset.pow(2).sum() - q.dim) + p.log_diag.sum() - q.log_diag.sum()


@torch.no_grad()
def relative_eigenvalues(student: TriangularGaussian, teacher: TriangularGaussian) -> torch.Tensor:
    """Eigenvalues d_i² of L_S⁻¹ Σ_T L_S⁻ᵀ, the teacher covariance seen from the whitened student (footnote 1)."""
    whitened = torch.linalg.solve_triangular(student.scale_tril(), teacher.scale_tril(), upper=False)
    return torch.linalg.svdvals(whitened).pow(2).flip(0)  # ascending


# ----------------------------------------------------------------------------- losses


def reverse_kl_loss(student: TriangularGaussian, teacher: TriangularGaussian, z: torch.Tensor) -> torch.Tensor:
    """Monte Carlo reverse KL (Eq. 2): mean over z ~ N(0, I) of ``log q_S(S(z)) − log p_T(S(z))``.

    The student's density comes from the change of variables (Eq. 4); gradients reach the student through the
    sample (reparameterisation) and through log-det. Each term is 0 (up to rounding) when the student equals the
    teacher, not only their mean.
    """
    return (student.log_prob_of_latent(z) - teacher.log_prob(student.sample(z))).mean()


def z_reconstruction_loss(
    student: TriangularGaussian, teacher: TriangularGaussian, z: torch.Tensor, distance: str = "l2"
) -> torch.Tensor:
    """z-reconstruction ``d(z, T(S(z)))``: the student encodes, the frozen teacher's inverse T decodes (§4, item 1)."""
    return losses.distance(teacher.inverse(student.sample(z)), z, distance)


def x_reconstruction_loss(
    student: TriangularGaussian, teacher: TriangularGaussian, x: torch.Tensor, distance: str = "l2"
) -> torch.Tensor:
    """x-reconstruction ``d(x, S(T(x)))`` on teacher samples x: teacher encodes, student decodes (§4, item 2)."""
    with torch.no_grad():
        z = teacher.inverse(x)
    return losses.distance(student.sample(z), x, distance)


def distillation_loss(
    method: str,
    student: TriangularGaussian,
    teacher: TriangularGaussian,
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


def sample_gradient(student: TriangularGaussian, teacher: TriangularGaussian, x: torch.Tensor) -> torch.Tensor:
    """g_x = ∇_x(log p_T(x) − log q_S(x)) per row, the student's parameters held fixed (Eq. 6's error factor)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        gap = teacher.log_prob(x) - student.log_prob(x)
        (grad,) = torch.autograd.grad(gap.sum(), x)
    return grad


def expansion_signal(student: TriangularGaussian, teacher: TriangularGaussian, z: torch.Tensor) -> torch.Tensor:
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
    teacher: TriangularGaussian,
    method: str,
    steps: int = 5000,
    batch: int = 64,
    lr: float = 0.005,
    distance: str = "l2",
    generator: torch.Generator | None = None,
    probe_generator: torch.Generator | None = None,
    probe_samples: int = 128,
    kl_every: int = 50,
) -> tuple[TriangularGaussian, dict]:
    """Distil ``teacher`` into a `TriangularGaussian` student (starting at N(0, I)) with Adam on ``method``.

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
    student = TriangularGaussian(teacher.dim, dtype=teacher.shift.dtype)
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
    out_dir, dims, steps, batch, lr, repeats, samples, seed, eval_samples, methods, distance, mean_value, prop1_samples
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
    log=print,
) -> dict:
    """The paper's Gaussian study (§3.2 and §4.1.1); writes figures, ``table.md`` and ``summary.json`` to ``out_dir``.

    Per dimension D: a teacher (`make_teacher`) and one student per method, trained from N(0, I) on the same
    minibatch stream (Figure 2: teacher log-likelihood of ``eval_samples`` teacher samples vs as many student
    samples); ``repeats`` reverse-KL runs, each with its own teacher (repeat 0 is Figure 2's), probed with
    ``samples`` fresh student samples before every update and after the last (Figure 3: P((x − μ)ᵀg_x > 0), mean over
    repeats × samples); Proposition 1 analytic vs Monte Carlo (``prop1_samples / repeats`` draws per eigenvalue set)
    for each repeat's teacher seen from N(μ, I) (the proposition's setting) and from its trained reverse-KL student
    (what the proposition predicts were that student centred at μ). Deterministic given ``seed`` (on one machine
    and thread count). ``summary["trends"]`` checks the paper's claims on the numbers.

    Arguments:
        out_dir: output folder (created when the study has finished; every setting is checked before any work by
            `check_study_settings`, and a non-finite training loss stops the study with an error).
        dims: the dimensions D (paper: 4, 16, 32, 64).
        steps, batch, lr: Adam updates, minibatch size, learning rate per student (paper: 5000, 64, 0.005).
        repeats, samples: reverse-KL runs and probes per update behind Figure 3 (paper: 8, 128).
        seed: seeds everything (teachers, minibatches, probes, evaluation, Monte Carlo).
        eval_samples: teacher and student samples per histogram (paper: 1000).
        methods: a subset of METHODS containing ``"reverse_kl"``.
        distance: ``"l2"`` or ``"l1"`` for the reconstruction losses.
        mean_value: the teacher mean μ = mean_value·1 (paper: 2).
        prop1_samples: Monte Carlo draws for Proposition 1, per dimension and block.
        log: progress printer.

    Files: ``figure2_loglik_histograms.png``, ``figure3_expansion_signal.png``, ``proposition1.png``, ``table.md``,
    ``summary.json``. Returns the summary.

    Example:
        >>> summary = run_gaussian_study("/tmp/gaussian_study", dims=(4,), steps=20, repeats=1, samples=8,
        ...                              eval_samples=50, prop1_samples=1000, log=lambda *_: None)
        >>> sorted(summary["dims"]["4"]["methods"])
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
            "dtype": "float64",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "dims": {},
    }
    curves, histograms = {}, {}
    for dim in dims:
        teachers = [make_teacher(dim, seeded_generator(seed, dim, 0, r), mean_value) for r in range(repeats)]
        teacher = teachers[0]
        evaluation = seeded_generator(seed, dim, 1)
        z = torch.randn(eval_samples, dim, generator=evaluation, dtype=torch.float64)
        teacher_ll = teacher.log_prob(teacher.sample(z))
        entry = {
            "teacher": {
                "loglik_teacher_samples": _stats(teacher_ll),
                "covariance_eigenvalues": relative_eigenvalues(TriangularGaussian(dim), teacher).tolist(),
            },
            "methods": {},
        }
        histograms[dim] = {"teacher": teacher_ll}
        students = {}
        for method in methods:
            t0 = time.perf_counter()
            probe = seeded_generator(seed, dim, 3, 0) if method == "reverse_kl" else None
            student, record = train_student(
                teacher, method, steps, batch, lr, distance, seeded_generator(seed, dim, 2, 0), probe, samples
            )
            students[method] = (student, record)
            z = torch.randn(eval_samples, dim, generator=evaluation, dtype=torch.float64)
            student_ll = teacher.log_prob(student.sample(z))
            histograms[dim][method] = student_ll
            loss_steps, loss_values = _subsample(record["loss"], max(1, steps // 100))
            entry["methods"][method] = {
                "loglik_student_samples": _stats(student_ll),
                "vs_teacher_samples": _compare(student_ll, teacher_ll),
                "kl_student_teacher": gaussian_kl(student, teacher).item(),
                "kl_teacher_student": gaussian_kl(teacher, student).item(),
                "final_loss_mean_last_10pct": float(np.mean(record["loss"][-max(1, steps // 10) :])),
                "kl_history": {"steps": record["kl_steps"], "kl_student_teacher": record["kl"]},
                "loss_history": {"steps": loss_steps, "loss": loss_values},
                "wall_seconds": time.perf_counter() - t0,
            }
            log(
                f"D={dim:3d} {method:10s} KL(q‖p)={entry['methods'][method]['kl_student_teacher']:.4f} "
                f"KL(p‖q)={entry['methods'][method]['kl_teacher_student']:.4f} mean log p_T: student "
                f"{student_ll.mean().item():.2f} teacher {teacher_ll.mean().item():.2f} "
                f"({time.perf_counter() - t0:.1f} s)"
            )
        # Figure 3: repeats of reverse-KL training, each with its own teacher (repeat 0 reuses the run above)
        runs = [students["reverse_kl"]]
        for r in range(1, repeats):
            runs.append(
                train_student(
                    teachers[r],
                    "reverse_kl",
                    steps,
                    batch,
                    lr,
                    distance,
                    seeded_generator(seed, dim, 2, r),
                    seeded_generator(seed, dim, 3, r),
                    samples,
                )
            )
        curve = np.mean([record["expansion"] for _, record in runs], axis=0)  # [steps + 1]
        curves[dim] = curve
        tail = max(1, steps // 10)
        peak = int(np.argmax(curve))
        curve_steps, curve_values = _subsample(curve.tolist(), max(1, steps // 500))
        entry["expansion"] = {
            "start": float(curve[0]),
            "peak": float(curve[peak]),
            "peak_step": peak,
            "end": float(curve[-1]),
            "end_mean_last_10pct": float(curve[-tail:].mean()),
            "probes_per_step": repeats * samples,
            "final_kl_student_teacher_per_repeat": [gaussian_kl(s, t).item() for (s, _), t in zip(runs, teachers)],
            "curve": {"steps": curve_steps, "probability": curve_values},
        }
        # Proposition 1, analytic vs Monte Carlo: each repeat's teacher seen from N(μ, I) (the proposition's own
        # setting), and from its trained reverse-KL student (the prediction were that student centred at μ)
        prop = seeded_generator(seed, dim, 4)
        each = max(1, prop1_samples // repeats)
        standard = _proposition1_block([relative_eigenvalues(TriangularGaussian(dim), t) for t in teachers], each, prop)
        trained = _proposition1_block([relative_eigenvalues(s, t) for (s, _), t in zip(runs, teachers)], each, prop)
        trained["measured_expansion_end"] = float(curve[-1])
        entry["proposition1"] = {"teacher_vs_standard_student": standard, "trained_reverse_kl_students": trained}
        log(
            f"D={dim:3d} expansion P: start {curve[0]:.3f} peak {curve[peak]:.3f} (step {peak}) end "
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
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(study_table(summary))
    _dump_json(summary, os.path.join(out_dir, "summary.json"))
    return summary


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
    """The paper's two claims, checked on the numbers (thresholds stated in the keys' values)."""
    dims = sorted(int(d) for d in summary["dims"])
    ends = [summary["dims"][str(d)]["expansion"]["end_mean_last_10pct"] for d in dims]
    trends = {
        "expansion_end_by_dim": dict(zip(map(str, dims), ends)),
        "expansion_end_decreases_with_dim": all(a > b for a, b in itertools.pairwise(ends)),
    }
    top = summary["dims"][str(dims[-1])]["methods"]
    if "reverse_kl" in top:
        c = top["reverse_kl"]["vs_teacher_samples"]
        trends["reverse_kl_above_teacher_at_max_dim"] = c["z_score"] > 3  # student mean log p_T higher, > 3 s.e.
    if "x_rec" in top:
        c = top["x_rec"]["vs_teacher_samples"]
        trends["x_rec_matches_teacher_at_max_dim"] = abs(c["z_score"]) < 3 and c["ks_pvalue"] > 0.01
    trends["proposition1_max_abs_z_score"] = max(
        e["proposition1"][k]["max_abs_z_score"]
        for e in summary["dims"].values()
        for k in ("teacher_vs_standard_student", "trained_reverse_kl_students")
    )
    trends["proposition1_analytic_matches_monte_carlo"] = trends["proposition1_max_abs_z_score"] < 4
    return trends


def study_table(summary: dict) -> str:
    """Markdown table of the study's numbers (per dimension)."""
    methods = summary["settings"]["methods"]
    head = (
        "| D | P(expansion) start / peak / end | mean log p_T: teacher samples | "
        + " | ".join(f"{METHOD_LABELS[m]} samples" for m in methods)
        + " | KL(q‖p): "
        + " / ".join(methods)
        + " | Prop. 1 analytic / MC (standard student) "
        "| Prop. 1 analytic / MC (trained RKL students) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d, e in sorted(summary["dims"].items(), key=lambda kv: int(kv[0])):
        x, p = e["expansion"], e["proposition1"]
        s, t = p["teacher_vs_standard_student"], p["trained_reverse_kl_students"]
        cells = [
            d,
            f"{x['start']:.3f} / {x['peak']:.3f} / {x['end_mean_last_10pct']:.3f}",
            (
                f"{e['teacher']['loglik_teacher_samples']['mean']:.2f} ± "
                f"{e['teacher']['loglik_teacher_samples']['std']:.2f}"
            ),
        ]
        cells += [
            f"{e['methods'][m]['loglik_student_samples']['mean']:.2f} ± "
            f"{e['methods'][m]['loglik_student_samples']['std']:.2f} "
            f"(Δ {e['methods'][m]['vs_teacher_samples']['mean_difference']:+.2f}, "
            f"z {e['methods'][m]['vs_teacher_samples']['z_score']:+.1f})"
            for m in methods
        ]
        # max(…, 0): a converged student's closed-form KL can round to −1e-14
        cells.append(" / ".join(f"{max(e['methods'][m]['kl_student_teacher'], 0.0):.3f}" for m in methods))
        cells.append(f"{s['analytic_mean']:.4f} / {s['monte_carlo_mean']:.4f} ± {s['monte_carlo_stderr']:.4f}")
        cells.append(f"{t['analytic_mean']:.4f} / {t['monte_carlo_mean']:.4f} ± {t['monte_carlo_stderr']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    s = summary["settings"]
    lines.append("")
    lines.append(
        f"Settings: steps {s['steps']}, batch {s['batch']}, Adam lr {s['lr']}, {s['repeats']} repeats × "
        f"{s['samples']} probes per step, {s['eval_samples']} evaluation samples, distance {s['distance']}, "
        f"seed {s['seed']}. 'end' = mean over the last 10% of updates. ± after log-likelihoods is the std "
        "over samples (Δ: student − teacher-sample mean, z: Δ over its standard error); after Monte Carlo "
        "estimates, the standard error. Proposition 1 columns: means over the repeats' teachers."
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
    fig.suptitle("Teacher log-likelihood of teacher vs student samples (paper Fig. 2)", fontsize=10)
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
