"""Distillation across tokenizers in the trainer: every completion set in both models' tokenizations, and its alignment.

When the teacher's tokenizer differs from the student's (``FDistillTrainer(teacher_tokenizer=...)`` with another
vocabulary), the trainer takes the cross-tokenizer path of issue 28 (design: the module docstring of
:mod:`fdistill.lm.cross_tokenizer`). Each model scores every completion in its own tokenization, after the prompt
in its own tokenization (its BOS, and with ``use_chat_template`` its own chat template):

- references (text) are tokenised by the student (:class:`~fdistill.lm.data.DistillCollator`, truncated to
  ``max_target_length``) and re-tokenised for the teacher;
- offline teacher samples are read in the teacher's tokenization — token ids that `fdistill sample` drew with the
  teacher (its provenance record names the tokenizer, checked by :func:`check_teacher_samples`) or text — and
  re-tokenised for the student;
- online teacher samples (``teacher_sampling="online"``) are drawn by the teacher from its own prompt ids and
  re-tokenised for the student; online student samples are re-tokenised for the teacher (:class:`CrossSampler`).

Re-tokenising (:func:`fdistill.lm.cross_tokenizer.retokenize`) goes through text: the completion's text is the
sampling (or source) model's ``decode`` of its tokens without EOS/padding (``skip_special_tokens=True``,
``clean_up_tokenization_spaces=False``), and the other model tokenises that string on its own — not prompt and
completion jointly — with its EOS appended when the completion ended at EOS. The batch keeps the student's tokens
under the usual keys (``prompt_ids``, ``{set}_ids``, ...) and the teacher's under ``tt_``-prefixed ones
(:data:`fdistill.lm.data.TEACHER_TOKENS`). At scoring, :meth:`CrossTokenizers.annotate` gives each scored set its
byte-offset alignment (:func:`fdistill.lm.cross_tokenizer.align_batch`), the teacher's labels and the shared-bytes
vocabulary map, which the cross-tokenizer losses (:mod:`fdistill.lm.cross_divergences`) read.

Unsupported combinations are refused before any work by :func:`check_cross` (one `InputError` naming what works).

Why in-house: no library carries a batch through two tokenizations for f-divergence training; TRL's GOLDTrainer
re-tokenises inside its loss, for its own objectives only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fdistill.errors import InputError
from fdistill.lm.data import TEACHER_TOKENS, DistillCollator, _is_token_ids

PROMPT = "prompt"


def tokenizers_differ(student_tokenizer, teacher_tokenizer) -> bool:
    """Whether the teacher's tokenizer maps tokens to ids otherwise than the student's (None: the student's)."""
    return teacher_tokenizer is not None and teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab()


def wants_cross(settings, student_tokenizer, teacher_tokenizer) -> bool:
    """Whether training takes the cross-tokenizer path: the objective involves the teacher (its forward or its
    samples) and the tokenizers differ; always for an objective that only exists across tokenizers
    (``Objective.cross_tokenizer``: ``uld``, ``hybrid``; with one tokenizer their alignment is token by token)."""
    objective = settings.objective_spec
    if getattr(objective, "cross_tokenizer", False):
        return True
    involved = objective.uses_teacher or settings.reads_teacher_samples
    return involved and tokenizers_differ(student_tokenizer, teacher_tokenizer)


SUPPORTED = (
    "across tokenizers fdistill trains kl, rkl, js, tvd, uld, hybrid and seqkd (mle needs no teacher), with "
    "decoder-only models, a teacher model (teacher_model=) or a served one (teacher_server, kl/rkl/js/tvd), offline "
    "teacher samples (ids drawn by `fdistill sample` with the teacher, or text) or teacher_sampling='online', and "
    "student samples drawn in this process or by student_server"
)


def check_cross(settings, *, is_encoder_decoder: bool, data_collator) -> None:
    """Refuse, before any work, what the cross-tokenizer path does not support: one `InputError` naming the setting,
    why, and what is supported (:data:`SUPPORTED`)."""

    def refuse(what: str, why: str) -> None:
        raise InputError(f"the teacher's tokenizer differs from the student's, and {what}: {why}. {SUPPORTED}.")

    objective = settings.objective_spec
    if not objective.across_tokenizers:
        refuse(
            f"objective {objective.name!r} does not train across tokenizers (Objective.across_tokenizers)",
            "it compares the two models' next-token distributions token by token, which needs one vocabulary",
        )
    if settings.loss_reduction == "token" and objective.uses_teacher:
        refuse(
            "loss_reduction='token'",
            "the steps are aligned chunks, whose count over a global batch is not known when the batch is drawn; use "
            "loss_reduction='sequence' (sum over each sequence's chunks, mean over sequences)",
        )
    if is_encoder_decoder:
        refuse("the models are encoder–decoders", "the alignment is written for decoder-only models")
    if settings.fused_divergence:
        refuse("fused_divergence=True", "the fused kernel compares one shared vocabulary; leave it unset or False")
    if settings.teacher_topk_columns:
        refuse(
            "teacher_topk_columns=True",
            "the stored top-k columns and the logits cache are read token by token in one tokenization; pass the "
            "teacher model instead",
        )
    if data_collator is not None and not isinstance(data_collator, CrossCollator):
        refuse(
            "a data_collator is given",
            "the batches must hold both tokenizations (fdistill.lm.cross_batches.CrossCollator); pass none",
        )


def check_teacher_samples(dataset, column: str, teacher_tokenizer, student_tokenizer, split: str = "train") -> None:
    """Offline teacher samples stored as token ids must be the teacher's: the `fdistill sample` provenance record
    held in the dataset (:func:`fdistill.lm.logits_cache.provenance_of`) must name the teacher's tokenizer (by
    content fingerprint). Ids without a record, or made with another tokenizer, are one `InputError`; text needs
    no record (each model tokenises it)."""
    from fdistill.lm.loading import tokenizer_fingerprint
    from fdistill.lm.logits_cache import provenance_of

    if dataset is None or column not in (getattr(dataset, "column_names", None) or ()) or len(dataset) == 0:
        return
    if isinstance(dataset[0][column], str):
        return
    record = provenance_of(dataset) or {}
    made_with = record.get("tokenizer_fingerprint")
    if made_with == tokenizer_fingerprint(teacher_tokenizer):
        return
    if made_with is None:
        why = "they carry no record of the tokenizer that made them"
    elif made_with == tokenizer_fingerprint(student_tokenizer):
        why = "they were made with the student's tokenizer"
    else:
        why = f"they were made with another tokenizer (fingerprint {made_with})"
    raise InputError(
        f"the {split} dataset's teacher samples (column {column!r}) are token ids, but {why}; across tokenizers "
        "they must be the teacher's own: load the `fdistill sample` folder drawn with this teacher "
        "(fdistill.lm.loading.load_data keeps its record), or store the samples as text."
    )


class CrossCollator:
    """Batches in both tokenizations: the student's keys as :class:`~fdistill.lm.data.DistillCollator` makes them,
    plus the prompts and every completion set in the teacher's tokenization under ``tt_`` keys.

    ``student`` builds the prompts and references (``max_target_length`` cuts the student's tokens; the teacher's
    are re-tokenised from what is left); ``teacher`` builds the teacher's prompts and reads the offline teacher
    samples (its ids, or text), re-tokenised for the student.
    """

    def __init__(self, student: DistillCollator, teacher: DistillCollator, tokenizers: CrossTokenizers):
        self.student, self.teacher, self.tokenizers = student, teacher, tokenizers

    @property
    def tokenizer(self):
        """The student's tokenizer (what the Trainer reads of a collator)."""
        return self.student.tokenizer

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        """Pad a batch in both tokenizations; prompts given as token ids (one tokenizer's) are one `InputError`."""
        from fdistill.lm.cross_tokenizer import retokenize

        column = self.student.prompt_column
        ids = [i for i, f in enumerate(features) if f.get(column) and _is_token_ids(f[column])]
        if ids:
            raise InputError(
                f"prompt column {column!r}, row {ids[0]}: token ids, which are one tokenizer's; across tokenizers each "
                "model tokenises the prompt on its own: give the prompts as text or chat messages."
            )
        batch = self.student(features)
        theirs = self.teacher(features)
        s_tok, t_tok = self.tokenizers.student, self.tokenizers.teacher
        for key in (PROMPT, *self.teacher.completions):
            batch[f"{TEACHER_TOKENS}{key}_ids"] = theirs[f"{key}_ids"]
            batch[f"{TEACHER_TOKENS}{key}_mask"] = theirs[f"{key}_mask"]
        for name in self.teacher.completions:  # the teacher's samples, for the student
            batch[f"{name}_ids"], batch[f"{name}_mask"] = retokenize(
                t_tok, s_tok, theirs[f"{name}_ids"], theirs[f"{name}_mask"]
            )
        for name in [k[: -len("_ids")] for k in list(batch) if k.endswith("_ids")]:
            if name != PROMPT and not name.startswith(TEACHER_TOKENS) and name not in self.teacher.completions:
                ids, mask = retokenize(s_tok, t_tok, batch[f"{name}_ids"], batch[f"{name}_mask"])
                batch[f"{TEACHER_TOKENS}{name}_ids"], batch[f"{TEACHER_TOKENS}{name}_mask"] = ids, mask
        return batch


@dataclass
class CrossSampler:
    """A rollout :data:`~fdistill.lm.rollouts.Sampler` whose samples carry both tokenizations.

    ``draw`` samples in ``by``'s tokenization (``"student"`` or ``"teacher"``) from the prompts in that
    tokenization (``prompts``: the batch keys it reads; ``pad_id``: what pads them); the :class:`Sample` holds the
    student's tokens as ``ids``/``mask`` (the drawing student's log-probabilities kept) and the teacher's as
    ``teacher_tokens``.
    """

    draw: Any
    by: str
    tokenizers: CrossTokenizers

    @property
    def prompts(self) -> str:
        """The batch keys of the prompts it reads: the teacher's tokens (``tt_prompt``) or the student's."""
        return TEACHER_TOKENS + PROMPT if self.by == "teacher" else PROMPT

    @property
    def pad_id(self) -> int:
        """The pad id of its model's prompts (when several micro-batches' prompts are padded together)."""
        return getattr(self.tokenizers, self.by).pad_token_id

    def __call__(self, prompt_ids: Tensor, prompt_mask: Tensor):
        from fdistill.lm.cross_tokenizer import retokenize
        from fdistill.lm.rollouts import Sample

        ids, mask, *logprobs = self.draw(prompt_ids, prompt_mask)
        s_tok, t_tok = self.tokenizers.student, self.tokenizers.teacher
        if self.by == "teacher":
            student = retokenize(t_tok, s_tok, ids, mask)
            return Sample(*student, teacher_tokens=(ids, mask))
        return Sample(ids, mask, logprobs[0] if logprobs else None, teacher_tokens=retokenize(s_tok, t_tok, ids, mask))


class CrossTokenizers:
    """The student's and the teacher's tokenizers, and what the trainer does with both: the teacher's view of a
    batch (:meth:`teacher_view`), the alignment of each scored set (:meth:`annotate`), samplers
    (:meth:`sampler`) and the collator (:meth:`collator`)."""

    def __init__(self, student, teacher):
        if teacher.pad_token_id is None:
            raise InputError(
                "the teacher's tokenizer has no pad token; set one before distilling, e.g. "
                "teacher_tokenizer.pad_token = teacher_tokenizer.eos_token."
            )
        self.student, self.teacher = student, teacher
        self._vocab_map = None

    @property
    def vocab_map(self):
        """The pairs of ids whose bytes are equal (:func:`fdistill.lm.cross_tokenizer.vocab_map`), made once."""
        if self._vocab_map is None:
            from fdistill.lm.cross_tokenizer import vocab_map

            self._vocab_map = vocab_map(self.student, self.teacher)
        return self._vocab_map

    def collator(self, student: DistillCollator, settings, teacher_rows: int | None) -> CrossCollator:
        """:class:`CrossCollator` around the student's collator: the teacher's reads its prompts and, when the
        objective reads them from the dataset, the offline teacher samples (ids past ``teacher_rows`` refused)."""
        reads = {"teacher": settings.teacher_sample_column} if settings.reads_teacher_samples else {}
        student.completions = {k: v for k, v in student.completions.items() if k not in reads}
        teacher = DistillCollator(
            self.teacher,
            is_encoder_decoder=False,
            prompt_column=settings.prompt_column,
            completions=reads,
            max_prompt_length=settings.max_prompt_length,
            max_target_length=settings.max_target_length,
            use_chat_template=settings.use_chat_template,
            vocab_size=teacher_rows,
        )
        return CrossCollator(student, teacher, self)

    @property
    def teacher_scoring(self) -> dict:
        """How the teacher's forward reads its batch (:func:`fdistill.lm.scoring.score_sets`): its pad id, its
        whole vocabulary, logits (never fused, no hidden states)."""
        return {"pad_token_id": self.teacher.pad_token_id, "shared_vocab_size": None, "hidden": False, "fused": False}

    def sampler(self, draw, by: str) -> CrossSampler:
        """``draw`` (a sampler in ``by``'s tokenization) as a :class:`CrossSampler`."""
        return CrossSampler(draw, by, self)

    @staticmethod
    def served(topk: dict, inputs: dict[str, Tensor]) -> dict:
        """A served teacher's top k per set (:class:`~fdistill.divergences.TeacherTopK` ``(B, Ct, K)``, of its own
        tokens, as :func:`fdistill.lm.scoring.served_topk` gives them for :meth:`teacher_view`) as
        :class:`~fdistill.lm.scoring.Scored` with the teacher's labels at the same width."""
        from fdistill.lm.scoring import Scored

        out = {}
        for name, top in topk.items():
            ids, mask = inputs[f"{TEACHER_TOKENS}{name}_ids"], inputs[f"{TEACHER_TOKENS}{name}_mask"]
            width = top.ids.shape[1]
            labels = ids.masked_fill(~mask, -100)[:, :width]
            labels = torch.nn.functional.pad(labels, (0, width - labels.shape[1]), value=-100)
            out[name] = Scored(top, labels)
        return out

    @staticmethod
    def teacher_view(inputs: dict[str, Tensor], names: list[str]) -> dict[str, Tensor]:
        """The batch as the teacher reads it: its prompts and the completion sets ``names`` in its tokenization
        under the usual keys (what :func:`fdistill.lm.scoring.score_sets` reads)."""
        keys = [f"{n}_{part}" for n in (PROMPT, *names) for part in ("ids", "mask")]
        missing = [k for k in keys if TEACHER_TOKENS + k not in inputs]
        if missing:
            raise InputError(
                f"the batch lacks the teacher's tokens {[TEACHER_TOKENS + k for k in missing]}: across tokenizers "
                "the batches come from fdistill.lm.cross_batches.CrossCollator and the trainer's samplers."
            )
        return {k: inputs[TEACHER_TOKENS + k] for k in keys}

    def annotate(self, batch, teacher_labels: dict[str, Tensor]) -> None:
        """Give every set of the :class:`~fdistill.lm.objectives.ScoredBatch` ``batch`` that the teacher scored its
        teacher labels (``(B, Ct)``, in the teacher's tokenization), its alignment
        (:class:`~fdistill.lm.cross_tokenizer.CrossAlignment`, of the scored widths) and the vocabulary map."""
        from fdistill.lm.cross_tokenizer import align_batch

        vocab_map = self.vocab_map
        for name, scored in batch.sets.items():
            if name not in teacher_labels:
                continue
            labels = teacher_labels[name]
            s_mask, t_mask = scored.mask, labels != scored.labels.new_tensor(-100)
            alignment = align_batch(
                self.student,
                self.teacher,
                scored.labels.masked_fill(~s_mask, self.student.pad_token_id),
                s_mask,
                labels.masked_fill(~t_mask, self.teacher.pad_token_id),
                t_mask,
            )
            scored.teacher_labels, scored.alignment, scored.vocab_map = labels, alignment, vocab_map
