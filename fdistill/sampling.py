"""Sampling completions from a model: the pure ancestral-sampling config and one batched sampler.

Used online for student samples (inside the trainer) and for Monte Carlo estimates of
sequence-level divergences. Offline teacher sampling to a dataset builds on the same
two functions.

Why a config of our own: a model's ``generation_config`` often carries decoding
heuristics (repetition penalties, ``no_repeat_ngram_size``, forced tokens, top-k=50).
The step-wise decomposition of f-DISTILL needs prefixes drawn from the model's own
distribution ``q`` (or a deliberately tempered/truncated one the user asks for), so
the sampler starts from a clean :class:`~transformers.GenerationConfig`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import GenerationConfig

from fdistill.data import completion_mask


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def sampling_config(
    model,
    tokenizer,
    *,
    max_new_tokens: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
) -> GenerationConfig:
    """A generation config that samples from the model's own distribution unless told otherwise.

    ``top_k=0`` and ``top_p=1.0`` switch the filters off; ``do_sample=False`` gives greedy
    (``num_beams=1``) or beam search.
    """
    base = _unwrap(model)
    eos = base.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return GenerationConfig(
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_k=top_k if do_sample else None,
        top_p=top_p if do_sample else None,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=getattr(base.config, "decoder_start_token_id", None),
        use_cache=True,
    )


def eos_ids(generation_config: GenerationConfig) -> list[int]:
    eos = generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


@torch.no_grad()
def sample_completions(model, prompt_ids: Tensor, prompt_mask: Tensor, generation_config: GenerationConfig) -> tuple[Tensor, Tensor]:
    """One completion per prompt: ``(ids, mask)`` each ``(B, C)``; the mask keeps tokens up to the first EOS.

    The model is put in eval mode (dropout off) while sampling and restored after.
    Prompts are left-padded for decoder-only models, right-padded for encoder–decoders.
    """
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask.long(), generation_config=generation_config)
    finally:
        model.train(was_training)
    completions = out[:, 1:] if _unwrap(model).config.is_encoder_decoder else out[:, prompt_ids.shape[1] :]
    return completions, completion_mask(completions, eos_ids(generation_config))
