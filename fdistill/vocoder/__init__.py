"""Probability density distillation (Huang et al., "Probability distillation: a caveat and alternatives", 2019):
the paper's Gaussian study (`fdistill.vocoder.gaussian`: reverse KL vs z-/x-reconstruction, the expansion signal,
Proposition 1) and the audio experiment (`audio`, `wavenet`, `speech`, `losses`) behind ``fdistill vocoder``.
Independent of the language-model trainer."""

from fdistill.errors import require_extra

require_extra("vocoder", "scipy", "soundfile", "sklearn")  # before importing them: one clear error

from .audio import AudioExperimentConfig, load_audio_config, run_audio_experiment
from .gaussian import (
    METHODS,
    TriangularGaussian,
    distillation_loss,
    expansion_signal,
    gaussian_kl,
    make_teacher,
    proposition1_monte_carlo,
    proposition1_probability,
    relative_eigenvalues,
    reverse_kl_loss,
    run_gaussian_study,
    sample_gradient,
    study_table,
    train_student,
    x_reconstruction_loss,
    z_reconstruction_loss,
)

__all__ = [
    "AudioExperimentConfig",
    "load_audio_config",
    "run_audio_experiment",
    "METHODS",
    "TriangularGaussian",
    "distillation_loss",
    "expansion_signal",
    "gaussian_kl",
    "make_teacher",
    "proposition1_monte_carlo",
    "proposition1_probability",
    "relative_eigenvalues",
    "reverse_kl_loss",
    "run_gaussian_study",
    "sample_gradient",
    "study_table",
    "train_student",
    "x_reconstruction_loss",
    "z_reconstruction_loss",
]
