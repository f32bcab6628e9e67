"""The training objectives of `FDistillTrainer`, each one registered object: what it scores, and its loss.

An objective declares the completion sets it scores — ``"reference"`` (ground truth), ``"teacher"`` (teacher
samples, offline or online) and ``"student"`` (online student samples) — and whether a teacher forward scores
them too. The trainer runs the forwards for those sets and hands the objective one typed value, a
:class:`ScoredBatch`, holding for each set the student's (and teacher's) logits — or, on the fused path, the
LM-head inputs plus both heads — with the labels and the global denominator. The objective returns its loss
and the metrics it logs (:class:`ObjectiveOutput`). Config validation, the trainer, the model card and the demo
read this registry; nothing else lists objective names.

A new objective is one class and one call, from your own code (no edit of fdistill):

    >>> import torch
    >>> from fdistill.divergences import step_divergence
    >>> class SkewKL(Objective):
    ...     '''KL(p ‖ α·p + (1−α)·q) on teacher samples (a skew KL; α = 0 is the forward KL).'''
    ...     name, scores, title = "skew-kl", ("teacher",), "skew KL divergence"
    ...     def __init__(self, alpha: float = 0.1):
    ...         self.alpha = alpha
    ...     def loss(self, batch, args):
    ...         s = batch["teacher"]
    ...         mixed = torch.logaddexp(s.teacher.log_softmax(-1) + torch.log(torch.tensor(self.alpha)),
    ...                                 s.student.log_softmax(-1) + torch.log(torch.tensor(1 - self.alpha)))
    ...         terms = step_divergence("kl", mixed, s.teacher, on="teacher")
    ...         return ObjectiveOutput(batch.reduce(terms, "teacher"))
    >>> register_objective(SkewKL(alpha=0.1))  # then FDistillConfig(objective="skew-kl", ...)

References: Wen et al. 2023, "f-Divergence Minimization for Sequence-Level Knowledge Distillation" (ACL,
arXiv:2305.15718), Eqs. 3–12; Kim & Rush 2016 (SeqKD); Tu et al. 2020 (ENGINE); Shleifer & Rush 2020
(pre-distillation). The shape follows Liger-Kernel's chunked losses: one assembly, each loss a small piece.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fdistill.divergences import (
    DIVERGENCES,
    IGNORE_INDEX,
    SampledSequences,
    TeacherTopK,
    cross_entropy_terms,
    engine_terms,
    f_divergence_loss,
    hidden_state_mse_terms,
    reduce_terms,
    token_entropy,
    token_logprobs,
    weighted,
    word_kd_terms,
)
from fdistill.errors import InputError, invalid
from fdistill.registry import check_name, register

if TYPE_CHECKING:
    from fdistill.kernels import LinearHead
    from fdistill.lm.config import DistillArguments

COMPLETION_SETS = ("reference", "teacher", "student")


# ----------------------------------------------------------------------------- the typed inputs and output


@dataclass
class ScoredSet:
    """One completion set scored by the student (and the teacher).

    Attributes:
        student: ``(B, C, V)`` student logits at the completion positions, or on the fused path the
            ``(B, C, H)`` inputs of the student's LM head (``ScoredBatch.heads`` then holds the heads).
        teacher: the teacher's, the same way; or its top k log-probabilities at those positions, a
            :class:`~fdistill.divergences.TeacherTopK` of ``(B, C, K)`` (stored or served: no teacher forward);
            None when the objective needs no teacher.
        labels: ``(B, C)`` the completion tokens, ``-100`` at padding.
        count: the denominator of this set's reduction over the whole optimizer step (sequences or tokens).
        weights: ``(B, C)`` importance weights of reused (stale) student samples, detached
            (:mod:`fdistill.lm.importance`); None for fresh samples and every other set.
        teacher_labels: across tokenizers (:mod:`fdistill.lm.cross_batches`), ``(B, Ct)`` the same completions in
            the teacher's tokenization, ``-100`` at padding (``teacher`` is then ``(B, Ct, Vt)``); else None.
        alignment: across tokenizers, the byte-offset chunks of both tokenizations
            (:class:`fdistill.lm.cross_tokenizer.CrossAlignment`); else None.
        vocab_map: across tokenizers, the ids of both vocabularies with equal bytes
            (:class:`fdistill.lm.cross_tokenizer.VocabMap`); else None.
    """

    student: Tensor
    teacher: Tensor | TeacherTopK | None
    labels: Tensor
    count: Tensor
    weights: Tensor | None = None
    teacher_labels: Tensor | None = None
    alignment: Any = None
    vocab_map: Any = None

    @property
    def mask(self) -> Tensor:
        """``(B, C)`` True at the scored positions (labels not ``-100``)."""
        return self.labels != IGNORE_INDEX

    @property
    def teacher_mask(self) -> Tensor:
        """Where the teacher's values are scored: its own labels' positions across tokenizers, else ``mask``."""
        return self.mask if self.teacher_labels is None else self.teacher_labels != IGNORE_INDEX


@dataclass
class ScoredBatch:
    """Everything an objective's loss reads for one micro-batch: the scored sets and how to reduce them.

    Attributes:
        sets: completion set name → :class:`ScoredSet`.
        reduction: ``"sequence"`` or ``"token"`` (`fdistill.divergences.reduce_terms`).
        heads: ``(student_head, teacher_head)`` on the fused path, where the sets hold LM-head inputs.
        outputs: ``(student_outputs, teacher_outputs)`` of the forwards (hidden states when requested).
        student_config: the student's config (e.g. the teacher layers it was copied from).
        is_encoder_decoder: the models' family.
    """

    sets: dict[str, ScoredSet]
    reduction: str = "sequence"
    heads: tuple[LinearHead, LinearHead] | None = None
    outputs: tuple[Any, Any] = (None, None)
    student_config: Any = None
    is_encoder_decoder: bool = False

    def __getitem__(self, name: str) -> ScoredSet:
        return self.sets[name]

    @property
    def fused(self) -> bool:
        """Whether the sets hold LM-head inputs and heads (the fused path) rather than logits."""
        return self.heads is not None

    @property
    def cross(self) -> bool:
        """Whether the teacher scored the sets in its own tokenization (:mod:`fdistill.lm.cross_batches`)."""
        return any(s.alignment is not None for s in self.sets.values())

    def reduce(self, terms: Tensor, name: str) -> Tensor:
        """Per-position ``terms (B, C)`` of set ``name`` reduced with its mask and global denominator."""
        s = self.sets[name]
        return reduce_terms(*weighted(terms, s.mask, s.weights), reduction=self.reduction, num_items_in_batch=s.count)


@dataclass
class ObjectiveOutput:
    """An objective's loss on one micro-batch and what it logs.

    ``metrics`` keys starting with ``loss_`` are reduced terms (``loss_on_teacher_samples``,
    ``loss_on_student_samples``, ``loss_mle``, ...). ``student_entropies`` (the student's per-position entropies
    on its own samples) and ``teacher_label_logprobs`` (the teacher's log-probabilities of those samples' tokens)
    are filled by the fused pass, which never forms the logits they would otherwise come from, and by the
    f-divergences on logits from the log-softmaxes their terms are formed from (loss temperature 1), which saves
    :func:`student_sample_metrics` its own passes over the ``(B, C, V)`` logits.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    student_entropies: Tensor | None = None
    teacher_label_logprobs: Tensor | None = None


