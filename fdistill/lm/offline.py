"""Offline teacher sampling to a `datasets` dataset (f-DISTILL §2.3: teacher samples drawn once, before training).

:func:`sample_offline` draws with a model in this process, :func:`sample_offline_with` with any teacher sampler
(one behind a vLLM server: :func:`fdistill.lm.served.sample_offline_served`); both check every input first, batch
the prompts by length, seed each batch on its own and hand the batches to the run's folder
(:mod:`fdistill.lm.offline_store`: resume, refusal of another run, merge, provenance, manifest). The online sampler
they build on: :mod:`fdistill.lm.sampling`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from datasets import Dataset, load_from_disk
from transformers import GenerationConfig

from fdistill.checks import output_folder
from fdistill.errors import InputError
from fdistill.lm.data import DistillCollator, check_prompts, position_limit, positions_needed
from fdistill.lm.offline_store import _WORK_DIR, SampleRow, _claim_folder, _draw, _merge, _provenance
from fdistill.lm.offline_store import PROVENANCE_FILE as PROVENANCE_FILE  # imported from here too
from fdistill.lm.offline_store import committed_batches as committed_batches
from fdistill.lm.offline_store import empty_samples as empty_samples
from fdistill.lm.sampling import eos_ids, sample_completions, sampling_config
from fdistill.storage import owned_folder
from fdistill.torch_utils import base_model, model_devices, seeded

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
        """The clean generation config of these settings for ``model`` (:func:`fdistill.lm.sampling.sampling_config`)."""
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
                # float32 values kept exact in the batch file: the cache's stated bound is against them
                teacher_topk_logprobs=topk[1][r, :n].tolist() if topk is not None else None,
            )
        )
    return rows
