"""Sample-quality metrics of the diffusion experiments, computed the same way for teachers and students.

- Toy: the true-density log-likelihood ``mean log p(x̂)`` of samples, mode coverage (a mode is covered when at least
  a quarter of its expected share of samples lie within 3 std of it), the on-mode fraction, the class accuracy of
  conditional samples (nearest mode = requested class) and the energy distance to fresh true samples
  (Székely & Rizzo 2013): ``E = 2·E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖`` (U-statistics; 0 iff equal in law).
- Digits: digits-FD — a Fréchet distance on the features of the locally trained digits classifier that
  `fdistill.flows.metrics` defines (`train_digits_feature_net`, `frechet_distance`, `bootstrap_frechet`; imported,
  one definition), not Inception FID — with a real-vs-real floor, and that classifier's accuracy on the requested
  class.
- Both: per-sample MSE to the teacher's many-step output from the same noise, network evaluations (NFE) and
  samples/s.

A non-finite metric stays NaN/inf in the records and is printed as such, never turned into 0 or a missing cell.
"""

from __future__ import annotations

import torch


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased energy distance between samples ``a [n, d]`` and ``b [m, d]``."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    n, m = len(a), len(b)
    ab = torch.cdist(a, b).mean()
    aa = torch.cdist(a, a).sum() / (n * (n - 1))
    bb = torch.cdist(b, b).sum() / (m * (m - 1))
    return float(2 * ab - aa - bb)


def toy_metrics(samples: torch.Tensor, labels: torch.Tensor, ring, reference: torch.Tensor) -> dict:
    """Log-likelihood, coverage, on-mode fraction, class accuracy and energy distance of 2-D samples."""
    if not torch.isfinite(samples).all():
        nan = float("nan")
        return {
            "log_likelihood": nan,
            "modes_covered": nan,
            "on_mode": nan,
            "class_accuracy": nan,
            "energy_distance": nan,
        }
    mode, dist = ring.nearest_mode(samples)
    near = dist <= 3
    expected = len(samples) / ring.modes
    counts = torch.bincount(mode[near], minlength=ring.modes)
    return {
        "log_likelihood": float(ring.log_prob(samples).mean()),
        "modes_covered": int((counts >= 0.25 * expected).sum()),
        "on_mode": float(near.double().mean()),
        "class_accuracy": float(((mode == labels) & near).double().mean()),
        "energy_distance": energy_distance(samples, reference),
    }


class DigitsScorer:
    """digits-FD and class accuracy from the flows module's digits classifier (``net``, trained on [0, 1] images)."""

    def __init__(self, net, test_images: torch.Tensor):
        self.net = net
        self.reference = self.features(test_images)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features((x / 2 + 0.5).clamp(0, 1))

    @torch.no_grad()
    def __call__(self, samples: torch.Tensor, labels: torch.Tensor, bootstrap_rounds: int = 50) -> dict:
        from fdistill.flows.metrics import bootstrap_frechet

        if not torch.isfinite(samples).all():
            nan = float("nan")
            return {"digits_fd": nan, "fd_low": nan, "fd_high": nan, "class_accuracy": nan}
        fd, low, high = bootstrap_frechet(self.features(samples).numpy(), self.reference.numpy(), bootstrap_rounds)
        logits = self.net.classifier(self.features(samples))
        return {
            "digits_fd": fd,
            "fd_low": low,
            "fd_high": high,
            "class_accuracy": float((logits.argmax(1) == labels).double().mean()),
        }


def mse_to(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Per-sample squared error ``mean_b ‖x̂_b − x_b‖²`` to the teacher's output from the same noise."""
    return float((samples.double() - reference.double()).flatten(1).pow(2).sum(1).mean())
