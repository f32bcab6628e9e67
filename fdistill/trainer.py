"""FDistillTrainer: f-DISTILL training with offline teacher samples and online student samples.

The trainer orchestrates; the maths lives in :mod:`fdistill.divergences`. Each
optimizer step:

1. at the start of the step, the student draws one sample per prompt for every
   micro-batch of the step (eval mode, KV cache — static on CUDA, where transformers
   compiles the decode step — no gradient); so does the teacher with
   ``teacher_sampling="online"``. The parameters do not change inside a step, so this
   equals sampling inside each micro-batch, and it gives the exact token/sequence counts
   of the whole global batch before any loss is taken;
2. for each micro-batch, one student forward (with gradient) and one teacher forward
   (no gradient) score every completion set the objective needs — offline teacher
   samples and online student samples concatenated along the batch (stored top-k teacher
   log-probabilities replace the teacher forward with ``teacher_topk_logprobs``);
3. one loss call (:func:`fdistill.divergences.f_divergence_loss`, its hidden-state twin
   :func:`fdistill.kernels.fused_f_divergence_loss` with ``fused_divergence``, or a
   baseline term) divided by the global count, so gradient accumulation and several
   processes give exactly the full-batch gradient.

References: Wen et al. 2023, "f-Divergence Minimization for Sequence-Level Knowledge
Distillation" (ACL, arXiv:2305.15718), §2.3 (offline teacher sampling,
pre-distillation) and §7; Shleifer & Rush 2020 (pre-distillation).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, GenerationConfig, PreTrainedModel, Seq2SeqTrainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from fdistill.config import TOPK_COLUMNS, DistillArguments
from fdistill.data import DistillCollator, cat_completions, check_prompts, score_completions, scoring_inputs
from fdistill.data import base_model as _base_model
from fdistill.divergences import (
    DIVERGENCES,
    IGNORE_INDEX,
    SampledSequences,
    count_items,
    cross_entropy_terms,
    engine_terms,
    f_divergence_loss,
    hidden_state_mse_terms,
    nonfinite_positions,
    reduce_terms,
    token_entropy,
    token_logprobs,
    topk_teacher_logits,
    word_kd_terms,
)
from fdistill.kernels import (
    HiddenSequences,
    capture_head_inputs,
    check_head,
    fused_f_divergence_loss,
    label_logits,
    output_head,
)
from fdistill.errors import InputError, NonFiniteError, nonfinite_cause, nonfinite_sampling
from fdistill.loading import resolve_dtype
from fdistill.sampling import sample_completions, sampling_config

logger = logging.getLogger(__name__)
_SET_NAMES = {"reference": "references", "teacher": "teacher samples", "student": "student samples"}
RUN_RECORD = "fdistill_run.json"  # in each checkpoint folder: what it was trained with (see FDistillMixin.train)
# Settings that change speed or failure handling, not the objective: a resumed run may change them.
_SPEED_SETTINGS = ("fused_divergence", "fused_chunk_size", "student_generation_cache", "teacher_dtype", "on_nonfinite")


def _vocab_size(model: nn.Module) -> int:
    return _base_model(model).get_output_embeddings().weight.shape[0]


def _record_changes(saved: dict, now: dict) -> list[str]:
    """The differences between two run records, as ``name: saved → now`` phrases."""
    changes = [f"{k}={saved['settings'].get(k)!r} then, {v!r} now" for k, v in now["settings"].items()
               if k in saved.get("settings", {}) and saved["settings"][k] != v]
    for part in ("teacher", "tokenizer"):
        if saved.get(part) != now[part]:
            changes.append(f"another {part} (fingerprint {saved.get(part)} then, {now[part]} now)")
    return changes


class FDistillMixin:
    """Gives a `transformers.Trainer` subclass the f-DISTILL loss, online student sampling and a frozen teacher.

    Put it first in the bases: ``class MyTrainer(FDistillMixin, Trainer)``. The
    distillation settings come from ``args`` when it is a :class:`DistillArguments`
    (as :class:`FDistillConfig` is), else from ``distill_args=``.

    Arguments (besides the Trainer's):
        teacher_model: a model, or a Hub name / local path loaded with the student's
            architecture class. Kept frozen, in eval mode, on the student's device.
        distill_args: the settings when ``args`` is not a ``DistillArguments``.
    """

    def __init__(self, *args, teacher_model: PreTrainedModel | str | None = None, distill_args=None, **kwargs):
        train_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        settings = distill_args if distill_args is not None else train_args
        if not isinstance(settings, DistillArguments):
            raise ValueError(
                "no distillation settings: pass args=FDistillConfig(...) or distill_args=DistillArguments(...)."
            )
        self.distill_args: DistillArguments = settings
        model = kwargs.get("model", args[0] if args else None)
        if model is None:
            raise ValueError("pass the student as model=.")
        tokenizer = kwargs.get("processing_class")
        if tokenizer is None:
            raise ValueError("pass the student's tokenizer as processing_class= (it builds the batches).")
        is_enc_dec = bool(_base_model(model).config.is_encoder_decoder)
        if kwargs.get("data_collator") is None:
            kwargs["data_collator"] = DistillCollator(
                tokenizer,
                is_encoder_decoder=is_enc_dec,
                prompt_column=settings.prompt_column,
                completions=self._completion_columns(settings),
                optional_completions={"reference": settings.reference_column},  # for compute_metrics when present
                max_prompt_length=settings.max_prompt_length,
                max_target_length=settings.max_target_length,
                use_chat_template=settings.use_chat_template,
                topk_columns=TOPK_COLUMNS if settings.teacher_topk_logprobs else None,
                vocab_size=_vocab_size(model),
            )
        self._check_datasets(settings, kwargs.get("train_dataset"), kwargs.get("eval_dataset"), kwargs["data_collator"])
        super().__init__(*args, **kwargs)
        self.is_encoder_decoder = is_enc_dec
        self.teacher = self._prepare_teacher(teacher_model) if settings.needs_teacher else None
        # Losses are divided by the global item count of the optimizer step (see _step_counts),
        # so the Trainer must not divide again by the accumulation steps.
        self.loss_is_scaled_for_ga = True
        self._step_counts: dict[str, torch.Tensor] | None = None
        self._pending_batches: list | None = None
        self._micro_index = 0
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.student_generation_config = self._student_generation_config()
        self.teacher_generation_config = None
        if settings.needs_teacher_samples and not settings.reads_teacher_samples:
            self.teacher_generation_config = sampling_config(
                self.teacher, self.processing_class, max_new_tokens=settings.max_new_tokens,
                cache_implementation=self.student_generation_config.cache_implementation,
            )
        self._heads_checked = False
        self._record: dict | None = None  # see _run_record
        # on_nonfinite='skip': micro-batches dropped in all; training micro-batches in all; both since the last log
        self._nonfinite_skipped, self._train_micro, self._window_micro, self._window_skipped = 0, 0, 0, 0

    # ------------------------------------------------------------------ setup and validation

    @staticmethod
    def _completion_columns(settings: DistillArguments) -> dict[str, str]:
        columns = {}
        if settings.needs_reference:
            columns["reference"] = settings.reference_column
        if settings.reads_teacher_samples:
            columns["teacher"] = settings.teacher_sample_column
        return columns

    @classmethod
    def _check_datasets(cls, settings, train_dataset, eval_dataset, collator) -> None:
        """Fail before any work on: missing columns, empty datasets, all-empty targets."""
        needed = [settings.prompt_column, *cls._completion_columns(settings).values()]
        if settings.teacher_topk_logprobs:
            needed += list(TOPK_COLUMNS)
        named = [("train", train_dataset)]
        if isinstance(eval_dataset, dict):  # several eval sets, as the Trainer allows
            named += [(f"eval[{k}]", v) for k, v in eval_dataset.items()]
        else:
            named.append(("eval", eval_dataset))
        for split, dataset in named:
            if dataset is None:
                continue
            names = getattr(dataset, "column_names", None)
            if names is not None:
                missing = [c for c in needed if c not in names]
                if missing:
                    hint = ""
                    if settings.teacher_sample_column in missing:
                        hint = " Draw offline teacher samples first (`fdistill sample`) or set teacher_sample_column."
                    elif set(TOPK_COLUMNS) & set(missing):
                        hint = " Draw teacher samples with `fdistill sample --topk-logprobs K` to store them."
                    raise ValueError(
                        f"the {split} dataset lacks column(s) {missing} needed by objective {settings.objective!r}; "
                        f"it has {names}.{hint}"
                    )
            if len(dataset) == 0:
                raise ValueError(f"the {split} dataset is empty; give it at least one example.")
            if names is not None:  # every prompt, whatever the objective reads besides (None, blank, numbers refused)
                check_prompts(dataset[settings.prompt_column], settings.prompt_column)
            completions = cls._completion_columns(settings)
            if completions:
                probe = [dataset[i] for i in range(min(len(dataset), 256))]
                batch = collator(probe)
                for name in completions:
                    if not batch[f"{name}_mask"].any():
                        raise ValueError(
                            f"every {name} target in the first {len(probe)} {split} examples is empty, so all labels "
                            f"would be masked; check column {completions[name]!r}."
                        )

    def _prepare_teacher(self, teacher: PreTrainedModel | str | None) -> nn.Module:
        a = self.distill_args
        if teacher is None:
            raise ValueError(f"objective {a.objective!r} needs a teacher: pass teacher_model= (a model or a path).")
        student = _base_model(self.model)
        dtype = resolve_dtype(a.teacher_dtype) if a.teacher_dtype not in (None, "auto") else next(student.parameters()).dtype
        if isinstance(teacher, str):
            auto = AutoModelForSeq2SeqLM if student.config.is_encoder_decoder else AutoModelForCausalLM
            teacher = auto.from_pretrained(teacher, dtype=dtype)
        if bool(teacher.config.is_encoder_decoder) != bool(student.config.is_encoder_decoder):
            raise ValueError("teacher and student must both be encoder–decoders or both decoder-only.")
        if _vocab_size(teacher) != _vocab_size(student):
            raise ValueError(
                f"teacher vocabulary ({_vocab_size(teacher)}) and student vocabulary ({_vocab_size(student)}) differ; "
                "f-divergences compare next-token distributions, so the student must use the teacher's tokenizer "
                "(make it with fdistill.student.create_student_from_teacher, or resize its embeddings)."
            )
        teacher.requires_grad_(False)
        teacher.eval()
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        else:
            teacher = teacher.to(device=self.args.device, dtype=dtype)
        return teacher

    def _student_generation_config(self) -> GenerationConfig:
        a = self.distill_args
        return sampling_config(
            self.model,
            self.processing_class,
            max_new_tokens=a.max_new_tokens,
            do_sample=a.student_do_sample,
            temperature=a.student_sampling_temperature,
            top_k=a.student_top_k,
            top_p=a.student_top_p,
            num_beams=a.student_num_beams,
            cache_implementation=self._cache_implementation(),
        )

    def _cache_implementation(self) -> str | None:
        """'static' KV cache on CUDA (transformers compiles the decode step), dynamic (None) elsewhere, unless set."""
        choice = self.distill_args.student_generation_cache
        if choice == "auto":
            choice = "static" if self.args.device.type == "cuda" else "dynamic"
        return "static" if choice == "static" else None

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            a = self.distill_args
            self._signature_columns = list({a.prompt_column, a.reference_column, *self._completion_columns(a).values()})

    # ------------------------------------------------------------------ checkpoints: what they were trained with

    def _run_record(self) -> dict:
        """What a checkpoint was trained with: the distillation settings that change the objective, and fingerprints
        of the teacher and tokenizer (:func:`fdistill.loading.model_fingerprint`). Computed once per trainer."""
        if self._record is None:
            from fdistill.loading import model_fingerprint

            settings = {k: v for k, v in dataclasses.asdict(self.distill_args).items()
                        if k in {f.name for f in dataclasses.fields(DistillArguments)} and k not in _SPEED_SETTINGS}
            prints = model_fingerprint(self.teacher, self.processing_class) if self.teacher is not None else {
                "tokenizer": model_fingerprint(self.model, self.processing_class)["tokenizer"]}
            self._record = {"settings": settings, "teacher": prints.get("model"), "tokenizer": prints["tokenizer"]}
        return self._record

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            with open(os.path.join(folder, RUN_RECORD), "w") as f:
                json.dump(self._run_record(), f, indent=2, default=str)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """`Trainer.train`; a resumed run is first checked against what its checkpoint was trained with.

        A checkpoint trained with other distillation settings (objective, mixture, temperatures, sampling, data
        columns, ...), another teacher or another tokenizer is refused with the differences named, before any work.
        """
        folder = resume_from_checkpoint
        if folder is True:
            folder = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        if isinstance(folder, str) and os.path.isfile(os.path.join(folder, RUN_RECORD)):
            with open(os.path.join(folder, RUN_RECORD)) as f:
                saved = json.load(f)
            changes = _record_changes(saved, self._run_record())
            if changes:
                raise InputError(f"checkpoint {folder!r} was trained differently: {'; '.join(changes)}. Resume with the "
                                 "settings and models it was trained with, or train into a new output_dir.")
        elif isinstance(folder, str):
            logger.warning("checkpoint %s has no %s (written by an older fdistill): its settings are not checked.",
                           folder, RUN_RECORD)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    # ------------------------------------------------------------------ online student samples

    def generate_student_samples(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample one completion per prompt from the student (eval mode, KV cache, no gradient): ``(ids, mask)``."""
        model = self.accelerator.unwrap_model(self.model)
        with nonfinite_sampling("student", f"training step {self.state.global_step + 1}"):
            return sample_completions(model, prompt_ids, prompt_mask, self.student_generation_config)

    def generate_teacher_samples(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Online teacher samples (``teacher_sampling="online"``): one ancestral sample per prompt, ``(ids, mask)``."""
        with nonfinite_sampling("teacher", f"training step {self.state.global_step + 1}"):
            return sample_completions(self.teacher, prompt_ids, prompt_mask, self.teacher_generation_config)

    def _online_samples(self, batch: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The samples drawn during training for one micro-batch: the student's, and the teacher's when online."""
        device = self.args.device
        prompts = (batch["prompt_ids"].to(device), batch["prompt_mask"].to(device))
        drawn = {}
        if self.teacher_generation_config is not None:
            drawn["teacher"] = self.generate_teacher_samples(*prompts)
        if self.distill_args.needs_student_samples:
            drawn["student"] = self.generate_student_samples(*prompts)
        return drawn

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Collect the optimizer step's micro-batches; their student samples are drawn at the step's first loss call.

        Sampling waits for the first ``compute_loss`` of the step because, on resume, the
        Trainer restores the RNG state only after this method returns: sampling here
        would make a resumed run draw different student samples than an uninterrupted one.
        """
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._pending_batches, self._step_samples, self._step_counts, self._micro_index = batches, None, None, 0
        return batches, num_items

    def _prepare_step(self) -> None:
        """Draw the online samples for every micro-batch of the step and count items over the global batch."""
        device = self.args.device
        samples = [self._online_samples(batch) for batch in self._pending_batches]
        counts = {}
        for batch, drawn in zip(self._pending_batches, samples):
            masks = {n: batch[f"{n}_mask"] for n in ("reference", "teacher") if f"{n}_mask" in batch}
            masks.update({n: mask for n, (_, mask) in drawn.items()})
            for name, mask in masks.items():
                n = count_items(mask.to(device), self.distill_args.loss_reduction)
                counts[name] = counts.get(name, 0) + n.float()
        if self.accelerator.num_processes > 1:
            counts = {k: self.accelerator.gather(v.reshape(1)).sum() for k, v in counts.items()}
        self._step_samples, self._step_counts = samples, counts

    # ------------------------------------------------------------------ the loss

    def _count(self, name: str, inputs: dict[str, torch.Tensor], training: bool) -> torch.Tensor:
        """Denominator for one side: global count of the optimizer step in training, the local one otherwise."""
        if training and self._step_counts is not None and name in self._step_counts:
            # DDP averages gradients over processes; a global denominator needs the loss scaled back up.
            return self._step_counts[name].clamp_min(1) / self.accelerator.num_processes
        return count_items(inputs[f"{name}_mask"], self.distill_args.loss_reduction).clamp_min(1).float()

    def _score(self, model: nn.Module, inputs: dict[str, torch.Tensor], names: list[str], hidden: bool = False,
               fused: bool = False):
        """One forward of ``model`` over the completion sets ``names`` (concatenated along the batch).

        Returns per-name ``(logits (B, C, V), labels (B, C))`` slices and the model outputs;
        with ``fused`` the LM-head inputs ``(B, C, H)`` stand in for the logits, which are never computed.
        """
        pad = self.processing_class.pad_token_id
        ids, mask = cat_completions([(inputs[f"{n}_ids"], inputs[f"{n}_mask"]) for n in names], pad)
        repeat = len(names)
        args = (model, inputs["prompt_ids"].repeat(repeat, 1), inputs["prompt_mask"].repeat(repeat, 1), ids, mask)
        if fused:
            with capture_head_inputs(model) as captured:
                _, labels, outputs = score_completions(*args, pad_token_id=pad)
            logits = captured[-1][:, :-1] if not self.is_encoder_decoder else captured[-1]  # the labels' predictors
        else:
            logits, labels, outputs = score_completions(*args, pad_token_id=pad, output_hidden_states=hidden)
        b = inputs["prompt_ids"].shape[0]
        return {n: (logits[i * b : (i + 1) * b], labels[i * b : (i + 1) * b]) for i, n in enumerate(names)}, outputs

    def _use_fused(self, model: nn.Module, inputs: dict[str, torch.Tensor], name: str) -> bool:
        """Whether this objective runs through the fused divergence; checks both heads once, on one example."""
        a = self.distill_args
        if a.objective not in DIVERGENCES or a.fused_divergence is False or a.teacher_topk_logprobs:
            return False
        if a.fused_divergence is None and self.args.device.type != "cuda":
            return False
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:  # sharded LM heads are not whole on any process
            if a.fused_divergence:
                raise ValueError("fused_divergence=True needs each process to hold the whole LM head; it is not "
                                 "supported with FSDP or DeepSpeed. Leave fused_divergence unset or False.")
            return False
        if not self._heads_checked:
            pad = self.processing_class.pad_token_id
            config = _base_model(model).config
            example = scoring_inputs(
                inputs["prompt_ids"][:1], inputs["prompt_mask"][:1], inputs[f"{name}_ids"][:1], inputs[f"{name}_mask"][:1],
                is_encoder_decoder=self.is_encoder_decoder, pad_token_id=pad,
                decoder_start_token_id=getattr(config, "decoder_start_token_id", None),
            ).model_kwargs
            check_head(model, example)
            check_head(self.teacher, example)
            self._heads_checked = True
        return True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The objective of ``distill_args.objective`` on one micro-batch (see the module docstring)."""
        a = self.distill_args
        training = model.training
        if training and self._pending_batches is not None and self._micro_index < len(self._pending_batches):
            if self._step_samples is None:
                self._prepare_step()
            for name, (ids, mask) in self._step_samples[self._micro_index].items():
                inputs[f"{name}_ids"], inputs[f"{name}_mask"] = ids, mask
            self._micro_index += 1
        if (a.needs_student_samples and "student_ids" not in inputs) or (
            self.teacher_generation_config is not None and "teacher_ids" not in inputs
        ):  # evaluation, or a caller outside the training loop
            for name, (ids, mask) in self._online_samples(inputs).items():
                inputs[f"{name}_ids"], inputs[f"{name}_mask"] = ids, mask
        if self.teacher is not None and self.teacher.training:
            self.teacher.eval()  # the Trainer only knows the student; never let the teacher train
        needs = {"reference": a.needs_reference, "teacher": a.needs_teacher_samples, "student": a.needs_student_samples}
        names = [n for n, needed in needs.items() if needed]  # completion sets this objective scores
        hidden = a.objective == "predistill" and a.predistill_alpha_hidden > 0
        fused = self._use_fused(model, inputs, names[0])
        student, s_out = self._score(model, inputs, names, hidden=hidden, fused=fused)
        teacher, t_out = {}, None
        if self.teacher is not None:
            with torch.no_grad():
                teacher, t_out = self._score(self.teacher, inputs, names, hidden=hidden, fused=fused)
        elif a.teacher_topk_logprobs:  # stored top-k log-probabilities stand in for the teacher forward
            dense = topk_teacher_logits(inputs["teacher_topk_ids"], inputs["teacher_topk_logprobs"], _vocab_size(model))
            teacher = {"teacher": (dense, student["teacher"][1])}
        metrics: dict[str, torch.Tensor] = {}
        count = {n: self._count(n, inputs, training) for n in names}
        reduce = lambda terms, n: reduce_terms(  # noqa: E731
            terms, student[n][1] != -100, reduction=a.loss_reduction, num_items_in_batch=count[n]
        )

        if a.objective in ("mle", "seqkd"):
            n = names[0]
            loss = reduce(cross_entropy_terms(*student[n]), n)
        elif a.objective == "engine":
            loss = reduce(engine_terms(student["student"][0], teacher["student"][0], temperature=a.loss_temperature), "student")
        elif a.objective == "predistill":
            loss = self._predistill_loss(student, teacher, s_out, t_out, reduce, metrics)
        elif fused:
            loss = self._fused_loss(model, student, teacher, count, inputs, metrics)
        else:
            side = lambda n: (  # noqa: E731
                SampledSequences(student[n][0], teacher[n][0], student[n][1], num_items_in_batch=count[n])
                if n in student
                else None
            )
            out = f_divergence_loss(
                a.objective,
                teacher_samples=side("teacher"),
                student_samples=side("student"),
                js_mixture=a.js_mixture,
                js_beta=a.js_beta,
                temperature=a.loss_temperature,
                reduction=a.loss_reduction,
            )
            loss = out.loss
            if out.teacher_term is not None:
                metrics["loss_on_teacher_samples"] = out.teacher_term
            if out.student_term is not None:
                metrics["loss_on_student_samples"] = out.student_term
        self._window_micro += training
        self._train_micro += training
        problem = self._nonfinite_problem(names, student, teacher, loss, fused)
        if problem is not None:
            if a.on_nonfinite == "error":
                raise NonFiniteError(f"training step {self.state.global_step + 1}, micro-batch {max(self._micro_index, 1)}: "
                                     f"{problem} (on_nonfinite='skip' drops such micro-batches instead, counted).")
            if training:  # 'skip': no gradient from this micro-batch; in evaluation the NaN stays visible
                self._nonfinite_skipped += 1
                self._window_skipped += 1
                logger.warning("skipped a micro-batch at step %d: %s", self.state.global_step + 1, problem)
                zero = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)  # keeps DDP's graph whole
                return (zero, s_out) if return_outputs else zero
        if "student" in student and not fused:
            self._sample_metrics(student["student"], teacher.get("student"), inputs["student_mask"], metrics)
        local = {n: self._count(n, inputs, training=False) for n in names}
        self._store_metrics(metrics, {n: count[n] / local[n] for n in names}, training)
        return (loss, s_out) if return_outputs else loss

    @staticmethod
    @torch.no_grad()
    def _nonfinite_problem(names, student, teacher, loss, fused) -> str | None:
        """What is NaN/inf in this micro-batch (model, completion set, count) and its likely cause; None if nothing."""
        what = "LM-head inputs" if fused else "logits"
        for model_name, scored in (("teacher", teacher), ("student", student)):
            for n in names:
                if n not in scored:
                    continue
                values, labels = scored[n]
                valid = labels != IGNORE_INDEX
                bad = nonfinite_positions(values, valid)
                if bad.any():
                    return (f"the {model_name}'s {what} on the {_SET_NAMES[n]} hold NaN or +inf at {int(bad.sum())} of "
                            f"{int(valid.sum())} scored positions; likely cause: {nonfinite_cause(model_name)}")
        if not torch.isfinite(loss):
            return (f"the loss is {loss.item()} although every {what} entry is finite; likely cause: values too large "
                    "for float32 (check loss_temperature and the models' dtypes)")
        return None

    def _fused_loss(self, model, student, teacher, count, inputs, metrics) -> torch.Tensor:
        """The f-divergence objective from LM-head inputs (:func:`fdistill.kernels.fused_f_divergence_loss`)."""
        a = self.distill_args
        side = lambda n: (  # noqa: E731
            HiddenSequences(student[n][0], teacher[n][0], student[n][1], num_items_in_batch=count[n]) if n in student else None
        )
        out, details = fused_f_divergence_loss(
            a.objective, output_head(model), output_head(self.teacher),
            teacher_samples=side("teacher"), student_samples=side("student"),
            js_mixture=a.js_mixture, js_beta=a.js_beta, temperature=a.loss_temperature, reduction=a.loss_reduction,
            chunk_size=a.fused_chunk_size,
        )
        if out.teacher_term is not None:
            metrics["loss_on_teacher_samples"] = out.teacher_term
        if out.student_term is not None:
            metrics["loss_on_student_samples"] = out.student_term
        if "student" in details:  # the sample metrics of _sample_metrics, from the fused pass's side outputs
            hidden, labels = teacher["student"]
            done = details["student"]
            valid = labels != -100
            metrics["student_sample_length"] = inputs["student_mask"].sum(-1).float().mean()
            if valid.any():
                metrics["student_entropy"] = done.student_entropy[valid.reshape(-1)].float().mean()
            if a.loss_temperature == 1.0:  # the fused log-normaliser is at the loss temperature
                lp = label_logits(output_head(self.teacher), hidden, labels.clamp_min(0)) - done.teacher_lse.view_as(labels)
                metrics["teacher_nll_of_student_samples"] = -(lp * valid).sum(-1).mean()
        return out.loss

    def _predistill_loss(self, student, teacher, s_out, t_out, reduce, metrics) -> torch.Tensor:
        """α_mle·CE + α_kd·T²·KL(p_T‖q_T) + α_hid·MSE(hidden) on references (Shleifer & Rush 2020)."""
        a = self.distill_args
        s_logits, labels = student["reference"]
        loss = 0.0
        if a.predistill_alpha_mle > 0:
            metrics["loss_mle"] = reduce(cross_entropy_terms(s_logits, labels), "reference")
            loss = loss + a.predistill_alpha_mle * metrics["loss_mle"]
        if a.predistill_alpha_kd > 0:
            kd = word_kd_terms(s_logits, teacher["reference"][0], temperature=a.loss_temperature)
            metrics["loss_kd"] = reduce(kd, "reference")
            loss = loss + a.predistill_alpha_kd * metrics["loss_kd"]
        if a.predistill_alpha_hidden > 0:
            metrics["loss_hidden"] = self._hidden_loss(s_out, t_out, labels, reduce)
            loss = loss + a.predistill_alpha_hidden * metrics["loss_hidden"]
        return loss

    def _hidden_loss(self, s_out, t_out, labels, reduce) -> torch.Tensor:
        """MSE between each student layer's output and its matched teacher layer's, at target positions."""
        layer_map = self._layer_map()
        hidden_key = "hidden_states" if not self.is_encoder_decoder else "decoder_hidden_states"
        s_hidden, t_hidden = getattr(s_out, hidden_key), getattr(t_out, hidden_key)
        c = labels.shape[1]
        positions = slice(-c - 1, -1) if not self.is_encoder_decoder else slice(None)  # the completion's predictors
        total = 0.0
        for i, j in enumerate(layer_map):
            s_h = F.layer_norm(s_hidden[i + 1][:, positions], s_hidden[i + 1].shape[-1:])  # shapes (B, C, H)
            t_h = F.layer_norm(t_hidden[j + 1][:, positions], t_hidden[j + 1].shape[-1:])
            total = total + reduce(hidden_state_mse_terms(s_h, t_h), "reference")
        return total / len(layer_map)

    def _layer_map(self) -> list[int]:
        a = self.distill_args
        if a.predistill_layer_map is not None:
            return list(a.predistill_layer_map)
        recorded = getattr(_base_model(self.model).config, "fdistill_teacher_layers", None)
        if not recorded:
            raise ValueError(
                "predistill_alpha_hidden > 0 needs to know which teacher layer each student layer matches: set "
                "predistill_layer_map, or make the student with fdistill.student.create_student_from_teacher."
            )
        return list(recorded["decoder"])

    # ------------------------------------------------------------------ logging

    @torch.no_grad()
    def _sample_metrics(self, student_side, teacher_side, mask, metrics) -> None:
        logits, labels = student_side
        valid = labels != -100
        if valid.any():
            metrics["student_entropy"] = token_entropy(logits.detach())[valid].mean()
        metrics["student_sample_length"] = mask.sum(-1).float().mean()
        if teacher_side is not None:
            metrics["teacher_nll_of_student_samples"] = -token_logprobs(teacher_side[0], labels).sum(-1).mean()

    def _store_metrics(self, metrics: dict[str, torch.Tensor], scale: dict[str, torch.Tensor], training: bool) -> None:
        """Keep step metrics for the next log. Loss terms are rescaled from the global to the micro-batch denominator."""
        store = self._metrics["train" if training else "eval"]
        side = {"loss_on_teacher_samples": "teacher", "loss_on_student_samples": "student"}
        for k, v in metrics.items():
            value = v.detach().float()
            if k.startswith("loss_"):
                value = value * scale.get(side.get(k, "reference"), 1.0)
            store[k].append(self.accelerator.gather(value.reshape(1)).mean().item())  # one scalar per process

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        split = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if split == "eval" else ""
        for k, values in self._metrics[split].items():
            if values:
                logs[prefix + k] = sum(values) / len(values)
        self._metrics[split].clear()
        if split == "train" and self.distill_args.on_nonfinite == "skip":
            logs["nonfinite_skipped"] = self._nonfinite_skipped  # cumulative count of dropped micro-batches
            if "loss" in logs and self._window_skipped:  # dropped micro-batches added 0: average over the others
                kept = self._window_micro - self._window_skipped
                logs["loss"] = logs["loss"] * self._window_micro / kept if kept else float("nan")
            self._window_micro = self._window_skipped = 0
            if "train_loss" in logs and self._nonfinite_skipped:  # the run's mean, likewise over kept micro-batches
                kept = self._train_micro - self._nonfinite_skipped
                logs["train_loss"] = logs["train_loss"] * self._train_micro / kept if kept else float("nan")
        super().log(logs, start_time)

    # ------------------------------------------------------------------ model card

    def create_model_card(self, model_name: str | None = None, **kwargs) -> None:
        """Write README.md in ``output_dir``: teacher, objective, data and final metrics (used by ``push_to_hub``)."""
        from fdistill.hub import save_model_card

        if self.is_world_process_zero():
            save_model_card(self, model_name=model_name, **kwargs)

    # ------------------------------------------------------------------ evaluation

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the training objective on the batch; with ``predict_with_generate`` and a
        ``compute_metrics`` (e.g. ``fdistill.text_metrics.compute_metrics_fn``) also the student's greedy
        replies as predictions and the references (else the teacher samples) as labels, -100-padded."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        if prediction_loss_only or self.compute_metrics is None or not getattr(self.args, "predict_with_generate", False):
            return loss.detach(), None, None
        greedy = sampling_config(self.model, self.processing_class, max_new_tokens=self.distill_args.max_new_tokens,
                                 do_sample=False)
        ids, mask = sample_completions(self.accelerator.unwrap_model(model), inputs["prompt_ids"], inputs["prompt_mask"], greedy)
        name = next((n for n in ("reference", "teacher") if f"{n}_ids" in inputs), None)
        if name is None:
            raise ValueError("compute_metrics needs references: give the eval dataset a reference column.")
        labels = inputs[f"{name}_ids"].masked_fill(~inputs[f"{name}_mask"], -100)
        return loss.detach(), ids.masked_fill(~mask, -100), labels


class FDistillTrainer(FDistillMixin, Seq2SeqTrainer):
    """`Seq2SeqTrainer` that distils ``teacher_model`` into ``model`` by f-DISTILL or a baseline.

    Objectives (``FDistillConfig.objective``): ``kl``, ``rkl``, ``js``, ``tvd`` (Wen et
    al. 2023, Eqs. 5–12), ``mle``, ``seqkd`` (Kim & Rush 2016), ``engine`` (Tu et al.
    2020) and ``predistill`` (Shleifer & Rush 2020) — one code path for all.

    Example:
        >>> args = FDistillConfig(output_dir="out", objective="js", max_new_tokens=32)  # doctest: +SKIP
        >>> trainer = FDistillTrainer(model=student, teacher_model=teacher, args=args,  # doctest: +SKIP
        ...                           train_dataset=ds, processing_class=tokenizer)
        >>> trainer.train()  # doctest: +SKIP
    """
