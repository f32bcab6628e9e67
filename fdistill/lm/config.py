"""Configuration of an f-DISTILL run: `DistillArguments` (the distillation settings) and `FDistillConfig`.

`FDistillConfig` is `Seq2SeqTrainingArguments` plus `DistillArguments`, so every
transformers training option works unchanged. `DistillArguments` alone is what the
`FDistillMixin` needs when a user brings their own `Trainer` and arguments class.
Every field is validated in `__post_init__` by small named checks, one rule each, grouped by topic; the user's
values are never rewritten (a deprecated setting name, `DEPRECATED_SETTINGS`, sets the setting that replaced it).
Where the teacher's numbers come from is resolved in one place, `DistillArguments.teacher_source`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Literal

from transformers import Seq2SeqTrainingArguments

from fdistill.divergences import JS_MIXTURES, REDUCTIONS, TOPK_MODES, check_js_beta, check_tail_temperature
from fdistill.errors import invalid
from fdistill.lm.objectives import Objective, get_objective
from fdistill.lm.served import API_KEY_ENV, DEFAULT_RETRIES, DEFAULT_TIMEOUT, parse_server_url, redact_url

NONFINITE_POLICIES = ("error", "skip")
# Columns written by `fdistill sample --topk-logprobs K` and read with teacher_topk_columns=True.
TOPK_COLUMNS = ("teacher_topk_ids", "teacher_topk_logprobs")
# Settings that may hold credentials: masked wherever the settings are shown or saved (see DistillArguments.masked).
SECRET_SETTINGS = ("teacher_server", "teacher_server_api_key")
# Old setting names that still work: each use warns (FutureWarning) and sets the new one, which is what is read.
DEPRECATED_SETTINGS = {"teacher_topk_logprobs": "teacher_topk_columns", "teacher_topk": "teacher_server_topk"}
_UNSET = object()


@dataclass(frozen=True)
class TeacherSource:
    """Where the teacher's numbers come from in training, resolved once from the settings
    (:attr:`DistillArguments.teacher_source`); the trainer, the batch-memory rule and the model card read it.

    Attributes:
        kind: ``"model"`` (a teacher model in this process: its forwards), ``"columns"`` (its top-k log-probabilities
            stored beside the offline teacher samples, :data:`TOPK_COLUMNS`; ``teacher_topk_columns``), ``"server"``
            (a vLLM server scores every completion set; ``teacher_server``) or ``"none"`` (the objective uses none).
        topk: log-probabilities per position the server is asked for (``teacher_server_topk``; server only).
        topk_mode: how a top-k teacher's missing tail counts (``teacher_topk_mode``; columns and server).
    """

    kind: Literal["model", "columns", "server", "none"]
    topk: int | None = None
    topk_mode: str | None = None

    @property
    def is_topk(self) -> bool:
        """Whether the teacher is its top k log-probabilities per position (no teacher forward)."""
        return self.kind in ("columns", "server")

    @property
    def setting(self) -> str | None:
        """The setting that chose a top-k source, as messages name it."""
        return {"columns": "teacher_topk_columns", "server": "teacher_server"}.get(self.kind)


@dataclass
class DistillArguments:
    """Distillation settings shared by `FDistillConfig` and the `FDistillMixin`.

    References: Wen et al. 2023 (f-DISTILL, arXiv:2305.15718); Shleifer & Rush 2020
    (pre-distillation, arXiv:2010.13002).
    """

    objective: str = field(
        default="tvd",
        metadata={
            "help": "What to minimise: an f-divergence ('kl', 'rkl', 'js', 'tvd') or a baseline ('mle' on references, "
            "'seqkd' cross-entropy on teacher beam outputs, 'engine' teacher energy of student samples, 'predistill' "
            "MLE + word-level KL + hidden-state MSE on references), or an objective registered with "
            "fdistill.lm.objectives.register_objective."
        },
    )
    js_mixture: str = field(
        default="stepwise",
        metadata={
            "help": "JS mixture m_t: 'stepwise' = ½p_t + ½q_t (paper Eq. 11) or 'exact' prefix-weighted (Eq. 12)."
        },
    )
    js_beta: float = field(
        default=0.5, metadata={"help": "Teacher share β of the JS mixture, 0 < β < 1; 0.5 is the paper's JS."}
    )
    loss_temperature: float = field(
        default=1.0,
        metadata={"help": "Temperature applied to both models' logits inside the loss (not the sampling temperature)."},
    )
    loss_reduction: str = field(
        default="sequence",
        metadata={
            "help": "'sequence': sum over positions, mean over sequences (the paper's objective); 'token': token mean."
        },
    )
    # --- online student sampling
    student_do_sample: bool = field(
        default=True,
        metadata={"help": "Student samples by ancestral sampling (True, the paper) or greedy/beam search."},
    )
    student_sampling_temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature of online student samples (1.0 = the model's distribution)."},
    )
    student_top_k: int = field(default=0, metadata={"help": "Top-k filter for student sampling; 0 disables it."})
    student_top_p: float = field(
        default=1.0, metadata={"help": "Nucleus (top-p) filter for student sampling; 1.0 disables it."}
    )
    student_num_beams: int = field(default=1, metadata={"help": "Beams when student_do_sample is False (1 = greedy)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Length limit of online student samples, in new tokens."})
    student_generation_cache: str = field(
        default="auto",
        metadata={
            "help": "KV cache of online sampling: 'static' (preallocated; on CUDA transformers compiles the decode "
            "step), 'dynamic', or 'auto' = static on CUDA, dynamic elsewhere. Same samples either way."
        },
    )
    teacher_topk_columns: bool = field(
        default=False,
        metadata={
            "help": "Instead of a teacher forward on the offline teacher samples, use the teacher's top-k "
            "log-probabilities stored beside them by `fdistill sample --topk-logprobs K` (columns teacher_topk_ids / "
            "teacher_topk_logprobs); no teacher model is loaded. Offline columns exist for teacher samples only, so "
            "this serves objectives that score nothing else ('kl'). How the missing tail is handled: "
            "teacher_topk_mode."
        },
    )
    teacher_topk_mode: str = field(
        default="tail",
        metadata={
            "help": "With a top-k teacher: 'tail' compares both models coarse-grained to the teacher's top k tokens "
            "plus one tail bucket (1 − Σ_topk p against 1 − Σ_topk q), a lower bound of the full divergence for "
            "every kind (data-processing inequality), exact at k = V; 'renormalised' compares the teacher restricted "
            "to its top k and renormalised with the full student (fdistill's earlier top-k KL; not a bound). "
            "See fdistill.divergences.topk_step_divergence."
        },
    )
    # --- a teacher served by vLLM (fdistill.lm.served)
    teacher_server: str | None = field(
        default=None,
        metadata={
            "help": "Base URL of a vLLM server that serves the teacher (http://host:port): it scores the offline "
            "teacher samples and the online student samples of every step with its top teacher_server_topk "
            "log-probabilities per position (prompt_logprobs), and no teacher weights are loaded. Any f-divergence "
            "(kl/rkl/js/tvd), teacher_topk_mode says how the rest of the vocabulary counts. The server's tokenizer is "
            "checked against the student's once, at start. A user:password@ in it is sent as HTTP basic auth; it and "
            "any query string are never shown or saved."
        },
    )
    teacher_server_api_key: str | None = field(
        default=None,
        metadata={
            "help": f"API key of teacher_server (vLLM's --api-key), sent as 'Authorization: Bearer'; default: the "
            f"environment variable {API_KEY_ENV} (preferred: a recipe is easily shared). Never shown or saved."
        },
    )
    teacher_server_model: str | None = field(
        default=None, metadata={"help": "The served model's name (vLLM's --served-model-name); default: its only one."}
    )
    teacher_server_topk: int = field(
        default=20,
        metadata={
            "help": "Log-probabilities per position a teacher_server returns (the top k); 20 is vLLM's default "
            "--max-logprobs, serve with a larger one for more. At k = V the divergence is exact. Each position costs "
            "~70 bytes of JSON per k, and vLLM returns them for the prompt's positions too (measured with SmolLM2, "
            "chat prompts, 32-token samples: 2.5 kB per scored token at k = 16, 10 kB at k = 64)."
        },
    )
    teacher_server_timeout: float = field(
        default=DEFAULT_TIMEOUT,
        metadata={
            "help": "Seconds one request to teacher_server may take in all — every attempt, retry and backoff "
            "included — before training stops with the error (naming the attempts made)."
        },
    )
    teacher_server_retries: int = field(
        default=DEFAULT_RETRIES,
        metadata={
            "help": "Retries of a failed teacher_server request (connection error, timeout, 429, 5xx) with "
            "exponential backoff (0.5, 1, 2, 4, 8 s, ...), within teacher_server_timeout."
        },
    )
    teacher_server_batch_size: int = field(default=8, metadata={"help": "Sequences per teacher_server request."})
    teacher_server_concurrency: int = field(
        default=8, metadata={"help": "teacher_server requests in flight at once (the server batches them)."}
    )
    teacher_sampling: str = field(
        default="offline",
        metadata={
            "help": "Teacher samples for kl/js/tvd: 'offline' reads them from teacher_sample_column (drawn once by "
            "`fdistill sample`, the paper's choice) or 'online' draws them from the teacher at every step (the paper's "
            "Table 4 comparison; max_new_tokens long, ancestral sampling)."
        },
    )
    # --- data
    prompt_column: str = field(
        default="prompt", metadata={"help": "Dataset column with the input text (or token ids)."}
    )
    reference_column: str = field(
        default="reference", metadata={"help": "Dataset column with ground-truth targets (text or token ids)."}
    )
    teacher_sample_column: str = field(
        default="teacher_sample_ids",
        metadata={
            "help": "Dataset column with offline teacher samples (token ids as the teacher sampled them, EOS included "
            "when it stopped there; or text). For 'seqkd' point it at the teacher's beam-search outputs."
        },
    )
    max_prompt_length: int = field(
        default=256, metadata={"help": "Prompts are truncated (from the left) to this many tokens."}
    )
    max_target_length: int = field(
        default=128, metadata={"help": "References and teacher samples are truncated to this many tokens."}
    )
    use_chat_template: bool = field(
        default=False,
        metadata={
            "help": "Wrap each prompt as a user message with the tokenizer's chat template (decoder-only chat models)."
        },
    )
    # --- pre-distillation (Shleifer & Rush 2020)
    predistill_alpha_mle: float = field(
        default=0.8, metadata={"help": "Weight of cross-entropy on references in 'predistill'."}
    )
    predistill_alpha_kd: float = field(
        default=0.2, metadata={"help": "Weight of word-level KL(p‖q) on references in 'predistill'."}
    )
    predistill_alpha_hidden: float = field(
        default=0.0,
        metadata={"help": "Weight of hidden-state MSE between matched layers in 'predistill' (needs equal widths)."},
    )
    predistill_layer_map: list[int] | None = field(
        default=None,
        metadata={
            "help": "Teacher layer matched by each student (decoder) layer for the hidden-state MSE; default: the layers "
            "the student was copied from (recorded by fdistill.lm.student)."
        },
    )
    fused_divergence: bool | None = field(
        default=None,
        metadata={
            "help": "Compute the f-divergence objectives (kl/rkl/js/tvd) from hidden states and LM heads without "
            "materialising [tokens, vocab] logits (fdistill.kernels; Triton on CUDA, chunked PyTorch on CPU). "
            "None: on when training on CUDA."
        },
    )
    fused_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per chunk of the fused divergence; default: ~2^26 logits on CUDA, 2^22 on CPU."},
    )
    teacher_dtype: str | None = field(
        default=None,
        metadata={"help": "dtype to load/cast the teacher to ('float32', 'bfloat16', ...); default: the student's."},
    )
    on_nonfinite: str = field(
        default="error",
        metadata={
            "help": "What a NaN/inf in a training step's logits (at scored positions; -inf, a banned token, is fine) or "
            "loss does: 'error' stops training at once, naming the step, the completion set and the model; 'skip' "
            "drops that micro-batch's gradient and counts it in the logged `nonfinite_skipped`."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Let a fresh run (not resuming) replace another run in output_dir: its checkpoint-N folders are "
            "deleted first. Without it such a run is refused (resume it, or choose another output_dir)."
        },
    )

    # --- deprecated names, kept working (each use warns once and names the new setting); see DEPRECATED_SETTINGS
    teacher_topk_logprobs: bool | None = field(
        default=None, metadata={"help": "Deprecated name of teacher_topk_columns (FutureWarning)."}
    )
    teacher_topk: int | None = field(
        default=None, metadata={"help": "Deprecated name of teacher_server_topk (FutureWarning)."}
    )

    def __post_init__(self):
        """Each rule below is one small check, grouped by topic; the first broken one raises one `InputError`."""
        self._check_finite()
        objective = get_objective(self.objective)  # the registry: built-in and user-registered objectives
        self._check_loss()
        self._check_student_sampling()
        self._check_teacher_source(objective)
        self._check_teacher_server()
        self._check_nonfinite_policy()
        self._check_lengths()
        self._check_predistill_weights()
        self._check_fused(objective)
        objective.check(self)

    # ------------------------------------------------------------------ the rules, by topic

    _FINITE = (
        "js_beta",
        "loss_temperature",
        "student_sampling_temperature",
        "student_top_p",
        "predistill_alpha_mle",
        "predistill_alpha_kd",
        "predistill_alpha_hidden",
    )

    def _refuse(self, name: str, fix: str, value=_UNSET) -> None:
        """One `InputError` naming the setting ``name``, its value (by default the current one) and the fix; and the
        deprecated name it was given under, if it was."""
        old = getattr(self, "_given_as", {}).get(name)
        if old is not None:
            fix += f" ({old}, as it was given, is the deprecated name of {name}.)"
        raise invalid(name, getattr(self, name) if value is _UNSET else value, fix)

    def _check_finite(self) -> None:
        """A number that is NaN or ±inf has no meaning as any of these settings."""
        for name in self._FINITE:
            if not math.isfinite(getattr(self, name)):
                self._refuse(name, "use a finite number.")

    def _check_loss(self) -> None:
        """The JS mixture and its β, the loss temperature, the reduction."""
        if self.js_mixture not in JS_MIXTURES:
            self._refuse("js_mixture", "use 'stepwise' (paper Eq. 11) or 'exact' (Eq. 12).")
        check_js_beta(self.js_beta)
        if not self.loss_temperature > 0:
            self._refuse("loss_temperature", "use a positive temperature (1.0 = untempered).")
        if self.loss_reduction not in REDUCTIONS:
            self._refuse("loss_reduction", "use 'sequence' or 'token'.")

    def _check_student_sampling(self) -> None:
        """How the student draws its online samples."""
        if not self.student_sampling_temperature > 0:
            self._refuse("student_sampling_temperature", "use a positive temperature.")
        if self.student_top_k < 0:
            self._refuse("student_top_k", "use 0 (off) or a positive k.")
        if not 0.0 < self.student_top_p <= 1.0:
            self._refuse("student_top_p", "use a value in (0, 1]; 1.0 disables nucleus filtering.")
        if self.student_num_beams < 1:
            self._refuse("student_num_beams", "use 1 or more beams.")
        if self.student_do_sample and self.student_num_beams > 1:
            self._refuse("student_num_beams", "beams need student_do_sample=False.")
        if self.student_generation_cache not in ("auto", "dynamic", "static"):
            self._refuse("student_generation_cache", "use 'auto', 'dynamic' or 'static'.")

    def _check_teacher_source(self, objective: Objective) -> None:
        """What the chosen teacher source (`teacher_source`) can serve: a top-k teacher (stored columns or a server)
        gives log-probabilities for the f-divergences, without a forward to fuse, its tail at temperature 1."""
        if self.teacher_topk_mode not in TOPK_MODES:
            self._refuse(
                "teacher_topk_mode",
                "use 'tail' (top k + one tail bucket: a lower bound) or 'renormalised' (top k renormalised).",
            )
        if self.teacher_server is not None:
            parse_server_url(self.teacher_server)  # one InputError, the URL's secrets masked, for a URL it is not
        if self.teacher_server is not None and self.teacher_topk_columns:
            self._refuse(
                "teacher_topk_columns",
                "with teacher_server the server scores every completion set; unset teacher_topk_columns.",
            )
        source = self.teacher_source
        if source.kind == "columns":
            self._check_topk_columns(objective)
        if source.kind == "server":
            self._check_served_teacher(objective)
        if source.is_topk:
            if self.fused_divergence:
                self._refuse(
                    "fused_divergence", f"with {source.setting} there is no teacher forward to fuse; unset one.", True
                )
            check_tail_temperature(
                self.teacher_topk_mode,
                self.loss_temperature,
                temperature_name="loss_temperature",
                mode_name="teacher_topk_mode",
            )
        if self.teacher_sampling not in ("offline", "online"):
            self._refuse("teacher_sampling", "use 'offline' (dataset column) or 'online' (drawn each step).")
        if self.teacher_dtype not in (None, "float32", "float16", "bfloat16", "float64", "auto"):
            self._refuse("teacher_dtype", "use float32, float16, bfloat16, float64 or leave unset.")

    def _check_topk_columns(self, objective: Objective) -> None:
        """Stored top-k columns exist for the offline teacher samples only, and serve the f-divergences."""
        if not objective.topk_teacher:
            self._refuse(
                "teacher_topk_columns",
                f"objective {self.objective!r} needs the teacher's full distributions; top-k "
                "log-probabilities serve the f-divergences (objective='kl' from offline columns).",
            )
        if "student" in objective.scores or self.teacher_sampling != "offline":
            self._refuse(
                "teacher_topk_columns",
                f"objective {self.objective!r} with teacher_sampling={self.teacher_sampling!r} scores "
                "sequences drawn during training, and stored top-k log-probabilities exist only for the offline "
                "teacher samples (only a teacher that scores them at training time can give the rest). Use "
                "objective='kl' with teacher_sampling='offline', or pass the teacher model instead.",
            )

    def _check_served_teacher(self, objective: Objective) -> None:
        """A served teacher gives top-k log-probabilities of samples it is sent; it draws none during training."""
        if not objective.topk_teacher:
            self._refuse(
                "teacher_server",
                f"a served teacher gives its top-k log-probabilities, which serve the f-divergences "
                f"(kl/rkl/js/tvd); objective {self.objective!r} needs the teacher model.",
            )
        if self.needs_teacher_samples and self.teacher_sampling != "offline":
            self._refuse(
                "teacher_sampling",
                "a served teacher scores samples but does not draw them during training: draw the teacher "
                "samples first with `fdistill sample --teacher-server URL` and use teacher_sampling='offline'.",
            )

    def _check_teacher_server(self) -> None:
        """The settings of the connection to ``teacher_server`` (the model name and key only with a server)."""
        if self.teacher_server is None and self.teacher_server_model is not None:
            self._refuse("teacher_server_model", "it names a model of teacher_server; set that too.")
        if self.teacher_server_api_key is not None:
            if self.teacher_server is None:
                self._refuse("teacher_server_api_key", "it is the key of teacher_server; set that too.", "<hidden>")
            if not str(self.teacher_server_api_key).strip():
                self._refuse(
                    "teacher_server_api_key", f"give the key, or leave it unset (then {API_KEY_ENV} is read).", ""
                )
        if self.teacher_server_topk < 1:
            self._refuse("teacher_server_topk", "use 1 or more log-probabilities per position.")
        if not (self.teacher_server_timeout > 0 and math.isfinite(self.teacher_server_timeout)):
            self._refuse("teacher_server_timeout", "use a positive number of seconds.")
        if self.teacher_server_retries < 0:
            self._refuse("teacher_server_retries", "use 0 or more retries.")
        for name in ("teacher_server_batch_size", "teacher_server_concurrency"):
            if getattr(self, name) < 1:
                self._refuse(name, "use 1 or more.")

    def _check_nonfinite_policy(self) -> None:
        """What a NaN/inf does."""
        if self.on_nonfinite not in NONFINITE_POLICIES:
            self._refuse("on_nonfinite", "use 'error' (stop at the first NaN/inf) or 'skip' (drop and count).")

    def _check_lengths(self) -> None:
        """Length limits of prompts, targets and samples."""
        for name in ("max_new_tokens", "max_prompt_length", "max_target_length"):
            if getattr(self, name) < 1:
                self._refuse(name, "use a positive length.")

    def _check_predistill_weights(self) -> None:
        """Pre-distillation weights are >= 0 (`PreDistillation.check` wants one of them positive)."""
        for name in ("predistill_alpha_mle", "predistill_alpha_kd", "predistill_alpha_hidden"):
            if getattr(self, name) < 0:
                self._refuse(name, "weights must be >= 0.")

    def _check_fused(self, objective: Objective) -> None:
        """The fused divergence computes the f-divergences only, in chunks of a positive size."""
        if self.fused_divergence and not objective.fusable:
            self._refuse(
                "fused_divergence",
                f"it computes kl/rkl/js/tvd only; objective {self.objective!r} "
                "uses materialised logits (leave it unset or False).",
            )
        if self.fused_chunk_size is not None and self.fused_chunk_size < 1:
            self._refuse("fused_chunk_size", "use a positive number of tokens or leave it unset.")

    # ------------------------------------------------------------------ the teacher source, resolved once

    @property
    def teacher_source(self) -> TeacherSource:
        """Where the teacher's numbers come from, resolved from the settings in this one place (see `TeacherSource`)."""
        if self.teacher_server is not None:
            return TeacherSource("server", topk=self.teacher_server_topk, topk_mode=self.teacher_topk_mode)
        if self.teacher_topk_columns:
            return TeacherSource("columns", topk_mode=self.teacher_topk_mode)
        return TeacherSource("model" if self.objective_spec.uses_teacher else "none")

    # ------------------------------------------------------------------ secrets never shown or saved

    def masked(self, values: dict) -> dict:
        """``values`` (these settings as a dict) with :data:`SECRET_SETTINGS` masked: the server URL without its
        ``user:password@`` and query values (:func:`fdistill.lm.served.redact_url`), the API key as a placeholder;
        the deprecated names (:data:`DEPRECATED_SETTINGS`) left out."""
        out = {k: v for k, v in values.items() if k not in DEPRECATED_SETTINGS}  # their new names carry them
        if out.get("teacher_server"):
            out["teacher_server"] = redact_url(out["teacher_server"])
        if out.get("teacher_server_api_key") is not None:
            out["teacher_server_api_key"] = "<TEACHER_SERVER_API_KEY>"
        return out

    def to_dict(self) -> dict:
        """The settings as a dict, secrets masked (transformers' ``to_dict`` masks ``*_token`` fields only; its
        ``to_json_string``, ``to_sanitized_dict`` and the reporting integrations all go through this)."""
        parent = getattr(super(), "to_dict", None)
        values = parent() if parent else {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return self.masked(values)

    def __getstate__(self) -> dict:
        """Pickles (``training_args.bin``, which the Trainer saves with ``torch.save``) hold the secrets masked."""
        return self.masked(dict(self.__dict__))

    def __repr__(self) -> str:
        values = self.masked({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in values.items())})"

    __str__ = __repr__

    def check_batch_memory(self, vocab_size: int, training_args=None) -> None:
        """Refuse per-device batch sizes whose student logits at the length limit exceed all the memory here.

        The rule: ``batch × length × vocab_size × 4`` bytes — the float32 student logits of one batch of the longest
        completion set the objective scores (``length``: max_target_length for references and offline teacher
        samples, max_new_tokens for samples drawn in training); the teacher's logits, the gradients and the
        activations come on top — must fit in the machine's RAM plus all its GPUs' memory
        (`fdistill.checks.batch_fits`). The batch sizes are ``training_args``' (default: these settings', as in
        `FDistillConfig`). Called by the trainer once the model's vocabulary is known, before training. The fused
        path (``fused_divergence``: set, or unset on CUDA) never materialises those logits, so it has no such bound.
        """
        import torch

        from fdistill.checks import batch_fits

        fused = self.fused_divergence or (self.fused_divergence is None and torch.cuda.is_available())
        if fused and self.objective_spec.fusable and not self.teacher_source.is_topk:
            return
        offline = self.needs_reference or (self.needs_teacher_samples and self.reads_teacher_samples)
        drawn = self.needs_student_samples or (self.needs_teacher_samples and not self.reads_teacher_samples)
        length = max([self.max_target_length] * offline + [self.max_new_tokens] * drawn or [self.max_target_length])
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            batch = getattr(
                training_args or self, name, None
            )  # DistillArguments alone has none: the Trainer's defaults
            if batch is None:
                continue
            batch_fits(
                name,
                batch,
                length * vocab_size * 4,
                f"one batch's float32 logits at the length limit (batch × {length} positions × {vocab_size} vocabulary "
                "× 4 bytes)",
                " and raise gradient_accumulation_steps for a larger effective batch",
            )

    @property
    def objective_spec(self) -> Objective:
        """The registered :class:`fdistill.lm.objectives.Objective` named by ``objective``."""
        return get_objective(self.objective)

    @property
    def needs_student_samples(self) -> bool:
        return "student" in self.objective_spec.scores

    @property
    def needs_teacher_samples(self) -> bool:
        return "teacher" in self.objective_spec.scores

    @property
    def reads_teacher_samples(self) -> bool:
        """Whether teacher samples come from the dataset (offline) rather than from the teacher during training."""
        return self.needs_teacher_samples and (
            self.teacher_sampling == "offline" or not self.objective_spec.uses_teacher
        )

    @property
    def needs_reference(self) -> bool:
        return "reference" in self.objective_spec.scores

    @property
    def needs_teacher(self) -> bool:
        """Whether the trainer loads a teacher model (not when its top k are stored or served)."""
        return self.teacher_source.kind == "model"


