"""Invertible layers for the flows in `fdistill.flows.models`: Glow's step (ActNorm, LU 1×1 convolution, affine
coupling), its multi-scale split with a learned prior, and the masked autoregressive affine map of MAF/IAF.

Every layer maps ``x -> (y, logdet)`` with ``logdet = log|det ∂y/∂x|`` per example (shape ``[B]``) and has an exact
``inverse(y) -> x``. Tensors are ``[B, C, H, W]`` (images) or ``[B, D]`` (vectors); per-channel layers treat a
vector's features as channels.

Why in-house: no maintained flow library has Glow's multi-scale architecture *and* MAF/IAF with every intermediate
latent reachable in both directions (zuko has no Glow; normflows and nflows are unmaintained; FrEIA has no MAF), and
latent distillation needs exactly those intermediates (ILKD matches the teacher's and the student's intermediate
latents: Walton et al. 2025, §3, below).

References:
    Walton et al., "Distilling Normalizing Flows", 2025 (arXiv:2506.21003), §3 (LKD, ILKD, SKD).
    Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018.
    Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017.
    Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow", NeurIPS 2016.
    Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fdistill.errors import InputError


def _spatial_size(x: torch.Tensor) -> int:
    """Number of positions sharing one channel's parameters: H·W for images, 1 for vectors."""
    return math.prod(x.shape[2:]) if x.dim() > 2 else 1


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a ``[C]`` parameter to broadcast over ``x`` (``[B, C]`` or ``[B, C, H, W]``)."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class ActNorm(nn.Module):
    """Per-channel affine ``y = (x + b)·exp(s)``, initialised from the first batch to zero mean and unit variance.

    ``logdet = H·W·Σ_c s_c``. The initialisation flag is a buffer, so saved models keep their trained values.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        dims = [0] + list(range(2, x.dim()))
        self.bias.copy_(-x.mean(dim=dims))
        self.log_scale.copy_(-torch.log(x.std(dim=dims) + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.initialized and self.training:
            self._initialize(x)
        y = (x + _per_channel(self.bias, x)) * _per_channel(self.log_scale.exp(), x)
        logdet = self.log_scale.sum() * _spatial_size(x)
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * _per_channel((-self.log_scale).exp(), y) - _per_channel(self.bias, y)


class InvertibleConv1x1(nn.Module):
    """Glow's invertible 1×1 convolution (a channel-mixing matrix) in LU form: ``W = P·L·(U + diag(sign·exp(s)))``.

    ``logdet = H·W·Σ s``; P and the signs are fixed at initialisation from a random rotation.
    """

    def __init__(self, channels: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        p, lower, upper = torch.linalg.lu(q)
        diag = upper.diagonal()
        self.register_buffer("permutation", p)
        self.register_buffer("sign", diag.sign())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_diag = nn.Parameter(diag.abs().log())

    def weight(self) -> torch.Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * self.log_diag.exp())
        return self.permutation @ lower @ upper

    @staticmethod
    def _mix(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oc,bc...->bo...", w, x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = self.log_diag.sum() * _spatial_size(x)
        return self._mix(x, self.weight()), logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._mix(y, torch.linalg.inv(self.weight()))


class ZeroLinear(nn.Module):
    """A 3×3 convolution (images) or linear layer (vectors) initialised to zero, so a new flow starts as identity."""

    def __init__(self, in_channels: int, out_channels: int, image: bool):
        super().__init__()
        self.layer = (
            nn.Conv2d(in_channels, out_channels, 3, padding=1) if image else nn.Linear(in_channels, out_channels)
        )
        nn.init.zeros_(self.layer.weight)
        nn.init.zeros_(self.layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def coupling_network(in_channels: int, out_channels: int, hidden: int, image: bool) -> nn.Sequential:
    """Glow's coupling network: conv3×3 → ReLU → conv1×1 → ReLU → zero-initialised conv3×3 (an MLP for vectors)."""
    if image:
        first, middle = nn.Conv2d(in_channels, hidden, 3, padding=1), nn.Conv2d(hidden, hidden, 1)
    else:
        first, middle = nn.Linear(in_channels, hidden), nn.Linear(hidden, hidden)
    return nn.Sequential(first, nn.ReLU(), middle, nn.ReLU(), ZeroLinear(hidden, out_channels, image))


