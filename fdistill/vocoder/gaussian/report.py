"""What the Gaussian study writes: the markdown tables (``table.md``), ``summary.json`` and its four figures."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import torch

from .losses import METHOD_LABELS


def write_study(out_dir: str, summary: dict, histograms: dict, curves: dict) -> None:
    """Create ``out_dir`` and write the study's figures, ``table.md`` and ``summary.json`` into it.

    ``histograms`` maps each dimension to repeat 0's teacher log-likelihoods (teacher and student samples; Figure 2),
    ``curves`` to the mean expansion curve of its reverse-KL runs (Figure 3).
    """
    settings = summary["settings"]
    os.makedirs(out_dir, exist_ok=True)
    _plot_histograms(histograms, settings["methods"], os.path.join(out_dir, "figure2_loglik_histograms.png"))
    probes = settings["repeats"] * settings["samples"]
    _plot_expansion(curves, probes, os.path.join(out_dir, "figure3_expansion_signal.png"))
    _plot_proposition1(summary, os.path.join(out_dir, "proposition1.png"))
    _plot_kl_vs_eigenvalue(summary, os.path.join(out_dir, "kl_vs_teacher_min_eigenvalue.png"))
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(study_table(summary))
    _dump_json(summary, os.path.join(out_dir, "summary.json"))


# ----------------------------------------------------------------------------- tables


def _kl_text(value: float) -> str:
    # a converged student's closed-form KL is rounding (±1e-14): shown as 0
    return "0" if abs(value) < 1e-10 else f"{value:.3g}"


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def _plain(value: float) -> str:
    return f"{value:.2f}"


def _three(value: float) -> str:
    return f"{value:.3g}"


def _probability(value: float) -> str:
    return f"{value:.3f}"


def _cell(stat: dict, fmt, spread=None) -> str:
    """``mean ± std (median)`` of an `over_repeats` record; ``spread`` formats the std (default ``fmt``)."""
    return f"{fmt(stat['mean'])} ± {(spread or fmt)(stat['std'])} ({fmt(stat['median'])})"


def _by_dimension(summary: dict) -> list:
    """``(D as text, entry)`` for every dimension of the summary, in increasing D."""
    return sorted(summary["dims"].items(), key=lambda kv: int(kv[0]))


def _table_head(head: list) -> list:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def study_table(summary: dict) -> str:
    """Markdown tables of the study's numbers per dimension: mean ± std (median) over the repeats in every cell."""
    lines = [*_distillation_table(summary), "", *_expansion_table(summary), "", _settings_note(summary["settings"])]
    return "\n".join(lines) + "\n"


