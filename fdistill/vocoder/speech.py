"""Speech data and spectral measurements for vocoder distillation: an offline corpus spoken by espeak-ng, log-mel
features, multi-resolution STFT distances, band powers, WAV files and spectrogram figures.

The corpus is formant speech from espeak-ng (deterministic: the same text gives the same bytes), resampled with
scipy's polyphase filter to a CPU-friendly rate (8 kHz by default). Mel filters follow the HTK mel scale
``mel(f) = 2595·log10(1 + f/700)`` with triangular filters normalised to unit area (Slaney-style area
normalisation); STFTs are ``torch.stft`` with a Hann window. Audio I/O is soundfile's.

Why in-house (the mel filterbank only): torchaudio is in maintenance mode and unpinned against torch, and librosa
is a heavy dependency for one matrix; the filterbank is tested against its defining properties.

References:
    Yamamoto et al., "Parallel WaveGAN" (2020) — the multi-resolution STFT loss (spectral convergence + log
    magnitude); van den Oord et al., "Parallel WaveNet" (2018) — the power loss.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "She sells sea shells by the sea shore.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "The rain in Spain stays mainly in the plain.",
    "Peter Piper picked a peck of pickled peppers.",
    "All that glitters is not gold.",
    "Actions speak louder than words.",
    "The early bird catches the worm.",
    "Knowledge is power, and power is knowledge.",
    "Every cloud has a silver lining.",
    "Time flies like an arrow; fruit flies like a banana.",
    "Better late than never, but never late is better.",
    "The pen is mightier than the sword.",
    "Where there is a will, there is a way.",
    "Birds of a feather flock together.",
    "Fortune favours the bold and the brave.",
    "Practice makes perfect, or at least better.",
    "Two wrongs do not make a right.",
    "When in Rome, do as the Romans do.",
    "The sun rises in the east and sets in the west.",
    "Music can change the world because it can change people.",
    "Small models can learn a great deal from large ones.",
    "Distillation makes slow teachers into fast students.",
]
VOICES = [("en-us", 150), ("en-gb", 140), ("en-us", 170)]


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, sample_rate: int, voice: str = "en-us", words_per_minute: int = 150) -> np.ndarray:
    """One utterance from espeak-ng, resampled to ``sample_rate``, as float32 in [−1, 1]."""
    import soundfile as sf
    from scipy.signal import resample_poly

    if not espeak_available():
        raise RuntimeError(
            "espeak-ng is not installed: `apt-get install espeak-ng` (Debian/Ubuntu) makes the offline speech corpus"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "utterance.wav")
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", path, text], check=True, capture_output=True
        )
        audio, rate = sf.read(path, dtype="float64")
    g = math.gcd(rate, sample_rate)
    audio = resample_poly(audio, sample_rate // g, rate // g)
    return (audio / max(np.abs(audio).max(), 1e-6) * 0.9).astype(np.float32)


@dataclass
class SpeechCorpus:
    """Train and held-out utterances (lists of 1-D float32 tensors) at ``sample_rate``."""

    train: list[torch.Tensor]
    held_out: list[torch.Tensor]
    sample_rate: int

    def seconds(self, split: str = "train") -> float:
        return sum(len(a) for a in getattr(self, split)) / self.sample_rate


def make_speech_corpus(sample_rate: int = 8000, num_held_out: int = 3, voices=VOICES) -> SpeechCorpus:
    """Every sentence in every voice; the last ``num_held_out`` sentences (all voices) are held out."""
    train, held_out = [], []
    for i, text in enumerate(SENTENCES):
        for voice, wpm in voices:
            audio = torch.from_numpy(speak(text, sample_rate, voice, wpm))
            (held_out if i >= len(SENTENCES) - num_held_out else train).append(audio)
    return SpeechCorpus(train, held_out, sample_rate)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None):
    """``[n_mels, n_fft//2 + 1]`` triangular filters equally spaced on the HTK mel scale, each of unit area in Hz."""
    f_max = f_max or sample_rate / 2
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    weights = np.clip(np.minimum(rising, falling), 0, None) * (2.0 / (upper - lower))
    return torch.tensor(weights, dtype=torch.float32)


def stft_magnitude(audio: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """``|STFT|`` of ``[B, T]`` (or ``[T]``) audio: ``[B, n_fft//2 + 1, frames]``."""
    window = torch.hann_window(n_fft, device=audio.device)
    spec = torch.stft(audio, n_fft, hop, window=window, return_complex=True, center=True, pad_mode="reflect")
    return spec.abs()


class LogMel(torch.nn.Module):
    """``log(max(mel·|STFT|, 1e-5))``: ``[B, T]`` audio → ``[B, n_mels, T/hop + 1]`` features."""

    def __init__(self, sample_rate: int = 8000, n_fft: int = 256, hop: int = 64, n_mels: int = 40):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("filters", mel_filterbank(sample_rate, n_fft, n_mels))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.clamp(self.filters @ stft_magnitude(audio, self.n_fft, self.hop), min=1e-5))


RESOLUTIONS = ((128, 32), (256, 64), (512, 128))  # (n_fft, hop) at 8 kHz: 16, 32, 64 ms windows


def multi_resolution_stft_distance(a: torch.Tensor, b: torch.Tensor, resolutions=RESOLUTIONS) -> torch.Tensor:
    """Mean over resolutions of spectral convergence ``‖|A|−|B|‖_F/‖|B|‖_F`` plus mean ``|log|A| − log|B||``."""
    total = a.new_zeros(())
    for n_fft, hop in resolutions:
        ma, mb = stft_magnitude(a, n_fft, hop).clamp(min=1e-7), stft_magnitude(b, n_fft, hop).clamp(min=1e-7)
        convergence = torch.linalg.norm(ma - mb) / torch.linalg.norm(mb)
        total = total + convergence + (ma.log() - mb.log()).abs().mean()
    return total / len(resolutions)


def average_power_spectrum(audio: torch.Tensor, n_fft: int = 256, hop: int = 64) -> torch.Tensor:
    """Parallel WaveNet's φ: the power per frequency bin averaged over time, ``[B, n_fft//2 + 1]``."""
    return stft_magnitude(audio, n_fft, hop).pow(2).mean(-1)


def band_powers_db(audio: torch.Tensor, sample_rate: int, bands=((0, 1000), (1000, 2000), (2000, 4000))) -> list:
    """Mean power in dB within each frequency band — the "whispering" check compares these with real speech."""
    power = average_power_spectrum(audio.reshape(1, -1))[0]
    freqs = torch.linspace(0, sample_rate / 2, len(power))
    return [float(10 * torch.log10(power[(freqs >= lo) & (freqs < hi)].mean() + 1e-12)) for lo, hi in bands]


def write_wav(path: str, audio: torch.Tensor, sample_rate: int) -> None:
    import soundfile as sf

    sf.write(path, audio.detach().cpu().clamp(-1, 1).numpy(), sample_rate, subtype="PCM_16")


def save_spectrograms(rows: dict[str, torch.Tensor], sample_rate: int, path: str) -> None:
    """One log-magnitude spectrogram per named clip, stacked vertically, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.6 * len(rows)), squeeze=False, sharex=True)
    for ax, (name, audio) in zip(axes[:, 0], rows.items()):
        spec = stft_magnitude(audio.detach().cpu().reshape(1, -1), 256, 64)[0].clamp(min=1e-5).log10() * 20
        seconds = audio.numel() / sample_rate
        ax.imshow(
            spec.numpy(),
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=-100,
            vmax=20,
            extent=(0, seconds, 0, sample_rate / 2000),
        )
        ax.set_ylabel(f"{name}\nkHz", fontsize=8)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
