"""The paper's evaluation of distilled students: generation, text metrics, risks, TeacherDist, and reports.

For each evaluated model: generate on held-out prompts (greedy by default, as for the
paper's quality metrics), score against one or more reference sets with
:mod:`fdistill.text_metrics`, estimate the likelihood risk ``R_llh`` and coverage risk
``R_cvg`` (Table 3 of Wen et al. 2023) and the sequence-level divergences to the
teacher with :func:`fdistill.metrics.sequence_divergences`, and time generation.
:func:`write_report` writes JSON, a Markdown table and a plot of the models on the
R_llh/R_cvg plane; several result files combine into one comparison table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fdistill.data import base_model
from fdistill.metrics import sequence_divergences
from fdistill.sampling import sample_batches, sampling_config
from fdistill.text_metrics import compute_text_metrics, teacher_dist

# Metrics where lower is better (the rest: higher is better), for the report's arrows.
LOWER_IS_BETTER = ("ter", "r_llh", "r_cvg", "r_llh_token", "r_cvg_token", "kl", "rkl", "js", "tvd_bound")


@dataclass
class Generations:
    texts: list[str]
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
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
    """Decode ``num_samples`` completions per prompt (``decoding``: "greedy" or "sample"), with timing."""
    if decoding not in ("greedy", "sample"):
        raise ValueError(f"decoding={decoding!r}: use 'greedy' or 'sample'.")
    torch.manual_seed(seed)
    config = sampling_config(model, tokenizer, max_new_tokens=max_new_tokens, do_sample=decoding == "sample")
    expanded = [p for p in prompts for _ in range(num_samples)]
    drawn = sample_batches(model, tokenizer, expanded, config, batch_size=batch_size, use_chat_template=use_chat_template)
    texts = [tokenizer.decode(row[m], skip_special_tokens=True).strip() for ids, mask, _ in drawn for row, m in zip(ids, mask)]
    tokens = sum(int(mask.sum()) for _, mask, _ in drawn)
    seconds = sum(s for _, _, s in drawn)
    return Generations(texts, tokens, seconds)


def count_parameters(model) -> int:
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
    risk_samples: int = 1,
    seed: int = 0,
    teacher_samples: list | None = None,
) -> tuple[dict[str, float], list[str]]:
    """Quality, risks and speed of one model; returns ``(flat metrics, greedy outputs)``.

    Arguments:
        references: reference sets by name (e.g. ``{"reference": refs, "teacher": teacher_outputs}``);
            each metric is reported as ``{name}/{metric}``.
        teacher: when given (and not the model itself), adds R_llh, R_cvg and the
            sequence-level divergences (one sample per prompt and side, ``risk_samples`` times).
        metrics: text metrics (see ``fdistill.text_metrics.compute_text_metrics``; add "bertscore").
        teacher_samples: teacher samples from :func:`fdistill.metrics.teacher_completions` for the
            same prompts, shared when several models are compared against one teacher.
    """
    gen = generate_texts(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
        use_chat_template=use_chat_template, seed=seed,
    )
    result: dict[str, float] = {
        "parameters": float(count_parameters(model)),
        "generation_tokens_per_s": gen.tokens_per_second,
        "mean_output_tokens": gen.new_tokens / max(len(prompts), 1),
    }
    for name, refs in references.items():
        scores = compute_text_metrics(gen.texts, refs, metrics=metrics, bertscore_kwargs=bertscore_kwargs)
        result.update({f"{name}/{k}": v for k, v in scores.items()})
    if teacher is not None and teacher is not model:
        div = sequence_divergences(
            model, teacher, tokenizer, prompts, num_samples=risk_samples, max_new_tokens=max_new_tokens,
            batch_size=batch_size, use_chat_template=use_chat_template, seed=seed, teacher_completions=teacher_samples,
        )
        result.update(div)
    return result, gen.texts


def teacher_diversity(teacher, tokenizer, prompts: list, *, k: int = 5, max_new_tokens: int = 64, batch_size: int = 16,
                      use_chat_template: bool = False, seed: int = 0) -> float:
    """TeacherDist: distinct-bigram % among ``k`` teacher samples per input, averaged (paper Table 3)."""
    gen = generate_texts(teacher, tokenizer, prompts, max_new_tokens=max_new_tokens, decoding="sample", num_samples=k,
                         batch_size=batch_size, use_chat_template=use_chat_template, seed=seed)
    return teacher_dist([gen.texts[i * k : (i + 1) * k] for i in range(len(prompts))])


# ----------------------------------------------------------------------------- reports


def markdown_table(results: dict[str, dict[str, float]], columns: list[str] | None = None) -> str:
    """One row per model, one column per metric (arrows mark the better direction)."""
    columns = columns or sorted({k for r in results.values() for k in r})
    head = ["model"] + [f"{c} {'↓' if c.split('/')[-1] in LOWER_IS_BETTER else '↑'}" for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [_fmt(r.get(c)) for c in columns]
        lines.append("| " + " | ".join([name] + cells) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1e5:
        return f"{value / 1e6:.1f}M"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


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


def write_report(results: dict[str, dict[str, float]], out_dir: str, *, columns: list[str] | None = None) -> dict[str, str]:
    """Write ``results.json``, ``results.md`` and ``risks.png`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "results.json"), "markdown": str(out / "results.md"), "plot": str(out / "risks.png")}
    Path(paths["json"]).write_text(json.dumps(results, indent=1))
    Path(paths["markdown"]).write_text(markdown_table(results, columns) + "\n")
    plot_risks(results, paths["plot"])
    return paths


def combine_results(paths: list[str]) -> dict[str, dict[str, float]]:
    """Merge several ``results.json`` files into one table (model names prefixed by their folder on collision)."""
    merged: dict[str, dict[str, float]] = {}
    for p in paths:
        for name, r in json.loads(Path(p).read_text()).items():
            key = name if name not in merged else f"{Path(p).parent.name}/{name}"
            merged[key] = r
    return merged