# ----------------------------------------------------------------------------- the base class and registry


class Objective:
    """A training objective: the completion sets it scores and its loss on a :class:`ScoredBatch`.

    Class attributes (override in a subclass or set in ``__init__``):
        name: the ``FDistillConfig.objective`` value.
        scores: completion sets it reads, from ``COMPLETION_SETS``.
        uses_teacher: whether a (frozen) teacher scores the sets.
        fusable: whether it runs on LM-head inputs (``fused_divergence``) as well as on logits.
        topk_teacher: whether the teacher's top-k log-probabilities (a :class:`~fdistill.divergences.TeacherTopK`
            in ``ScoredSet.teacher``) can replace the teacher forward.
        title, meaning: what the model card says it is and does; ``sampled_on`` what it is computed on.
        card_intro: the model card's first sentences, with ``{who}`` (the teacher), ``{what}`` (the title),
            ``{sampled_on}`` and ``{paper}`` (a link to f-DISTILL) filled in.
        card_settings: `DistillArguments` fields the model card lists besides the common ones.
        in_demo: whether ``fdistill demo --objective all`` runs it.
        importance_weighted: whether its loss applies ``ScoredSet.weights`` (the importance weights of reused
            student samples, :mod:`fdistill.lm.importance`): reuse is refused for an objective that does not.
        across_tokenizers: whether it trains a student whose tokenizer differs from the teacher's: its loss reads
            ``ScoredSet.teacher_labels`` / ``alignment`` / ``vocab_map`` when they are set
            (:mod:`fdistill.lm.cross_batches`), or never the teacher's values; refused across tokenizers if not.
        cross_tokenizer: whether it always runs on the cross-tokenizer path, even with one tokenizer (then every
            aligned chunk is one token on each side).
    """

    name: str = ""
    scores: tuple[str, ...] = ()
    uses_teacher: bool = True
    fusable: bool = False
    topk_teacher: bool = False
    title: str = ""
    meaning: str = ""
    sampled_on: str = ""
    card_settings: tuple[str, ...] = ()
    card_intro: str = "This model is a student distilled from {who} with the {what}, as run by {paper}."
    in_demo: bool = False
    importance_weighted: bool = False
    across_tokenizers: bool = False
    cross_tokenizer: bool = False

    @property
    def reweights_reused_samples(self) -> bool:
        """Whether reused student samples (``steps_per_generation``, ``num_iterations``, ``rollout_overlap``) can
        train it: it scores student samples and applies their importance weights."""
        return "student" in self.scores and self.importance_weighted

    def check(self, args: DistillArguments) -> None:
        """Refuse settings that make no sense for this objective (called by `DistillArguments.__post_init__`)."""

    def wants_hidden_states(self, args: DistillArguments) -> bool:
        """Whether the forwards must return every layer's hidden states."""
        return False

    def card_rows(self, args: DistillArguments, student_config) -> list[tuple[str, Any]]:
        """``(setting, value)`` rows the model card adds for this run besides ``card_settings``: values the
        objective derives (e.g. from the student's config) rather than reads from one setting."""
        return []

    def loss(self, batch: ScoredBatch, args: DistillArguments) -> ObjectiveOutput:
        """The loss of one micro-batch from its scored sets, reduced with ``batch.reduce`` (global denominators, so
        gradient accumulation and several processes are exact), and the metrics to log."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, scores={self.scores})"


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective, *, replace: bool = False) -> Objective:
    """Make ``objective`` available as ``FDistillConfig(objective=objective.name)``; returns it."""
    check_name(objective, "objective")
    bad = [s for s in objective.scores if s not in COMPLETION_SETS]
    if bad or not objective.scores:
        raise invalid(f"{objective.name}.scores", objective.scores, f"list completion sets from {COMPLETION_SETS}.")
    return register(OBJECTIVES, objective, "objective", replace=replace)


def get_objective(name: str) -> Objective:
    """The registered objective ``name``, or one `InputError` listing the registered names."""
    if name not in OBJECTIVES:
        raise invalid(
            "objective",
            name,
            f"choose one of {', '.join(OBJECTIVES)} (or register your own with "
            "fdistill.lm.objectives.register_objective).",
        )
    return OBJECTIVES[name]


# ----------------------------------------------------------------------------- the f-divergences


class FDivergence(Objective):
    """A sequence-level f-divergence decomposed step by step (f-DISTILL Eqs. 6–12): KL, RKL, JS or TVD.

    One assembly serves both backends: `fdistill.divergences.f_divergence_loss` on logits, and
    `fdistill.kernels.fused_f_divergence_loss` on LM-head inputs (same arguments, same result).
    """

    fusable = True
    importance_weighted = True  # the weights ride in SampledSequences.weights
    across_tokenizers = True  # fdistill.lm.cross_divergences.cross_f_divergence_loss
    card_settings = ("loss_temperature",)
    card_intro = (
        "This model is a student distilled from {who} by minimising the {what} with {paper}: the "
        "sequence-level divergence is decomposed into per-step divergences between the teacher's and the "
        "student's next-token distributions, on {sampled_on}."
    )

    def __init__(self, kind: str, title: str, meaning: str, sampled_on: str, scores: tuple[str, ...]):
        self.name, self.title, self.meaning, self.sampled_on, self.scores = kind, title, meaning, sampled_on, scores
        self.topk_teacher = True  # fdistill.divergences.topk_step_divergence: every kind, either side
        self.in_demo = True
        if kind == "js":
            self.card_settings = ("js_mixture", "js_beta", "loss_temperature")

    def loss(self, batch: ScoredBatch, args: DistillArguments) -> ObjectiveOutput:
        common = dict(
            js_mixture=args.js_mixture,
            js_beta=args.js_beta,
            temperature=args.loss_temperature,
            reduction=args.loss_reduction,
        )
        entropies = teacher_lp = None
        if batch.cross:
            out = _cross_f_divergence_loss(self.name, batch, common)
        elif batch.fused:
            if any(s.weights is not None for s in batch.sets.values()):
                raise InputError(
                    "importance-weighted (reused) samples need materialised logits: fused_divergence=False."
                )
            from fdistill.kernels import HiddenSequences, fused_f_divergence_loss, label_logits

            sides = {
                n: HiddenSequences(s.student, s.teacher, s.labels, num_items_in_batch=s.count)
                for n, s in batch.sets.items()
            }
            out, details = fused_f_divergence_loss(
                self.name,
                *batch.heads,
                teacher_samples=sides.get("teacher"),
                student_samples=sides.get("student"),
                chunk_size=args.fused_chunk_size,
                **common,
            )
            if "student" in details:  # the sample metrics, from the fused pass's side outputs
                s = batch["student"]
                entropies = details["student"].student_entropy.view_as(s.labels)
                if args.loss_temperature == 1.0:  # the fused log-normaliser is at the loss temperature
                    with torch.no_grad():
                        logits = label_logits(batch.heads[1], s.teacher, s.labels.clamp_min(0))
                        teacher_lp = logits - details["student"].teacher_lse.view_as(s.labels)
        else:
            sides = {
                n: SampledSequences(s.student, s.teacher, s.labels, num_items_in_batch=s.count, weights=s.weights)
                for n, s in batch.sets.items()
            }
            untempered = args.loss_temperature == 1.0  # the logged sample metrics are of the untempered models
            out = f_divergence_loss(
                self.name,
                teacher_samples=sides.get("teacher"),
                student_samples=sides.get("student"),
                teacher_topk_mode=args.teacher_topk_mode,
                sample_details=untempered,
                **common,
            )
            if untempered:  # the sample metrics, from the log-softmaxes of the terms (None where it had none)
                entropies, teacher_lp = out.student_entropies, out.teacher_label_logprobs
        metrics = {}
        if out.teacher_term is not None:
            metrics["loss_on_teacher_samples"] = out.teacher_term
        if out.student_term is not None:
            metrics["loss_on_student_samples"] = out.student_term
        return ObjectiveOutput(out.loss, metrics, entropies, teacher_lp)


def _cross_f_divergence_loss(kind: str, batch: ScoredBatch, common: dict):
    """The f-divergence ``kind`` across tokenizers on aligned chunks
    (:func:`fdistill.lm.cross_divergences.cross_f_divergence_loss`), each side's terms weighted and reduced as
    :func:`fdistill.divergences.f_divergence_loss` does."""
    from fdistill.lm.cross_divergences import CrossSampledSequences, cross_f_divergence_loss

    sides = {
        n: CrossSampledSequences(
            student_logits=s.student,
            teacher_logits=s.teacher,
            student_labels=s.labels,
            teacher_labels=s.teacher_labels,
            alignment=s.alignment,
            num_items_in_batch=s.count,
            weights=s.weights,
        )
        for n, s in batch.sets.items()
    }
    vocab_map = next(s.vocab_map for s in batch.sets.values())
    return cross_f_divergence_loss(
        kind, vocab_map=vocab_map, teacher_samples=sides.get("teacher"), student_samples=sides.get("student"), **common
    )


# ----------------------------------------------------------------------------- the baselines


class CrossEntropy(Objective):
    """Cross-entropy ``−log q(y_t | y_<t)`` on one fixed set of targets (paper Eq. 3): MLE or SeqKD."""

    uses_teacher = False
    across_tokenizers = True  # on the student's tokens only (teacher samples re-tokenised for it)

    def __init__(self, name: str, target: str, title: str, meaning: str, card_intro: str, in_demo: bool):
        self.name, self.scores, self.title, self.meaning, self.in_demo = name, (target,), title, meaning, in_demo
        self.card_intro = card_intro

    def check(self, args: DistillArguments) -> None:
        if self.scores == ("teacher",) and args.teacher_sampling == "online":
            raise invalid(
                "teacher_sampling",
                "online",
                f"objective {self.name!r} trains on the teacher's "
                "beam-search outputs, drawn offline once (`fdistill sample --decoding beam`); use "
                "teacher_sampling='offline'.",
            )

    def loss(self, batch: ScoredBatch, args: DistillArguments) -> ObjectiveOutput:
        (name,) = self.scores
        s = batch[name]
        return ObjectiveOutput(batch.reduce(cross_entropy_terms(s.student, s.labels), name))


class Engine(Objective):
    """ENGINE: the teacher's energy ``Σ_v q·(−log p)`` of online student samples (Tu et al. 2020; paper §2.2)."""

    name, scores, in_demo = "engine", ("student",), True
    importance_weighted = True  # batch.reduce applies them
    title = "ENGINE objective (Tu et al. 2020)"
    meaning = "teacher energy −log p of online student samples: reverse KL without the student's entropy"
    card_settings = ("loss_temperature",)

    def loss(self, batch: ScoredBatch, args: DistillArguments) -> ObjectiveOutput:
        s = batch["student"]
        return ObjectiveOutput(
            batch.reduce(engine_terms(s.student, s.teacher, temperature=args.loss_temperature), "student")
        )


