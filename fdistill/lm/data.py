"""Batches for distillation: the collator, completion masks, and model inputs for scoring sampled sequences.

One representation serves every objective and both architectures. A batch holds
prompts (left-padded for decoder-only models so they can be continued by
``generate``; right-padded encoder inputs for encoder–decoders) and one or more sets of
*completions* — references, offline teacher samples, online student samples — each
right-padded with an explicit mask (never inferred from the pad id, since pad == eos
in many chat models). :func:`scoring_inputs` turns prompts + completions into the
forward kwargs of either architecture and says which logits score which completion token.
"""

from __future__ import annotations

import inspect
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fdistill.divergences import IGNORE_INDEX
from fdistill.errors import InputError
from fdistill.torch_utils import base_model

# Across tokenizers (fdistill.lm.cross_batches) a batch holds each completion set and the prompts in the teacher's
# tokenization too, under these keys: tt_prompt_ids / tt_prompt_mask, tt_{set}_ids / tt_{set}_mask.
TEACHER_TOKENS = "tt_"


def _is_token_ids(value) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value
    )


def is_blank(text: str) -> bool:
    """True when ``text`` holds nothing to read: only whitespace and control or format characters (``"\\x00\\t"``,
    zero-width spaces), which tokenise to nothing or to tokens no model was trained to continue."""
    return all(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in text)


def ends_with_answer(value: Any) -> bool:
    """True when ``value`` is chat messages whose last turn is the assistant's (a conversation with its answer)."""
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and isinstance(value[-1], dict)
        and value[-1].get("role") == "assistant"
    )


def _chat_problem(messages) -> str | None:
    if not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        return "chat messages without 'role' and 'content'"
    if not all(isinstance(m["role"], str) and isinstance(m["content"], (str, list)) for m in messages):
        return "chat messages whose role is not text or whose content is neither text nor a list of parts"
    if all(isinstance(m["content"], str) and is_blank(m["content"]) for m in messages):
        return "chat messages with no text (only whitespace or control characters)"
    if ends_with_answer(messages):
        return (
            "chat messages that end with the assistant's answer, which would become part of the prompt "
            "(fdistill.lm.loading.prepare_prompts splits such conversations into prompt and reference)"
        )
    return None


