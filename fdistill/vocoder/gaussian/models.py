"""The Gaussians of the study: a frozen Gaussian teacher and an affine Gaussian student, their closed-form KL and
the eigenvalues the study records.

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
"""

from __future__ import annotations

import torch
from torch import nn

from fdistill import checks
from fdistill.errors import InputError
from fdistill.flows.models import standard_normal_log_prob

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
        """The scale matrix L of x = μ + L·z (lower-triangular, or full in the paper's parameterisation)."""
        raise NotImplementedError

    def log_abs_det(self) -> torch.Tensor:
        """``log |det L|`` of the scale matrix."""
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
            raise InputError("scale_tril needs a positive diagonal (use the Cholesky factor of the covariance)")
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
