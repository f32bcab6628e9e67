"""Tiny autoregressive models over an enumerable sequence space (float64), for brute-force checks.

A random RNN gives each prefix its own next-token logits, so every sequence of a short
maximum length can be enumerated and its exact probability computed.
"""

from __future__ import annotations

import itertools
import math

import torch

IGNORE = -100


class ToyAR:
    """``logits(seqs)[b, t]`` is the next-token logits after prefix ``seqs[b, :t]`` (teacher forcing)."""

    def __init__(self, vocab: int, hidden: int, seed: int, scale: float = 2.0):
        g = torch.Generator().manual_seed(seed)
        d = torch.float64
        self.vocab = vocab
        self.embed = torch.randn(vocab + 1, hidden, generator=g, dtype=d)  # last row: BOS
        self.recur = torch.randn(hidden, hidden, generator=g, dtype=d) / math.sqrt(hidden)
        self.out = torch.randn(hidden, vocab, generator=g, dtype=d) * scale / math.sqrt(hidden)
        self.bias = torch.randn(vocab, generator=g, dtype=d)

    def logits(self, seqs: torch.Tensor) -> torch.Tensor:
        batch, length = seqs.shape
        inputs = torch.cat([torch.full((batch, 1), self.vocab), seqs[:, :-1].clamp_min(0)], dim=1)  # BOS + shift
        h = torch.zeros(batch, self.recur.shape[0], dtype=torch.float64)
        out = []
        for t in range(length):
            h = torch.tanh(h @ self.recur + self.embed[inputs[:, t]])
            out.append(h @ self.out + self.bias)
        return torch.stack(out, dim=1)  # (B, L, V)

    def sample(self, n: int, length: int, eos: int | None, seed: int) -> torch.Tensor:
        """Ancestral samples as labels ``(n, length)``: ``IGNORE`` after an EOS token."""
        g = torch.Generator().manual_seed(seed)
        seqs = torch.zeros(n, length, dtype=torch.long)
        for t in range(length):  # re-running the prefix each step keeps the code obvious
            logits = self.logits(seqs[:, : t + 1])[:, t]
            seqs[:, t] = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(-1)
        return mask_after_eos(seqs, eos)


def mask_after_eos(seqs: torch.Tensor, eos: int | None) -> torch.Tensor:
    labels = seqs.clone()
    if eos is not None:
        is_eos = (seqs == eos).long()
        after = (is_eos.cumsum(-1) - is_eos) > 0  # strictly after the first EOS
        labels[after] = IGNORE
    return labels


def enumerate_sequences(vocab: int, length: int, eos: int | None) -> torch.Tensor:
    """Every sequence of the space as labels ``(N, length)`` (EOS-terminated ones padded with IGNORE)."""
    every = torch.tensor(list(itertools.product(range(vocab), repeat=length)), dtype=torch.long)
    return torch.unique(mask_after_eos(every, eos), dim=0)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    log_probs = torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
    return torch.where(labels != IGNORE, log_probs, torch.zeros_like(log_probs)).sum(-1)