def prompt_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a prompt, or None when it can: text, chat messages or token ids.

    Refused: None, numbers, blank text (only whitespace or control characters), empty lists, chat messages without
    text, and chat messages whose last turn is the assistant's (its answer is not a prompt: `split_chat` first).
    """
    if isinstance(value, str):
        return None if not is_blank(value) else "blank text (only whitespace or control characters)"
    if value is None:
        return "missing (an empty cell)"
    if isinstance(value, (int, float)):
        return (
            "a number, not text (a CSV column of numbers is read as numbers: quote the values or make the column text)"
        )
    if isinstance(value, (list, tuple)):
        if not value:
            return "an empty list"
        if all(isinstance(m, dict) for m in value):
            return _chat_problem(value)
        return None if _is_token_ids(value) else "a list that is neither token ids (ints >= 0) nor chat messages"
    return f"a {type(value).__name__}, not text, chat messages or token ids"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _rows(rows: list[int]) -> str:
    """``"rows 3, 7 and 9"`` (at most 10 named, then how many more)."""
    named = ", ".join(map(str, rows[:10]))
    return (
        f"row {rows[0]}" if len(rows) == 1 else f"rows {named}" + (f" and {len(rows) - 10} more" if rows[10:] else "")
    )


def check_prompts(values, column: str) -> None:
    """Raise one `InputError` naming the unusable prompts: their row indices, the first one's value and the fix.

    ``values[i]`` is row ``i`` (the whole column, or the first rows of a dataset). Token-id lists and chat
    messages are prompts too; None, blank text, numbers and other types are not (`prompt_problem`).
    """
    bad = [(row, problem) for row, value in enumerate(values) if (problem := prompt_problem(value)) is not None]
    if not bad:
        return
    row, problem = bad[0]
    also = f" ({len(bad)} unusable prompts in all: {_rows([r for r, _ in bad])})" if len(bad) > 1 else ""
    raise InputError(
        f"prompt column {column!r}, row {row}: {_shown(values[row])} is {problem}{also}; every prompt must be "
        "non-empty text, chat messages or token ids: fix or drop those rows."
    )


def split_chat(data, prompt_column: str, reference_column: str = "reference"):
    """Conversations that end with the assistant's answer → prompt = the turns before it, reference = its content.

    ``data[prompt_column]`` holds chat messages (``[{"role", "content"}, ...]``, e.g. a ``messages`` column). When
    every conversation's last turn is the assistant's, that turn is the reference and the turns before it are
    the prompt (rendered later through the tokenizer's chat template with the generation prompt); when none
    ends so, ``data`` is returned as it is. Anything in between is one `InputError` naming the rows, as is a
    conversation of the answer alone, or data that already has a ``reference_column`` to overwrite.
    """
    conversations = data[prompt_column]
    answered = [i for i, value in enumerate(conversations) if ends_with_answer(value)]
    if not answered:
        return data
    unanswered = sorted(set(range(len(conversations))) - set(answered))
    if unanswered:
        raise InputError(
            f"prompt column {prompt_column!r}: {len(answered)} conversations end with the assistant's answer "
            f"(the reference) and {len(unanswered)} do not ({_rows(unanswered)}): make every conversation end with "
            "the assistant's turn (prompt + reference), or none (prompts only)."
        )
    alone = [i for i in answered if len(conversations[i]) == 1]
    if alone:
        raise InputError(
            f"prompt column {prompt_column!r}, {_rows(alone)}: only the assistant's answer, with no turn "
            "before it to prompt it: add the user's turn or drop those rows."
        )
    if reference_column in data.column_names and reference_column != prompt_column:
        raise InputError(
            f"prompt column {prompt_column!r} ends every conversation with the assistant's answer, which would "
            f"become column {reference_column!r}, but the data has that column already: drop or rename it, or "
            "set reference_column to another name."
        )

    def split(row):
        messages = row[prompt_column]
        return {prompt_column: messages[:-1], reference_column: messages[-1]["content"]}

    return data.map(split, desc="splitting conversations into prompt and reference")


_IDS_AS_TEXT = re.compile(r"\s*\[\s*\d+(\s*,\s*\d+)*\s*\]\s*")


def check_targets(values, column: str) -> None:
    """Raise one `InputError` naming the first completion (reference / teacher sample) that is not usable.

    A completion is text or a list of token ids. None is refused, and so is text that spells a list of ids
    (``"[5, 6, 2]"``, what a CSV makes of an id column): tokenising it as words would train on garbage.
    """
    for row, value in enumerate(values):
        if isinstance(value, str):
            if _IDS_AS_TEXT.fullmatch(value):
                raise InputError(
                    f"column {column!r}, row {row}: {value[:40]!r} is token ids stored as text (CSV files store lists "
                    "as text): use the `fdistill sample` output folder, JSONL or Parquet for token-id columns."
                )
        elif not _is_token_ids(value):
            shown = repr(value)[:60]
            raise InputError(
                f"column {column!r}, row {row}: {shown} is neither text nor a list of token ids (ints >= 0): "
                "fix or drop that row."
            )


def completion_mask(completions: Tensor, eos_token_ids: list[int] | int | None) -> Tensor:
    """True up to and including the first EOS of each row (all True for rows cut at the length limit).

    ``generate`` fills finished rows with the pad id, which may equal EOS: only the
    first EOS counts, so a sequence that stops at EOS keeps that EOS as its last token.
    """
    if eos_token_ids is None:
        return torch.ones_like(completions, dtype=torch.bool)
    eos = torch.as_tensor(eos_token_ids, device=completions.device).reshape(-1)
    is_eos = torch.isin(completions, eos).long()
    return (is_eos.cumsum(-1) - is_eos) == 0  # no EOS strictly before this position


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad token lists to ``(B, L)`` ids and a bool mask (L ≥ 1)."""
    length = max(1, max((len(r) for r in rows), default=0))
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask


def pad_left(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token lists to ``(B, L)`` ids and a bool mask."""
    length = max(1, max((len(r) for r in rows), default=0))
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, length - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, length - len(r) :] = True
    return ids, mask


def cat_completions(parts: list[tuple[Tensor, Tensor]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Stack completion sets ``[(ids, mask), ...]`` along the batch, right-padding to a common length."""
    length = max(ids.shape[1] for ids, _ in parts)
    out_ids, out_mask = [], []
    for ids, mask in parts:
        extra = length - ids.shape[1]
        out_ids.append(torch.nn.functional.pad(ids, (0, extra), value=pad_id))
        out_mask.append(torch.nn.functional.pad(mask, (0, extra), value=False))
    return torch.cat(out_ids), torch.cat(out_mask)


@dataclass
class ScoringInputs:
    """Forward kwargs for one model call, and how to read its logits.

    ``logits[:, :-1]`` of a decoder-only forward with ``logits_to_keep = C + 1`` (or the
    full decoder logits of an encoder–decoder) line up with ``labels`` ``(B, C)``.
    """

    model_kwargs: dict[str, Tensor]
    labels: Tensor  # (B, C) completion tokens, IGNORE_INDEX where masked
    decoder_only: bool

    def logits(self, outputs: Any) -> Tensor:
        """The ``(B, C, V)`` logits that predict ``labels``."""
        return outputs.logits[:, :-1] if self.decoder_only else outputs.logits


def scoring_inputs(
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask_: Tensor,
    *,
    is_encoder_decoder: bool,
    pad_token_id: int,
    decoder_start_token_id: int | None = None,
) -> ScoringInputs:
    """Model inputs that score ``completion`` given ``prompt`` under teacher forcing.

    Decoder-only: ``[prompt | completion]`` with position ids from the attention mask
    (prompts are left-padded) and ``logits_to_keep = C + 1`` so no prompt logits are
    materialised. Encoder–decoder: the prompt is the encoder input and the decoder
    input is ``[decoder_start | completion[:-1]]``.
    """
    labels = completion_ids.masked_fill(~completion_mask_, IGNORE_INDEX)  # (B, C)
    if is_encoder_decoder:
        if decoder_start_token_id is None:
            raise InputError("the encoder–decoder model has no decoder_start_token_id; set it in its config.")
        start = torch.full_like(completion_ids[:, :1], decoder_start_token_id)
        decoder_ids = torch.cat([start, completion_ids[:, :-1].masked_fill(~completion_mask_[:, :-1], pad_token_id)], 1)
        decoder_mask = torch.cat([torch.ones_like(completion_mask_[:, :1]), completion_mask_[:, :-1]], 1)
        kwargs = dict(
            input_ids=prompt_ids,
            attention_mask=prompt_mask.long(),
            decoder_input_ids=decoder_ids,
            decoder_attention_mask=decoder_mask.long(),
        )
        return ScoringInputs(kwargs, labels, decoder_only=False)
    ids = torch.cat([prompt_ids, completion_ids.masked_fill(~completion_mask_, pad_token_id)], 1)
    mask = torch.cat([prompt_mask, completion_mask_], 1).long()
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    kwargs = dict(
        input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=completion_ids.shape[1] + 1
    )
    return ScoringInputs(kwargs, labels, decoder_only=True)


def positions_needed(longest_prompt: int, max_new_tokens: int, is_encoder_decoder: bool) -> int:
    """The positions a generation needs: the encoder reads the prompt and the decoder writes ``1 + max_new_tokens``
    (encoder–decoder), or prompt and completion share one sequence (decoder-only). Compared with `position_limit`."""
    if is_encoder_decoder:
        return max(longest_prompt, 1 + max_new_tokens)
    return longest_prompt + max_new_tokens


def position_limit(model) -> int | None:
    """The most positions the model was built for (``max_position_embeddings`` / ``n_positions``); None = no limit.

    Models with learned position embeddings (GPT-2, BART) fail with an IndexError beyond it; rotary ones
    (Llama) run on but were never trained there. T5 (relative positions) has no limit.
    """
    config = base_model(model).config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def score_completions(
    model,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    ids: Tensor,
    mask: Tensor,
    *,
    pad_token_id: int,
    output_hidden_states: bool = False,
) -> tuple[Tensor, Tensor, Any]:
    """One teacher-forced forward over prompts + completions: ``(logits (B, C, V), labels (B, C), outputs)``."""
    config = base_model(model).config
    inputs = scoring_inputs(
        prompt_ids,
        prompt_mask,
        ids,
        mask,
        is_encoder_decoder=bool(config.is_encoder_decoder),
        pad_token_id=pad_token_id,
        decoder_start_token_id=getattr(config, "decoder_start_token_id", None),
    )
    outputs = model(**inputs.model_kwargs, output_hidden_states=output_hidden_states, use_cache=False)
    return inputs.logits(outputs), inputs.labels, outputs


def score_shared_prompts(
    model,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    ids: Tensor,
    mask: Tensor,
    *,
    pad_token_id: int,
    output_hidden_states: bool = False,
    head_inputs: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Any] | None:
    """:func:`score_completions` of completion sets stacked along the batch (``ids`` ``(n·B, C)``, set-major, as
    :func:`cat_completions` makes them) that all continue the same ``B`` prompts, reading each prompt once.

    Decoder-only: one forward over the ``(B, P)`` prompts keeps their key/value cache (with the graph when gradients
    are on, so the loss still differentiates through the prompt positions); the cache is tiled to the ``n·B`` rows
    and one forward over the completions continues it, with the prompts' attention mask prepended and the position
    ids :func:`scoring_inputs` gives the whole sequence. The first label's predictor is the prompt's last position.
    Causal attention makes this the concatenated forward's arithmetic: logits and hidden states equal it to float
    rounding (the matmuls are blocked over other shapes). Encoder–decoder: the encoder reads the ``B`` prompts once
    and its output is tiled to the ``n·B`` decoder rows. Returns None, before any work, for a single set (nothing to
    share: the one forward is the cheaper) and for models this cannot serve: gradient checkpointing (transformers
    turns the cache off in training), and models wrapped for distributed training (DDP, FSDP, DeepSpeed), whose
    wrappers expect one forward per backward.

    ``head_inputs``: the list :func:`fdistill.kernels.capture_head_inputs` yields, when the LM head only records its
    inputs (the fused divergence). Their ``(n·B, C, H)`` rows that predict the labels are returned in the logits'
    place, joined from the two forwards as the logits would be, and the model's placeholder logits are dropped
    unjoined, so no ``(n·B, C, V)`` tensor is ever made.
    """
    b, p = prompt_ids.shape
    n = ids.shape[0] // b
    if n < 2:
        return None
    base = base_model(model)
    checkpointing = getattr(base, "is_activation_checkpointing", None)  # transformers >= 5.25; older: the old name
    if hasattr(model, "module") or (base.is_gradient_checkpointing if checkpointing is None else checkpointing):
        return None
    if type(model).__name__.startswith("FSDP"):  # FSDP2 (fully_shard) changes the module's class in place
        return None
    config = base.config
    inputs = scoring_inputs(
        prompt_ids.repeat(n, 1),
        prompt_mask.repeat(n, 1),
        ids,
        mask,
        is_encoder_decoder=bool(config.is_encoder_decoder),
        pad_token_id=pad_token_id,
        decoder_start_token_id=getattr(config, "decoder_start_token_id", None),
    )
    kwargs = inputs.model_kwargs
    rows = torch.arange(b, device=prompt_ids.device).repeat(n)  # row i·B + j of the stacked sets reads prompt j
    if not inputs.decoder_only:
        encoder = model.get_encoder()(
            input_ids=prompt_ids, attention_mask=prompt_mask.long(), output_hidden_states=output_hidden_states
        )
        tiled = {k: v[rows] if torch.is_tensor(v) else tuple(h[rows] for h in v) for k, v in encoder.items()}
        kwargs = {k: v for k, v in kwargs.items() if k != "input_ids"}
        outputs = model(
            **kwargs, encoder_outputs=type(encoder)(**tiled), output_hidden_states=output_hidden_states, use_cache=False
        )
        return (inputs.logits(outputs) if head_inputs is None else head_inputs[-1]), inputs.labels, outputs
    prompt = model(
        input_ids=prompt_ids,
        attention_mask=kwargs["attention_mask"][:b, :p],
        position_ids=kwargs["position_ids"][:b, :p],
        logits_to_keep=1,
        output_hidden_states=output_hidden_states,
        use_cache=True,
    )
    renamed = "cache" in inspect.signature(base.forward).parameters  # transformers >= 5.25 renamed past_key_values
    cache = prompt.cache if renamed else prompt.past_key_values
    cache.batch_select_indices(rows)
    rest = model(
        input_ids=kwargs["input_ids"][:, p:],
        attention_mask=kwargs["attention_mask"],
        position_ids=kwargs["position_ids"][:, p:],
        **{"cache" if renamed else "past_key_values": cache},
        output_hidden_states=output_hidden_states,
        use_cache=True,
    )
    hidden = None
    if output_hidden_states:  # the whole sequence's, as the concatenated forward gives them
        hidden = tuple(torch.cat([h[rows], r], 1) for h, r in zip(prompt.hidden_states, rest.hidden_states))
    if head_inputs is not None:  # the LM head's inputs of the prompts' last position, then of the completions
        predictors = torch.cat([head_inputs[-2][rows], head_inputs[-1]], 1)[:, :-1]
        return predictors, inputs.labels, type(rest)(logits=rest.logits, hidden_states=hidden)
    outputs = type(rest)(logits=torch.cat([prompt.logits[rows], rest.logits], 1), hidden_states=hidden)
    return inputs.logits(outputs), inputs.labels, outputs


class DistillCollator:
    """Tokenise and pad examples into prompts plus the completion sets the objective needs.

    Output keys: ``prompt_ids``, ``prompt_mask`` and, for each completion set
    ``name`` in ``completions`` (``{"reference": column, "teacher": column}``),
    ``{name}_ids`` / ``{name}_mask``. A column may hold text (tokenised without special
    tokens, EOS appended) or token ids (used as they are: offline teacher samples keep
    the EOS they stopped at and no EOS when they hit the length limit).

    Arguments:
        tokenizer: the student's (= teacher's) tokenizer; needs a pad token.
        is_encoder_decoder: right-pad encoder inputs instead of left-padding prompts.
        prompt_column: column with the input text or ids.
        completions: completion sets to build, name → column.
        optional_completions: sets built only when every example has the column (e.g. references
            for evaluation metrics when the objective does not train on them).
        max_prompt_length, max_target_length: truncation (prompts keep their end).
        use_chat_template: wrap text prompts as a user turn of the chat template.
        vocab_size: the model's vocabulary size; token ids at or past it are refused (row named).
    """

    def __init__(
        self,
        tokenizer,
        *,
        is_encoder_decoder: bool,
        prompt_column: str = "prompt",
        completions: dict[str, str] | None = None,
        optional_completions: dict[str, str] | None = None,
        max_prompt_length: int = 256,
        max_target_length: int = 128,
        use_chat_template: bool = False,
        topk_columns: tuple[str, str] | None = None,
        vocab_size: int | None = None,
    ):
        if tokenizer.pad_token_id is None:
            raise InputError(
                "the tokenizer has no pad token; set one before distilling, e.g. tokenizer.pad_token = tokenizer.eos_token."
            )
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.is_encoder_decoder = is_encoder_decoder
        self.prompt_column = prompt_column
        self.completions = dict(completions or {})
        self.optional_completions = {k: v for k, v in (optional_completions or {}).items() if k not in self.completions}
        self.max_prompt_length = max_prompt_length
        self.max_target_length = max_target_length
        self.use_chat_template = use_chat_template
        self.topk_columns = topk_columns

    def prompt_tokens(self, value: Any) -> list[int]:
        """Token ids of a prompt given as text, as chat messages (``[{"role", "content"}, ...]``) or as ids."""
        if isinstance(value, list) and value and isinstance(value[0], dict):
            self._require_chat_template()
            ids = self.tokenizer.apply_chat_template(value, add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        elif isinstance(value, str):
            if self.use_chat_template:
                self._require_chat_template()
                ids = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": value}], add_generation_prompt=True, tokenize=True
                )
                ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            else:
                ids = self.tokenizer(value, add_special_tokens=True)["input_ids"]
        else:
            ids = list(value)
        return list(ids)[-self.max_prompt_length :]

    def _require_chat_template(self) -> None:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise InputError(
                f"the prompts are chat messages (or use_chat_template is set) but the tokenizer "
                f"{getattr(self.tokenizer, 'name_or_path', '')!r} has no chat template: use a chat model's "
                "tokenizer, set tokenizer.chat_template, or give the prompts as text without use_chat_template."
            )

    def target_tokens(self, value: Any) -> list[int]:
        if isinstance(value, str):
            ids = self.tokenizer(value, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        else:
            ids = list(value)
        return ids[: self.max_target_length]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        """Pad a batch; an unusable prompt or completion is an `InputError` naming its row in ``features``."""
        pad = self.tokenizer.pad_token_id
        check_prompts([f[self.prompt_column] for f in features], self.prompt_column)
        prompts = [self.prompt_tokens(f[self.prompt_column]) for f in features]
        self._check_vocabulary(prompts, self.prompt_column)
        ids, mask = (pad_right if self.is_encoder_decoder else pad_left)(prompts, pad)
        batch = {"prompt_ids": ids, "prompt_mask": mask}
        present = {k: v for k, v in self.optional_completions.items() if all(v in f for f in features)}
        for name, column in {**self.completions, **present}.items():
            check_targets([f[column] for f in features], column)
            targets = [self.target_tokens(f[column]) for f in features]
            self._check_vocabulary(targets, column)
            batch[f"{name}_ids"], batch[f"{name}_mask"] = pad_right(targets, pad)
        if self.topk_columns is not None:
            ids, logprobs, tail = self._topk(features, batch["teacher_ids"].shape[1])
            batch["teacher_topk_ids"], batch["teacher_topk_logprobs"] = ids, logprobs
            if tail is not None:  # kept by the logits cache (fdistill.lm.logits_cache)
                batch["teacher_topk_tail"] = tail
        return batch

    def _check_vocabulary(self, rows: list[list[int]], column: str) -> None:
        """Token ids past the model's vocabulary (``vocab_size``, when given) are one InputError naming the row."""
        if self.vocab_size is None:
            return
        for row, ids in enumerate(rows):
            if ids and max(ids) >= self.vocab_size:
                raise InputError(
                    f"column {column!r}, row {row}: token id {max(ids)} is not in the model's vocabulary "
                    f"of {self.vocab_size}; the ids were made with another tokenizer: re-tokenise the data "
                    "(or re-sample it) with this model's tokenizer."
                )

    def _topk(self, features, length: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Stored top-k teacher ids / log-probabilities as ``(B, C, k)`` tensors aligned with ``teacher_ids``, and the
        ``(B, C)`` log tail masses: decoded from the cache columns (:mod:`fdistill.lm.logits_cache`) when the
        examples hold them, else read from the older float columns ``topk_columns`` (no tail: None)."""
        from fdistill.lm.logits_cache import CACHE_COLUMNS, collate_topk

        columns = CACHE_COLUMNS if features and CACHE_COLUMNS[0] in features[0] else self.topk_columns
        lengths = [len(self.target_tokens(f[self.completions["teacher"]])) for f in features]
        return collate_topk(features, columns, lengths, length, self.max_target_length)