def _deprecated_alias(old: str, new: str) -> property:
    """The old setting name ``old`` as a property of ``new``: setting it (not None) warns once and sets ``new``."""

    def get(self):
        return getattr(self, new)

    def set_(self, value) -> None:
        if value is None:  # the field's default: not given
            return
        warnings.warn(
            f"{old} is deprecated and will be removed in a future version of fdistill; use {new} instead.",
            FutureWarning,
            stacklevel=3,
        )
        setattr(self, new, value)
        self.__dict__.setdefault("_given_as", {})[new] = old  # named in refusals of the value (`_refuse`)

    return property(get, set_, doc=f"Deprecated name of `{new}`.")


for _old, _new in DEPRECATED_SETTINGS.items():  # after @dataclass: the fields keep their None defaults
    setattr(DistillArguments, _old, _deprecated_alias(_old, _new))


@dataclass(repr=False)  # DistillArguments.__repr__: secrets masked
class FDistillConfig(DistillArguments, Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` with the f-DISTILL settings of :class:`DistillArguments`.

    Example:
        >>> FDistillConfig(output_dir="out", objective="js", js_mixture="exact", max_new_tokens=32)  # doctest: +SKIP
    """

    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Kept False: the trainer reads its own columns (prompt, reference, teacher samples)."},
    )

    def __post_init__(self):
        DistillArguments.__post_init__(self)
        self._check_training_settings()  # the values as given (transformers rewrites some, e.g. eval_steps=0)
        Seq2SeqTrainingArguments.__post_init__(self)
        unknown = unknown_scheduler_kwargs(self.lr_scheduler_type, self.lr_scheduler_kwargs)
        if unknown:
            raise invalid(
                "lr_scheduler_kwargs",
                self.lr_scheduler_kwargs,
                f"the {self.lr_scheduler_type.value!r} scheduler does not take {unknown[0]} (it takes "
                f"{unknown[1] or 'none: transformers would ignore them'}); fix the names or the lr_scheduler_type.",
            )

    def _check_training_settings(self) -> None:
        """Training settings transformers accepts but that cannot be meant (zero or negative counts, a learning rate
        of 0, seeds outside [0, 2^32)), each one `InputError` naming the setting and the fix, before any work."""

        def bad(name, fix):
            raise invalid(name, getattr(self, name), fix)

        def number(name):  # a value that is no number at all is left to transformers' own message
            value = getattr(self, name)
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if number(name) is not None and number(name) < 1:
                bad(name, "use 1 or more.")
        if number("max_steps") is not None and (self.max_steps == 0 or self.max_steps < -1):
            bad("max_steps", "use a positive number of optimizer steps, or -1 to train for num_train_epochs.")
        epochs = number("num_train_epochs")
        if self.max_steps is not None and self.max_steps < 1 and epochs is not None:
            if not (math.isfinite(epochs) and epochs > 0):
                bad("num_train_epochs", "use a positive number of epochs (or set max_steps).")
        lr = number("learning_rate")
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            bad("learning_rate", "use a finite positive learning rate (0 would train nothing).")
        for name in ("weight_decay", "max_grad_norm", "adam_epsilon", "warmup_steps"):
            value = number(name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                bad(name, "use a finite number >= 0" + (" (0 = no clipping)." if name == "max_grad_norm" else "."))
        for name in ("adam_beta1", "adam_beta2"):
            value = number(name)
            if value is not None and not 0 <= value < 1:
                bad(name, "use a value in [0, 1).")
        for name, strategy in (("logging_steps", "logging_strategy"), ("save_steps", "save_strategy")):
            value = number(name)
            if (
                value is not None
                and not (math.isfinite(value) and value > 0)
                and _strategy(getattr(self, strategy)) == "steps"
            ):
                bad(
                    name,
                    f"use a positive number of steps (or a fraction in (0, 1) of the run) with {strategy}='steps'.",
                )
        if number("eval_steps") is not None and not (math.isfinite(self.eval_steps) and self.eval_steps > 0):
            bad(
                "eval_steps",
                "use a positive number of steps (or a fraction in (0, 1) of the run), or leave it unset "
                "to evaluate every logging_steps.",
            )
        if number("save_total_limit") is not None and self.save_total_limit < 1:
            bad("save_total_limit", "use 1 or more checkpoints to keep, or leave it unset to keep all.")
        for name in ("seed", "data_seed"):
            if number(name) is not None and not 0 <= getattr(self, name) < 2**32:
                bad(name, "use a whole number in [0, 2^32).")
        if number("label_smoothing_factor") is not None and self.label_smoothing_factor != 0:
            bad(
                "label_smoothing_factor",
                "fdistill's objectives do not use it (the loss is the objective's); leave it 0.",
            )
        if number("dataloader_num_workers") is not None and self.dataloader_num_workers < 0:
            bad("dataloader_num_workers", "use 0 (load in the main process) or more worker processes.")


def _strategy(value) -> str:
    """An interval strategy as text ('steps', 'epoch', 'no'), whether given as text or as transformers' enum."""
    return str(getattr(value, "value", value))


# Arguments `transformers.get_scheduler` fills itself; the rest of a scheduler function's come from lr_scheduler_kwargs.
_SCHEDULER_FILLS = {"optimizer", "num_warmup_steps", "num_training_steps"}


def unknown_scheduler_kwargs(kind, kwargs) -> tuple[list[str], list[str]] | None:
    """``(unknown keys, accepted keys)`` of ``lr_scheduler_kwargs`` for the scheduler ``kind``, or None when all fit.

    The accepted keys are the parameters of transformers' scheduler function (``TYPE_TO_SCHEDULER_FUNCTION``) besides
    those `get_scheduler` fills; 'constant' and 'constant_with_warmup' take none (get_scheduler drops them silently);
    a function with ``**kwargs`` (reduce_lr_on_plateau, greedy) takes any.
    """
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION
    from transformers.trainer_utils import SchedulerType

    if not kwargs or not isinstance(kwargs, dict):
        return None
    kind = SchedulerType(kind)
    if kind in (SchedulerType.CONSTANT, SchedulerType.CONSTANT_WITH_WARMUP):
        accepted = []
    else:
        parameters = inspect.signature(TYPE_TO_SCHEDULER_FUNCTION[kind]).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in parameters):
            return None
        accepted = [p.name for p in parameters if p.name not in _SCHEDULER_FILLS]
    unknown = [k for k in kwargs if k not in accepted]
    return (unknown, accepted) if unknown else None