class PreDistillation(Objective):
    """α_mle·CE + α_kd·T²·KL(p_T‖q_T) + α_hid·MSE(hidden) on references (Shleifer & Rush 2020)."""

    name, scores = "predistill", ("reference",)
    title = "pre-distillation objective (Shleifer & Rush 2020)"
    meaning = "α_mle·cross-entropy + α_kd·word-level KL(p‖q) + α_hid·hidden-state MSE on references"
    card_settings = ("loss_temperature", "predistill_alpha_mle", "predistill_alpha_kd", "predistill_alpha_hidden")

    def check(self, args: DistillArguments) -> None:
        if args.predistill_alpha_mle + args.predistill_alpha_kd + args.predistill_alpha_hidden == 0:
            raise invalid("predistill_alpha_*", 0, "at least one pre-distillation weight must be positive.")

    def wants_hidden_states(self, args: DistillArguments) -> bool:
        return args.predistill_alpha_hidden > 0

    def loss(self, batch: ScoredBatch, args: DistillArguments) -> ObjectiveOutput:
        s = batch["reference"]
        metrics, loss = {}, 0.0
        if args.predistill_alpha_mle > 0:
            metrics["loss_mle"] = batch.reduce(cross_entropy_terms(s.student, s.labels), "reference")
            loss = loss + args.predistill_alpha_mle * metrics["loss_mle"]
        if args.predistill_alpha_kd > 0:
            kd = word_kd_terms(s.student, s.teacher, temperature=args.loss_temperature)
            metrics["loss_kd"] = batch.reduce(kd, "reference")
            loss = loss + args.predistill_alpha_kd * metrics["loss_kd"]
        if args.predistill_alpha_hidden > 0:
            metrics["loss_hidden"] = self._hidden_loss(batch, args)
            loss = loss + args.predistill_alpha_hidden * metrics["loss_hidden"]
        return ObjectiveOutput(loss, metrics)

    def card_rows(self, args: DistillArguments, student_config) -> list[tuple[str, Any]]:
        """With the hidden-state term, the layers it matched (None where neither set nor recorded)."""
        if args.predistill_alpha_hidden > 0:
            return [("predistill_layer_map", self._matched_layers(args, student_config))]
        return []

    @staticmethod
    def _matched_layers(args: DistillArguments, student_config) -> list[int] | None:
        """The teacher layer matched by each student decoder layer: the setting, else what the student records."""
        if args.predistill_layer_map is not None:
            return list(args.predistill_layer_map)
        recorded = (getattr(student_config, "fdistill_teacher_layers", None) or {}).get("decoder")
        return None if recorded is None else list(recorded)

    @classmethod
    def layer_map(cls, args: DistillArguments, student_config) -> list[int]:
        """:meth:`_matched_layers`, refused when the student records none and the setting is unset."""
        layers = cls._matched_layers(args, student_config)
        if layers is None:
            raise InputError(
                "predistill_alpha_hidden > 0 needs to know which teacher layer each student layer matches: set "
                "predistill_layer_map, or make the student with fdistill.lm.student.create_student_from_teacher."
            )
        return layers

    def _hidden_loss(self, batch: ScoredBatch, args: DistillArguments) -> Tensor:
        """MSE between each student layer's output and its matched teacher layer's, at target positions."""
        layer_map = self.layer_map(args, batch.student_config)
        key = "hidden_states" if not batch.is_encoder_decoder else "decoder_hidden_states"
        s_hidden, t_hidden = (getattr(out, key) for out in batch.outputs)
        c = batch["reference"].labels.shape[1]
        positions = slice(-c - 1, -1) if not batch.is_encoder_decoder else slice(None)  # the completion's predictors
        total = 0.0
        for i, j in enumerate(layer_map):
            s_h = F.layer_norm(s_hidden[i + 1][:, positions], s_hidden[i + 1].shape[-1:])  # (B, C, H)
            t_h = F.layer_norm(t_hidden[j + 1][:, positions], t_hidden[j + 1].shape[-1:])
            total = total + batch.reduce(hidden_state_mse_terms(s_h, t_h), "reference")
        return total / len(layer_map)


