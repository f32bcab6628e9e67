"""fdistill: sequence-level knowledge distillation by f-divergence minimisation (f-DISTILL) for transformers."""

from fdistill.divergences import exact_js_mixture_weight, f_divergence_loss, step_divergence
from fdistill.lm.config import DistillArguments, FDistillConfig
from fdistill.lm.trainer import FDistillMixin, FDistillTrainer

__version__ = "0.1.0"

__all__ = [
    "DistillArguments",
    "FDistillConfig",
    "FDistillMixin",
    "FDistillTrainer",
    "exact_js_mixture_weight",
    "f_divergence_loss",
    "step_divergence",
    "__version__",
]
