"""Sampling completions from a model: the pure ancestral-sampling config and one batched sampler.

Used online for student samples (inside the trainer) and for Monte Carlo estimates of
sequence-level divergences. Offline teacher sampling to a dataset (:mod:`fdistill.lm.offline`)
builds on the same two functions; its names are still importable from here.

Why a config of our own: a model's ``generation_config`` often carries decoding
heuristics (repetition penalties, ``no_repeat_ngram_size``, forced tokens, top-k=50).
The step-wise decomposition of f-DISTILL needs prefixes drawn from the model's own
distribution ``q`` (or a deliberately tempered/truncated one the user asks for), so
the sampler starts from a clean :class:`~transformers.GenerationConfig`.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from transformers import GenerationConfig

from fdistill.lm.data import DistillCollator, completion_mask
from fdistill.torch_utils import base_model
from fdistill.torch_utils import seeded as seeded  # imported from here too


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
    cache_implementation: str | None = None,
    vocab_size: int | None = None,
) -> GenerationConfig:
    """A generation config that samples from the model's own distribution unless told otherwise.

    ``top_k=0`` and ``top_p=1.0`` switch the filters off; ``do_sample=False`` gives greedy
    (``num_beams=1``) or beam search. ``cache_implementation="static"`` preallocates the KV
    cache, which transformers' ``generate`` pairs with a compiled decode step on CUDA;
    ``None`` is the dynamic cache. The samples do not depend on it (tested). ``vocab_size``
    below the model's LM-head rows suppresses the rows past it (padding past the tokenizer):
    the samples are then those of the softmax over the first ``vocab_size`` logits.
    """
    base = base_model(model)
    eos = base.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    padding = None
    if vocab_size is not None and vocab_size < base.get_output_embeddings().weight.shape[0]:
        padding = list(range(vocab_size, base.get_output_embeddings().weight.shape[0]))
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
        cache_implementation=cache_implementation,
        suppress_tokens=padding,
    )


def eos_ids(generation_config: GenerationConfig) -> list[int]:
    """The end-of-sequence token ids of ``generation_config`` as a list (none, one or several)."""
    eos = generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


@torch.no_grad()
def sample_completions(
    model, prompt_ids: Tensor, prompt_mask: Tensor, generation_config: GenerationConfig, *, return_output: bool = False
):
    """The completions ``generate`` draws for each prompt: ``(ids, mask)`` each ``(B·n, C)``; the mask keeps
    tokens up to the first EOS. With ``return_output`` also generate's own output (scores, when requested).

    The one place fdistill calls ``generate``: the model is put in eval mode (dropout off) while sampling and
    restored after, and the completion is sliced off the prompt (decoder-only) or the decoder start token
    (encoder–decoder). Prompts are left-padded for decoder-only models, right-padded for encoder–decoders.
    """
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask.long(), generation_config=generation_config
        )
    finally:
        model.train(was_training)
    sequences = out.sequences if hasattr(out, "sequences") else out
    completions = (
        sequences[:, 1:] if base_model(model).config.is_encoder_decoder else sequences[:, prompt_ids.shape[1] :]
    )
    mask = completion_mask(completions, eos_ids(generation_config))
    return (completions, mask, out) if return_output else (completions, mask)


def prompt_batches(model, tokenizer, prompts: list, *, batch_size: int, use_chat_template: bool = False):
    """Collated prompt batches ``(prompt_ids, prompt_mask)`` on the model's device, padded for its architecture."""
    collator = DistillCollator(
        tokenizer,
        is_encoder_decoder=bool(base_model(model).config.is_encoder_decoder),
        use_chat_template=use_chat_template,
    )
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        batch = collator([{"prompt": p} for p in prompts[start : start + batch_size]])
        yield batch["prompt_ids"].to(device), batch["prompt_mask"].to(device)


@torch.no_grad()
def sample_batches(
    model,
    tokenizer,
    prompts: list,
    generation_config: GenerationConfig,
    *,
    batch_size: int,
    use_chat_template: bool = False,
) -> list[tuple[Tensor, Tensor, float]]:
    """:func:`sample_completions` over ``prompts`` in batches: ``[(ids, mask, seconds), ...]`` in prompt order."""
    out = []
    for prompt_ids, prompt_mask in prompt_batches(
        model, tokenizer, prompts, batch_size=batch_size, use_chat_template=use_chat_template
    ):
        start = time.perf_counter()
        ids, mask = sample_completions(model, prompt_ids, prompt_mask, generation_config)
        out.append((ids, mask, time.perf_counter() - start))
    return out


# Offline teacher sampling, now in fdistill.lm.offline (and its folder in fdistill.lm.offline_store): still
# importable from here, loaded when first asked for (fdistill.lm.offline builds on this module).
_OFFLINE = (
    "DECODINGS",
    "OfflineSamplingSettings",
    "PROVENANCE_FILE",
    "SampleRow",
    "committed_batches",
    "empty_samples",
    "sample_offline",
    "sample_offline_with",
)


def __getattr__(name: str):
    """The offline sampling names' old home (``from fdistill.lm.sampling import sample_offline``)."""
    if name in _OFFLINE:
        from fdistill.lm import offline

        return getattr(offline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
