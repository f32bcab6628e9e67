"""Memory-efficient f-divergences from hidden states and LM heads (chunked PyTorch on CPU, Triton on CUDA)."""

from fdistill.kernels.fused import (
    FusedDivergence,
    HiddenSequences,
    default_chunk_size,
    fused_divergence,
    fused_f_divergence_loss,
    fused_token_logprobs,
)
from fdistill.kernels.heads import (
    LinearHead,
    apply_head_transform,
    capture_head_inputs,
    check_head,
    head_logits,
    label_logits,
    output_head,
)

__all__ = [
    "FusedDivergence",
    "HiddenSequences",
    "LinearHead",
    "apply_head_transform",
    "capture_head_inputs",
    "check_head",
    "default_chunk_size",
    "fused_divergence",
    "fused_f_divergence_loss",
    "fused_token_logprobs",
    "head_logits",
    "label_logits",
    "output_head",
]
