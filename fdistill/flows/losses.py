"""Losses for normalizing-flow distillation: NLL, LKD, ILKD, SKD and their weighted combination.

With teacher flow ``f_T`` (frozen) and student ``f_S``, for data x and base draws u ~ N(0, T²I):

    L_NLL  = −log p_S(x) / D                                   (nats per dimension)
    L_LKD  = d(f_S(x), f_T(x))                                 (final latents, same x)
    L_ILKD = mean_{(i, j) ∈ A} d(h_S^i(x), h_T^j(x))           (aligned intermediate states, A = alignment map)
    L_SKD  = d(f_S⁻¹(u), f_T⁻¹(u))                             (same base draw through both inverses)
    L      = λ_NLL·L_NLL + λ_LKD·L_LKD + λ_ILKD·L_ILKD + λ_SKD·L_SKD

``d`` is the mean absolute (``l1``, the paper's text) or mean squared (``l2``, the authors' code) difference per
element. The NLL is per dimension so that λ_NLL = 0.9, λ_ILKD = 0.1 (the paper's default) weighs two terms of the
same scale. SKD shares one u across all levels of teacher and student (the flows fold their split priors into u).

Reference: Walton et al., "Distilling Normalizing Flows", 2025 (arXiv:2506.21003), §3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fdistill.errors import InputError, invalid

from .models import Flow, FlowOutput

DISTANCES = ("l1", "l2")


def latent_distance(a: torch.Tensor, b: torch.Tensor, distance: str = "l1") -> torch.Tensor:
    """Mean per-element distance between two batches of latents: ``mean|a − b|`` (l1) or ``mean (a − b)²`` (l2)."""
    if a.shape != b.shape:
        raise InputError(f"latent shapes differ: {list(a.shape)} vs {list(b.shape)}; align matching levels only")
    diff = a - b
    if distance == "l1":
        return diff.abs().mean()
    if distance == "l2":
        return diff.pow(2).mean()
    raise InputError(f"unknown distance {distance!r}; choose one of {DISTANCES}")


def nll_loss(out: FlowOutput) -> torch.Tensor:
    """Negative log-likelihood in nats per dimension, averaged over the batch."""
    return -out.log_prob.mean() / out.latent.shape[1]


def align_paths(student_depths: list[int], teacher_depths: list[int], mode: str = "levels") -> list[tuple[int, int]]:
    """The ILKD alignment map: pairs ``(student path index, teacher path index)``.

    Levels must match (their states have different shapes otherwise). Within level ℓ, with K_S student and K_T
    teacher steps, student step j (1-based) is matched to teacher step ``⌊j·K_T/K_S + ½⌋``:
    ``mode="uniform"`` matches every student step this way; ``mode="levels"`` only each level's last step (Glow's
    level ends — every squeeze after the first, plus the final layer). MAF/IAF have one level, so ``uniform`` with a
    teacher of 3× the blocks matches student block j to teacher block 3j.
    """
    if len(student_depths) != len(teacher_depths):
        raise InputError(
            f"ILKD needs the same number of levels: student has {len(student_depths)}, teacher "
            f"{len(teacher_depths)}; build the student with levels={len(teacher_depths)}"
        )
    if mode not in ("levels", "uniform"):
        raise InputError(f"unknown alignment mode {mode!r}; choose 'levels' or 'uniform'")
    pairs, s_offset, t_offset = [], 0, 0
    for ks, kt in zip(student_depths, teacher_depths):
        if ks > kt:
            raise InputError(
                f"the student has more steps ({ks}) than the teacher ({kt}) in a level; ILKD aligns a "
                "shallower student to a deeper teacher"
            )
        steps = range(1, ks + 1) if mode == "uniform" else [ks]
        pairs += [(s_offset + j - 1, t_offset + math.floor(j * kt / ks + 0.5) - 1) for j in steps]
        s_offset, t_offset = s_offset + ks, t_offset + kt
    return pairs


def lkd_loss(student_out: FlowOutput, teacher_out: FlowOutput, distance: str = "l1") -> torch.Tensor:
    """Latent knowledge distillation: distance between the final latents of the same inputs."""
    return latent_distance(student_out.latent, teacher_out.latent.detach(), distance)


def ilkd_loss(
    student_out: FlowOutput, teacher_out: FlowOutput, alignment: list[tuple[int, int]], distance: str = "l1"
) -> torch.Tensor:
    """Intermediate latent knowledge distillation: mean distance over the aligned path pairs."""
    if not alignment:
        raise InputError("ILKD needs a non-empty alignment map (see align_paths)")
    terms = [latent_distance(student_out.path[i], teacher_out.path[j].detach(), distance) for i, j in alignment]
    return torch.stack(terms).mean()


def skd_loss(
    student: Flow,
    teacher: Flow,
    num_samples: int,
    temperature: float = 0.7,
    distance: str = "l1",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Synthesized knowledge distillation: one base draw ``u ~ N(0, T²I)`` through both inverses, compared."""
    device = next(student.parameters()).device
    u = temperature * torch.randn(num_samples, student.num_features, generator=generator, device=device)
    with torch.no_grad():
        target = teacher.inverse(u)
    return latent_distance(student.inverse(u), target, distance)


@dataclass
class LossWeights:
    """λ per term; the paper's default for ILKD is ``LossWeights(nll=0.9, ilkd=0.1)``."""

    nll: float = 1.0
    lkd: float = 0.0
    ilkd: float = 0.0
    skd: float = 0.0

    def __post_init__(self):
        for name in ("nll", "lkd", "ilkd", "skd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise invalid(
                    f"loss weight {name}",
                    value,
                    "give a finite number ≥ 0, e.g. nll=0.9, ilkd=0.1.",
                    problem="must be ≥ 0",
                )
        if self.nll + self.lkd + self.ilkd + self.skd == 0:
            raise InputError("all loss weights are zero; set at least one of nll, lkd, ilkd, skd")

    @property
    def needs_teacher(self) -> bool:
        """Whether any distillation term (LKD, ILKD, SKD) has a weight, so a teacher is needed."""
        return self.lkd > 0 or self.ilkd > 0 or self.skd > 0


def distillation_loss(
    student: Flow,
    x: torch.Tensor,
    weights: LossWeights,
    teacher: Flow | None = None,
    alignment: list[tuple[int, int]] | None = None,
    distance: str = "l1",
    skd_temperature: float = 0.7,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The weighted objective and its terms (each term only computed when its weight is > 0).

    Returns ``{"loss": L, "nll": ..., "lkd": ..., "ilkd": ..., "skd": ...}`` (absent terms omitted).
    """
    if weights.needs_teacher and teacher is None:
        raise InputError("LKD/ILKD/SKD weights are set but no teacher was given")
    student_out = student(x)
    terms = {"nll": nll_loss(student_out)}
    if weights.lkd or weights.ilkd:
        with torch.no_grad():
            teacher_out = teacher(x)
        if weights.lkd:
            terms["lkd"] = lkd_loss(student_out, teacher_out, distance)
        if weights.ilkd:
            pairs = alignment if alignment is not None else align_paths(student.depths, teacher.depths)
            terms["ilkd"] = ilkd_loss(student_out, teacher_out, pairs, distance)
    if weights.skd:
        terms["skd"] = skd_loss(student, teacher, x.shape[0], skd_temperature, distance, generator)
    terms["loss"] = sum(getattr(weights, name) * value for name, value in terms.items())
    return terms
