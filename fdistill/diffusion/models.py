"""The denoisers: v-prediction networks ``v̂(x_t, t, c, w)`` conditioned on a class ``c`` (with a "null" class for
classifier-free guidance) and, for guidance-distilled students, on the guidance weight ``w``.

- `UNetDenoiser` (8×8 digits): diffusers' `UNet2DModel` in a small configuration (the default one is 274 M
  parameters and fails on 8×8). The class and w embeddings are added to diffusers' time embedding through its
  ``class_embed_type="identity"`` input.
- `MLPDenoiser` (2-D toy): a residual MLP with a sinusoidal time embedding (diffusers' `get_timestep_embedding`).
  In-house because diffusers has no vector (non-image) denoiser.

The w input enters as ``w · proj(emb(w))`` with ``proj`` zero-initialised: at w = 0 it is exactly zero (and gets no
gradient), so a teacher trained without it and a guidance student initialised from that teacher start identical.
Both networks are rebuilt from their JSON ``config`` (`build_denoiser`) and saved as safetensors only.
"""

from __future__ import annotations

import torch
from torch import nn


def _embedding(values: torch.Tensor, dim: int) -> torch.Tensor:
    from diffusers.models.embeddings import get_timestep_embedding

    return get_timestep_embedding(values.float().reshape(-1), dim, flip_sin_to_cos=True, downscale_freq_shift=0)


class _Conditioning(nn.Module):
    """Class (+ null) embedding plus ``w·proj(emb(w))``, both of width ``dim``."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes, self.dim = num_classes, dim
        self.label = nn.Embedding(num_classes + 1, dim)  # index num_classes = "no class" (label dropout)
        self.w_proj = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.w_proj[-1].weight)
        nn.init.zeros_(self.w_proj[-1].bias)

    def forward(self, labels: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        out = self.label(labels)
        if w is not None:
            w = w.to(out.dtype).reshape(-1, 1)
            out = out + w * self.w_proj(_embedding(w * 100.0, self.dim))
        return out


class MLPDenoiser(nn.Module):
    """Residual MLP v-network for vectors ``[B, D]`` (the 2-D toy)."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, num_classes: int = 8):
        super().__init__()
        self.config = {"kind": "mlp", "dim": dim, "hidden": hidden, "depth": depth, "num_classes": num_classes}
        self.num_classes = num_classes
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.cond = _Conditioning(num_classes, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))

    def forward(self, x, t, labels, w=None):
        h = self.inp(x) + self.time(_embedding(t, self.config["hidden"])) + self.cond(labels, w)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class UNetDenoiser(nn.Module):
    """A small diffusers `UNet2DModel` v-network for ``[B, C, H, W]`` images with class/w conditioning."""

    def __init__(
        self,
        sample_size: int = 8,
        channels: list[int] | tuple = (32, 64),
        layers_per_block: int = 1,
        num_classes: int = 10,
        in_channels: int = 1,
    ):
        super().__init__()
        from diffusers import UNet2DModel

        channels = list(channels)
        self.config = {
            "kind": "unet",
            "sample_size": sample_size,
            "channels": channels,
            "layers_per_block": layers_per_block,
            "num_classes": num_classes,
            "in_channels": in_channels,
        }
        self.num_classes = num_classes
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=in_channels,
            block_out_channels=tuple(channels),
            layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * len(channels),
            up_block_types=("UpBlock2D",) * len(channels),
            norm_num_groups=min(8, channels[0]),
            class_embed_type="identity",
        )
        self.cond = _Conditioning(num_classes, channels[0] * 4)  # diffusers' time-embedding width

    def forward(self, x, t, labels, w=None):
        return self.unet(x, t, class_labels=self.cond(labels, w)).sample


def build_denoiser(config: dict) -> nn.Module:
    """A fresh network from its ``config`` dict (``kind`` = ``"mlp"`` or ``"unet"``)."""
    config = dict(config)
    kind = config.pop("kind")
    return {"mlp": MLPDenoiser, "unet": UNetDenoiser}[kind](**config)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
