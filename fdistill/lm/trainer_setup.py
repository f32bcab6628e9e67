"""What the trainer checks and builds before training: the default collator, the datasets' checks, the teacher.

Each refusal here is one `InputError` raised before any work: a dataset without the columns the objective reads,
an empty one, all-empty targets (:func:`check_datasets`); a teacher of another kind than the student
(:func:`load_teacher`). The teacher is loaded (from a name or path with the student's architecture class), frozen and
its vocabulary compared with the student's; placing it (one device, or sharded) is the trainer's.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel

from fdistill.errors import InputError
from fdistill.lm.config import TOPK_COLUMNS, DistillArguments
from fdistill.lm.data import DistillCollator, check_prompts
from fdistill.lm.loading import resolve_dtype, shared_vocab_size
from fdistill.lm.logits_cache import CACHE_COLUMNS, is_cache
from fdistill.torch_utils import base_model


def vocab_size(model: nn.Module) -> int:
    """Rows of the model's LM head."""
    return base_model(model).get_output_embeddings().weight.shape[0]


def completion_columns(settings: DistillArguments) -> dict[str, str]:
    """The dataset columns of the completion sets the objective reads: ``{set name: column}``."""
    columns = {}
    if settings.needs_reference:
        columns["reference"] = settings.reference_column
    if settings.reads_teacher_samples:
        columns["teacher"] = settings.teacher_sample_column
    return columns


def default_collator(tokenizer, settings: DistillArguments, is_encoder_decoder: bool, model: nn.Module):
    """The :class:`~fdistill.lm.data.DistillCollator` of these settings, token ids past ``model``'s head refused."""
    return DistillCollator(
        tokenizer,
        is_encoder_decoder=is_encoder_decoder,
        prompt_column=settings.prompt_column,
        completions=completion_columns(settings),
        optional_completions={"reference": settings.reference_column},  # for compute_metrics when present
        max_prompt_length=settings.max_prompt_length,
        max_target_length=settings.max_target_length,
        use_chat_template=settings.use_chat_template,
        topk_columns=TOPK_COLUMNS if settings.teacher_source.kind == "columns" else None,
        vocab_size=vocab_size(model),
    )


def named_datasets(train_dataset, eval_dataset) -> list[tuple[str, object]]:
    """``[(split name, dataset), ...]``: the train dataset and every eval one (a dict of them, as the Trainer
    allows, is named ``eval[KEY]``); None where not given."""
    named = [("train", train_dataset)]
    if isinstance(eval_dataset, dict):  # several eval sets, as the Trainer allows
        named += [(f"eval[{k}]", v) for k, v in eval_dataset.items()]
    else:
        named.append(("eval", eval_dataset))
    return named


def check_datasets(settings, train_dataset, eval_dataset, collator) -> None:
    """Fail before any work on: missing columns, empty datasets, all-empty targets."""
    needed = [settings.prompt_column, *completion_columns(settings).values()]
    topk = settings.teacher_source.kind == "columns"
    for split, dataset in named_datasets(train_dataset, eval_dataset):
        if dataset is None:
            continue
        names = getattr(dataset, "column_names", None)
        if names is not None:
            # the cache format (fdistill.lm.logits_cache) or the older float columns
            topk_columns = (CACHE_COLUMNS if is_cache(names) else TOPK_COLUMNS) if topk else ()
            missing = [c for c in [*needed, *topk_columns] if c not in names]
            if missing:
                hint = ""
                if settings.teacher_sample_column in missing:
                    hint = " Draw offline teacher samples first (`fdistill sample`) or set teacher_sample_column."
                elif set(TOPK_COLUMNS) & set(missing):
                    hint = " Draw teacher samples with `fdistill sample --topk-logprobs K` to store them."
                raise InputError(
                    f"the {split} dataset lacks column(s) {missing} needed by objective {settings.objective!r}; "
                    f"it has {names}.{hint}"
                )
        if len(dataset) == 0:
            raise InputError(f"the {split} dataset is empty; give it at least one example.")
        if names is not None:  # every prompt, whatever the objective reads besides (None, blank, numbers refused)
            check_prompts(dataset[settings.prompt_column], settings.prompt_column)
        completions = completion_columns(settings)
        if completions:
            probe = [dataset[i] for i in range(min(len(dataset), 256))]
            batch = collator(probe)
            for name in completions:
                if not batch[f"{name}_mask"].any():
                    raise InputError(
                        f"every {name} target in the first {len(probe)} {split} examples is empty, so all labels "
                        f"would be masked; check column {completions[name]!r}."
                    )


def saved_tokenizer(name_or_path: str):
    """The tokenizer saved with a teacher name or path, or None when it has none (then only the heads are checked)."""
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError):
        return None


def teacher_dtype(settings: DistillArguments, student: nn.Module) -> torch.dtype:
    """The teacher's dtype: ``teacher_dtype`` when set, else the student's."""
    if settings.teacher_dtype not in (None, "auto"):
        return resolve_dtype(settings.teacher_dtype)
    return next(student.parameters()).dtype


def load_teacher(
    teacher: PreTrainedModel | str | None,
    teacher_tokenizer,
    student: nn.Module,
    settings: DistillArguments,
    tokenizer,
    across_tokenizers: bool = False,
) -> tuple[nn.Module, torch.dtype, int | None]:
    """The teacher (loaded from a name or path with the student's architecture class), frozen and in eval mode, not
    yet placed; its dtype; and the vocabulary entries both models are compared on
    (:func:`fdistill.lm.loading.shared_vocab_size`, checked against the student's ``tokenizer``) — None
    ``across_tokenizers``, where each model keeps its own vocabulary (:mod:`fdistill.lm.cross_batches`)."""
    if teacher is None:
        raise InputError(f"objective {settings.objective!r} needs a teacher: pass teacher_model= (a model or a path).")
    student = base_model(student)
    dtype = teacher_dtype(settings, student)
    if isinstance(teacher, str):
        if teacher_tokenizer is None:
            teacher_tokenizer = saved_tokenizer(teacher)
        auto = AutoModelForSeq2SeqLM if student.config.is_encoder_decoder else AutoModelForCausalLM
        teacher = auto.from_pretrained(teacher, dtype=dtype)
    if bool(teacher.config.is_encoder_decoder) != bool(student.config.is_encoder_decoder):
        raise InputError("teacher and student must both be encoder–decoders or both decoder-only.")
    rows = (vocab_size(student), vocab_size(teacher))
    shared = None if across_tokenizers else shared_vocab_size(*rows, tokenizer, teacher_tokenizer)
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher, dtype, shared


def shard_frozen(accelerator, model: nn.Module) -> nn.Module:
    """``model`` sharded with FSDP2 as accelerate shards the student (``fully_shard`` on each decoder layer, the
    embeddings and head, then the root), so each of N processes holds 1/N of its weights and all-gathers a layer
    only for its forward. ``prepare_model(evaluation_mode=True)`` would leave it whole on every process."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    plugin = accelerator.state.fsdp_plugin
    # fsdp2_prepare_model fixes the plugin's wrap policy to the layer classes of the model it is given; restore it
    # so that the student, prepared later by the Trainer, gets its own (it may be of another family)
    kept = plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap
    try:
        return fsdp2_prepare_model(accelerator, model)
    finally:
        plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap = kept
