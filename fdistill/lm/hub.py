"""Model cards and Hub upload for distilled students.

:func:`save_model_card` writes ``README.md`` into the run's ``output_dir``: Hub metadata
(teacher as ``base_model``, tags, license, datasets) and a body that says what the student
is (teacher, objective, settings, sizes, data, training, final metrics, usage, citation).
``FDistillTrainer.create_model_card`` calls it, so ``trainer.push_to_hub()`` uploads the
student, its tokenizer and this card with the ordinary ``transformers`` machinery.
Every section degrades gracefully: no teacher (MLE/SeqKD), no eval set, no logs yet.

References: Wen et al. 2023, "f-Divergence Minimization for Sequence-Level Knowledge
Distillation" (ACL, arXiv:2305.15718).
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import torch
import transformers
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from fdistill._version import __version__
from fdistill.errors import InputError
from fdistill.lm.config import DistillArguments
from fdistill.torch_utils import base_model as _base_model
from fdistill.torch_utils import unwrap

# Seconds the pre-flight check of a Hub upload waits for the Hub's answer (huggingface_hub itself waits forever).
HUB_CHECK_TIMEOUT = 10.0


def hub_repo_id(args) -> str:
    """The repo a `Trainer` with ``push_to_hub`` uploads to: ``hub_model_id``, else the name of ``output_dir``."""
    return args.hub_model_id or Path(args.output_dir).absolute().name


def check_hub_push(
    repo_id: str, *, token: str | None = None, repo_type: str = "model", what: str = "push_to_hub"
) -> str:
    """Check before any work that ``repo_id`` can be uploaded to; return the name of the account that will upload.

    In order, each failure one `InputError` naming the problem and the fix: the repo id's syntax (huggingface_hub's
    validator), offline mode (``HF_HUB_OFFLINE=1``), no token, a Hub endpoint (``HF_ENDPOINT``) that cannot be
    reached within `HUB_CHECK_TIMEOUT` seconds, a token the Hub refuses (401) or that is read-only, and a namespace
    that is neither the account's nor one of its organisations'. The repo itself is not created here.

    Arguments:
        repo_id: ``name`` (the account's namespace) or ``namespace/name``.
        token: a Hub token; default: huggingface_hub's (``HF_TOKEN`` or ``hf auth login``).
        repo_type: "model" or "dataset" (said in the messages).
        what: the setting that asked for the upload, named in the messages.
    """
    import requests
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import build_hf_headers

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise InputError(
            f"{what}: the {repo_type} repo id {repo_id!r} is not valid ({str(error).splitlines()[0]}): give "
            "'name' or 'namespace/name' of letters, digits, '-', '_' and '.'."
        ) from None
    if constants.HF_HUB_OFFLINE:
        raise InputError(
            f"{what}: uploading to the Hub is impossible offline (HF_HUB_OFFLINE=1 is set): unset HF_HUB_OFFLINE to "
            f"upload {repo_id!r}, or drop {what}."
        )
    token = token or get_token()
    if not token:
        raise InputError(
            f"{what}: no Hub token, so {repo_id!r} cannot be uploaded: log in with `hf auth login`, set HF_TOKEN "
            f"(or hub_token), or drop {what}."
        )
    endpoint = constants.ENDPOINT
    try:
        answer = requests.get(
            f"{endpoint}/api/whoami-v2", headers=build_hf_headers(token=token), timeout=HUB_CHECK_TIMEOUT
        )
    except requests.RequestException as error:
        reason = type(error).__name__ if isinstance(error, requests.Timeout) else str(error).splitlines()[0][:200]
        raise InputError(
            f"{what}: the Hub at {endpoint} cannot be reached ({reason}): check the network and HF_ENDPOINT, "
            f"or drop {what}."
        ) from None
    if answer.status_code in (401, 403):
        raise InputError(
            f"{what}: the Hub at {endpoint} refused the token ({answer.status_code} {answer.reason}): log in again "
            f"with `hf auth login --force` or set a valid write token in HF_TOKEN (or hub_token), or drop {what}."
        )
    try:
        answer.raise_for_status()
        account = answer.json()
        name = account["name"]
    except (requests.RequestException, ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"{what}: the Hub at {endpoint} gave no account for the token ({answer.status_code} "
            f"{str(error).splitlines()[0][:200] if str(error) else type(error).__name__}): check HF_ENDPOINT and "
            f"the token, or drop {what}."
        ) from None
    role = ((account.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise InputError(
            f"{what}: the Hub token of {name!r} is read-only, so {repo_id!r} cannot be uploaded: use a write token "
            f"(HF_TOKEN, hub_token or `hf auth login`), or drop {what}."
        )
    namespace = repo_id.split("/")[0] if "/" in repo_id else name
    allowed = {name} | {org.get("name") for org in account.get("orgs") or [] if isinstance(org, dict)}
    if namespace not in allowed:
        raise InputError(
            f"{what}: {name!r} cannot write to the namespace {namespace!r} of {repo_id!r} (it can write to "
            f"{sorted(a for a in allowed if a)}): give a repo id in one of those, or log in as a member."
        )
    return name


_PAPER = "[f-DISTILL](https://arxiv.org/abs/2305.15718) (Wen et al., ACL 2023)"

# Metrics the trainer logs (train and eval_*), and what they mean.
METRIC_MEANING = {
    "loss": "the training objective",
    "train_loss": "the objective averaged over the whole run",
    "loss_on_teacher_samples": "divergence term on offline teacher samples",
    "loss_on_student_samples": "divergence term on online student samples",
    "student_entropy": "mean per-token entropy of the student on its own samples (nats)",
    "student_sample_length": "mean length of the student's online samples (tokens)",
    "teacher_nll_of_student_samples": "teacher's negative log-likelihood of student samples (nats per sequence)",
    "loss_mle": "pre-distillation: cross-entropy on references",
    "loss_kd": "pre-distillation: word-level KL(p‖q) on references",
    "loss_hidden": "pre-distillation: hidden-state MSE",
}

# `datasets` builders that read local files: their name says nothing about where the data came from.
PACKAGED_BUILDERS = {
    "arrow",
    "audiofolder",
    "csv",
    "generator",
    "imagefolder",
    "json",
    "pandas",
    "parquet",
    "sql",
    "text",
    "videofolder",
    "webdataset",
}

CITATION = """\
@inproceedings{wen2023fdistill,
  title     = {f-Divergence Minimization for Sequence-Level Knowledge Distillation},
  author    = {Wen, Yuqiao and Li, Zichao and Du, Wenyu and Mou, Lili},
  booktitle = {Proceedings of the 61st Annual Meeting of the Association for Computational Linguistics (ACL)},
  year      = {2023},
  eprint    = {2305.15718},
  archivePrefix = {arXiv},
}"""


def save_model_card(
    trainer,
    *,
    model_name: str | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    tags: str | list[str] | None = None,
    finetuned_from: str | None = None,
    dataset: str | list[str] | None = None,
    write: bool = True,
    **ignored,
) -> str:
    """Write ``README.md`` for the distilled student into ``trainer.args.output_dir`` and return its text.

    The YAML front matter holds ``base_model`` (the teacher, or ``finetuned_from``; for a
    PEFT student the adapter's base model), ``library_name``, tags (``fdistill``,
    ``distillation``, ``knowledge-distillation``, the objective and ``tags``), ``license``,
    ``language`` and ``datasets``; names that are local paths, not Hub ids, stay out of it.

    Arguments:
        trainer: an ``FDistillTrainer`` (or a Trainer with the ``FDistillMixin``), trained or not.
        model_name: title of the card; default: the Hub repo name or the output folder's name.
        language: language code(s) of the data.
        license: license identifier (e.g. ``"apache-2.0"``).
        tags: extra Hub tags.
        finetuned_from: overrides ``base_model`` (by default the teacher's name, else the
            name of the weights the student started from).
        dataset: Hub id(s) of the training data; default: the train dataset's own name, if any.
        write: write README.md (False: only return the text, as for a checkpoint pushed while training).
        ignored: the other ``Trainer.create_model_card`` arguments (tasks, dataset_tags, ...), unused.

    Returns:
        The card's text (front matter and body), as written.
    """
    a: DistillArguments = trainer.distill_args
    model = unwrap(trainer.model)
    student = _base_model(model)
    peft_base = _peft_base_name(model)
    teacher = getattr(trainer, "teacher", None)
    teacher_name = _name(teacher)
    served = getattr(trainer, "teacher_server", None)
    if teacher_name is None and served is not None:  # a served teacher: the model its server loaded
        teacher_name = served.model.root or served.model.name
    repo_id = getattr(trainer, "hub_model_id", None) or trainer.args.hub_model_id
    title = model_name or (repo_id or os.path.abspath(trainer.args.output_dir)).rstrip("/").split("/")[-1]

    base_model = finetuned_from or (peft_base if peft_base else teacher_name) or _name(student)
    datasets = [dataset] if isinstance(dataset, str) else list(dataset or [])
    if not datasets and _dataset_name(trainer.train_dataset):
        datasets = [_dataset_name(trainer.train_dataset)]
    all_tags = ["fdistill", "distillation", "knowledge-distillation", a.objective]
    for tag in [tags] if isinstance(tags, str) else tags or []:
        if tag not in all_tags:
            all_tags.append(tag)
    data = ModelCardData(
        base_model=base_model if _is_hub_id(base_model) else None,
        library_name="peft" if peft_base is not None else "transformers",
        license=license,
        language=language,
        datasets=[d for d in datasets if _is_hub_id(d)] or None,
        model_name=title,
        tags=all_tags,
        pipeline_tag="text2text-generation" if student.config.is_encoder_decoder else "text-generation",
    )
    sections = [
        f"# {title}",
        _intro(a, teacher_name, student, base_model if base_model != teacher_name else None),
        "## Distillation settings\n\n" + _table(["setting", "value", "meaning"], _settings(a, student)),
        "## Model size\n\n" + _table(["model", "parameters"], _sizes(model, teacher)),
        "## Data\n\n" + _data(a, trainer.train_dataset, trainer.eval_dataset),
        "## Training\n\n" + _table(["hyperparameter", "value"], _training(trainer)),
        _metrics_heading(trainer) + _results(trainer.state.log_history),
        "## Usage\n\n" + _usage(repo_id or trainer.args.output_dir, student, peft_base is not None, a),
        "## Framework versions\n\n" + _versions(),
        "## Citation\n\n```bibtex\n" + CITATION + "\n```",
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
    if write:
        os.makedirs(trainer.args.output_dir, exist_ok=True)
        card.save(os.path.join(trainer.args.output_dir, "README.md"))
    return str(card)


def _metrics_heading(trainer) -> str:
    """The metrics' heading: final ones, or while training (a checkpoint pushed by ``hub_strategy``) the step so far."""
    if getattr(trainer, "is_in_train", False):
        state = trainer.state
        of = f" of {state.max_steps}" if state.max_steps and state.max_steps > 0 else ""
        return f"## Metrics so far\n\nTraining in progress: step {state.global_step}{of}.\n\n"
    return "## Final metrics\n\n"


# ---------------------------------------------------------------------- sections


def _intro(a: DistillArguments, teacher: str | None, student, init: str | None) -> str:
    who = _link(teacher) if teacher else "a teacher model"
    objective = a.objective_spec
    what = objective.title or objective.name
    text = objective.card_intro.format(who=who, what=what, sampled_on=objective.sampled_on, paper=_PAPER)
    if init:
        text += f" Its weights started from {_link(init)}."
    copied = getattr(student.config, "fdistill_teacher_layers", None)
    if copied:
        stacks = "; ".join(f"{stack}: {list(layers)}" for stack, layers in copied.items())
        text += f" The student was made by copying teacher layers ({stacks})."
    return text


def _settings(a: DistillArguments, student) -> list[list[str]]:
    help_of = {f.name: f.metadata.get("help", "") for f in fields(DistillArguments)}
    objective = a.objective_spec
    names = ["objective"] + [n for n in objective.card_settings if n not in ("loss_temperature",) or a.needs_teacher]
    names.append("loss_reduction")
    if a.needs_student_samples:
        names.append("student_do_sample")
        if a.student_do_sample:
            names += ["student_sampling_temperature", "student_top_k", "student_top_p"]
        else:
            names.append("student_num_beams")
        names.append("max_new_tokens")
    if a.teacher_dtype:
        names.append("teacher_dtype")
    source = a.teacher_source
    if source.kind == "columns":  # the teacher was its stored top k: say so, and how the tail was treated
        names += ["teacher_topk_columns", "teacher_topk_mode"]
    if source.kind == "server":  # the teacher was its top k served by vLLM
        names += ["teacher_server_topk", "teacher_topk_mode"]
    rows = [[f"`{n}`", _fmt(getattr(a, n)), help_of[n]] for n in names]
    rows[0][2] = objective.meaning or help_of["objective"]
    rows += [[f"`{n}`", _fmt(value), help_of[n]] for n, value in objective.card_rows(a, student.config)]
    return rows


def _sizes(model, teacher) -> list[list[str]]:
    n_student = _count(model.parameters())
    rows = [["student", f"{n_student:,} ({_human(n_student)})"]]
    trainable = _count(p for p in model.parameters() if p.requires_grad)
    if trainable != n_student:  # PEFT / frozen parts
        rows.append(["student, trainable", f"{trainable:,} ({100 * trainable / max(n_student, 1):.2f} %)"])
    if teacher is not None:
        n_teacher = _count(teacher.parameters())
        rows.append(["teacher", f"{n_teacher:,} ({_human(n_teacher)})"])
        share = 100 * n_student / max(n_teacher, 1)
        ratio = n_teacher / max(n_student, 1)
        rows.append(["teacher / student", f"{ratio:.2f}× (the student has {share:.1f} % of the teacher's parameters)"])
    return rows


def _data(a: DistillArguments, train, eval_) -> str:
    columns = [a.prompt_column]
    if a.needs_reference:
        columns.append(a.reference_column)
    if a.reads_teacher_samples:
        columns.append(a.teacher_sample_column)
    splits = [("train", train)]
    if isinstance(eval_, dict):
        splits += [(f"eval ({name})", d) for name, d in eval_.items()]
    elif eval_ is not None:
        splits.append(("eval", eval_))
    rows = []
    for split, d in splits:
        if d is None:
            continue
        size = f"{len(d):,}" if hasattr(d, "__len__") else "streamed"
        rows.append([split, _dataset_name(d) or "local", size])
    text = _table(["split", "dataset", "examples"], rows) if rows else "No dataset was attached to the trainer."
    text += "\n\nColumns used: " + ", ".join(f"`{c}`" for c in columns)
    if a.needs_student_samples:
        text += " (student samples are drawn online during training)"
    text += f". Prompts are truncated to {a.max_prompt_length} tokens, targets to {a.max_target_length}" + (
        "; prompts are wrapped in the tokenizer's chat template." if a.use_chat_template else "."
    )
    return text


def _training(trainer) -> list[list[str]]:
    args, state = trainer.args, trainer.state
    world = getattr(args, "world_size", 1)
    per_device, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    total = per_device * accumulation * world
    batch = f"{total} = {per_device} per device × {accumulation} accumulation × {world} process(es)"
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return [
        ["optimizer steps", _fmt(state.global_step)],
        ["epochs", _fmt(state.epoch or 0.0)],
        ["learning rate", f"{args.learning_rate:g} ({_value(args.lr_scheduler_type)} schedule)"],
        ["batch size", batch],
        ["optimizer", _value(args.optim)],
        ["precision", precision],
        ["seed", str(args.seed)],
    ]


def _results(history: list[dict]) -> str:
    train = [e for e in history if "loss" in e]
    summary = next((e for e in reversed(history) if "train_loss" in e), {})
    evals = [e for e in history if any(k.startswith("eval_") for k in e)]
    rows = []
    if train:
        last = train[-1]
        for key, value in last.items():
            if key in METRIC_MEANING:
                rows.append([f"`{key}` (train, step {last.get('step', '?')})", _fmt(value), METRIC_MEANING[key]])
    if "train_loss" in summary:
        rows.append(["`train_loss`", _fmt(summary["train_loss"]), METRIC_MEANING["train_loss"]])
    if evals:
        last = evals[-1]
        skip = ("runtime", "per_second", "epoch")
        for key, value in last.items():
            if key.startswith("eval_") and not any(s in key for s in skip):
                rows.append([f"`{key}` (step {last.get('step', '?')})", _fmt(value), METRIC_MEANING.get(key[5:], "")])
    if not rows:
        return "No metrics logged yet."
    return _table(["metric", "value", "meaning"], rows)


def _usage(repo: str, student, is_peft: bool, a: DistillArguments) -> str:
    seq2seq = bool(student.config.is_encoder_decoder)
    auto = ("AutoPeftModelFor" if is_peft else "AutoModelFor") + ("Seq2SeqLM" if seq2seq else "CausalLM")
    if is_peft:
        imports = f"from peft import {auto}\nfrom transformers import AutoTokenizer"
    else:
        imports = f"from transformers import {auto}, AutoTokenizer"
    if a.use_chat_template:
        encode = (
            'messages = [{"role": "user", "content": "Hello! Who are you?"}]\n'
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, "
            'return_tensors="pt", return_dict=True)'
        )
    else:
        encode = 'inputs = tokenizer("Hello! Who are you?", return_tensors="pt")'
    note = ""
    if is_peft and getattr(student.config, "fdistill_teacher_layers", None):
        note = (
            "\n\nThe adapter sits on a student made by copying teacher layers, which is not on the Hub by itself: "
            "merge the adapter first (`fdistill.lm.student.merge_lora`) to publish a standalone student."
        )
    return (
        "```python\n"
        f"{imports}\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n'
        f'model = {auto}.from_pretrained("{repo}")\n'
        f"{encode}\n"
        "outputs = model.generate(**inputs, max_new_tokens=64, do_sample=True)\n"
        "print(tokenizer.decode(outputs[0], skip_special_tokens=True))\n"
        "```" + note
    )


# ---------------------------------------------------------------------- helpers


def _peft_base_name(model) -> str | None:
    """Name of the base model of a PEFT student ("" when unknown), ``None`` when not PEFT."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return None
    config = configs.get(getattr(model, "active_adapter", "default")) or next(iter(configs.values()))
    return getattr(config, "base_model_name_or_path", None) or ""


def _name(model) -> str | None:
    """``name_or_path`` of a model (its own attribute, else its config's), or ``None``."""
    if model is None:
        return None
    model = _base_model(model)
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else None


def _is_hub_id(name: str | None) -> bool:
    """Whether ``name`` can be a Hub repo id (and is not a local path): only those go in the metadata."""
    if not name or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _link(name: str) -> str:
    return f"[{name}](https://huggingface.co/{name})" if _is_hub_id(name) else f"`{name}`"


def _dataset_name(dataset) -> str | None:
    info = getattr(dataset, "info", None)
    for name in (getattr(info, "dataset_name", None), getattr(info, "builder_name", None)):
        if name and name not in PACKAGED_BUILDERS:
            return name
    return None


def _count(params) -> int:
    # DeepSpeed ZeRO-3 leaves empty placeholders; the real size is in ds_numel.
    return sum(getattr(p, "ds_numel", p.numel()) for p in params)


def _human(n: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return str(n)


def _value(x) -> str:
    return str(getattr(x, "value", x))


def _versions() -> str:
    return f"- fdistill {__version__}\n- transformers {transformers.__version__}\n- torch {torch.__version__}"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)
