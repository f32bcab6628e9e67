"""A whole diffusion-distillation experiment from one recipe: teacher → offline pairs → every student over every
seed → one evaluation of every sampler at its step counts → ``table.md``, ``results.json`` and plots.

Samplers evaluated (NFE = network evaluations per sample):

- ``teacher`` — the conditional teacher (w = 0) with DDIM at each of ``eval_steps`` (NFE = K);
- ``guided teacher`` — two-call classifier-free guidance at ``guidance_weight`` (NFE = 2K);
- ``kd``, ``vsd``, ``dmd`` — one-step students (NFE = 1);
- ``pd`` — the student of each PD round at its K (NFE = K);
- ``guidance`` — the w-input student at ``guidance_weight`` (NFE = K), after guidance distillation at
  ``pd_start_steps`` and after each of its PD rounds.

The parts: `config` (the settings, checked), `distillers` (one registered `Distiller` a method, returning
`Sampler` values), `pipeline` (the stages and their order), `evaluation` (every sampler of a seed, scored) and
`report` (table.md, results.json, plots). The training loops live in `fdistill.diffusion.methods` (``methods``
here), where the distillers look them up when they run.
"""

from .. import methods
from ..methods import (
    Budget,
    distill_guidance,
    distill_kd,
    distill_pd_round,
    distill_vsd,
    guided_x0,
    predict_x0,
    train_teacher,
)
from .config import DATASETS, DiffusionExperimentConfig, load_experiment_config
from .distillers import DISTILLERS, METHODS, Distiller, Sampler, StudentJob, get_distiller, register_distiller
from .evaluation import Scorer, eval_inputs, evaluate_samplers, run_sampler
from .pipeline import Problem, distill, get_pairs, get_teacher, needs_pairs, run_experiment, student_settings
from .report import Measured, claims, summarise, table_markdown, write_report

__all__ = [
    "DATASETS",
    "DISTILLERS",
    "METHODS",
    "Budget",
    "DiffusionExperimentConfig",
    "Distiller",
    "Measured",
    "Problem",
    "Sampler",
    "Scorer",
    "StudentJob",
    "claims",
    "distill",
    "distill_guidance",
    "distill_kd",
    "distill_pd_round",
    "distill_vsd",
    "eval_inputs",
    "evaluate_samplers",
    "get_distiller",
    "get_pairs",
    "get_teacher",
    "guided_x0",
    "load_experiment_config",
    "methods",
    "needs_pairs",
    "predict_x0",
    "register_distiller",
    "run_experiment",
    "run_sampler",
    "student_settings",
    "summarise",
    "table_markdown",
    "train_teacher",
    "write_report",
]
