"""Online samples of a training step: how the student (and an online teacher) draw them, and when.

At the first loss call of an optimizer step the trainer draws one sample per prompt for every micro-batch of the step
(:class:`StepSamples`, :func:`draw_step`), so the global token/sequence counts are known before any loss is taken;
each micro-batch then gets its own samples put into its inputs (:func:`attach`). In evaluation, or a loss call
outside the training loop, a micro-batch's samples are drawn on the spot (:func:`online_samples`).

A rollout backend is a :data:`Sampler` per completion set (``"student"``, ``"teacher"``): a callable
``(prompt_ids, prompt_mask) -> (ids, mask)`` or ``-> (ids, mask, token_logprobs)`` (the drawing policy's
log-probabilities of the drawn tokens, as a vLLM server returns them). The trainer's are its
``generate_student_samples`` and ``generate_teacher_samples`` methods, which draw in this process with
``model.generate`` (:func:`sample_locally`: eval mode, KV cache — static on CUDA, where transformers compiles the
decode step — no gradient). Another backend (e.g. a student served by vLLM) is another `Sampler` for the same set.
Each drawn set is a :class:`Sample`, which records the policy that drew it (``policy_step``). Across tokenizers
(:mod:`fdistill.lm.cross_batches`) a sampler reads the prompts in its own model's tokenization (its ``prompts``
attribute names the batch keys, ``"prompt"`` by default) and its :class:`Sample` carries the completions in both.

Reused rollouts (``steps_per_generation = k``, :class:`RolloutGroups`): at the first step of each group of k steps
(global steps ``n`` with ``n % k == 0``, or the first step after a resume or an epoch's end) the trainer takes the
micro-batches of all the group's steps from the epoch iterator — in the chunks the Trainer's loop would take, so
every step sees exactly the batches it sees with k = 1 — and draws their samples in one call per sampler
(:func:`draw_together`). Steps after the first score samples of an older policy: :func:`attach` hands the drawing
policy's log-probabilities to the loss, which reweights them (:mod:`fdistill.lm.importance`). Queued samples live in
memory only: a checkpoint never records samples drawn and not used; a resumed run draws them again.

Training on the same samples again (``num_iterations = μ``): the train sampler yields each optimizer step's examples
μ times in a row (:class:`RepeatedSteps`), so the Trainer's loop counts every step and skips correctly on resume;
a group then spans ``k·μ`` steps, and a step that repeats the one before it draws nothing: it takes that step's
samples and counts, and the teacher's numbers that step kept (:attr:`PlannedStep.teacher`; the teacher is frozen,
so what it gave once it gives again). Such a step saves both the student's draw and the teacher's forward.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import wait
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import GenerationConfig

from fdistill.divergences import count_items
from fdistill.errors import InputError, RolloutError, nonfinite_sampling
from fdistill.lm.data import TEACHER_TOKENS
from fdistill.lm.sampling import sample_completions, sampling_config

# One completion per prompt: (prompt_ids, prompt_mask) -> (completion ids, completion mask[, token log-probs]).
Sampler = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]


class Sample(NamedTuple):
    """One completion set drawn for one micro-batch.

    Attributes:
        ids, mask: ``(B, C)`` right-padded completions and their mask.
        logprobs: ``(B, C)`` the drawing policy's log-probabilities of the drawn tokens (sampling temperature), or
            None (fresh samples need none; an in-process student's are computed when they will be stale).
        policy_step: the trainer global step whose student weights drew it; None for a fixed policy (the teacher).
        teacher_tokens: across tokenizers, ``(ids, mask)`` of the same completions in the teacher's tokenization
            (:mod:`fdistill.lm.cross_batches`); None otherwise.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor | None = None
    policy_step: int | None = None
    teacher_tokens: tuple[torch.Tensor, torch.Tensor] | None = None


Drawn = dict[str, Sample]  # completion set name -> its samples


def as_sample(drawn: tuple, policy_step: int | None = None) -> Sample:
    """A sampler's ``(ids, mask)``, ``(ids, mask, token_logprobs)`` or :class:`Sample` as a :class:`Sample`."""
    if isinstance(drawn, Sample):
        return drawn._replace(policy_step=policy_step)
    if len(drawn) not in (2, 3):
        raise TypeError(f"a sampler returns (ids, mask) or (ids, mask, token_logprobs), not {len(drawn)} values")
    return Sample(*drawn[:3], policy_step=policy_step) if len(drawn) == 3 else Sample(*drawn, policy_step=policy_step)


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


def prompt_key(sampler: Sampler) -> str:
    """The batch keys ``{key}_ids`` / ``{key}_mask`` of the prompts ``sampler`` reads: its ``prompts`` attribute
    (the teacher's tokenization across tokenizers), else ``"prompt"``."""
    return getattr(sampler, "prompts", "prompt")


def online_samples(
    batch: dict, samplers: dict[str, Sampler], device: torch.device, policy_steps: dict[str, int] | None = None
) -> Drawn:
    """The samples drawn during training for one micro-batch, one per prompt from each sampler, in their order."""
    steps = policy_steps or {}
    drawn = {}
    for name, sample in samplers.items():
        key = prompt_key(sample)
        drawn[name] = as_sample(
            sample(batch[f"{key}_ids"].to(device), batch[f"{key}_mask"].to(device)), steps.get(name)
        )
    return drawn


def draw_step(
    batches: list[dict],
    samplers: dict[str, Sampler],
    device: torch.device,
    reduction: str,
    accelerator,
    policy_steps: dict[str, int] | None = None,
) -> tuple[list[Drawn], dict[str, torch.Tensor]]:
    """The online samples of every micro-batch of the step, and each completion set's count over the global batch."""
    samples = [online_samples(batch, samplers, device, policy_steps) for batch in batches]
    return samples, step_counts(batches, samples, device, reduction, accelerator)


def cat_prompts(batches: list[dict], pad_id: int, left: bool, key: str = "prompt") -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts (batch keys ``{key}_ids`` / ``{key}_mask``) of several micro-batches as one batch, re-padded to
    the longest (on the left for decoder-only models, on the right for encoder–decoders, as the collator pads them)."""
    length = max(b[f"{key}_ids"].shape[1] for b in batches)
    ids, masks = [], []
    for b in batches:
        extra = length - b[f"{key}_ids"].shape[1]
        pad = (extra, 0) if left else (0, extra)
        ids.append(torch.nn.functional.pad(b[f"{key}_ids"], pad, value=pad_id))
        masks.append(torch.nn.functional.pad(b[f"{key}_mask"], pad, value=0))
    return torch.cat(ids), torch.cat(masks)


def _cut(ids: torch.Tensor, mask: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows ``start:stop`` of right-padded completions, cut to their longest; and that length."""
    mask = mask[start:stop]
    length = max(1, int(mask.sum(-1).max())) if mask.numel() else 1
    return ids[start:stop, :length], mask[:, :length], length


def _rows(sample: Sample, start: int, stop: int) -> Sample:
    """Rows ``start:stop`` of a sample, cut to their longest completion (what drawing them alone would give)."""
    ids, mask, length = _cut(sample.ids, sample.mask, start, stop)
    logprobs = None if sample.logprobs is None else sample.logprobs[start:stop, :length]
    other = None if sample.teacher_tokens is None else _cut(*sample.teacher_tokens, start, stop)[:2]
    return Sample(ids, mask, logprobs, sample.policy_step, other)


def draw_together(
    batches: list[dict],
    samplers: dict[str, Sampler],
    device: torch.device,
    pad_id: int,
    left: bool,
    policy_steps: dict[str, int] | None = None,
) -> list[Drawn]:
    """The samples of several micro-batches (several steps' worth) drawn in one call per sampler, split back into
    one :data:`Drawn` per micro-batch, in order. ``pad_id`` pads the prompts a sampler reads (a sampler with its own
    ``pad_id`` attribute, the teacher's across tokenizers, pads with that)."""
    steps = policy_steps or {}
    whole = {}
    for name, sample in samplers.items():
        prompt_ids, prompt_mask = cat_prompts(batches, getattr(sample, "pad_id", pad_id), left, prompt_key(sample))
        whole[name] = as_sample(sample(prompt_ids.to(device), prompt_mask.to(device)), steps.get(name))
    out, start = [], 0
    for b in batches:
        stop = start + b["prompt_ids"].shape[0]
        out.append({name: _rows(drawn, start, stop) for name, drawn in whole.items()})
        start = stop
    return out


def step_counts(
    batches: list[dict], samples: list[Drawn], device: torch.device, reduction: str, accelerator
) -> dict[str, torch.Tensor]:
    """Each completion set's item count (sequences or tokens) over the step's micro-batches and all processes."""
    counts = {}
    for batch, drawn in zip(batches, samples):
        masks = {n: batch[f"{n}_mask"] for n in ("reference", "teacher") if f"{n}_mask" in batch}
        masks.update({n: d.mask for n, d in drawn.items()})
        for name, mask in masks.items():
            n = count_items(mask.to(device), reduction)
            counts[name] = counts.get(name, 0) + n.float()
    if accelerator.num_processes > 1:
        counts = {k: accelerator.gather(v.reshape(1)).sum() for k, v in counts.items()}
    return counts


def missing(inputs: dict, samplers: dict[str, Sampler]) -> bool:
    """Whether ``inputs`` lacks the samples of any set the samplers draw (then they are drawn for it)."""
    return any(f"{name}_ids" not in inputs for name in samplers)


def attach(inputs: dict, drawn: Drawn, step: int | None = None) -> None:
    """Put drawn samples into ``inputs`` as ``{name}_ids`` / ``{name}_mask``; samples drawn by a policy older than
    the global ``step`` also as ``{name}_policy_logprobs`` and ``{name}_staleness`` (what the weights read)."""
    for name, sample in drawn.items():
        inputs[f"{name}_ids"], inputs[f"{name}_mask"] = sample.ids, sample.mask
        if sample.teacher_tokens is not None:  # across tokenizers: the teacher's tokens of the same completions
            inputs[f"{TEACHER_TOKENS}{name}_ids"], inputs[f"{TEACHER_TOKENS}{name}_mask"] = sample.teacher_tokens
        if step is not None and sample.policy_step is not None and sample.policy_step < step:
            if sample.logprobs is None:
                raise RuntimeError(f"stale {name} samples (step {sample.policy_step} < {step}) without log-probs")
            inputs[f"{name}_policy_logprobs"] = sample.logprobs
            inputs[f"{name}_staleness"] = step - sample.policy_step


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


@dataclass
class Submitted:
    """A background draw of a group's student samples (``rollout_overlap``): the future of the sampler's triple,
    the global step whose weights drew them, and the first training step they are for (named by its errors)."""

    future: Any
    policy_step: int
    step: int

    def discard(self) -> None:
        """Cancel the draw, or wait for it when it already runs: no draw outlives this call."""
        if not self.future.cancel():
            wait([self.future])

    def sampler(self) -> Sampler:
        """A :data:`Sampler` that answers with the future's samples (whatever prompts it is called with: the
        group's, as submitted); a failed draw is one `RolloutError` naming the step."""

        def result(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
            try:
                drawn = self.future.result()
            except Exception as error:
                raise RolloutError(
                    f"training step {self.step}: the student samples drawn for it in the background failed: "
                    f"{type(error).__name__}: {error}"
                ) from error
            if len(drawn) != 3:
                raise RolloutError(
                    f"training step {self.step}: a background draw must return (ids, mask, token_logprobs), the "
                    "log-probabilities that weight the stale samples."
                )
            return tuple(t.to(prompt_ids.device) for t in drawn)

        return result


@dataclass
class PlannedStep:
    """One optimizer step of a generation group: its micro-batches (as the Trainer's loop takes them), and once the
    group is drawn, their samples and the step's global counts. With ``num_iterations``, ``origin`` is the step whose
    samples a later pass trains on again (None: this step draws its own), and ``teacher`` the teacher's numbers on
    each micro-batch (by index), kept from the first pass for the next ones (one dict, shared with the origin)."""

    batches: list[dict]
    num_items: Any
    samples: list[Drawn] | None = None
    counts: dict[str, torch.Tensor] | None = None
    origin: PlannedStep | None = None
    teacher: dict[int, Any] = field(default_factory=dict)


def same_batches(a: list[dict], b: list[dict]) -> bool:
    """Whether two steps' micro-batches hold the same tensors (the same prompts, references, teacher samples)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.keys() != y.keys():
            return False
        for key, value in x.items():
            other = y[key]
            if isinstance(value, torch.Tensor):
                if not isinstance(other, torch.Tensor) or value.shape != other.shape or not torch.equal(value, other):
                    return False
            elif value != other:
                return False
    return True


class RepeatedSteps(torch.utils.data.Sampler):
    """The training sampler with ``num_iterations = μ > 1``: the dataset's indices (a permutation drawn from
    ``seed + epoch``, or in order) cut into blocks of one optimizer step's examples — ``block`` = per-device batch ×
    gradient accumulation × processes — and each block yielded μ times in a row.

    So the Trainer's loop sees every optimizer step as a step of its own (its epoch length, its logging, its skipping
    of trained batches on resume all count them), while each step's micro-batches come back for the μ − 1 steps
    after it; :class:`RolloutGroups` recognises them and trains on the samples already drawn. Processes: the loop's
    batch sampler hands whole batches out round-robin (accelerate's ``BatchSamplerShard``), so a block of
    ``batch × accumulation × processes`` examples is exactly one step's micro-batches on every process. A last block
    shorter than a step is left out (as TRL's ``RepeatSampler`` does): its examples would not make a whole step,
    and a new permutation is drawn every epoch, so no example is left out for good.
    """

    def __init__(self, size: int, block: int, repeats: int, shuffle: bool, seed: int):
        if size < block:
            raise InputError(
                f"num_iterations={repeats}: the training set has {size} examples, fewer than one optimizer step's "
                f"{block} (per-device batch × gradient_accumulation_steps × processes); use more examples or a "
                "smaller batch."
            )
        self.size, self.block, self.repeats, self.shuffle, self.seed, self.epoch = (
            size,
            block,
            repeats,
            shuffle,
            seed,
            0,
        )

    @property
    def left_out(self) -> int:
        """Examples of each epoch that make no whole step (the permutation's last ones)."""
        return self.size % self.block

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.size // self.block) * self.block * self.repeats

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.size))
        for start in range(0, self.size - self.left_out, self.block):
            for _ in range(self.repeats):
                yield from order[start : start + self.block]


class RolloutGroups:
    """The steps of the current generation group (``steps_per_generation = k``), taken ahead from the epoch iterator.

    :meth:`next_step` (from ``get_batch_samples``) hands out one step's micro-batches per call. When none is queued,
    it takes the micro-batches of the steps up to the next multiple of k (at most ``max_steps``) from the iterator:
    the step's own ``num_batches``, then chunks of ``gradient_accumulation_steps`` — the chunks the Trainer's loop
    takes, the last one cut short at the epoch's end as the loop's ``remainder`` is. A new epoch iterator drops
    what was queued from the old one (nothing is: a group stops at the epoch's end). :meth:`samples` draws the
    whole group at its first step's first loss call (``draw(group, pending)`` fills every :class:`PlannedStep`).

    With overlap (``submit`` given), starting a group also takes the *next* group's micro-batches and hands them to
    ``submit(group) -> Submitted`` (its samples are drawn while this group trains); the next group's draw then reads
    that future. :meth:`discard_pending` (at a checkpoint, at the end) cancels it: its steps keep their batches and
    draw their samples when they come.

    With ``num_iterations = μ > 1`` a group spans ``k·μ`` steps (up to the next multiple of ``k·μ``): the epoch
    iterator yields each step's micro-batches μ times in a row (:class:`RepeatedSteps`), and every step but the
    first of such a run is a replay of the one before it (:meth:`_link_replays`), which draws nothing: it trains on
    its origin's samples and counts, and on the teacher's numbers the origin kept. A group taken after a resume may
    start inside a run: its first step then draws its own samples, and the rest of the run replays it.
    """

    def __init__(self, k: int, iterations: int = 1):
        self.k, self.iterations = k, iterations
        self.queue: deque[PlannedStep] = deque()
        self.group: list[PlannedStep] = []
        self.source = None  # the future the current group's samples come from (overlap), or None: drawn here
        self.ahead: list[PlannedStep] = []  # the next group, taken early (overlap)
        self.pending = None  # the future of the next group's samples
        self.iterator = None

    def _take(self, pull, first: int, chunk: int, size: int) -> list[PlannedStep]:
        group = [PlannedStep(*pull(first))]
        while group[0].batches and len(group) < size:
            planned = PlannedStep(*pull(chunk))
            if not planned.batches:
                break
            group.append(planned)
        return group if group[0].batches else []

    @property
    def period(self) -> int:
        """Steps between two draws: k·μ (groups start at its multiples)."""
        return self.k * self.iterations

    def _size(self, step: int, max_steps: int) -> int:
        """Steps from global step ``step`` up to the next multiple of k·μ, and not past ``max_steps``."""
        size = self.period - step % self.period
        return min(size, max_steps - step) if max_steps > 0 else size

    def _link_replays(self, group: list[PlannedStep], step: int) -> None:
        """``num_iterations``: mark each step of ``group`` (the first is global step ``step + 1``) that repeats the
        step before it — every step not at a multiple of μ, after the group's first — with its origin; a replay
        whose micro-batches differ from its origin's is refused (the train sampler must repeat them)."""
        for i, planned in enumerate(group):
            if i == 0 or (step + i) % self.iterations == 0:
                continue
            before = group[i - 1]
            planned.origin = before.origin or before
            if not same_batches(planned.batches, planned.origin.batches):
                raise RolloutError(
                    f"training step {step + i + 1}: num_iterations={self.iterations} trains each step's samples "
                    f"again at the next {self.iterations - 1} steps, but this step's micro-batches are not the ones "
                    "of the step it repeats. fdistill's train sampler repeats them (FDistillMixin._get_train_sampler,"
                    " rollouts.RepeatedSteps); a get_train_dataloader of your own must too, or use num_iterations=1."
                )
            planned.teacher = planned.origin.teacher

    def next_step(
        self, iterator, num_batches: int, pull, step: int, chunk: int, max_steps: int, submit=None
    ) -> PlannedStep:
        """The micro-batches of global step ``step + 1``; ``pull(n) -> (batches, num_items)`` takes n from
        ``iterator``; ``submit(group) -> Submitted`` (overlap) starts drawing the next group's samples."""
        if iterator is not self.iterator:
            self.clear()
            self.iterator = iterator
        if not self.queue:
            if self.ahead:
                self.group, self.source, self.ahead, self.pending = self.ahead, self.pending, [], None
            else:
                self.group, self.source = self._take(pull, num_batches, chunk, self._size(step, max_steps)), None
                if self.iterations > 1:
                    self._link_replays(self.group, step)
            if not self.group:
                return PlannedStep([], None)
            self.queue.extend(self.group)
            after = step + len(self.group)
            if submit is not None and (max_steps <= 0 or after < max_steps):
                self.ahead = self._take(pull, chunk, chunk, self._size(after, max_steps))
                self.pending = submit(self.ahead) if self.ahead else None
        return self.queue.popleft()

    def samples(self, planned: PlannedStep, draw: Callable[[list[PlannedStep], Any], None]):
        """``(samples, counts)`` of a step of the current group, drawing the whole group on the first call."""
        if planned.samples is None:
            source, self.source = self.source, None
            draw([p for p in self.group if p.origin is None], source)
            for p in self.group:
                if p.origin is not None:  # num_iterations: trains on its origin's samples again
                    p.samples, p.counts = p.origin.samples, p.origin.counts
        return planned.samples, planned.counts

    def discard_pending(self) -> None:
        """Cancel the next group's background draw (its steps draw their samples when they come); waits for one
        already running, so that no draw outlives this call."""
        for name in ("pending", "source"):
            submitted = getattr(self, name)
            setattr(self, name, None)
            if submitted is not None:
                submitted.discard()

    def clear(self) -> None:
        """Drop the queued steps (drawn or not) and any background draw: nothing of them is ever saved."""
        self.discard_pending()
        self.queue.clear()
        self.group, self.ahead = [], []
        self.iterator = None