# ----------------------------------------------------------------------------- across tokenizers


class _CrossEntropyPlus(Objective):
    """``CE + uld_weight · D`` on teacher samples: the student's cross-entropy on the teacher's samples (re-tokenised
    for it) plus ``uld_weight`` times a cross-tokenizer distillation term ``D`` (:meth:`terms`), both summed over
    each sequence (its tokens, its positions or chunks) and averaged over sequences. Runs on the cross-tokenizer path
    with any two tokenizers; with one tokenizer every position pairs token by token."""

    scores = ("teacher",)
    across_tokenizers = cross_tokenizer = True
    sampled_on = "sequences sampled from the teacher"
    card_settings = ("uld_weight", "loss_temperature")
    card_intro = (
        "This model is a student distilled from {who} with the {what} on {sampled_on}, a cross-tokenizer baseline "
        "run by fdistill beside {paper}."
    )
    metric = ""

    def terms(self, s: ScoredSet, args: DistillArguments) -> tuple[Tensor, Tensor]:
        """The distillation term ``D`` of the teacher samples ``s``: per-position (or per-chunk) terms and their mask,
        reduced as the loss reduces them."""
        raise NotImplementedError

    def loss(self, batch: ScoredBatch, args: DistillArguments) -> ObjectiveOutput:
        """``CE + uld_weight · D`` on the teacher samples; logs both parts (``loss_ce`` and :attr:`metric`)."""
        s = batch["teacher"]
        ce = batch.reduce(cross_entropy_terms(s.student, s.labels), "teacher")
        terms, mask = self.terms(s, args)
        term = reduce_terms(terms, mask, reduction=batch.reduction, num_items_in_batch=s.count)
        return ObjectiveOutput(ce + args.uld_weight * term, {"loss_ce": ce, self.metric: term})


