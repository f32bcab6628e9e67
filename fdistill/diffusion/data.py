"""The two data sets of the diffusion experiments, both offline: a 2-D ring of 8 Gaussians whose density is known in
closed form, and scikit-learn's 8×8 digits scaled to [−1, 1) (class labels kept for conditioning).

Ring: ``p(x) = (1/8)·Σ_k N(x; μ_k, s²I)``, ``μ_k = r·(cos 2πk/8, sin 2πk/8)``; the class of a point is its mode k.
Digits: the 17 grey levels are dequantised afresh each batch, ``x = 2·((v + U[0,1))/17 − ½)`` — twice the flows
module's input scale, so `fdistill.flows` feature network reads ``x/2`` (its ``to_data_range``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fdistill.checks import finite_rows


@dataclass
class RingOfGaussians:
    """The toy: ``modes`` Gaussians of std ``std`` on a circle of radius ``radius``."""

    modes: int = 8
    radius: float = 1.0
    std: float = 0.08

    @property
    def means(self) -> torch.Tensor:
        angle = 2 * math.pi * torch.arange(self.modes, dtype=torch.float64) / self.modes
        return self.radius * torch.stack([angle.cos(), angle.sin()], 1)

    def sample(self, n: int, generator: torch.Generator, labels: torch.Tensor | None = None):
        """``(x [n, 2], labels [n])``; labels uniform unless given."""
        if labels is None:
            labels = torch.randint(0, self.modes, (n,), generator=generator)
        x = self.means[labels] + self.std * torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return x.float(), labels

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The true log-density ``log p(x)`` of points ``[n, 2]`` (float64)."""
        x = x.double()
        sq = torch.cdist(x, self.means).pow(2)
        log_normal = -sq / (2 * self.std**2) - math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(log_normal, 1) - math.log(self.modes)

    def nearest_mode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mode index, distance to it in units of std)`` per point."""
        dist = torch.cdist(x.double(), self.means)
        best = dist.min(1)
        return best.indices, best.values / self.std


@dataclass
class DigitsDiffusionData:
    """8×8 digits (train/validate/test as integer levels ``[N, 1, 8, 8]``) with labels."""

    flow_data: object  # fdistill.flows.data.FlowData (one loader for both modules)

    @property
    def train(self):
        return self.flow_data.train

    def labels(self, split: str) -> torch.Tensor:
        return self.flow_data.labels[split]

    def to_model(self, levels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Dequantised digits in [−1, 1)."""
        return 2 * self.flow_data.model_inputs(levels, generator)

    def sample(self, n: int, generator: torch.Generator, labels=None):
        """A batch of ``n`` training digits (random, with replacement) and their labels."""
        index = torch.randint(0, len(self.train), (n,), generator=generator)
        return self.to_model(self.train[index], generator), self.labels("train")[index]


def load_digits_diffusion(split_seed: int = 0) -> DigitsDiffusionData:
    from fdistill.flows.data import load_digits_data

    data = load_digits_data(split_seed)
    for split in ("train", "validate", "test"):
        finite_rows(f"digits ({split} split)", getattr(data, split))
    return DigitsDiffusionData(data)