def _distillation_table(summary: dict) -> list:
    """Per dimension: the teacher's λ_min, its samples' mean log-likelihood, each method's Δ and final KL."""
    s = summary["settings"]
    methods, repeats = s["methods"], s["repeats"]
    short = {"reverse_kl": "reverse KL", "z_rec": "z-rec", "x_rec": "x-rec"}
    head = (
        ["D", "teacher λ_min(Σ)", "mean log p_T: teacher samples"]
        + [f"Δ mean log p_T: {short[m]}" for m in methods]
        + [f"KL(q‖p): {short[m]}" for m in methods]
        + ["repeats Δ > 3 s.e.: " + " / ".join(short[m] for m in methods)]
    )
    lines = [
        f"**Distillation** (parameterisation `{s['parameterisation']}`; every cell: mean ± std (median) over "
        f"{repeats} repeats, each with its own teacher)",
        "",
        *_table_head(head),
    ]
    for d, e in _by_dimension(summary):
        agg = e["over_repeats"]
        cells = [
            d,
            _cell(agg["teacher"]["covariance_min_eigenvalue"], _three),
            _cell(agg["teacher"]["loglik_teacher_samples_mean"], _plain),
        ]
        cells += [_cell(agg["methods"][m]["loglik_difference"], _signed, _plain) for m in methods]
        cells += [_cell(agg["methods"][m]["kl_student_teacher"], _kl_text) for m in methods]
        cells.append(" / ".join(f"{agg['methods'][m]['repeats_above_teacher']}/{repeats}" for m in methods))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _expansion_table(summary: dict) -> list:
    """Per dimension: the expansion probability of the reverse-KL runs and Proposition 1's analytic values."""
    blocks = ("teacher_vs_standard_student", "trained_reverse_kl_students")
    head = [
        "D",
        "P(expansion) start",
        "P(expansion) peak",
        "P(expansion) end",
        "Prop. 1 analytic: teacher vs N(μ, I)",
        "Prop. 1 analytic: trained RKL students",
        "Prop. 1 Monte Carlo vs analytic: largest z-score (abs.)",
    ]
    lines = [
        "**Expansion signal and Proposition 1** (reverse-KL runs; mean ± std (median) over the repeats)",
        "",
        *_table_head(head),
    ]
    for d, e in _by_dimension(summary):
        agg, p = e["over_repeats"], e["proposition1"]
        z = max(p[k]["max_abs_z_score"] for k in blocks)
        cells = [d] + [_cell(agg["expansion"][k], _probability) for k in ("start", "peak", "end_mean_last_10pct")]
        cells += [_cell(agg["proposition1"][k], _probability) for k in blocks]
        cells.append(f"{z:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _settings_note(s: dict) -> str:
    """The paragraph under the tables: the settings and what each column means."""
    return (
        f"Settings: parameterisation {s['parameterisation']}, steps {s['steps']}, batch {s['batch']}, Adam lr "
        f"{s['lr']}, {s['repeats']} repeats (one teacher each; every method trained on it) × {s['samples']} probes "
        f"per step, {s['eval_samples']} evaluation samples, distance {s['distance']}, seed {s['seed']}. std: sample "
        "standard deviation over the repeats (ddof 1). λ_min(Σ): the teacher covariance's smallest eigenvalue. "
        "Δ mean log p_T: student − teacher samples' mean teacher log-likelihood (> 0: the student's samples are "
        "more likely than the teacher's own, i.e. collapsed towards the mode); 'repeats Δ > 3 s.e.': repeats "
        "where Δ exceeds 3 of its standard errors. KL 0: below 1e-10 (rounding). P(expansion): per run, 'start' "
        "before the first update, 'peak' the largest moving average over 1% of the updates, 'end' the mean over "
        "the last 10%. Per-repeat numbers, with every teacher's covariance eigenvalues, in summary.json."
    )


def _dump_json(tree: dict, path: str) -> None:
    """JSON with one line per list of numbers (histories stay readable and small)."""
    text = json.dumps(tree, indent=1, ensure_ascii=False)
    numbers = re.compile(r"\[\s*([-+0-9.eE,\s]+?)\s*\]")
    text = numbers.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    with open(path, "w") as f:
        f.write(text + "\n")


# ----------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_histograms(histograms: dict, methods, path: str) -> None:
    plt = _pyplot()
    dims = list(histograms)
    fig, axes = plt.subplots(len(methods), len(dims), figsize=(3.2 * len(dims), 2.4 * len(methods)), squeeze=False)
    for j, dim in enumerate(dims):
        values = torch.cat([histograms[dim][k] for k in ["teacher", *methods]]).numpy()
        bins = np.linspace(np.percentile(values, 0.2), values.max(), 50)
        for i, method in enumerate(methods):
            ax = axes[i, j]
            ax.hist(histograms[dim]["teacher"].numpy(), bins=bins, alpha=0.55, color="tab:red", label="teacher samples")
            ax.hist(histograms[dim][method].numpy(), bins=bins, alpha=0.55, color="tab:blue", label="student samples")
            ax.set_title(f"{METHOD_LABELS[method]}, D={dim}", fontsize=9)
            ax.tick_params(labelsize=7)
            if i == len(methods) - 1:
                ax.set_xlabel("log p_T(x)", fontsize=8)
            if j == 0:
                ax.set_ylabel("count", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Teacher log-likelihood of teacher vs student samples, repeat 0 (paper Fig. 2)", fontsize=10)
    _save(plt, fig, path)


def _plot_expansion(curves: dict, probes: int, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for dim, curve in curves.items():
        width = max(1, len(curve) // 100)
        smooth = np.convolve(curve, np.ones(width) / width, mode="valid")
        (line,) = ax.plot(np.arange(len(curve)), curve, lw=0.4, alpha=0.3)
        ax.plot(np.arange(len(smooth)) + (width - 1) / 2, smooth, lw=1.6, color=line.get_color(), label=f"D={dim}")
    ax.set_xlabel("update")
    ax.set_ylabel("P((x − μ)ᵀ g_x > 0)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Expansion signal during reverse-KL training ({probes} probes per update; paper Fig. 3)", fontsize=9)
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def _plot_proposition1(summary: dict, path: str) -> None:
    plt = _pyplot()
    dims = sorted(int(d) for d in summary["dims"])
    entries = [summary["dims"][str(d)]["proposition1"] for d in dims]
    pos = np.arange(len(dims))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    s = [e["teacher_vs_standard_student"] for e in entries]
    t = [e["trained_reverse_kl_students"] for e in entries]
    ax.plot(pos - 0.1, [x["analytic_mean"] for x in s], "o", color="tab:red", label="teachers vs N(μ, I): analytic")
    ax.errorbar(
        pos - 0.1,
        [x["monte_carlo_mean"] for x in s],
        yerr=[4 * x["monte_carlo_stderr"] for x in s],
        fmt="x",
        color="black",
        capsize=3,
        label="Monte Carlo (±4 s.e.)",
    )
    ax.plot(
        pos + 0.1,
        [x["analytic_mean"] for x in t],
        "s",
        color="tab:blue",
        label="trained RKL students (centred): analytic",
    )
    ax.errorbar(
        pos + 0.1,
        [x["monte_carlo_mean"] for x in t],
        yerr=[4 * x["monte_carlo_stderr"] for x in t],
        fmt="x",
        color="black",
        capsize=3,
    )
    ax.plot(
        pos + 0.2,
        [x["measured_expansion_end"] for x in t],
        "^",
        color="tab:green",
        label="measured at the end of training",
    )
    ax.set_xticks(pos, [f"D={d}" for d in dims])
    ax.set_ylabel("P(expansion signal)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Proposition 1: analytic (Imhof) vs Monte Carlo", fontsize=9)
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def _plot_kl_vs_eigenvalue(summary: dict, path: str) -> None:
    """Each repeat's final KL(q‖p) against its teacher's smallest covariance eigenvalue, one panel per method."""
    plt = _pyplot()
    methods = summary["settings"]["methods"]
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for d, e in _by_dimension(summary):
            smallest = [r["teacher"]["covariance_min_eigenvalue"] for r in e["repeats"]]
            kl = [max(r["methods"][method]["kl_student_teacher"], 1e-16) for r in e["repeats"]]  # log axis
            ax.scatter(smallest, kl, s=14, label=f"D={d}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(METHOD_LABELS[method], fontsize=9)
        ax.set_xlabel("teacher λ_min(Σ)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("final KL(q‖p) (floored at 1e-16)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        f"Final KL per repeat vs the teacher's smallest eigenvalue ({summary['settings']['parameterisation']})",
        fontsize=10,
    )
    _save(plt, fig, path)
