"""fdistill: sequence-level knowledge distillation by f-divergence minimisation (f-DISTILL) for transformers."""

import logging

from fdistill._version import __version__
from fdistill.divergences import exact_js_mixture_weight, f_divergence_loss, step_divergence
from fdistill.lm.config import DistillArguments, FDistillConfig
from fdistill.lm.trainer import FDistillMixin, FDistillTrainer

# A library leaves logging to the application (Python's logging HOWTO, "Configuring Logging for a Library"): a
# NullHandler keeps fdistill's records from reaching logging's last-resort handler; the `fdistill` command attaches
# its own stderr handler (fdistill.cli).
logging.getLogger("fdistill").addHandler(logging.NullHandler())

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
