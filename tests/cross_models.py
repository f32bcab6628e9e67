"""Tiny Llama models over any tokenizer's vocabulary (e.g. fdistill.testing.cross_tokenizers()), for cross-tokenizer
tests: two models with different tokenizers."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def llama_over(tok, seed: int, *, layers: int = 1, init: float = 0.1, dtype: torch.dtype = torch.float32):
    """A Llama over ``tok``'s vocabulary (its EOS and pad, no BOS), weights drawn after ``torch.manual_seed(seed)``;
    a larger ``init`` gives more peaked next-token distributions."""
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=init,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).to(dtype).eval()
