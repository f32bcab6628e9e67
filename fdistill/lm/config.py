"""Configuration of an f-DISTILL run: `DistillArguments` (the distillation settings) and `FDistillConfig`.

`FDistillConfig` is `Seq2SeqTrainingArguments` plus `DistillArguments`, so every
transformers training option works unchanged. `DistillArguments` alone is what the
`FDistillMixin` needs when a user brings their own `Trainer` and arguments class.
Every field is validated in `__post_init__` by small named checks, one rule each, grouped by topic
(:mod:`fdistill.lm.config_checks`); the user's values are never rewritten (a deprecated setting name,
`DEPRECATED_SETTINGS`, sets the setting that replaced it).
Where the teacher's numbers come from is resolved in one place, `DistillArguments.teacher_source`
(:class:`~fdistill.lm.teacher_source.TeacherSource`).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

from transformers import Seq2SeqTrainingArguments

from fdistill.errors import invalid
from fdistill.lm.config_checks import (
    NONFINITE_POLICIES,
    check_batch_memory,
    check_settings,
    check_training_settings,
    unknown_scheduler_kwargs,
)
from fdistill.lm.importance import DEFAULT_CAP
from fdistill.lm.objectives import Objective, get_objective
from fdistill.lm.served import API_KEY_ENV, DEFAULT_RETRIES, DEFAULT_TIMEOUT, redact_url
from fdistill.lm.served.student import STUDENT_API_KEY_ENV
from fdistill.lm.teacher_source import TeacherSource

# The float columns `fdistill sample --topk-logprobs K` wrote before the logits cache (fdistill.lm.logits_cache, which
# it writes now); both are read with teacher_topk_columns=True.
TOPK_COLUMNS = ("teacher_topk_ids", "teacher_topk_logprobs")
# Settings that may hold credentials: masked wherever the settings are shown or saved (see DistillArguments.masked).
SECRET_SETTINGS = ("teacher_server", "teacher_server_api_key", "student_server", "student_server_api_key")
# Old setting names that still work: each use warns (FutureWarning) and sets the new one, which is what is read.
DEPRECATED_SETTINGS = {"teacher_topk_logprobs": "teacher_topk_columns", "teacher_topk": "teacher_server_topk"}

__all__ = [
    "DEPRECATED_SETTINGS",
    "NONFINITE_POLICIES",
    "SECRET_SETTINGS",
    "TOPK_COLUMNS",
    "DistillArguments",
    "FDistillConfig",
    "TeacherSource",
    "unknown_scheduler_kwargs",
]


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
            "MLE + word-level KL + hidden-state MSE on references; across tokenizers 'uld' and 'hybrid'), or an "
            "objective registered with fdistill.lm.objectives.register_objective."
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
    # --- reused rollouts (fdistill.lm.importance)
    steps_per_generation: int = field(
        default=1,
        metadata={
            "help": "Optimizer steps one generation serves: at every k-th step the student draws the samples of the "
            "next k steps' prompts in one generate call (TRL's meaning); steps after the first score them reweighted "
            "by truncated prefix importance weights (importance_weight_cap). 1 = fresh samples every step."
        },
    )
    num_iterations: int = field(
        default=1,
        metadata={
            "help": "Optimizer steps on each generation's samples (TRL GRPO's num_iterations, μ): the steps of a "
            "generation group come back μ times in a row, the same prompts with the same samples; the teacher's "
            "numbers on them are computed once and kept (it is frozen), the student-side terms reweighted by the "
            "same importance weights. The train sampler repeats each group's prompts μ times (an epoch sees every "
            "prompt μ times). 1 = every sample trains one step."
        },
    )
    rollout_overlap: bool = field(
        default=False,
        metadata={
            "help": "Draw step n+1's student samples on the student server while step n trains (staleness <= 1, "
            "corrected by the same importance weights). Needs student_server."
        },
    )
    importance_weight_cap: float = field(
        default=DEFAULT_CAP,
        metadata={
            "help": "Truncation C of the prefix importance weights of reused student samples, min(w_t, C) (truncated "
            "importance sampling; 2.0 as TIS, Yao et al. 2025); >= 1, float('inf') = untruncated."
        },
    )
    teacher_topk_columns: bool = field(
        default=False,
        metadata={
            "help": "Instead of a teacher forward on the offline teacher samples, use the teacher's top-k "
            "log-probabilities stored beside them by `fdistill sample --topk-logprobs K` (the logits cache, "
            "fdistill.lm.logits_cache, or the older float columns teacher_topk_ids / teacher_topk_logprobs); no "
            "teacher model is loaded; a cache made with another tokenizer is refused. Offline columns exist for "
            "teacher samples only, so "
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
    # --- student rollouts through a vLLM server (fdistill.lm.served.student)
    student_server: str | None = field(
        default=None,
        metadata={
            "help": "Draw the online student samples (rkl/js/tvd/engine) with a vLLM server instead of model.generate "
            "in the training process: its URL (http://host:port, started with VLLM_SERVER_DEV_MODE=1 on this machine, "
            "serving the student), or 'auto' to start one here from the vLLM virtualenv of scripts/install_vllm.sh, "
            "stopped by PID at the end of training and on every error. The server's weights become the trainer's "
            "every student_sync_every optimizer steps (safetensors in /dev/shm, /collective_rpc reload_weights). "
            "Samples or greedy (no beams); decoder-only students. A user:password@ in it is never shown or saved."
        },
    )
    student_sync_every: int = field(
        default=1,
        metadata={
            "help": "Optimizer steps between weight syncs to student_server (1: every step, the samples always the "
            "current student's); the first sync comes before the first sample. With generation groups "
            "(steps_per_generation, num_iterations) a sync comes only before a group's draw."
        },
    )
    student_server_timeout: float = field(
        default=DEFAULT_TIMEOUT,
        metadata={
            "help": "Seconds one request to student_server (a batch of samples, a sync) may take in all, retries "
            "included; with 'auto' also the server's start-up limit."
        },
    )
    student_server_api_key: str | None = field(
        default=None,
        metadata={
            "help": f"API key of student_server (vLLM's --api-key); default: the environment variable "
            f"{STUDENT_API_KEY_ENV}. Never shown or saved."
        },
    )
    student_server_python: str | None = field(
        default=None,
        metadata={
            "help": "student_server='auto': the Python of vLLM's virtualenv; default $FDISTILL_VLLM_PYTHON, else "
            "~/.cache/fdistill/vllm-venv/bin/python (made by `bash scripts/install_vllm.sh`)."
        },
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
    # --- across tokenizers (fdistill.lm.cross_batches)
    uld_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight λ of the distillation term in 'uld' and 'hybrid' (across tokenizers): cross-entropy on "
            "teacher samples + λ · the ULD term (L1 distance between sorted next-token probabilities, Boizard et al. "
            "2024) or the GOLD-style hybrid term; >= 0."
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
        """Each rule (:mod:`fdistill.lm.config_checks`) is one small check, grouped by topic; the first broken one
        raises one `InputError`."""
        check_settings(self)

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
        for role in ("teacher", "student"):
            if out.get(f"{role}_server"):
                out[f"{role}_server"] = redact_url(out[f"{role}_server"])
            if out.get(f"{role}_server_api_key") is not None:
                out[f"{role}_server_api_key"] = f"<{role.upper()}_SERVER_API_KEY>"
        if out.get("hub_token") is not None:  # a Trainer setting; training_args.bin is pushed with checkpoints
            out["hub_token"] = "<HUB_TOKEN>"
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

    def check_batch_memory(self, vocab_size: int, training_args=None, may_fuse: bool = True) -> None:
        """Refuse per-device batch sizes (``training_args``', by default these settings') whose float32 student
        logits at the length limit exceed all the memory here (:func:`fdistill.lm.config_checks.check_batch_memory`).
        Called by the trainer once the model's vocabulary is known, before training."""
        check_batch_memory(self, vocab_size, training_args, may_fuse)

    @property
    def objective_spec(self) -> Objective:
        """The registered :class:`fdistill.lm.objectives.Objective` named by ``objective``."""
        return get_objective(self.objective)

    @property
    def needs_student_samples(self) -> bool:
        """Whether the objective scores online student samples (they are drawn every step)."""
        return "student" in self.objective_spec.scores

    @property
    def needs_teacher_samples(self) -> bool:
        """Whether the objective scores teacher samples (offline ones from the dataset, or drawn online)."""
        return "teacher" in self.objective_spec.scores

    @property
    def reads_teacher_samples(self) -> bool:
        """Whether teacher samples come from the dataset (offline) rather than from the teacher during training."""
        return self.needs_teacher_samples and (
            self.teacher_sampling == "offline" or not self.objective_spec.uses_teacher
        )

    @property
    def needs_reference(self) -> bool:
        """Whether the objective scores the references (the dataset's ``reference_column``)."""
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
        self.__dict__.setdefault("_given_as", {})[new] = old  # named in refusals of the value (config_checks.refuse)

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
        check_training_settings(self)  # the values as given (transformers rewrites some, e.g. eval_steps=0)
        Seq2SeqTrainingArguments.__post_init__(self)
        unknown = unknown_scheduler_kwargs(self.lr_scheduler_type, self.lr_scheduler_kwargs)
        if unknown:
            raise invalid(
                "lr_scheduler_kwargs",
                self.lr_scheduler_kwargs,
                f"the {self.lr_scheduler_type.value!r} scheduler does not take {unknown[0]} (it takes "
                f"{unknown[1] or 'none: transformers would ignore them'}); fix the names or the lr_scheduler_type.",
            )
