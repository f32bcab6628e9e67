"""The distillation methods of a diffusion experiment, each one registered `Distiller`: the settings its students
depend on, the step counts it samples with, and how it trains (or loads) them as `Sampler` values.

``DiffusionExperimentConfig.methods``, ``fdistill diffusion distill --method`` and ``sample --steps`` read this
registry. Built in, in the order an experiment runs them:

- ``kd`` — one-step student regressed on the offline (noise → teacher rollout) pairs (`methods.distill_kd`);
- ``pd`` — progressive distillation, one student per round halving the steps down to 1 (`methods.distill_pd_round`);
- ``vsd`` / ``dmd`` — one-step generator with a fake score; DMD adds the pairs' regression (`methods.distill_vsd`);
- ``guidance`` — a w-input student matching the two-call guided teacher in one call, then its PD rounds
  (`methods.distill_guidance`).

The training loops are looked up on `fdistill.diffusion.methods` when called (a test replaces them there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fdistill.errors import invalid
from fdistill.registry import register

from .. import methods
from ..methods import Budget

if TYPE_CHECKING:
    import torch

    from .config import DiffusionExperimentConfig
    from .pipeline import Problem


@dataclass
class Sampler:
    """One distilled sampler: its student network, the DDIM steps it samples with (its NFE), and its guidance
    weight (None: a plain sampler; a float: the w-input guidance student, given the requested classes)."""

    name: str
    steps: int
    net: torch.nn.Module
    w: float | None
    record: dict


@dataclass
class StudentJob:
    """One method × seed: what its students are distilled from, and how a stage of it is run.

    ``stage(name, settings, work)`` runs (or only loads) one resumable network stage: ``work() -> (net, record)``,
    returns ``(net, record)``.
    """

    config: DiffusionExperimentConfig
    problem: Problem
    teacher: torch.nn.Module
    seed: int
    tag: str  # the stage-name prefix, e.g. "pd_seed0"
    settings: dict  # the student stages' settings (`fdistill.diffusion.experiment.student_settings`)
    stage: Callable[[str, dict, Callable], tuple]
    pairs: dict | None = None
    log: Callable | None = print

    def budget(self, steps: int) -> Budget:
        """``steps`` optimiser steps at the students' batch size, learning rate and clipping."""
        c = self.config
        return Budget(steps, c.batch_size, c.student_learning_rate, c.max_grad_norm)


class Distiller:
    """A distillation method: the students it trains and the samplers they make.

    Class attributes (override in a subclass or set in ``__init__``):
        name: the ``methods`` value, the sampler rows' ``model``.
        settings: `DiffusionExperimentConfig` fields its students depend on besides the common ones.
        needs_pairs: whether it reads the offline (noise → teacher rollout) pairs.
        conditional_only: whether its student is class-conditional whatever ``student_classes`` says.
    """

    name: str = ""
    settings: tuple[str, ...] = ()
    needs_pairs: bool = False
    conditional_only: bool = False

    def step_counts(self, config: DiffusionExperimentConfig) -> list[int]:
        """The DDIM step counts of its samplers, in the order `distill` returns them."""
        return [1]

    def distill(self, job: StudentJob) -> list[Sampler]:
        """Train (or, with a loading ``job.stage``, load) the students of one seed: one `Sampler` a step count."""
        raise NotImplementedError


DISTILLERS: dict[str, Distiller] = {}


def register_distiller(distiller: Distiller, *, replace: bool = False) -> Distiller:
    """Make ``distiller`` available as ``DiffusionExperimentConfig(methods=[distiller.name])``; returns it."""
    return register(DISTILLERS, distiller, "distiller", replace=replace)


def get_distiller(name: str) -> Distiller:
    """The registered distiller ``name``, or one `InputError` listing the registered names."""
    if name not in DISTILLERS:
        raise invalid("method", name, f"choose one of {list(DISTILLERS)}.")
    return DISTILLERS[name]


