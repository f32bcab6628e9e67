"""FDistillTrainer: f-DISTILL training with offline teacher samples and online student samples.

The trainer orchestrates; the maths lives in :mod:`fdistill.divergences`, the pieces it runs in their own modules:
the online samples of a step in :mod:`fdistill.lm.rollouts`, the forwards and the teacher's top k in
:mod:`fdistill.lm.scoring`, what a checkpoint was trained with in :mod:`fdistill.lm.run_record`, and the checks and
the teacher before training in :mod:`fdistill.lm.trainer_setup`. Each optimizer step:

1. at the start of the step, the student draws one sample per prompt for every
   micro-batch of the step (eval mode, KV cache — static on CUDA, where transformers
   compiles the decode step — no gradient); so does the teacher with
   ``teacher_sampling="online"``. The parameters do not change inside a step, so this
   equals sampling inside each micro-batch, and it gives the exact token/sequence counts
   of the whole global batch before any loss is taken;
2. for each micro-batch, one student forward (with gradient) and one teacher forward
   (no gradient) score every completion set the objective needs — offline teacher
   samples and online student samples concatenated along the batch (stored top-k teacher
   log-probabilities replace the teacher forward with ``teacher_topk_columns``, a vLLM
   server's with ``teacher_server``: :mod:`fdistill.lm.served`);
3. one loss call — the registered objective's (:mod:`fdistill.lm.objectives`) on a typed
   :class:`~fdistill.lm.objectives.ScoredBatch`: logits, or with ``fused_divergence`` the
   LM-head inputs and heads — divided by the global count, so gradient accumulation and
   several processes give exactly the full-batch gradient.

References: Wen et al. 2023, "f-Divergence Minimization for Sequence-Level Knowledge
Distillation" (ACL, arXiv:2305.15718), §2.3 (offline teacher sampling,
pre-distillation) and §7; Shleifer & Rush 2020 (pre-distillation).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Seq2SeqTrainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from fdistill.divergences import IGNORE_INDEX, TeacherTopK, count_items
from fdistill.errors import InputError, NonFiniteError, see
from fdistill.kernels import output_head
from fdistill.lm import importance, rollouts
from fdistill.lm.checkpoints import (
    RUN_RECORD,
    claim_fresh_output_dir,
    damaged_checkpoint_fix,
    latest_checkpoint,
    resume_advice,
    verify_checkpoint,
)
from fdistill.lm.config import DistillArguments
from fdistill.lm.cross_batches import CrossCollator, CrossTokenizers, check_cross, check_teacher_samples, wants_cross
from fdistill.lm.data import DistillCollator
from fdistill.lm.loading import tokenizer_fingerprint
from fdistill.lm.logits_cache import check_caches
from fdistill.lm.objectives import COMPLETION_SETS, ScoredBatch, student_sample_metrics
from fdistill.lm.rollouts import PlannedStep, RepeatedSteps, RolloutGroups, Sampler, StepSamples
from fdistill.lm.run_record import CHECKPOINT_WRITE_FIX, commit_checkpoint, run_record
from fdistill.lm.run_record import record_changes as _record_changes
from fdistill.lm.sampling import sample_completions
from fdistill.lm.scoring import (
    Scored,
    SkipTally,
    check_heads,
    fused_heads,
    fused_wanted,
    nonfinite_problem,
    score_sets,
    scored_batch,
    served_topk,
    split_head,
    stored_topk,
)
from fdistill.lm.trainer_setup import (
    check_datasets,
    completion_columns,
    default_collator,
    load_teacher,
    named_datasets,
    saved_tokenizer,
    shard_frozen,
    vocab_size,
)
from fdistill.storage import owned_folder, read_json, writing
from fdistill.torch_utils import base_model as _base_model

logger = logging.getLogger(__name__)


class FDistillMixin:
    """Gives a `transformers.Trainer` subclass the f-DISTILL loss, online student sampling and a frozen teacher.

    Put it first in the bases: ``class MyTrainer(FDistillMixin, Trainer)``. The
    distillation settings come from ``args`` when it is a :class:`DistillArguments`
    (as :class:`FDistillConfig` is), else from ``distill_args=``.

    Arguments (besides the Trainer's):
        teacher_model: a model, or a Hub name / local path loaded with the student's
            architecture class. Kept frozen, in eval mode, on the student's device. None
            with ``teacher_server`` (a teacher served by vLLM) or ``teacher_topk_columns``.
        teacher_tokenizer: the teacher's tokenizer; by default loaded from ``teacher_model`` when that is a name or
            path. One whose vocabulary differs from the student's (``processing_class``) turns on distillation
            across tokenizers (:mod:`fdistill.lm.cross_batches`).
        distill_args: the settings when ``args`` is not a ``DistillArguments``.

    With one tokenizer, LM heads padded past it to different sizes (models of one family) are compared on the
    tokenizer's tokens only (:func:`fdistill.lm.loading.shared_vocab_size`). Across tokenizers each model scores
    every completion in its own tokenization and the losses compare them on byte-aligned chunks
    (:mod:`fdistill.lm.cross_divergences`); what is not supported there is refused before any work
    (:func:`fdistill.lm.cross_batches.check_cross`).
    """

    def __init__(
        self,
        *args,
        teacher_model: PreTrainedModel | str | None = None,
        teacher_tokenizer=None,
        distill_args=None,
        **kwargs,
    ):
        train_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        settings = distill_args if distill_args is not None else train_args
        if not isinstance(settings, DistillArguments):
            raise InputError(
                "no distillation settings: pass args=FDistillConfig(...) or distill_args=DistillArguments(...)."
            )
        self.distill_args: DistillArguments = settings
        model = kwargs.get("model", args[0] if args else None)
        if model is None:
            raise InputError("pass the student as model=.")
        tokenizer = kwargs.get("processing_class")
        if tokenizer is None:
            raise InputError("pass the student's tokenizer as processing_class= (it builds the batches).")
        is_enc_dec = bool(_base_model(model).config.is_encoder_decoder)
        # Across tokenizers (fdistill.lm.cross_batches): both tokenizers, or None on the one-tokenizer path
        if teacher_tokenizer is None and isinstance(teacher_model, str):
            teacher_tokenizer = saved_tokenizer(teacher_model)
        self.cross: CrossTokenizers | None = None
        if wants_cross(settings, tokenizer, teacher_tokenizer):
            check_cross(settings, is_encoder_decoder=is_enc_dec, data_collator=kwargs.get("data_collator"))
            self.cross = CrossTokenizers(tokenizer, teacher_tokenizer or tokenizer)
            for split, dataset in named_datasets(kwargs.get("train_dataset"), kwargs.get("eval_dataset")):
                check_teacher_samples(dataset, settings.teacher_sample_column, self.cross.teacher, tokenizer, split)
        if kwargs.get("data_collator") is None:
            kwargs["data_collator"] = default_collator(tokenizer, settings, is_enc_dec, model)
            if self.cross is not None:
                kwargs["data_collator"] = self.cross.collator(kwargs["data_collator"], settings, None)
        check_datasets(settings, kwargs.get("train_dataset"), kwargs.get("eval_dataset"), kwargs["data_collator"])
        # a teacher logits cache: made with the student's tokenizer (fdistill.lm.logits_cache); its teacher recorded
        self._cache = None
        if settings.teacher_source.kind == "columns":
            self._cache = check_caches(kwargs.get("train_dataset"), kwargs.get("eval_dataset"), tokenizer)
        # batch sizes past any memory: refused now (across tokenizers nothing is fused: the logits always count)
        settings.check_batch_memory(vocab_size(model), train_args, may_fuse=self.cross is None)
        if getattr(train_args, "push_to_hub", False):  # before the Trainer creates the Hub repo: one InputError
            from fdistill.lm.hub import check_hub_push, hub_repo_id

            check_hub_push(hub_repo_id(train_args), token=train_args.hub_token)
        super().__init__(*args, **kwargs)
        self.is_encoder_decoder = is_enc_dec
        # Vocabulary entries both models are compared on when their LM heads differ by padding (None: all rows).
        self.shared_vocab_size: int | None = None
        source = settings.teacher_source  # where the teacher's numbers come from, resolved once by the settings
        self.teacher = self._prepare_teacher(teacher_model, teacher_tokenizer) if source.kind == "model" else None
        self.teacher_server = self._connect_teacher_server(teacher_model) if source.kind == "server" else None
        # Losses are divided by the global item count of the optimizer step (see StepSamples.counts),
        # so the Trainer must not divide again by the accumulation steps.
        self.loss_is_scaled_for_ga = True
        self.objective = settings.objective_spec  # the registered Objective (fdistill.lm.objectives)
        self._step = StepSamples()  # the online samples of the current optimizer step
        # steps_per_generation > 1 / num_iterations > 1 / rollout_overlap: the generation group's steps, taken
        # ahead (fdistill.lm.rollouts)
        k, mu = settings.steps_per_generation, settings.num_iterations
        reuse = k > 1 or mu > 1 or settings.rollout_overlap
        self._groups = RolloutGroups(k, mu) if reuse else None
        self._planned: PlannedStep | None = None
        self._slot: tuple[PlannedStep, int] | None = None  # num_iterations: the micro-batch being scored, in its step
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.student_generation_config = self._student_generation_config()
        self.teacher_generation_config = rollouts.teacher_generation_config(
            self.teacher,
            self.processing_class if self.cross is None else self.cross.teacher,
            settings,
            cache=self.student_generation_config.cache_implementation,
            vocab_size=self.shared_vocab_size,
        )
        self._heads_checked = False
        self._split_heads: dict[str, bool] = {}  # per model: whether score_sets may apply its head per set
        self._record: dict | None = None  # see _run_record
        self._skips = SkipTally()  # on_nonfinite='skip': what was dropped, for the logs
        # A vLLM server drawing the student's samples (student_server; fdistill.lm.served.student), made last
        self.student_server = self._connect_student_server() if settings.student_server is not None else None

    # ------------------------------------------------------------------ setup and validation

    def _build_accelerator_args(self, **kwargs) -> dict[str, Any]:
        """The Trainer's accelerator arguments, with DDP's unused-parameter search off when the fused divergence
        runs and ``ddp_find_unused_parameters`` is unset.

        The fused path applies the student's LM head outside the model's forward (the head only records its inputs
        there). DDP's search, the Trainer's default for a transformers model, then marks the head unused when the
        forward ends, and the backward that does use it stops with "marked as ready twice". Every parameter of a
        distilled student takes part in the loss, so the search has nothing to find; set
        ``ddp_find_unused_parameters=False`` (or ``fused_divergence=False``) if yours says otherwise."""
        args = super()._build_accelerator_args(**kwargs)
        settings = self.distill_args
        if self.cross is not None or not fused_wanted(settings.objective_spec, settings, self.args.device, False):
            return args
        if self.args.ddp_find_unused_parameters and self.args.world_size > 1:
            raise InputError(
                "fused_divergence with ddp_find_unused_parameters=True under DDP: the fused path applies the LM head "
                "outside the model's forward, which DDP's unused-parameter search marks unused, and the backward "
                "fails. Set ddp_find_unused_parameters=False (or leave it unset), or fused_divergence=False."
            )
        if self.args.ddp_find_unused_parameters is None:
            for handler in args.get("kwargs_handlers", []):
                if hasattr(handler, "find_unused_parameters"):
                    handler.find_unused_parameters = False
        return args

    def _prepare_teacher(self, teacher: PreTrainedModel | str | None, teacher_tokenizer=None) -> nn.Module:
        """The teacher (:func:`fdistill.lm.trainer_setup.load_teacher`), on the student's device or sharded as the
        student is; heads padded to different sizes set ``shared_vocab_size`` (and the collator's id limit)."""
        teacher, dtype, shared = load_teacher(
            teacher, teacher_tokenizer, self.model, self.distill_args, self.processing_class, self.cross is not None
        )
        if self.cross is not None and isinstance(self.data_collator, CrossCollator):  # its ids past its head refused
            self.data_collator.teacher.vocab_size = vocab_size(teacher)
        elif shared < max(vocab_size(self.model), vocab_size(teacher)):
            self.shared_vocab_size = shared
            if isinstance(self.data_collator, DistillCollator):  # ids past the shared vocabulary are refused by row
                self.data_collator.vocab_size = min(self.data_collator.vocab_size or shared, shared)
        if self.accelerator.is_fsdp2:
            teacher = shard_frozen(self.accelerator, teacher.to(dtype=dtype))
        elif self.is_deepspeed_enabled or self.is_fsdp_enabled:
            teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        else:
            teacher = teacher.to(device=self.args.device, dtype=dtype)
        return teacher

    def _connect_teacher_server(self, teacher_model):
        """The client of ``teacher_server`` (:mod:`fdistill.lm.served`), its tokenizer checked against the student's."""
        from fdistill.lm.served import connect

        if teacher_model is not None:
            raise InputError("teacher_server serves the teacher: pass no teacher_model (or unset teacher_server).")
        if self.is_encoder_decoder:
            raise InputError(
                "teacher_server scores decoder-only teachers (a vLLM prompt is one token sequence); distil an "
                "encoder–decoder with teacher_model= instead."
            )
        across = self.cross.teacher if self.cross is not None else None  # its token ids sent, its tokenizer checked
        return connect(self.distill_args, self.processing_class, vocab_size(self.model), teacher_tokenizer=across)

    def _connect_student_server(self):
        """The client of ``student_server`` (:class:`fdistill.lm.served.student.StudentServer`); with ``"auto"`` a
        vLLM server started here from the student (:func:`fdistill.lm.served.launch.launch_student`), killed by PID
        when training ends or anything fails. Synced every ``student_sync_every`` optimizer steps (a callback)."""
        from fdistill.lm.served.launch import launch_student
        from fdistill.lm.served.student import StudentServer, check_servable, default_weights_root

        a, model = self.distill_args, self.accelerator.unwrap_model(self.model)
        if self.args.world_size > 1:
            raise InputError("student_server runs with one training process: unset it, or train on one process.")
        check_servable(model, self.student_generation_config)
        root, launched = default_weights_root(self.args.output_dir), None
        try:
            url = a.student_server
            if url == "auto":
                launched = launch_student(
                    model,
                    self.processing_class,
                    os.path.join(root, "served"),
                    python=a.student_server_python,
                    max_model_len=min(a.max_prompt_length + a.max_new_tokens, _positions(model)),
                    startup_timeout=a.student_server_timeout,
                )
                url = launched.url
            server = StudentServer(
                url,
                model,
                self.processing_class,
                self.student_generation_config,
                seed=self.args.seed,
                weights_root=root,
                launched=launched,
                api_key=a.student_server_api_key,
                timeout=a.student_server_timeout,
            )
        except BaseException:
            if launched is not None:
                launched.kill()
            shutil.rmtree(root, ignore_errors=True)
            raise
        self.add_callback(_StudentServerSync(self))
        logger.info("student samples drawn by the vLLM server %s (%s)", server.url, server.model.name)
        return server

    def _student_generation_config(self):
        """How the student draws its online samples (:func:`fdistill.lm.rollouts.student_generation_config`)."""
        return rollouts.student_generation_config(
            self.model, self.processing_class, self.distill_args, self.args.device, self.shared_vocab_size
        )

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            a = self.distill_args
            self._signature_columns = list({a.prompt_column, a.reference_column, *completion_columns(a).values()})

    # ------------------------------------------------------------------ checkpoints: what they were trained with

    def _run_record(self) -> dict:
        """What a checkpoint was trained with (:func:`fdistill.lm.run_record.run_record`). Computed once per trainer."""
        if self._record is None:
            self._record = run_record(
                self.distill_args, self.teacher, self.model, self.processing_class, self.teacher_server, self._cache
            )
            if self.cross is not None:  # the teacher's own tokenizer, across tokenizers
                self._record["teacher_tokenizer"] = tokenizer_fingerprint(self.cross.teacher)
        return self._record

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, then the run record and the manifest of every file, committed last: a checkpoint
        without its manifest (cut off by a crash or a full disk) is never resumed from (:mod:`fdistill.storage`)."""
        if self._groups is not None:  # samples drawn in the background are never saved: drawn again after it
            self._groups.discard_pending()
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):  # a cut-off (or abandoned) save of this step
            shutil.rmtree(folder)
        self.accelerator.wait_for_everyone()
        # Older checkpoints are rotated out only once this one is committed (else a crash could leave none whole);
        # the limit is lifted for the Trainer's own save and restored at once.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            with writing(f"checkpoint {folder}", CHECKPOINT_WRITE_FIX):
                super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every process's files (FSDP shards, RNG states) are written
        if self.args.should_save:
            commit_checkpoint(folder, self._run_record())
            self._push_checkpoint(folder)  # hard-linked into its staging folder before rotation may delete it
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    # ------------------------------------------------------------------ checkpoints: pushes to the Hub

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """The Trainer's push from inside its save, replaced by :meth:`_push_checkpoint`, once the checkpoint is
        committed (:mod:`fdistill.lm.hub_checkpoints` says why)."""

    def _push_checkpoint(self, folder: str) -> None:
        """Queue the committed checkpoint ``folder`` and the model card so far for upload (``push_to_hub`` with a
        ``hub_strategy`` other than "end"); the upload runs in the background (:class:`CheckpointPusher`)."""
        from transformers.trainer_utils import HubStrategy

        if not self.args.push_to_hub or self.args.hub_strategy == HubStrategy.END or not self.is_world_process_zero():
            return
        from fdistill.lm.hub import save_model_card
        from fdistill.lm.hub_checkpoints import CheckpointPusher

        if getattr(self, "_pusher", None) is None:
            self._pusher = CheckpointPusher(
                self.hub_model_id,
                self.args.output_dir,
                self.args.hub_strategy.value,
                token=self.args.hub_token,
                revision=self.args.hub_revision,
                keep_every=self.args.hub_always_push,
            )
        self._pusher.submit(folder, self.state.global_step, save_model_card(self, write=False))

    def _finish_current_push(self) -> None:
        """Wait for the checkpoint pushes (each retried, then given up); their failures are logged once, here, and
        kept in ``hub_push_report`` (:class:`fdistill.lm.hub_checkpoints.PushReport`)."""
        super()._finish_current_push()
        if getattr(self, "_pusher", None) is not None:
            self.hub_push_report = self._pusher.finish()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`; a failed write (full disk, file-size limit) is one `WriteError` naming the folder."""
        if _internal_call:  # inside _save_checkpoint, which names the checkpoint
            return super().save_model(output_dir, _internal_call)
        folder = output_dir or self.args.output_dir
        with writing(
            f"the model to {folder}",
            "free space, then rerun with --resume-from-checkpoint latest (a finished run resumes at once).",
        ):
            return super().save_model(output_dir, _internal_call)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """`Trainer.train`, holding ``output_dir`` for the run (:func:`fdistill.storage.owned_folder`).

        ``resume_from_checkpoint=True`` takes the newest *complete* checkpoint (:func:`latest_checkpoint`), ``"hub"``
        the Hub's checkpoint of ``hub_model_id``, downloaded into ``output_dir`` and verified first
        (:func:`fdistill.lm.hub_checkpoints.download_checkpoint`); the
        checkpoint's files are checked against its manifest and its run record against this run before any work: a
        checkpoint trained with other distillation settings (objective, mixture, temperatures, sampling, data
        columns, ...), another teacher or another tokenizer, or with a file changed or cut short since it was
        written, is refused with one `InputError` naming it. A fresh run (no resume) into an ``output_dir`` that
        holds another run's checkpoints or model is refused unless ``overwrite_output_dir``.
        """
        try:
            with owned_folder(
                self.args.output_dir,
                "fdistill train",
                state=self.accelerator,
                claim=lambda: self._claim_output_dir(resume_from_checkpoint),
            ) as folder:
                try:
                    return super().train(resume_from_checkpoint=folder, trial=trial, **kwargs)
                finally:
                    self._end_rollouts()  # a background draw is cancelled (or waited for) before the server closes
        finally:
            self.close_student_server()

    def _claim_output_dir(self, resume: str | bool | None) -> str | None:
        """The checkpoint to resume from, verified (None: a fresh run, the output folder checked to be free)."""
        out = self.args.output_dir
        if resume is None or resume is False:
            claim_fresh_output_dir(out, overwrite=getattr(self.distill_args, "overwrite_output_dir", False))
            return None
        if resume == "hub":
            from fdistill.lm.hub import hub_repo_id
            from fdistill.lm.hub_checkpoints import download_checkpoint

            args = self.args
            folder = download_checkpoint(hub_repo_id(args), out, token=args.hub_token, revision=args.hub_revision)
        else:
            folder = latest_checkpoint(out, required=True) if resume is True else str(resume)
        verify_checkpoint(folder)
        if os.path.isfile(os.path.join(folder, RUN_RECORD)):
            changes = _record_changes(
                read_json(os.path.join(folder, RUN_RECORD), damaged_checkpoint_fix(folder)), self._run_record()
            )
            if changes:
                raise InputError(
                    f"checkpoint {folder!r} was trained differently: {'; '.join(changes)}. Resume with the "
                    "settings and models it was trained with, or train into a new output_dir."
                    + see("guides/troubleshooting", "resume")
                )
        return folder

    # ------------------------------------------------------------------ online student samples

    def generate_student_samples(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample one completion per prompt from the student (eval mode, KV cache, no gradient): ``(ids, mask)``."""
        model = self.accelerator.unwrap_model(self.model)
        step = self.state.global_step + 1
        return rollouts.sample_locally(model, prompt_ids, prompt_mask, self.student_generation_config, "student", step)

    def generate_teacher_samples(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Online teacher samples (``teacher_sampling="online"``): one ancestral sample per prompt, ``(ids, mask)``."""
        step = self.state.global_step + 1
        return rollouts.sample_locally(
            self.teacher, prompt_ids, prompt_mask, self.teacher_generation_config, "teacher", step
        )

    def served_student_samples(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
        """Student samples drawn by ``student_server``: ``(ids, mask, token_logprobs)``
        (:meth:`fdistill.lm.served.student.StudentServer.sample`). The first sync comes before the first draw; in
        evaluation the server first gets the current weights."""
        server, training = self.student_server, self.model.training
        self._ready_student_server()
        step = self.state.global_step + 1
        with self._student_server_failure(step):
            return server.sample(prompt_ids, prompt_mask, step=step, stream="train" if training else "eval")

    def _ready_student_server(self) -> None:
        """Sync ``student_server`` before it draws, where it holds no weights of this run yet (the first draw, and
        the first after a resume) or, in evaluation, older ones."""
        server = self.student_server
        if server.synced_step < 0 or (not self.model.training and server.synced_step != self.state.global_step):
            self.sync_student_server(self.state.global_step + 1)

    def sync_student_server(self, step: int) -> None:
        """The student server's weights := the student's (:meth:`~fdistill.lm.served.student.StudentServer.sync`);
        a failure names training ``step`` and the checkpoint to resume from."""
        with self._student_server_failure(step):
            self.student_server.sync(self.accelerator.unwrap_model(self.model), self.state.global_step)

    @contextlib.contextmanager
    def _student_server_failure(self, step: int):
        """A student server's failure as one error naming training ``step`` and the last whole checkpoint."""
        from fdistill.lm.served.student import StudentServerError

        try:
            yield
        except StudentServerError as error:
            restart = "the student server" if self.student_server.launched is None else "training"
            advice = resume_advice(self.args.output_dir, restart)
            raise StudentServerError(f"training step {step}: {error}; {advice}.") from error

    def close_student_server(self) -> None:
        """Close ``student_server`` (a server started for this run is killed by PID); later samples are drawn in
        process. Called when train() ends, however it ends."""
        if self.student_server is not None:
            self.student_server.close()

    def _samplers(self) -> dict[str, Sampler]:
        """The rollout backends of this run, by completion set (:mod:`fdistill.lm.rollouts`): the teacher's when it
        samples online, the student's when the objective scores its samples (drawn by ``student_server`` while it
        is open); teacher first."""
        samplers = {}
        if self.teacher_generation_config is not None:
            samplers["teacher"] = self.generate_teacher_samples
        if self.distill_args.needs_student_samples:
            served = self.student_server is not None and not self.student_server.closed
            samplers["student"] = self.served_student_samples if served else self.generate_student_samples
        if self.cross is not None:  # each draws from its own model's prompts; the samples in both tokenizations
            samplers = {name: self.cross.sampler(draw, name) for name, draw in samplers.items()}
        return samplers

    def _get_train_sampler(self, train_dataset=None):
        """The Trainer's sampler; with ``num_iterations = μ > 1``, :class:`~fdistill.lm.rollouts.RepeatedSteps`: each
        optimizer step's examples μ times in a row (shuffled per epoch from ``data_seed``, else ``seed``, unless
        ``train_sampling_strategy="sequential"``), so that the steps after a step train on its samples again."""
        mu = self.distill_args.num_iterations
        if mu == 1:
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        strategy = self.args.train_sampling_strategy
        if strategy not in ("random", "sequential"):
            raise InputError(
                f"num_iterations={mu} repeats each step's examples in its own sampler, which cannot group them by "
                f"length: use train_sampling_strategy='random' or 'sequential' (it is {strategy!r}), or "
                "num_iterations=1."
            )
        try:
            size = len(dataset)
        except TypeError:
            raise InputError(
                f"num_iterations={mu} repeats each step's examples, which needs a training set of known length (a "
                "datasets.Dataset, not an IterableDataset): load it with streaming=False, or use num_iterations=1."
            ) from None
        block = self.args.train_batch_size * self.args.gradient_accumulation_steps * max(1, self.args.world_size)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        sampler = RepeatedSteps(size, block, mu, shuffle=strategy == "random", seed=seed)
        if sampler.left_out:
            logger.warning(
                "num_iterations=%d: %d of the %d training examples make no whole step of %d and are left out of each "
                "epoch (a new permutation every epoch); a training set of a multiple of %d examples uses them all.",
                mu,
                sampler.left_out,
                size,
                block,
                block,
            )
        return sampler

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Collect the optimizer step's micro-batches; their online samples are drawn at the step's first loss call.

        Sampling waits for the first ``compute_loss`` of the step because, on resume, the
        Trainer restores the RNG state only after this method returns: sampling here
        would make a resumed run draw different student samples than an uninterrupted one.
        With ``steps_per_generation = k > 1`` the first step of a group takes the next steps' micro-batches too
        (:class:`~fdistill.lm.rollouts.RolloutGroups`), in the chunks the Trainer's loop takes.
        """
        if self._groups is None:
            batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        else:
            pull = super().get_batch_samples
            self._planned = self._groups.next_step(
                epoch_iterator,
                num_batches,
                lambda n: pull(epoch_iterator, n, device),
                self.state.global_step,
                self.args.gradient_accumulation_steps,
                self.state.max_steps,
                submit=self._submit_group if self.distill_args.rollout_overlap else None,
            )
            batches, num_items = self._planned.batches, self._planned.num_items
        self._step.start(batches)
        return batches, num_items

    def _student_policy_step(self) -> int:
        """The global step whose weights draw student samples now: the server's last sync, or this process's step."""
        server = getattr(self, "student_server", None)
        if server is None or server.closed:
            return self.state.global_step
        self._ready_student_server()  # the first sync comes before the policy is read: fresh samples stay weight 1
        return server.synced_step

    def _attach_online_samples(self, inputs: dict, training: bool) -> None:
        """Put the micro-batch's online samples into ``inputs`` (``student_ids``/``_mask``, ``teacher_ids``/``_mask``).

        In training they come from the step's draw (:func:`fdistill.lm.rollouts.draw_step`), or from the generation
        group's (:meth:`_draw_group`); in evaluation (or a call outside the training loop) they are drawn here.
        """
        samplers, device = self._samplers(), self.args.device
        step, self._slot = None, None
        if training and self._step.pending:
            reduction, step = self.distill_args.loss_reduction, self.state.global_step
            if self._groups is None:
                policy = {"student": self._student_policy_step()}
                drawn = self._step.next(
                    lambda b: rollouts.draw_step(b, samplers, device, reduction, self.accelerator, policy)
                )
            else:
                drawn = self._step.next(lambda b: self._groups.samples(self._planned, self._draw_group))
                if self._groups.iterations > 1:
                    self._slot = (self._planned, self._step.index - 1)
        elif rollouts.missing(inputs, samplers):
            drawn = rollouts.online_samples(inputs, samplers, device)
        else:
            drawn = {}
        rollouts.attach(inputs, drawn, step)

    def _submit_group(self, group: list[PlannedStep]):
        """``rollout_overlap``: start drawing the next group's student samples on the student server (all its
        micro-batches in one request batch); the future gives the samples with the policy that drew them."""
        batches = [b for planned in group for b in planned.batches]
        ids, mask = rollouts.cat_prompts(batches, self.processing_class.pad_token_id, not self.is_encoder_decoder)
        device, policy_step = self.args.device, self._student_policy_step()
        first = self.state.global_step + len(self._groups.group) + 1  # the training step the samples are for
        future = self.student_server.submit(ids.to(device), mask.to(device), step=first)
        return rollouts.Submitted(future, policy_step, first)

    def _draw_group(self, group: list[PlannedStep], submitted: rollouts.Submitted | None = None) -> None:
        """The samples of every step of a generation group in one call per sampler (the student's from the
        background draw when one was submitted); for the steps that will score them stale, the drawing student's
        log-probabilities of its tokens, now, before its weights change."""
        batches = [b for planned in group for b in planned.batches]
        pad = self.processing_class.pad_token_id
        samplers, policy = self._samplers(), {"student": self._student_policy_step()}
        if submitted is not None:
            drawn_ahead = submitted.sampler()
            samplers = {
                **samplers,
                "student": drawn_ahead if self.cross is None else self.cross.sampler(drawn_ahead, "student"),
            }
            policy["student"] = submitted.policy_step
        drawn = rollouts.draw_together(batches, samplers, self.args.device, pad, not self.is_encoder_decoder, policy)
        start = 0
        for j, planned in enumerate(group):
            samples = drawn[start : start + len(planned.batches)]
            start += len(planned.batches)
            if j > 0 or submitted is not None:  # scored after the drawing policy's step: stale
                samples = [self._with_policy_logprobs(b, d) for b, d in zip(planned.batches, samples)]
            planned.samples = samples
            planned.counts = rollouts.step_counts(
                planned.batches, samples, self.args.device, self.distill_args.loss_reduction, self.accelerator
            )

    @torch.no_grad()
    def _with_policy_logprobs(self, batch: dict, drawn: rollouts.Drawn) -> rollouts.Drawn:
        """``drawn`` with the student's samples carrying the drawing student's log-probabilities of their tokens: a
        no-grad forward in eval mode (the mode ``generate`` samples in) when the sampler returned none."""
        sample = drawn.get("student")
        if sample is None or sample.logprobs is not None:
            return drawn
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            device = self.args.device
            inputs = {
                "prompt_ids": batch["prompt_ids"].to(device),
                "prompt_mask": batch["prompt_mask"].to(device),
                "student_ids": sample.ids,
                "student_mask": sample.mask,
            }
            scored, _ = score_sets(
                model,
                inputs,
                ["student"],
                pad_token_id=self.processing_class.pad_token_id,
                is_encoder_decoder=self.is_encoder_decoder,
                shared_vocab_size=self.shared_vocab_size,
            )
        finally:
            model.train(was_training)
        values, labels = scored["student"]
        logprobs = importance.sampling_logprobs(values, labels, self.distill_args.student_sampling_temperature)
        return {**drawn, "student": sample._replace(logprobs=logprobs)}

    def _importance_weights(self, inputs: dict, student: dict[str, Scored], training: bool) -> torch.Tensor | None:
        """The truncated prefix importance weights of stale student samples (:mod:`fdistill.lm.importance`), None
        for fresh ones; logs ``rollout/ess``, ``rollout/clipped_fraction`` and ``rollout/staleness`` when reusing."""
        old, weights = inputs.get("student_policy_logprobs"), None
        if old is not None:
            a = self.distill_args
            weights, stats = importance.stale_sample_weights(
                *student["student"], old, temperature=a.student_sampling_temperature, cap=a.importance_weight_cap
            )
            logged = (stats.ess, stats.clipped_fraction, float(inputs["student_staleness"]))
        elif training and self._groups is not None:
            logged = (1.0, 0.0, 0.0)  # fresh samples: every weight 1
        else:
            return None
        names = ("rollout/ess", "rollout/clipped_fraction", "rollout/staleness")
        self._store_metrics({n: torch.tensor(v, device=self.args.device) for n, v in zip(names, logged)}, {}, training)
        return weights

    def _end_rollouts(self) -> None:
        """Drop the queued samples and cancel a background draw at the end of train() (normal or not): they are
        never saved."""
        if self._groups is not None:
            self._groups.clear()
        self._planned = None

    # ------------------------------------------------------------------ the loss

    def _count(self, name: str, inputs: dict[str, torch.Tensor], training: bool) -> torch.Tensor:
        """Denominator for one side: global count of the optimizer step in training, the local one otherwise."""
        if training and self._step.counts is not None and name in self._step.counts:
            # DDP averages gradients over processes; a global denominator needs the loss scaled back up.
            return self._step.counts[name].clamp_min(1) / self.accelerator.num_processes
        return count_items(inputs[f"{name}_mask"], self.distill_args.loss_reduction).clamp_min(1).float()

    def _use_fused(self, model: nn.Module, inputs: dict[str, torch.Tensor], name: str) -> bool:
        """Whether this objective runs through the fused divergence; checks both heads once, on one example."""
        sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled  # sharded LM heads are not whole on any process
        if not fused_wanted(self.objective, self.distill_args, self.args.device, sharded):
            return False
        if not self._heads_checked:
            pad = self.processing_class.pad_token_id
            check_heads(model, self.teacher, inputs, name, pad, self.is_encoder_decoder)
            self._heads_checked = True
        return True

    def _split_head(self, model: nn.Module, role: str, inputs: dict[str, torch.Tensor], name: str):
        """The LM head with which :func:`~fdistill.lm.scoring.score_sets` computes each set's logits on its own
        (checked once per ``role``, on one example), or None: sharded heads (FSDP, DeepSpeed), models wrapped for
        distributed training (DDP expects each parameter used inside its forward, once per backward) and heads that
        do not rebuild the model's own logits keep the model's joined logits."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or hasattr(model, "module"):
            return None
        if role not in self._split_heads:
            pad = self.processing_class.pad_token_id
            self._split_heads[role] = split_head(model, inputs, name, pad, self.is_encoder_decoder) is not None
        return output_head(model) if self._split_heads[role] else None

    def score_batch(self, model: nn.Module, inputs: dict[str, torch.Tensor], training: bool) -> ScoredBatch:
        """The forwards of one micro-batch: every completion set the objective scores, by the student (with
        gradient) and the teacher (without; or its stored top-k log-probabilities), as one :class:`ScoredBatch`
        (:mod:`fdistill.lm.scoring`)."""
        a, objective = self.distill_args, self.objective
        names = [n for n in COMPLETION_SETS if n in objective.scores]
        hidden = objective.wants_hidden_states(a)
        fused = self.cross is None and self._use_fused(model, inputs, names[0])
        how = dict(
            pad_token_id=self.processing_class.pad_token_id,
            is_encoder_decoder=self.is_encoder_decoder,
            shared_vocab_size=self.shared_vocab_size,
            hidden=hidden,
            fused=fused,
        )
        head = None if fused or hidden else self._split_head(model, "student", inputs, names[0])
        student, s_out = score_sets(model, inputs, names, **how, head=head)
        teacher, t_out = self._kept_teacher(), None
        if teacher is None:  # (num_iterations keeps them for the steps that train on the same samples again)
            teacher, t_out = self._score_teacher(inputs, names, student, how)
        self._keep_for_next_passes(teacher, student)
        counts = {n: self._count(n, inputs, training) for n in names}
        batch = scored_batch(
            student,
            teacher,
            counts,
            reduction=a.loss_reduction,
            heads=fused_heads(model, self.teacher, self.shared_vocab_size) if fused else None,
            outputs=(s_out, t_out),
            student_config=_base_model(model).config,
            is_encoder_decoder=self.is_encoder_decoder,
        )
        if self.cross is not None and teacher:
            self.cross.annotate(batch, {n: scored.labels for n, scored in teacher.items()})
        if "student" in batch.sets:
            batch.sets["student"].weights = self._importance_weights(inputs, student, training)
        return batch

    def _score_teacher(
        self, inputs: dict[str, torch.Tensor], names: list[str], student: dict[str, Scored], how: dict
    ) -> tuple[dict[str, Scored], Any]:
        """The teacher's numbers on the completion sets ``names`` (no gradient) and its model outputs (None when
        none ran): its forward — on its own tokens across tokenizers — or its top k, stored or served."""
        a = self.distill_args
        if self.teacher is not None and self.cross is not None:  # its own tokens, after its own prompts
            with torch.no_grad():
                view = self.cross.teacher_view(inputs, names)
                return score_sets(self.teacher, view, names, **{**how, **self.cross.teacher_scoring})
        if self.teacher is not None:
            head = (
                None if how["fused"] or how["hidden"] else self._split_head(self.teacher, "teacher", inputs, names[0])
            )
            with torch.no_grad():
                return score_sets(self.teacher, inputs, names, **how, head=head)
        if a.teacher_source.is_topk and self.cross is not None:  # the served teacher's top k of its own tokens
            return self.cross.served(self.score_topk(self.cross.teacher_view(inputs, names), names), inputs), None
        if a.teacher_source.is_topk:  # its top k stand in for its forward
            return {n: Scored(top, student[n].labels) for n, top in self.score_topk(inputs, names).items()}, None
        return {}, None

    def _kept_teacher(self) -> dict[str, Scored] | None:
        """``num_iterations``: the teacher's numbers on this micro-batch, kept by the step that drew its samples;
        None on the first pass (and outside training)."""
        if self._slot is None:
            return None
        planned, index = self._slot
        return planned.teacher.get(index)

    def _keep_for_next_passes(self, teacher: dict[str, Scored], student: dict[str, Scored]) -> None:
        """``num_iterations``, first pass over a micro-batch: keep the teacher's numbers (no gradient; it is
        frozen) for the passes after it; and, for fresh student samples, their log-probabilities under the student
        that drew them — this forward's, detached, as the weights' denominator (the loss forward is the drawing
        policy here: no optimizer step since the draw; it saves the separate forward stale groups take)."""
        if self._slot is None:
            return
        planned, index = self._slot
        planned.teacher.setdefault(index, teacher)
        drawn = planned.samples[index]
        sample = drawn.get("student")
        if sample is not None and sample.logprobs is None and "student" in student:
            temperature = self.distill_args.student_sampling_temperature
            drawn["student"] = sample._replace(logprobs=importance.sampling_logprobs(*student["student"], temperature))

    def score_topk(self, inputs: dict[str, torch.Tensor], names: list[str]) -> dict[str, TeacherTopK]:
        """The teacher's top-k log-probabilities at every scored position of the completion sets ``names``.

        Offline teacher samples carry them (``fdistill sample --topk-logprobs K``); no other set does, so any other
        is refused. A teacher that scores completions during training (e.g. a served one) overrides this to give
        a :class:`~fdistill.divergences.TeacherTopK` ``(B, C, K)`` for any set, aligned with its labels.
        With ``teacher_server`` the server scores every set (:meth:`served_teacher_topk`).
        """
        if self.teacher_server is not None:
            return self.served_teacher_topk(inputs, names)
        return stored_topk(inputs, names)

    def teacher_topk(self, inputs: dict[str, torch.Tensor], names: list[str]) -> dict[str, TeacherTopK]:
        """Deprecated name of :meth:`score_topk` (FutureWarning)."""
        warnings.warn(
            "FDistillMixin.teacher_topk is deprecated and will be removed in a future version of fdistill; use "
            "score_topk instead.",
            FutureWarning,
            stacklevel=2,
        )
        return self.score_topk(inputs, names)

    def served_teacher_topk(self, inputs: dict[str, torch.Tensor], names: list[str]) -> dict[str, TeacherTopK]:
        """The served teacher's top ``teacher_server_topk`` (and the actual tokens' log-probabilities) on the sets
        ``names``, in one round of requests. A server that stays away stops training here, before this step
        changes anything: the error names the step and the checkpoint to resume from."""
        k = self.distill_args.teacher_source.topk
        step = self.state.global_step + 1
        return served_topk(self.teacher_server, inputs, names, k, self.args.device, self.args.output_dir, step)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The registered objective (:mod:`fdistill.lm.objectives`) on one micro-batch; see the module docstring."""
        training = model.training
        self._attach_online_samples(inputs, training)
        if self.teacher is not None and self.teacher.training:
            self.teacher.eval()  # the Trainer only knows the student; never let the teacher train
        batch = self.score_batch(model, inputs, training)
        out = self.objective.loss(batch, self.distill_args)
        self._skips.count(training)
        problem = nonfinite_problem(batch, out.loss)
        if problem is not None:
            out.loss = self._nonfinite(problem, model, training)
        if problem is None or not training:
            metrics = {**out.metrics, **student_sample_metrics(batch, out, inputs.get("student_mask"))}
            local = {n: self._count(n, inputs, training=False) for n in batch.sets}
            self._store_metrics(metrics, {n: s.count / local[n] for n, s in batch.sets.items()}, training)
        return (out.loss, batch.outputs[0]) if return_outputs else out.loss

    def _nonfinite(self, problem: str, model: nn.Module, training: bool) -> torch.Tensor:
        """``on_nonfinite``: 'error' raises; 'skip' returns a zero loss (no gradient) and counts the micro-batch."""
        if self.distill_args.on_nonfinite == "error":
            raise NonFiniteError(
                f"training step {self.state.global_step + 1}, micro-batch {max(self._step.index, 1)}: "
                f"{problem} (on_nonfinite='skip' drops such micro-batches instead, counted)."
            )
        if not training:  # evaluation: the NaN stays visible in eval_loss
            return torch.tensor(float("nan"), device=self.args.device)
        self._skips.skip()
        logger.warning("skipped a micro-batch at step %d: %s", self.state.global_step + 1, problem)
        return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)  # zero gradient, DDP's graph whole

    # ------------------------------------------------------------------ logging

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
        """Add the means of the metrics gathered since the last log (each side's term, entropy, ...) to ``logs``, then log."""
        split = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if split == "eval" else ""
        for k, values in self._metrics[split].items():
            if values:
                logs[prefix + k] = sum(values) / len(values)
        self._metrics[split].clear()
        if "train_loss" in logs and self.state.global_step == getattr(self, "_initial_global_step", None):
            # resumed at its last step: no step ran, and the Trainer's 0 would read as a perfect fit
            del logs["train_loss"]
            logger.info("resumed a finished run (step %d): no training step ran.", self.state.global_step)
        if split == "train" and self.distill_args.on_nonfinite == "skip":
            self._skips.log(logs)
        super().log(logs, start_time)

    # ------------------------------------------------------------------ model card

    def create_model_card(self, model_name: str | None = None, **kwargs) -> None:
        """Write README.md in ``output_dir``: teacher, objective, data and final metrics (used by ``push_to_hub``)."""
        from fdistill.lm.hub import save_model_card

        if self.is_world_process_zero():
            save_model_card(self, model_name=model_name, **kwargs)

    # ------------------------------------------------------------------ evaluation

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the training objective on the batch; with ``predict_with_generate`` and a
        ``compute_metrics`` (e.g. ``fdistill.evaluation.text_metrics.compute_metrics_fn``) also the student's greedy
        replies as predictions and the references (else the teacher samples) as labels, -100-padded."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        if (
            prediction_loss_only
            or self.compute_metrics is None
            or not getattr(self.args, "predict_with_generate", False)
        ):
            return loss.detach(), None, None
        greedy = rollouts.greedy_config(
            self.model, self.processing_class, self.distill_args.max_new_tokens, self.shared_vocab_size
        )
        ids, mask = sample_completions(
            self.accelerator.unwrap_model(model), inputs["prompt_ids"], inputs["prompt_mask"], greedy
        )
        name = next((n for n in ("reference", "teacher") if f"{n}_ids" in inputs), None)
        if name is None:
            raise InputError("compute_metrics needs references: give the eval dataset a reference column.")
        labels = inputs[f"{name}_ids"].masked_fill(~inputs[f"{name}_mask"], IGNORE_INDEX)
        return loss.detach(), ids.masked_fill(~mask, IGNORE_INDEX), labels


def _positions(model) -> int:
    """The positions a model takes (its config's ``max_position_embeddings``; unbounded when it has none)."""
    return getattr(_base_model(model).config, "max_position_embeddings", None) or 1 << 20


class _StudentServerSync(TrainerCallback):
    """Syncs the trainer's ``student_server`` at the end of every ``student_sync_every``-th optimizer step (not after
    the last: nothing samples from it). With generation groups (``steps_per_generation``, ``num_iterations``) the
    server draws only at a group's first step, so the weights go over only before one: at the end of a step that
    closes a group, when a step due by ``student_sync_every`` has come since the last sync."""

    def __init__(self, trainer: FDistillMixin):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        server, step = self.trainer.student_server, state.global_step
        if server is None or server.closed or step >= state.max_steps:
            return
        every, groups = self.trainer.distill_args.student_sync_every, self.trainer._groups
        draws_next = groups is None or step % groups.period == 0
        if draws_next and step // every * every > server.synced_step:
            self.trainer.sync_student_server(step)


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
