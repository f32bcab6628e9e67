"""The `fdistill` command: offline teacher sampling, training from a YAML recipe, evaluation, and the demo.

    fdistill sample --teacher gpt2 --data prompts.jsonl --output teacher_samples
    fdistill train recipes/smollm2.yaml max_steps=100 objective=js
    accelerate launch -m fdistill.cli sample ...      # several processes share the work
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import yaml


# ----------------------------------------------------------------------------- sample


def add_sample_parser(sub) -> None:
    from fdistill.sampling import OfflineSamplingSettings

    p = sub.add_parser("sample", help="draw teacher samples once and save them as a datasets dataset (f-DISTILL §2.3)")
    p.add_argument("--teacher", required=True, help="Hub name or local folder (for GGUF: the folder holding the file)")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --teacher")
    p.add_argument("--revision", default=None, help="Hub revision of the teacher")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: as stored)")
    p.add_argument("--data", required=True, help="JSON/JSONL/CSV/Parquet file, a save_to_disk folder, or a Hub dataset")
    p.add_argument("--data-config", default=None, help="Hub dataset configuration")
    p.add_argument("--split", default="train")
    p.add_argument("--output", required=True, help="folder for the sampled dataset (resumable)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N inputs")
    defaults = OfflineSamplingSettings()
    for name, value in vars(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, action="store_true", default=value)
        else:
            p.add_argument(flag, type=type(value), default=value)
    p.add_argument("--no-progress", action="store_true")


def run_sample(args) -> None:
    from fdistill.loading import file_sha256, load_data, load_model_and_tokenizer
    from fdistill.sampling import OfflineSamplingSettings, sample_offline

    settings = OfflineSamplingSettings(**{k: getattr(args, k) for k in vars(OfflineSamplingSettings())})
    data = load_data(args.data, config=args.data_config, split=args.split)
    if args.limit is not None:
        data = data.select(range(min(args.limit, len(data))))
    model, tokenizer = load_model_and_tokenizer(args.teacher, gguf_file=args.gguf_file, dtype=args.dtype, revision=args.revision)
    revision = args.revision
    if args.gguf_file:
        import os

        revision = "sha256:" + file_sha256(os.path.join(args.teacher, args.gguf_file))
    teacher_id = args.teacher + (f"/{args.gguf_file}" if args.gguf_file else "")
    result = sample_offline(
        model, tokenizer, data, args.output, settings, teacher_id=teacher_id, teacher_revision=revision,
        show_progress=not args.no_progress,
    )
    print(f"{len(result)} teacher samples in {args.output}")


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
    parser = HfArgumentParser((RunArguments, FDistillConfig))
    run_args, config = parser.parse_dict(values, allow_extra_keys=False)
    return run_args, config


def build_trainer(run_args: RunArguments, config):
    """Load teacher, student and data of a recipe and return a ready `FDistillTrainer`."""
    from fdistill.loading import load_data, load_model_and_tokenizer
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
    train = load_data(run_args.train_data, config=run_args.train_data_config, split=run_args.train_split)
    evaluation = load_data(run_args.eval_data, split=run_args.eval_split) if run_args.eval_data else None
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


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fdistill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_sample_parser(sub)
    t = sub.add_parser("train", help="train from a YAML recipe (keys: RunArguments + FDistillConfig fields)")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="key=value pairs overriding the recipe")
    t.add_argument("--resume-from-checkpoint", default=None)
    from fdistill import demo

    d = sub.add_parser("demo", help="the embedded default: distil the packaged SmolLM2 teacher end to end on CPU")
    demo.add_arguments(d)
    args = parser.parse_args(argv)
    try:
        {"sample": run_sample, "train": run_train, "demo": demo.run_from_args}[args.command](args)
    except ValueError as error:  # bad input: one clear line, no traceback
        print(f"fdistill {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
