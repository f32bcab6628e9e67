"""Scoring a micro-batch: the student's and the teacher's numbers on every completion set the objective scores.

Per model, the prompts read once and the completion sets concatenated along the batch continuing them
(:func:`score_sets`: logits, or with the fused divergence the LM-head inputs in their place),
or the teacher's top-k log-probabilities in place of its forward — stored beside the offline teacher samples
(:func:`stored_topk`) or from a vLLM server (:func:`served_topk`) — put together as one
:class:`~fdistill.lm.objectives.ScoredBatch` (:func:`scored_batch`). Then the NaN/inf check of what was scored
(:func:`nonfinite_problem`) and, with ``on_nonfinite='skip'``, the tally of dropped micro-batches (:class:`SkipTally`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from fdistill.divergences import TeacherTopK, nonfinite_positions
from fdistill.errors import InputError, nonfinite_cause
from fdistill.kernels import LinearHead, capture_head_inputs, check_head, head_logits, output_head
from fdistill.lm.checkpoints import resume_advice
from fdistill.lm.data import cat_completions, score_completions, score_shared_prompts, scoring_inputs
from fdistill.lm.objectives import ScoredBatch, ScoredSet
from fdistill.torch_utils import base_model

SET_NAMES = {"reference": "references", "teacher": "teacher samples", "student": "student samples"}


class Scored(NamedTuple):
    """One completion set as one model scored it (what :func:`score_sets` returns per set)."""

    values: torch.Tensor | TeacherTopK  # (B, C, V) logits; (B, C, H) LM-head inputs when fused; or a top-k teacher
    labels: torch.Tensor  # (B, C) the completion tokens, IGNORE_INDEX at padding


def score_sets(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    names: list[str],
    *,
    pad_token_id: int,
    is_encoder_decoder: bool,
    shared_vocab_size: int | None,
    hidden: bool = False,
    fused: bool = False,
    head: LinearHead | None = None,
) -> tuple[dict[str, Scored], Any]:
    """The forwards of ``model`` over the completion sets ``names`` (concatenated along the batch): the prompts once,
    their key/value cache (or encoder output) shared by every set (:func:`~fdistill.lm.data.score_shared_prompts`,
    with or without ``fused``); for a model that cannot share them, one forward with the prompts repeated per set.

    Returns per-name :class:`Scored` slices ``(logits (B, C, V), labels (B, C))`` and the model outputs;
    with ``fused`` the LM-head inputs ``(B, C, H)`` stand in for the logits, which are never computed.
    LM heads padded to different sizes (``shared_vocab_size``) are compared on the tokenizer's tokens only.

    ``head``: the model's :func:`~fdistill.kernels.output_head`, checked against its own logits
    (:func:`split_head`). The forwards then record the LM head's inputs as the fused path does, and the sets'
    logits are the head applied to those inputs, split per set: the same numbers, but no ``(n·B, C + 1, V)`` tensor
    is joined from the two forwards and sliced per set, so the backward pass makes no full-size zero-filled
    gradient per slice: one tvd micro-batch of the demo's models, 1.06× faster on 2 CPU cores
    (``python scripts/bench_scoring.py --compare split-head``).
    """
    pad = pad_token_id
    ids, mask = cat_completions([(inputs[f"{n}_ids"], inputs[f"{n}_mask"]) for n in names], pad)
    repeat = len(names)
    args = (model, inputs["prompt_ids"].repeat(repeat, 1), inputs["prompt_mask"].repeat(repeat, 1), ids, mask)
    prompts = (inputs["prompt_ids"], inputs["prompt_mask"], ids, mask)
    if fused or (head is not None and not hidden):  # the LM head records its inputs; prompts read once if allowed
        with capture_head_inputs(model) as captured:
            shared = score_shared_prompts(model, *prompts, pad_token_id=pad, head_inputs=captured)
            if shared is None:
                _, labels, outputs = score_completions(*args, pad_token_id=pad)
        if shared is None:
            logits = captured[-1][:, :-1] if not is_encoder_decoder else captured[-1]  # the labels' predictors
        else:
            logits, labels, outputs = shared
    else:  # each prompt read once for all the sets when the model allows (score_shared_prompts), else repeated
        shared = score_shared_prompts(model, *prompts, pad_token_id=pad, output_hidden_states=hidden)
        logits, labels, outputs = shared or score_completions(*args, pad_token_id=pad, output_hidden_states=hidden)
        if shared_vocab_size is not None:  # heads padded to different sizes: the tokenizer's tokens only
            logits = logits[..., :shared_vocab_size]
    b = inputs["prompt_ids"].shape[0]
    rows = {n: slice(i * b, (i + 1) * b) for i, n in enumerate(names)}
    if fused or head is None or hidden:
        return {n: Scored(logits[r], labels[r]) for n, r in rows.items()}, outputs
    if shared_vocab_size is not None:  # heads padded to different sizes: the tokenizer's tokens only
        head = head.first_rows(shared_vocab_size)
    # One head matmul for every set, split (not sliced) per set: the backward pass joins the sets' logit gradients
    # with one cat, where slices would each fill a full-size zero tensor, and the head weight's gradient is one
    # product, not one per set added up.
    sets = head_logits(head, logits).split(b)
    return {n: Scored(x, labels[r]) for (n, r), x in zip(rows.items(), sets)}, outputs


def split_head(
    model: nn.Module, inputs: dict[str, torch.Tensor], name: str, pad_token_id: int, is_encoder_decoder: bool
) -> LinearHead | None:
    """``model``'s :class:`~fdistill.kernels.LinearHead` for :func:`score_sets`' per-set logits, or None when it
    cannot serve: an LM head sharded over processes (the caller says so by not asking), or one whose rebuilt logits
    differ from the model's own on the first example of the completion set ``name`` (:func:`check_head`; an
    architecture that post-processes its logits in a way :func:`output_head` does not know)."""
    try:
        check_head(model, _first_example(model, inputs, name, pad_token_id, is_encoder_decoder))
        return output_head(model)
    except InputError:
        return None


def fused_wanted(objective, settings, device: torch.device, sharded: bool) -> bool:
    """Whether the fused divergence runs (``fused_divergence``: set, or unset on CUDA; f-divergences with a teacher
    forward only; never with reused samples, whose weights read the student's logits). Sharded LM heads (FSDP,
    DeepSpeed) are not whole on any process: refused when asked for."""
    if not objective.fusable or settings.fused_divergence is False or settings.teacher_source.is_topk:
        return False
    if settings.steps_per_generation > 1 or settings.rollout_overlap:  # the importance weights read the logits
        return False
    if settings.fused_divergence is None and device.type != "cuda":
        return False
    if sharded:
        if settings.fused_divergence:
            raise InputError(
                "fused_divergence=True needs each process to hold the whole LM head; it is not "
                "supported with FSDP or DeepSpeed. Leave fused_divergence unset or False."
            )
        return False
    return True


def check_heads(
    model: nn.Module,
    teacher: nn.Module,
    inputs: dict[str, torch.Tensor],
    name: str,
    pad_token_id: int,
    is_encoder_decoder: bool,
) -> None:
    """Check both models' LM heads can be fused, on the first example of the completion set ``name``."""
    example = _first_example(model, inputs, name, pad_token_id, is_encoder_decoder)
    check_head(model, example)
    check_head(teacher, example)


