"""The rules of the distillation settings: one small named check per rule, grouped by topic.

:func:`check_settings` runs them in order for :class:`~fdistill.lm.config.DistillArguments` (each broken rule is one
`InputError` naming the setting, its value and the fix — :func:`refuse`); :func:`check_training_settings` refuses
transformers training settings that cannot be meant, :func:`unknown_scheduler_kwargs` scheduler arguments the
scheduler does not take, and :func:`check_batch_memory` batch sizes past all the memory here. The user's values are
never rewritten.
"""

from __future__ import annotations

import math

from fdistill.divergences import JS_MIXTURES, REDUCTIONS, TOPK_MODES, check_js_beta, check_tail_temperature
from fdistill.errors import invalid, see
from fdistill.lm.importance import check_cap
from fdistill.lm.objectives import Objective, get_objective
from fdistill.lm.served import API_KEY_ENV, parse_server_url, redact_url
from fdistill.lm.served.student import STUDENT_API_KEY_ENV

NONFINITE_POLICIES = ("error", "skip")
UNSET = object()  # refuse(): the setting's current value


def check_settings(settings) -> None:
    """Every rule of the distillation settings, by topic; the first broken one raises one `InputError`."""
    check_finite(settings)
    objective = get_objective(settings.objective)  # the registry: built-in and user-registered objectives
    check_loss(settings)
    check_student_sampling(settings)
    check_teacher_source(settings, objective)
    check_teacher_server(settings)
    check_student_server(settings, objective)
    check_nonfinite_policy(settings)
    check_lengths(settings)
    check_predistill_weights(settings)
    check_cross_tokenizer_settings(settings)
    check_fused(settings, objective)
    check_rollout_reuse(settings, objective)
    objective.check(settings)


FINITE_SETTINGS = (
    "js_beta",
    "loss_temperature",
    "student_sampling_temperature",
    "student_top_p",
    "predistill_alpha_mle",
    "predistill_alpha_kd",
    "predistill_alpha_hidden",
    "uld_weight",
)


def refuse(settings, name: str, fix: str, value=UNSET) -> None:
    """One `InputError` naming the setting ``name``, its value (by default the current one) and the fix; and the
    deprecated name it was given under, if it was."""
    old = getattr(settings, "_given_as", {}).get(name)
    if old is not None:
        fix += f" ({old}, as it was given, is the deprecated name of {name}.)"
    raise invalid(name, getattr(settings, name) if value is UNSET else value, fix + see("reference/config", name))


def check_finite(settings) -> None:
    """A number that is NaN or ±inf has no meaning as any of these settings."""
    for name in FINITE_SETTINGS:
        if not math.isfinite(getattr(settings, name)):
            refuse(settings, name, "use a finite number.")


def check_loss(settings) -> None:
    """The JS mixture and its β, the loss temperature, the reduction."""
    if settings.js_mixture not in JS_MIXTURES:
        refuse(settings, "js_mixture", "use 'stepwise' (paper Eq. 11) or 'exact' (Eq. 12).")
    check_js_beta(settings.js_beta)
    if not settings.loss_temperature > 0:
        refuse(settings, "loss_temperature", "use a positive temperature (1.0 = untempered).")
    if settings.loss_reduction not in REDUCTIONS:
        refuse(settings, "loss_reduction", "use 'sequence' or 'token'.")


def check_student_sampling(settings) -> None:
    """How the student draws its online samples."""
    if not settings.student_sampling_temperature > 0:
        refuse(settings, "student_sampling_temperature", "use a positive temperature.")
    if settings.student_top_k < 0:
        refuse(settings, "student_top_k", "use 0 (off) or a positive k.")
    if not 0.0 < settings.student_top_p <= 1.0:
        refuse(settings, "student_top_p", "use a value in (0, 1]; 1.0 disables nucleus filtering.")
    if settings.student_num_beams < 1:
        refuse(settings, "student_num_beams", "use 1 or more beams.")
    if settings.student_do_sample and settings.student_num_beams > 1:
        refuse(settings, "student_num_beams", "beams need student_do_sample=False.")
    if settings.student_generation_cache not in ("auto", "dynamic", "static"):
        refuse(settings, "student_generation_cache", "use 'auto', 'dynamic' or 'static'.")


