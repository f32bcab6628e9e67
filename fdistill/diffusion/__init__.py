"""Few-step diffusion distillation on diffusers' building blocks (lecture 09 "Faster Sampling: Distillation"):
knowledge distillation (KD), progressive distillation (PD), VSD/DMD and guidance distillation, with the pure DDIM
map `ddim_step` and its inverse `progressive_target` that every method and test uses.
"""

from fdistill.errors import require_extra

require_extra("diffusion", "diffusers", "sklearn")  # before importing them: one clear error

from .ddim import ddim_sample, ddim_step, progressive_target
from .schedule import CLEAN, NoiseSchedule

__all__ = ["CLEAN", "NoiseSchedule", "ddim_sample", "ddim_step", "progressive_target"]
