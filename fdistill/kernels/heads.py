"""LM heads as data (weight, bias, logit scale, soft-capping) and capture of the hidden states that feed them.

The fused divergence (:mod:`fdistill.kernels.fused`) never materialises a model's
``[N, V]`` logits; it needs what the model would have multiplied instead:

    logits = cap · tanh( scale · (h Wᵀ + b) / cap )     (cap = None: no tanh)

:func:`output_head` reads these from a transformers model (tied embeddings, PEFT
and DDP wrappers included; BART's ``final_logits_bias``, Cohere's ``logit_scale``,
Gemma's ``final_logit_softcapping``); :func:`capture_head_inputs` runs a model so
that its output embedding returns a zero-stride placeholder instead of logits and
records the hidden states it was given; :func:`check_head` verifies, on a small
input, that the head reproduces the model's own logits — so an architecture with
another post-processing is refused rather than trained wrongly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fdistill.errors import InputError
from fdistill.torch_utils import base_model

__all__ = [
    "LinearHead",
    "apply_head_transform",
    "capture_head_inputs",
    "check_head",
    "head_logits",
    "label_logits",
    "output_head",
]


@dataclass
class LinearHead:
    """A model's output layer: ``logits = softcap·tanh(scale·(h Wᵀ + b)/softcap)``.

    Attributes:
        weight: ``(V, H)`` output embedding (the input embedding when tied; gradients reach it).
        bias: ``(V,)`` or ``None``.
        scale: multiplier of the logits (Cohere's ``logit_scale``; 1.0 for most models).
        softcap: final logit soft-capping (Gemma 2/3), or ``None``.
    """

    weight: Tensor
    bias: Tensor | None = None
    scale: float = 1.0
    softcap: float | None = None

    def __post_init__(self):
        if self.weight.dim() != 2:
            raise InputError(f"an LM head weight is (vocab, hidden); got shape {tuple(self.weight.shape)}.")
        if self.bias is not None and self.bias.shape != self.weight.shape[:1]:
            raise InputError(f"LM head bias {tuple(self.bias.shape)} does not match vocabulary {self.weight.shape[0]}.")
        if self.softcap is not None and not self.softcap > 0:
            raise InputError(f"softcap must be positive or None, got {self.softcap!r}.")

    def first_rows(self, vocab_size: int) -> LinearHead:
        """The head of the first ``vocab_size`` tokens only (a view: gradients reach the full weight), e.g. without
        the padding rows past the tokenizer (:func:`fdistill.lm.loading.shared_vocab_size`)."""
        if vocab_size == self.weight.shape[0]:
            return self
        if not 0 < vocab_size < self.weight.shape[0]:
            raise InputError(f"vocab_size must lie in [1, {self.weight.shape[0]}], got {vocab_size!r}.")
        bias = None if self.bias is None else self.bias[:vocab_size]
        return LinearHead(self.weight[:vocab_size], bias, self.scale, self.softcap)


def head_logits(head: LinearHead, hidden: Tensor) -> Tensor:
    """The logits the head gives for ``hidden`` ``(..., H) → (..., V)`` (the naive, materialising reference)."""
    logits = hidden @ head.weight.T
    if head.bias is not None:
        logits = logits + head.bias
    return apply_head_transform(logits, head)


def apply_head_transform(logits: Tensor, head: LinearHead) -> Tensor:
    """``softcap·tanh(scale·x/softcap)``: the head's element-wise map after ``h Wᵀ + b`` (identity for plain heads)."""
    if head.scale != 1.0:
        logits = logits * head.scale
    if head.softcap is not None:
        logits = torch.tanh(logits / head.softcap) * head.softcap
    return logits


def label_logits(head: LinearHead, hidden: Tensor, labels: Tensor) -> Tensor:
    """The logit of each row's label alone, ``(..., H), (...) → (...)`` in float32: a row-wise dot product."""
    logits = (hidden.float() * head.weight[labels].float()).sum(-1)
    if head.bias is not None:
        logits = logits + head.bias[labels].float()
    return apply_head_transform(logits, head)


def output_head(model: nn.Module) -> LinearHead:
    """The :class:`LinearHead` of a transformers causal-LM or seq2seq model (PEFT/DDP unwrapped)."""
    base = base_model(model)
    lm_head = base.get_output_embeddings()
    if lm_head is None or not isinstance(getattr(lm_head, "weight", None), Tensor):
        raise InputError(
            f"{type(base).__name__} has no linear output embedding; the fused divergence needs one "
            "(set fused_divergence=False)."
        )
    bias = getattr(lm_head, "bias", None)
    final_bias = getattr(base, "final_logits_bias", None)  # BART / Marian / Pegasus: logits + final_logits_bias
    if isinstance(final_bias, Tensor):
        final_bias = final_bias.reshape(-1)
        bias = final_bias if bias is None else bias + final_bias
    config = base.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = getattr(text_config, "logit_scale", None)
    softcap = getattr(text_config, "final_logit_softcapping", None)
    return LinearHead(lm_head.weight, bias, float(scale) if scale is not None else 1.0, softcap)


class _Placeholder(nn.Module):
    """Stands in for an output embedding: records its input, returns zero-stride zeros of the logits' shape."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.inputs: list[Tensor] = []

    def forward(self, hidden: Tensor) -> Tensor:
        self.inputs.append(hidden)
        return hidden.new_zeros(()).expand(*hidden.shape[:-1], self.vocab_size)


@contextlib.contextmanager
def capture_head_inputs(model: nn.Module):
    """Within the block, ``model``'s output embedding records its inputs instead of computing logits.

    Yields the list the hidden states are appended to (one ``(B, T, H)`` tensor per
    forward). The ``logits`` the model returns meanwhile are zeros without storage.
    """
    base = base_model(model)
    lm_head = base.get_output_embeddings()
    placeholder = _Placeholder(lm_head.weight.shape[0])
    base.set_output_embeddings(placeholder)
    try:
        yield placeholder.inputs
    finally:
        base.set_output_embeddings(lm_head)


@torch.no_grad()
def check_head(model: nn.Module, model_inputs: dict, *, atol: float = 1e-3) -> None:
    """Raise if :func:`output_head` applied to the captured hidden states differs from ``model``'s own logits.

    Runs in eval mode (no dropout, so no randomness is drawn) and restores the model's mode.
    """
    was_training = model.training
    model.eval()
    try:
        reference = model(**model_inputs, use_cache=False).logits
        with capture_head_inputs(model) as captured:
            model(**model_inputs, use_cache=False)
    finally:
        model.train(was_training)
    logits = head_logits(output_head(model), captured[-1])
    n = min(reference.shape[1], logits.shape[1])
    reference, logits = reference[:, -n:].float(), logits[:, -n:].float()
    # Non-finite entries that agree (a broken model's NaN, a banned token's -inf) are left to the trainer's NaN check.
    agree = ~torch.isfinite(reference) & ((logits == reference) | (logits.isnan() & reference.isnan()))
    gap = torch.where(agree, 0.0, (logits - reference).abs()).max().item()
    scale = torch.where(torch.isfinite(reference), reference.abs(), 0.0).max().item()
    if not gap <= atol * max(1.0, scale):
        raise InputError(
            f"{type(base_model(model)).__name__}: logits rebuilt from its output embedding differ from the model's own by "
            f"{gap:.3g}; this architecture post-processes its logits in a way the fused divergence does not know. Set "
            "fused_divergence=False."
        )
