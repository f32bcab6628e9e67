"""The `fdistill` command: offline teacher sampling, training from a YAML recipe, evaluation, and the demo.

    fdistill sample --teacher gpt2 --data prompts.jsonl --output teacher_samples
    fdistill train recipes/smollm2.yaml max_steps=100 objective=js
    fdistill flows experiment recipes/flows/digits_glow.yaml   # normalizing-flow distillation (fdistill.flows)
    fdistill vocoder gaussian --out docs/vocoder/gaussian       # probability density distillation (fdistill.vocoder)
    accelerate launch -m fdistill.cli sample ...      # several processes share the work
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import torch
import yaml


# ----------------------------------------------------------------------------- sample


def _require(args, *names: str) -> None:
    missing = [n for n in names if not getattr(args, n, None)]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise ValueError(f"missing {flags} (give it on the command line or in the --config YAML).")


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Use a ``--config`` YAML's keys as defaults of the sub-command, so flags still override them."""
    if "--config" not in argv:
        return
    path = argv[argv.index("--config") + 1]
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    command = argv[0]
    sub = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices[command]
    known = {a.dest for a in sub._actions}
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; valid keys are {sorted(known - {'help', 'config'})}.")
    sub.set_defaults(**values)


def add_sample_parser(sub) -> None:
    from fdistill.sampling import OfflineSamplingSettings

    p = sub.add_parser("sample", help="draw teacher samples once and save them as a datasets dataset (f-DISTILL §2.3)")
    p.add_argument("--config", default=None, help="YAML file whose keys are these options (underscored); flags override it")
    p.add_argument("--teacher", help="Hub name or local folder (for GGUF: the folder holding the file)")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --teacher")
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
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="also upload the sampled dataset to this Hub repo")
    p.add_argument("--private", action="store_true", help="make the pushed dataset repo private")


def run_sample(args) -> None:
    from fdistill.loading import file_sha256, load_data, load_model_and_tokenizer, prepare_prompts, resolve_package_path
    from fdistill.sampling import OfflineSamplingSettings, sample_offline

    _require(args, "teacher", "data", "output")
    settings = OfflineSamplingSettings(**{k: getattr(args, k) for k in vars(OfflineSamplingSettings())})
    data = load_data(args.data, config=args.data_config, split=args.split)
    data = prepare_prompts(data, prompt_column=args.prompt_column, prompt_prefix=args.prompt_prefix, flatten=args.flatten_data)
    if args.limit is not None:
        data = data.select(range(min(args.limit, len(data))))
    model, tokenizer = load_model_and_tokenizer(args.teacher, gguf_file=args.gguf_file, dtype=args.dtype, revision=args.revision)
    revision = args.revision
    if args.gguf_file:
        import os

        revision = "sha256:" + file_sha256(os.path.join(resolve_package_path(args.teacher), args.gguf_file))
    teacher_id = args.teacher + (f"/{args.gguf_file}" if args.gguf_file else "")
    result = sample_offline(
        model, tokenizer, data, args.output, settings, teacher_id=teacher_id, teacher_revision=revision,
        show_progress=not args.no_progress,
    )
    print(f"{len(result)} teacher samples in {args.output}")
    if args.push_to_hub:
        from accelerate import PartialState

        if PartialState(cpu=not torch.cuda.is_available()).is_main_process:
            result.push_to_hub(args.push_to_hub, private=args.private)  # provenance travels in the dataset info


# ----------------------------------------------------------------------------- train