class UniversalLogitDistillation(_CrossEntropyPlus):
    """ULD (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss",
    arXiv:2402.12030): ``CE + uld_weight · Σ_i ‖sort(p_i) − sort(q_i)‖₁`` on teacher samples, the two models'
    next-token probabilities sorted in decreasing order (the smaller vocabulary zero-padded), the i-th token of each
    side paired by index (:func:`fdistill.lm.cross_divergences.uld_terms`)."""

    name, metric = "uld", "loss_uld"
    title = "Universal Logit Distillation (ULD, Boizard et al. 2024)"
    meaning = (
        "cross-entropy on teacher samples + uld_weight · L1 distance between the sorted next-token probabilities "
        "of teacher and student, positions paired by index (any two tokenizers)"
    )

    def terms(self, s: ScoredSet, args: DistillArguments) -> tuple[Tensor, Tensor]:
        from fdistill.lm.cross_divergences import uld_terms

        return uld_terms(s.student, s.teacher, s.labels, s.teacher_labels, temperature=args.loss_temperature)


class Hybrid(_CrossEntropyPlus):
    """GOLD-style hybrid (after TRL's ``GOLDTrainer``): ``CE + uld_weight · Σ_c h_c`` on teacher samples, with ``h_c``
    the KL between the two next-token distributions projected on the tokens of equal bytes at aligned chunks that are
    one token on each side, and ULD at every other chunk (:func:`fdistill.lm.cross_divergences.hybrid_terms`). With
    one tokenizer every chunk is one token: CE + uld_weight · the token-level KL."""

    name, metric = "hybrid", "loss_hybrid"
    title = "GOLD-style hybrid cross-tokenizer loss"
    meaning = (
        "cross-entropy on teacher samples + uld_weight · (exact projected KL where both tokenizers take one token "
        "of the same bytes, ULD elsewhere)"
    )

    def terms(self, s: ScoredSet, args: DistillArguments) -> tuple[Tensor, Tensor]:
        from fdistill.lm.cross_divergences import hybrid_terms

        return hybrid_terms(
            s.student,
            s.teacher,
            s.labels,
            s.teacher_labels,
            s.alignment,
            s.vocab_map,
            temperature=args.loss_temperature,
        )


