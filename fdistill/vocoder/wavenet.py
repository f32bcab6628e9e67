"""The vocoder teacher and student: an autoregressive Gaussian WaveNet (slow, sequential sampling) and a parallel
inverse-autoregressive-flow student (Parallel WaveNet / ClariNet style), both conditioned on log-mel frames.

Teacher:  p_T(x | c) = Π_t N(x_t; μ_t(x_<t, c), σ_t(x_<t, c)²)
          its "inverse" T(x)_t = (x_t − μ_t)/σ_t is parallel (teacher forcing); sampling T⁻¹ is sequential.
Student:  K flows, x⁰ = z ~ N(0, I), x^k_t = x^{k−1}_t·σ^k_t(x^{k−1}_<t, c) + μ^k_t(x^{k−1}_<t, c); all parallel.
          x_t = z_t·σ_t + μ_t with σ_t = Π_k σ^k_t and μ_t = Σ_k μ^k_t Π_{j>k} σ^j_t depending on z_<t only,
          so log q_S(x) = Σ_t log N(z_t; 0, 1) − log σ_t and the per-step conditional N(μ_t, σ_t²) is exact
          (what ClariNet's closed-form KL uses).

References:
    van den Oord et al., "WaveNet" (2016) and "Parallel WaveNet" (ICML 2018); Ping et al., "ClariNet" (ICLR 2019);
    Huang et al., "Probability distillation: a caveat and alternatives" (UAI 2019).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_STD_MIN = -7.0  # σ ≥ 9e-4: keeps densities of 16-bit-like audio finite


def upsample_frames(mel: torch.Tensor, hop: int, length: int) -> torch.Tensor:
    """Repeat each mel frame ``hop`` times and trim to ``length`` samples: ``[B, M, F] → [B, M, length]``."""
    return mel.repeat_interleave(hop, dim=-1)[..., :length]


class WaveNetStack(nn.Module):
    """Causal gated residual layers ``h = tanh(W_f∗x + V_f c) ⊙ σ(W_g∗x + V_g c)`` with skip connections.

    The output at t depends on inputs ≤ t; callers shift the input right by one for strict autoregression.
    """

    def __init__(
        self,
        channels: int,
        dilations: list[int],
        cond_channels: int,
        out_channels: int,
        in_channels: int = 1,
        kernel_size: int = 2,
    ):
        super().__init__()
        self.kernel_size, self.dilations = kernel_size, list(dilations)
        self.inp = nn.Conv1d(in_channels, channels, 1)
        self.filters = nn.ModuleList(nn.Conv1d(channels, 2 * channels, kernel_size, dilation=d) for d in dilations)
        self.conds = nn.ModuleList(nn.Conv1d(cond_channels, 2 * channels, 1) for _ in dilations)
        self.res = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in dilations)
        self.skip = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in dilations)
        self.out = nn.Sequential(
            nn.ReLU(), nn.Conv1d(channels, channels, 1), nn.ReLU(), nn.Conv1d(channels, out_channels, 1)
        )
        nn.init.zeros_(self.out[-1].weight)  # start as the identity flow / a unit Gaussian
        nn.init.zeros_(self.out[-1].bias)

    @property
    def receptive_field(self) -> int:
        return sum((self.kernel_size - 1) * d for d in self.dilations) + 1

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        skips = 0
        for filt, cnd, res, skip, d in zip(self.filters, self.conds, self.res, self.skip, self.dilations):
            a, b = (filt(F.pad(h, ((self.kernel_size - 1) * d, 0))) + cnd(cond)).chunk(2, dim=1)
            g = torch.tanh(a) * torch.sigmoid(b)
            h = h + res(g)
            skips = skips + skip(g)
        return self.out(skips)


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """``[B, T] → [B, 1, T]`` with x_{t−1} at position t (zero at t = 0)."""
    return F.pad(x, (1, 0))[:, None, :-1]


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Elementwise ``log N(x; μ, σ²)``."""
    return -0.5 * ((x - mean) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)


