"""The settings of a diffusion-distillation experiment (`DiffusionExperimentConfig`), checked once when made, and
`load_experiment_config` (a recipe plus ``key=value`` overrides)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import fdistill.checks as checks
from fdistill.errors import invalid

from .distillers import DISTILLERS, METHODS

DATASETS = ("toy2d", "digits")

# Settings that must be whole numbers ≥ 1.
_COUNTS = (
    "num_train_timesteps",
    "hidden",
    "depth",
    "layers_per_block",
    "teacher_steps",
    "batch_size",
    "toy_train_size",
    "kd_steps",
    "kd_teacher_steps",
    "num_pairs",
    "pairs_shard_size",
    "pd_start_steps",
    "pd_steps_per_round",
    "vsd_steps",
    "fake_updates",
    "guidance_steps",
    "num_eval_samples",
    "feature_epochs",
    "threads",
)
# The settings a trained teacher depends on, besides its network's (`DiffusionExperimentConfig.teacher_settings`).
_TEACHER_SETTINGS = (
    "dataset",
    "teacher_seed",
    "num_train_timesteps",
    "beta_schedule",
    "zero_terminal_snr",
    "teacher_steps",
    "batch_size",
    "learning_rate",
    "ema_decay",
    "label_dropout",
    "max_grad_norm",
    "split_seed",
)


@dataclass
class DiffusionExperimentConfig:
    """Every setting of a diffusion experiment (recipe keys; ``key=value`` overrides)."""

    dataset: str = "toy2d"  # toy2d (ring of 8 Gaussians, closed-form density) or digits (sklearn 8×8)
    output_dir: str = "diffusion_output"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    student_classes: str = "conditional"  # or "unconditional": KD/PD/VSD/DMD students and their rows use "no class"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # student seeds (and evaluation noise)
    teacher_seed: int = 0  # one teacher shared by every student seed
    # noise schedule (diffusers DDPMScheduler)
    num_train_timesteps: int = 1024  # divisible by every power-of-two step count, so PD grids nest exactly
    beta_schedule: str = "squaredcos_cap_v2"
    zero_terminal_snr: bool = True
    # networks
    hidden: int = 128  # toy MLP width
    depth: int = 3  # toy MLP residual blocks
    channels: list[int] = field(default_factory=lambda: [32, 64])  # digits UNet2DModel block_out_channels
    layers_per_block: int = 1
    # teacher
    teacher_steps: int = 4000
    batch_size: int = 128
    learning_rate: float = 1e-3
    ema_decay: float = 0.999
    label_dropout: float = 0.1  # classifier-free guidance needs the unconditional model too
    max_grad_norm: float = 1.0
    toy_train_size: int = 4000  # toy: a fixed training set drawn from the true density
    # students (same batch size; each method its own number of optimiser steps)
    student_learning_rate: float = 1e-4
    kd_steps: int = 1000
    kd_teacher_steps: int = 64  # the DDIM rollout the KD/DMD pairs come from
    num_pairs: int = 4000
    pairs_shard_size: int = 1000
    pd_start_steps: int = 16  # the teacher's DDIM steps of the first PD round (a power of two)
    pd_steps_per_round: int = 500
    vsd_steps: int = 500
    fake_learning_rate: float = 1e-4
    fake_updates: int = 1
    dmd_regression_weight: float = 0.25
    guidance_steps: int = 500
    guidance_weight: float = 2.0  # w of the guided samplers evaluated
    guidance_w_max: float = 4.0  # the guidance student learns w ∈ [0, w_max]
    # evaluation
    eval_steps: list[int] = field(default_factory=lambda: [64, 16, 8, 4, 2, 1])
    num_eval_samples: int = 2000
    feature_epochs: int = 30  # digits classifier (fdistill.flows.metrics)
    split_seed: int = 0
    threads: int = 1  # torch CPU threads: these networks are tiny, one thread is nearly as fast and leaves cores free

    def __post_init__(self):
        self._check_choices()
        self._check_numbers()
        self._check_rates()
        self._check_step_counts()
        if self.guidance_weight > self.guidance_w_max:
            raise invalid("guidance_weight", self.guidance_weight, f"must be ≤ guidance_w_max={self.guidance_w_max}.")
        if self.num_eval_samples < 10:
            raise invalid("num_eval_samples", self.num_eval_samples, "give at least 10.")

    def _check_choices(self) -> None:
        checks.choice("dataset", self.dataset, DATASETS)
        checks.choice("student_classes", self.student_classes, ("conditional", "unconditional"))
        checks.output_folder("output_dir", self.output_dir)
        checks.names("methods", self.methods, tuple(DISTILLERS))
        checks.whole_numbers("seeds", self.seeds, low=0, example="[0, 1, 2]")
        for name in ("teacher_seed", "split_seed"):
            checks.whole_number(name, getattr(self, name), low=0)

    def _check_numbers(self) -> None:
        for name in _COUNTS:
            checks.whole_number(name, getattr(self, name))
        checks.whole_numbers("channels", self.channels, example="[32, 64]", distinct=False)
        checks.whole_numbers("eval_steps", self.eval_steps, example="[64, 16, 8, 4, 2, 1]")
        for name in ("learning_rate", "student_learning_rate", "fake_learning_rate", "max_grad_norm", "guidance_w_max"):
            checks.number(name, getattr(self, name))
        for name in ("dmd_regression_weight", "guidance_weight"):
            checks.number(name, getattr(self, name), allow_low=True)

    def _check_rates(self) -> None:
        """EMA decay and label dropout in [0, 1); guidance needs label dropout (an unconditional teacher)."""
        checks.number("ema_decay", self.ema_decay, allow_low=True)
        checks.number("label_dropout", self.label_dropout, allow_low=True)
        if self.ema_decay >= 1 or self.label_dropout >= 1:
            raise invalid("ema_decay/label_dropout", (self.ema_decay, self.label_dropout), "each must be in [0, 1).")
        if "guidance" in self.methods and self.label_dropout == 0:
            raise invalid(
                "label_dropout", 0, "guidance needs an unconditional teacher: give a value in (0, 1), e.g. 0.1."
            )

    def _check_step_counts(self) -> None:
        """PD halves a power of two down to 1, on grids of the training timesteps that nest exactly."""
        if self.pd_start_steps & (self.pd_start_steps - 1) or self.pd_start_steps < 2:
            raise invalid(
                "pd_start_steps",
                self.pd_start_steps,
                "progressive distillation halves the steps each round down to 1: give a power of two ≥ 2, e.g. 16.",
            )
        steps = [self.pd_start_steps, self.kd_teacher_steps, *self.eval_steps]
        if max(steps) > self.num_train_timesteps:
            raise invalid(
                "num_train_timesteps", self.num_train_timesteps, f"must be ≥ every step count ({max(steps)})."
            )
        if self.num_train_timesteps % self.pd_start_steps:
            raise invalid(
                "num_train_timesteps",
                self.num_train_timesteps,
                f"must be divisible by pd_start_steps="
                f"{self.pd_start_steps} so that the PD grids nest exactly (e.g. 1024).",
            )

    def teacher_settings(self) -> dict:
        """The settings the shared teacher depends on (its stage refuses a teacher made with others)."""
        keys = _TEACHER_SETTINGS
        keys += ("hidden", "depth", "toy_train_size") if self.dataset == "toy2d" else ("channels", "layers_per_block")
        return {k: getattr(self, k) for k in keys}

    def pd_rounds(self) -> list[int]:
        """The student step counts of the PD rounds: pd_start_steps/2, …, 1."""
        return [self.pd_start_steps >> i for i in range(1, int(math.log2(self.pd_start_steps)) + 1)]


def load_experiment_config(path: str | None, overrides: list[str] | None = None) -> DiffusionExperimentConfig:
    """The recipe at ``path`` (or the defaults) with ``key=value`` ``overrides``, checked."""
    from fdistill.yaml_config import load_dataclass_config

    return load_dataclass_config(DiffusionExperimentConfig, path, overrides)