# ----------------------------------------------------------------------------- what the trainer logs of samples


@torch.no_grad()
def student_sample_metrics(
    batch: ScoredBatch, output: ObjectiveOutput, sample_mask: Tensor | None
) -> dict[str, Tensor]:
    """Entropy, length and teacher NLL of the student's online samples (when the objective scores them):
    from the logits, or on the fused path from what the fused pass returned (`ObjectiveOutput`)."""
    if "student" not in batch.sets:
        return {}
    s = batch["student"]
    valid = s.mask
    metrics = {"student_sample_length": sample_mask.sum(-1).float().mean()}
    entropies = output.student_entropies
    if entropies is None and not batch.fused:
        entropies = token_entropy(s.student.detach())
    if entropies is not None and valid.any():
        metrics["student_entropy"] = entropies[valid].float().mean()
    teacher_lp = output.teacher_label_logprobs
    if isinstance(s.teacher, TeacherTopK):  # a top-k teacher may carry the sampled tokens' log-probabilities
        if s.teacher.token_logprobs is not None:
            valid = s.teacher_mask  # its own tokens, across tokenizers
            teacher_lp = torch.where(valid, s.teacher.token_logprobs, torch.zeros_like(s.teacher.token_logprobs))
    elif teacher_lp is None and not batch.fused and s.teacher is not None:
        if s.teacher_labels is not None:  # across tokenizers: the teacher's NLL of the text, in its tokenization
            valid = s.teacher_mask
        teacher_lp = token_logprobs(s.teacher, s.labels if s.teacher_labels is None else s.teacher_labels)
    if teacher_lp is not None:
        metrics["teacher_nll_of_student_samples"] = -(teacher_lp * valid).sum(-1).mean()
    return metrics