class GaussianWaveNet(nn.Module):
    """The autoregressive teacher: per-sample Gaussian conditionals from a causal WaveNet on past samples + mel."""

    def __init__(
        self,
        n_mels: int = 40,
        hop: int = 64,
        channels: int = 32,
        dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128),
    ):
        super().__init__()
        self.hop = hop
        self.config = {"n_mels": n_mels, "hop": hop, "channels": channels, "dilations": list(dilations)}
        self.net = WaveNetStack(channels, list(dilations), n_mels, 2)

    @property
    def receptive_field(self) -> int:
        return self.net.receptive_field

    def conditionals(self, audio: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: ``(μ, log σ)`` of every sample given the true past, ``[B, T]`` each."""
        cond = upsample_frames(mel, self.hop, audio.shape[-1])
        mean, log_std = self.net(shift_right(audio), cond).unbind(1)
        return mean, log_std.clamp(min=LOG_STD_MIN)

    def log_prob(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """``log p_T(x | c)`` summed over samples, ``[B]`` (nats)."""
        mean, log_std = self.conditionals(audio, mel)
        return gaussian_log_prob(audio, mean, log_std).sum(-1)

    def encode(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """``T(x)``: the noise that would have produced ``audio``, in parallel."""
        mean, log_std = self.conditionals(audio, mel)
        return (audio - mean) * torch.exp(-log_std)

    @torch.no_grad()
    def sample(
        self, mel: torch.Tensor, length: int, z: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``T⁻¹(z)`` one sample at a time (recomputing over the receptive field): ``(audio, z, log p_T(audio))``."""
        batch = mel.shape[0]
        if z is None:
            z = torch.randn(batch, length, generator=generator, device=mel.device)
        cond = upsample_frames(mel, self.hop, length)
        field = self.receptive_field
        audio = torch.zeros(batch, length + 1, device=mel.device)  # audio[:, t + 1] = x_t; audio[:, 0] = 0 (x_{-1})
        log_prob = torch.zeros(batch, device=mel.device)
        for t in range(length):
            start = max(0, t + 1 - field)
            window = audio[:, start : t + 1][:, None]  # x_{start−1} .. x_{t−1}
            out = self.net(window, cond[..., start : t + 1])[..., -1]
            mean, log_std = out[:, 0], out[:, 1].clamp(min=LOG_STD_MIN)
            audio[:, t + 1] = mean + torch.exp(log_std) * z[:, t]
            log_prob += gaussian_log_prob(audio[:, t + 1], mean, log_std)
        return audio[:, 1:], z, log_prob


class IAFStudent(nn.Module):
    """Parallel inverse-autoregressive-flow student: ``flows`` WaveNet-conditioned affine flows on white noise."""

    def __init__(
        self,
        n_mels: int = 40,
        hop: int = 64,
        flows: int = 3,
        channels: int = 24,
        dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
    ):
        super().__init__()
        self.hop = hop
        self.config = {"n_mels": n_mels, "hop": hop, "flows": flows, "channels": channels, "dilations": list(dilations)}
        self.flows = nn.ModuleList(WaveNetStack(channels, list(dilations), n_mels, 2) for _ in range(flows))

    def forward(self, z: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``S(z)``: ``(x, μ, log σ)`` with ``x = z·σ + μ`` per sample (μ, σ functions of z_<t), ``[B, T]`` each."""
        cond = upsample_frames(mel, self.hop, z.shape[-1])
        x, mean, log_std = z, torch.zeros_like(z), torch.zeros_like(z)
        for flow in self.flows:
            mu, log_s = flow(shift_right(x), cond).unbind(1)
            log_s = log_s.clamp(min=LOG_STD_MIN, max=3.0)
            x = x * torch.exp(log_s) + mu
            mean = mean * torch.exp(log_s) + mu
            log_std = log_std + log_s
        return x, mean, log_std

    @torch.no_grad()
    def sample(self, mel: torch.Tensor, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(mel.shape[0], length, generator=generator, device=mel.device)
        return self(z, mel)[0]

    @torch.no_grad()
    def inverse(self, x: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """``S⁻¹(x)``: undo the flows last to first, one sample at a time (the slow direction of an IAF)."""
        cond = upsample_frames(mel, self.hop, x.shape[-1])
        for flow in reversed(self.flows):
            field, prev = flow.receptive_field, torch.zeros(x.shape[0], x.shape[1] + 1, device=x.device)
            for t in range(x.shape[1]):
                start = max(0, t + 1 - field)
                mu, log_s = flow(prev[:, None, start : t + 1], cond[..., start : t + 1])[..., -1].unbind(1)
                prev[:, t + 1] = (x[:, t] - mu) * torch.exp(-log_s.clamp(min=LOG_STD_MIN, max=3.0))
            x = prev[:, 1:]
        return x

    def log_prob_of_sample(self, z: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        """``log q_S(S(z))`` summed over samples: ``Σ_t log N(z_t; 0, 1) − log σ_t``."""
        return (gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z)) - log_std).sum(-1)
