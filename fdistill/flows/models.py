"""Teacher and student normalizing flows that expose every intermediate latent: multi-scale Glow, MAF and IAF.

A flow maps data ``x`` to a standard-normal latent ``u`` (``[B, D]``, all levels concatenated) and back:

    log p(x) = log N(u; 0, I) + log|det ∂u/∂x|.

``forward`` returns a :class:`FlowOutput` with ``u``, the log-determinant, ``log p(x)`` and ``path``: the state after
every flow step (Glow) or block (MAF/IAF), which is what intermediate latent distillation (ILKD) matches.
``depths`` lists the steps per level, so teacher and student paths can be aligned level by level
(`fdistill.flows.losses.align_paths`).

Example:
    >>> flow = Glow(image_shape=(1, 8, 8), levels=3, depth=2, hidden=16)
    >>> x = torch.rand(4, 1, 8, 8)
    >>> out = flow(x)
    >>> out.latent.shape, len(out.path), flow.depths
    (torch.Size([4, 64]), 6, [2, 2, 2])
    >>> torch.allclose(flow.inverse(out.latent), x, atol=1e-5)
    True

References:
    Kingma & Dhariwal, "Glow", NeurIPS 2018; Papamakarios et al., "MAF", NeurIPS 2017; Kingma et al., "IAF",
    NeurIPS 2016; Walton et al., "Distilling Normalizing Flows", 2025 (arXiv:2506.21003).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from fdistill.errors import InputError, invalid

from . import checks
from .transforms import ActNorm, AutoregressiveAffine, GaussianPrior, GlowStep, Reverse

LOG_2PI = math.log(2 * math.pi)


@dataclass
class FlowOutput:
    """What a flow's forward pass returns.

    Attributes:
        latent: ``u``, ``[B, D]``; standard normal when x is drawn from the flow.
        logdet: ``log|det ∂u/∂x|``, ``[B]``.
        log_prob: ``log p(x)`` in nats, ``[B]``.
        path: the state after each step/block in level order (what ILKD compares).
    """

    latent: torch.Tensor
    logdet: torch.Tensor
    log_prob: torch.Tensor
    path: list[torch.Tensor]


def standard_normal_log_prob(u: torch.Tensor, event_dims: int | None = None) -> torch.Tensor:
    """``log N(u; 0, I)`` of each event, ``−½ Σ (u² + log 2π)`` summed over the event's dimensions.

    The reduction is explicit: ``event_dims=None`` sums every dimension but the first (a batch of flow latents,
    ``[B, ...] → [B]``); ``event_dims=k`` sums the last ``k`` (``1``: rows of vectors, ``[..., D] → [...]``, as the
    Gaussian study of `fdistill.vocoder.gaussian` uses it). The one definition for flows and vocoder.

    Example:
        >>> standard_normal_log_prob(torch.zeros(2, 1, 2, 2)).shape, standard_normal_log_prob(torch.zeros(3), 1).shape
        (torch.Size([2]), torch.Size([]))
    """
    start = 1 if event_dims is None else -event_dims
    return -0.5 * (u.pow(2) + LOG_2PI).flatten(start).sum(-1)


class Flow(nn.Module):
    """Base class: subclasses define ``_transform(x) -> (u, logdet, path)`` and ``inverse(u) -> x``."""

    kind: str = ""

    def __init__(self, **config):
        super().__init__()
        self.config = config

    @property
    def num_features(self) -> int:
        """Dimensions D of one example (the product of ``event_shape``)."""
        return math.prod(self.event_shape)

    def forward(self, x: torch.Tensor) -> FlowOutput:
        if tuple(x.shape[1:]) != tuple(self.event_shape):
            raise InputError(
                f"{type(self).__name__} expects inputs of shape [B, {list(self.event_shape)}], got {list(x.shape)}"
            )
        u, logdet, path = self._transform(x)
        return FlowOutput(u, logdet, standard_normal_log_prob(u) + logdet, path)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` of each example, ``(B,)`` (change of variables: base log-density plus log |det J|)."""
        return self(x).log_prob

    def sample(self, num_samples: int, temperature: float = 1.0, generator: torch.Generator | None = None):
        """Draw ``x = f⁻¹(T·u)``, ``u ~ N(0, I)``; ``T < 1`` is the usual reduced-temperature sampling."""
        device = next(self.parameters()).device
        u = torch.randn(num_samples, self.num_features, generator=generator, device=device)
        return self.inverse(temperature * u)

    def num_parameters(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())