def check_teacher_source(settings, objective: Objective) -> None:
    """What the chosen teacher source (`teacher_source`) can serve: a top-k teacher (stored columns or a server)
    gives log-probabilities for the f-divergences, without a forward to fuse, its tail at temperature 1."""
    if settings.teacher_topk_mode not in TOPK_MODES:
        refuse(
            settings,
            "teacher_topk_mode",
            "use 'tail' (top k + one tail bucket: a lower bound) or 'renormalised' (top k renormalised).",
        )
    if settings.teacher_server is not None:
        parse_server_url(settings.teacher_server)  # one InputError, the URL's secrets masked, for a URL it is not
    if settings.teacher_server is not None and settings.teacher_topk_columns:
        refuse(
            settings,
            "teacher_topk_columns",
            "with teacher_server the server scores every completion set; unset teacher_topk_columns.",
        )
    source = settings.teacher_source
    if source.kind == "columns":
        check_topk_columns(settings, objective)
    if source.kind == "server":
        check_served_teacher(settings, objective)
    if source.is_topk:
        if settings.fused_divergence:
            refuse(
                settings,
                "fused_divergence",
                f"with {source.setting} there is no teacher forward to fuse; unset one.",
                True,
            )
        check_tail_temperature(
            settings.teacher_topk_mode,
            settings.loss_temperature,
            temperature_name="loss_temperature",
            mode_name="teacher_topk_mode",
        )
    if settings.teacher_sampling not in ("offline", "online"):
        refuse(settings, "teacher_sampling", "use 'offline' (dataset column) or 'online' (drawn each step).")
    if settings.teacher_dtype not in (None, "float32", "float16", "bfloat16", "float64", "auto"):
        refuse(settings, "teacher_dtype", "use float32, float16, bfloat16, float64 or leave unset.")


def check_topk_columns(settings, objective: Objective) -> None:
    """Stored top-k columns exist for the offline teacher samples only, and serve the f-divergences."""
    if not objective.topk_teacher:
        refuse(
            settings,
            "teacher_topk_columns",
            f"objective {settings.objective!r} needs the teacher's full distributions; top-k "
            "log-probabilities serve the f-divergences (objective='kl' from offline columns).",
        )
    if "student" in objective.scores or settings.teacher_sampling != "offline":
        refuse(
            settings,
            "teacher_topk_columns",
            f"objective {settings.objective!r} with teacher_sampling={settings.teacher_sampling!r} scores "
            "sequences drawn during training, and stored top-k log-probabilities exist only for the offline "
            "teacher samples (only a teacher that scores them at training time can give the rest). Use "
            "objective='kl' with teacher_sampling='offline', or pass the teacher model instead.",
        )


def check_served_teacher(settings, objective: Objective) -> None:
    """A served teacher gives top-k log-probabilities of samples it is sent; it draws none during training."""
    if not objective.topk_teacher:
        refuse(
            settings,
            "teacher_server",
            f"a served teacher gives its top-k log-probabilities, which serve the f-divergences "
            f"(kl/rkl/js/tvd); objective {settings.objective!r} needs the teacher model.",
        )
    if settings.needs_teacher_samples and settings.teacher_sampling != "offline":
        refuse(
            settings,
            "teacher_sampling",
            "a served teacher scores samples but does not draw them during training: draw the teacher "
            "samples first with `fdistill sample --teacher-server URL` and use teacher_sampling='offline'.",
        )


def check_teacher_server(settings) -> None:
    """The settings of the connection to ``teacher_server`` (the model name and key only with a server)."""
    if settings.teacher_server is None and settings.teacher_server_model is not None:
        refuse(settings, "teacher_server_model", "it names a model of teacher_server; set that too.")
    if settings.teacher_server_api_key is not None:
        if settings.teacher_server is None:
            refuse(settings, "teacher_server_api_key", "it is the key of teacher_server; set that too.", "<hidden>")
        if not str(settings.teacher_server_api_key).strip():
            refuse(
                settings, "teacher_server_api_key", f"give the key, or leave it unset (then {API_KEY_ENV} is read).", ""
            )
    if settings.teacher_server_topk < 1:
        refuse(settings, "teacher_server_topk", "use 1 or more log-probabilities per position.")
    if not (settings.teacher_server_timeout > 0 and math.isfinite(settings.teacher_server_timeout)):
        refuse(settings, "teacher_server_timeout", "use a positive number of seconds.")
    if settings.teacher_server_retries < 0:
        refuse(settings, "teacher_server_retries", "use 0 or more retries.")
    for name in ("teacher_server_batch_size", "teacher_server_concurrency"):
        if getattr(settings, name) < 1:
            refuse(settings, name, "use 1 or more.")