@dataclass
class RunArguments:
    """Models and data of a training run (the rest of a recipe are `FDistillConfig` fields)."""

    teacher: str = field(metadata={"help": "Teacher: Hub name or local folder (GGUF: the folder)."})
    train_data: str = field(metadata={"help": "Training data: file, save_to_disk folder (e.g. `fdistill sample` output) or Hub name."})
    teacher_gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside `teacher`."})
    student: str | None = field(default=None, metadata={"help": "An existing student (Hub name or folder); else copied from the teacher."})
    student_layers: list[int] | None = field(default=None, metadata={"help": "Teacher layers copied into a decoder-only student."})
    student_encoder_layers: list[int] | None = field(default=None, metadata={"help": "Teacher encoder layers copied (encoder–decoders)."})
    student_decoder_layers: list[int] | None = field(default=None, metadata={"help": "Teacher decoder layers copied (encoder–decoders)."})
    train_data_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_split: str = field(default="train", metadata={"help": "Split of train_data."})
    eval_data: str | None = field(default=None, metadata={"help": "Evaluation data (same forms as train_data)."})
    eval_split: str = field(default="validation", metadata={"help": "Split of eval_data."})
    prompt_prefix: str = field(default="", metadata={"help": "Text prepended to every prompt (T5 task prefixes)."})
    flatten_data: bool = field(default=False, metadata={"help": "Flatten nested columns (WMT `translation` → `translation.en`)."})
    lora_r: int = field(default=0, metadata={"help": "Train a LoRA adapter of this rank instead of all weights (0 = off)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    model_dtype: str | None = field(default=None, metadata={"help": "dtype of teacher and student (default: as stored)."})


def load_recipe(path: str, overrides: list[str]):
    """Parse a YAML recipe (+ ``key=value`` overrides) into `RunArguments` and `FDistillConfig`."""
    from transformers import HfArgumentParser

    from fdistill.config import FDistillConfig

    with open(path) as f:
        values = yaml.safe_load(f) or {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value (e.g. max_steps=10).")
        key, value = item.split("=", 1)
        values[key] = yaml.safe_load(value)
    _coerce_numbers(values, (RunArguments, FDistillConfig))
    parser = HfArgumentParser((RunArguments, FDistillConfig))
    run_args, config = parser.parse_dict(values, allow_extra_keys=False)
    return run_args, config


def _coerce_numbers(values: dict, classes) -> None:
    """YAML 1.1 reads ``5e-5`` as a string; convert such values of float/int fields (and name the key if impossible)."""
    import dataclasses

    kinds = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            text = str(f.type)
            kinds[f.name] = float if text.startswith("float") else int if text.startswith("int") else None
    for key, value in values.items():
        target = kinds.get(key)
        if target is not None and isinstance(value, str):
            try:
                values[key] = target(float(value)) if target is int and float(value).is_integer() else target(value)
            except ValueError:
                raise ValueError(f"{key}: {value!r} is not a number.") from None


def _is_sample_output(path: str) -> bool:
    """`fdistill sample` output already holds prepared prompts (prefix applied, columns flattened)."""
    import os

    from fdistill.sampling import PROVENANCE_FILE

    return os.path.isfile(os.path.join(path, PROVENANCE_FILE))


def build_trainer(run_args: RunArguments, config):
    """Load teacher, student and data of a recipe and return a ready `FDistillTrainer`."""
    from fdistill.loading import load_data, load_model_and_tokenizer, prepare_prompts
    from fdistill.student import create_student_from_teacher, wrap_with_lora
    from fdistill.trainer import FDistillTrainer

    teacher, tokenizer = load_model_and_tokenizer(run_args.teacher, gguf_file=run_args.teacher_gguf_file, dtype=run_args.model_dtype)
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
    prep = dict(prompt_column=config.prompt_column, prompt_prefix=run_args.prompt_prefix, flatten=run_args.flatten_data)
    train = load_data(run_args.train_data, config=run_args.train_data_config, split=run_args.train_split)
    train = prepare_prompts(train, **prep) if not _is_sample_output(run_args.train_data) else train
    evaluation = None
    if run_args.eval_data:
        evaluation = load_data(run_args.eval_data, config=run_args.train_data_config, split=run_args.eval_split)
        evaluation = prepare_prompts(evaluation, **prep) if not _is_sample_output(run_args.eval_data) else evaluation
    return FDistillTrainer(
        model=student, teacher_model=teacher, args=config, train_dataset=train, eval_dataset=evaluation,
        processing_class=tokenizer,
    )


def run_train(args) -> None:
    run_args, config = load_recipe(args.recipe, args.overrides)
    trainer = build_trainer(run_args, config)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    if trainer.eval_dataset is not None:
        trainer.evaluate()
    if trainer.is_world_process_zero():
        trainer.create_model_card()
    if config.push_to_hub:
        trainer.push_to_hub()


# ----------------------------------------------------------------------------- evaluate


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="generate and score models on a test set; risks R_llh/R_cvg; reports")
    p.add_argument("--config", default=None, help="YAML file whose keys are these options (underscored); flags override it")
    p.add_argument("--teacher", help="teacher (Hub name or folder): needed for the risks and TeacherDist")
    p.add_argument("--gguf-file", default=None, help="GGUF file inside --teacher")
    p.add_argument("--models", nargs="*", default=[], metavar="NAME=PATH", help="models to evaluate (students)")
    p.add_argument("--include-teacher", action="store_true", help="also score the teacher's own outputs")
    p.add_argument("--data", help="test data: file, save_to_disk folder or Hub name")
    p.add_argument("--data-config", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="use only the first N inputs")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--reference-column", default="reference")
    p.add_argument("--prompt-prefix", default="", help="text prepended to every prompt (T5 task prefixes)")
    p.add_argument("--flatten-data", action="store_true", help="flatten nested columns (translation -> translation.en)")
    p.add_argument("--use-chat-template", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--metrics", nargs="+", default=["bleu", "chrf", "ter", "rouge", "distinct"],
                   help="text metrics (add bertscore; see fdistill.text_metrics)")
    p.add_argument("--teacher-dist", action="store_true", help="also compute TeacherDist (5 teacher samples per input)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="folder for results.json, results.md and risks.png")
    p.add_argument("--combine", nargs="*", default=None, metavar="RESULTS_JSON",
                   help="instead of evaluating, merge earlier results.json files into one table")


def run_evaluate(args) -> None:
    from fdistill.evaluation import combine_results, evaluate_model, teacher_diversity, write_report
    from fdistill.loading import load_data, load_model_and_tokenizer, prepare_prompts

    _require(args, "output")
    if args.combine:
        paths = write_report(combine_results(args.combine), args.output)
        print(f"combined table: {paths['markdown']}")
        return
    if not args.data:
        raise ValueError("give --data (the test set) or --combine (earlier results to merge).")
    if not args.models and not args.include_teacher:
        raise ValueError("nothing to evaluate: give --models NAME=PATH ... and/or --include-teacher.")
    specs = []
    for item in args.models:
        if "=" not in item:
            raise ValueError(f"--models expects NAME=PATH, got {item!r}.")
        specs.append(item.split("=", 1))
    data = load_data(args.data, config=args.data_config, split=args.split)
    data = prepare_prompts(data, prompt_column=args.prompt_column, prompt_prefix=args.prompt_prefix, flatten=args.flatten_data)
    for column in (args.prompt_column, args.reference_column):
        if column not in data.column_names:
            raise ValueError(f"the test data has no column {column!r} (it has {data.column_names}).")
    if args.limit is not None:
        data = data.select(range(min(args.limit, len(data))))
    prompts, references = data[args.prompt_column], {"reference": data[args.reference_column]}
    teacher = tokenizer = None
    if args.teacher:
        teacher, tokenizer = load_model_and_tokenizer(args.teacher, gguf_file=args.gguf_file)
    elif args.include_teacher or args.teacher_dist:
        raise ValueError("--include-teacher and --teacher-dist need --teacher.")
    common = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                  use_chat_template=args.use_chat_template, metrics=tuple(args.metrics), seed=args.seed)
    results = {}
    if args.include_teacher:
        results["teacher"], _ = evaluate_model(teacher, tokenizer, prompts, references, **common)
        if args.teacher_dist:
            results["teacher"]["teacher_dist"] = teacher_diversity(
                teacher, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                use_chat_template=args.use_chat_template, seed=args.seed)
    for name, path in specs:
        model, model_tokenizer = load_model_and_tokenizer(path)
        results[name], _ = evaluate_model(model, model_tokenizer, prompts, references, teacher=teacher, **common)
    paths = write_report(results, args.output)
    print(open(paths["markdown"]).read())


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fdistill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_sample_parser(sub)
    add_evaluate_parser(sub)
    t = sub.add_parser("train", help="train from a YAML recipe (keys: RunArguments + FDistillConfig fields)")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="key=value pairs overriding the recipe")
    t.add_argument("--resume-from-checkpoint", default=None)
    from fdistill import demo

    d = sub.add_parser("demo", help="the embedded default: distil the packaged SmolLM2 teacher end to end on CPU")
    demo.add_arguments(d)
    from fdistill.flows import cli as flows_cli

    f = sub.add_parser("flows", help="normalizing-flow distillation (LKD/ILKD/SKD): teacher, distill, evaluate, experiment")
    flows_cli.add_arguments(f)
    from fdistill.vocoder import cli as vocoder_cli

    v = sub.add_parser("vocoder", help="probability density distillation (reverse KL vs z-/x-reconstruction): gaussian, audio")
    vocoder_cli.add_arguments(v)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _apply_config(parser, argv)
    except ValueError as error:
        print(f"fdistill: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra  # key=value overrides given after an option (argparse stops at the option)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        {"sample": run_sample, "train": run_train, "evaluate": _main_process_only(run_evaluate), "demo": demo.run_from_args,
         "flows": flows_cli.run, "vocoder": vocoder_cli.run}[args.command](args)
    except ValueError as error:  # bad input: one clear line, no traceback
        print(f"fdistill {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
