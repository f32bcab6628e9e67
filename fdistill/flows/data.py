"""Data sets for flow distillation that work offline: scikit-learn's bundled 8×8 digits and tabular sets, and the
MAF paper's five tabular sets (`fdistill.flows.paper_datasets`) for users who have the files.

Digits are 17-level grey images (0–16). Training draws uniform dequantisation noise afresh each batch,
``x = (v + U[0,1))/17 − ½``; evaluation uses one fixed draw, so the discrete log-likelihood bound in bits per dimension
is ``(NLL + D·ln 17) / (D·ln 2)`` (`bits_per_dim`). Tabular sets are standardised with the training split's mean and
standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fdistill.errors import InputError

from . import checks

DIGIT_LEVELS = 17
SKLEARN_TABULAR = ("breast_cancer", "wine", "diabetes")
FLOW_DATASETS = ("digits",) + SKLEARN_TABULAR + ("power", "gas", "hepmass", "miniboone", "bsds300")


@dataclass
class FlowData:
    """Train/validation/test tensors and how to read them.

    Attributes:
        train, validate, test: ``[N, *event_shape]`` float32 (digits: the integer levels, not yet dequantised).
        event_shape: one example's shape, ``(1, 8, 8)`` for digits, ``(D,)`` for tabular.
        levels: grey levels of discrete data (17 for digits), None for continuous data.
        labels: digit classes per split (for the local feature network), None for tabular.
    """

    name: str
    train: torch.Tensor
    validate: torch.Tensor
    test: torch.Tensor
    event_shape: tuple[int, ...]
    levels: int | None = None
    labels: dict[str, torch.Tensor] | None = None

    @property
    def num_features(self) -> int:
        """Dimensions of one example (the product of ``event_shape``)."""
        return math.prod(self.event_shape)

    def model_inputs(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Map stored values to flow inputs: dequantise discrete levels into [−½, ½), pass continuous data."""
        if self.levels is None:
            return batch
        noise = torch.rand(batch.shape, generator=generator, device=batch.device)
        return (batch + noise) / self.levels - 0.5

    def to_data_range(self, x: torch.Tensor) -> torch.Tensor:
        """Map flow samples back to the data's own range (digits: clamp to [0, 1])."""
        return (x + 0.5).clamp(0, 1) if self.levels is not None else x


def bits_per_dim(nll_nats_per_dim: float, levels: int | None) -> float | None:
    """Discrete bits per dimension from the continuous NLL per dimension of ``x ∈ [0,1)^D`` data dequantised over
    ``levels`` bins: ``(NLL/D + ln levels)/ln 2``; None for continuous data."""
    return None if levels is None else (nll_nats_per_dim + math.log(levels)) / math.log(2)


def _split(n: int, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.RandomState(seed).permutation(n)
    n_val, n_test = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def load_digits_data(split_seed: int = 0) -> FlowData:
    """scikit-learn's 1797 8×8 digits; 70/10/20 train/validation/test split by ``split_seed``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8), levels 0..16
    targets = torch.tensor(bunch.target)
    train, val, test = _split(len(images), (0.1, 0.2), split_seed)
    labels = {"train": targets[train], "validate": targets[val], "test": targets[test]}
    return FlowData("digits", images[train], images[val], images[test], (1, 8, 8), DIGIT_LEVELS, labels)


def _standardised(name: str, train: np.ndarray, val: np.ndarray, test: np.ndarray, standardise: bool) -> FlowData:
    if standardise:
        mean, std = train.mean(0), train.std(0)
        std[std == 0] = 1.0
        train, val, test = ((a - mean) / std for a in (train, val, test))
    tensors = [torch.tensor(np.asarray(a), dtype=torch.float32) for a in (train, val, test)]
    return FlowData(name, *tensors, event_shape=(tensors[0].shape[1],))


def load_sklearn_tabular(name: str, split_seed: int = 0) -> FlowData:
    """A scikit-learn bundled tabular set (features only), 70/15/15 split, standardised on the training split."""
    import sklearn.datasets as skd

    if name not in SKLEARN_TABULAR:
        raise InputError(f"unknown scikit-learn tabular set {name!r}; choose one of {SKLEARN_TABULAR}")
    features = getattr(skd, f"load_{name}")().data.astype(np.float64)
    train, val, test = _split(len(features), (0.15, 0.15), split_seed)
    return _standardised(name, features[train], features[val], features[test], standardise=True)


def load_flow_data(name: str, data_root: str | None = None, split_seed: int = 0) -> FlowData:
    """Load a data set by name: ``digits``, a scikit-learn tabular set, or a MAF paper set from ``data_root``.

    Every split is checked for NaN/±inf (`fdistill.flows.checks.finite_rows`): a non-finite value is one error naming
    the data set, the count and the first bad row, never a run whose every step is skipped.
    """
    key = name.lower() if isinstance(name, str) else None
    if key not in FLOW_DATASETS:
        raise InputError(f"unknown data set {name!r}; choose one of {FLOW_DATASETS}")
    if key == "digits":
        data = load_digits_data(split_seed)
    elif key in SKLEARN_TABULAR:
        data = load_sklearn_tabular(key, split_seed)
    elif not data_root:
        raise InputError(
            f"data set {name!r} is read from local files: set data_root to the folder holding the "
            "MAF data archive (see fdistill.flows.paper_datasets)"
        )
    else:
        from .paper_datasets import load_paper_dataset

        train, val, test = load_paper_dataset(key, data_root)
        data = _standardised(key, train, val, test, standardise=False)  # already preprocessed the standard way
    for split in ("train", "validate", "test"):
        checks.finite_rows(f"data set {key!r} ({split} split, after preprocessing)", getattr(data, split))
    return data