class AffineCoupling(nn.Module):
    """Affine coupling: ``y_a = x_a``, ``y_b = (x_b + t(x_a))·σ(h(x_a) + 2)`` with ``logdet = Σ log σ(h + 2)``.

    The sigmoid scale (as in Glow's code) keeps each step contractive-or-mild and the +2 starts it near identity.
    """

    def __init__(self, channels: int, hidden: int, image: bool):
        super().__init__()
        if channels < 2:
            raise InputError(f"affine coupling needs at least 2 channels, got {channels}; squeeze the input first")
        self.split = channels // 2
        self.net = coupling_network(self.split, 2 * (channels - self.split), hidden, image)

    def _shift_scale(self, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, raw = self.net(xa).chunk(2, dim=1)
        return shift, torch.sigmoid(raw + 2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = x[:, : self.split], x[:, self.split :]
        shift, scale = self._shift_scale(xa)
        yb = (xb + shift) * scale
        return torch.cat([xa, yb], dim=1), scale.log().flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        ya, yb = y[:, : self.split], y[:, self.split :]
        shift, scale = self._shift_scale(ya)
        return torch.cat([ya, yb / scale - shift], dim=1)


class GlowStep(nn.Module):
    """One step of flow: ActNorm → invertible 1×1 convolution → affine coupling."""

    def __init__(self, channels: int, hidden: int, image: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(
            [ActNorm(channels), InvertibleConv1x1(channels), AffineCoupling(channels, hidden, image)]
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y


class GaussianPrior(nn.Module):
    """Standardise ``z`` under a learned diagonal Gaussian: ``ε = (z − μ)·exp(−log σ)``, ``logdet = −Σ log σ``.

    With ``condition_channels > 0`` (Glow's split) μ and log σ come from a zero-initialised convolution of the
    kept half; otherwise (the top of the flow) they are free parameters, zero at initialisation. Folding the prior
    into the flow makes every latent standard normal, so one draw ``u ~ N(0, I)`` fixes all levels at once.
    """

    def __init__(self, channels: int, condition_channels: int = 0, image: bool = True, shape: tuple[int, ...] = ()):
        super().__init__()
        if condition_channels:
            self.net = ZeroLinear(condition_channels, 2 * channels, image)
        else:
            self.net = None
            self.mean = nn.Parameter(torch.zeros(channels, *shape))
            self.log_std = nn.Parameter(torch.zeros(channels, *shape))

    def _params(self, condition: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.net is not None:
            return self.net(condition).chunk(2, dim=1)
        return self.mean.expand_as(like), self.log_std.expand_as(like)

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self._params(condition, z)
        return (z - mean) * (-log_std).exp(), -log_std.flatten(1).sum(1)

    def inverse(self, eps: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        mean, log_std = self._params(condition, eps)
        return mean + eps * log_std.exp()


def made_masks(features: int, hidden: list[int]) -> list[torch.Tensor]:
    """MADE masks for inputs of degree 1..D: a unit of degree k sees inputs of degree ≤ k; outputs of degree d see
    hidden units of degree < d, so output d depends on inputs 1..d−1 only (Germain et al. 2015)."""
    degrees = [torch.arange(1, features + 1)]
    for width in hidden:
        degrees.append(torch.arange(width) % max(features - 1, 1) + 1)  # degrees 1..D-1, cycled
    masks = [(d_out[:, None] >= d_in[None, :]).float() for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    masks.append((degrees[0][:, None] > degrees[-1][None, :]).float())
    return masks


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask."""

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked MLP giving, for each feature i, a shift and a log-scale that depend on features < i only."""

    def __init__(self, features: int, hidden: list[int]):
        super().__init__()
        masks = made_masks(features, hidden)
        out_mask = masks[-1].repeat(2, 1)  # shift and log-scale share the output degrees
        layers: list[nn.Module] = []
        for mask in masks[:-1]:
            layers += [MaskedLinear(mask), nn.ReLU()]
        last = MaskedLinear(out_mask)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, raw = self.net(x).chunk(2, dim=1)
        return shift, 5.0 * torch.tanh(raw / 5.0)  # soft clamp |log-scale| < 5: exp() stays finite in float32


class AutoregressiveAffine(nn.Module):
    """The autoregressive affine map ``b_i = a_i·exp(s_i(a_<i)) + t_i(a_<i)``, ``logdet = Σ s_i``.

    Its own direction is parallel (one MADE pass); its inverse is sequential (D passes). MAF uses the parallel
    direction for density evaluation (fast likelihood, slow sampling); IAF uses it for sampling (fast sampling,
    slow likelihood) — ``inverse_autoregressive`` selects which of ``forward``/``inverse`` is parallel.
    """

    def __init__(self, features: int, hidden: list[int], inverse_autoregressive: bool = False):
        super().__init__()
        self.made = MADE(features, hidden)
        self.inverse_autoregressive = inverse_autoregressive

    def _parallel(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, log_scale = self.made(a)
        return a * log_scale.exp() + shift, log_scale.sum(1)

    def _sequential(self, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.zeros_like(b)
        for i in range(b.shape[1]):
            shift, log_scale = self.made(a)
            a = torch.cat([a[:, :i], ((b[:, i] - shift[:, i]) * (-log_scale[:, i]).exp())[:, None], a[:, i + 1 :]], 1)
        shift, log_scale = self.made(a)
        return a, -log_scale.sum(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._sequential(x) if self.inverse_autoregressive else self._parallel(x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (self._parallel(y) if self.inverse_autoregressive else self._sequential(y))[0]


class Reverse(nn.Module):
    """Reverse the feature order (volume preserving), so the next autoregressive block sees another ordering."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y.flip(1)