# ----------------------------------------------------------------------------- the built-in objectives

_SEQUENCES = {
    "teacher": "sequences sampled offline from the teacher",
    "student": "sequences sampled online from the student",
    "both": "sequences sampled offline from the teacher and online from the student",
}
for _objective in (
    FDivergence(
        "kl",
        "sequence-level KL divergence KL(p‖q)",
        "forward KL(p‖q) on offline teacher samples: the student spreads over all of the teacher's modes",
        _SEQUENCES["teacher"],
        ("teacher",),
    ),
    FDivergence(
        "rkl",
        "sequence-level reverse KL divergence KL(q‖p)",
        "reverse KL(q‖p) on online student samples: the student concentrates on the teacher's main modes",
        _SEQUENCES["student"],
        ("student",),
    ),
    FDivergence(
        "js",
        "sequence-level Jensen–Shannon divergence",
        "Jensen–Shannon: KL(p‖m) on teacher samples and KL(q‖m) on student samples, m their mixture",
        _SEQUENCES["both"],
        ("teacher", "student"),
    ),
    FDivergence(
        "tvd",
        "sequence-level total variation distance",
        "total variation distance (its step-wise upper bound) on teacher and student samples",
        _SEQUENCES["both"],
        ("teacher", "student"),
    ),
    CrossEntropy(
        "mle",
        "reference",
        "maximum likelihood (MLE baseline)",
        "cross-entropy on ground-truth references (no teacher)",
        "This model was trained by maximum likelihood on reference targets — the MLE baseline of {paper}, "
        "without a teacher.",
        in_demo=False,
    ),
    CrossEntropy(
        "seqkd",
        "teacher",
        "sequence-level knowledge distillation (SeqKD, Kim & Rush 2016)",
        "cross-entropy on the teacher's offline beam-search outputs",
        "This model is a student trained by {what} on the beam-search outputs of {who}, a baseline of {paper}.",
        in_demo=True,
    ),
    Engine(),
    PreDistillation(),
    UniversalLogitDistillation(),
    Hybrid(),
):
    register_objective(_objective)
assert tuple(o for o in OBJECTIVES if isinstance(OBJECTIVES[o], FDivergence)) == DIVERGENCES
