"""The paper's evaluation of distilled students: generation, text metrics, risks, TeacherDist, and reports.

For each evaluated model: generate on held-out prompts (greedy by default, as for the
paper's quality metrics), score against one or more reference sets with
:mod:`fdistill.evaluation.text_metrics`, estimate the likelihood risk ``R_llh`` and coverage risk
``R_cvg`` (Table 3 of Wen et al. 2023) and the sequence-level divergences to the
teacher with :func:`fdistill.evaluation.metrics.sequence_divergences`, and time generation.
:func:`write_report` writes JSON, a Markdown table and a plot of the models on the
R_llh/R_cvg plane; several result files combine into one comparison table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from fdistill.checks import output_folder, whole_number
from fdistill.errors import InputError, invalid, nonfinite_sampling
from fdistill.evaluation.cross_tokenizer import cross_sequence_divergences
from fdistill.evaluation.metrics import sequence_divergences
from fdistill.evaluation.text_metrics import (
    check_metric_names,
    check_references,
    compute_text_metrics,
    require_bertscore,
    resolve_tokenize,
    teacher_dist,
)
from fdistill.lm.cross_batches import tokenizers_differ
from fdistill.lm.data import check_prompts as check_prompt_rows
from fdistill.lm.sampling import sample_batches, sampling_config
from fdistill.torch_utils import base_model, model_devices, seeded

# Metrics where lower is better (the rest: higher is better), for the report's arrows.
LOWER_IS_BETTER = (
    "ter",
    "r_llh",
    "r_cvg",
    "r_llh_token",
    "r_cvg_token",
    "r_llh_char",
    "r_cvg_char",
    "kl",
    "rkl",
    "js",
    "tvd_bound",
    "tvd",
)


def check_settings(
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    metrics=(),
    tokenize: str = "auto",
    risk_samples: int = 1,
    num_samples: int = 1,
) -> None:
    """Check evaluation settings before any work: an InputError naming the first bad one and its fix."""
    whole_number("max_new_tokens", max_new_tokens)
    whole_number("batch_size", batch_size)
    whole_number("risk_samples", risk_samples)
    whole_number("num_samples", num_samples)
    if "bertscore" in check_metric_names(metrics):
        require_bertscore()
    resolve_tokenize(tokenize, [])


def check_prompts(prompts) -> list:
    """The prompts as a non-empty list of usable prompts (`fdistill.lm.data.check_prompts`), or an InputError."""
    if isinstance(prompts, (str, bytes)):
        raise InputError(f"prompts must be a list (one prompt per example), got a single string {prompts[:40]!r}.")
    prompts = list(prompts)
    if not prompts:
        raise InputError("there are no prompts to evaluate (0 examples): give test data with at least one row.")
    check_prompt_rows(prompts, "prompts")
    return prompts


@dataclass
class Generations:
    texts: list[str]
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        """New tokens generated per second of generation (NaN when no time was measured)."""
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    prompts: list,
    *,
    max_new_tokens: int = 64,
    decoding: str = "greedy",
    num_samples: int = 1,
    batch_size: int = 16,
    use_chat_template: bool = False,
    seed: int = 0,
) -> Generations:
    """Decode ``num_samples`` completions per prompt (``decoding``: "greedy" or "sample"), with timing.

    Samples are those drawn after ``torch.manual_seed(seed)``, in a :func:`~fdistill.lm.sampling.seeded`
    block: the caller's RNG state is untouched.
    """
    if decoding not in ("greedy", "sample"):
        raise invalid("decoding", decoding, "use 'greedy' or 'sample'.")
    check_settings(max_new_tokens=max_new_tokens, batch_size=batch_size, num_samples=num_samples)
    prompts = check_prompts(prompts)
    config = sampling_config(model, tokenizer, max_new_tokens=max_new_tokens, do_sample=decoding == "sample")
    expanded = [p for p in prompts for _ in range(num_samples)]
    with nonfinite_sampling("model", "evaluation"), seeded(seed, devices=model_devices(model)):
        drawn = sample_batches(
            model, tokenizer, expanded, config, batch_size=batch_size, use_chat_template=use_chat_template
        )
    texts = [
        tokenizer.decode(row[m], skip_special_tokens=True).strip()
        for ids, mask, _ in drawn
        for row, m in zip(ids, mask)
    ]
    tokens = sum(int(mask.sum()) for _, mask, _ in drawn)
    seconds = sum(s for _, _, s in drawn)
    return Generations(texts, tokens, seconds)


def count_parameters(model) -> int:
    """Parameters of ``model`` (of its base model under PEFT: the student's own, adapters included)."""
    return sum(p.numel() for p in base_model(model).parameters())


def evaluate_model(
    model,
    tokenizer,
    prompts: list,
    references: dict[str, list],
    *,
    teacher=None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    use_chat_template: bool = False,
    metrics: tuple[str, ...] = ("bleu", "chrf", "ter", "rouge", "distinct"),
    bertscore_kwargs: dict | None = None,
    tokenize: str = "auto",
    risk_samples: int = 1,
    seed: int = 0,
    teacher_samples=None,
    generations: Generations | None = None,
    teacher_tokenizer=None,
) -> tuple[dict[str, float | str], list[str]]:
    """Quality, risks and speed of one model; returns ``(flat metrics, greedy outputs)``.

    Every argument is checked before generation starts (InputError naming the first bad one).

    Arguments:
        references: reference sets by name (e.g. ``{"reference": refs, "teacher": teacher_outputs}``),
            one reference (or list of them) per prompt; each metric is reported as ``{name}/{metric}``,
            and the tokenisation used as ``{name}/tokenize`` (a string). ``{}``: no text metrics.
        teacher: when given (and not the model itself), adds R_llh, R_cvg and the
            sequence-level divergences (one sample per prompt and side, ``risk_samples`` times).
        metrics: text metrics (see ``fdistill.evaluation.text_metrics.compute_text_metrics``; add "bertscore").
        tokenize: tokenisation of BLEU/TER/ROUGE (``fdistill.evaluation.text_metrics.TOKENIZE``); "auto"
            chooses per reference set from its script.
        teacher_samples: teacher samples from :func:`fdistill.evaluation.metrics.teacher_completions` (or, across
            tokenizers, :func:`fdistill.evaluation.cross_tokenizer.teacher_text_samples`) for the same prompts,
            shared when several models are compared against one teacher.
        teacher_tokenizer: the teacher's tokenizer when it may differ from ``tokenizer`` (the model's): then the
            divergences and risks are those of
            :func:`fdistill.evaluation.cross_tokenizer.cross_sequence_divergences` (on text, each model in its own
            tokenization; ``tvd`` and per-character risks instead of the step-wise ``tvd_bound``).
        generations: this model's greedy outputs for ``prompts`` (from :func:`generate_texts`),
            when already at hand; otherwise they are generated here.
    """
    check_settings(
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        metrics=metrics,
        tokenize=tokenize,
        risk_samples=risk_samples,
    )
    prompts, references = _checked_inputs(prompts, references, generations)
    gen = generations or generate_texts(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        use_chat_template=use_chat_template,
        seed=seed,
    )
    result: dict[str, float | str] = {
        "parameters": float(count_parameters(model)),
        "generation_tokens_per_s": gen.tokens_per_second,
        "mean_output_tokens": gen.new_tokens / len(prompts),
    }
    result.update(_text_scores(gen.texts, references, metrics, bertscore_kwargs, tokenize))
    if teacher is not None and teacher is not model:
        common = dict(
            num_samples=risk_samples,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            use_chat_template=use_chat_template,
            seed=seed,
        )
        if tokenizers_differ(tokenizer, teacher_tokenizer):  # on text, each model in its own tokenization
            div = cross_sequence_divergences(
                model, teacher, tokenizer, teacher_tokenizer, prompts, teacher_samples=teacher_samples, **common
            )
        else:
            div = sequence_divergences(
                model, teacher, tokenizer, prompts, teacher_completions=teacher_samples, **common
            )
        result.update(div)
    return result, gen.texts


def _checked_inputs(prompts, references, generations: Generations | None) -> tuple[list, dict[str, list]]:
    """The prompts and reference sets of `evaluate_model`, checked (an InputError naming the first bad one)."""
    prompts = check_prompts(prompts)
    if not isinstance(references, dict):
        raise InputError(f"references must be a dict of reference sets by name, got a {type(references).__name__}.")
    references = {
        name: check_references(refs, len(prompts), what=f"references {name!r}", counted="prompts")
        for name, refs in references.items()
    }
    if generations is not None and len(generations.texts) != len(prompts):
        raise InputError(
            f"generations hold {len(generations.texts)} outputs for {len(prompts)} prompts: "
            "pass generate_texts' result for exactly these prompts (greedy, one per prompt)."
        )
    return prompts, references


def _text_scores(texts: list[str], references: dict[str, list], metrics, bertscore_kwargs, tokenize: str) -> dict:
    """``{set}/{metric}`` of ``texts`` against every reference set, and ``{set}/tokenize``: the tokenisation used."""
    result: dict[str, float | str] = {}
    for name, refs in references.items():
        chosen = resolve_tokenize(tokenize, refs)
        scores = compute_text_metrics(texts, refs, metrics=metrics, bertscore_kwargs=bertscore_kwargs, tokenize=chosen)
        result.update({f"{name}/{k}": v for k, v in scores.items()})
        result[f"{name}/tokenize"] = chosen
    return result


def teacher_diversity(
    teacher,
    tokenizer,
    prompts: list,
    *,
    k: int = 5,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    use_chat_template: bool = False,
    seed: int = 0,
) -> float:
    """TeacherDist: distinct-bigram % among ``k`` teacher samples per input, averaged (paper Table 3)."""
    whole_number("k", k)
    prompts = check_prompts(prompts)
    gen = generate_texts(
        teacher,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        decoding="sample",
        num_samples=k,
        batch_size=batch_size,
        use_chat_template=use_chat_template,
        seed=seed,
    )
    return teacher_dist([gen.texts[i * k : (i + 1) * k] for i in range(len(prompts))])


# ----------------------------------------------------------------------------- reports


def non_finite(results: dict[str, dict]) -> list[str]:
    """``"model: metric"`` for every NaN or infinite value: the report counts and lists them, never hides them."""
    return [
        f"{name}: {k}"
        for name, r in results.items()
        for k, v in r.items()
        if isinstance(v, float) and not math.isfinite(v)
    ]


def markdown_table(results: dict[str, dict[str, float]], columns: list[str] | None = None) -> str:
    """One row per model, one column per metric (arrows mark the better direction).

    By default the columns are every numeric value; text values (such as ``reference/tokenize``
    and ``skipped``) go below the table, see :func:`report_notes`. NaN and infinite values show
    as **NaN** / **inf**; a dash marks a metric that was not computed for that model.
    """
    columns = columns or sorted({k for r in results.values() for k, v in r.items() if not isinstance(v, str)})
    head = ["model"] + [f"{c} {'↓' if c.split('/')[-1] in LOWER_IS_BETTER else '↑'}" for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [_fmt(r.get(c)) for c in columns]
        lines.append("| " + " | ".join([name] + cells) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if not math.isfinite(value):
        return "**NaN**" if math.isnan(value) else f"**{value}**"
    if abs(value) >= 1e5:
        return f"{value / 1e6:.1f}M"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def report_notes(results: dict[str, dict]) -> list[str]:
    """Markdown bullet lines: each text value (settings such as the tokenisation, skipped metrics) with the
    models it applies to, and the count and list of non-finite values."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name, r in results.items():
        for k, v in r.items():
            if isinstance(v, str):
                groups.setdefault((k, v), []).append(name)
    lines = [
        f"- {k}: {v} ({'all models' if len(names) == len(results) else ', '.join(names)})"
        for (k, v), names in groups.items()
    ]
    bad = non_finite(results)
    if bad:
        lines.append(
            f"- **{len(bad)} non-finite value(s)** (NaN or infinite; shown as such, never as 0): {', '.join(bad)}"
        )
    return lines


def plot_risks(results: dict[str, dict[str, float]], path: str, per: str = "token") -> None:
    """Scatter of the models on the (R_llh, R_cvg) plane — lower-left is better (paper Table 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key_x, key_y = ("r_llh_token", "r_cvg_token") if per == "token" else ("r_llh", "r_cvg")
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name, r in results.items():
        if key_x in r and key_y in r:
            ax.scatter(r[key_x], r[key_y])
            ax.annotate(name, (r[key_x], r[key_y]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"R_llh: teacher NLL of student samples (per {per})\nhigh = mode averaging", fontsize=9)
    ax.set_ylabel(f"R_cvg: student NLL of teacher samples (per {per})\nhigh = mode collapse", fontsize=9)
    ax.set_title("likelihood vs coverage risk (lower-left is better)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# Non-finite floats in results.json: JSON has no NaN or infinity, so they are written as these strings.
_JSON_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _to_json(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    return value


def write_report(
    results: dict[str, dict[str, float]], out_dir: str, *, columns: list[str] | None = None
) -> dict[str, str]:
    """Write ``results.json``, ``results.md`` and ``risks.png`` into ``out_dir``; returns their paths.

    ``results.json`` maps model → metric → value; text values (tokenisation, skipped metrics)
    are kept, NaN and infinities are written as the strings "NaN", "Infinity", "-Infinity"
    (read back as floats by :func:`combine_results`). ``results.md`` has the table, then the
    notes of :func:`report_notes`.
    """
    output_folder("output", out_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "results.json"), "markdown": str(out / "results.md"), "plot": str(out / "risks.png")}
    ready = {name: {k: _to_json(v) for k, v in r.items()} for name, r in results.items()}
    Path(paths["json"]).write_text(json.dumps(ready, indent=1, allow_nan=False, ensure_ascii=False))
    notes = report_notes(results)
    Path(paths["markdown"]).write_text(
        markdown_table(results, columns) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")
    )
    plot_risks(results, paths["plot"])
    return paths


def read_results(path: str) -> dict[str, dict]:
    """One ``results.json`` of `fdistill evaluate` (or of `fdistill demo`, whose ``results`` key holds the table).

    Raises:
        InputError: the file is missing, not JSON, or not a model → metric → value table.
    """
    file = Path(path)
    if not file.is_file():
        raise invalid(
            "results file",
            str(path),
            "give the path of a results.json written by `fdistill evaluate`.",
            problem="does not exist",
        )
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise invalid(
            "results file",
            str(path),
            f"it is not JSON ({error}); give a results.json written by `fdistill evaluate`.",
            problem="cannot be read",
        ) from None
    if isinstance(data, dict) and isinstance(data.get("results"), dict) and "settings" in data:
        data = data["results"]  # the demo's results.json
    ok = isinstance(data, dict) and all(
        isinstance(r, dict) and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in r.values())
        for r in data.values()
    )
    if not ok:
        raise invalid(
            "results file",
            str(path),
            "expected {model: {metric: value}}, as `fdistill evaluate` writes it.",
            problem="is not a results table",
        )
    return {
        name: {k: _JSON_NON_FINITE.get(v, v) if isinstance(v, str) else float(v) for k, v in r.items()}
        for name, r in data.items()
    }


def combine_results(paths: list[str]) -> dict[str, dict[str, float]]:
    """Merge several ``results.json`` files into one table (model names prefixed by their folder on collision).

    Every file is read and checked before anything is merged (see :func:`read_results`).
    """
    if isinstance(paths, str) or not paths:
        raise invalid("combine", paths, "give one or more results.json files to merge.")
    tables = [(p, read_results(p)) for p in paths]
    merged: dict[str, dict[str, float]] = {}
    for p, table in tables:
        for name, r in table.items():
            key, n = name, 1
            while key in merged:  # never drop a row: prefix the folder, then number
                key, n = f"{Path(p).parent.name}/{name}" + (f" ({n})" if n > 1 else ""), n + 1
            merged[key] = r
    return merged
