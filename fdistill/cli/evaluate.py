"""`fdistill evaluate`: generate and score models on a test set; risks R_llh / R_cvg; reports."""

from __future__ import annotations

import logging
import sys

from fdistill.cli.common import add_config_option, require
from fdistill.errors import InputError

logger = logging.getLogger("fdistill.cli")


def add_evaluate_parser(sub) -> None:
    from fdistill.evaluation.text_metrics import TOKENIZE

    p = sub.add_parser("evaluate", help="generate and score models on a test set; risks R_llh/R_cvg; reports")
    add_config_option(p)
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
    from fdistill.checks import output_folder

    require(args, "output")
    output_folder("output", args.output)
    if args.combine is not None:
        _combine(args)
        return
    metrics = _as_list(args.metrics)
    specs = _checked_models(args, metrics)
    prompts, references, skipped = _test_set(args, metrics)
    results = _evaluate_models(args, specs, prompts, references, metrics)
    if skipped:
        for r in results.values():
            r["skipped"] = skipped
    _write(results, args.output)


def _as_list(value) -> list:
    """A --config YAML may give one string where a list is meant."""
    return [value] if isinstance(value, str) else list(value or [])


def _combine(args) -> None:
    """``--combine``: merge earlier results.json files into one table instead of evaluating."""
    from fdistill.evaluation.report import combine_results, write_report

    paths = write_report(combine_results(_as_list(args.combine)), args.output)
    logger.info("combined table: %s", paths["markdown"])


def _checked_models(args, metrics: list[str]) -> dict[str, str]:
    """Check the settings and the models to evaluate before any work; returns ``{name: path}`` of ``--models``."""
    from fdistill.checks import whole_number
    from fdistill.evaluation.report import check_settings

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
    for item in _as_list(args.models):
        name, _, path = item.partition("=")
        if not name or not path:
            raise InputError(f"--models expects NAME=PATH, got {item!r}.")
        if name in specs or (name == "teacher" and args.include_teacher):
            raise InputError(
                f"--models names {name!r} twice (with --include-teacher, 'teacher' is taken): "
                "give every model its own name."
            )
        specs[name] = path
    return specs


def _test_set(args, metrics: list[str]) -> tuple[list, dict[str, list], str | None]:
    """The test prompts, their reference sets by name, and why reference metrics are skipped (None: they are not)."""
    from fdistill.evaluation.report import check_prompts
    from fdistill.evaluation.text_metrics import check_references
    from fdistill.lm.loading import load_data, prepare_prompts

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
    return prompts, references, skipped


def _evaluate_models(args, specs: dict[str, str], prompts: list, references: dict, metrics: list[str]) -> dict:
    """Load and score the teacher (if asked) and every model of ``specs``; returns their results by name."""
    from fdistill.evaluation.report import evaluate_model, generate_texts, teacher_diversity
    from fdistill.lm.loading import load_model_and_tokenizer

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
    decoding = dict(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        use_chat_template=args.use_chat_template,
        seed=args.seed,
    )
    teacher_replies = None
    if args.include_teacher or args.against_teacher:
        teacher_replies = generate_texts(teacher, tokenizer, prompts, **decoding)
    against = {"teacher": teacher_replies.texts} if args.against_teacher else {}
    results = {}
    if args.include_teacher:
        results["teacher"], _ = evaluate_model(
            teacher, tokenizer, prompts, references, generations=teacher_replies, **common
        )
    if args.teacher_dist:
        results.setdefault("teacher", {})["teacher_dist"] = teacher_diversity(teacher, tokenizer, prompts, **decoding)
    for name, path in specs.items():
        model, model_tokenizer = load_model_and_tokenizer(path)
        _check_room(model, model_tokenizer, prompts, args, name)
        results[name], _ = evaluate_model(
            model,
            model_tokenizer,
            prompts,
            {**references, **against},
            teacher=teacher,
            teacher_tokenizer=tokenizer,  # another tokenizer: the divergences on text (fdistill.evaluation.cross_tokenizer)
            **common,
        )
    return results


def _write(results: dict, output: str) -> None:
    """Write the report, print its table, and warn (one line) of any non-finite value."""
    from fdistill.evaluation.report import non_finite, write_report

    paths = write_report(results, output)
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
