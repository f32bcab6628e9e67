"""`fdistill sample`: draw teacher samples once and save them as a datasets dataset (f-DISTILL §2.3)."""

from __future__ import annotations

import logging
import os
import shlex

import torch

from fdistill.cli.common import Interrupted, add_config_option, require

logger = logging.getLogger("fdistill.cli")


def add_sample_parser(sub) -> None:
    from fdistill.lm.sampling import OfflineSamplingSettings

    p = sub.add_parser("sample", help="draw teacher samples once and save them as a datasets dataset (f-DISTILL §2.3)")
    add_config_option(p)
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

    require(args, "data", "output")
    if not args.teacher_server:
        require(args, "teacher")
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
            from fdistill.lm.logits_cache import is_cache, push_cache_to_hub, redacted_command

            if is_cache(result.column_names):  # a teacher logits cache: with its record and a dataset card
                push_cache_to_hub(result, args.push_to_hub, private=args.private, command=redacted_command(args.argv))
            else:
                result.push_to_hub(args.push_to_hub, private=args.private)  # provenance travels in the dataset info