class Glow(Flow):
    """Multi-scale Glow: per level, squeeze (images) → ``depth`` steps → split half off under a learned prior.

    Arguments:
        image_shape: ``(C, H, W)`` for images (H, W divisible by ``2**levels``); ``features``: D for vectors
            (no squeeze; a split halves the features).
        levels: number of levels L; ``depth``: steps per level (an int or one per level); ``hidden``: width of the
            coupling networks.
    """

    kind = "glow"

    def __init__(
        self,
        image_shape: tuple[int, ...] | None = None,
        features: int | None = None,
        levels: int = 3,
        depth: int | list[int] = 8,
        hidden: int = 64,
    ):
        if (image_shape is None) == (features is None):
            raise InputError("Glow needs exactly one of image_shape=(C, H, W) or features=D")
        depths = [depth] * levels if isinstance(depth, int) else list(depth)
        if len(depths) != levels or min(depths) < 1:
            raise InputError(f"depth must be a positive int or {levels} positive ints (one per level), got {depth}")
        super().__init__(
            image_shape=list(image_shape) if image_shape else None,
            features=features,
            levels=levels,
            depth=depths,
            hidden=hidden,
        )
        self.image = image_shape is not None
        self.event_shape = tuple(image_shape) if self.image else (features,)
        self.depths = depths
        if self.image and (image_shape[1] % 2**levels or image_shape[2] % 2**levels):
            raise InputError(f"image size {image_shape[1:]} must be divisible by 2**levels = {2**levels}")
        shape = list(self.event_shape)
        self.levels = nn.ModuleList()
        self.split_priors = nn.ModuleList()
        self.latent_shapes: list[tuple[int, ...]] = []
        for level, k in enumerate(depths):
            if self.image:
                shape = [shape[0] * 4, shape[1] // 2, shape[2] // 2]
            self.levels.append(nn.ModuleList([GlowStep(shape[0], hidden, self.image) for _ in range(k)]))
            if level < levels - 1:
                keep = shape[0] - shape[0] // 2
                self.split_priors.append(GaussianPrior(shape[0] // 2, keep, self.image))
                self.latent_shapes.append((shape[0] // 2, *shape[1:]))
                shape = [keep, *shape[1:]]
        self.top_prior = GaussianPrior(shape[0], 0, self.image, tuple(shape[1:]))
        self.latent_shapes.append(tuple(shape))

    def _transform(self, x):
        h, logdet, path, parts = x, x.new_zeros(x.shape[0]), [], []
        for level, steps in enumerate(self.levels):
            if self.image:
                h = F.pixel_unshuffle(h, 2)
            for step in steps:
                h, ld = step(h)
                logdet = logdet + ld
                path.append(h)
            if level < len(self.levels) - 1:
                keep = h.shape[1] - h.shape[1] // 2
                h, out = h[:, :keep], h[:, keep:]
                eps, ld = self.split_priors[level](out, h)
                logdet = logdet + ld
                parts.append(eps.flatten(1))
        eps, ld = self.top_prior(h)
        parts.append(eps.flatten(1))
        return torch.cat(parts, 1), logdet + ld, path

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """Data x from the base draw u (flattened latents of every level), the inverse of forward."""
        sizes = [math.prod(s) for s in self.latent_shapes]
        parts = [p.reshape(-1, *s) for p, s in zip(u.split(sizes, dim=1), self.latent_shapes)]
        h = self.top_prior.inverse(parts[-1])
        for level in reversed(range(len(self.levels))):
            if level < len(self.levels) - 1:
                h = torch.cat([h, self.split_priors[level].inverse(parts[level], h)], 1)
            for step in reversed(self.levels[level]):
                h = step.inverse(h)
            if self.image:
                h = F.pixel_shuffle(h, 2)
        return h


class AutoregressiveFlow(Flow):
    """A stack of ``blocks`` × (masked autoregressive affine → ActNorm → reverse order), one level.

    The path and the latent hold the state after each block in the data's feature order (the reversals undone), so
    teacher and student states are comparable feature by feature whatever their depths (and depth parities).
    """

    inverse_autoregressive = False

    def __init__(self, features: int, blocks: int = 5, hidden: int | list[int] = 64, hidden_layers: int = 2):
        widths = [hidden] * hidden_layers if isinstance(hidden, int) else list(hidden)
        super().__init__(features=features, blocks=blocks, hidden=widths)
        self.event_shape = (features,)
        self.depths = [blocks]
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                [AutoregressiveAffine(features, widths, self.inverse_autoregressive), ActNorm(features), Reverse()]
            )
            for _ in range(blocks)
        )

    def _transform(self, x):
        h, logdet, path = x, x.new_zeros(x.shape[0]), []
        for i, block in enumerate(self.blocks):
            for layer in block:
                h, ld = layer(h)
                logdet = logdet + ld
            path.append(h if i % 2 else h.flip(1))  # i+1 reversals so far: undo when odd
        return path[-1], logdet, path  # the latent in data order too (a permutation: log p unchanged)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        if len(self.blocks) % 2:
            u = u.flip(1)  # back to the last block's own order
        for block in reversed(self.blocks):
            for layer in reversed(block):
                u = layer.inverse(u)
        return u


class MAF(AutoregressiveFlow):
    """Masked Autoregressive Flow: density in one parallel pass, sampling in D sequential passes per block."""

    kind = "maf"


class IAF(AutoregressiveFlow):
    """Inverse Autoregressive Flow: sampling in one parallel pass, density in D sequential passes per block."""

    kind = "iaf"
    inverse_autoregressive = True


FLOW_CLASSES: dict[str, type[Flow]] = {cls.kind: cls for cls in (Glow, MAF, IAF)}


# Architecture sizes per flow kind: (name, may it be a list of sizes — one per level / hidden layer).
_SIZES = {
    "glow": (("levels", False), ("depth", True), ("hidden", False)),
    "maf": (("blocks", False), ("hidden", True), ("hidden_layers", False)),
}
_SIZES["iaf"] = _SIZES["maf"]
_FROM_DATA = ("features", "image_shape")  # set from the data set by the experiment


def check_architecture(kind: str, config, role: str = "flow", from_data: bool = False) -> None:
    """One clear error for an architecture that cannot be built: unknown keys, non-positive sizes.

    ``config``: the constructor arguments of ``FLOW_CLASSES[kind]``; with ``from_data`` (experiment recipes) the
    data's shape is filled in later, so ``features``/``image_shape`` are refused there. Names in errors are
    ``{role}.{key}``, e.g. ``teacher.blocks=-1 must be ≥ 1``.
    """
    if kind not in FLOW_CLASSES:
        raise invalid("flow", kind, f"choose one of {sorted(FLOW_CLASSES)}.")
    if not isinstance(config, dict):
        raise invalid(role, config, "give a mapping of architecture sizes, e.g. {levels: 3, depth: 2, hidden: 32}.")
    sizes = dict(_SIZES[kind])
    known = sorted(sizes) + ([] if from_data else list(_FROM_DATA))
    unknown = sorted(set(config) - set(known))
    if unknown:
        where = " (features and image_shape come from the data set)" if set(unknown) & set(_FROM_DATA) else ""
        raise invalid(
            role, config, f"unknown keys {unknown}{where}; valid keys: {known}.", problem=f"does not fit flow={kind}"
        )
    for key, may_be_list in sizes.items():
        if key in config:
            value = config[key]
            if may_be_list and isinstance(value, (list, tuple)):
                checks.whole_numbers(f"{role}.{key}", value, example="[64, 64]", distinct=False)
            else:
                checks.whole_number(f"{role}.{key}", value)


def build_flow(kind: str, **config) -> Flow:
    """Build a flow by name (``glow``, ``maf``, ``iaf``) from its constructor arguments (checked first)."""
    check_architecture(kind, config)
    return FLOW_CLASSES[kind](**config)


def save_flow(flow: Flow, directory: str | os.PathLike) -> None:
    """Write ``flow.json`` (kind + constructor arguments) and ``flow.safetensors`` (weights) to ``directory``."""
    os.makedirs(directory, exist_ok=True)
    save_model(flow, os.path.join(directory, "flow.safetensors"))
    with open(os.path.join(directory, "flow.json"), "w") as f:
        json.dump({"kind": flow.kind, "config": flow.config}, f, indent=2)


def load_flow(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Flow:
    """Rebuild a flow saved by :func:`save_flow` (JSON + safetensors: reading it never runs code).

    A folder without ``flow.json`` is a FileNotFoundError; unreadable or inconsistent files are a
    `fdistill.flows.checks.StageFileError` (a ValueError) that says to delete the folder and re-run.
    """
    from safetensors import SafetensorError

    path = os.path.join(directory, "flow.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no saved flow in {directory} (missing flow.json); train one with `fdistill flows`")
    try:
        with open(path) as f:
            meta = json.load(f)
        config = dict(meta["config"])
        if config.get("image_shape"):
            config["image_shape"] = tuple(config["image_shape"])
        flow = build_flow(meta["kind"], **config)
        load_model(flow, os.path.join(directory, "flow.safetensors"), device=str(device))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
        raise checks.StageFileError(
            f"the saved flow in {directory} cannot be read ({type(err).__name__}: {err}); "
            "delete that folder and run again to retrain it"
        ) from None
    return flow.to(device).eval()