def check_student_server(settings, objective: Objective) -> None:
    """A student server draws the student's samples: only for an objective that scores them, sampling or greedy;
    its key only with it, its Python only with 'auto'."""
    url = settings.student_server
    if url is None:
        for name, shown in (("student_server_api_key", "<hidden>"), ("student_server_python", UNSET)):
            if getattr(settings, name) is not None:
                refuse(settings, name, "it belongs to student_server; set that too.", shown)
    else:
        if url != "auto":
            parse_server_url(url, "student_server")  # one InputError, the URL's secrets masked
        if "student" not in objective.scores:
            refuse(
                settings,
                "student_server",
                f"objective {settings.objective!r} draws no student samples; unset it (rkl, js, tvd and engine do).",
                redact_url(url),
            )
        if not settings.student_do_sample and settings.student_num_beams > 1:
            refuse(
                settings,
                "student_num_beams",
                "vLLM's completions API has no beam search; use 1 or unset student_server.",
            )
        if settings.student_server_python is not None and url != "auto":
            refuse(settings, "student_server_python", "it starts student_server='auto'; a URL's server runs already.")
    if settings.student_server_api_key is not None and not str(settings.student_server_api_key).strip():
        refuse(
            settings,
            "student_server_api_key",
            f"give the key, or leave it unset (then {STUDENT_API_KEY_ENV} is read).",
            "",
        )
    if settings.student_sync_every < 1:
        refuse(settings, "student_sync_every", "use 1 or more optimizer steps.")
    if not (settings.student_server_timeout > 0 and math.isfinite(settings.student_server_timeout)):
        refuse(settings, "student_server_timeout", "use a positive number of seconds.")


def check_nonfinite_policy(settings) -> None:
    """What a NaN/inf does."""
    if settings.on_nonfinite not in NONFINITE_POLICIES:
        refuse(settings, "on_nonfinite", "use 'error' (stop at the first NaN/inf) or 'skip' (drop and count).")


def check_lengths(settings) -> None:
    """Length limits of prompts, targets and samples."""
    for name in ("max_new_tokens", "max_prompt_length", "max_target_length"):
        if getattr(settings, name) < 1:
            refuse(settings, name, "use a positive length.")


def check_predistill_weights(settings) -> None:
    """Pre-distillation weights are >= 0 (`PreDistillation.check` wants one of them positive)."""
    for name in ("predistill_alpha_mle", "predistill_alpha_kd", "predistill_alpha_hidden"):
        if getattr(settings, name) < 0:
            refuse(settings, name, "weights must be >= 0.")


def check_cross_tokenizer_settings(settings) -> None:
    """The weight of the distillation term of the cross-tokenizer baselines (uld, hybrid)."""
    if settings.uld_weight < 0:
        refuse(settings, "uld_weight", "use a weight >= 0 (0 = the cross-entropy on teacher samples alone).")


def check_fused(settings, objective: Objective) -> None:
    """The fused divergence computes the f-divergences only, in chunks of a positive size."""
    if settings.fused_divergence and not objective.fusable:
        refuse(
            settings,
            "fused_divergence",
            f"it computes kl/rkl/js/tvd only; objective {settings.objective!r} "
            "uses materialised logits (leave it unset or False).",
        )
    if settings.fused_chunk_size is not None and settings.fused_chunk_size < 1:
        refuse(settings, "fused_chunk_size", "use a positive number of tokens or leave it unset.")


def check_rollout_reuse(settings, objective: Objective) -> None:
    """Reused (``steps_per_generation > 1``, ``num_iterations > 1``) or overlapped (``rollout_overlap``) student
    samples are reweighted by prefix importance weights (:mod:`fdistill.lm.importance`): they need a sampling
    density (ancestral sampling, no top-k/top-p filter), materialised logits, an objective that applies the weights,
    and for overlap a server (and no ``num_iterations``: its later passes draw nothing to overlap)."""
    k, mu = settings.steps_per_generation, settings.num_iterations
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        refuse(settings, "steps_per_generation", "use a whole number >= 1 (1 = fresh samples every step).")
    if isinstance(mu, bool) or not isinstance(mu, int) or mu < 1:
        refuse(settings, "num_iterations", "use a whole number >= 1 (1 = every sample trains one step).")
    check_cap(settings.importance_weight_cap)
    server = getattr(settings, "student_server", None)
    if settings.rollout_overlap and server is None:
        refuse(settings, "rollout_overlap", "it draws on the student server while training: set student_server.")
    if mu > 1 and settings.rollout_overlap:
        refuse(
            settings,
            "num_iterations",
            "the steps after a generation's first pass train on samples already drawn, so there is no next draw to "
            "overlap: use num_iterations=1 with rollout_overlap, or rollout_overlap=False.",
        )
    if k == 1 and mu == 1 and not settings.rollout_overlap:
        return
    setting = "steps_per_generation" if k > 1 else "num_iterations" if mu > 1 else "rollout_overlap"
    if "student" not in objective.scores:
        refuse(
            settings, setting, f"objective {settings.objective!r} scores no student samples; leave it at its default."
        )
    if not objective.importance_weighted:
        refuse(
            settings,
            setting,
            f"objective {settings.objective!r} does not apply importance weights to reused student samples "
            "(Objective.importance_weighted); leave it at its default.",
        )
    if not settings.student_do_sample:
        refuse(
            settings, setting, "reused samples are reweighted by their sampling density: use student_do_sample=True."
        )
    if settings.student_top_k or settings.student_top_p < 1.0:
        refuse(
            settings,
            setting,
            "top-k/top-p filters change their support with the weights, so the importance weights are undefined: "
            "use student_top_k=0 and student_top_p=1.0.",
        )
    if settings.fused_divergence:
        refuse(
            settings, "fused_divergence", "the importance weights need the student's logits: leave it unset or False."
        )
    if server is not None and settings.student_sampling_temperature != 1.0:
        refuse(
            settings,
            "student_sampling_temperature",
            "a vLLM server returns the untempered log-probabilities the weights divide by: use 1.0 with a student "
            "server and reused samples.",
        )