def _first_example(
    model: nn.Module, inputs: dict[str, torch.Tensor], name: str, pad_token_id: int, is_encoder_decoder: bool
) -> dict[str, torch.Tensor]:
    """Forward kwargs scoring the first example of the completion set ``name`` (what the head checks run on)."""
    config = base_model(model).config
    return scoring_inputs(
        inputs["prompt_ids"][:1],
        inputs["prompt_mask"][:1],
        inputs[f"{name}_ids"][:1],
        inputs[f"{name}_mask"][:1],
        is_encoder_decoder=is_encoder_decoder,
        pad_token_id=pad_token_id,
        decoder_start_token_id=getattr(config, "decoder_start_token_id", None),
    ).model_kwargs


def fused_heads(model: nn.Module, teacher: nn.Module, shared_vocab_size: int | None) -> tuple:
    """The student's and the teacher's LM heads for the fused divergence (the tokenizer's rows only when padded)."""
    heads = (output_head(model), output_head(teacher))
    if shared_vocab_size is not None:  # heads padded to different sizes: the tokenizer's tokens only
        heads = tuple(h.first_rows(shared_vocab_size) for h in heads)
    return heads


def scored_batch(
    student: dict[str, Scored],
    teacher: dict[str, Scored],
    counts: dict[str, torch.Tensor],
    *,
    reduction: str,
    heads: tuple | None,
    outputs: tuple,
    student_config,
    is_encoder_decoder: bool,
) -> ScoredBatch:
    """The :class:`ScoredBatch` of one micro-batch: per completion set (in ``student``'s order) both models' numbers,
    the labels and the loss denominator ``counts[name]``."""
    sets = {
        n: ScoredSet(
            student=scored.values,
            teacher=teacher[n].values if n in teacher else None,
            labels=scored.labels,
            count=counts[n],
        )
        for n, scored in student.items()
    }
    return ScoredBatch(
        sets=sets,
        reduction=reduction,
        heads=heads,
        outputs=outputs,
        student_config=student_config,
        is_encoder_decoder=is_encoder_decoder,
    )


