"""Normalizing-flow distillation (Walton et al., "Distilling Normalizing Flows", 2025): Glow/MAF/IAF teachers and
students with every intermediate latent exposed, the NLL/LKD/ILKD/SKD losses, offline data, metrics and the
experiment runner behind ``fdistill flows``. Independent of the language-model trainer."""

from fdistill.errors import require_extra

require_extra("flows", "sklearn")  # before importing them: one clear error

from .data import FlowData, bits_per_dim, load_flow_data
from .experiment import FlowExperimentConfig, load_experiment_config, run_experiment
from .losses import (
    LossWeights,
    align_paths,
    distillation_loss,
    ilkd_loss,
    latent_distance,
    lkd_loss,
    nll_loss,
    skd_loss,
)
from .models import FLOW_CLASSES, IAF, MAF, Flow, FlowOutput, Glow, build_flow, load_flow, save_flow
from .training import FlowTrainingArguments, TrainResult, evaluate_nll, train_flow

__all__ = [
    "FLOW_CLASSES",
    "IAF",
    "MAF",
    "Flow",
    "FlowData",
    "FlowExperimentConfig",
    "FlowOutput",
    "FlowTrainingArguments",
    "Glow",
    "LossWeights",
    "TrainResult",
    "align_paths",
    "bits_per_dim",
    "build_flow",
    "distillation_loss",
    "evaluate_nll",
    "ilkd_loss",
    "latent_distance",
    "lkd_loss",
    "load_experiment_config",
    "load_flow",
    "load_flow_data",
    "nll_loss",
    "run_experiment",
    "save_flow",
    "skd_loss",
    "train_flow",
]
