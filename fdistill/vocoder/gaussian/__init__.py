"""The paper's Gaussian study of probability distillation: a Gaussian teacher, an affine Gaussian student,
distillation by reverse KL, z-reconstruction and x-reconstruction, the expansion signal, Proposition 1, and the study
behind ``fdistill vocoder gaussian`` (Figures 2 and 3 of the paper and a check of Proposition 1).

    models        the teacher and student Gaussians (two parameterisations), their closed-form KL and eigenvalues
    losses        reverse KL, z-reconstruction, x-reconstruction: one minibatch of each method
    proposition1  the expansion signal (§3.1) and Proposition 1, analytic (Imhof) and by Monte Carlo
    study         training a student, and the study over dimensions and repeats (`run_gaussian_study`)
    report        the study's tables, summary.json and figures

Every public name is importable from ``fdistill.vocoder.gaussian``.

Reference: Huang, Chen, Belilovsky, Courville et al., "Probability distillation: a caveat and alternatives"
(UAI 2019), §3 (Proposition 1, §3.2, Figures 2–3) and §4.1.1; Imhof, "Computing the distribution of quadratic
forms in normal variables", Biometrika 48 (1961).
"""

from .losses import (
    METHOD_LABELS,
    METHODS,
    distillation_loss,
    reverse_kl_loss,
    x_reconstruction_loss,
    z_reconstruction_loss,
)
from .models import (
    PARAMETERISATIONS,
    AffineGaussian,
    FullGaussian,
    TriangularGaussian,
    covariance_eigenvalues,
    gaussian_kl,
    make_teacher,
    relative_eigenvalues,
)
from .proposition1 import expansion_signal, proposition1_monte_carlo, proposition1_probability, sample_gradient
from .report import study_table, write_study
from .study import (
    GaussianStudySettings,
    check_study_settings,
    over_repeats,
    run_gaussian_study,
    seeded_generator,
    train_student,
)

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "PARAMETERISATIONS",
    "AffineGaussian",
    "TriangularGaussian",
    "FullGaussian",
    "make_teacher",
    "gaussian_kl",
    "relative_eigenvalues",
    "covariance_eigenvalues",
    "reverse_kl_loss",
    "z_reconstruction_loss",
    "x_reconstruction_loss",
    "distillation_loss",
    "sample_gradient",
    "expansion_signal",
    "proposition1_probability",
    "proposition1_monte_carlo",
    "seeded_generator",
    "train_student",
    "GaussianStudySettings",
    "check_study_settings",
    "run_gaussian_study",
    "over_repeats",
    "study_table",
    "write_study",
]