def stored_topk(inputs: dict[str, torch.Tensor], names: list[str]) -> dict[str, TeacherTopK]:
    """The teacher's top-k log-probabilities stored beside the offline teacher samples (``teacher_topk_columns``);
    no other completion set has them, so any other is refused."""
    others = [n for n in names if n != "teacher"]
    if others:
        raise InputError(
            f"the teacher's top-k log-probabilities are stored for the offline teacher samples only, not for the "
            f"{', '.join(SET_NAMES[n] for n in others)}; set teacher_topk_columns=False and pass the teacher model."
        )
    tail = inputs.get("teacher_topk_tail")  # kept by the logits cache; derived from the values when absent
    return {"teacher": TeacherTopK(inputs["teacher_topk_ids"], inputs["teacher_topk_logprobs"], tail_logprobs=tail)}


def served_topk(
    server, inputs: dict[str, torch.Tensor], names: list[str], k: int, device, output_dir: str, step: int
) -> dict[str, TeacherTopK]:
    """The served teacher's top ``k`` (and the actual tokens' log-probabilities) on the sets ``names``, in one round
    of requests. A server that stays away stops training at ``step``, before it changes anything: the error names
    the step and the checkpoint in ``output_dir`` to resume from."""
    from fdistill.lm.served import TeacherServerError

    sets = {n: (inputs[f"{n}_ids"], inputs[f"{n}_mask"]) for n in names}
    try:
        return server.score_sets(inputs["prompt_ids"], inputs["prompt_mask"], sets, k, device)
    except TeacherServerError as error:
        raise TeacherServerError(f"training step {step}: {error}; {resume_advice(output_dir)}.") from error


@torch.no_grad()
def nonfinite_problem(batch: ScoredBatch, loss: torch.Tensor) -> str | None:
    """What is NaN/inf in this micro-batch (model, completion set, count) and its likely cause; None if nothing."""
    what = "LM-head inputs" if batch.fused else "logits"
    for model_name in ("teacher", "student"):
        for n, scored in batch.sets.items():
            values = getattr(scored, model_name)
            if values is None:
                continue
            if isinstance(values, TeacherTopK):
                values = values.logprobs
            mask = scored.teacher_mask if model_name == "teacher" else scored.mask  # its own tokens, across tokenizers
            bad = nonfinite_positions(values, mask)
            if bad.any():
                return (
                    f"the {model_name}'s {what} on the {SET_NAMES[n]} hold NaN or +inf at {int(bad.sum())} of "
                    f"{int(mask.sum())} scored positions; likely cause: {nonfinite_cause(model_name)}"
                )
    if not torch.isfinite(loss):
        return (
            f"the loss is {loss.item()} although every {what} entry is finite; likely cause: values too large "
            "for float32 (check loss_temperature and the models' dtypes)"
        )
    return None


@dataclass
class SkipTally:
    """``on_nonfinite='skip'``: micro-batches dropped and training micro-batches, in all and since the last log."""

    skipped: int = 0
    trained: int = 0
    window_skipped: int = 0
    window_trained: int = 0

    def count(self, training: bool) -> None:
        """One more micro-batch (counted when training)."""
        self.window_trained += training
        self.trained += training

    def skip(self) -> None:
        """The micro-batch just counted was dropped."""
        self.skipped += 1
        self.window_skipped += 1

    def log(self, logs: dict[str, float]) -> None:
        """Add ``nonfinite_skipped`` to ``logs`` and average its losses over the kept micro-batches (the dropped ones
        added 0); a new window starts."""
        logs["nonfinite_skipped"] = self.skipped  # cumulative count of dropped micro-batches
        if "loss" in logs and self.window_skipped:
            kept = self.window_trained - self.window_skipped
            logs["loss"] = logs["loss"] * self.window_trained / kept if kept else float("nan")
        self.window_trained = self.window_skipped = 0
        if "train_loss" in logs and self.skipped:  # the run's mean, likewise over kept micro-batches
            kept = self.trained - self.skipped
            logs["train_loss"] = logs["train_loss"] * self.trained / kept if kept else float("nan")
