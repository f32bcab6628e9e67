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

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from datasets import Dataset, load_from_disk
from torch import Tensor
from tqdm.auto import tqdm
from transformers import GenerationConfig

from fdistill.checks import output_folder
from fdistill.errors import InputError
from fdistill.lm.data import DistillCollator, check_prompts, completion_mask, is_blank, position_limit, positions_needed
from fdistill.storage import (
    LOCK_FILE,
    MANIFEST,
    atomic_write,
    check_manifest,
    has_manifest,
    manifest_problem,
    owned_folder,
    read_json,
    write_manifest,
    writing,
)
from fdistill.torch_utils import base_model, model_devices, seeded

logger = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------------- offline teacher sampling

DECODINGS = ("sample", "beam", "greedy")


@dataclass
class OfflineSamplingSettings:
    """How `sample_offline` draws teacher samples (f-DISTILL §2.3: teacher samples are drawn once, before training).

    Attributes:
        decoding: ``"sample"`` (ancestral, the f-DISTILL targets), ``"beam"`` (SeqKD targets) or ``"greedy"``.
        num_samples: samples per input (k); for beam search the k best beams (k ≤ num_beams).
        temperature, top_k, top_p: sampling filters (``top_k=0``, ``top_p=1`` = pure ancestral sampling).
        num_beams: beams for ``decoding="beam"``.
        max_new_tokens: length limit of each sample.
        batch_size: inputs per generate call (inputs are batched by prompt length).
        seed: base seed; batch ``b`` is drawn with seed ``seed·1000003 + b``, so results do not
            depend on how many processes share the work or on interruptions.
        topk_logprobs: if > 0, also store the teacher's k most likely tokens and their
            log-probabilities (untempered) at every position of each sample.
        prompt_column, max_prompt_length, use_chat_template: how prompts are tokenised — the
            same as `FDistillConfig` uses at training time, so samples condition on the same tokens.
    """

    decoding: str = "sample"
    num_samples: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 4
    max_new_tokens: int = 64
    batch_size: int = 16
    seed: int = 0
    topk_logprobs: int = 0
    prompt_column: str = "prompt"
    max_prompt_length: int = 256
    use_chat_template: bool = False

    def __post_init__(self):
        problems = []
        for f in fields(self):  # types first: a YAML "3" or 2.5 must not reach the comparisons below
            value, kind = getattr(self, f.name), type(f.default)
            allowed = (int, float) if kind is float else kind
            if not isinstance(value, allowed) or (isinstance(value, bool) and kind is not bool):
                problems.append(f"{f.name}={value!r}: use a{'n' if kind is int else ''} {kind.__name__}")
        if problems:
            raise InputError("invalid sampling settings: " + "; ".join(problems) + ".")
        if self.decoding not in DECODINGS:
            problems.append(f"decoding={self.decoding!r}: use one of {', '.join(DECODINGS)}")
        if self.num_samples < 1:
            problems.append(f"num_samples={self.num_samples}: use 1 or more")
        if self.decoding == "greedy" and self.num_samples != 1:
            problems.append("greedy decoding gives one output per input: use num_samples=1 or decoding='sample'")
        if self.decoding == "beam" and self.num_samples > self.num_beams:
            problems.append(
                f"num_samples={self.num_samples} > num_beams={self.num_beams}: beam search returns at most num_beams"
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            problems.append(
                f"temperature={self.temperature}: use a finite positive temperature (1.0 = the model's own distribution)"
            )
        if self.top_k < 0 or not 0 < self.top_p <= 1:  # NaN fails 0 < top_p
            problems.append(f"top_k={self.top_k}, top_p={self.top_p}: use top_k >= 0 and 0 < top_p <= 1")
        for name in ("max_new_tokens", "batch_size", "max_prompt_length", "num_beams"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: use a positive number")
        if self.topk_logprobs and self.decoding == "beam":
            problems.append(
                "topk_logprobs with beam search is not supported (generate's per-step logits follow "
                "live beams, not the returned ones): use decoding='sample' or 'greedy', or topk_logprobs=0"
            )
        if self.topk_logprobs < 0:
            problems.append(f"topk_logprobs={self.topk_logprobs}: use 0 (off) or a positive k")
        if not self.prompt_column:
            problems.append("prompt_column='': name the column that holds the prompts")
        if problems:
            raise InputError("invalid sampling settings: " + "; ".join(problems) + ".")

    def check_for_teacher(self, vocab_size: int) -> None:
        """Refuse settings the teacher's vocabulary of ``vocab_size`` makes impossible: ``topk_logprobs`` past it, and a
        ``batch_size`` whose float32 next-token logits (``batch_size × num_samples × beams × vocab × 4`` bytes, times
        ``max_new_tokens`` with ``topk_logprobs``: every step's are kept) exceed all the memory here."""
        from fdistill.checks import batch_fits

        if self.topk_logprobs > vocab_size:
            raise InputError(
                f"invalid sampling settings: topk_logprobs={self.topk_logprobs}: the teacher has only {vocab_size} "
                f"tokens; use at most {vocab_size} (or 0: off)."
            )

        rows = self.num_samples * (self.num_beams if self.decoding == "beam" else 1)
        steps = self.max_new_tokens if self.topk_logprobs else 1
        batch_fits(
            "batch_size",
            self.batch_size,
            rows * steps * vocab_size * 4,
            f"the teacher's float32 logits of one batch (batch × {rows} sequences × {steps} kept steps × {vocab_size} "
            "vocabulary × 4 bytes)",
            " inputs per batch",
        )

    def generation_config(self, model, tokenizer) -> GenerationConfig:
        cfg = sampling_config(
            model,
            tokenizer,
            max_new_tokens=self.max_new_tokens,
            do_sample=self.decoding == "sample",
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            num_beams=self.num_beams if self.decoding == "beam" else 1,
        )
        cfg.num_return_sequences = self.num_samples
        if self.topk_logprobs:
            cfg.output_logits, cfg.return_dict_in_generate = True, True
        return cfg


PROVENANCE_FILE = "fdistill_provenance.json"
_WORK_DIR = ".fdistill_work"


@dataclass(frozen=True)
class SampleRow:
    """One teacher sample as :func:`sample_offline` stores it, beside its input's columns: which input and sample
    it is, its token ids (EOS kept when the teacher stopped there) and text, whether the teacher stopped (EOS, not
    the length limit) and, with ``topk_logprobs``, the teacher's top-k ids and log-probabilities at each position
    (None, and no such columns, without)."""

    input_index: int
    sample_index: int
    teacher_sample_ids: list[int]
    teacher_sample: str
    teacher_stopped: bool
    teacher_topk_ids: list[list[int]] | None = None
    teacher_topk_logprobs: list[list[float]] | None = None

    @classmethod
    def of(cls, row: SampleRow | dict) -> SampleRow:
        """``row``, or the row a dict of these fields describes (a sampler may give either)."""
        return row if isinstance(row, SampleRow) else cls(**row)

    def record(self) -> dict:
        """The row's columns and values as stored, in this order; the top-k columns only when drawn."""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.teacher_topk_ids is None:
            del record["teacher_topk_ids"], record["teacher_topk_logprobs"]
        return record


# The provenance fields a sampling run's samples depend on; a rerun resumes only when all are equal.
_RUN_IDENTITY = ("teacher_fingerprint", "tokenizer_fingerprint", "settings", "dataset_fingerprint", "num_inputs")


def _run_changes(previous: dict, current: dict) -> list[str]:
    """What differs between an earlier run's provenance record and this run's, in words (empty: the same run)."""
    changes = []
    if "teacher_fingerprint" not in previous:  # a record written before fingerprints: the name is all there is
        if previous.get("teacher") != current["teacher"]:
            changes.append(f"teacher {previous.get('teacher')!r} -> {current['teacher']!r}")
    for key, what in (("teacher_fingerprint", "teacher"), ("tokenizer_fingerprint", "tokenizer")):
        if key in previous and previous[key] != current[key]:
            changes.append(f"the {what} changed (content fingerprint {previous[key]} -> {current[key]})")
    old, new = previous.get("settings", {}), current["settings"]
    changes += [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
    ]
    if previous.get("num_inputs") != current["num_inputs"]:
        changes.append(f"number of inputs: {previous.get('num_inputs')} -> {current['num_inputs']}")
    elif previous.get("dataset_fingerprint") != current["dataset_fingerprint"]:
        changes.append("the input data changed")
    return changes


def _check_lengths(limit: int | None, prompts: list[list[int]], settings, is_encoder_decoder: bool) -> None:
    """Refuse prompts (after truncation to max_prompt_length) that, with max_new_tokens, exceed the teacher's
    positions (``limit``: its ``position_limit``, or a server's max_model_len; None = no limit)."""
    if limit is None:
        return
    row = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    longest = len(prompts[row])
    if not longest:
        raise InputError(
            f"prompt row {next(i for i, p in enumerate(prompts) if not p)} tokenises to no tokens: "
            "fix or drop that row."
        )
    needed = positions_needed(longest, settings.max_new_tokens, is_encoder_decoder)
    if needed > limit:
        shape = (
            f"the encoder reads {longest} and the decoder writes 1 + max_new_tokens={settings.max_new_tokens}"
            if is_encoder_decoder
            else f"{longest} prompt tokens + max_new_tokens={settings.max_new_tokens}"
        )
        raise InputError(
            f"the longest prompt (row {row}) needs {needed} positions ({shape}), more than the teacher's "
            f"{limit} (config max_position_embeddings / n_positions): lower max_new_tokens or "
            f"max_prompt_length={settings.max_prompt_length} (prompts keep their end), or shorten that prompt."
        )


def committed_batches(output_dir: str) -> int:
    """How many batches of an unfinished sampling run in ``output_dir`` are committed (a rerun keeps them)."""
    work = Path(output_dir) / _WORK_DIR
    return len(list(work.glob(f"batch_*.jsonl{_COMMITTED}"))) if work.is_dir() else 0


def _fingerprint(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:20]


def sample_offline(
    model,
    tokenizer,
    dataset: Dataset,
    output_dir: str,
    settings: OfflineSamplingSettings,
    *,
    teacher_id: str,
    teacher_revision: str | None = None,
    teacher_fingerprint: dict[str, str] | None = None,
    show_progress: bool = True,
) -> Dataset:
    """Draw teacher samples for every input once and save them as a `datasets` dataset at ``output_dir``.

    Work is split into batches of similar prompt length; batch ``b`` is drawn by process
    ``b mod world_size`` with its own seed and written to its own file, atomically. A
    re-run with the same teacher, tokenizer, data and settings skips finished batches (resume
    after interruption: no row lost or duplicated); a re-run under another teacher or tokenizer
    (by content, `fdistill.lm.loading.model_fingerprint`), other data or other settings is refused,
    so one dataset never mixes two teachers. Each batch file is committed by a manifest of its sha256
    (:mod:`fdistill.storage`): one cut short or changed after it was written is drawn again. When every
    batch is done the main process merges them in input order, saves the dataset and only then makes it
    loadable (``state.json`` moved last), writes the provenance record ``fdistill_provenance.json`` and, last,
    the manifest of the dataset's files, checked whenever the folder is read again (`load_data`, a rerun).
    The folder is locked for the run: a second run on it stops with one line naming the holder.

    Bad input (missing column, unusable prompt, prompt + ``max_new_tokens`` beyond the teacher's
    positions, no pad token, an output path that is a file or a foreign folder) is an `InputError`
    raised before anything is generated or written.

    Output columns: the input columns, ``input_index``, ``sample_index``,
    ``teacher_sample_ids`` (EOS kept when the teacher stopped there), ``teacher_sample``
    (text), ``teacher_stopped`` (ended by EOS, not the length limit) and, with
    ``topk_logprobs``, ``teacher_topk_ids`` / ``teacher_topk_logprobs`` per position.

    Arguments:
        teacher_id, teacher_revision: how the user named the teacher (recorded, not compared).
        teacher_fingerprint: ``model_fingerprint(...)`` of teacher and tokenizer; computed from
            ``model`` and ``tokenizer`` when not given.

    Run it under ``accelerate launch`` to share the work between processes. A teacher behind a
    vLLM server: :func:`fdistill.lm.served.sample_offline_served`.
    """
    from fdistill.lm.loading import model_fingerprint

    return sample_offline_with(
        _LocalSampler(model, tokenizer),
        tokenizer,
        dataset,
        output_dir,
        settings,
        teacher_id=teacher_id,
        teacher_revision=teacher_revision,
        fingerprint=lambda: teacher_fingerprint or model_fingerprint(model, tokenizer),
        show_progress=show_progress,
    )


class _LocalSampler:
    """The teacher of :func:`sample_offline_with` as a model in this process (``generate``).

    A sampler has ``is_encoder_decoder``, ``position_limit`` (None: no limit), ``prepare(settings, device)``
    (validate against the teacher, move it; before anything is drawn) and ``draw(prompts, indices, settings,
    batch_id) -> rows`` (one batch of inputs: a :class:`SampleRow`, or a dict of its fields, per input and sample).
    """

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.is_encoder_decoder = bool(base_model(model).config.is_encoder_decoder)
        self.position_limit = position_limit(model)
        self.generation_config, self.device = None, None

    def prepare(self, settings: OfflineSamplingSettings, device) -> None:
        self.generation_config = settings.generation_config(self.model, self.tokenizer)  # validates against the model
        settings.check_for_teacher(base_model(self.model).get_output_embeddings().weight.shape[0])
        self.device = device
        self.model.to(device)

    def draw(self, prompts, indices, settings, batch_id) -> list[SampleRow]:
        return _sample_batch(
            self.model,
            self.tokenizer,
            self.is_encoder_decoder,
            prompts,
            indices,
            self.generation_config,
            settings,
            self.device,
            batch_id,
        )


def sample_offline_with(
    sampler,
    tokenizer,
    dataset: Dataset,
    output_dir: str,
    settings: OfflineSamplingSettings,
    *,
    teacher_id: str,
    teacher_revision: str | None,
    fingerprint,
    extra_provenance: dict | None = None,
    show_progress: bool = True,
) -> Dataset:
    """:func:`sample_offline` with any teacher ``sampler`` (see :class:`_LocalSampler`): the batching, files,
    resume, refusal of another run and provenance, whoever draws the samples. ``fingerprint`` is
    ``{"model", "tokenizer"}`` (or a function giving it, called once); ``extra_provenance`` is recorded as well."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # several CPU processes need the gloo group
    # ---- validation: all before any generation or any write
    out = Path(output_folder("output", output_dir))
    _check_inputs(tokenizer, dataset, settings)
    fingerprint = fingerprint() if callable(fingerprint) else fingerprint
    provenance = _provenance(dataset, settings, teacher_id, teacher_revision, fingerprint, extra_provenance)
    prompts = _prompt_tokens(sampler, tokenizer, dataset, settings)
    sampler.prepare(settings, state.device)  # validates the settings against the teacher
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))  # batch by length
    batches = [order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
    work = out / _WORK_DIR
    claim = functools.partial(_claim_folder, out, output_dir, provenance)
    with owned_folder(out, "fdistill sample", state=state, claim=claim) as finished:
        if not finished:
            _draw(sampler, prompts, batches, work, settings, state, show_progress)
            if state.is_main_process:
                _merge(dataset, batches, work, out, settings, provenance)
            state.wait_for_everyone()
    return load_from_disk(str(out))


def _check_inputs(tokenizer, dataset: Dataset, settings: OfflineSamplingSettings) -> None:
    """Refuse, before any work, a dataset without the prompt column, an empty one, a tokenizer without a pad token
    and unusable prompts (:func:`fdistill.lm.data.check_prompts`)."""
    if settings.prompt_column not in dataset.column_names:
        raise InputError(
            f"the dataset has no column {settings.prompt_column!r} (it has {dataset.column_names}): set the "
            "prompt column (prompt_column, --prompt-column) to one of them."
        )
    if len(dataset) == 0:
        raise InputError("the dataset is empty (0 rows): give at least one input to sample.")
    if tokenizer.pad_token_id is None:
        raise InputError(
            "the teacher's tokenizer has no pad token; batched generation needs one "
            "(e.g. tokenizer.pad_token = tokenizer.eos_token)."
        )
    check_prompts(dataset[settings.prompt_column], settings.prompt_column)


def _provenance(
    dataset: Dataset,
    settings: OfflineSamplingSettings,
    teacher_id: str,
    teacher_revision: str | None,
    fingerprint: dict,
    extra_provenance: dict | None,
) -> dict:
    """The run's provenance record, with its ``run_id``: the fingerprint of what the samples depend on
    (:data:`_RUN_IDENTITY`)."""
    from fdistill._version import __version__

    provenance = {
        "teacher": teacher_id,
        "teacher_revision": teacher_revision,
        "teacher_fingerprint": fingerprint["model"],
        "tokenizer_fingerprint": fingerprint["tokenizer"],
        "settings": asdict(settings),
        "dataset_fingerprint": getattr(dataset, "_fingerprint", None),
        "num_inputs": len(dataset),
        "fdistill_version": __version__,
        **(extra_provenance or {}),
    }
    # what the samples depend on: content, not how the teacher was named (./t and /abs/t resume the same run)
    provenance["run_id"] = _fingerprint({k: provenance[k] for k in _RUN_IDENTITY})
    return provenance


def _prompt_tokens(sampler, tokenizer, dataset: Dataset, settings: OfflineSamplingSettings) -> list[list[int]]:
    """Every input's prompt tokens, as the trainer's collator makes them; refused when the longest, with
    ``max_new_tokens``, exceeds the teacher's positions (:func:`_check_lengths`)."""
    collator = DistillCollator(
        tokenizer,
        is_encoder_decoder=sampler.is_encoder_decoder,
        prompt_column=settings.prompt_column,
        max_prompt_length=settings.max_prompt_length,
        use_chat_template=settings.use_chat_template,
    )
    prompts = [collator.prompt_tokens(p) for p in dataset[settings.prompt_column]]
    _check_lengths(sampler.position_limit, prompts, settings, sampler.is_encoder_decoder)
    return prompts


def _claim_folder(out: Path, output_dir: str, provenance: dict) -> bool:
    """Under the folder's lock, before anything is written: True when ``out`` holds this run's finished samples
    (verified against their manifest), False when this run may (continue to) draw there; else one `InputError`."""
    work, record = out / _WORK_DIR, out / PROVENANCE_FILE
    redo = f"delete {output_dir!r} and rerun to draw the samples again"
    if record.exists() and (has_manifest(out) or not work.exists()):  # finished (older fdistill: no manifest)
        if has_manifest(out):
            check_manifest(out, redo + ".")
        else:
            logger.warning("%s has no %s (written by an older fdistill): its files are not verified.", out, MANIFEST)
        changes = _run_changes(read_json(record, redo), provenance)
        if changes:
            raise InputError(
                f"{output_dir!r} already holds finished samples from a different run ({'; '.join(changes)}); "
                "delete that folder or choose another output folder."
            )
        shutil.rmtree(work, ignore_errors=True)  # left by a run stopped while cleaning up
        return True
    run_file = work / "run.json"
    done = committed_batches(output_dir)
    if done and not run_file.exists():
        raise InputError(
            f"{output_dir!r} holds {done} sampled batches but no run record ({run_file} is gone), so "
            "they cannot be checked against this run: delete that folder or choose another output folder."
        )
    if done:  # an unfinished run: resume only the very same run
        changes = _run_changes(read_json(run_file, redo), provenance)
        if changes:
            raise InputError(
                f"{output_dir!r} holds an unfinished run ({done} batches done) that differs from this one "
                f"({'; '.join(changes)}); resuming would mix them. Rerun with the earlier teacher, tokenizer, data and "
                "settings to finish it, or delete that folder (or choose another) to start afresh."
            )
    elif any(p.name not in (LOCK_FILE, _WORK_DIR) for p in out.iterdir()):
        raise InputError(
            f"{output_dir!r} exists and is not an fdistill sampling folder; choose an empty or new folder."
        )
    else:  # nothing drawn yet: (re)write the record, so a corrected rerun after a failed start is welcome
        with writing(f"the run record {run_file}", "free space, then rerun the same command"):
            work.mkdir(parents=True, exist_ok=True)
            atomic_write(run_file, json.dumps(provenance, indent=1, default=str))
    return False


_COMMITTED = ".manifest.json"  # batch_N.jsonl is committed when batch_N.jsonl.manifest.json (its sha256) is there


def _committed(work: Path, name: str) -> bool:
    """Whether batch file ``name`` is committed and as written; one changed or cut short since is drawn again."""
    if not (work / (name + _COMMITTED)).exists():
        return False
    problem = manifest_problem(work, name + _COMMITTED)
    if problem is None:
        return True
    logger.warning("%s: drawing that batch again.", problem)
    (work / (name + _COMMITTED)).unlink()
    return False


def _draw(sampler, prompts, batches, work: Path, settings, state, show_progress: bool) -> None:
    """This process's share of the batches not yet committed, each written atomically and committed by its digest."""
    mine = [b for b in range(len(batches)) if b % state.num_processes == state.process_index]
    todo = [b for b in mine if not _committed(work, _batch_file(b))]
    progress = tqdm(
        total=len(mine),
        initial=len(mine) - len(todo),
        desc=f"teacher samples [{state.process_index}]",
        unit="batch",
        disable=not show_progress,
    )
    start, n_inputs, n_tokens = time.perf_counter(), 0, 0
    for b in todo:
        indices = batches[b]
        rows = [SampleRow.of(r) for r in sampler.draw(prompts, indices, settings, b)]
        text = "".join(json.dumps(r.record()) + "\n" for r in rows)
        with writing(f"batch {b} to {work}", "rerun the same command: committed batches are kept"):
            atomic_write(work / _batch_file(b), text)
            write_manifest(work, [_batch_file(b)], name=_batch_file(b) + _COMMITTED)
        n_inputs += len(indices)
        n_tokens += sum(len(r.teacher_sample_ids) for r in rows)
        elapsed = time.perf_counter() - start
        progress.set_postfix(inputs_per_s=f"{n_inputs / elapsed:.2f}", tokens_per_s=f"{n_tokens / elapsed:.1f}")
        progress.update(1)
    progress.close()
    state.wait_for_everyone()


def _batch_file(b: int) -> str:
    return f"batch_{b:06d}.jsonl"


@torch.no_grad()
def _sample_batch(
    model, tokenizer, is_encoder_decoder, prompts, indices, generation_config, settings, device, batch_id
) -> list[SampleRow]:
    from fdistill.lm.data import pad_left, pad_right

    pad = tokenizer.pad_token_id
    rows_in = [prompts[i] for i in indices]
    ids, mask = (pad_right if is_encoder_decoder else pad_left)(rows_in, pad)
    with seeded(settings.seed * 1_000_003 + batch_id, devices={device, *model_devices(model)}):  # per batch
        completions, keep, out = sample_completions(
            model, ids.to(device), mask.to(device), generation_config, return_output=True
        )
    eos = torch.tensor(eos_ids(generation_config) or [-1], device=completions.device)
    topk = None
    if settings.topk_logprobs:
        logits = torch.stack(out.logits, dim=1).float()  # (B·k, C, V), raw (untempered) scores
        values, token_ids = torch.log_softmax(logits, -1).topk(settings.topk_logprobs, dim=-1)
        topk = (token_ids, values)
    rows = []
    k = settings.num_samples
    for r in range(completions.shape[0]):
        i, s = indices[r // k], r % k
        sample = completions[r][keep[r]]
        n = len(sample)
        rows.append(
            SampleRow(
                input_index=i,
                sample_index=s,
                teacher_sample_ids=sample.tolist(),
                teacher_sample=tokenizer.decode(sample, skip_special_tokens=True).strip(),
                teacher_stopped=bool(torch.isin(sample[-1:], eos).any()) if len(sample) else False,
                teacher_topk_ids=topk[0][r, :n].tolist() if topk is not None else None,
                teacher_topk_logprobs=(
                    [[round(v, 6) for v in pos] for pos in topk[1][r, :n].tolist()] if topk is not None else None
                ),
            )
        )
    return rows


def empty_samples(rows: list[dict]) -> list[int]:
    """Indices of the sample rows whose text is empty (blank: the teacher stopped at once, or wrote only special or
    control characters); counted in the provenance record as ``empty_samples`` and logged, never dropped."""
    return [i for i, r in enumerate(rows) if is_blank(r["teacher_sample"])]


def _merge(dataset: Dataset, batches, work: Path, out: Path, settings, provenance) -> None:
    """Merge the verified batch files in input order, and publish the dataset: its files, the provenance record,
    then their manifest, last (:mod:`fdistill.storage`); only then is the work folder removed."""
    rows = []
    redo = "rerun the same command to draw that batch again"
    for b, indices in enumerate(batches):
        name = _batch_file(b)
        if not (work / (name + _COMMITTED)).exists():
            raise InputError(f"batch {b} ({work / name}) is not committed: {redo}.")
        check_manifest(work, f"delete it and {redo}.", name=name + _COMMITTED)
        batch = [json.loads(line) for line in (work / name).read_text().splitlines()]
        got = sorted((r["input_index"], r["sample_index"]) for r in batch)
        want = sorted((i, s) for i in indices for s in range(settings.num_samples))
        if got != want:
            raise InputError(
                f"{work / name} holds {len(got)} rows that are not batch {b}'s {len(want)} (inputs × samples): "
                f"delete it and {redo}."
            )
        rows.extend(batch)
    rows.sort(key=lambda r: (r["input_index"], r["sample_index"]))
    expected = [(i, s) for i in range(len(dataset)) for s in range(settings.num_samples)]
    got = [(r["input_index"], r["sample_index"]) for r in rows]
    if got != expected:  # the batches cover every input once: a bug if not
        raise RuntimeError(f"sample rows do not match the inputs ({len(got)} rows for {len(expected)} expected).")
    merged = dataset.select([r["input_index"] for r in rows])
    for column in rows[0]:
        if column in merged.column_names:
            merged = merged.remove_columns(column)
        merged = merged.add_column(column, [r[column] for r in rows])
    merged.info.description = "fdistill offline teacher samples; provenance: " + json.dumps(provenance, default=str)
    staging = work / "final"
    with writing(f"the sampled dataset to {out}", "rerun the same command: the drawn batches are kept"):
        if staging.exists():
            shutil.rmtree(staging)
        merged.save_to_disk(str(staging))
        files = sorted(staging.iterdir(), key=lambda p: p.name == "state.json")  # state.json last: loadable when whole
        for f in files:
            os.replace(f, out / f.name)
        empty = empty_samples(rows)
        if empty:
            logger.warning(
                "%d of %d teacher samples are empty (no text: the teacher stopped at once); rows %s%s",
                len(empty),
                len(rows),
                empty[:10],
                " ..." if len(empty) > 10 else "",
            )
        provenance = dict(
            provenance,
            num_rows=len(merged),
            empty_samples=len(empty),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        atomic_write(out / PROVENANCE_FILE, json.dumps(provenance, indent=1, default=str))
        write_manifest(out, [f.name for f in files] + [PROVENANCE_FILE])
    shutil.rmtree(work)
