"""Students made from teachers: alternating-layer copies (Shleifer & Rush 2020) and PEFT wrapping.

A student is the teacher with fewer layers: same class, same vocabulary, same width,
all non-layer weights (embeddings, positional embeddings, final norms, LM head)
copied, and a chosen subset of the teacher's layers copied into consecutive student
layers — "shrink and fine-tune" (SFT) initialisation, the starting point of
pre-distillation. Which teacher layer each student layer came from is recorded on
``student.config.fdistill_teacher_layers`` so hidden states can be matched later.

``wrap_with_lora`` / ``merge_lora`` are thin helpers around peft for training a
low-rank adapter instead of (or on top of) a copied student.

References:
    Shleifer & Rush, "Pre-trained Summarization Distillation", arXiv:2010.13002 (2020).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from fdistill.errors import InputError

__all__ = ["LAYER_LISTS", "pick_layers", "create_student_from_teacher", "wrap_with_lora", "merge_lora"]

# Where each family keeps its layers: model_type -> {stack: (module name, config field with the layer count)}.
# A module name matches the full dotted name or its tail ("layers" matches "model.layers"), so the
# same entry works for the bare model and for the model with an LM head. Decoder-only models use the
# single stack "decoder". Families missing here fall back to a search (see `_find_stacks`); add an
# entry here for any other layout.
LAYER_LISTS: dict[str, dict[str, tuple[str, str]]] = {
    "gpt2": {"decoder": ("h", "n_layer")},
    "llama": {"decoder": ("layers", "num_hidden_layers")},
    "bart": {"encoder": ("encoder.layers", "encoder_layers"), "decoder": ("decoder.layers", "decoder_layers")},
    "t5": {"encoder": ("encoder.block", "num_layers"), "decoder": ("decoder.block", "num_decoder_layers")},
}

# Config fields holding one entry per decoder layer (attention kind, NoPE flags, ...): sliced with the layers.
_PER_LAYER_FIELDS = ("layer_types", "mlp_layer_types", "no_rope_layers")


def pick_layers(n_teacher: int, n_student: int) -> list[int]:
    r"""Evenly spaced teacher layer indices for a student, always keeping the first and last.

    .. math:: \ell_i = \operatorname{round}\left(i \cdot \frac{n_\text{teacher} - 1}{n_\text{student} - 1}\right),
              \quad i = 0, \dots, n_\text{student} - 1

    and ``[0]`` for a one-layer student (as in Shleifer & Rush's ``LAYERS_TO_COPY`` table).

    References:
        Shleifer & Rush, "Pre-trained Summarization Distillation", arXiv:2010.13002 (2020).

    Arguments:
        n_teacher: number of layers of the teacher stack.
        n_student: number of layers the student stack keeps, ``1 <= n_student <= n_teacher``.

    Example:
        >>> pick_layers(12, 3)
        [0, 6, 11]
        >>> pick_layers(30, 4)
        [0, 10, 19, 29]
    """
    if not 1 <= n_student <= n_teacher:
        raise InputError(
            f"cannot pick {n_student} student layers out of {n_teacher} teacher layers; "
            f"choose a number of student layers between 1 and {n_teacher}"
        )
    if n_student == 1:
        return [0]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def create_student_from_teacher(
    teacher: PreTrainedModel,
    *,
    layers: Sequence[int] | None = None,
    num_layers: int | None = None,
    encoder_layers: Sequence[int] | None = None,
    decoder_layers: Sequence[int] | None = None,
    num_encoder_layers: int | None = None,
    num_decoder_layers: int | None = None,
) -> PreTrainedModel:
    r"""A smaller copy of ``teacher`` keeping a subset of its layers (shrink and fine-tune initialisation).

    The student has the teacher's class and config except for the layer counts. Every
    non-layer weight is copied; student layer ``j`` of a stack is a copy of teacher layer
    ``layers[j]``. The choice is recorded as ``student.config.fdistill_teacher_layers``
    (``{"decoder": [...]}``, plus ``"encoder"`` for encoder–decoders); it survives
    ``save_pretrained`` / ``from_pretrained``. A number of layers picks them with
    :func:`pick_layers` (first, last and evenly spaced between, e.g. 12 → 3 copies 0, 6, 11).

    References:
        Shleifer & Rush, "Pre-trained Summarization Distillation", arXiv:2010.13002 (2020).

    Arguments:
        teacher: a transformers model (GPT-2, Llama-like, BART-like, T5, or any family listed in
            :data:`LAYER_LISTS` or found by the fallback search).
        layers: decoder-only models: the teacher layer indices to keep, strictly increasing.
        num_layers: decoder-only models: how many layers to keep (instead of ``layers``).
        encoder_layers: encoder–decoders: encoder layer indices to keep (default: all).
        decoder_layers: encoder–decoders: decoder layer indices to keep (default: all).
        num_encoder_layers: encoder–decoders: how many encoder layers to keep (instead of ``encoder_layers``).
        num_decoder_layers: encoder–decoders: how many decoder layers to keep (instead of ``decoder_layers``).

    Returns:
        A new model with its own weights (nothing shared with the teacher), on the teacher's
        device, in the teacher's dtype and train/eval mode.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> teacher = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=32, n_head=2, vocab_size=100))
        >>> student = create_student_from_teacher(teacher, num_layers=3)
        >>> student.config.n_layer, student.config.fdistill_teacher_layers
        (3, {'decoder': [0, 6, 11]})
    """
    stacks = _find_stacks(teacher)  # {stack: (module name, config field, ModuleList)}
    requests = _layer_requests(
        teacher, layers, num_layers, encoder_layers, decoder_layers, num_encoder_layers, num_decoder_layers
    )
    chosen = {}  # stack -> teacher layer indices, in student order
    for stack, (_, _, modules) in stacks.items():
        arg, indices, num_arg, num = requests[stack]
        chosen[stack] = _resolve_layers(len(modules), indices, num, arg, num_arg)

    student = type(teacher)(_student_config(teacher, stacks, chosen))
    student.to(device=teacher.device, dtype=teacher.dtype)
    student.load_state_dict(_student_state_dict(teacher, student, stacks, chosen), strict=True)
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.train(teacher.training)


def _layer_requests(
    teacher: PreTrainedModel,
    layers: Sequence[int] | None,
    num_layers: int | None,
    encoder_layers: Sequence[int] | None,
    decoder_layers: Sequence[int] | None,
    num_encoder_layers: int | None,
    num_decoder_layers: int | None,
) -> dict[str, tuple[str, Sequence[int] | None, str, int | None]]:
    """The layers asked for, per stack: ``{stack: (indices argument, indices, count argument, count)}``; arguments
    of the other kind of model, or no choice at all, are refused."""
    if teacher.config.is_encoder_decoder:
        if layers is not None or num_layers is not None:
            raise InputError(
                f"{type(teacher).__name__} is an encoder-decoder: `layers=` / `num_layers=` are for decoder-only "
                "models; pass encoder_layers= / num_encoder_layers= and decoder_layers= / num_decoder_layers="
            )
        if all(x is None for x in (encoder_layers, decoder_layers, num_encoder_layers, num_decoder_layers)):
            raise InputError(
                "no layers chosen: pass encoder_layers= / num_encoder_layers= and/or "
                "decoder_layers= / num_decoder_layers="
            )
        return {
            "encoder": ("encoder_layers", encoder_layers, "num_encoder_layers", num_encoder_layers),
            "decoder": ("decoder_layers", decoder_layers, "num_decoder_layers", num_decoder_layers),
        }
    if any(x is not None for x in (encoder_layers, decoder_layers, num_encoder_layers, num_decoder_layers)):
        raise InputError(
            f"{type(teacher).__name__} is decoder-only: the encoder_*/decoder_* arguments are for "
            "encoder-decoders; pass layers= or num_layers="
        )
    if layers is None and num_layers is None:
        raise InputError("no layers chosen: pass layers=[...] (teacher layer indices) or num_layers=N")
    return {"decoder": ("layers", layers, "num_layers", num_layers)}


def _student_config(teacher: PreTrainedModel, stacks: dict, chosen: dict[str, list[int]]):
    """The teacher's config with the student's layer counts, its per-layer lists sliced to the chosen layers, and
    the choice recorded as ``fdistill_teacher_layers``."""
    config = copy.deepcopy(teacher.config)
    for stack, (_, field, _) in stacks.items():
        setattr(config, field, len(chosen[stack]))
    if not teacher.config.is_encoder_decoder:  # per-layer lists (attention kind, NoPE flags) follow the layers
        n_teacher = len(stacks["decoder"][2])
        for field in _PER_LAYER_FIELDS:
            value = getattr(config, field, None)
            if isinstance(value, (list, tuple)) and len(value) == n_teacher:
                setattr(config, field, [value[i] for i in chosen["decoder"]])
    config.fdistill_teacher_layers = {stack: list(chosen[stack]) for stack in stacks}
    return config


def wrap_with_lora(
    model: PreTrainedModel,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    **kwargs,
):
    r"""Wrap ``model`` with LoRA adapters (peft); only the adapters are trainable.

    Each targeted weight ``W`` becomes ``W + (alpha / r) · B A`` with ``A: r × in``,
    ``B: out × r``, ``B`` initialised to zero (Hu et al. 2021, arXiv:2106.09685). The task
    type is ``SEQ_2_SEQ_LM`` for encoder–decoders and ``CAUSAL_LM`` otherwise.

    Arguments:
        model: a transformers model (a teacher, or a student from :func:`create_student_from_teacher`).
        r: adapter rank.
        alpha: LoRA scaling numerator (``lora_alpha``).
        dropout: dropout on the adapter input (``lora_dropout``).
        target_modules: module names to adapt; ``"all-linear"`` adapts every linear layer but the LM head.
        **kwargs: any other ``peft.LoraConfig`` field (``modules_to_save``, ``use_rslora``, ...).

    Returns:
        A ``peft.PeftModel``.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100))
        >>> peft_model = wrap_with_lora(model, r=4)
        >>> all("lora_" in name for name, p in peft_model.named_parameters() if p.requires_grad)
        True
    """
    from peft import LoraConfig, TaskType, get_peft_model

    task_type = TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else TaskType.CAUSAL_LM
    lora_config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type=task_type, **kwargs
    )
    return get_peft_model(model, lora_config)


def merge_lora(model) -> PreTrainedModel:
    """Fold LoRA adapters into the base weights and return the plain transformers model.

    ``W ← W + (alpha / r) · B A`` for every adapted weight (peft's ``merge_and_unload``); the
    result has no peft modules and gives the same outputs as the wrapped model.

    Arguments:
        model: a ``peft.PeftModel`` from :func:`wrap_with_lora`.

    Example:
        >>> plain = merge_lora(wrap_with_lora(student, r=4))  # doctest: +SKIP
        >>> plain.save_pretrained("student")  # doctest: +SKIP
    """
    if not hasattr(model, "merge_and_unload"):
        raise InputError(f"merge_lora needs a peft model (from wrap_with_lora), got {type(model).__name__}")
    return model.merge_and_unload()


# ----------------------------------------------------------------------------- helpers


def _resolve_layers(n_teacher: int, layers: Sequence[int] | None, num: int | None, arg: str, num_arg: str) -> list[int]:
    """The teacher indices to keep in one stack, from either an explicit list or a count (default: all)."""
    if layers is not None and num is not None:
        raise InputError(f"pass either {arg}= or {num_arg}=, not both (got {arg}={list(layers)}, {num_arg}={num})")
    if num is not None:
        return pick_layers(n_teacher, num)
    if layers is None:
        return list(range(n_teacher))
    layers = [int(i) for i in layers]
    if not layers:
        raise InputError(f"{arg}= is empty; keep at least one of the teacher's {n_teacher} layers")
    bad = [i for i in layers if not 0 <= i < n_teacher]
    if bad:
        raise InputError(
            f"{arg}={layers} has indices {bad} out of range: the teacher has {n_teacher} layers, "
            f"use indices 0..{n_teacher - 1}"
        )
    if any(a >= b for a, b in zip(layers, layers[1:])):
        raise InputError(f"{arg}={layers} must be strictly increasing (each teacher layer at most once, in order)")
    return layers


def _find_stacks(model: PreTrainedModel) -> dict[str, tuple[str, str, nn.ModuleList]]:
    """``{stack: (module name, config field, ModuleList)}`` for the model's layer stacks."""
    config = model.config
    modules = {name: module for name, module in model.named_modules() if isinstance(module, nn.ModuleList)}

    def lookup(suffix: str) -> list[str]:
        return [name for name in modules if name == suffix or name.endswith("." + suffix)]

    table = LAYER_LISTS.get(config.model_type)
    if table is None and config.is_encoder_decoder:
        table = {"encoder": ("encoder.layers", "encoder_layers"), "decoder": ("decoder.layers", "decoder_layers")}
    if table is not None:
        stacks = {}
        for stack, (suffix, field) in table.items():
            names = lookup(suffix)
            count = getattr(config, field, None)
            if len(names) == 1 and len(modules[names[0]]) == count:
                stacks[stack] = (names[0], field, modules[names[0]])
        if len(stacks) == len(table):
            return stacks
    elif not config.is_encoder_decoder:
        # Fallback for decoder-only families: the one top-level ModuleList of num_hidden_layers
        # blocks (ModuleLists inside another ModuleList are sub-layers, not the stack).
        count = getattr(config, "num_hidden_layers", None)
        top = [n for n in modules if not any(n.startswith(other + ".") for other in modules)]
        names = [n for n in top if len(modules[n]) == count]
        if len(names) == 1:
            return {"decoder": (names[0], "num_hidden_layers", modules[names[0]])}
    raise InputError(
        f"cannot find the layer stack(s) of {type(model).__name__} (model_type={config.model_type!r}); "
        "add an entry for it to fdistill.lm.student.LAYER_LISTS: "
        "{stack: (ModuleList name, config field with its layer count)}"
    )


def _student_state_dict(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    stacks: dict[str, tuple[str, str, nn.ModuleList]],
    chosen: dict[str, list[int]],
) -> dict[str, torch.Tensor]:
    """The teacher's weights under the student's names.

    Non-layer keys are taken as they are; ``<stack>.<j>.rest`` comes from ``<stack>.<layers[j]>.rest``.
    A weight only the layer at one position has (T5 keeps the relative attention bias in block 0)
    is taken from the teacher layer at that same position, so student block 0 keeps the teacher's
    block-0 bias whichever block it copies.
    """
    source = teacher.state_dict()
    patterns = {name: re.compile(re.escape(name) + r"\.(\d+)\.(.*)") for name, _, _ in stacks.values()}
    layer_of = {name: chosen[stack] for stack, (name, _, _) in stacks.items()}
    state = {}
    for key in student.state_dict():
        for name, pattern in patterns.items():
            match = pattern.fullmatch(key)
            if match:
                j, rest = int(match.group(1)), match.group(2)
                candidates = [f"{name}.{layer_of[name][j]}.{rest}", f"{name}.{j}.{rest}"]
                break
        else:
            candidates = [key]
        found = next((c for c in candidates if c in source), None)
        if found is None:
            raise ValueError(f"no teacher weight for student weight {key!r} (looked for {candidates})")
        state[key] = source[found]
    return state
