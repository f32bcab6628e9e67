"""Sample-quality and cost metrics for flow distillation: a Fréchet distance on a locally trained digits feature
network ("digits-FD" — not Inception FID, which cannot run offline), kernel MMD, parameter counts, sampling
throughput and sample grids.

Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017):

    FD = ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})

Unbiased squared MMD with a Gaussian kernel k(a, b) = exp(−‖a − b‖² / (2ℓ²)), ℓ the median pairwise distance of the
pooled sample (Gretton et al. 2012):

    MMD² = mean_{i≠j} k(a_i, a_j) + mean_{i≠j} k(b_i, b_j) − 2 mean_{i,j} k(a_i, b_j)

Why in-house: torchmetrics' FID/KID take images through Inception (or a network of ours, but only on images), while
these metrics must also run on tabular vectors and on precomputed features; each is a few lines of linear algebra.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from fdistill.errors import InputError
from fdistill.torch_utils import seeded

from .data import FlowData


class DigitsFeatureNet(nn.Module):
    """A small CNN classifier of 8×8 digits; its 64-d penultimate layer are the features of digits-FD."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 16, 64),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(64, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


def train_digits_feature_net(data: FlowData, epochs: int = 30, seed: int = 0) -> tuple[DigitsFeatureNet, float]:
    """Train the feature network on dequantised training digits in [0, 1]; returns it and its test accuracy."""
    if data.labels is None:
        raise InputError(f"the digits feature network needs labelled images; {data.name!r} has none")
    generator = torch.Generator().manual_seed(seed)
    with seeded(seed):  # the initial weights; the caller's RNG is left as it was
        net = DigitsFeatureNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(data.train), generator=generator)
        for batch in order.split(64):
            images = data.to_data_range(data.model_inputs(data.train[batch], generator))
            loss = nn.functional.cross_entropy(net(images), data.labels["train"][batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        test_images = data.to_data_range(data.model_inputs(data.test, torch.Generator().manual_seed(seed)))
        accuracy = (net(test_images).argmax(1) == data.labels["test"]).float().mean().item()
    return net, accuracy


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` ``[N, F]`` and ``b`` ``[M, F]``.

    ``tr (Σ_a Σ_b)^{1/2}`` is computed as ``tr (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}`` (same eigenvalues, symmetric), which
    stays real and stable when a covariance is singular (dead ReLU features).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def bootstrap_frechet(a: np.ndarray, b: np.ndarray, rounds: int = 100, seed: int = 0) -> tuple[float, float, float]:
    """FD and a 95% basic-bootstrap interval from resampling the rows of ``a`` (the generated set).

    Resampling with replacement inflates FD (duplicated rows shrink the covariance), so the percentile interval can
    miss the estimate; the basic interval ``[max(0, 2·FD − q97.5), 2·FD − q2.5]`` corrects for that shift.
    """
    rng = np.random.RandomState(seed)
    fd = frechet_distance(a, b)
    values = [frechet_distance(a[rng.randint(0, len(a), len(a))], b) for _ in range(rounds)]
    return fd, max(0.0, float(2 * fd - np.percentile(values, 97.5))), float(2 * fd - np.percentile(values, 2.5))


def mmd_rbf(a: torch.Tensor, b: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with a Gaussian kernel (median-heuristic bandwidth unless given)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    pooled = torch.cat([a, b])
    sq = torch.cdist(pooled, pooled).pow(2)
    if bandwidth is None:
        bandwidth = sq[sq > 0].median().sqrt().item()
    k = torch.exp(-sq / (2 * bandwidth**2))
    n, m = len(a), len(b)
    kaa, kbb, kab = k[:n, :n], k[n:, n:], k[:n, n:]
    term_a = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    term_b = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(term_a + term_b - 2 * kab.mean())


@torch.no_grad()
def sampling_throughput(flow: nn.Module, num_samples: int = 1000, repeats: int = 3) -> float:
    """Samples per second of ``flow.sample`` (best of ``repeats`` after one warm-up call; draws from its own
    generator, never from the caller's RNG)."""
    generator = torch.Generator(next(flow.parameters()).device).manual_seed(0)
    flow.sample(min(num_samples, 16), generator=generator)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        flow.sample(num_samples, generator=generator)
        best = min(best, time.perf_counter() - start)
    return num_samples / best


def save_sample_grid(rows: dict[str, torch.Tensor], path: str, per_row: int = 16) -> None:
    """A PNG with one row of 8×8 (or any C×H×W) samples per model, labelled with the row's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(per_row * 0.6, len(rows) * 0.8 + 0.2), squeeze=False)
    for ax, (name, images) in zip(axes[:, 0], rows.items()):
        images = images[:per_row].detach().cpu().float().clamp(0, 1)
        strip = torch.cat([torch.nn.functional.pad(img[0], (1, 1, 1, 1), value=0.0) for img in images], dim=1)
        ax.imshow(strip.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
