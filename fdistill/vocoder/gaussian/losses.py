"""The study's three distillation losses of a student against a frozen teacher, and one minibatch of each.

    reverse KL        E_z[ log q_S(S(z)) − log p_T(S(z)) ]      z ~ N(0, I), reparameterised Monte Carlo (Eq. 2)
    z-reconstruction  d(z, T(S(z)))                              z ~ N(0, I)                         (§4, item 1)
    x-reconstruction  d(x, S(T(x)))                              x ~ p_T (teacher samples)           (§4, item 2)

``d`` is ``fdistill.vocoder.losses.distance``: the mean over batch and dimensions of (a − b)² (``l2``, the squared
l2 distance divided by the dimension) or |a − b| (``l1``).
"""

from __future__ import annotations

import torch

from fdistill.errors import InputError

from .. import losses
from .models import AffineGaussian

METHODS = ("reverse_kl", "z_rec", "x_rec")
METHOD_LABELS = {"reverse_kl": "reverse KL", "z_rec": "z-reconstruction", "x_rec": "x-reconstruction"}


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
    raise InputError(f"unknown method {method!r}; choose one of {METHODS}")