# ------------------------------------------------------------------ the teacher source, resolved once


def check_batch_memory(settings, vocab_size: int, training_args=None, may_fuse: bool = True) -> None:
    """Refuse per-device batch sizes whose student logits at the length limit exceed all the memory here.

    The rule: ``batch × length × vocab_size × 4`` bytes — the float32 student logits of one batch of the longest
    completion set the objective scores (``length``: max_target_length for references and offline teacher
    samples, max_new_tokens for samples drawn in training); the teacher's logits, the gradients and the
    activations come on top — must fit in the machine's RAM plus all its GPUs' memory
    (`fdistill.checks.batch_fits`). The batch sizes are ``training_args``' (default: these settings', as in
    `FDistillConfig`). Called by the trainer once the model's vocabulary is known, before training. The fused
    path (``fused_divergence``: set, or unset on CUDA) never materialises those logits, so it has no such bound;
    ``may_fuse=False`` (across tokenizers, where nothing is fused) checks the logits whatever the settings say.
    """
    import torch

    from fdistill.checks import batch_fits

    fused = settings.fused_divergence or (settings.fused_divergence is None and torch.cuda.is_available())
    if may_fuse and fused and settings.objective_spec.fusable and not settings.teacher_source.is_topk:
        return
    offline = settings.needs_reference or (settings.needs_teacher_samples and settings.reads_teacher_samples)
    drawn = settings.needs_student_samples or (settings.needs_teacher_samples and not settings.reads_teacher_samples)
    length = max(
        [settings.max_target_length] * offline + [settings.max_new_tokens] * drawn or [settings.max_target_length]
    )
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
        batch = getattr(
            training_args or settings, name, None
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


def check_training_settings(config) -> None:
    """Training settings transformers accepts but that cannot be meant (zero or negative counts, a learning rate
    of 0, seeds outside [0, 2^32)), each one `InputError` naming the setting and the fix, before any work."""

    def bad(name, fix):
        raise invalid(name, getattr(config, name), fix)

    def number(name):  # a value that is no number at all is left to transformers' own message
        value = getattr(config, name)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if number(name) is not None and number(name) < 1:
            bad(name, "use 1 or more.")
    if number("max_steps") is not None and (config.max_steps == 0 or config.max_steps < -1):
        bad("max_steps", "use a positive number of optimizer steps, or -1 to train for num_train_epochs.")
    epochs = number("num_train_epochs")
    if config.max_steps is not None and config.max_steps < 1 and epochs is not None:
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
            and _strategy(getattr(config, strategy)) == "steps"
        ):
            bad(name, f"use a positive number of steps (or a fraction in (0, 1) of the run) with {strategy}='steps'.")
    if number("eval_steps") is not None and not (math.isfinite(config.eval_steps) and config.eval_steps > 0):
        bad(
            "eval_steps",
            "use a positive number of steps (or a fraction in (0, 1) of the run), or leave it unset "
            "to evaluate every logging_steps.",
        )
    if number("save_total_limit") is not None and config.save_total_limit < 1:
        bad("save_total_limit", "use 1 or more checkpoints to keep, or leave it unset to keep all.")
    for name in ("seed", "data_seed"):
        if number(name) is not None and not 0 <= getattr(config, name) < 2**32:
            bad(name, "use a whole number in [0, 2^32).")
    if number("label_smoothing_factor") is not None and config.label_smoothing_factor != 0:
        bad("label_smoothing_factor", "fdistill's objectives do not use it (the loss is the objective's); leave it 0.")
    if number("dataloader_num_workers") is not None and config.dataloader_num_workers < 0:
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
