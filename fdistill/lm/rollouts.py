"""Online samples of a training step: how the student (and an online teacher) draw them, and when.

At the first loss call of an optimizer step the trainer draws one sample per prompt for every micro-batch of the step
(:class:`StepSamples`, :func:`draw_step`), so the global token/sequence counts are known before any loss is taken;
each micro-batch then gets its own samples put into its inputs (:func:`attach`). In evaluation, or a loss call
outside the training loop, a micro-batch's samples are drawn on the spot (:func:`online_samples`).

A rollout backend is a :data:`Sampler` per completion set (``"student"``, ``"teacher"``): a callable
``(prompt_ids, prompt_mask) -> (ids, mask)``. The trainer's are its ``generate_student_samples`` and
``generate_teacher_samples`` methods, which draw in this process with ``model.generate`` (:func:`sample_locally`:
eval mode, KV cache — static on CUDA, where transformers compiles the decode step — no gradient). Another backend
(e.g. a student served by vLLM) is another `Sampler` for the same set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationConfig

from fdistill.divergences import count_items
from fdistill.errors import nonfinite_sampling
from fdistill.lm.sampling import sample_completions, sampling_config

# One completion per prompt: (prompt_ids, prompt_mask) -> (completion ids, completion mask).
Sampler = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Drawn = dict[str, tuple[torch.Tensor, torch.Tensor]]  # completion set name -> (ids, mask)


def cache_implementation(choice: str, device: torch.device) -> str | None:
    """'static' KV cache on CUDA (transformers compiles the decode step), dynamic (None) elsewhere, unless set."""
    if choice == "auto":
        choice = "static" if device.type == "cuda" else "dynamic"
    return "static" if choice == "static" else None


def student_generation_config(
    model: nn.Module, tokenizer, settings, device: torch.device, vocab_size: int | None
) -> GenerationConfig:
    """How the student draws its online samples (``student_*`` settings, ``max_new_tokens``)."""
    return sampling_config(
        model,
        tokenizer,
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.student_do_sample,
        temperature=settings.student_sampling_temperature,
        top_k=settings.student_top_k,
        top_p=settings.student_top_p,
        num_beams=settings.student_num_beams,
        cache_implementation=cache_implementation(settings.student_generation_cache, device),
        vocab_size=vocab_size,
    )


def teacher_generation_config(
    teacher: nn.Module | None, tokenizer, settings, cache: str | None, vocab_size: int | None
) -> GenerationConfig | None:
    """How an online teacher (``teacher_sampling="online"``) draws its samples: ancestral, ``max_new_tokens`` long;
    None when the objective reads no teacher samples or reads them from the dataset."""
    if not settings.needs_teacher_samples or settings.reads_teacher_samples:
        return None
    return sampling_config(
        teacher, tokenizer, max_new_tokens=settings.max_new_tokens, cache_implementation=cache, vocab_size=vocab_size
    )


def greedy_config(model: nn.Module, tokenizer, max_new_tokens: int, vocab_size: int | None) -> GenerationConfig:
    """Greedy decoding, ``max_new_tokens`` long: the student's replies in evaluation (``predict_with_generate``)."""
    return sampling_config(model, tokenizer, max_new_tokens=max_new_tokens, do_sample=False, vocab_size=vocab_size)


def sample_locally(
    model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, config: GenerationConfig, who: str, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One completion per prompt from ``model`` in this process (eval mode, KV cache, no gradient): ``(ids, mask)``;
    a NaN/inf in its logits names ``who`` ('student' or 'teacher') and the training ``step``."""
    with nonfinite_sampling(who, f"training step {step}"):
        return sample_completions(model, prompt_ids, prompt_mask, config)


def online_samples(batch: dict, samplers: dict[str, Sampler], device: torch.device) -> Drawn:
    """The samples drawn during training for one micro-batch, one per prompt from each sampler, in their order."""
    prompts = (batch["prompt_ids"].to(device), batch["prompt_mask"].to(device))
    return {name: tuple(sample(*prompts))[:2] for name, sample in samplers.items()}  # a served sampler adds log-probs


def draw_step(
    batches: list[dict], samplers: dict[str, Sampler], device: torch.device, reduction: str, accelerator
) -> tuple[list[Drawn], dict[str, torch.Tensor]]:
    """The online samples of every micro-batch of the step, and each completion set's count over the global batch."""
    samples = [online_samples(batch, samplers, device) for batch in batches]
    counts = {}
    for batch, drawn in zip(batches, samples):
        masks = {n: batch[f"{n}_mask"] for n in ("reference", "teacher") if f"{n}_mask" in batch}
        masks.update({n: mask for n, (_, mask) in drawn.items()})
        for name, mask in masks.items():
            n = count_items(mask.to(device), reduction)
            counts[name] = counts.get(name, 0) + n.float()
    if accelerator.num_processes > 1:
        counts = {k: accelerator.gather(v.reshape(1)).sum() for k, v in counts.items()}
    return samples, counts


def missing(inputs: dict, samplers: dict[str, Sampler]) -> bool:
    """Whether ``inputs`` lacks the samples of any set the samplers draw (then they are drawn for it)."""
    return any(f"{name}_ids" not in inputs for name in samplers)


def attach(inputs: dict, drawn: Drawn) -> None:
    """Put drawn samples into ``inputs`` as ``{name}_ids`` / ``{name}_mask``."""
    for name, (ids, mask) in drawn.items():
        inputs[f"{name}_ids"], inputs[f"{name}_mask"] = ids, mask


class StepSamples:
    """The online samples of one optimizer step, drawn at its first loss call for all its micro-batches.

    ``start(batches)`` (from ``get_batch_samples``) resets it; ``next(draw)`` draws every micro-batch's
    samples and the global counts on the first call (``draw(batches) -> (samples, counts)``), then hands
    out one micro-batch's samples per call.
    """

    def __init__(self):
        self.batches: list[dict] | None = None
        self.samples: list[dict] | None = None
        self.counts: dict[str, torch.Tensor] | None = None
        self.index = 0

    def start(self, batches: list[dict]) -> None:
        self.batches, self.samples, self.counts, self.index = batches, None, None, 0

    @property
    def pending(self) -> bool:
        return self.batches is not None and self.index < len(self.batches)

    def next(self, draw) -> dict:
        if self.samples is None:
            self.samples, self.counts = draw(self.batches)
        drawn = self.samples[self.index]
        self.index += 1
        return drawn