def pd_rounds(job: StudentJob, name: str, start, w_max=None, w=None, unconditional=False) -> list[Sampler]:
    """The PD rounds from ``start`` (each round's student teaches the next): one `Sampler` a round."""
    out, current = [], start
    for steps in job.config.pd_rounds():
        budget = job.budget(job.config.pd_steps_per_round)
        current, record = job.stage(
            f"{job.tag}_{steps}steps",
            {**job.settings, "round_student_steps": steps},
            lambda teacher_now=current, steps=steps, budget=budget: methods.distill_pd_round(
                teacher_now,
                job.problem,
                steps,
                budget,
                job.seed,
                w_max,
                log=job.log,
                name=f"{name} round →{steps}",
                unconditional=unconditional,
            ),
        )
        out.append(Sampler(name, steps, current, w, record))
    return out


class KnowledgeDistillation(Distiller):
    """One-step student regressed on the offline pairs."""

    name, settings, needs_pairs = "kd", ("kd_steps", "kd_teacher_steps", "num_pairs"), True

    def distill(self, job: StudentJob) -> list[Sampler]:
        budget = job.budget(job.config.kd_steps)
        net, record = job.stage(
            job.tag,
            job.settings,
            lambda: methods.distill_kd(job.teacher, job.problem, job.pairs, budget, job.seed, job.log),
        )
        return [Sampler(self.name, 1, net, None, record)]


class ProgressiveDistillation(Distiller):
    """Progressive distillation: pd_start_steps/2, …, 1-step students, each from the last."""

    name, settings = "pd", ("pd_start_steps", "pd_steps_per_round")

    def step_counts(self, config: DiffusionExperimentConfig) -> list[int]:
        return config.pd_rounds()

    def distill(self, job: StudentJob) -> list[Sampler]:
        return pd_rounds(job, self.name, job.teacher, unconditional=job.config.student_classes == "unconditional")


class ScoreDistillation(Distiller):
    """VSD: a one-step generator following the teacher's score against a fake score of its own samples."""

    name, settings = "vsd", ("vsd_steps", "fake_learning_rate", "fake_updates")

    def regression_weight(self, config: DiffusionExperimentConfig) -> float:
        return 0.0

    def distill(self, job: StudentJob) -> list[Sampler]:
        c = job.config
        net, record = job.stage(
            job.tag,
            job.settings,
            lambda: methods.distill_vsd(
                job.teacher,
                job.problem,
                job.budget(c.vsd_steps),
                job.seed,
                c.fake_learning_rate,
                c.fake_updates,
                regression_weight=self.regression_weight(c),
                pairs=job.pairs,
                log=job.log,
                name=self.name,
                unconditional=c.student_classes == "unconditional",
            ),
        )
        return [Sampler(self.name, 1, net, None, record)]


class DistributionMatching(ScoreDistillation):
    """DMD: VSD plus ``dmd_regression_weight`` × the KD regression on the offline pairs."""

    name, needs_pairs = "dmd", True
    settings = ScoreDistillation.settings + ("dmd_regression_weight", "kd_teacher_steps", "num_pairs")

    def regression_weight(self, config: DiffusionExperimentConfig) -> float:
        return config.dmd_regression_weight


class GuidanceDistillation(Distiller):
    """A w-input student at pd_start_steps matching the two-call guided teacher, then its PD rounds."""

    name, conditional_only = "guidance", True
    settings = ("guidance_steps", "guidance_w_max", "pd_start_steps", "pd_steps_per_round")

    def step_counts(self, config: DiffusionExperimentConfig) -> list[int]:
        return [config.pd_start_steps, *config.pd_rounds()]

    def distill(self, job: StudentJob) -> list[Sampler]:
        c = job.config
        net, record = job.stage(
            job.tag + "_w",
            job.settings,
            lambda: methods.distill_guidance(
                job.teacher, job.problem, job.budget(c.guidance_steps), job.seed, c.guidance_w_max, job.log
            ),
        )
        first = Sampler(self.name, c.pd_start_steps, net, c.guidance_weight, record)
        return [first, *pd_rounds(job, self.name, net, c.guidance_w_max, c.guidance_weight)]


for _distiller in (
    KnowledgeDistillation(),
    ProgressiveDistillation(),
    ScoreDistillation(),
    DistributionMatching(),
    GuidanceDistillation(),
):
    register_distiller(_distiller)

METHODS = tuple(DISTILLERS)  # the built-in methods, in the order an experiment runs them
